"""A MoEDeployment with spec.security on, as a user sets it up: a cert-manager-shaped TLS Secret (tls.crt,
tls.key, ca.crt) from a private CA and an API-key Secret. Through the gateway Service, a client that
trusts the CA and sends the key gets exactly transformers' tokens; a plaintext client, a client with the
wrong key and a client without a certificate at an expert server are refused."""

from __future__ import annotations

import base64
import time

import grpc
import pytest
from cluster_deploy import NAMESPACE, delete_and_wait, diagnose, moed_ready, moedeployment_manifest
from cluster_kube import wait_for
from cluster_load import gateway_address

from eaas.client import GenerationError, SyncClient
from eaas.private_ca import CertificateAuthority
from eaas.protos import expert_pb2, expert_pb2_grpc

NAME = "tiny-tls"
KEY = "sk-cluster-tls-test"
GATEWAY_DNS = f"{NAME}-gateway.{NAMESPACE}.svc"  # the client checks the gateway's certificate for it
EXPERTS_DNS = f"{NAME}-experts.{NAMESPACE}.svc"  # the name the operator tells gateways to expect
MAX_TOKENS = 8


def secrets(ca: CertificateAuthority) -> list[dict]:
    cert, key = ca.issue(NAME, [GATEWAY_DNS, EXPERTS_DNS])
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return [{"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": f"{NAME}-cert"},
             "data": {"tls.crt": b64(cert), "tls.key": b64(key), "ca.crt": b64(ca.cert_pem)}},
            {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": f"{NAME}-api-key"},
             "stringData": {"api-key": KEY}}]


def tls_manifest(images, model_volume) -> dict:
    """One gateway and one expert server holding all 8 experts, no Redis: the smallest secured deployment."""
    manifest = moedeployment_manifest(images[0], images[1], model_volume, experts_per_replica=8)
    manifest["metadata"]["name"] = NAME
    spec = manifest["spec"]
    spec["gateway"]["replicas"] = 1
    spec["experts"].update(minReplicas=1, maxReplicas=1)
    spec["autoscaling"] = {"enabled": False}
    del spec["memPool"]
    spec["security"] = {"tlsSecretName": f"{NAME}-cert", "apiKeySecretName": f"{NAME}-api-key"}
    return manifest


@pytest.fixture(scope="module")
def secured(cluster, images, model_volume, tmp_path_factory):
    ca = CertificateAuthority.create("tiny-tls CA")
    ca_file = tmp_path_factory.mktemp("tls") / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    cluster.apply(secrets(ca), NAMESPACE)
    started = time.monotonic()
    cluster.apply(tls_manifest(images, model_volume), NAMESPACE)
    try:
        wait_for(lambda: moed_ready(cluster, NAME), f"{NAME} to show Ready", timeout=600,
                 diagnose=lambda: diagnose(cluster))
        yield {"address": gateway_address(cluster, NAMESPACE, NAME), "ca_file": str(ca_file), "ca": ca,
               "started": started}
    finally:
        delete_and_wait(cluster, NAME)  # its pods go now: the later files of the tier get the CPU back
        cluster.kubectl("-n", NAMESPACE, "delete", "secret", f"{NAME}-cert", f"{NAME}-api-key", "--ignore-not-found")


def tls_client(secured, **extra) -> SyncClient:
    settings = {"timeout": 120, "api_key": KEY, "tls_ca_file": secured["ca_file"], "tls_server_name": GATEWAY_DNS}
    return SyncClient([secured["address"]], **{**settings, **extra})


def first_token(secured, prompt) -> list[int] | None:
    try:
        with tls_client(secured, timeout=30, retries=0) as client:
            return client.generate(prompt_ids=prompt, max_tokens=1, ignore_eos=True).token_ids
    except GenerationError:
        return None


def test_a_tls_deployment_serves_exact_tokens_over_tls_only(cluster, secured, reference):
    prompt = reference.prompts[1]
    wait_for(lambda: first_token(secured, prompt), "a first token over TLS through the gateway Service",
             timeout=300, interval=1.0, diagnose=lambda: diagnose(cluster))
    print(f"kubectl apply (TLS) -> first token: {time.monotonic() - secured['started']:.1f} s")
    with tls_client(secured) as client:
        for prompt in reference.prompts[:3]:
            assert client.generate(prompt_ids=prompt, max_tokens=MAX_TOKENS, ignore_eos=True).token_ids == \
                reference.expected(prompt, MAX_TOKENS)

    with SyncClient([secured["address"]], timeout=30, retries=0, api_key=KEY) as plaintext, \
            pytest.raises(GenerationError) as refused:
        plaintext.generate(prompt_ids=prompt, max_tokens=2)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    with tls_client(secured, retries=0, api_key="sk-wrong") as wrong_key, pytest.raises(GenerationError) as refused:
        wrong_key.generate(prompt_ids=prompt, max_tokens=2)
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_expert_servers_in_the_cluster_want_a_client_certificate(cluster, secured):
    pods = cluster.ready_pods(NAMESPACE, f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component=expert-group")
    address = f"{pods[0]['status']['podIP']}:50051"  # the node is admitted by the NetworkPolicy (probes)
    options = [("grpc.ssl_target_name_override", EXPERTS_DNS)]
    no_cert = grpc.ssl_channel_credentials(secured["ca"].cert_pem)
    with grpc.secure_channel(address, no_cert, options=options) as channel, pytest.raises(grpc.RpcError) as refused:
        expert_pb2_grpc.ExpertServiceStub(channel).Info(expert_pb2.InfoRequest(), timeout=15)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    cert, key = secured["ca"].issue("a client of the deployment's CA", [])
    with grpc.secure_channel(address, grpc.ssl_channel_credentials(secured["ca"].cert_pem, key, cert),
                             options=options) as channel:
        info = expert_pb2_grpc.ExpertServiceStub(channel).Info(expert_pb2.InfoRequest(), timeout=15)
    assert list(info.expert_ids) == list(range(8))
