"""User-facing errors.

A `UserError` is a mistake in what the user gave us (a suite file, a path, a weights file, a results folder).
The command line prints its one-line message and exits with code 2, never a traceback. A `StorageError` (the
run folder cannot be written) exits with code 3. Anything else that escapes is an internal error and keeps its
traceback.
"""


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # always one line


class StorageError(Exception):
    """The run folder could not be written (disk full, permissions) mid-run: one line, exit code 3.

    Rows already written stay as they were (every write is atomic); ``bench run --resume`` finishes the run.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
