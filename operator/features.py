"""What the API server supports, where the manifests must differ by Kubernetes version (pure)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterFeatures:
    """What the API server supports, where our manifests must differ by version."""
    grpc_probe: bool = True  # native gRPC probes: Kubernetes >= 1.24
    pdb_api_version: str = "policy/v1"  # policy/v1 from 1.21; 1.20 serves only policy/v1beta1


def _leading_int(text: str) -> int:
    digits = ""
    for ch in text:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits or 0)


def cluster_features(major: str, minor: str, policy_versions: list[str], git_version: str = "") -> ClusterFeatures:
    """Features from /version (major "1", minor "24+"); builds without them fall back to gitVersion "v1.24.3"."""
    if not major and git_version.startswith("v"):
        major, _, rest = git_version[1:].partition(".")
        minor = rest.partition(".")[0]
    newer = _leading_int(major) > 1 or (_leading_int(major) == 1 and _leading_int(minor) >= 24)
    return ClusterFeatures(
        grpc_probe=newer,
        pdb_api_version="policy/v1" if "v1" in policy_versions else "policy/v1beta1",
    )
