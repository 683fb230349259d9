# syntax=docker/dockerfile:1
# snnrm image: the node daemon (`snnrm run`), the controller and the chart's `helm test` pod all run it.
#
#   docker build -t registry.example.com/snnrm:0.1.0 .
#
# Two stages: `build` installs snnrm and its wheels into a virtualenv; the final stage is the same slim Python base
# with only that virtualenv copied in (no compiler, no pip cache, no sources). It runs as uid/gid 65532 by default;
# the chart runs the DaemonSet as uid 0 with every capability dropped, because the kubelet's device plugin sockets
# are owned by root, and everything else as 65532 (charts/snnrm/values.yaml).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# A C compiler for snnrm's one extension (GetPreferredAllocation's ID lookup, setup.py), and Python's headers when
# the base has none (Debian's python3; python:3.11-slim ships them). Only this stage has them.
RUN headers="$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" \
 && apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev $([ -f "$headers" ] || echo python3-dev) \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependency layer first: it only changes when pyproject.toml does.
COPY pyproject.toml README.md ./
RUN python -m venv /opt/snnrm \
 && /opt/snnrm/bin/pip install --upgrade pip \
 && python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(d['project']['dependencies']))" > /tmp/requirements.txt \
 && /opt/snnrm/bin/pip install -r /tmp/requirements.txt
COPY setup.py ./
COPY snnrm ./snnrm
COPY sim_hw ./sim_hw
# The extension is optional for pip; the image must not ship without it (the check fails the build instead; it runs
# outside /src, where the sources without the built extension would shadow the installed package).
RUN /opt/snnrm/bin/pip install --no-deps . \
 && /opt/snnrm/bin/pip uninstall -y pip \
 && /opt/snnrm/bin/python -m compileall -q /opt/snnrm \
 && cd / && /opt/snnrm/bin/python -c "from snnrm.kubelet.id_index import NATIVE; assert NATIVE, 'C extension not built'" \
 && /opt/snnrm/bin/snnrm --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="snnrm" \
      org.opencontainers.image.description="Telemetry-driven resource manager for neuromorphic (SNN) hardware on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/snnrm /opt/snnrm
# Bytecode was compiled in the build stage; the root filesystem is read-only in the pods.
ENV PATH=/opt/snnrm/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
# Metrics, probes, JSON API, hooks (daemon); the controller's extender port is set by the chart.
EXPOSE 9400
ENTRYPOINT ["snnrm"]
CMD ["run"]
