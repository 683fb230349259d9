"""The DRA (Dynamic Resource Allocation, ``resource.k8s.io/v1``) kubelet plugin of snnrm.

* :mod:`snnrm.dra.registration`: ``/pluginregistration.Registration`` on ``plugins_registry/<driver>-reg.sock``;
* :mod:`snnrm.dra.servicer`: ``v1.DRAPlugin`` (NodePrepareResources / NodeUnprepareResources) over
  :mod:`snnrm.dra.claims` (prepared claims, their CDI specs and the checkpoint);
* :mod:`snnrm.dra.health`: the ``DRAResourceHealth`` stream;
* :mod:`snnrm.dra.view`: the node's DRA device state, folded from the telemetry monitor (pure rules in
  :mod:`snnrm.core.dra`);
* :mod:`snnrm.dra.publisher`: the node's ResourceSlices against the apiserver (:mod:`snnrm.kube.dra`, over the
  daemon's one Kubernetes client);
* :mod:`snnrm.dra.plugin`: the lifecycle that owns all of it. docs/dra.md explains the design.
"""
