"""The cluster tier: the chart and a MoEDeployment as real pods on a single-node Kubernetes 1.20.

One session: `k8s-testbed.sh up` (or the running one), `k8s-testbed.sh image`, `helm install` of the
chart with the operator as a pod from the image, a hostPath PersistentVolume holding a tiny checkpoint,
and one MoEDeployment (2 expert groups x 2 replicas, managed Redis) that the test files share in order.
It runs only as root on Linux; under CI (CI=true) a cluster that cannot start fails the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from cluster_deploy import (MODEL_CLAIM, NAME, NAMESPACE, PV_NAME, RELEASE, TIMINGS, diagnose, moed_ready,
                            moedeployment_manifest, record)
from cluster_kube import REPO, RUN_DIR, TESTBED, Cluster, testbed, wait_for
from cluster_load import Reference, gateway_address

def cannot_run() -> str | None:
    """Why this machine can never run the tier (then it is skipped outside CI), else None."""
    if sys.platform != "linux":
        return "needs Linux (a kubelet, containerd and network namespaces)"
    if os.geteuid() != 0:
        return "needs root (the testbed starts a kubelet, containerd and iptables rules)"
    if not shutil.which("apt-get") and not shutil.which("containerd"):
        return "needs a Debian-like machine (the testbed installs containerd, runc and CNI with apt-get)"
    return None


def pytest_collection_modifyitems(items):
    """The tier's items run last (its pods and cluster go at session end, not during other tiers), and
    get the time a cold machine needs to build the images inside the first one's fixtures."""
    ours = [item for item in items if "tests/cluster/" in str(item.fspath)]
    for item in ours:
        item.add_marker(pytest.mark.cluster)
        item.add_marker(pytest.mark.timeout(3600))
    items[:] = [item for item in items if item not in ours] + ours


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("cluster tier figures")
        for name, value in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture(scope="session")
def cluster():
    reason = cannot_run()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the cluster tier cannot run under CI: {reason}")
        pytest.skip(reason)
    already_up = (RUN_DIR / "pids" / "kube-apiserver").exists()
    started = time.monotonic()
    try:
        env = testbed("up", timeout=1800)  # a cold machine builds Kubernetes first (make test-deps does it)
    except Exception as error:  # a cluster that should start but does not is a failure, never a skip
        pytest.fail(f"the single-node cluster did not start: {error}")
    if not already_up:
        record("cluster up (s)", f"{time.monotonic() - started:.1f}")
    yield Cluster(env)
    if not already_up and not os.environ.get("EAAS_K8S_KEEP"):
        subprocess.run(["bash", str(TESTBED), "down"], timeout=300)


@pytest.fixture(scope="session")
def images(cluster):
    started = time.monotonic()
    env = testbed("image", timeout=1800)
    record("image build + import (s)", f"{time.monotonic() - started:.1f}")
    return env["EAAS_IMAGE"], env["EAAS_REDIS_IMAGE"]


def remove_namespace(cluster: Cluster) -> None:
    """Deletes what an earlier session left, in the order that cannot hang: MoEDeployments while the
    operator may still run (their finalizers dropped if it does not), the namespace, its pods, the PV."""
    if not cluster.kubectl("get", "namespace", NAMESPACE, "--ignore-not-found", "-o", "name"):
        cluster.kubectl("delete", "pv", PV_NAME, "--ignore-not-found", "--wait=false")
        return
    for moed in cluster.kubectl("-n", NAMESPACE, "get", "moed", "-o", "name", check=False).split():
        cluster.kubectl("-n", NAMESPACE, "delete", moed, "--wait=false", check=False)
        cluster.kubectl("-n", NAMESPACE, "patch", moed, "--type", "merge", "-p", '{"metadata":{"finalizers":null}}',
                        check=False)
    cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE, check=False, timeout=120)
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
    # kubelet 1.20.2 keeps deleted pods Terminating for a while: force them so the namespace can go.
    cluster.kubectl("-n", NAMESPACE, "delete", "pods", "--all", "--grace-period=0", "--force", check=False)
    wait_for(lambda: not cluster.kubectl("get", "namespace", NAMESPACE, "--ignore-not-found", "-o", "name"),
             f"namespace {NAMESPACE} to be deleted", timeout=300, interval=1.0)
    cluster.kubectl("delete", "pv", PV_NAME, "--ignore-not-found", "--wait=false")


@pytest.fixture(scope="session")
def release(cluster, images):
    """The chart, installed as a user installs it; the operator runs as a pod from the image."""
    repository, tag = images[0].rsplit(":", 1)
    remove_namespace(cluster)
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.helm("install", RELEASE, str(REPO / "charts/eaas"), "--namespace", NAMESPACE,
                 "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
                 "--set", "image.pullPolicy=Never", "--set", "operator.verbose=true",
                 "--wait", "--timeout", "5m", timeout=400)
    yield RELEASE
    remove_namespace(cluster)


@pytest.fixture(scope="session")
def model_dir():
    """A tiny Mixtral written by `eaas tiny-model`, readable by the pods' uid 10001."""
    folder = RUN_DIR / "volumes" / "tiny-mixtral"
    if not (folder / "config.json").exists():
        subprocess.run([sys.executable, "-P", "-m", "eaas.cli", "tiny-model", str(folder), "--arch", "mixtral",
                        "--seed", "7", "--hidden-size", "64", "--layers", "3", "--experts", "8"],
                       check=True, capture_output=True, timeout=300)
    for path in [RUN_DIR / "volumes", folder, *folder.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


@pytest.fixture(scope="session")
def reference(model_dir):
    return Reference(model_dir)


@pytest.fixture(scope="session")
def model_volume(cluster, release, model_dir):
    """A hostPath PersistentVolume and a claim the MoEDeployment mounts read-only (pvc://models/...)."""
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": PV_NAME},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                   "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "eaas-models",
                   "hostPath": {"path": str(model_dir.parent), "type": "Directory"}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": MODEL_CLAIM},
           "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "eaas-models",
                    "volumeName": pv["metadata"]["name"], "resources": {"requests": {"storage": "1Gi"}}}}
    cluster.apply([pv, pvc], NAMESPACE)
    wait_for(lambda: cluster.get("pvc", NAMESPACE, MODEL_CLAIM)["status"].get("phase") == "Bound",
             "the model claim to bind (the PersistentVolume binder)", timeout=60)
    return f"pvc://{MODEL_CLAIM}/{model_dir.name}"


@pytest.fixture(scope="session")
def deployment(cluster, images, model_volume, reference):
    """The MoEDeployment, applied with kubectl; yields once a first greedy token came back."""
    manifest = moedeployment_manifest(images[0], images[1], model_volume)
    started = time.monotonic()
    cluster.apply(manifest, NAMESPACE)
    wait_for(lambda: moed_ready(cluster), "kubectl get moed to show Ready", timeout=600,
             diagnose=lambda: diagnose(cluster))
    address = gateway_address(cluster, NAMESPACE, NAME)
    first = wait_for(lambda: reference.first_token_from(address), "a first token through the gateway Service",
                     timeout=300, interval=1.0, diagnose=lambda: diagnose(cluster))
    record("kubectl apply -> first token (s)", f"{time.monotonic() - started:.1f}")
    assert first == reference.expected(reference.prompts[0])[:1]
    return {"manifest": manifest, "address": address}
