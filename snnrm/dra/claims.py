"""Prepared ResourceClaims on this node: their CDI specs and a checkpoint, so prepare/unprepare are idempotent
across retries and daemon restarts.

Preparing a claim writes ``<cdi_dir>/snnrm.io-claim-<uid>.json`` (one CDI device per allocation result, see
:func:`snnrm.core.dra.claim_cdi_spec`) and records the answer in ``<state_dir>/dra/prepared.json``; both are
written *before* NodePrepareResources answers, so the runtime never sees a CDI ID without its spec. A claim
prepared again answers from the checkpoint (rewriting the spec if someone deleted it) without asking the
apiserver. Unpreparing removes both; unpreparing an unknown claim still removes a spec file left by a crash
between the two writes, and succeeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from snnrm.core.dra import CLAIM_CDI_KIND, AllocatedDevice, claim_cdi_device, claim_cdi_spec
from snnrm.kubelet.files import write_atomic

log = structlog.get_logger(__name__)

CHECKPOINT_VERSION = 1


@dataclass(frozen=True, slots=True)
class PreparedDevice:
    """One device of a prepared claim, as NodePrepareResources reports it."""

    request_names: tuple[str, ...]
    pool: str
    device: str
    cdi_ids: tuple[str, ...]
    share_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": list(self.request_names),
            "pool": self.pool,
            "device": self.device,
            "cdi": list(self.cdi_ids),
            "shareID": self.share_id,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PreparedDevice:
        return cls(
            request_names=tuple(d.get("requests") or ()),
            pool=str(d["pool"]),
            device=str(d["device"]),
            cdi_ids=tuple(d.get("cdi") or ()),
            share_id=d.get("shareID"),
        )


@dataclass(frozen=True, slots=True)
class PreparedClaim:
    uid: str
    namespace: str
    name: str
    devices: tuple[PreparedDevice, ...]
    spec: dict[str, Any]
    """The CDI spec written for it (kept so a deleted spec file can be rewritten without the apiserver)."""


def spec_file_name(uid: str) -> str:
    return f"snnrm.io-claim-{uid}.json"


class ClaimStore:
    """The prepared claims of this node (in memory, in the checkpoint and as CDI spec files)."""

    def __init__(self, *, state_dir: Path, cdi_dir: Path) -> None:
        self.checkpoint = Path(state_dir) / "dra" / "prepared.json"
        self.cdi_dir = Path(cdi_dir)
        self._claims: dict[str, PreparedClaim] = {}
        self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self.checkpoint.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            # A corrupt checkpoint loses idempotence for claims prepared before, not correctness: the kubelet
            # prepares again (we re-read the claim) and unprepare of an unknown claim succeeds.
            log.warning("dra_checkpoint_unreadable", path=str(self.checkpoint), error=repr(e))
            return
        if not isinstance(doc, dict) or doc.get("version") != CHECKPOINT_VERSION:
            log.warning("dra_checkpoint_ignored", path=str(self.checkpoint), reason="unknown version")
            return
        for uid, c in (doc.get("claims") or {}).items():
            try:
                self._claims[uid] = PreparedClaim(
                    uid=uid,
                    namespace=str(c["namespace"]),
                    name=str(c["name"]),
                    devices=tuple(PreparedDevice.from_json(d) for d in c["devices"]),
                    spec=dict(c["spec"]),
                )
            except (KeyError, TypeError, ValueError) as e:
                log.warning("dra_checkpoint_entry_ignored", uid=uid, error=repr(e))

    def get(self, uid: str) -> PreparedClaim | None:
        return self._claims.get(uid)

    def __len__(self) -> int:
        return len(self._claims)

    def __contains__(self, uid: object) -> bool:
        return uid in self._claims

    def uids(self) -> list[str]:
        return sorted(self._claims)

    def spec_path(self, uid: str) -> Path:
        return self.cdi_dir / spec_file_name(uid)

    def ensure_spec(self, claim: PreparedClaim) -> None:
        """Rewrite the claim's CDI spec if it vanished (one ``stat`` per already-prepared claim)."""
        path = self.spec_path(claim.uid)
        if not path.exists():
            write_atomic(path, (json.dumps(claim.spec, indent=2) + "\n").encode())

    def prepare(
        self, *, uid: str, namespace: str, name: str, devices: list[tuple[AllocatedDevice, list[str]]]
    ) -> PreparedClaim:
        """Write the claim's CDI spec and remember it (call :meth:`save` before answering the kubelet)."""
        spec = claim_cdi_spec(uid, devices)
        write_atomic(self.spec_path(uid), (json.dumps(spec, indent=2) + "\n").encode())
        prepared = PreparedClaim(
            uid=uid,
            namespace=namespace,
            name=name,
            devices=tuple(
                PreparedDevice(
                    request_names=(dev.request,) if dev.request else (),
                    pool=dev.pool,
                    device=dev.device,
                    cdi_ids=(f"{CLAIM_CDI_KIND}={claim_cdi_device(uid, dev)}",),
                    share_id=dev.share_id,
                )
                for dev, _ in devices
            ),
            spec=spec,
        )
        self._claims[uid] = prepared
        return prepared

    def unprepare(self, uid: str) -> bool:
        """Forget the claim and delete its spec; True if it was prepared (call :meth:`save` afterwards)."""
        self.spec_path(uid).unlink(missing_ok=True)
        return self._claims.pop(uid, None) is not None

    def save(self) -> None:
        """Write the checkpoint atomically."""
        doc = {
            "version": CHECKPOINT_VERSION,
            "claims": {
                uid: {
                    "namespace": c.namespace,
                    "name": c.name,
                    "devices": [d.to_json() for d in c.devices],
                    "spec": c.spec,
                }
                for uid, c in sorted(self._claims.items())
            },
        }
        write_atomic(self.checkpoint, (json.dumps(doc, indent=1) + "\n").encode(), mode=0o600)
