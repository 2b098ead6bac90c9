"""The Helm chart: `helm lint`, and every rendered manifest validates against Kubernetes schemas."""

from __future__ import annotations

import base64
import subprocess

import kubernetes_validate
import pytest
import yaml

from k8s_testbed import HELM, REPO

CHART = REPO / "charts/eaas"


def helm(*args: str) -> str:
    if not HELM.exists():
        pytest.fail(f"helm missing at {HELM}: run bash scripts/install-helm.sh", pytrace=False)
    done = subprocess.run([str(HELM), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def rendered(*values: str) -> list[dict]:
    text = helm("template", "eaas", str(CHART), "--namespace", "eaas-system", "--include-crds", *values)
    return [d for d in yaml.safe_load_all(text) if d]


def test_helm_lint_passes():
    assert "0 chart(s) failed" in helm("lint", "--strict", str(CHART))


@pytest.mark.parametrize("values", [
    [],
    ["--set", "watch.namespaces={team-a,team-b}", "--set", "operator.redisUrl=redis://r:6379/0"],
    ["--set", "watch.allNamespaces=true", "--set", "operator.verbose=true"],
])
@pytest.mark.parametrize("version", ["1.25.0", kubernetes_validate.latest_version()])
def test_rendered_manifests_validate(values, version):
    docs = rendered(*values)
    assert {d["kind"] for d in docs} >= {"CustomResourceDefinition", "Deployment", "ServiceAccount",
                                         "ClusterRole", "ClusterRoleBinding"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def _operator_command(docs: list[dict]) -> list[str]:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]["command"]


def test_watched_namespaces_get_roles_and_operator_flags():
    docs = rendered("--set", "watch.namespaces={team-a,team-b}")
    assert _operator_command(docs) == ["eaas", "operator", "--standalone", "--namespace=team-a",
                                       "--namespace=team-b", "--liveness=http://0.0.0.0:8080/healthz",
                                       "--redis-image=redis:7.2-alpine",
        "--redis-password-key-file=/etc/eaas-operator/redis-password-key/key"]
    assert sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "Role") == ["team-a", "team-b"]
    default = rendered()
    assert "--namespace=eaas-system" in _operator_command(default)
    everywhere = rendered("--set", "watch.allNamespaces=true")
    assert "--all-namespaces" in _operator_command(everywhere)
    assert not [d for d in everywhere if d["kind"] in ("Role", "RoleBinding")]


def test_operator_pod_is_non_root_with_read_only_root():
    deployment = next(d for d in rendered() if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_rbac_grants_no_wildcards_and_never_reads_secrets():
    """The operator creates a managed Redis's password Secret but can read no Secret: it derives the
    password from the key mounted into its own pod (operator/credentials.py)."""
    for doc in rendered("--set", "watch.allNamespaces=true"):
        for rule in doc.get("rules", []):
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            if "secrets" in rule["resources"]:
                assert rule["resources"] == ["secrets"] and rule["verbs"] == ["create"], rule


def test_operator_gets_its_password_key_from_a_secret_only_it_mounts():
    docs = rendered()
    (key,) = [d for d in docs if d["kind"] == "Secret"]
    assert len(base64.b64decode(key["data"]["key"])) == 48
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert {"name": "redis-password-key", "secret": {"secretName": key["metadata"]["name"], "defaultMode": 0o440}} \
        in pod["volumes"]
    assert pod["securityContext"]["fsGroup"] == 10001
    (container,) = pod["containers"]
    assert "--redis-password-key-file=/etc/eaas-operator/redis-password-key/key" in container["command"]


def test_example_moedeployment_parses_with_the_operator():
    from eaas.operator.spec import parse_spec

    example = yaml.safe_load((CHART / "examples/moedeployment.yaml").read_text())
    moe = parse_spec(example["metadata"]["name"], "default", example["spec"])
    assert [g.name for g in moe.groups] == ["g0", "g1", "g2", "g3"]


def test_default_image_is_the_one_the_readme_builds_and_redis_image_is_a_value():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    deployment = next(d for d in rendered() if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"eaas:{chart['appVersion']}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    readme = (REPO / "README.md").read_text()
    assert f"eaas:{chart['appVersion']}" in readme  # the README says how to build that name
    own = next(d for d in rendered("--set", "managedRedis.image=eaas-redis:0.1.0") if d["kind"] == "Deployment")
    assert "--redis-image=eaas-redis:0.1.0" in own["spec"]["template"]["spec"]["containers"][0]["command"]
