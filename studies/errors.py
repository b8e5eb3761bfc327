"""The error a user can cause. The CLI prints its message as one line and exits 2."""


class UserError(Exception):
    """Bad input: a study file, a flag, a name. The message names the file/flag, the field and what is valid."""
