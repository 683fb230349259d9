"""The daemon's configuration: one typed, validated object.

Values come from, in rising priority: defaults here, a YAML file (``--config``), ``SNNRM_<FLAG>`` environment
variables and command-line flags (the last two are merged by the CLI). Validation errors name the field and the
bad value, and the daemon refuses to start rather than guess.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import structlog
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from snnrm.config_hooks import HooksConfig
from snnrm.config_placement import PlacementConfig
from snnrm.core.dra import parse_tile

log = structlog.get_logger(__name__)

KUBECONFIG_ALIASES = ("dra_kubeconfig", "hooks.kubeconfig", "placement.kubeconfig")
"""Deprecated spellings of :attr:`Config.kubeconfig`, still accepted (with a warning) and folded into it."""

DEFAULT_KUBELET_DIR = Path("/var/lib/kubelet/device-plugins")
UNIX_PATH_MAX = 107
"""Longest unix socket path Linux binds (``sun_path`` is 108 bytes with the terminating NUL)."""
SOCKET_NAMES = {
    "kubelet_dir": "snnrm-event-throughput.sock",  # and snnrm-neuron-core.sock
    "dra_registry_dir": "snnrm.io-reg.sock",
    "dra_plugin_dir": "dra.sock",
}
"""The longest socket file name snnrm creates in each socket directory; tests/unit/app/test_config.py checks them
against the names the plugins really use."""
SOCKET_NAME_MAX = max(len(n) for n in SOCKET_NAMES.values())
_PORT = re.compile(r"[0-9]{1,5}")


def parse_http_address(v: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as (host, port); ValueError naming the problem otherwise.

    ASCII digits only: ``str.isdigit`` and ``int`` also take other scripts' digits (``:١٢٣`` would bind port 123).
    """
    host, sep, port = v.rpartition(":")
    if not sep or not host or not _PORT.fullmatch(port):
        raise ValueError(f"expected host:port, got {v!r}")
    if int(port) > 65535:
        raise ValueError(f"port {int(port)} is out of range 0-65535")
    return host.strip("[]"), int(port)


class ConfigError(Exception):
    """The configuration is unusable; the message lists every problem found."""


class Config(BaseModel):
    """Everything `snnrm run` needs to know."""

    # NaN or infinity is never a usable duration, rate or size; counts are integers, not booleans.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    backend: Literal["sim", "sysfs"] = "sim"
    """Where chips come from: the in-process simulator, or a driver's sysfs-style tree."""
    # Before the socket directories: which of them get sockets depends on it.
    dra: Literal["off", "on", "only"] = "off"
    """Dynamic Resource Allocation (resource.k8s.io/v1, driver snnrm.io): ``off`` serves the device plugins only;
    ``on`` serves core groups and chips through DRA and keeps snnrm.io/event-throughput on the device plugin (each
    resource sold through one API, never twice); ``only`` serves everything through DRA."""
    kubelet_dir: Path = DEFAULT_KUBELET_DIR
    """Directory holding kubelet.sock; our plugin sockets are created beside it (the kubelet only dials there)."""
    http: str = "127.0.0.1:9400"
    """host:port of the HTTP server (metrics, probes, JSON API, status page)."""
    sim_preset: str = "loihi2"
    """sim_hw preset: loihi2, spinnaker2 or akida."""
    sim_chips: int = Field(default=4, ge=1, le=4096, strict=True)
    """Chips on the simulated node; 4 Loihi-2-like chips is a Kapoho-Point-sized board."""
    sim_cores: int | None = Field(default=None, ge=1, le=4096, strict=True)
    """Cores per simulated chip; default is the preset's (128 for loihi2)."""
    sim_seed: int = Field(default=0, ge=0, le=2**63 - 1, strict=True)
    """Seed of the simulator: the same seed and the same faults give the same telemetry."""
    sim_fault_injection: Literal["off", "loopback", "token"] = "loopback"
    """Who may inject simulator faults over HTTP (``POST``/``DELETE /sim/faults``): nobody, clients on this host,
    or holders of the bearer token in ``$SNNRM_SIM_FAULT_TOKEN``. The chart sets ``off`` unless asked."""
    sim_speed: float = Field(default=1.0, gt=0.0, le=1000.0)
    """Simulated seconds per wall-clock second (1 = real time)."""
    sysfs_root: Path = Path("/sys/class/snn")
    """Root of the driver's device tree for --backend sysfs (docs/sysfs-interface.md)."""
    sample_period: float = Field(default=0.1, gt=0.0, le=60.0)
    """Seconds between telemetry frames; 100 ms resolves queue build-up long before an SLO of seconds breaks."""
    block_keps: float = Field(default=1000.0, ge=1.0, le=1e9)
    """KEPS behind one snnrm.io/event-throughput device: 1 MEPS is about half a Loihi-2-like core, so a
    128-core chip is ~256 devices and a 16k-core node stays well under the 16k-device cap."""
    state_dir: Path = Path("/var/lib/snnrm")
    """Where per-allocation files and the allocation ledger live (survives daemon restarts)."""
    cdi_dir: Path = Path("/var/run/cdi")
    """Where the generated CDI spec is written (read by containerd/CRI-O)."""
    pre_start_required: bool = False
    """Ask the kubelet to call PreStartContainer (device reset) before every container start."""
    log_format: Literal["console", "json"] = "console"
    metrics_granularity: Literal["core", "group", "chip"] = "group"
    """Unit of the per-core metric families: every core, every router domain (core group), or every chip. Core
    granularity at 16k cores is ~200k series; group keeps the mesh picture at a fraction of it on shared-router
    chips, and chip is the cheapest."""
    pod_resources_socket: Path = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    """The kubelet's PodResources API socket, for namespace/pod/container labels on allocated devices; when it is
    absent, metrics simply carry no pod labels."""

    kubeconfig: Path | None = None
    """Kubeconfig of every apiserver client the daemon makes (scaling hooks, the DRA driver, the placement agent);
    unset means the pod's service account. ``--dra-kubeconfig``, ``hooks.kubeconfig`` and ``placement.kubeconfig``
    are deprecated aliases of it: accepted with a warning, an error when two disagree."""

    # -- alert-driven autoscaling hooks (snnrm/config_hooks.py; docs/autoscaling-hooks.md) --
    hooks: HooksConfig = Field(default_factory=HooksConfig)
    """``POST /hooks/alertmanager`` and the allowlist of hooks it may run; only settable from the config file."""

    # -- split-learning placement, node side (snnrm/config_placement.py; docs/split-learning.md) --
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    """Publish the node summary, follow plans on admission, live-remap degraded stages; from the config file."""

    # -- DRA kubelet plugin (snnrm/dra; docs/dra.md) --
    dra_registry_dir: Path = Path("/var/lib/kubelet/plugins_registry")
    """The kubelet's plugin registration directory (our ``snnrm.io-reg.sock`` goes there)."""
    dra_plugin_dir: Path = Path("/var/lib/kubelet/plugins/snnrm.io")
    """Directory of the DRA service socket ``dra.sock`` (the path the kubelet dials, as seen on the host)."""
    dra_node_name: str | None = None
    """Kubernetes node name: the pool and the slices' nodeName (default: the host name; the chart passes
    spec.nodeName)."""
    dra_kubeconfig: Path | None = None
    """Deprecated alias of :attr:`kubeconfig` (the DRA driver's ResourceSlices and ResourceClaims)."""
    dra_tile: str = "1x1"
    """Routers per core-group device, ``WxH``: 1x1 is one router domain; bigger tiles mean fewer, larger devices
    (e.g. 2x2 on one-core-per-router meshes like Loihi 2, where 1x1 is one device per core)."""

    @field_validator("kubelet_dir", "dra_registry_dir", "dra_plugin_dir")
    @classmethod
    def _socket_dir(cls, v: Path, info: ValidationInfo) -> Path:
        # gRPC's bind error for a long path names neither the flag nor the limit; say both before anything starts.
        # Only directories that get sockets in this mode count: `dra: only` serves no device plugin, `off` no DRA.
        dra = info.data.get("dra", "off")
        if (info.field_name == "kubelet_dir" and dra == "only") or (info.field_name != "kubelet_dir" and dra == "off"):
            return v
        longest = len(str(v).encode()) + 1 + len(SOCKET_NAMES[str(info.field_name)])
        if longest > UNIX_PATH_MAX:
            raise ValueError(
                f"too long for the unix sockets snnrm creates in it ({longest} bytes with the socket name, the limit "
                f"is {UNIX_PATH_MAX}); use a shorter directory"
            )
        return v

    @model_validator(mode="after")
    def _one_kubeconfig(self) -> Config:
        # One credentials source per daemon: three settings that could name three files were three chances to talk
        # to two clusters. The aliases are folded in (each consumer reads the same path whichever name it reads).
        given = {
            "kubeconfig": self.kubeconfig,
            "dra_kubeconfig": self.dra_kubeconfig,
            "hooks.kubeconfig": self.hooks.kubeconfig,
            "placement.kubeconfig": self.placement.kubeconfig,
        }
        named = {k: v for k, v in given.items() if v is not None}
        if len(set(named.values())) > 1:
            listed = ", ".join(f"{k}={v}" for k, v in named.items())
            raise ValueError(
                f"kubeconfig settings disagree ({listed}); set kubeconfig (--kubeconfig or SNNRM_KUBECONFIG) only"
            )
        for alias in (k for k in named if k != "kubeconfig"):
            log.warning("deprecated_setting", setting=alias, use="kubeconfig (--kubeconfig or SNNRM_KUBECONFIG)")
        path = next(iter(named.values()), None)
        # The model is frozen to callers; this is its own validation finishing the values.
        object.__setattr__(self, "kubeconfig", path)
        object.__setattr__(self, "dra_kubeconfig", path)
        object.__setattr__(self, "hooks", self.hooks.model_copy(update={"kubeconfig": path}))
        object.__setattr__(self, "placement", self.placement.model_copy(update={"kubeconfig": path}))
        return self

    @field_validator("dra_tile")
    @classmethod
    def _tile(cls, v: str) -> str:
        parse_tile(v)
        return v

    @field_validator("http")
    @classmethod
    def _host_port(cls, v: str) -> str:
        parse_http_address(v)
        return v

    @model_validator(mode="after")
    def _node_size(self) -> Config:
        # Refused before the simulator allocates anything: 4096 x 4096 chips passed the per-field limits and
        # then took ~24 GB building 16.7 M cores.
        if self.backend != "sim":
            return self
        # Imported here: both load numpy, which `snnrm --help` and the config's own errors do without.
        from sim_hw import load_preset
        from snnrm.core.devices import MAX_DEVICES_PER_RESOURCE

        per_chip = self.sim_cores
        if per_chip is None:
            try:
                per_chip = load_preset(self.sim_preset).cores_per_chip
            except (OSError, ValueError):
                return self  # an unknown preset is reported where the simulator is built
        total = self.sim_chips * per_chip
        if total > MAX_DEVICES_PER_RESOURCE:
            raise ValueError(
                f"--sim-chips {self.sim_chips} x {per_chip} cores per chip is {total:,} cores; a node has at most "
                f"{MAX_DEVICES_PER_RESOURCE:,} (one snnrm.io/neuron-core device per core)"
            )
        return self

    @property
    def http_host(self) -> str:
        return parse_http_address(self.http)[0]

    @property
    def http_port(self) -> int:
        return parse_http_address(self.http)[1]


def load_config(file: Path | None = None, **overrides: Any) -> Config:
    """Merge a YAML file and explicit overrides (flags/env, ``None`` means unset) into a validated Config.

    Every problem is reported in the words the user typed: ``--sim-chips`` for a flag or its ``SNNRM_SIM_CHIPS``
    variable, ``FILE: key`` (with a "did you mean" for typos) for a config-file entry.
    """
    data: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(file.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"--config {file}: cannot read it: {first}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"--config {file}: must hold a mapping of settings, got {type(loaded).__name__}")
        spelled: dict[str, str] = {}
        for key, value in (loaded or {}).items():
            name = str(key).replace("-", "_")
            if name in spelled:  # YAML keeps the last, silently: say which two spellings collide instead
                raise ConfigError(f"--config {file}: {spelled[name]!r} and {str(key)!r} set the same setting")
            spelled[name] = str(key)
            data[name] = value
    flagged = {k for k, v in overrides.items() if v is not None}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = [_describe(err, file=file, flagged=flagged) for err in e.errors()]
        raise ConfigError("; ".join(problems)) from None


def flag_of(field: str) -> str:
    """The command-line spelling of a top-level config field (``sim_chips`` -> ``--sim-chips``)."""
    return "--" + field.replace("_", "-")


# Fields with no flag: only the config file sets them (nested sections).
_FILE_ONLY = frozenset({"hooks", "placement"})


def _describe(err: Any, *, file: Path | None, flagged: set[str]) -> str:
    loc = [str(part) for part in err.get("loc", ())]
    key = ".".join(loc) or "config"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        return _unknown_key(loc, file)
    top = loc[0] if loc else ""
    if top in flagged and top not in _FILE_ONLY:
        env = "SNNRM_" + top.upper()
        where = f"{flag_of(top)} (or {env})"
    elif file is not None:
        where = f"{file}: {key}"
    else:
        where = key
    shown = err.get("input")
    if err.get("type", "").endswith(("greater_than_equal", "greater_than", "less_than_equal", "less_than")):
        msg = f"{msg}, got {shown!r}"
    return f"{where}: {msg}"


def _unknown_key(loc: list[str], file: Path | None) -> str:
    """``config.yaml: unknown key 'sim_chip' (did you mean 'sim_chips'?)``, for top-level and nested keys."""
    model: Any = Config
    for part in loc[:-1]:  # walk to the model that holds the bad key
        field = getattr(model, "model_fields", {}).get(part)
        annotation = getattr(field, "annotation", None)
        if field is None or not isinstance(annotation, type) or not issubclass(annotation, BaseModel):
            model = None
            break
        model = annotation
    known = sorted(getattr(model, "model_fields", {})) if model is not None else []
    close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
    hint = f" (did you mean {'.'.join([*loc[:-1], close[0]])!r}?)" if close else ""
    where = f"{file}: " if file is not None else ""
    return f"{where}unknown key {'.'.join(loc)!r}{hint}"
