"""The one error type of bad user input.

Every check of what a user gave (a command line, a config, a checkpoint, an
output path) raises a :class:`UsageError` (or a subclass) whose message
names the problem and the fix; the tools print it as one line and exit
non-zero instead of showing a traceback.

Where mmseg raises another exception for the same misuse (its
``VisionTransformer`` asserts, or raises ``TypeError``), the project raises
a class that is both: code written against mmseg still catches it.
"""


class UsageError(ValueError):
    """Bad input from the user: reported as one line, not a traceback."""


class UsageAssertionError(UsageError, AssertionError):
    """A misuse for which mmseg raises ``AssertionError``."""


class UsageTypeError(UsageError, TypeError):
    """A misuse for which mmseg raises ``TypeError``."""
