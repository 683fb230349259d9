"""`helm test` for snnrm: every daemon behind the metrics Service is ready and exports its device plugin metrics;
the scheduler extender answers when the controller is installed. Stdlib only (runs in the snnrm image)."""

import os
import socket
import sys
import urllib.request


def get(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - http URLs built from the Service DNS
        return r.read().decode("utf-8", "replace")


host, port = os.environ["TARGET_HOST"], int(os.environ["TARGET_PORT"])
addrs = sorted({a[4][0] for a in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})
problems = []
if not addrs:
    problems.append(f"no daemon pod behind {host}")
for ip in addrs:
    base = f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"
    try:
        get(base + "/readyz")
        metrics = get(base + "/metrics")
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the test fails
        problems.append(f"daemon {ip}: {e}")
        continue
    if "snnrm_device_plugin_registered" not in metrics:
        problems.append(f"daemon {ip}: /metrics has no snnrm_device_plugin_registered")
    else:
        print(f"ok: daemon {ip} ready, metrics exported")
extender = os.environ.get("EXTENDER_URL")
if extender:
    try:
        get(extender + "/healthz")
        print(f"ok: extender {extender} answers")
    except Exception as e:  # noqa: BLE001
        problems.append(f"extender {extender}: {e}")
for p in problems:
    print("FAIL:", p)
sys.exit(1 if problems else 0)
