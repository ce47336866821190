"""What every codec provides, and the errors that send an event to the dead-letter topic."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from streamer.records import Reason


class DecodeError(Exception):
    """An event that cannot become a model input; `reason` is the dead-letter reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class EncodeError(Exception):
    """A prediction record that the output format cannot represent."""


class Decoder(Protocol):
    def decode(self, value: bytes | None) -> Mapping[str, Any]:
        """Parse one event value into a record; raise DecodeError when it is not one."""
        ...


class Encoder(Protocol):
    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Serialise one record; raise EncodeError when the format cannot hold it."""
        ...
