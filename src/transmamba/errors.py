"""`UserError`: the base of errors caused by the user's input or environment, not by a bug.

The `transmamba` CLI prints such an error as `error: <message>` and exits with status 2 (a
traceback only with `--debug`). Built-in types it treats the same way are listed in
`transmamba.cli.USER_ERRORS`; raise a subclass of this one for anything else a user can fix.
"""


class UserError(Exception):
    """An error the user can fix (bad input, a busy or damaged directory); its message says how."""
