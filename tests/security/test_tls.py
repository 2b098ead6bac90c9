"""TLS and mutual TLS driven the way an attacker or a careless user would: real expert-server and gateway
processes on 127.0.0.1 with certificates from a private CA, and clients without a certificate, with a
certificate from another CA, trusting the wrong CA, or speaking plaintext."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import grpc
import pytest
from tls_fixtures import Proc, channel_credentials, expert_server, gateway, rotate, secret, served_serial, serial_of

from eaas.client import GenerationError, SyncClient
from eaas.model.tiny import write_tiny_model
from eaas.private_ca import CertificateAuthority
from eaas.protos import expert_pb2, expert_pb2_grpc
from eaas.rpc.slot_transport import SlotLink
from eaas.rpc.transport import GrpcTransport
from eaas.tls import TLSFiles

pytestmark = pytest.mark.slow
PROMPT = [1, 17, 42, 7]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two unrelated CAs; `ours` signs the deployment's certificates, `theirs` an outsider's."""
    root = tmp_path_factory.mktemp("pki")
    ours, theirs = CertificateAuthority.create("deployment CA"), CertificateAuthority.create("another CA")
    return {"ours": ours, "root": root, "expert": secret(ours, root / "expert", "expert"),
            "gateway": secret(ours, root / "gateway", "gateway"), "client": secret(ours, root / "client", "client"),
            "outsider": secret(theirs, root / "outsider", "outsider"), "theirs": theirs}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tls-model"), "mixtral", seed=5)


@pytest.fixture(scope="module")
def expert(model, pki, tmp_path_factory):
    proc, port = expert_server(model, pki["expert"], tmp_path_factory.mktemp("logs") / "expert.log")
    proc.wait_for_line("event=serving")
    yield port
    proc.stop()


def _info(port: int, credentials=None) -> expert_pb2.ServerInfo:
    address = f"127.0.0.1:{port}"
    with (grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)) as ch:
        return expert_pb2_grpc.ExpertServiceStub(ch).Info(expert_pb2.InfoRequest(), timeout=10)


def test_expert_server_admits_only_clients_with_a_certificate_from_its_ca(expert, pki):
    with pytest.raises(grpc.RpcError) as plaintext:
        _info(expert)
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as no_cert:
        _info(expert, channel_credentials(pki["expert"]))
    assert no_cert.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as foreign_cert:  # trusts the right server, shows another CA's certificate
        _info(expert, channel_credentials(pki["expert"], pki["outsider"]))
    assert foreign_cert.value.code() == grpc.StatusCode.UNAVAILABLE
    info = _info(expert, channel_credentials(pki["expert"], pki["client"]))
    assert info.expert_ids == list(range(8)) and len(info.shm_token) == 32


def test_shared_memory_link_needs_the_token_only_mtls_callers_learn(expert, pki):
    info = _info(expert, channel_credentials(pki["expert"], pki["client"]))
    assert info.shm_endpoint.startswith("@")  # listed in /proc/net/unix for anyone on the host
    with pytest.raises(ConnectionRefusedError, match="PERMISSION_DENIED"):
        SlotLink(info.shm_endpoint, b"\0" * 32, slots=1, slot_bytes=4096)
    link = SlotLink(info.shm_endpoint, info.shm_token, slots=1, slot_bytes=4096)
    assert link.alive
    link.close()


def test_gateway_side_refuses_an_expert_server_from_another_ca(model, pki, tmp_path):
    stranger_dir = secret(pki["theirs"], tmp_path / "stranger", "stranger")
    proc, port = expert_server(model, stranger_dir, tmp_path / "stranger.log", "--transport", "grpc")
    try:
        proc.wait_for_line("event=serving")
        files = pki["gateway"]
        transport = GrpcTransport(TLSFiles(str(files / "tls.crt"), str(files / "tls.key"), str(files / "ca.crt")))
        try:
            with pytest.raises(grpc.RpcError) as err:
                transport.info(f"127.0.0.1:{port}", timeout=5)
            assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            assert not transport.serving(f"127.0.0.1:{port}", timeout=5)
        finally:
            transport.close()
        assert "event=serving" in proc.output()  # the refusal is the gateway's, the server is up
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def tls_gateway(model, pki, expert, tmp_path_factory):
    proc, grpc_port, http_port = gateway(model, f"0-7=127.0.0.1:{expert}", pki["gateway"],
                                         tmp_path_factory.mktemp("logs") / "gateway.log")
    proc.wait_for_line("eaas gateway ready")
    yield {"proc": proc, "grpc": f"127.0.0.1:{grpc_port}", "grpc_port": grpc_port, "http_port": http_port}
    proc.stop()


def _reference_tokens(model, n: int) -> list[int]:
    from eaas.engine.factory import monolithic_engine
    from eaas.engine.sequence import SamplingParams

    engine = monolithic_engine(str(model))
    seq = engine.add_request(PROMPT, SamplingParams(max_tokens=n, ignore_eos=True)).seq
    while engine.has_unfinished():
        engine.step()
    return seq.output_ids


def test_gateway_serves_exact_tokens_over_tls_and_refuses_plaintext_and_wrong_ca(tls_gateway, pki, model):
    ca = str(pki["gateway"] / "ca.crt")
    with SyncClient([tls_gateway["grpc"]], timeout=60, tls_ca_file=ca) as client:
        got = client.generate(prompt_ids=PROMPT, max_tokens=6, ignore_eos=True).token_ids
    assert got == _reference_tokens(model, 6)  # through mutual TLS to the expert server, token for token

    with SyncClient([tls_gateway["grpc"]], timeout=10, retries=0) as plaintext:
        with pytest.raises(GenerationError) as err:
            plaintext.generate(prompt_ids=PROMPT, max_tokens=2)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    with SyncClient([tls_gateway["grpc"]], timeout=10, retries=0,
                    tls_ca_file=str(pki["outsider"] / "ca.crt")) as wrong_ca:
        with pytest.raises(GenerationError) as err:
            wrong_ca.generate(prompt_ids=PROMPT, max_tokens=2)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_the_client_checks_the_name_given_instead_of_the_address(tls_gateway, pki):
    """tls_server_name (`eaas generate --tls-server-name`): dialling an address its certificate does not list
    (a ClusterIP), the client checks the given name instead; a name the certificate lacks is refused."""
    ca = str(pki["gateway"] / "ca.crt")
    with SyncClient([tls_gateway["grpc"]], timeout=60, tls_ca_file=ca, tls_server_name="localhost") as client:
        assert len(client.generate(prompt_ids=PROMPT, max_tokens=2, ignore_eos=True).token_ids) == 2
    with SyncClient([tls_gateway["grpc"]], timeout=10, retries=0, tls_ca_file=ca,
                    tls_server_name="gateway.elsewhere.svc") as client:
        with pytest.raises(GenerationError) as err:
            client.generate(prompt_ids=PROMPT, max_tokens=2)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    done = subprocess.run([sys.executable, "-P", "-m", "eaas.cli", "generate", "--gateway", tls_gateway["grpc"],
                           "--tls-ca-file", ca, "--tls-server-name", "localhost", "--prompt-ids", "1,17,42",
                           "--max-tokens", "3", "--ignore-eos", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["token_ids"]) == 3


def test_gateway_http_serves_https_only(tls_gateway, pki):
    url = f"https://127.0.0.1:{tls_gateway['http_port']}/v1/completions"
    body = json.dumps({"prompt": PROMPT, "max_tokens": 3, "ignore_eos": True}).encode()
    trusted = ssl.create_default_context(cafile=str(pki["gateway"] / "ca.crt"))
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60, context=trusted) as resp:
        assert len(json.load(resp)["choices"][0]["token_ids"]) == 3
    with pytest.raises(OSError):  # plaintext HTTP to the TLS port: the handshake fails, no answer
        urllib.request.urlopen(url.replace("https", "http"), data=body, timeout=10)
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(request, timeout=10,
                               context=ssl.create_default_context(cafile=str(pki["outsider"] / "ca.crt")))


def test_certificates_rotate_without_restart(tls_gateway, expert, pki):
    """Replace tls.crt/tls.key (new serial, same CA): the next connection is shown the new certificate."""
    ca_file = pki["gateway"] / "ca.crt"
    before = serial_of(pki["gateway"] / "tls.crt")
    assert served_serial(tls_gateway["http_port"], ca_file) == before
    assert served_serial(tls_gateway["grpc_port"], ca_file, alpn="h2") == before
    after = rotate(pki["ours"], pki["gateway"], "gateway")
    assert after != before
    assert served_serial(tls_gateway["http_port"], ca_file) == after
    assert served_serial(tls_gateway["grpc_port"], ca_file, alpn="h2") == after

    expert_before = serial_of(pki["expert"] / "tls.crt")
    assert served_serial(expert, ca_file, client_dir=pki["client"], alpn="h2") == expert_before
    expert_after = rotate(pki["ours"], pki["expert"], "expert")
    assert served_serial(expert, ca_file, client_dir=pki["client"], alpn="h2") == expert_after

    # the gateway's own client certificate rotated too: its next channels to the expert server use it
    with SyncClient([tls_gateway["grpc"]], timeout=60, tls_ca_file=str(ca_file)) as client:
        assert len(client.generate(prompt_ids=PROMPT, max_tokens=3, ignore_eos=True).token_ids) == 3
    assert tls_gateway["proc"].proc.poll() is None  # no restart


def test_expert_server_tls_is_mutual_or_nothing(model, pki, tmp_path):
    """A careless config (certificate without a CA) is refused at start, not served half-secured."""
    d = pki["expert"]
    half = Proc(["expert-server", "--model", str(model), "--port", "0", "--metrics-port", "0",
                 "--tls-cert-file", str(d / "tls.crt"), "--tls-key-file", str(d / "tls.key")], tmp_path / "half.log")
    assert half.proc.wait(120) == 2
    assert "mutual" in half.output() and "--tls-ca-file" in half.output()
