"""Deleting a MoEDeployment removes every object it owns: with the operator running, and after the
operator was uninstalled with helm (the order a user tears things down in)."""

from __future__ import annotations

from cluster_deploy import NAMESPACE, RELEASE, diagnose, moedeployment_manifest
from cluster_kube import wait_for

KINDS = "deployments,replicasets,services,configmaps,poddisruptionbudgets,pods,networkpolicies,secrets"


def owned(cluster, name: str) -> list[str]:
    out = cluster.kubectl("-n", NAMESPACE, "get", KINDS, "-l", f"app.kubernetes.io/instance={name}", "-o", "name")
    return out.split()


def delete_and_wait(cluster, name: str) -> None:
    cluster.kubectl("-n", NAMESPACE, "delete", "moed", name, "--wait=false")
    wait_for(lambda: not cluster.kubectl("-n", NAMESPACE, "get", "moed", name, "--ignore-not-found", "-o", "name"),
             f"MoEDeployment {name} to be gone", timeout=120, diagnose=lambda: diagnose(cluster))
    wait_for(lambda: not owned(cluster, name), f"every object {name} owned to be gone", timeout=180,
             diagnose=lambda: "\n".join(owned(cluster, name)))


def test_deleting_the_moedeployment_removes_everything_it_owns(cluster, deployment):
    name = deployment["manifest"]["metadata"]["name"]
    assert owned(cluster, name)
    delete_and_wait(cluster, name)


def test_deleting_a_moedeployment_after_helm_uninstall_removes_everything_it_owns(cluster, release, images,
                                                                                   model_volume):
    manifest = moedeployment_manifest(images[0], images[1], model_volume, experts_per_replica=8)
    manifest["metadata"]["name"] = "orphan"
    manifest["spec"]["gateway"]["replicas"] = 1
    manifest["spec"]["experts"].update(minReplicas=1, maxReplicas=1)
    cluster.apply(manifest, NAMESPACE)
    wait_for(lambda: len([o for o in owned(cluster, "orphan") if o.startswith("deployment")]) == 3,
             "the operator to create the orphan's Deployments", timeout=120)
    cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE, timeout=120)
    delete_and_wait(cluster, "orphan")
