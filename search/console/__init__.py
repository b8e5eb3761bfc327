"""The CLI's parts: its parser (every command's flags and help) and the commands, which turn `search.api`'s
answers into the lines a person reads. `search.cli` runs them and owns the one error and warning style."""
