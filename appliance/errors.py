"""One exception hierarchy, rooted in :class:`ApplianceError`.

Every error that can reach a device carries a stable, machine-readable ``code``; the reply
to a failed request uses it verbatim, so codes are part of the public MQTT API and must not
be renamed.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the appliance raises on purpose."""

    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ApplianceError):
    """The configuration file or an environment override is invalid."""

    code = "invalid_config"


class InvalidRequest(ApplianceError):
    """A request could not be parsed or failed validation."""

    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    """A request payload exceeds the configured maximum size."""

    code = "payload_too_large"


class Busy(ApplianceError):
    """The generation queue is full; the device may retry later."""

    code = "busy"


class GenerationTimeout(ApplianceError):
    """A worker did not finish a generation within its timeout."""

    code = "timeout"


class WorkerFailed(ApplianceError):
    """A worker process died or reported an error while serving a request."""

    code = "worker_failed"


class WorkerDied(WorkerFailed):
    """The worker process exited or was killed; it must be restarted."""


class Unavailable(ApplianceError):
    """The service cannot take the request now (starting, draining or no worker)."""

    code = "unavailable"


class CacheError(ApplianceError):
    """The cache could not be read or written."""

    code = "cache_error"


class CacheFull(CacheError):
    """The cache index (LMDB map) is full; it is resized offline (``appliance cache resize``)."""

    code = "cache_full"


class CacheUnavailable(CacheError):
    """The shared cache database (PostgreSQL) cannot be reached; the node serves what it holds."""

    code = "cache_unavailable"


class ModelError(ApplianceError):
    """A model directory is missing files, or its files cannot be loaded."""

    code = "model_error"


class NotFound(ApplianceError):
    """A cache item or other named object does not exist."""

    code = "not_found"
