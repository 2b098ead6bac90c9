"""The gateway's Endpoints watch against a real kube-apiserver 1.20, authenticated as the ServiceAccount the
operator gives gateways (so its Role is exercised). Endpoints objects are written by hand (no kubelet):
a replica that turns ready joins the table, a not-ready one stays out, a deleted one leaves at once.
Prints the seconds from each API write to the gateway's table showing it.
"""

from __future__ import annotations

import asyncio
import base64
import time

import kubernetes
import pytest
from kubernetes.dynamic import DynamicClient

from eaas.gateway.discovery import groups_from_endpoints
from eaas.gateway.endpoints_watch import ApiAccess, EndpointsWatch
from eaas.operator.access import gateway_access_manifests
from eaas.operator.spec import parse_spec
from k8s_testbed import write_kubeconfig

pytestmark = [pytest.mark.k8s]

NAMESPACE = "eaas-watch"
TOPOLOGY = {"groups": [{"name": "g0", "experts": [0, 1], "service": "mix-experts-g0", "port": 50051},
                       {"name": "g1", "experts": [2, 3], "service": "mix-experts-g1", "port": 50051}]}


def endpoints_body(name: str, ready: list[str], not_ready: list[str] = ()) -> dict:
    subset = {"ports": [{"name": "grpc", "port": 50051}, {"name": "metrics", "port": 9090}]}
    if ready:
        subset["addresses"] = [{"ip": ip} for ip in ready]
    if not_ready:
        subset["notReadyAddresses"] = [{"ip": ip} for ip in not_ready]
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": NAMESPACE},
            "subsets": [subset]}


@pytest.fixture(scope="module")
def gateway_kubeconfig(control_plane, kube, tmp_path_factory):
    """A kubeconfig holding the token of the ServiceAccount the operator builds for gateways."""
    core = kubernetes.client.CoreV1Api(kube)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    moe = parse_spec("mix", NAMESPACE, {"model": {"uri": "/m", "numExperts": 4, "numLayers": 1}, "image": "i",
                                        "experts": {"expertsPerReplica": 2}})
    dynamic = DynamicClient(kube)
    for manifest in gateway_access_manifests(moe, {"app.kubernetes.io/instance": "mix"}):
        resource = dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
        resource.create(body=manifest, namespace=NAMESPACE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for secret in core.list_namespaced_secret(NAMESPACE).items:
            if (secret.metadata.annotations or {}).get("kubernetes.io/service-account.name") == "mix-gateway":
                token = base64.b64decode(secret.data["token"]).decode()
                path = tmp_path_factory.mktemp("gateway") / "kubeconfig"
                return write_kubeconfig(path, control_plane.server, control_plane.ca_file, "mix-gateway", token)
        time.sleep(0.25)
    pytest.fail("no token Secret for ServiceAccount mix-gateway")


async def until(check, what: str, start: float, timeout: float = 30.0) -> float:
    """Seconds from `start` (perf_counter) until `check()` holds (polled every 5 ms); fails after `timeout`."""
    while not check():
        if time.perf_counter() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)
    return time.perf_counter() - start


def test_watch_follows_readiness_and_deletion(kube, gateway_kubeconfig):
    core = kubernetes.client.CoreV1Api(kube)

    def addresses(watch: EndpointsWatch) -> list[tuple[str, ...]]:
        return [g.addresses for g in groups_from_endpoints(TOPOLOGY, watch.table)]

    async def scenario() -> dict[str, float]:
        watch = EndpointsWatch(ApiAccess.discover(str(gateway_kubeconfig)), NAMESPACE)
        task = asyncio.create_task(watch.run())
        figures = {}
        try:
            await asyncio.wait_for(watch.synced.wait(), 30)
            assert addresses(watch) == [(), ()]
            start = time.perf_counter()
            await asyncio.to_thread(core.create_namespaced_endpoints, NAMESPACE,
                                    endpoints_body("mix-experts-g0", ["10.1.0.2"], ["10.1.0.3"]))
            figures["created"] = await until(lambda: addresses(watch)[0] == ("10.1.0.2:50051",), "g0's ready one",
                                             start)
            start = time.perf_counter()
            await asyncio.to_thread(core.replace_namespaced_endpoints, "mix-experts-g0", NAMESPACE,
                                    endpoints_body("mix-experts-g0", ["10.1.0.2", "10.1.0.3"]))
            figures["turned ready"] = await until(
                lambda: addresses(watch)[0] == ("10.1.0.2:50051", "10.1.0.3:50051"), "10.1.0.3 joining", start)
            start = time.perf_counter()
            await asyncio.to_thread(core.replace_namespaced_endpoints, "mix-experts-g0", NAMESPACE,
                                    endpoints_body("mix-experts-g0", ["10.1.0.3"]))
            figures["pod removed"] = await until(lambda: addresses(watch)[0] == ("10.1.0.3:50051",),
                                                 "10.1.0.2 leaving", start)
            start = time.perf_counter()
            await asyncio.to_thread(core.create_namespaced_endpoints, NAMESPACE,
                                    endpoints_body("mix-experts-g1", ["10.1.0.7"]))
            await until(lambda: addresses(watch)[1] == ("10.1.0.7:50051",), "g1", start)
            start = time.perf_counter()
            await asyncio.to_thread(core.delete_namespaced_endpoints, "mix-experts-g1", NAMESPACE)
            figures["deleted"] = await until(lambda: addresses(watch)[1] == (), "g1 gone", start)
            assert watch.changed.is_set()  # what wakes the gateway's table swap
        finally:
            task.cancel()
        return figures

    figures = asyncio.run(scenario())
    print("endpoints watch, start of the API write -> gateway table: " +
          ", ".join(f"{what} {seconds * 1000:.0f} ms" for what, seconds in figures.items()))


def test_gateway_account_may_not_read_anything_else(kube, gateway_kubeconfig):
    client = kubernetes.config.new_client_from_config(config_file=str(gateway_kubeconfig))
    try:
        with pytest.raises(kubernetes.client.ApiException) as denied:
            kubernetes.client.CoreV1Api(client).list_namespaced_secret(NAMESPACE)
        assert denied.value.status == 403
    finally:
        client.close()


def test_gateway_takes_its_table_from_the_watch_and_wakes_at_once(kube, gateway_kubeconfig, tmp_path):
    """The gateway's own wiring (`--watch-endpoints`): its groups come from the watched Endpoints (the Redis
    registry and DNS are not asked), and a change ends its wait for the next table swap before the poll."""
    from eaas.gateway.server import Gateway, GatewayOptions
    from eaas.model.tiny import write_tiny_model

    model = write_tiny_model(tmp_path / "tiny", "mixtral", seed=1, experts=4)
    (tmp_path / "topology.json").write_text(__import__("json").dumps({"deployment": "mix", **TOPOLOGY}))
    core = kubernetes.client.CoreV1Api(kube)

    async def scenario() -> float:
        gateway = Gateway(GatewayOptions(model=str(model), topology=str(tmp_path / "topology.json"),
                                         watch_endpoints=True, namespace=NAMESPACE,
                                         kubeconfig=str(gateway_kubeconfig), refresh_s=30.0))
        watch = asyncio.create_task(gateway.endpoints.run())
        try:
            await asyncio.wait_for(gateway.endpoints.synced.wait(), 30)
            await gateway._next_change()  # consume the initial listing
            waiting = asyncio.create_task(gateway._next_change())
            start = time.perf_counter()
            await asyncio.to_thread(core.create_namespaced_endpoints, NAMESPACE,
                                    endpoints_body("mix-experts-g1", ["10.1.0.8"]))
            await asyncio.wait_for(waiting, 10)  # far sooner than refresh_s
            woke = time.perf_counter() - start
            groups = await gateway.current_groups()
            assert [g.addresses for g in groups][1] == ("10.1.0.8:50051",)
            await asyncio.to_thread(core.delete_namespaced_endpoints, "mix-experts-g1", NAMESPACE)
        finally:
            watch.cancel()
        return woke

    woke = asyncio.run(scenario())
    print(f"gateway table swap woken {woke * 1000:.0f} ms after the start of the API write")
