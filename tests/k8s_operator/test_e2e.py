"""The operator end to end against a real kube-apiserver 1.20 + controller-manager, helm and redis-server.

The chart is installed with the real helm; its operator Pod stays Pending (no kubelet), so the same
operator runs here as a subprocess (`eaas operator --standalone`) with the chart's ServiceAccount token:
what it does is also a check that the chart's RBAC is enough. Tests share one MoEDeployment and run in
file order; each one first sets the spec it needs.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import kubernetes
import pytest
import redis
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from k8s_testbed import HELM, REPO, write_kubeconfig

pytestmark = [pytest.mark.k8s, pytest.mark.redis, pytest.mark.slow]

NAMESPACE = "eaas-e2e"
NAME = "mix"
GROUP, VERSION, PLURAL = "eaas.dev", "v1alpha1", "moedeployments"
SCALE_DOWN_WINDOW = 2


def kubectl(control_plane, *args: str) -> str:
    done = subprocess.run(["kubectl", f"--kubeconfig={control_plane.kubeconfig}", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


class Operator:
    def __init__(self, log: Path, argv: list[str], env: dict, cwd: Path):
        self.log, self.argv, self.env, self.cwd = log, argv, env, cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


def wait_for(check, what: str, operator: Operator | None = None, timeout: float = 45.0):
    """Poll `check` until it returns something truthy; fail with the operator's log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    log = f"\n--- operator log ---\n{operator.tail()}" if operator else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{log}")


@pytest.fixture(scope="module")
def release(control_plane):
    """The chart installed by the real helm into NAMESPACE (CRD from crds/, RBAC, operator Deployment)."""
    done = subprocess.run([str(HELM), "install", "eaas", str(REPO / "charts/eaas"), "--namespace", NAMESPACE,
                           "--create-namespace", f"--kubeconfig={control_plane.kubeconfig}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def api(kube):
    return {"custom": kubernetes.client.CustomObjectsApi(kube), "apps": kubernetes.client.AppsV1Api(kube),
            "core": kubernetes.client.CoreV1Api(kube), "dynamic": DynamicClient(kube)}


def service_account_token(api, name: str) -> str:
    """The token the controller-manager minted for the chart's ServiceAccount (1.20: a Secret)."""
    def token():
        for secret in api["core"].list_namespaced_secret(NAMESPACE).items:
            annotations = secret.metadata.annotations or {}
            if secret.type == "kubernetes.io/service-account-token" and \
                    annotations.get("kubernetes.io/service-account.name") == name:
                return base64.b64decode(secret.data["token"]).decode()
        return None
    return wait_for(token, f"a token Secret for ServiceAccount {name}")


@pytest.fixture(scope="module")
def operator(control_plane, release, api, redis_server_session, tmp_path_factory):
    """`eaas operator` as a subprocess, authenticated as the chart's ServiceAccount."""
    folder = tmp_path_factory.mktemp("operator")
    kubeconfig = write_kubeconfig(folder / "sa.kubeconfig", control_plane.server, control_plane.ca_file,
                                  "eaas-operator", service_account_token(api, "eaas-operator"))
    running = Operator(folder / "operator.log",
                       [sys.executable, "-P", "-m", "eaas.cli", "operator", "--standalone", "--namespace", NAMESPACE,
                        "--redis-url", redis_server_session.url, "--verbose"],
                       {**os.environ, "KUBECONFIG": str(kubeconfig)}, folder)
    running.start()
    yield running
    running.proc.terminate()
    try:
        running.proc.wait(15)
    except subprocess.TimeoutExpired:
        running.proc.kill()
        running.proc.wait(5)


def moedeployment(experts_per_replica: int = 4, gateway_replicas: int = 1) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MoEDeployment", "metadata": {"name": NAME},
        "spec": {
            "image": "eaas:e2e",
            "model": {"uri": "hf://eaas/tiny-moe", "numExperts": 8, "numLayers": 4},
            "gateway": {"replicas": gateway_replicas},
            "experts": {"expertsPerReplica": experts_per_replica, "minReplicas": 1, "maxReplicas": 4,
                        "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "1Gi"}}},
            "memPool": {"managed": True},
            "autoscaling": {"enabled": True, "targetTokensPerSecondPerReplica": 100, "intervalSeconds": 1,
                            "scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": SCALE_DOWN_WINDOW,
                            "loadWindows": 1},
        },
    }


def read_cr(api) -> dict | None:
    try:
        return api["custom"].get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def apply_spec(api, operator: Operator, body: dict) -> dict:
    """Create or replace the CR's spec, then wait until the operator has reconciled that generation."""
    current = read_cr(api)
    if current is None:
        current = api["custom"].create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
    elif current["spec"] != body["spec"]:
        current = api["custom"].patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME,
                                                               {"spec": body["spec"]})
    generation = current["metadata"]["generation"]
    return wait_for(lambda: (cr := read_cr(api)) and cr.get("status", {}).get("observedGeneration") == generation
                    and cr, f"observedGeneration {generation}", operator)


def deployment(api, name: str):
    try:
        return api["apps"].read_namespaced_deployment(name, NAMESPACE)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def owned(api, kind: str, api_version: str) -> dict[str, dict]:
    resource = api["dynamic"].resources.get(api_version=api_version, kind=kind)
    items = resource.get(namespace=NAMESPACE, label_selector=f"app.kubernetes.io/instance={NAME}").items
    return {i.metadata.name: i.to_dict() for i in items}


def events_of(api) -> list:
    return api["core"].list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={NAME}").items


def command_of(api, name: str) -> list[str]:
    return deployment(api, name).spec.template.spec.containers[0].command


def test_chart_installs_crd_and_operator(control_plane, release, api, kube):
    crd = kubernetes.client.ApiextensionsV1Api(kube).read_custom_resource_definition("moedeployments.eaas.dev")
    assert crd.spec.names.short_names == ["moed"]
    assert wait_for(lambda: any(c.type == "Established" and c.status == "True" for c in
                                kubernetes.client.ApiextensionsV1Api(kube).read_custom_resource_definition(
                                    "moedeployments.eaas.dev").status.conditions or []), "CRD established")
    chart_operator = deployment(api, "eaas-operator")
    assert chart_operator.spec.template.spec.containers[0].command == [
        "eaas", "operator", "--standalone", f"--namespace={NAMESPACE}", "--liveness=http://0.0.0.0:8080/healthz",
        "--redis-image=redis:7.2-alpine",
        "--redis-password-key-file=/etc/eaas-operator/redis-password-key/key"]
    assert chart_operator.spec.template.spec.security_context.run_as_non_root is True
    # No kubelet here: the chart's operator Pod is created and stays Pending.
    pods = wait_for(lambda: api["core"].list_namespaced_pod(
        NAMESPACE, label_selector="app.kubernetes.io/name=eaas-operator").items, "the operator Pod")
    assert pods[0].status.phase == "Pending"


@pytest.mark.parametrize("change, field", [
    ({"model": {"uri": "/m", "numExperts": 0, "numLayers": 4}}, "spec.model.numExperts"),
    ({"model": {"uri": "s3://bucket/model", "numExperts": 8, "numLayers": 4}}, "spec.model.uri"),
    ({"image": None}, "spec.image"),
    ({"memPool": {"managed": True, "redis": {"url": "redis://r:6379/0"}}}, "spec.memPool"),
    ({"autoscaling": {"intervalSeconds": "fast"}}, "spec.autoscaling.intervalSeconds"),
    ({"experts": {"expertsPerReplica": 2, "tolerations": [{"operator": "Maybe"}]}}, "operator"),
])
def test_bad_spec_is_rejected_by_the_api_server(release, api, change, field):
    body = moedeployment()
    body["metadata"]["name"] = "bad"
    body["spec"].update(change)
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
    with pytest.raises(ApiException) as caught:
        api["custom"].create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
    assert caught.value.status == 422, caught.value.body
    assert field in json.loads(caught.value.body)["message"]


def test_spec_the_schema_cannot_judge_is_reported_degraded_and_builds_nothing(api, operator):
    body = moedeployment()
    body["metadata"]["name"] = "inverted"
    body["spec"]["experts"].update(minReplicas=3, maxReplicas=2)
    api["custom"].create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)

    def degraded():
        cr = api["custom"].get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "inverted")
        return [c for c in cr.get("status", {}).get("conditions", []) if c["type"] == "Degraded"]
    (condition,) = wait_for(degraded, "Degraded condition on 'inverted'", operator)
    assert (condition["status"], condition["reason"]) == ("True", "InvalidSpec")
    assert "minReplicas (3) exceeds experts.maxReplicas (2)" in condition["message"]
    assert api["apps"].list_namespaced_deployment(
        NAMESPACE, label_selector="app.kubernetes.io/instance=inverted").items == []
    wait_for(lambda: [(e.type, e.reason) for e in api["core"].list_namespaced_event(
        NAMESPACE, field_selector="involvedObject.name=inverted").items] == [("Warning", "InvalidSpec")],
        "one InvalidSpec warning Event", operator)
    api["custom"].delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "inverted")


def test_moedeployment_without_redis_is_reconciled(api, operator):
    """No memPool at all: status must still be written (1.20 refused redisUrl "" as null, so it never was)."""
    body = moedeployment()
    body["metadata"]["name"] = "plain"
    del body["spec"]["memPool"]
    body["spec"]["autoscaling"] = {"enabled": False}
    created = api["custom"].create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)

    def reconciled():
        cr = api["custom"].get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "plain")
        return cr.get("status", {}).get("observedGeneration") == created["metadata"]["generation"] and cr
    cr = wait_for(reconciled, "'plain' reconciled", operator)
    assert "redisUrl" not in cr["status"]
    assert "--redis" not in command_of(api, "plain-gateway")
    api["custom"].delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "plain")


def test_moedeployment_becomes_owned_children(control_plane, api, operator):
    cr = apply_spec(api, operator, moedeployment(experts_per_replica=4))
    uid = cr["metadata"]["uid"]
    redis_url = f"redis://{NAME}-redis.{NAMESPACE}.svc:6379/0"
    expected = {
        ("v1", "ConfigMap"): {"mix-topology"},
        ("apps/v1", "Deployment"): {"mix-gateway", "mix-experts-e0-3", "mix-experts-e4-7", "mix-redis"},
        ("v1", "Service"): {"mix-gateway", "mix-experts-e0-3", "mix-experts-e4-7", "mix-redis"},
        ("policy/v1beta1", "PodDisruptionBudget"): {"mix-gateway", "mix-experts-e0-3", "mix-experts-e4-7"},
        ("v1", "ServiceAccount"): {"mix-gateway"},
        ("rbac.authorization.k8s.io/v1", "Role"): {"mix-gateway"},
        ("rbac.authorization.k8s.io/v1", "RoleBinding"): {"mix-gateway"},
        ("networking.k8s.io/v1", "NetworkPolicy"): {"mix-experts", "mix-gateway", "mix-redis"},
        ("v1", "Secret"): {"mix-redis-auth"},
    }
    for (api_version, kind), names in expected.items():
        objects = owned(api, kind, api_version)
        assert set(objects) == names, kind
        for obj in objects.values():
            (ref,) = obj["metadata"]["ownerReferences"]
            assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("MoEDeployment", NAME, uid, True)
    assert command_of(api, "mix-experts-e4-7") == [
        "eaas", "expert-server", "--model", "hf://eaas/tiny-moe", "--experts", "4-7", "--host", "0.0.0.0",
        "--port", "50051", "--metrics-port", "9090", "--deployment", NAME, "--group", "g1", "--advertise", "$(POD_IP):50051", "--redis", redis_url]
    assert command_of(api, "mix-gateway") == [
        "eaas", "gateway", "--model", "hf://eaas/tiny-moe", "--topology", "/etc/eaas/topology.json",
        "--watch-endpoints", "--grpc-port", "50050", "--http-port", "8000", "--deployment", NAME, "--redis", redis_url]
    topology = json.loads(api["core"].read_namespaced_config_map("mix-topology", NAMESPACE).data["topology.json"])
    assert [(g["name"], g["experts"], g["service"]) for g in topology["groups"]] == [
        ("g0", [0, 1, 2, 3], "mix-experts-e0-3"), ("g1", [4, 5, 6, 7], "mix-experts-e4-7")]
    assert api["core"].read_namespaced_service("mix-experts-e0-3", NAMESPACE).spec.cluster_ip == "None"
    container = deployment(api, "mix-experts-e0-3").spec.template.spec.containers[0]
    assert container.security_context.read_only_root_filesystem is True
    assert container.readiness_probe.tcp_socket.port == 50051  # no grpc probes below Kubernetes 1.24
    pods = wait_for(lambda: api["core"].list_namespaced_pod(
        NAMESPACE, label_selector="app.kubernetes.io/instance=mix,eaas.dev/group=e0-3").items, "expert Pods")
    assert {p.status.phase for p in pods} == {"Pending"}
    conditions = {c["type"]: c for c in cr["status"]["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "ReplicasNotReady")
    assert (conditions["Degraded"]["status"], conditions["Degraded"]["reason"]) == ("False", "AsExpected")
    assert "0/2" in kubectl(control_plane, "get", "moed", NAME, f"--namespace={NAMESPACE}")
    wait_for(lambda: any(e.reason == "Reconciled" and "2 expert groups of 4 experts" in e.message
                         for e in events_of(api)), "a Reconciled Event", operator)


def redis_password_secret(api):
    return api["core"].read_namespaced_secret(f"{NAME}-redis-auth", NAMESPACE)


def test_managed_redis_password_is_created_once_and_reaches_every_pod(api, operator):
    apply_spec(api, operator, moedeployment(experts_per_replica=4))
    secret = redis_password_secret(api)
    password = base64.b64decode(secret.data["password"]).decode()
    assert len(password) == 43
    for name in ("mix-gateway", "mix-experts-e0-3", "mix-experts-e4-7", "mix-redis"):
        (env,) = [e for e in deployment(api, name).spec.template.spec.containers[0].env
                  if e.name == "EAAS_REDIS_PASSWORD"]
        assert (env.value_from.secret_key_ref.name, env.value_from.secret_key_ref.key) == ("mix-redis-auth", "password")
    assert command_of(api, "mix-redis")[-2:] == ["--requirepass", "$(EAAS_REDIS_PASSWORD)"]
    # a spec change re-applies every child; the Secret is kept as it is
    apply_spec(api, operator, moedeployment(experts_per_replica=4, gateway_replicas=2))
    kept = redis_password_secret(api)
    assert (kept.metadata.uid, kept.metadata.resource_version) == (secret.metadata.uid, secret.metadata.resource_version)


def test_security_section_mounts_the_tls_and_api_key_secrets(api, operator):
    body = moedeployment(experts_per_replica=4)
    body["spec"]["security"] = {"tlsSecretName": "mix-tls", "apiKeySecretName": "mix-key",
                                "metricsFrom": [{"namespaceSelector": {"matchLabels": {"role": "metrics"}}}]}
    apply_spec(api, operator, body)
    gateway, expert = command_of(api, "mix-gateway"), command_of(api, "mix-experts-e0-3")
    tls = ["--tls-cert-file", "/etc/eaas/tls/tls.crt", "--tls-key-file", "/etc/eaas/tls/tls.key",
           "--tls-ca-file", "/etc/eaas/tls/ca.crt"]
    assert gateway[-10:] == [*tls, "--expert-tls-name", f"mix-experts.{NAMESPACE}.svc",
                             "--api-key-file", "/etc/eaas/api-key/api-key"]
    assert expert[-6:] == tls
    volumes = {v.name: v for v in deployment(api, "mix-gateway").spec.template.spec.volumes}
    assert (volumes["tls"].secret.secret_name, volumes["api-key"].secret.secret_name) == ("mix-tls", "mix-key")
    policy = api["dynamic"].resources.get(api_version="networking.k8s.io/v1", kind="NetworkPolicy").get(
        name="mix-experts", namespace=NAMESPACE)
    metrics_rule = policy.spec.ingress[1].to_dict()
    assert metrics_rule["from"] == [{"namespaceSelector": {"matchLabels": {"role": "metrics"}}}]
    # a merge patch removes a field only when given null
    api["custom"].patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME, {"spec": {"security": None}})
    apply_spec(api, operator, moedeployment(experts_per_replica=4))
    assert "--tls-cert-file" not in command_of(api, "mix-gateway")
    assert "from" not in api["dynamic"].resources.get(api_version="networking.k8s.io/v1", kind="NetworkPolicy").get(
        name="mix-experts", namespace=NAMESPACE).spec.ingress[1].to_dict()


def mark_pods_ready(api, selector: str) -> int:
    """No kubelet here: report this selector's pods Running and Ready as a kubelet would."""
    marked = 0
    for pod in api["core"].list_namespaced_pod(NAMESPACE, label_selector=selector).items:
        if pod.metadata.deletion_timestamp:
            continue
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            api["core"].patch_namespaced_pod_status(pod.metadata.name, NAMESPACE, {"status": {
                "phase": "Running", "conditions": [{"type": t, "status": "True", "lastTransitionTime": now} for t in
                                                   ("PodScheduled", "Initialized", "ContainersReady", "Ready")]}})
        except ApiException as exc:
            if exc.status != 404:  # an old ReplicaSet's pod may be deleted between the list and the patch
                raise
            continue
        marked += 1
    return marked


def expert_deployments(api) -> set[str]:
    return {n for n in owned(api, "Deployment", "apps/v1") if n.startswith("mix-experts-")}


def reshape(api, operator, experts_per_replica: int, new: set[str], old: set[str]) -> None:
    """Change expertsPerReplica; the old groups must stay until the new ones are ready and the gateway moved."""
    cr = apply_spec(api, operator, moedeployment(experts_per_replica=experts_per_replica))
    assert expert_deployments(api) == new | old
    progressing = next(c for c in cr["status"]["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "ReshapingGroups" and "keeping" in progressing["message"], progressing
    # the old layout keeps serving while nothing of the new one is ready: it must still be there later
    start = time.monotonic()
    wait_for(lambda: time.monotonic() - start > 4, "at least one more reconcile (it retries every 3 s)")
    assert expert_deployments(api) == new | old
    for name in new:
        wait_for(lambda: mark_pods_ready(api, f"eaas.dev/group={name[len('mix-experts-'):]},"
                                              f"app.kubernetes.io/instance={NAME}"), f"pods of {name}")

    def gateway_moved():
        mark_pods_ready(api, f"app.kubernetes.io/component=gateway,app.kubernetes.io/instance={NAME}")
        return expert_deployments(api) == new
    wait_for(gateway_moved, f"old groups {sorted(old)} deleted after the gateway moved", operator, timeout=90)


def test_experts_per_replica_change_keeps_the_old_groups_until_the_gateway_moved(api, operator):
    apply_spec(api, operator, moedeployment(experts_per_replica=4))
    gateway_hash = deployment(api, "mix-gateway").spec.template.metadata.annotations["eaas.dev/topology-hash"]
    reshape(api, operator, 3, new={"mix-experts-e0-2", "mix-experts-e3-5", "mix-experts-e6-7"},
            old={"mix-experts-e0-3", "mix-experts-e4-7"})
    assert [command_of(api, f"mix-experts-{r}")[5] for r in ("e0-2", "e3-5", "e6-7")] == ["0-2", "3-5", "6-7"]
    assert deployment(api, "mix-gateway").spec.template.metadata.annotations["eaas.dev/topology-hash"] != gateway_hash
    reshape(api, operator, 8, new={"mix-experts-e0-7"},
            old={"mix-experts-e0-2", "mix-experts-e3-5", "mix-experts-e6-7"})
    for kind, api_version in (("Deployment", "apps/v1"), ("Service", "v1"),
                              ("PodDisruptionBudget", "policy/v1beta1")):  # one prune deletes kind by kind
        wait_for(lambda: {n for n in owned(api, kind, api_version) if "experts" in n} == {"mix-experts-e0-7"},
                 f"only the new group's {kind}", operator)
    assert command_of(api, "mix-experts-e0-7")[5] == "0-7"
    topology = json.loads(api["core"].read_namespaced_config_map("mix-topology", NAMESPACE).data["topology.json"])
    assert topology["groups"] == [{"name": "g0", "experts": list(range(8)), "service": "mix-experts-e0-7",
                                   "port": 50051}]
    reshape(api, operator, 4, new={"mix-experts-e0-3", "mix-experts-e4-7"}, old={"mix-experts-e0-7"})


def write_load(client: redis.Redis, per_expert_tokens: dict[int, int]) -> None:
    """The gateways' writes (docs/redis-schema.md) into every window from 30 s ago to 60 s ahead."""
    bucket = int(time.time()) // 10 * 10
    for b in range(bucket - 30, bucket + 70, 10):
        key = f"eaas:{NAME}:load:{b}"
        client.delete(key)
        for expert, tokens in per_expert_tokens.items():
            client.hincrby(key, str(expert), tokens)
        client.expire(key, 3600)


GROUP_OBJECTS = {"g0": "mix-experts-e0-3", "g1": "mix-experts-e4-7"}


def replicas(api, group: str) -> int:
    return deployment(api, GROUP_OBJECTS[group]).spec.replicas


def test_autoscaler_scales_hot_group_up_and_cold_group_down(api, operator, redis_server_session):
    apply_spec(api, operator, moedeployment(experts_per_replica=4))
    client = redis.Redis.from_url(redis_server_session.url)
    # g0 (experts 0-3): 3500 tokens per 10 s window = 350 tokens/s -> 4 replicas at 100/replica.
    # g1 (experts 4-7): 150 tokens/s -> 2 replicas.
    write_load(client, {0: 2000, 3: 1500, 4: 1000, 7: 500})
    wait_for(lambda: replicas(api, "g0") == 4 and replicas(api, "g1") == 2, "g0 at 4 and g1 at 2 replicas", operator)
    # The status patch lands just after the Deployments are scaled.
    wait_for(lambda: [g.get("tokensPerSecond") for g in read_cr(api)["status"]["groups"]] == [350.0, 150.0],
             "the load in status", operator, timeout=5)
    # A spec change re-applies every child: the autoscaler's replicas must survive it.
    apply_spec(api, operator, moedeployment(experts_per_replica=4, gateway_replicas=2))
    assert (deployment(api, "mix-gateway").spec.replicas, replicas(api, "g0"), replicas(api, "g1")) == (2, 4, 2)
    write_load(client, {0: 2000, 3: 1500})  # g1 goes cold
    cooled = time.monotonic()
    wait_for(lambda: replicas(api, "g1") == 1, "g1 shrunk to minReplicas", operator, timeout=30)
    # The last recommendation of 2 came at most one interval (1 s) before the load dropped.
    assert time.monotonic() - cooled >= SCALE_DOWN_WINDOW - 1
    assert replicas(api, "g0") == 4
    wait_for(lambda: {"mix-experts-e0-3: 1 -> 4", "mix-experts-e4-7: 2 -> 1"} <= {
        e.message.partition(" replicas")[0] for e in events_of(api) if e.reason == "Scaled"}, "Scaled Events", operator)


def test_operator_restarted_after_a_crash_catches_up_with_the_cluster(api, operator, redis_server_session):
    """SIGKILL the operator; while it is down a child Deployment is deleted (the new process's on.resume must
    restore it), then, in a second outage, the spec changes (on.update after the restart). Autoscaled
    replicas survive both restarts."""
    apply_spec(api, operator, moedeployment(experts_per_replica=4, gateway_replicas=2))
    secret_uid = redis_password_secret(api).metadata.uid
    write_load(redis.Redis.from_url(redis_server_session.url), {0: 2000, 3: 1500})  # g0 hot: 4; g1 cold: 1
    wait_for(lambda: replicas(api, "g0") == 4 and replicas(api, "g1") == 1, "g0 at 4 and g1 at 1", operator)

    def crash() -> None:
        operator.proc.kill()
        operator.proc.wait(15)

    crash()
    api["apps"].delete_namespaced_deployment("mix-experts-e4-7", NAMESPACE)
    wait_for(lambda: deployment(api, "mix-experts-e4-7") is None, "mix-experts-e4-7 deleted")
    operator.start()
    wait_for(lambda: deployment(api, "mix-experts-e4-7") is not None, "mix-experts-e4-7 re-created on resume", operator)
    assert command_of(api, "mix-experts-e4-7")[5] == "4-7"
    assert (deployment(api, "mix-gateway").spec.replicas, replicas(api, "g0"), replicas(api, "g1")) == (2, 4, 1)

    crash()
    changed = api["custom"].patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME,
                                                           {"spec": moedeployment(gateway_replicas=3)["spec"]})
    operator.start()
    generation = changed["metadata"]["generation"]
    wait_for(lambda: read_cr(api)["status"].get("observedGeneration") == generation,
             f"observedGeneration {generation} after the restart", operator)
    assert (deployment(api, "mix-gateway").spec.replicas, replicas(api, "g0"), replicas(api, "g1")) == (3, 4, 1)
    # each start drew a new password key (no --redis-password-key-file here): the Secret stays as created
    assert redis_password_secret(api).metadata.uid == secret_uid


def test_delete_garbage_collects_children_and_redis_keys(api, operator, redis_server_session):
    apply_spec(api, operator, moedeployment(experts_per_replica=4))
    client = redis.Redis.from_url(redis_server_session.url)
    client.set(f"eaas:{NAME}:registry:10.0.0.7:50051", "{}")
    client.set(f"eaas:{NAME}:kv:fp:abc", b"block")
    client.set("eaas:other:load:10", "kept")
    assert not read_cr(api)["metadata"].get("finalizers")  # nothing waits for an operator on deletion
    # an object from an older operator version carries its finalizer: this one removes it
    api["custom"].patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME,
                                                 {"metadata": {"finalizers": ["eaas.dev/cleanup"]}})
    wait_for(lambda: not read_cr(api)["metadata"].get("finalizers"), "the old finalizer removed", operator)
    api["custom"].delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME)
    wait_for(lambda: read_cr(api) is None, "the MoEDeployment gone", operator)
    wait_for(lambda: client.keys(f"eaas:{NAME}:*") == [], "the operator unlinked its Redis keys", operator)
    assert client.get("eaas:other:load:10") == b"kept"
    kinds = (("ConfigMap", "v1"), ("Deployment", "apps/v1"), ("Service", "v1"),
             ("PodDisruptionBudget", "policy/v1beta1"), ("NetworkPolicy", "networking.k8s.io/v1"), ("Secret", "v1"))
    wait_for(lambda: not any(owned(api, kind, version) for kind, version in kinds),
             "every child garbage-collected", operator, timeout=60)


def test_redis_outage_degrades_and_does_not_block_deletion(api, operator, redis_server_session):
    body = moedeployment()
    body["metadata"]["name"] = "lonely"
    api["custom"].create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)

    def degraded_reason():
        cr = api["custom"].get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "lonely")
        return next((c["reason"] for c in cr.get("status", {}).get("conditions", [])
                     if c["type"] == "Degraded" and c["status"] == "True"), None)
    wait_for(lambda: api["apps"].list_namespaced_deployment(
        NAMESPACE, label_selector="app.kubernetes.io/instance=lonely").items, "children of 'lonely'", operator)
    redis_server_session.stop()
    try:
        assert wait_for(degraded_reason, "Degraded while Redis is down", operator) == "RedisUnreachable"
        api["custom"].delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "lonely")
        wait_for(lambda: not [i for i in api["custom"].list_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL)["items"] if i["metadata"]["name"] == "lonely"],
            "'lonely' deleted despite the Redis outage", operator)
    finally:
        redis_server_session.start()
    assert "could not delete Redis keys eaas:lonely:*" in operator.log.read_text()


def test_operator_logs_changes_not_every_refresh(api, operator):
    """The refresh runs every second here (intervalSeconds 1); a pass that changes nothing logs nothing."""
    apply_spec(api, operator, moedeployment(experts_per_replica=4))
    before = len(operator.log.read_text(errors="replace").splitlines())
    start = time.monotonic()
    wait_for(lambda: time.monotonic() - start > 5, "five refresh intervals")
    added = [line for line in operator.log.read_text(errors="replace").splitlines()[before:]
             if "[DEBUG" not in line]  # the operator runs --verbose here
    assert not [line for line in added if "succeeded" in line or "Timer" in line], added
    assert len(added) <= 3, added


def test_delete_after_helm_uninstall_never_hangs(control_plane, api, operator):
    """The operator is gone (helm uninstall; the CRD in crds/ stays): deleting a MoEDeployment still removes
    it at once and the garbage collector removes every child."""
    apply_spec(api, operator, moedeployment(experts_per_replica=4))
    assert deployment(api, "mix-experts-e0-3") is not None
    operator.proc.terminate()
    operator.proc.wait(30)
    done = subprocess.run([str(HELM), "uninstall", "eaas", "--namespace", NAMESPACE,
                           f"--kubeconfig={control_plane.kubeconfig}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert deployment(api, "eaas-operator") is None
    api["custom"].delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME)
    wait_for(lambda: read_cr(api) is None, "the MoEDeployment gone without an operator", timeout=30)
    kinds = (("ConfigMap", "v1"), ("Deployment", "apps/v1"), ("Service", "v1"),
             ("PodDisruptionBudget", "policy/v1beta1"))
    wait_for(lambda: not any(owned(api, kind, version) for kind, version in kinds),
             "every child garbage-collected", timeout=60)
