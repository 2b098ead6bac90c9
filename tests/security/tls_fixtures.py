"""Certificates for TLS tests (two unrelated private CAs), the peer certificate a TLS port serves, and real
`eaas expert-server` / `eaas gateway` processes with TLS flags on free ports of 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc
from cryptography import x509
from servers import free_port

from eaas.private_ca import CertificateAuthority

HOSTS = ["127.0.0.1", "localhost"]


def secret(ca: CertificateAuthority, directory: Path, name: str) -> Path:
    """tls.crt/tls.key/ca.crt of a certificate `ca` signed for 127.0.0.1."""
    return ca.write_secret(directory, name, HOSTS)


def flags(d: Path) -> list[str]:
    return ["--tls-cert-file", str(d / "tls.crt"), "--tls-key-file", str(d / "tls.key"),
            "--tls-ca-file", str(d / "ca.crt")]


def channel_credentials(ca_dir: Path, client_dir: Path | None = None) -> grpc.ChannelCredentials:
    """Trust ca_dir's CA; present client_dir's certificate when given."""
    if client_dir is None:
        return grpc.ssl_channel_credentials((ca_dir / "ca.crt").read_bytes())
    return grpc.ssl_channel_credentials((ca_dir / "ca.crt").read_bytes(), (client_dir / "tls.key").read_bytes(),
                                        (client_dir / "tls.crt").read_bytes())


def served_serial(port: int, ca_file: Path, client_dir: Path | None = None, alpn: str | None = None) -> int:
    """The serial number of the certificate a fresh TLS connection to 127.0.0.1:port is shown."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if client_dir is not None:
        ctx.load_cert_chain(client_dir / "tls.crt", client_dir / "tls.key")
    if alpn:
        ctx.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def serial_of(cert_file: Path) -> int:
    return x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number


def rotate(ca: CertificateAuthority, directory: Path, name: str) -> int:
    """Replace the certificate in `directory` as a Secret update does (new files, renamed into place);
    returns the new serial."""
    fresh = ca.write_secret(directory.with_name(directory.name + "-next"), name, HOSTS)
    for f in ("tls.key", "tls.crt"):
        os.replace(fresh / f, directory / f)
    return serial_of(directory / "tls.crt")


class Proc:
    """A real `python -m eaas.cli ...` process, its output in a file."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "eaas.cli", *args], stdout=open(log, "wb"),
                                     stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, needle: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.1)
        raise TimeoutError(f"{needle!r} not seen after {timeout}s:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def expert_server(model: Path, tls_dir: Path, log: Path, *extra: str) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc(["expert-server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
                 "--metrics-port", "0", *flags(tls_dir), *extra], log)
    return proc, port


def gateway(model: Path, experts: str, tls_dir: Path, log: Path, *extra: str) -> tuple[Proc, int, int]:
    grpc_port, http_port = free_port(), free_port()
    proc = Proc(["gateway", "--model", str(model), "--expert-servers", experts, "--host", "127.0.0.1",
                 "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--micro-batches", "1",
                 "--no-prefix-cache", *flags(tls_dir), *extra], log)
    return proc, grpc_port, http_port
