"""Pure builders of what the pods get from Secrets: the TLS certificate (flags + a read-only volume), the
gateways' API key (a file), and a managed Redis's password (an environment variable from a Secret the
operator creates once: redis_password_secret; docs/security.md).

A managed Redis's password is derived, not stored by the operator: HMAC-SHA256 of the deployment's
namespace/name under the operator's key (a Secret the chart makes and mounts into the operator's pod).
So the operator can always recompute it for its own Redis client and needs no right to read Secrets:
its RBAC has `create` on secrets and nothing else."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

from eaas.mempool.redis_link import PASSWORD_ENV as REDIS_PASSWORD_ENV

from .labels import owned_labels
from .spec import REDIS_PASSWORD_KEY, MoESpec, redis_secret_name

TLS_DIR = "/etc/eaas/tls"
API_KEY_DIR = "/etc/eaas/api-key"
API_KEY_FILE = "api-key"
SECRET_FILE_MODE = 0o440  # owner and group (the pod's fsGroup) read; nobody else


def tls_args(spec: MoESpec) -> list[str]:
    """The same three flags on gateways and expert servers: mutual TLS against the deployment's CA."""
    if not spec.security.tls_secret_name:
        return []
    return ["--tls-cert-file", f"{TLS_DIR}/tls.crt", "--tls-key-file", f"{TLS_DIR}/tls.key",
            "--tls-ca-file", f"{TLS_DIR}/ca.crt"]


def expert_tls_name(spec: MoESpec) -> str:
    """The DNS name the TLS Secret's certificate must carry (besides any the user wants for clients): gateways
    dial expert pods by IP, so they check the experts' certificate for this name instead of the address."""
    return f"{spec.name}-experts.{spec.namespace}.svc"


def gateway_tls_args(spec: MoESpec) -> list[str]:
    return [*tls_args(spec), "--expert-tls-name", expert_tls_name(spec)] if spec.security.tls_secret_name else []


def api_key_args(spec: MoESpec) -> list[str]:
    return ["--api-key-file", f"{API_KEY_DIR}/{API_KEY_FILE}"] if spec.security.api_key_secret_name else []


def secret_volumes(spec: MoESpec, api_key: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts): the TLS Secret (cert-manager's shape: tls.crt, tls.key, ca.crt) and, for
    gateways, the API-key Secret; both read-only, updated in place by the kubelet when the Secret changes."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if spec.security.tls_secret_name:
        volumes.append({"name": "tls", "secret": {"secretName": spec.security.tls_secret_name,
                                                  "defaultMode": SECRET_FILE_MODE}})
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    if api_key and spec.security.api_key_secret_name:
        volumes.append({"name": "api-key", "secret": {
            "secretName": spec.security.api_key_secret_name, "defaultMode": SECRET_FILE_MODE,
            "items": [{"key": spec.security.api_key_secret_key, "path": API_KEY_FILE}]}})
        mounts.append({"name": "api-key", "mountPath": API_KEY_DIR, "readOnly": True})
    return volumes, mounts


def redis_password_env(spec: MoESpec) -> list[dict[str, Any]]:
    """The managed Redis's password for every pod that talks to it; none for an external Redis (its URL
    carries its own credentials)."""
    if not spec.redis_managed:
        return []
    return [{"name": REDIS_PASSWORD_ENV, "valueFrom": {"secretKeyRef": {
        "name": redis_secret_name(spec.name), "key": REDIS_PASSWORD_KEY}}}]


def new_password_key() -> bytes:
    """A key for an operator started without --redis-password-key-file (passwords then change with it)."""
    return secrets.token_bytes(32)


def redis_password(key: bytes, namespace: str, name: str) -> str:
    """The managed Redis password of one MoEDeployment: 43 URL-safe characters, 256 bits."""
    digest = hmac.new(key, f"{namespace}/{name}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def redis_password_secret(spec: MoESpec, password: str) -> dict[str, Any]:
    """Created once and never applied again: a Redis that is running keeps the password it started with
    even if the operator's key changed since."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": redis_secret_name(spec.name), "namespace": spec.namespace,
                         "labels": owned_labels(spec, "redis")},
            "stringData": {REDIS_PASSWORD_KEY: password}}
