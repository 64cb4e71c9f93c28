"""The message handed to a handler: one stream entry plus its delivery metadata.

Pure: no Redis, no threads. The hot path (`rstream._fast`) builds these in bulk.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

Fields = Dict[Any, Any]


class Message:
    """One stream entry as delivered to this consumer.

    ``id`` is the entry id (``"1700000000000-0"``), ``stream`` the stream name and ``fields`` the
    entry's field/value pairs (bytes by default, ``str`` with ``decode_responses=True``).
    ``attempt`` is the server's delivery count: 1 on first delivery, and it keeps counting across
    retries, restarts and claims.

    Messages the compiled hot path builds are not tracked by the cycle collector (their slots
    make no cycle; README, "Performance"): a reference cycle a handler makes through one, a
    field or metadata value that refers back to the message, is not collected.
    """

    __slots__ = ("id", "stream", "fields", "_attempt", "_metadata", "_retry")

    def __init__(self, id: str, stream: str, fields: Fields, attempt: int = 1) -> None:
        self.id = id
        self.stream = stream
        self.fields = fields
        self._attempt = attempt
        self._metadata: Optional[Dict[str, Any]] = None
        self._retry: Optional[bool] = None  # None: the handler did not say (see settle.judge_failure)

    @property
    def attempt(self) -> int:
        """Delivery count of this entry (first delivery is 1)."""
        return self._attempt

    @property
    def data(self) -> List[Any]:
        """The seed's two-element list ``[id, fields]``."""
        return [self.id, self.fields]

    @property
    def metadata(self) -> Dict[str, Any]:
        """``id``, ``stream`` and ``attempt``; a handler may set ``retry_after`` (unix ms)."""
        if self._metadata is None:
            self._metadata = {"id": self.id, "stream": self.stream, "attempt": self._attempt}
        return self._metadata

    @property
    def retry_after(self) -> Optional[Union[int, float]]:
        """``metadata["retry_after"]`` if a handler set it, else ``None``."""
        if self._metadata is None:
            return None
        value = self._metadata.get("retry_after")
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def retry_requested(self) -> bool:
        """True after ``configure_ack(retry=True)``."""
        return self._retry is True

    @property
    def retry_choice(self) -> Optional[bool]:
        """What ``configure_ack`` set: True, False, or None if it was not called."""
        return self._retry

    def configure_ack(self, *, retry: bool) -> None:
        """With ``retry=True`` a failed message stays pending and is delivered again later
        (after ``metadata["retry_after"]`` if that is a unix-ms time in the future); with
        ``retry=False`` it is settled now even when ``max_attempts`` would retry it."""
        if not isinstance(retry, bool):
            raise TypeError(f"configure_ack(retry=...) takes a bool, got {retry!r}")
        self._retry = retry

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (
            self.id == other.id
            and self.stream == other.stream
            and self.fields == other.fields
            and self._attempt == other._attempt
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Message(id={self.id!r}, stream={self.stream!r}, attempt={self._attempt}, "
            f"fields={_short(self.fields)})"
        )


def _short(fields: Fields) -> str:
    text = repr(fields)
    return text if len(text) <= 120 else text[:117] + "..."
