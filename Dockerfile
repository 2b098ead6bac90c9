# One image for every eaas component; the command picks the role:
#   eaas gateway ... | eaas expert-server ... | eaas operator ...   (the operator writes these commands)
# CPU (default):  docker build -t eaas .
# CUDA:           docker build -t eaas:cuda \
#                   --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#                   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
# (the CUDA base needs python3.11: deadsnakes or a base image that ships it)
# Offline (no index reachable from the build): a folder of wheels mounted at WHEELS, e.g. with buildah
#   buildah bud --build-arg WHEELS=/wheels --volume $PWD/wheels:/wheels:ro -t eaas .
# (scripts/k8s-testbed.sh image does this on a Debian base it makes itself.)
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# torch comes from this index before `pip install .` so the project's torch>=2.4 is already met:
# CPU wheels by default (no multi-GB CUDA download), CUDA wheels when a cu* index is given.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PYTHON=python3.11
ARG WHEELS=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    PIP_BREAK_SYSTEM_PACKAGES=1

# PIP_BREAK_SYSTEM_PACKAGES: a Debian base's python refuses system-wide installs otherwise (PEP 668).
# -P everywhere: /src/operator would shadow the stdlib's operator module (pip imports it).
WORKDIR /src
# Layer 1, the dependencies (1.3 GB, rebuilt only when pyproject.toml changes): torch first so the
# project's torch>=2.4 is already met, then the rest of [project].dependencies. torch's C++ headers and
# test binaries (~145 MB) are for building extensions, not for serving.
COPY pyproject.toml ./
RUN ${PYTHON} -P -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && if [ -n "${WHEELS}" ]; then \
        ${PYTHON} -P -m pip install --no-index --find-links "${WHEELS}" torch -r /tmp/requirements.txt ; \
    else \
        ${PYTHON} -P -m pip install --index-url "${TORCH_INDEX}" torch && ${PYTHON} -P -m pip install -r /tmp/requirements.txt ; \
    fi \
 && ${PYTHON} -P -c "import importlib.util as u, shutil; d = u.find_spec('torch').submodule_search_locations[0]; [shutil.rmtree(f'{d}/{x}', True) for x in ('include', 'test')]" \
 && rm -rf /tmp/requirements.txt /tmp/.cache

# Layer 2, the project itself (a few MB: what a code change rebuilds).
COPY README.md ./
COPY eaas ./eaas
COPY gateway ./gateway
COPY expert_service ./expert_service
COPY operator ./operator
COPY protos ./protos
RUN if [ -n "${WHEELS}" ]; then \
        ${PYTHON} -P -m pip install --no-index --find-links "${WHEELS}" --no-deps . ; \
    else \
        ${PYTHON} -P -m pip install --no-deps . ; \
    fi \
 && rm -rf /src /tmp/.cache

# Non-root, uid matching the operator's pod securityContext (runAsUser 10001); the root filesystem
# can be mounted read-only: everything writable lives under /tmp (an emptyDir in the pods).
RUN groupadd --system --gid 10001 eaas && useradd --system --uid 10001 --gid eaas --home-dir /tmp eaas
USER 10001:10001
WORKDIR /tmp
EXPOSE 50050 50051 8000 9090 8080
ENTRYPOINT []
CMD ["eaas", "--help"]
