"""Sweeps: experiment files expanded into runs, dependencies first, each run's staleness, the
scheduler and the Slurm launcher. Imports the layers below it; runs each run as a `gaal train`."""
