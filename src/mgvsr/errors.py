"""The one base class of the errors mgvsr reports to its user in one line.

A leaf module (no imports) so every layer can use it. An :class:`MgvsrError` means "the input is
wrong" (a config key, a missing dataset root, an unreadable weights file or checkpoint, ...), not
"the code is wrong": ``mgvsr`` (``cli.py``) prints it as ``mgvsr CMD: error: MESSAGE`` on stderr and
exits with :attr:`MgvsrError.exit_code`, without a traceback. Any other exception is a bug and keeps
its traceback.

The project's error classes derive from it and from the builtin they always were (``ValueError``,
``RuntimeError``), so existing ``except ValueError`` code still catches them.
"""

from __future__ import annotations


class MgvsrError(Exception):
    """An error in what the user gave mgvsr; the message names the file, key or flag and the problem."""

    exit_code: int = 2  # the usage/config convention; subclasses may pick another non-zero code
