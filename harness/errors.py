"""One exception type for mistakes a person can fix: the CLI prints its message as one sentence, no traceback."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.text import Text


class HarnessError(Exception):
    """A user-facing error: the message names the thing that is wrong and the fix."""

    def __rich__(self) -> Text:
        """The message as literal text when rich prints the error object: row ids like `rte:train:20` and paths
        with brackets must not be read as emoji codes or markup (an f-string of the error still is)."""
        from rich.text import Text

        return Text(str(self))


# Storage running out or refusing writes: the machine's fault, said in one line, never a traceback.
STORAGE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES}
