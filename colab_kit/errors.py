"""The base of every error a user can act on. The CLI prints its message (which names the item, the
value and the fix) instead of a traceback; each stage defines its own subclass."""

from __future__ import annotations


class ColabKitError(Exception):
    """An error whose message tells the user what to do."""
