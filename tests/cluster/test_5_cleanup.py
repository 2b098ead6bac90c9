"""Deleting a MoEDeployment removes every object it owns: with the operator running, and after the
operator was uninstalled with helm (the order a user tears things down in)."""

from __future__ import annotations

from cluster_deploy import NAMESPACE, RELEASE, delete_and_wait, moedeployment_manifest, owned
from cluster_kube import wait_for


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
