"""The foundation: user-facing errors, bounds, safe file writes, locks, checks of files from others,
console display, the config's method catalog and process groups. Imports nothing else of gaal_cli."""
