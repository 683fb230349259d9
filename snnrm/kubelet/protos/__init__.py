"""Kubelet wire protocols: upstream ``.proto`` sources under ``k8s.io/`` and stubs generated from them.

Regenerate with ``make protos`` (``scripts/gen_protos.py``); ``make lint`` fails when they are stale.
"""
