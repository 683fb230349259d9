"""The Kubernetes API side: the placement controller (cluster cache, gang planner, Lease leader election,
reallocation by eviction), the node agent (node summary, plan hints for admissions, live remaps) and alert-driven
autoscaling hooks (:mod:`snnrm.cluster.hooks`). All of them talk to the apiserver through the
:class:`~snnrm.kube.api.ClusterApi` the app modules inject (:mod:`snnrm.kube`, the one access layer)."""
