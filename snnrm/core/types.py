"""Type aliases shared across layers (kept in the core so every layer may import them)."""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]
"""A decoded JSON object whose shape is not declared (Kubernetes objects passed through as the API returns them).
Where the shape is ours, a TypedDict says it instead (e.g. :mod:`snnrm.kubelet.allocation_file`)."""
