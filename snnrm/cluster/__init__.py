"""The Kubernetes API side: the placement controller (cluster cache, gang planner, Lease leader election,
reallocation by eviction), the node agent (node summary, plan hints for admissions, live remaps) and alert-driven
autoscaling hooks (:mod:`snnrm.cluster.hooks`, still with its own small client in :mod:`snnrm.cluster.kube`). They
talk to the apiserver through :mod:`snnrm.kube`, the one access layer."""
