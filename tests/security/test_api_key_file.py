"""`--api-key-file` as the gateway reads it: the key in force follows the file (rewritten in place, or a
Secret volume's `..data` swap), and a file caught empty or missing mid-rotation keeps the previous key."""

from __future__ import annotations

import os

import pytest
from secret_volume import SecretVolume

from eaas.auth import ApiKeyFile, api_key_source, key_getter
from eaas.errors import UserError


def test_the_key_follows_a_kubelet_swap_and_an_in_place_rewrite(tmp_path):
    volume = SecretVolume(tmp_path / "secret", {"api-key": b"sk-one\n"})
    keys = ApiKeyFile(str(volume.path("api-key")))
    assert keys.current() == "sk-one"
    volume.update({"api-key": b"sk-two"})
    assert keys.current() == "sk-two"

    plain = tmp_path / "key"
    plain.write_text("sk-a")
    in_place = ApiKeyFile(str(plain))
    plain.write_text("sk-bb")  # same inode, new size and mtime
    assert in_place.current() == "sk-bb"


def test_a_half_done_rotation_keeps_the_previous_key(tmp_path):
    path = tmp_path / "key"
    path.write_text("sk-good")
    keys = ApiKeyFile(str(path))
    path.write_text("")  # truncated, not yet written
    assert keys.current() == "sk-good"
    os.remove(path)  # between unlink and rename
    assert keys.current() == "sk-good"
    path.write_text("sk-next")
    assert keys.current() == "sk-next"


def test_the_gateway_gets_a_file_source_only_for_a_file(tmp_path):
    path = tmp_path / "key"
    path.write_text("sk-file")
    assert isinstance(api_key_source(None, str(path), {}), ApiKeyFile)
    assert api_key_source("sk-flag", None, {}) == "sk-flag"
    assert api_key_source(None, None, {}) is None
    assert key_getter("sk-fixed")() == "sk-fixed"
    with pytest.raises(UserError, match="not both"):
        api_key_source("sk-flag", str(path), {})
    path.write_text("")
    with pytest.raises(UserError, match="empty"):  # at start a bad file is an error, not "keep the old one"
        ApiKeyFile(str(path))
