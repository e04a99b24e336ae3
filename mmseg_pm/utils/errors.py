"""The one error type of bad user input.

Every check of what a user gave (a command line, a config, a checkpoint, an
output path) raises a :class:`UsageError` (or a subclass) whose message
names the problem and the fix; the tools print it as one line and exit
non-zero instead of showing a traceback.
"""


class UsageError(ValueError):
    """Bad input from the user: reported as one line, not a traceback."""
