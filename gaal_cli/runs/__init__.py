"""A run folder and what it holds: its layout and checkpoints, its predictions file, another run's
checkpoint as a dependency. Imports the foundation and the config; trains nothing, builds no method."""
