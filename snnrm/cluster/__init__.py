"""The Kubernetes API side: the placement controller (cluster cache, gang planner, Lease leader election,
reallocation by eviction), the node agent (node summary, plan hints for admissions, live remaps), the API seam
(:mod:`snnrm.cluster.api`, kubernetes-asyncio) and alert-driven autoscaling hooks (:mod:`snnrm.cluster.hooks`,
with its own small client in :mod:`snnrm.cluster.kube`)."""
