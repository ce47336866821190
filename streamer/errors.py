"""User-facing errors: each renders as one line; the CLI turns them into exit code 1."""

from __future__ import annotations


class StreamerError(Exception):
    """An error the user can fix (config, models, environment). Bugs raise other types."""


class ConfigError(StreamerError):
    """A problem in a topology file, named by file and key."""

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file = file
        self.key = key
        self.message = message
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")


class ConfigErrors(StreamerError):
    """Several config problems found at once; one line each."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class KafkaUnavailable(StreamerError):
    """The broker could not be reached within the timeout."""


class LocalKafkaError(StreamerError):
    """The local development broker could not be set up, started or stopped."""


class DeliveryFailed(StreamerError):
    """A produced record was not acknowledged; its batch's offsets stay uncommitted."""


class BatchFailed(StreamerError):
    """Serving a batch raised; its offsets stay uncommitted, so a restart serves it again."""
