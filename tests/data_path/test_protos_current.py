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


@pytest.mark.parametrize("module", ["expert_pb2", "expert_pb2_grpc", "gateway_pb2", "gateway_pb2_grpc"])
def test_generated_modules_import_from_the_package(module):
    mod = importlib.import_module(f"eaas.protos.{module}")
    assert mod.__name__ == f"eaas.protos.{module}"


def test_messages_carry_raw_bytes_not_repeated_floats():
    from eaas.protos import expert_pb2

    tensor = expert_pb2.Tensor.DESCRIPTOR
    assert tensor.fields_by_name["data"].type == tensor.fields_by_name["data"].TYPE_BYTES
    request = expert_pb2.CombineRequest.DESCRIPTOR
    assert {f.name for f in request.fields} == {"layer", "hidden", "expert_ids", "weights", "request_id"}
