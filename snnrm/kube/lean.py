"""kubernetes-asyncio's credentials and connection core, without its generated API and model classes.

``import kubernetes_asyncio`` runs ``kubernetes_asyncio.client``'s ``__init__``, which imports about 60 API classes
and 1,500 model modules: 38 MB of RSS (measured, version 36.1), a quarter of the node daemon's 150 MB budget, for
classes the product never uses (:mod:`snnrm.kube.client` sends its own JSON). What it does use is small:
``Configuration``, ``ApiClient`` (its connection pool and auth headers) and the ``config`` loaders.

:func:`load` imports those modules with the two heavy package ``__init__`` files deferred: ``kubernetes_asyncio``,
``kubernetes_asyncio.client`` and ``kubernetes_asyncio.client.models`` are registered as their real packages
(same ``__path__``, same spec) whose ``__init__`` has not run yet; the first access to any other attribute of one
of them runs it (a module ``__getattr__``), so code that later uses ``client.V1Pod`` or ``kubernetes_asyncio.watch``
still gets the full package. If kubernetes-asyncio was imported already, or its layout is not what this expects,
the ordinary import is used: the cost is memory, never behaviour.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import structlog

log = structlog.get_logger(__name__)

_DEFERRED = ("kubernetes_asyncio", "kubernetes_asyncio.client", "kubernetes_asyncio.client.models")


@dataclass(frozen=True, slots=True)
class KubernetesAsyncio:
    """The parts of kubernetes-asyncio the client uses."""

    config: ModuleType
    """``kubernetes_asyncio.config``: ``load_kube_config``, ``load_incluster_config``, ``ConfigException``."""
    ApiClient: Any  # kubernetes-asyncio's generated class; typed where it is used (snnrm.kube.client)
    Configuration: Any
    lean: bool
    """Whether the heavy ``__init__`` files were deferred (False: the ordinary import was used)."""


def _deferred_package(name: str) -> ModuleType:
    """The package ``name`` as a module whose ``__init__`` runs on first access to an attribute it lacks."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None or spec.loader is None:
        raise ImportError(f"{name} is not a package")
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def materialise(attr: str) -> Any:
        # Run the real __init__ in this module's namespace once (it re-imports nothing already loaded), then answer.
        del module.__dict__["__getattr__"]
        loader.exec_module(module)
        return getattr(module, attr)

    module.__dict__["__getattr__"] = materialise
    return module


def _lean() -> KubernetesAsyncio:
    seeded = []
    try:
        for name in _DEFERRED:
            sys.modules[name] = _deferred_package(name)
            seeded.append(name)
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, sys.modules[name])
        configuration = importlib.import_module("kubernetes_asyncio.client.configuration")
        for name in ("exceptions", "rest"):  # what api_client imports from the package by name, loaded first
            importlib.import_module(f"kubernetes_asyncio.client.{name}")
        api_client = importlib.import_module("kubernetes_asyncio.client.api_client")
        client = sys.modules["kubernetes_asyncio.client"]
        # What kubernetes_asyncio.config imports by name from the client package.
        client.__dict__.update(ApiClient=api_client.ApiClient, Configuration=configuration.Configuration)
        config = importlib.import_module("kubernetes_asyncio.config")
        return KubernetesAsyncio(config, api_client.ApiClient, configuration.Configuration, lean=True)
    except (ImportError, AttributeError) as e:  # another layout (a new release): the ordinary import
        for name in [n for n in sys.modules if n == "kubernetes_asyncio" or n.startswith("kubernetes_asyncio.")]:
            del sys.modules[name]
        log.warning("kubernetes_asyncio_lean_import_failed", error=repr(e), seeded=seeded)
        return _ordinary()


def _ordinary() -> KubernetesAsyncio:
    from kubernetes_asyncio import config
    from kubernetes_asyncio.client import ApiClient, Configuration

    return KubernetesAsyncio(config, ApiClient, Configuration, lean=False)


_loaded: KubernetesAsyncio | None = None


def load() -> KubernetesAsyncio:
    """kubernetes-asyncio's config loaders and client classes, imported as lightly as this process allows."""
    global _loaded
    if _loaded is None:
        _loaded = _ordinary() if "kubernetes_asyncio" in sys.modules else _lean()
    return _loaded
