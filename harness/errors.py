"""One exception type for mistakes a person can fix: the CLI prints its message as one sentence, no traceback."""


class HarnessError(Exception):
    """A user-facing error: the message names the thing that is wrong and the fix."""
