"""The structured error a plugin raises to reach the host intact."""

from __future__ import annotations

from typing import Any, Optional


class PluginError(Exception):
    """An error with a machine-readable code, a message and optional details.

    The host receives ``code``, ``message`` and ``details`` (converted to
    JSON) unchanged. ``str(err)`` is the message.
    """

    def __init__(self, code: str, message: str, details: Optional[Any] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def __repr__(self) -> str:
        return f"PluginError(code={self.code!r}, message={self.message!r}, details={self.details!r})"
