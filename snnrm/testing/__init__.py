"""Fakes that ship with snnrm: stand-ins for hardware and drivers, used by our tests and by anyone's.

The one place for fakes (no mocks of our own seams elsewhere): :mod:`snnrm.testing.fake_sysfs` writes the
driver tree that :class:`snnrm.backends.sysfs.SysfsBackend` reads; :mod:`snnrm.testing.fake_podresources` serves
the kubelet's PodResources API (``v1.PodResourcesLister``) on a unix socket; :mod:`snnrm.testing.fake_cluster` is
the in-memory Kubernetes apiserver behind :class:`snnrm.kube.api.ClusterApi` that every layer's tests use (served
over HTTP for daemon subprocesses by :mod:`snnrm.testing.fake_apiserver`); :mod:`snnrm.testing.fake_telemetry`
holds telemetry a test sets by hand. Not fakes, beside them: :mod:`snnrm.testing.real_node` drives the real node
that ``scripts/cluster.sh`` brings up (the real-node tests and ``benchmarks/node_failover.py`` share it).
"""
