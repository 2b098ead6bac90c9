"""The operator's Kubernetes I/O for child objects: server-side apply, prune, read states, scale.

Server-side apply (field manager `eaas-operator`, forced) makes each child exactly what the builders
say, removing fields a previous spec set, without read-modify-write races.
"""

from __future__ import annotations

import datetime
from typing import Any

import kubernetes
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError

from .features import ClusterFeatures, cluster_features
from .manifests import MANAGED_BY
from .spec import GROUP, PLURAL, VERSION
from .status import DeploymentState

FIELD_MANAGER = "eaas-operator"
AUTOSCALER_MANAGER = "eaas-autoscaler"


def load_kube_config() -> kubernetes.client.ApiClient:
    """In-cluster credentials when running in a Pod, else $KUBECONFIG / ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


def _key(manifest: dict[str, Any]) -> tuple[str, str]:
    return manifest["kind"], manifest["metadata"]["name"]


class ChildObjects:
    """Applies, lists and deletes the objects a MoEDeployment owns."""

    def __init__(self, api_client: kubernetes.client.ApiClient):
        self.api_client = api_client
        self.dynamic = DynamicClient(api_client)

    def features(self) -> ClusterFeatures:
        version = kubernetes.client.VersionApi(self.api_client).get_code()
        groups = kubernetes.client.ApisApi(self.api_client).get_api_versions().groups
        policy = next((g for g in groups if g.name == "policy"), None)
        policy_versions = [v.version for v in policy.versions] if policy else []
        return cluster_features(version.major, version.minor, policy_versions, version.git_version)

    def apply(self, manifest: dict[str, Any]) -> None:
        resource = self.dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
        self.dynamic.server_side_apply(
            resource, body=manifest, name=manifest["metadata"]["name"],
            namespace=manifest["metadata"]["namespace"], field_manager=FIELD_MANAGER, force_conflicts=True)

    def create_once(self, manifest: dict[str, Any]) -> bool:
        """Create the object unless it exists (kept as it is then); True when this call created it."""
        resource = self.dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
        try:
            resource.create(body=manifest, namespace=manifest["metadata"]["namespace"])
        except ConflictError:
            return False
        return True

    def prune(self, owner_uid: str, namespace: str, instance: str, keep: list[dict[str, Any]],
              kinds: list[tuple[str, str]], keep_names: tuple[str, ...] = ()) -> list[str]:
        """Delete owned children of the given (apiVersion, kind)s that neither `keep` nor `keep_names` lists."""
        wanted = {_key(m) for m in keep} | {(kind, name) for _, kind in kinds for name in keep_names}
        selector = f"app.kubernetes.io/instance={instance},app.kubernetes.io/managed-by={MANAGED_BY}"
        removed = []
        for api_version, kind in kinds:
            resource = self.dynamic.resources.get(api_version=api_version, kind=kind)
            for item in resource.get(namespace=namespace, label_selector=selector).items:
                owners = item.metadata.ownerReferences or []
                if (kind, item.metadata.name) in wanted or not any(o.uid == owner_uid for o in owners):
                    continue
                resource.delete(name=item.metadata.name, namespace=namespace,
                                body={"propagationPolicy": "Background"})
                removed.append(f"{kind}/{item.metadata.name}")
        return removed

    def deployment_states(self, namespace: str, instance: str) -> dict[str, DeploymentState]:
        apps = kubernetes.client.AppsV1Api(self.api_client)
        listing = apps.list_namespaced_deployment(
            namespace, label_selector=f"app.kubernetes.io/instance={instance},"
                                      f"app.kubernetes.io/managed-by={MANAGED_BY}")
        return {
            d.metadata.name: DeploymentState(
                replicas=d.spec.replicas or 0, ready=d.status.ready_replicas or 0,
                updated=d.status.updated_replicas or 0, pods=d.status.replicas or 0,
                observed=(d.status.observed_generation or 0) >= (d.metadata.generation or 0))
            for d in listing.items
        }

    def terminating_pods(self, namespace: str, selector: dict[str, str]) -> int:
        """Pods of the selector that are shutting down (still draining requests)."""
        pods = kubernetes.client.CoreV1Api(self.api_client).list_namespaced_pod(
            namespace, label_selector=",".join(f"{k}={v}" for k, v in selector.items()))
        return sum(1 for p in pods.items if p.metadata.deletion_timestamp)

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        apps = kubernetes.client.AppsV1Api(self.api_client)
        apps.patch_namespaced_deployment(name, namespace, {"spec": {"replicas": replicas}},
                                         field_manager=AUTOSCALER_MANAGER)


    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        kubernetes.client.CustomObjectsApi(self.api_client).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status})

    def post_event(self, body: dict[str, Any], reason: str, message: str, type_: str = "Normal") -> None:
        """An Event about the MoEDeployment (what kopf.event does, for code outside kopf's handlers)."""
        meta = body["metadata"]
        now = datetime.datetime.now(datetime.timezone.utc)
        event = kubernetes.client.CoreV1Event(
            metadata=kubernetes.client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=kubernetes.client.V1ObjectReference(
                api_version=body["apiVersion"], kind=body["kind"], name=meta["name"], namespace=meta["namespace"],
                uid=meta["uid"]),
            reason=reason, message=message[:1024], type=type_, first_timestamp=now, last_timestamp=now, count=1,
            source=kubernetes.client.V1EventSource(component=FIELD_MANAGER))
        kubernetes.client.CoreV1Api(self.api_client).create_namespaced_event(meta["namespace"], event)


def prunable_kinds(features: ClusterFeatures) -> list[tuple[str, str]]:
    return [("v1", "ConfigMap"), ("v1", "Service"), ("apps/v1", "Deployment"),
            (features.pdb_api_version, "PodDisruptionBudget"), ("v1", "ServiceAccount"),
            ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
            ("networking.k8s.io/v1", "NetworkPolicy")]
