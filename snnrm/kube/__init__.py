"""The product's one Kubernetes access layer.

* :mod:`snnrm.kube.api`: :class:`~snnrm.kube.api.ClusterApi` (what the product asks of the apiserver, JSON in and
  out), the resources it names, and the one error tree (``KubeError`` under ``snnrm.core.errors.ApiError``).
* :mod:`snnrm.kube.client`: :class:`~snnrm.kube.client.KubeAsyncApi`, its kubernetes-asyncio implementation and the
  only place credentials (kubeconfig or the pod's service account) are loaded.
* :mod:`snnrm.kube.dra`: the DRA driver's calls (ResourceSlices, ResourceClaims, its Node), typed, over any
  ``ClusterApi``.

Tests use :class:`snnrm.testing.fake_cluster.FakeClusterApi`, the in-memory ``ClusterApi``.
"""
