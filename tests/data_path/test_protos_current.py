"""The checked-in generated protobuf/gRPC modules are exactly what `make protos` writes now."""

from __future__ import annotations

import importlib

import pytest

from eaas.protos.generate import PROTO_DIR, generated_files


def test_checked_in_stubs_match_regenerated(tmp_path):
    fresh = generated_files(tmp_path)
    assert {p.name for p in fresh} == {f"{stem}{suffix}" for stem in ("expert", "gateway")
                                       for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")}
    for path in fresh:
        checked_in = PROTO_DIR / path.name
        assert checked_in.is_file(), f"{checked_in} missing: run `make protos`"
        assert checked_in.read_bytes() == path.read_bytes(), f"{checked_in.name} is stale: run `make protos`"


@pytest.mark.parametrize("stem", ["expert", "gateway"])
def test_stubs_register_under_the_package_path_and_import_it_absolutely(stem):
    """protoc ran with the virtual include path eaas/protos: the descriptor pool knows the file as
    eaas/protos/<stem>.proto (no clash with another package's <stem>.proto) and the gRPC module imports its
    messages from the package, not from a top-level `<stem>_pb2` that only exists with protos/ on sys.path."""
    messages = importlib.import_module(f"eaas.protos.{stem}_pb2")
    assert messages.DESCRIPTOR.name == f"eaas/protos/{stem}.proto"
    assert f"from eaas.protos import {stem}_pb2 as" in (PROTO_DIR / f"{stem}_pb2_grpc.py").read_text()


def test_messages_carry_raw_bytes_not_repeated_floats():
    from eaas.protos import expert_pb2

    tensor = expert_pb2.Tensor.DESCRIPTOR
    assert tensor.fields_by_name["data"].type == tensor.fields_by_name["data"].TYPE_BYTES
    request = expert_pb2.CombineRequest.DESCRIPTOR
    assert {f.name for f in request.fields} == {"layer", "hidden", "expert_ids", "weights"}
