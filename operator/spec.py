"""MoEDeployment spec as typed, defaulted values: the one place that reads the CR's spec dict.

The API server already enforced the CRD's OpenAPI schema (types, ranges, enums, patterns); what a
schema without CEL cannot say (cross-field rules, name lengths) is checked here and raised as SpecError.
Defaults mirror the CRD's `default:` values because the API server only defaults objects that exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eaas.topology import ExpertGroup, expert_groups

GROUP = "eaas.dev"
VERSION = "v1alpha1"
PLURAL = "moedeployments"

REDIS_PORT = 6379
GATEWAY_GRPC_PORT = 50050
GATEWAY_HTTP_PORT = 8000
EXPERT_GRPC_PORT = 50051
EXPERT_METRICS_PORT = 9090
DEFAULT_REDIS_IMAGE = "redis:7.2-alpine"
TRANSPORTS = ("auto", "grpc", "shm")  # the expert data path (eaas/rpc/slot_transport.py)

# Services are DNS-1035 labels: at most 63 characters.
MAX_SERVICE_NAME = 63


class SpecError(ValueError):
    """A spec the API server accepted but the operator cannot realise (reported in status, not retried)."""


@dataclass(frozen=True)
class PodPlacement:
    resources: dict[str, Any] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Autoscaling:
    enabled: bool = True
    target_tokens_per_second_per_replica: float = 1000.0
    scale_up_stabilization_seconds: int = 0
    scale_down_stabilization_seconds: int = 300
    interval_seconds: int = 15
    load_windows: int = 3
    policy: str = "reactive"  # or "predictive": decide on max(load now, forecast) (operator/forecast.py)


# NetworkPolicy peers (networking.k8s.io/v1 NetworkPolicyPeer): the API server checks their contents
# when the operator applies the policy; here only their shape.
PEER_KEYS = frozenset({"podSelector", "namespaceSelector", "ipBlock"})


@dataclass(frozen=True)
class Security:
    tls_secret_name: str | None = None       # kubernetes.io/tls Secret with tls.crt, tls.key, ca.crt
    api_key_secret_name: str | None = None   # Secret holding the gateways' API key
    api_key_secret_key: str = "api-key"      # its key
    network_policies: bool = True            # write the deployment's NetworkPolicies
    metrics_from: tuple[dict[str, Any], ...] | None = None  # None: expert metrics from anywhere
    gateway_from: tuple[dict[str, Any], ...] | None = None  # None: gateways from anywhere


@dataclass(frozen=True)
class MoESpec:
    name: str
    namespace: str
    model_uri: str
    num_experts: int
    num_layers: int
    image: str
    image_pull_policy: str | None
    gateway_replicas: int
    gateway: PodPlacement
    experts_per_replica: int
    min_replicas: int
    max_replicas: int
    experts: PodPlacement
    redis_managed: bool
    redis_external_url: str | None
    redis_image: str
    autoscaling: Autoscaling
    security: Security = field(default_factory=Security)
    transport: str = "auto"

    @property
    def groups(self) -> list[ExpertGroup]:
        return expert_groups(self.num_experts, self.experts_per_replica)

    @property
    def redis_url(self) -> str | None:
        """The URL the pods use; None when the deployment has no Redis."""
        if self.redis_managed:
            return f"redis://{self.name}-redis.{self.namespace}.svc:{REDIS_PORT}/0"
        return self.redis_external_url


def redis_secret_name(deployment: str) -> str:
    """The Secret holding a managed Redis's generated password (key REDIS_PASSWORD_KEY)."""
    return f"{deployment}-redis-auth"


REDIS_PASSWORD_KEY = "password"


def group_label(group: ExpertGroup) -> str:
    """A group's identity in object names and labels: its expert range ('e0-3'), not its index, so that
    a re-shaped layout's groups never share a name or a selector with the layout they replace."""
    return f"e{group.experts[0]}-{group.experts[-1]}"


def expert_object_name(deployment: str, group: ExpertGroup) -> str:
    """Name of the group's Deployment, headless Service and PodDisruptionBudget."""
    return f"{deployment}-experts-{group_label(group)}"


def _quantities(resources: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Quantities as strings: server-side apply rejects `nvidia.com/gpu: 1` (an int) in a Pod spec."""
    return {kind: {name: str(value) for name, value in (amounts or {}).items()}
            for kind, amounts in resources.items()}


def _placement(raw: dict[str, Any]) -> PodPlacement:
    return PodPlacement(
        resources=_quantities(dict(raw.get("resources") or {})),
        node_selector=dict(raw.get("nodeSelector") or {}),
        tolerations=[dict(t) for t in raw.get("tolerations") or []],
    )


def parse_spec(name: str, namespace: str, spec: dict[str, Any], default_redis_image: str = DEFAULT_REDIS_IMAGE
               ) -> MoESpec:
    """Typed spec with defaults applied; raises SpecError for rules the CRD schema cannot express.
    `default_redis_image`: the operator's --redis-image, for a managed Redis the spec names no image of."""
    try:
        parsed = _typed_spec(name, namespace, spec, default_redis_image)
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        # an object the CRD schema did not check (an older CRD, a hand-edited object): one clear error
        raise SpecError(f"malformed spec: {exc}") from None
    check_spec(parsed)
    return parsed


def _typed_spec(name: str, namespace: str, spec: dict[str, Any], default_redis_image: str) -> MoESpec:
    model = spec.get("model") or {}
    experts = spec.get("experts") or {}
    gateway = spec.get("gateway") or {}
    mempool = spec.get("memPool") or {}
    scaling = spec.get("autoscaling") or {}
    defaults = Autoscaling()
    parsed = MoESpec(
        name=name,
        namespace=namespace,
        model_uri=str(model.get("uri", "")),
        num_experts=int(model.get("numExperts", 0)),
        num_layers=int(model.get("numLayers", 0)),
        image=str(spec.get("image", "")),
        image_pull_policy=spec.get("imagePullPolicy"),
        gateway_replicas=int(gateway.get("replicas", 1)),
        gateway=_placement(gateway),
        experts_per_replica=int(experts.get("expertsPerReplica", 0)),
        min_replicas=int(experts.get("minReplicas", 1)),
        max_replicas=int(experts.get("maxReplicas", 4)),
        experts=_placement(experts),
        redis_managed=bool(mempool.get("managed", False)),
        redis_external_url=(mempool.get("redis") or {}).get("url"),
        redis_image=str(mempool.get("redisImage") or default_redis_image),
        autoscaling=Autoscaling(
            enabled=bool(scaling.get("enabled", defaults.enabled)),
            target_tokens_per_second_per_replica=float(
                scaling.get("targetTokensPerSecondPerReplica", defaults.target_tokens_per_second_per_replica)),
            scale_up_stabilization_seconds=int(
                scaling.get("scaleUpStabilizationSeconds", defaults.scale_up_stabilization_seconds)),
            scale_down_stabilization_seconds=int(
                scaling.get("scaleDownStabilizationSeconds", defaults.scale_down_stabilization_seconds)),
            interval_seconds=int(scaling.get("intervalSeconds", defaults.interval_seconds)),
            load_windows=int(scaling.get("loadWindows", defaults.load_windows)),
            policy=str(scaling.get("policy", defaults.policy)),
        ),
        security=_security(spec.get("security") or {}),
        transport=str(spec.get("transport", "auto")),
    )
    return parsed


def _peers(raw: Any, what: str) -> tuple[dict[str, Any], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(peer, dict) and peer and set(peer) <= PEER_KEYS
                                            for peer in raw):
        raise SpecError(f"security.{what}: a list of peers, each with one or more of {', '.join(sorted(PEER_KEYS))}")
    return tuple(dict(peer) for peer in raw)


def _security(raw: dict[str, Any]) -> Security:
    return Security(
        tls_secret_name=raw.get("tlsSecretName") or None,
        api_key_secret_name=raw.get("apiKeySecretName") or None,
        api_key_secret_key=str(raw.get("apiKeySecretKey") or Security.api_key_secret_key),
        network_policies=bool(raw.get("networkPolicies", True)),
        metrics_from=_peers(raw.get("metricsFrom"), "metricsFrom"),
        gateway_from=_peers(raw.get("gatewayFrom"), "gatewayFrom"),
    )


def redis_url_of(name: str, namespace: str, spec: dict[str, Any]) -> str | None:
    """The Redis the pods use, also for a spec the operator rejected (its keys still need deleting)."""
    try:
        return parse_spec(name, namespace, spec).redis_url
    except SpecError:
        return ((spec.get("memPool") or {}).get("redis") or {}).get("url")


def check_spec(spec: MoESpec) -> None:
    """Cross-field rules; the schema already checked each field alone."""
    missing = [f for f, v in (("model.uri", spec.model_uri), ("image", spec.image),
                              ("model.numExperts", spec.num_experts), ("model.numLayers", spec.num_layers),
                              ("experts.expertsPerReplica", spec.experts_per_replica)) if not v]
    if missing:
        raise SpecError(f"missing required fields: {', '.join(missing)}")
    for what, value, top in (("model.numExperts", spec.num_experts, 4096), ("model.numLayers", spec.num_layers, 1024),
                             ("experts.expertsPerReplica", spec.experts_per_replica, 4096),
                             ("gateway.replicas", spec.gateway_replicas, 100),
                             ("experts.minReplicas", spec.min_replicas, 1000),
                             ("experts.maxReplicas", spec.max_replicas, 1000)):
        if not 1 <= value <= top:  # the CRD's ranges, for objects it did not check: no unbounded loops
            raise SpecError(f"{what} must be in 1..{top}, got {value}")
    if spec.min_replicas > spec.max_replicas:
        raise SpecError(f"experts.minReplicas ({spec.min_replicas}) exceeds experts.maxReplicas ({spec.max_replicas})")
    if spec.redis_managed and spec.redis_external_url:
        raise SpecError("memPool: set either redis.url or managed: true, not both")
    if not spec.autoscaling.target_tokens_per_second_per_replica > 0:  # NaN too
        raise SpecError("autoscaling.targetTokensPerSecondPerReplica must be > 0")
    if spec.autoscaling.policy not in ("reactive", "predictive"):
        raise SpecError(f"autoscaling.policy must be reactive or predictive, got {spec.autoscaling.policy!r}")
    if spec.transport not in TRANSPORTS:
        raise SpecError(f"transport must be one of {', '.join(TRANSPORTS)}, got {spec.transport!r}")
    if spec.transport == "shm":  # the slots' unix socket is per network namespace, and every pod has its own
        raise SpecError("transport shm needs the gateway and the expert servers in one network namespace on one "
                        "host; the operator's pods each have their own: use auto (gRPC between pods) or grpc")
    longest = max((expert_object_name(spec.name, g) for g in spec.groups), key=len)
    if len(longest) > MAX_SERVICE_NAME:
        raise SpecError(f"name too long: service {longest!r} would exceed {MAX_SERVICE_NAME} characters; "
                        f"shorten metadata.name or raise experts.expertsPerReplica")
