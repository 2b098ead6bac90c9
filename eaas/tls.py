"""TLS material from files (cert-manager's tls.crt / tls.key / ca.crt), re-read when the files change.

Every component takes the same three flags: `--tls-cert-file --tls-key-file --tls-ca-file`. Rotation
without restart: each consumer asks `TLSFiles.current()` for the material when it opens something new (a
gRPC server handshake through `grpc.dynamic_ssl_server_credentials`, an HTTPS handshake through the SSL
context's SNI callback, a gRPC client channel) and gets the newest *consistent* files: a key that does
not match its certificate (a half-written rotation) keeps the previous material and logs a warning.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from eaas.errors import UserError
from eaas.file_signature import stat_signature

log = logging.getLogger("eaas.tls")


@dataclass(frozen=True)
class TLSMaterial:
    """One consistent read of the files (PEM bytes); `version` counts re-reads that changed something."""

    cert: bytes | None
    key: bytes | None
    ca: bytes | None
    version: int


def check_pair(cert: bytes, key: bytes) -> None:
    """Raise ssl.SSLError / ValueError unless `key` is the private key of `cert`'s leaf."""
    with tempfile.TemporaryDirectory(prefix="eaas-tls-check-") as tmp:
        c, k = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
        c.write_bytes(cert)
        k.write_bytes(key)
        os.chmod(k, 0o600)
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(c, k)


class TLSFiles:
    """The files of one component; `current()` re-reads them when their stat changed."""

    def __init__(self, cert_file: str | None = None, key_file: str | None = None, ca_file: str | None = None):
        if bool(cert_file) != bool(key_file):
            raise UserError("--tls-cert-file and --tls-key-file go together")
        self.cert_file = Path(cert_file) if cert_file else None
        self.key_file = Path(key_file) if key_file else None
        self.ca_file = Path(ca_file) if ca_file else None
        self._paths = [p for p in (self.cert_file, self.key_file, self.ca_file) if p is not None]
        self._lock = threading.Lock()
        self._seen: tuple | None = None
        self._material: TLSMaterial | None = None
        try:
            self._material = self._read(0)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise UserError(f"TLS files: {exc}") from None
        self._seen = stat_signature(self._paths)

    @property
    def has_identity(self) -> bool:
        return self.cert_file is not None

    @property
    def has_ca(self) -> bool:
        return self.ca_file is not None

    def _read(self, version: int) -> TLSMaterial:
        cert = self.cert_file.read_bytes() if self.cert_file else None
        key = self.key_file.read_bytes() if self.key_file else None
        ca = self.ca_file.read_bytes() if self.ca_file else None
        if cert is not None:
            check_pair(cert, key)
        if ca is not None and b"-----BEGIN CERTIFICATE-----" not in ca:
            raise ValueError(f"{self.ca_file} holds no PEM certificate")
        return TLSMaterial(cert, key, ca, version)

    def current(self) -> TLSMaterial:
        """The newest consistent material; re-read only when a file's stat changed."""
        signature = stat_signature(self._paths)
        with self._lock:
            if signature == self._seen:
                return self._material
            self._seen = signature
            try:
                fresh = self._read(self._material.version + 1)
            except (OSError, ssl.SSLError, ValueError) as exc:  # mid-rotation: keep serving the old pair
                log.warning("TLS files changed but do not load (%s); keeping the previous certificate", exc)
                return self._material
            if (fresh.cert, fresh.key, fresh.ca) == (self._material.cert, self._material.key, self._material.ca):
                return self._material
            log.info("TLS files re-read: new certificate material (version %d)", fresh.version)
            self._material = fresh
            return fresh


def add_tls_flags(p: argparse.ArgumentParser, cert_help: str, ca_help: str) -> None:
    g = p.add_argument_group("TLS (files are re-read when they change: rotation needs no restart)")
    g.add_argument("--tls-cert-file", metavar="FILE", help=cert_help)
    g.add_argument("--tls-key-file", metavar="FILE", help="private key of --tls-cert-file (PEM)")
    g.add_argument("--tls-ca-file", metavar="FILE", help=ca_help)


def tls_files_from_args(args) -> TLSFiles | None:
    """TLSFiles for the three flags, or None when none is given."""
    if not (args.tls_cert_file or args.tls_key_file or args.tls_ca_file):
        return None
    return TLSFiles(args.tls_cert_file, args.tls_key_file, args.tls_ca_file)
