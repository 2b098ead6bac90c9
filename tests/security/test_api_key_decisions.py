"""Where the API key comes from, and which Authorization headers carry it (pure decisions)."""

from __future__ import annotations

import pytest

from eaas.auth import authorized, resolve_api_key
from eaas.client.common import auth_metadata
from eaas.errors import UserError


def test_flag_then_file_then_environment(tmp_path):
    f = tmp_path / "key"
    f.write_text("from-file\n")  # a mounted Secret often ends with a newline
    assert resolve_api_key("from-flag", None, {"EAAS_API_KEY": "from-env"}) == "from-flag"
    assert resolve_api_key(None, str(f), {"EAAS_API_KEY": "from-env"}) == "from-file"
    assert resolve_api_key(None, None, {"EAAS_API_KEY": "from-env"}) == "from-env"
    assert resolve_api_key(None, None, {}) is None


@pytest.mark.parametrize("flag, file, env, message", [
    ("k", "f", {}, "not both"),
    ("  ", None, {}, "empty"),
    (None, None, {"EAAS_API_KEY": ""}, "empty"),
    (None, "/nonexistent/key", {}, "cannot read"),
])
def test_unusable_keys_are_one_line_errors(flag, file, env, message):
    with pytest.raises(UserError, match=message):
        resolve_api_key(flag, file, env)


def test_an_empty_key_file_is_refused(tmp_path):
    (tmp_path / "k").write_text("\n")
    with pytest.raises(UserError, match="empty"):
        resolve_api_key(None, str(tmp_path / "k"), {})


@pytest.mark.parametrize("header, ok", [
    ("Bearer s3cret", True),
    ("bearer s3cret", True),          # the scheme is case-insensitive (RFC 7235)
    ("Bearer  s3cret ", True),
    ("Bearer s3cre", False),
    ("Bearer s3cret2", False),
    ("Basic s3cret", False),
    ("s3cret", False),
    ("Bearer", False),
    ("", False),
    (None, False),
    ("Bearer s3cr\udcffet", False),    # undecodable junk is a refusal, not an exception
])
def test_only_the_bearer_key_is_authorized(header, ok):
    assert authorized(header, "s3cret") is ok


def test_clients_send_the_key_as_metadata(monkeypatch):
    monkeypatch.delenv("EAAS_API_KEY", raising=False)
    assert auth_metadata(None) is None
    assert auth_metadata("k") == (("authorization", "Bearer k"),)
    monkeypatch.setenv("EAAS_API_KEY", "env-key")
    assert auth_metadata(None) == (("authorization", "Bearer env-key"),)
