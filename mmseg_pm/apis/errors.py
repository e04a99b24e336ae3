"""The one error type of bad user input (defined in mmseg_pm.utils.errors,
below every floor that raises it; re-exported here for the public API)."""
from mmseg_pm.utils.errors import UsageError

__all__ = ['UsageError']
