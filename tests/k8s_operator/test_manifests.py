"""The pure builders: spec parsing, child manifests, topology JSON and status (no cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from eaas.operator.manifests import ClusterFeatures, cluster_features, desired_manifests, topology_document
from eaas.operator.spec import SpecError, parse_spec
from eaas.operator.status import DeploymentState, groups_status, readiness_status, replicas_from_status, set_condition

CRD = Path(__file__).resolve().parents[2] / "charts/eaas/crds/moedeployments.eaas.dev.yaml"
NEW = ClusterFeatures(grpc_probe=True, pdb_api_version="policy/v1")
OLD = ClusterFeatures(grpc_probe=False, pdb_api_version="policy/v1beta1")


def spec_dict(**overrides) -> dict:
    spec = {
        "model": {"uri": "/models/tiny", "numExperts": 8, "numLayers": 4},
        "image": "eaas:test",
        "experts": {"expertsPerReplica": 3, "minReplicas": 1, "maxReplicas": 4},
        "memPool": {"redis": {"url": "redis://redis.infra:6379/0"}},
    }
    spec.update(overrides)
    return spec


def by_name(manifests: list[dict], kind: str, name: str) -> dict:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def test_groups_cover_all_experts_with_exact_expert_server_commands():
    moe = parse_spec("mix", "team", spec_dict())
    manifests = desired_manifests(moe, {}, NEW)
    expected = {"g0": "0-2", "g1": "3-5", "g2": "6-7"}
    for group, ids in expected.items():
        label = "e" + ids  # objects are named by their expert range: a re-shaped layout never reuses a name
        deployment = by_name(manifests, "Deployment", f"mix-experts-{label}")
        assert deployment["spec"]["template"]["spec"]["containers"][0]["command"] == [
            "eaas", "expert-server", "--model", "/models/tiny", "--experts", ids, "--host", "0.0.0.0",
            "--port", "50051", "--metrics-port", "9090", "--deployment", "mix", "--group", group,
            "--advertise", "$(POD_IP):50051", "--redis", "redis://redis.infra:6379/0"]
        env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        service = by_name(manifests, "Service", f"mix-experts-{label}")
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert sorted(m["metadata"]["name"] for m in manifests if m["kind"] == "Deployment") == [
        "mix-experts-e0-2", "mix-experts-e3-5", "mix-experts-e6-7", "mix-gateway"]


def test_gateway_command_mounts_topology_and_rolls_when_groups_change():
    moe = parse_spec("mix", "team", spec_dict())
    gateway = by_name(desired_manifests(moe, {}, NEW), "Deployment", "mix-gateway")
    pod = gateway["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == [
        "eaas", "gateway", "--model", "/models/tiny", "--topology", "/etc/eaas/topology.json", "--watch-endpoints",
        "--grpc-port", "50050", "--http-port", "8000", "--deployment", "mix", "--redis", "redis://redis.infra:6379/0"]
    assert {"name": "topology", "mountPath": "/etc/eaas", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert {"name": "topology", "configMap": {"name": "mix-topology"}} in pod["volumes"]
    reshaped = parse_spec("mix", "team", spec_dict(experts={"expertsPerReplica": 4}))
    other = by_name(desired_manifests(reshaped, {}, NEW), "Deployment", "mix-gateway")
    hash_key = "eaas.dev/topology-hash"
    assert gateway["spec"]["template"]["metadata"]["annotations"][hash_key] != \
        other["spec"]["template"]["metadata"]["annotations"][hash_key]


def test_transport_goes_to_gateway_and_expert_servers_and_shm_is_refused_between_pods():
    def commands(moe) -> list[list[str]]:
        return [m["spec"]["template"]["spec"]["containers"][0]["command"] for m in desired_manifests(moe, {}, NEW)
                if m["kind"] == "Deployment" and m["metadata"]["name"].startswith("mix-")
                and "redis" not in m["metadata"]["name"]]
    auto = commands(parse_spec("mix", "team", spec_dict()))
    assert len(auto) == 4 and not any("--transport" in c for c in auto)  # auto: the commands' default
    grpc = commands(parse_spec("mix", "team", spec_dict(transport="grpc")))
    assert [c[:2] for c in grpc] == [c[:2] for c in auto]
    assert all(c[-2:] == ["--transport", "grpc"] for c in grpc)
    with pytest.raises(SpecError, match="one network namespace"):
        parse_spec("mix", "team", spec_dict(transport="shm"))
    with pytest.raises(SpecError, match="transport must be one of"):
        parse_spec("mix", "team", spec_dict(transport="nixl"))


def test_topology_json_in_configmap_matches_documented_format():
    moe = parse_spec("mix", "team", spec_dict(experts={"expertsPerReplica": 5}))
    configmap = by_name(desired_manifests(moe, {}, NEW), "ConfigMap", "mix-topology")
    assert json.loads(configmap["data"]["topology.json"]) == topology_document(moe) == {
        "deployment": "mix", "numExperts": 8, "numLayers": 4, "expertsPerReplica": 5,
        "groups": [{"name": "g0", "experts": [0, 1, 2, 3, 4], "service": "mix-experts-e0-4", "port": 50051},
                   {"name": "g1", "experts": [5, 6, 7], "service": "mix-experts-e5-7", "port": 50051}]}


def test_managed_redis_gets_deployment_service_and_in_cluster_url():
    moe = parse_spec("mix", "team", spec_dict(memPool={"managed": True}))
    manifests = desired_manifests(moe, {}, NEW)
    assert by_name(manifests, "Service", "mix-redis")["spec"]["ports"][0]["port"] == 6379
    redis_pod = by_name(manifests, "Deployment", "mix-redis")["spec"]["template"]["spec"]
    assert redis_pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    command = by_name(manifests, "Deployment", "mix-experts-e0-2")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-2:] == ["--redis", "redis://mix-redis.team.svc:6379/0"]


def test_no_redis_means_no_redis_flag():
    moe = parse_spec("mix", "team", spec_dict(memPool={}))
    for m in desired_manifests(moe, {}, NEW):
        if m["kind"] == "Deployment":
            assert "--redis" not in m["spec"]["template"]["spec"]["containers"][0]["command"]


def test_pvc_model_is_mounted_read_only_and_passed_as_path():
    moe = parse_spec("mix", "team", spec_dict(model={"uri": "pvc://weights/mixtral/v1", "numExperts": 2,
                                                     "numLayers": 2}))
    pod = by_name(desired_manifests(moe, {}, NEW), "Deployment", "mix-experts-e0-1")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][2:4] == ["--model", "/models/weights/mixtral/v1"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in pod["volumes"]
    assert {"name": "model", "mountPath": "/models/weights", "readOnly": True} in container["volumeMounts"]


def test_every_pod_is_non_root_with_read_only_root_and_writable_tmp():
    moe = parse_spec("mix", "team", spec_dict(memPool={"managed": True}))
    for m in desired_manifests(moe, {}, NEW):
        if m["kind"] != "Deployment":
            continue
        pod = m["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        container = pod["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]


def test_placement_goes_to_expert_pods():
    experts = {"expertsPerReplica": 4, "resources": {"limits": {"nvidia.com/gpu": 1}},
               "nodeSelector": {"gpu": "h100"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]}
    moe = parse_spec("mix", "team", spec_dict(experts=experts))
    pod = by_name(desired_manifests(moe, {}, NEW), "Deployment", "mix-experts-e4-7")["spec"]["template"]["spec"]
    # quantities become strings: server-side apply refuses the integer the CRD allows
    assert pod["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]


def test_replicas_come_from_autoscaler_and_are_clamped():
    moe = parse_spec("mix", "team", spec_dict())
    manifests = desired_manifests(moe, {"g0": 3, "g1": 9, "g2": 0}, NEW)
    assert [by_name(manifests, "Deployment", name)["spec"]["replicas"]
            for name in ("mix-experts-e0-2", "mix-experts-e3-5", "mix-experts-e6-7")] == [3, 4, 1]


def test_old_clusters_get_policy_v1beta1_and_no_grpc_probe():
    assert cluster_features("1", "20", ["v1beta1"]) == OLD
    assert cluster_features("1", "24+", ["v1", "v1beta1"]) == NEW
    assert cluster_features("1", "23", ["v1", "v1beta1"]) == ClusterFeatures(False, "policy/v1")
    assert cluster_features("", "", ["v1"], "v1.27.4-gke.900") == NEW
    assert cluster_features("", "", ["v1beta1"], "v1.20.2") == OLD
    moe = parse_spec("mix", "team", spec_dict())
    old = desired_manifests(moe, {}, OLD)
    assert {m["apiVersion"] for m in old if m["kind"] == "PodDisruptionBudget"} == {"policy/v1beta1"}


def container_of(manifests: list[dict], name: str) -> dict:
    return by_name(manifests, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("features, check", [(NEW, {"grpc": {"port": 50051}}), (OLD, {"tcpSocket": {"port": 50051}})])
def test_every_pod_has_probes_that_mean_serving_on_every_version(features, check):
    """Below 1.24 there is no gRPC probe: a TCP check stands in (the servers open their port only after loading)."""
    moe = parse_spec("mix", "team", spec_dict(memPool={"managed": True}))
    manifests = desired_manifests(moe, {}, features)
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        expert = container_of(manifests, "mix-experts-e0-2")[probe]
        assert {k: v for k, v in expert.items() if k in ("grpc", "tcpSocket")} == check, probe
        # the gateway opens HTTP after gRPC: its /health answering means both ports serve
        assert container_of(manifests, "mix-gateway")[probe]["httpGet"] == {"path": "/health", "port": 8000}
        assert container_of(manifests, "mix-redis")[probe]["tcpSocket"] == {"port": 6379}
    # a slow model load is the startup probe's business, not a liveness failure
    startup = container_of(manifests, "mix-experts-e0-2")["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_omp_threads_follow_the_cpu_limit_else_request_else_one():
    def omp(resources):
        experts = {"expertsPerReplica": 4, **({"resources": resources} if resources else {})}
        moe = parse_spec("mix", "team", spec_dict(experts=experts))
        env = {e["name"]: e for e in container_of(desired_manifests(moe, {}, NEW), "mix-experts-e0-3")["env"]}
        return env["OMP_NUM_THREADS"]
    field = lambda e: e["valueFrom"]["resourceFieldRef"]  # noqa: E731
    assert field(omp({"limits": {"cpu": "4"}, "requests": {"cpu": "2"}})) == {"resource": "limits.cpu", "divisor": "1"}
    assert field(omp({"requests": {"cpu": "1500m"}})) == {"resource": "requests.cpu", "divisor": "1"}
    # no CPU figure at all: the downward API would give the node's CPU count; one thread instead
    assert omp({"limits": {"memory": "1Gi"}}) == {"name": "OMP_NUM_THREADS", "value": "1"}
    assert omp(None) == {"name": "OMP_NUM_THREADS", "value": "1"}


@pytest.mark.parametrize("version", ["1.25.0", "1.30.0", kubernetes_validate.latest_version()])
def test_built_manifests_validate_against_kubernetes_schemas(version):
    moe = parse_spec("mix", "team", spec_dict(memPool={"managed": True}, experts={
        "expertsPerReplica": 3, "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "8Gi"}},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}))
    for manifest in desired_manifests(moe, {}, NEW):
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("change, message", [
    ({"experts": {"expertsPerReplica": 2, "minReplicas": 5, "maxReplicas": 2}}, "minReplicas"),
    ({"memPool": {"managed": True, "redis": {"url": "redis://x:6379"}}}, "either"),
    ({"image": ""}, "image"),
])
def test_cross_field_errors_are_spec_errors(change, message):
    with pytest.raises(SpecError, match=message):
        parse_spec("mix", "team", spec_dict(**change))


def test_too_long_names_are_refused_with_the_offending_service_name():
    with pytest.raises(SpecError, match="exceed 63"):
        parse_spec("m" * 55, "team", spec_dict())


def test_python_defaults_equal_the_crd_defaults():
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    moe = parse_spec("mix", "team", {"model": {"uri": "/m", "numExperts": 2, "numLayers": 1}, "image": "i",
                                     "experts": {"expertsPerReplica": 1}})
    props = lambda key: schema["properties"][key]["properties"]  # noqa: E731
    assert moe.min_replicas == props("experts")["minReplicas"]["default"]
    assert moe.max_replicas == props("experts")["maxReplicas"]["default"]
    assert moe.gateway_replicas == props("gateway")["replicas"]["default"]
    assert moe.transport == schema["properties"]["transport"]["default"]
    # no CRD default: the operator's --redis-image (chart value managedRedis.image) fills it in
    assert "default" not in props("memPool")["redisImage"]
    scaling = props("autoscaling")
    assert (moe.autoscaling.enabled, moe.autoscaling.target_tokens_per_second_per_replica,
            moe.autoscaling.scale_up_stabilization_seconds, moe.autoscaling.scale_down_stabilization_seconds,
            moe.autoscaling.interval_seconds, moe.autoscaling.load_windows) == tuple(
        scaling[k]["default"] for k in ("enabled", "targetTokensPerSecondPerReplica", "scaleUpStabilizationSeconds",
                                        "scaleDownStabilizationSeconds", "intervalSeconds", "loadWindows"))


def test_status_keeps_replicas_and_history_only_for_unchanged_groups():
    before = parse_spec("mix", "team", spec_dict(experts={"expertsPerReplica": 4, "maxReplicas": 4}))
    states = {"mix-experts-e0-3": DeploymentState(3, 1, 3), "mix-experts-e4-7": DeploymentState(1, 0, 1)}
    from eaas.operator.autoscale import Recommendation
    status = {"groups": groups_status(before, {"g0": 3, "g1": 1}, states, {"g0": 250.0, "g1": 0.0},
                                      {"g0": (Recommendation(5.0, 3),)}, {})}
    assert status["groups"][0] == {"name": "g0", "experts": "0-3", "desiredReplicas": 3, "readyReplicas": 1,
                                   "tokensPerSecond": 250.0, "history": [{"time": 5.0, "replicas": 3}]}
    assert replicas_from_status(before, status) == {"g0": 3, "g1": 1}
    reshaped = parse_spec("mix", "team", spec_dict(experts={"expertsPerReplica": 2, "minReplicas": 2}))
    assert replicas_from_status(reshaped, status) == {"g0": 2, "g1": 2, "g2": 2, "g3": 2}


def test_readiness_conditions_and_printer_summaries():
    moe = parse_spec("mix", "team", spec_dict(experts={"expertsPerReplica": 4}))
    pending = {"mix-gateway": DeploymentState(1, 0, 1), "mix-experts-e0-3": DeploymentState(1, 0, 1),
               "mix-experts-e4-7": DeploymentState(1, 0, 1)}
    status = readiness_status(moe, pending, [], "2026-01-01T00:00:00Z")
    assert (status["readyExpertGroups"], status["gateways"]) == ("0/2", "0/1")
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "ReplicasNotReady")
    assert (conditions["Progressing"]["status"], conditions["Progressing"]["reason"]) == ("True", "RollingOut")
    ready = {n: DeploymentState(1, 1, 1) for n in pending}
    later = readiness_status(moe, ready, status["conditions"], "2026-01-01T00:01:00Z")
    conditions = {c["type"]: c for c in later["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["lastTransitionTime"]) == ("True", "2026-01-01T00:01:00Z")
    assert conditions["Progressing"]["reason"] == "Stable"


def test_condition_transition_time_moves_only_on_flips():
    first = set_condition([], "Degraded", False, "AsExpected", "ok", "t1")
    same = set_condition(first, "Degraded", False, "AsExpected", "still ok", "t2")
    flipped = set_condition(same, "Degraded", True, "RedisUnreachable", "down", "t3")
    assert [c["lastTransitionTime"] for c in (first[0], same[0], flipped[0])] == ["t1", "t1", "t3"]
    assert len(flipped) == 1


def test_rollouts_surge_before_drain_and_let_in_flight_requests_finish():
    from eaas.operator.pods import DRAIN_SECONDS, PRESTOP_SECONDS

    moe = parse_spec("mix", "team", spec_dict())
    manifests = desired_manifests(moe, {}, OLD)
    for name in ("mix-gateway", "mix-experts-e0-2"):
        deployment = by_name(manifests, "Deployment", name)
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        pod = deployment["spec"]["template"]["spec"]
        # preStop: out of every Endpoints list before SIGTERM makes the server refuse new work
        assert pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_SECONDS)]
        assert pod["terminationGracePeriodSeconds"] > PRESTOP_SECONDS + DRAIN_SECONDS


def test_managed_redis_image_comes_from_the_spec_else_the_operator_default():
    own = parse_spec("mix", "team", spec_dict(memPool={"managed": True, "redisImage": "mine/redis:7"}), "eaas-redis:1")
    assert container_of(desired_manifests(own, {}, NEW), "mix-redis")["image"] == "mine/redis:7"
    chart = parse_spec("mix", "team", spec_dict(memPool={"managed": True}), "eaas-redis:1")
    assert container_of(desired_manifests(chart, {}, NEW), "mix-redis")["image"] == "eaas-redis:1"


def test_gateway_may_watch_endpoints_and_nothing_else_may_use_the_api():
    moe = parse_spec("mix", "team", spec_dict(memPool={"managed": True}))
    manifests = desired_manifests(moe, {}, OLD)
    role = by_name(manifests, "Role", "mix-gateway")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get", "list", "watch"]}]
    binding = by_name(manifests, "RoleBinding", "mix-gateway")
    assert binding["roleRef"]["name"] == "mix-gateway"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mix-gateway", "namespace": "team"}]
    assert by_name(manifests, "ServiceAccount", "mix-gateway")
    gateway = by_name(manifests, "Deployment", "mix-gateway")["spec"]["template"]["spec"]
    assert gateway["serviceAccountName"] == "mix-gateway"
    for name in ("mix-experts-e0-2", "mix-redis"):
        pod = by_name(manifests, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod


def test_progressing_says_why_old_groups_are_kept_while_reshaping():
    moe = parse_spec("mix", "team", spec_dict(experts={"expertsPerReplica": 4}))
    ready = {n: DeploymentState(1, 1, 1) for n in ("mix-gateway", "mix-experts-e0-3", "mix-experts-e4-7")}
    status = readiness_status(moe, ready, [], "t", reshaping="gateways still moving; keeping mix-experts-e0-7")
    (progressing,) = [c for c in status["conditions"] if c["type"] == "Progressing"]
    assert (progressing["status"], progressing["reason"]) == ("True", "ReshapingGroups")
    assert "keeping mix-experts-e0-7" in progressing["message"]
