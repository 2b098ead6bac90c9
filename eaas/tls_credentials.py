"""Credentials built from `TLSFiles`: gRPC servers and channels, and the HTTPS server's SSL context.

Servers pick up rotated files at the next handshake: gRPC calls the certificate-configuration fetcher
for every new connection, the HTTPS context's SNI callback (OpenSSL runs it on every ClientHello, with or
without a server name) swaps in a context built from the new files. gRPC client channels are built once:
`ChannelCache` opens a new channel for new calls once the files changed.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from pathlib import Path

import grpc

from eaas.tls import TLSFiles, TLSMaterial

log = logging.getLogger("eaas.tls")


def _server_config(m: TLSMaterial):
    return grpc.ssl_server_certificate_configuration([(m.key, m.cert)], root_certificates=m.ca)


def grpc_server_credentials(files: TLSFiles, require_client_cert: bool) -> grpc.ServerCredentials:
    """TLS for a gRPC server; with require_client_cert, a client must present a certificate signed by
    the CA file (mutual TLS). Each handshake sees the newest files."""
    first = files.current()
    seen = {"version": first.version}

    def fetch():  # grpc core, per handshake: None = keep the configuration it has
        m = files.current()
        if m.version == seen["version"]:
            return None
        seen["version"] = m.version
        return _server_config(m)

    return grpc.dynamic_ssl_server_credentials(_server_config(first), fetch,
                                               require_client_authentication=require_client_cert)


def grpc_channel_credentials(files: TLSFiles) -> grpc.ChannelCredentials:
    """Verify the server against the CA file (the system roots without one); present our certificate
    when we have one (the client half of mutual TLS)."""
    m = files.current()
    return grpc.ssl_channel_credentials(root_certificates=m.ca, private_key=m.key, certificate_chain=m.cert)


def _context_from(m: TLSMaterial, require_client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if require_client_cert:  # the CA file signs the clients' certificates
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=m.ca.decode())
    with tempfile.TemporaryDirectory(prefix="eaas-tls-") as tmp:  # load_cert_chain reads files only
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert.write_bytes(m.cert)
        key.write_bytes(m.key)
        os.chmod(key, 0o600)
        ctx.load_cert_chain(cert, key)
    return ctx


def https_server_context(files: TLSFiles, require_client_cert: bool = False) -> ssl.SSLContext:
    """An SSL context for aiohttp whose certificate (and, with require_client_cert, the CA that clients'
    certificates must chain to) follows the files: each handshake's SNI callback moves the connection to
    a context built from the newest material."""
    first = files.current()
    state = {"version": first.version, "ctx": _context_from(first, require_client_cert)}

    def on_hello(sslobj, server_name, base):
        m = files.current()
        if m.version != state["version"]:
            state["ctx"], state["version"] = _context_from(m, require_client_cert), m.version
            log.info("HTTPS: serving the rotated certificate (version %d)", m.version)
        sslobj.context = state["ctx"]

    base = _context_from(first, require_client_cert)
    base.sni_callback = on_hello
    state["ctx"].sni_callback = on_hello
    return base


class ChannelCache:
    """One gRPC channel per address, rebuilt for new calls once the TLS files changed. The replaced
    channel is handed to `retire` (close it after its calls finished)."""

    def __init__(self, open_channel, files: TLSFiles | None, retire=None):
        """open_channel(address, credentials or None) -> channel."""
        self._open, self.files, self._retire = open_channel, files, retire
        self._entries: dict[str, tuple[int, object]] = {}

    def get(self, address: str):
        version = self.files.current().version if self.files is not None else 0
        entry = self._entries.get(address)
        if entry is not None and entry[0] == version:
            return entry[1]
        creds = grpc_channel_credentials(self.files) if self.files is not None else None
        channel = self._open(address, creds)
        self._entries[address] = (version, channel)
        if entry is not None and self._retire is not None:
            self._retire(entry[1])
        return channel

    def pop(self, address: str):
        entry = self._entries.pop(address, None)
        return entry[1] if entry else None

    def addresses(self) -> list[str]:
        return list(self._entries)
