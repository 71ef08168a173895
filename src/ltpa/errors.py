"""The one exception type for problems the user can fix (bad names, missing files, bad values).

The CLI prints these as a single line naming the problem and the fix, and exits non-zero.
"""

from __future__ import annotations

__all__ = ["LTPAError"]


class LTPAError(Exception):
    """A problem with the user's input or files, with a message that says how to fix it."""
