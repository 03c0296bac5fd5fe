"""The GPU campaign (issue 15): a data pack small enough to travel to the device machine, and one
command that trains, scores and exports the papers' 2D presets within a time budget (docs/training.md,
"GPU campaign")."""
