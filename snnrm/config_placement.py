"""The ``placement:`` section of the daemon's configuration: the node's part of split-learning placement.

Off by default (a daemon that is only a device plugin needs no apiserver access). When on, the daemon publishes
its node summary for the placement controller, follows plans on admission, and watches the stages it runs for
live remaps (snnrm/cluster/node_agent.py; docs/split-learning.md)::

    placement:
      enabled: true
      node_name: worker-3          # default: $NODE_NAME (the chart sets it from spec.nodeName), else the host name
      live_remap: true
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class PlacementConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    enabled: bool = False
    node_name: str | None = None
    """This node's name in the cluster; default ``$NODE_NAME``, else the host name."""
    kubeconfig: Path | None = None
    """Deprecated alias of the daemon's top-level ``kubeconfig`` (which every apiserver client uses)."""
    live_remap: bool = True
    """Move degraded stages within the node when their runtime opted in (``snnrm.io/live-remap: "true"``)."""
    dry_run: bool = False
    """Decide and report remaps as Events, but move nothing."""
    publish_min_interval: float = Field(default=5.0, gt=0.0)
    """Seconds between two summary publications at most once (apiserver write load)."""
    publish_max_interval: float = Field(default=300.0, gt=0.0)
    """Seconds after which the summary is published even if nothing changed (the controller's heartbeat)."""
    remap_period: float = Field(default=0.1, gt=0.0, le=60.0)
    """Least seconds between two evaluations of the stages running here; one runs on each telemetry frame."""
    dwell: float = Field(default=2.0, ge=0.0)
    """Seconds a degradation must hold before a stage is remapped."""
    cooldown: float = Field(default=60.0, ge=0.0)
    """Seconds after a move of a job before it may move again."""
