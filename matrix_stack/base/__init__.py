"""What everything stands on: errors, paths, subprocesses, files, undo, secrets."""
