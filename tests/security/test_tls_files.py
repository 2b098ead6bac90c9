"""TLSFiles as a rotation lands: unchanged files are not re-read, a half-written rotation (key and certificate
that do not match) keeps the previous pair, the completed one is taken; careless flag sets are refused."""

from __future__ import annotations

import os
import stat

import pytest

from eaas.errors import UserError
from eaas.private_ca import CertificateAuthority
from eaas.tls import TLSFiles


@pytest.fixture
def ca():
    return CertificateAuthority.create("test CA")


def _files(d) -> TLSFiles:
    return TLSFiles(str(d / "tls.crt"), str(d / "tls.key"), str(d / "ca.crt"))


def test_a_half_written_rotation_keeps_the_previous_pair_until_it_completes(ca, tmp_path):
    d = ca.write_secret(tmp_path / "s", "server", ["127.0.0.1"])
    files = _files(d)
    first = files.current()
    assert files.current() is first  # nothing changed: nothing re-read

    fresh = ca.write_secret(tmp_path / "next", "server", ["127.0.0.1"])
    os.replace(fresh / "tls.crt", d / "tls.crt")  # the new certificate, the old key: a mismatch
    assert files.current() is first
    os.replace(fresh / "tls.key", d / "tls.key")
    rotated = files.current()
    assert rotated.version == first.version + 1 and rotated.cert == (d / "tls.crt").read_bytes()


def test_keys_are_written_owner_only_and_bad_flag_sets_are_refused(ca, tmp_path):
    d = ca.write_secret(tmp_path / "s", "server", ["localhost"])
    assert stat.S_IMODE((d / "tls.key").stat().st_mode) == 0o600
    with pytest.raises(UserError, match="go together"):
        TLSFiles(str(d / "tls.crt"), None, None)
    with pytest.raises(UserError, match="TLS files"):  # a key that is not the certificate's
        other = ca.write_secret(tmp_path / "o", "other", ["localhost"])
        TLSFiles(str(d / "tls.crt"), str(other / "tls.key"), None)
    with pytest.raises(UserError, match="TLS files"):
        TLSFiles(None, None, str(tmp_path / "missing.crt"))
