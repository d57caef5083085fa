"""The one way the local tools fail: a single line saying what is wrong and how to fix it."""

from __future__ import annotations


class StackError(RuntimeError):
    """A problem the user must fix; printed as one ``error:`` line, exit status 1."""
