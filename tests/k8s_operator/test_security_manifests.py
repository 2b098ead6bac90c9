"""What a MoEDeployment's `security` section and a managed Redis put into the pods: the TLS Secret
mounted read-only with the three TLS flags, the API-key Secret as a file for the gateways only, the
generated Redis password as an environment variable, and probes that still work over TLS."""

from __future__ import annotations

import pytest

from eaas.operator.credentials import redis_password, redis_password_secret
from eaas.operator.manifests import ClusterFeatures, desired_manifests
from eaas.operator.spec import SpecError, parse_spec

SPEC = {"model": {"uri": "/models/tiny", "numExperts": 8, "numLayers": 4}, "image": "eaas:test",
        "experts": {"expertsPerReplica": 4}, "memPool": {"managed": True}}
SECURE = {**SPEC, "security": {"tlsSecretName": "mix-tls", "apiKeySecretName": "mix-key", "apiKeySecretKey": "token"}}
FEATURES = ClusterFeatures(True, "policy/v1")  # a cluster with gRPC probes (>= 1.24)


def pods(spec: dict) -> dict[str, dict]:
    return {m["metadata"]["name"]: m["spec"]["template"]["spec"]
            for m in desired_manifests(parse_spec("mix", "team", spec), {}, FEATURES) if m["kind"] == "Deployment"}


def container(pod: dict) -> dict:
    (only,) = pod["containers"]
    return only


def flag(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_tls_secret_is_mounted_read_only_and_named_by_the_three_flags_on_gateways_and_experts():
    for name, pod in pods(SECURE).items():
        c = container(pod)
        if name == "mix-redis":
            assert "tls" not in {v["name"] for v in pod["volumes"]}
            continue
        assert {"name": "tls", "secret": {"secretName": "mix-tls", "defaultMode": 0o440}} in pod["volumes"]
        assert {"name": "tls", "mountPath": "/etc/eaas/tls", "readOnly": True} in c["volumeMounts"]
        assert (flag(c["command"], "--tls-cert-file"), flag(c["command"], "--tls-key-file"),
                flag(c["command"], "--tls-ca-file")) == ("/etc/eaas/tls/tls.crt", "/etc/eaas/tls/tls.key",
                                                         "/etc/eaas/tls/ca.crt")
    plain = pods(SPEC)
    assert all("--tls-cert-file" not in container(p)["command"] for p in plain.values())


def test_gateways_check_the_experts_certificate_for_the_deployments_expert_name_not_the_pod_ip():
    for name, pod in pods(SECURE).items():
        command = container(pod)["command"]
        if "gateway" in name:
            assert flag(command, "--expert-tls-name") == "mix-experts.team.svc"
        else:
            assert "--expert-tls-name" not in command
    assert all("--expert-tls-name" not in container(p)["command"] for p in pods(SPEC).values())


def test_probes_follow_tls_the_kubelet_grpc_probe_has_none():
    secure, plain = pods(SECURE), pods(SPEC)
    assert container(plain["mix-experts-e0-3"])["readinessProbe"]["grpc"] == {"port": 50051}
    assert container(secure["mix-experts-e0-3"])["readinessProbe"]["tcpSocket"] == {"port": 50051}
    assert container(plain["mix-gateway"])["readinessProbe"]["httpGet"].get("scheme", "HTTP") == "HTTP"
    assert container(secure["mix-gateway"])["startupProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_api_key_secret_is_a_file_for_the_gateways_only():
    secure = pods(SECURE)
    gateway = secure["mix-gateway"]
    assert flag(container(gateway)["command"], "--api-key-file") == "/etc/eaas/api-key/api-key"
    (volume,) = [v for v in gateway["volumes"] if v["name"] == "api-key"]
    assert volume["secret"] == {"secretName": "mix-key", "defaultMode": 0o440,
                                "items": [{"key": "token", "path": "api-key"}]}
    assert {"name": "api-key", "mountPath": "/etc/eaas/api-key", "readOnly": True} in container(gateway)["volumeMounts"]
    for name in ("mix-experts-e0-3", "mix-redis"):
        assert "api-key" not in {v["name"] for v in secure[name]["volumes"]}
        assert "--api-key-file" not in container(secure[name])["command"]
    assert parse_spec("mix", "team", {**SPEC, "security": {"apiKeySecretName": "k"}}).security.api_key_secret_key \
        == "api-key"


def test_managed_redis_requires_the_generated_password_and_every_client_pod_has_it():
    managed = pods(SPEC)
    ref = {"name": "EAAS_REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "mix-redis-auth", "key": "password"}}}
    for name, pod in managed.items():
        assert ref in container(pod)["env"], name
    redis = container(managed["mix-redis"])["command"]
    assert flag(redis, "--requirepass") == "$(EAAS_REDIS_PASSWORD)"  # expanded by the kubelet, not in the spec
    external = pods({**SPEC, "memPool": {"redis": {"url": "redis://:pw@r.example:6379/0"}}})
    assert all(e["name"] != "EAAS_REDIS_PASSWORD" for p in external.values() for e in container(p)["env"])


def test_the_password_is_derived_per_deployment_under_the_operators_key():
    moe = parse_spec("mix", "team", SPEC)
    first = redis_password(b"k" * 32, "team", "mix")
    assert first == redis_password(b"k" * 32, "team", "mix") and len(first) == 43  # 256 bits, URL-safe
    assert first not in {redis_password(b"j" * 32, "team", "mix"), redis_password(b"k" * 32, "team", "mixx"),
                         redis_password(b"k" * 32, "other", "mix")}
    secret = redis_password_secret(moe, first)
    assert (secret["metadata"]["name"], secret["stringData"]) == ("mix-redis-auth", {"password": first})
    assert secret["metadata"]["labels"]["app.kubernetes.io/instance"] == "mix"


def test_network_policies_are_applied_unless_turned_off():
    kinds = lambda spec: [m["metadata"]["name"] for m in desired_manifests(parse_spec("mix", "team", spec), {},  # noqa: E731
                                                                           FEATURES) if m["kind"] == "NetworkPolicy"]
    assert kinds(SPEC) == ["mix-experts", "mix-gateway", "mix-redis"]
    assert kinds({**SPEC, "memPool": {}}) == ["mix-experts", "mix-gateway"]
    assert kinds({**SPEC, "security": {"networkPolicies": False}}) == []


@pytest.mark.parametrize("peers", [[{}], [{"podSelector": {}, "cidr": "10.0.0.0/8"}], ["prometheus"]])
def test_malformed_peers_are_a_spec_error(peers):
    with pytest.raises(SpecError, match="metricsFrom"):
        parse_spec("mix", "team", {**SPEC, "security": {"metricsFrom": peers}})


def test_operator_password_key_file_is_read_and_bad_ones_are_one_line_errors(tmp_path):
    from eaas.cli import UserError
    from eaas.operator.cli import _password_key

    good = tmp_path / "key"
    good.write_bytes(b"0123456789abcdef0123\n")
    assert _password_key(str(good)) == b"0123456789abcdef0123"
    assert _password_key(None) is None
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    with pytest.raises(UserError, match="at least 16 bytes"):
        _password_key(str(short))
    with pytest.raises(UserError, match="cannot read --redis-password-key-file"):
        _password_key(str(tmp_path / "absent"))
