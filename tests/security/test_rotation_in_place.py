"""Secrets rotated under running processes, as the kubelet rotates a mounted Secret (`..data` symlink swap):
a real gateway's API key file and a long-lived SDK client's certificate take effect on the next request
without restarting either; the old key and the old certificate stop working."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.error
import urllib.request

import grpc
import pytest
from secret_volume import SecretVolume
from tls_fixtures import HOSTS, expert_server, gateway, secret

from eaas.client import AsyncClient, GenerationError, SyncClient
from eaas.model.tiny import write_tiny_model
from eaas.private_ca import CertificateAuthority

pytestmark = pytest.mark.slow
PROMPT = [1, 17, 42, 7]
OLD_KEY, NEW_KEY = "sk-before-rotation", "sk-after-rotation"


def client_secret(ca: CertificateAuthority, name: str) -> dict[str, bytes]:
    cert, key = ca.issue(name, HOSTS)
    return {"tls.crt": cert, "tls.key": key}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A gateway that wants an API key (from a Secret volume) and a client certificate from the clients' CA
    (from another Secret volume), in front of an expert server over mutual TLS."""
    root = tmp_path_factory.mktemp("rotation")
    ours = CertificateAuthority.create("deployment CA")
    clients_2026, clients_2027 = CertificateAuthority.create("clients 2026"), CertificateAuthority.create("clients 2027")
    model = write_tiny_model(root / "model", "mixtral", seed=5)
    key_volume = SecretVolume(root / "api-key", {"api-key": OLD_KEY.encode()})
    client_ca_volume = SecretVolume(root / "client-ca", {"ca.crt": clients_2026.cert_pem})
    expert, port = expert_server(model, secret(ours, root / "expert", "expert"), root / "expert.log")
    gw = None
    try:
        expert.wait_for_line("event=serving")
        gw, grpc_port, http_port = gateway(model, f"0-7=127.0.0.1:{port}", secret(ours, root / "gateway", "gateway"),
                                           root / "gateway.log", "--api-key-file", str(key_volume.path("api-key")),
                                           "--tls-client-ca-file", str(client_ca_volume.path("ca.crt")))
        gw.wait_for_line("eaas gateway ready")
        yield {"root": root, "gateway": gw, "grpc": f"127.0.0.1:{grpc_port}", "http_port": http_port,
               "server_ca": str(root / "gateway" / "ca.crt"), "key_volume": key_volume,
               "client_ca_volume": client_ca_volume, "clients_2026": clients_2026, "clients_2027": clients_2027}
    finally:
        for proc in (gw, expert):
            if proc is not None:
                proc.stop()


def sdk(setup, client_dir, api_key, **extra) -> SyncClient:
    return SyncClient([setup["grpc"]], timeout=60, retries=0, api_key=api_key, tls_ca_file=setup["server_ca"],
                      tls_cert_file=str(client_dir / "tls.crt"), tls_key_file=str(client_dir / "tls.key"), **extra)


def https_status(setup, client_dir, api_key: str, path: str = "/v1/completions") -> int:
    ctx = ssl.create_default_context(cafile=setup["server_ca"])
    ctx.load_cert_chain(client_dir / "tls.crt", client_dir / "tls.key")
    body = json.dumps({"prompt": PROMPT, "max_tokens": 2, "ignore_eos": True}).encode()
    request = urllib.request.Request(f"https://127.0.0.1:{setup['http_port']}{path}", data=body,
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=60, context=ctx) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def refused(client: SyncClient) -> grpc.StatusCode | None:
    try:
        client.generate(prompt_ids=PROMPT, max_tokens=3, ignore_eos=True)
        return None
    except GenerationError as err:
        return err.code


def test_a_rotated_api_key_secret_takes_effect_without_restart(setup):
    client_dir = SecretVolume(setup["root"] / "client-a", client_secret(setup["clients_2026"], "client")).directory
    with sdk(setup, client_dir, OLD_KEY) as old, sdk(setup, client_dir, NEW_KEY) as new:
        assert refused(old) is None
        assert refused(new) == grpc.StatusCode.UNAUTHENTICATED
        assert https_status(setup, client_dir, OLD_KEY) == 200

        setup["key_volume"].update({"api-key": NEW_KEY.encode()})  # the kubelet's `..data` swap

        assert refused(old) == grpc.StatusCode.UNAUTHENTICATED  # on the same, already open connection
        assert refused(new) is None
        assert https_status(setup, client_dir, OLD_KEY) == 401
        assert https_status(setup, client_dir, NEW_KEY) == 200
    assert setup["gateway"].proc.poll() is None  # the same process throughout
    assert "API key file re-read" in setup["gateway"].output()


def generate_until_served(client: SyncClient, timeout: float = 90.0) -> list[int]:
    """The channel that failed its handshake reconnects after gRPC's backoff (~1 s, growing)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.generate(prompt_ids=PROMPT, max_tokens=3, ignore_eos=True).token_ids
        except GenerationError as err:
            if err.code != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_a_long_lived_sdk_client_presents_its_rotated_certificate_on_new_connections(setup):
    volume = SecretVolume(setup["root"] / "client-b", client_secret(setup["clients_2026"], "client"))
    key = setup["key_volume"].path("api-key").read_text()
    with sdk(setup, volume.directory, key) as client:
        first = client.generate(prompt_ids=PROMPT, max_tokens=3, ignore_eos=True).token_ids
        assert len(first) == 3

        # the client's Secret now holds a certificate of next year's CA, which the gateway does not trust yet:
        # the client opens a new connection with it (an old connection, or the old certificate, would pass)
        volume.update(client_secret(setup["clients_2027"], "client"))
        assert refused(client) == grpc.StatusCode.UNAVAILABLE

        # the gateway's clients' CA is rotated too (its own Secret): the same client object is served again
        setup["client_ca_volume"].update({"ca.crt": setup["clients_2027"].cert_pem})
        assert generate_until_served(client) == first
        assert https_status(setup, volume.directory, key) == 200

    # a client still holding last year's certificate is now refused, over gRPC and HTTPS
    stale = SecretVolume(setup["root"] / "client-c", client_secret(setup["clients_2026"], "client")).directory
    with sdk(setup, stale, key) as client:
        assert refused(client) == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(OSError):
        https_status(setup, stale, key)
    assert setup["gateway"].proc.poll() is None


def test_the_asyncio_client_follows_its_certificate_files_too(setup):
    """Run after the clients' CA moved to 2027: a 2026 certificate is refused, a 2027 one served."""
    volume = SecretVolume(setup["root"] / "client-d", client_secret(setup["clients_2027"], "client"))
    key = setup["key_volume"].path("api-key").read_text()

    async def scenario():
        async with AsyncClient([setup["grpc"]], timeout=60, retries=0, api_key=key, tls_ca_file=setup["server_ca"],
                               tls_cert_file=str(volume.path("tls.crt")),
                               tls_key_file=str(volume.path("tls.key"))) as client:
            served = (await client.generate(prompt_ids=PROMPT, max_tokens=3, ignore_eos=True)).token_ids
            volume.update(client_secret(setup["clients_2026"], "client"))
            with pytest.raises(GenerationError) as stale:
                await client.generate(prompt_ids=PROMPT, max_tokens=3, ignore_eos=True)
            volume.update(client_secret(setup["clients_2027"], "client"))
            deadline = time.monotonic() + 90
            while True:  # a fresh channel: no backoff to wait out, but the poll costs nothing
                try:
                    again = (await client.generate(prompt_ids=PROMPT, max_tokens=3, ignore_eos=True)).token_ids
                    break
                except GenerationError as err:
                    if err.code != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            return served, stale.value.code, again

    served, stale_code, again = asyncio.run(scenario())
    assert len(served) == 3 and again == served
    assert stale_code == grpc.StatusCode.UNAVAILABLE
