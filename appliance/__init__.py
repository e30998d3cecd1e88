"""Edge appliance that turns text prompts into loopable sound clips, behind a semantic cache.

The names in ``__all__`` are the public Python API (docs/python-api.md) and the only stable
surface: every other module of this package is internal and changes shape between releases.
They are imported on first use, so that ``python -m appliance.worker`` and the CLI do not pay
for the client and the cache at start.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance._api_cache import Cache, ItemFilters
    from appliance._api_client import AsyncClient, Client, RequestParams, Result
    from appliance.cache.maintenance import (
        DuplicatesReport,
        ExportReport,
        ListReport,
        RemovalReport,
        ShowReport,
        StatsReport,
    )
    from appliance.client import NodeOffline
    from appliance.errors import (
        ApplianceError,
        Busy,
        CacheError,
        ConfigError,
        GenerationTimeout,
        InvalidRequest,
        ModelError,
        NotFound,
        PayloadTooLarge,
        Unavailable,
        WorkerFailed,
    )

try:
    __version__ = version("appliance")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_PUBLIC: dict[str, str] = {
    "Cache": "appliance._api_cache",
    "ItemFilters": "appliance._api_cache",
    "AsyncClient": "appliance._api_client",
    "Client": "appliance._api_client",
    "RequestParams": "appliance._api_client",
    "Result": "appliance._api_client",
    "NodeOffline": "appliance.client",
    **{name: "appliance.cache.maintenance" for name in (
        "DuplicatesReport", "ExportReport", "ListReport", "RemovalReport", "ShowReport", "StatsReport")},
    **{name: "appliance.errors" for name in (
        "ApplianceError", "Busy", "CacheError", "ConfigError", "GenerationTimeout", "InvalidRequest",
        "ModelError", "NotFound", "PayloadTooLarge", "Unavailable", "WorkerFailed")},
}

__all__ = [
    "ApplianceError",
    "AsyncClient",
    "Busy",
    "Cache",
    "CacheError",
    "Client",
    "ConfigError",
    "DuplicatesReport",
    "ExportReport",
    "GenerationTimeout",
    "InvalidRequest",
    "ItemFilters",
    "ListReport",
    "ModelError",
    "NodeOffline",
    "NotFound",
    "PayloadTooLarge",
    "RemovalReport",
    "RequestParams",
    "Result",
    "ShowReport",
    "StatsReport",
    "Unavailable",
    "WorkerFailed",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'appliance' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return [*__all__, "__doc__", "__name__", "__path__"]
