"""``/pluginregistration.Registration`` for the DRA driver: what the kubelet's plugin watcher asks first.

The kubelet watches ``/var/lib/kubelet/plugins_registry``; for every socket that appears it calls ``GetInfo``,
validates the answer (type ``DRAPlugin``, a service it speaks in ``supported_versions``), dials ``endpoint`` and
reports the outcome through ``NotifyRegistrationStatus``. For DRA, ``supported_versions`` lists gRPC *service
names* (``v1.DRAPlugin``…); the kubelet picks the newest it knows, and starts the resource health stream when a
``DRAResourceHealth`` service is listed too. Deleting the socket deregisters the driver (and 30 s later the
kubelet deletes the node's ResourceSlices of the driver).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
import structlog

from snnrm.kubelet.protos.pluginregistration.v1 import api_pb2
from snnrm.kubelet.wire import lenient, refuse_malformed

log = structlog.get_logger(__name__)

REGISTRATION_SERVICE = "pluginregistration.Registration"
DRA_PLUGIN_TYPE = "DRAPlugin"
DRA_SERVICE_V1 = "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"
DRA_SERVICE_V1BETA1 = "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin"
HEALTH_SERVICE_V1 = "v1.DRAResourceHealth"
HEALTH_SERVICE_V1ALPHA1 = "v1alpha1.DRAResourceHealth"
SUPPORTED_SERVICES = ("v1.DRAPlugin", "v1beta1.DRAPlugin", HEALTH_SERVICE_V1, HEALTH_SERVICE_V1ALPHA1)
"""What ``GetInfo`` advertises, newest first: kubelet ≥1.34 picks ``v1.DRAPlugin``, 1.32-1.33 ``v1beta1``; the
health service is ``v1`` from 1.37 and ``v1alpha1`` before (the messages are identical in each pair)."""


class RegistrationServicer:
    """Answers the kubelet's plugin watcher for one driver endpoint."""

    def __init__(self, *, driver: str, endpoint: str, services: Sequence[str] = SUPPORTED_SERVICES) -> None:
        self._info = api_pb2.PluginInfo(
            type=DRA_PLUGIN_TYPE, name=driver, endpoint=endpoint, supported_versions=list(services)
        )
        self.registered = asyncio.Event()
        """Set once the kubelet reported a successful registration (cleared if it reports a failure)."""
        self.last_error = ""
        self.notifications = 0

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            REGISTRATION_SERVICE,
            {
                "GetInfo": grpc.unary_unary_rpc_method_handler(
                    self._get_info,
                    request_deserializer=lenient(api_pb2.InfoRequest.FromString),
                    response_serializer=api_pb2.PluginInfo.SerializeToString,
                ),
                "NotifyRegistrationStatus": grpc.unary_unary_rpc_method_handler(
                    self._notify,
                    request_deserializer=lenient(api_pb2.RegistrationStatus.FromString),
                    response_serializer=api_pb2.RegistrationStatusResponse.SerializeToString,
                ),
            },
        )

    async def _get_info(self, request: api_pb2.InfoRequest | None, context: Any) -> api_pb2.PluginInfo:
        if request is None:
            await refuse_malformed(context, "GetInfo")
        log.debug("dra_get_info", name=self._info.name, endpoint=self._info.endpoint)
        return self._info

    async def _notify(
        self, request: api_pb2.RegistrationStatus | None, context: Any
    ) -> api_pb2.RegistrationStatusResponse:
        if request is None:
            await refuse_malformed(context, "NotifyRegistrationStatus")
        self.notifications += 1
        if request.plugin_registered:
            self.last_error = ""
            self.registered.set()
            log.info("dra_registered", driver=self._info.name, endpoint=self._info.endpoint)
        else:
            self.last_error = request.error
            self.registered.clear()
            log.error("dra_registration_failed", driver=self._info.name, error=request.error)
        return api_pb2.RegistrationStatusResponse()
