"""Block codec: the documented chain-hash formula and the refusal of every kind of bad frame."""

from __future__ import annotations

import hashlib
import struct

import pytest
import torch

from eaas.mempool import codec

FP, H, BS = "tiny-moe", "ab" * 32, 4


def test_chain_hash_is_the_documented_sha256_chain():
    tokens = [5, 70000, 3, 2**40, 9, 8, 7, 6, 1]  # 2 full blocks of 4 and one trailing token
    parent, expected = bytes(32), []
    for i in range(2):
        data = b"tiny-moe" + b"\x00" + struct.pack("<I", 4) + parent + struct.pack("<4q", *tokens[4 * i:4 * i + 4])
        parent = hashlib.sha256(data).digest()
        expected.append(parent.hex())
    assert codec.chain_hashes(FP, BS, tokens) == expected
    assert codec.chain_hashes(FP, BS, tokens[:3]) == []
    assert codec.chain_hashes("other", BS, tokens)[0] != expected[0]


def test_fingerprint_must_be_safe_in_a_redis_key():
    for bad in ("a:b", "a b", "a*", ""):
        with pytest.raises(ValueError):
            codec.chain_hashes(bad, BS, [1, 2, 3, 4])


def frame() -> bytes:
    tensors = [torch.arange(8, dtype=torch.float32).reshape(2, 4), torch.ones(4, 2, dtype=torch.bfloat16)]
    return codec.encode_block(tensors, fingerprint=FP, chain_hash=H, block_size=BS)


def decode(data, **overrides):
    kwargs = {"fingerprint": FP, "chain_hash": H, "block_size": BS, **overrides}
    return codec.decode_block(data, **kwargs)


def test_frame_layout_is_prefix_header_payload_crc():
    data = frame()
    magic, frame_len, header_len = struct.unpack_from("<4sQI", data)
    assert (magic, frame_len) == (b"EKV1", len(data))
    assert data[16:16 + header_len].startswith(b'{"fingerprint":"tiny-moe"')
    assert len(data) == 16 + header_len + 8 * 4 + 8 * 2 + 4
    assert [t.tolist() for t in decode(data)] == [[[0, 1, 2, 3], [4, 5, 6, 7]], [[1, 1]] * 4]


@pytest.mark.parametrize("damage, kind", [
    (lambda d: d[:-1], "corrupt"),                           # truncated
    (lambda d: b"XKV1" + d[4:], "corrupt"),                  # wrong magic
    (lambda d: d[:30] + bytes([d[30] ^ 1]) + d[31:], "corrupt"),  # a bit flip in the header
    (lambda d: d[:-6] + bytes([d[-6] ^ 1]) + d[-5:], "corrupt"),  # a bit flip in the payload
    (lambda d: b"", "corrupt"),
])
def test_damaged_frames_are_refused(damage, kind):
    with pytest.raises(codec.RejectedBlock) as info:
        decode(damage(frame()))
    assert info.value.kind == kind


@pytest.mark.parametrize("overrides", [{"fingerprint": "other"}, {"chain_hash": "cd" * 32}, {"block_size": 8},
                                       {"layout": [(torch.float32, (2, 4)), (torch.float16, (4, 2))]}])
def test_valid_frames_of_another_block_are_refused_as_foreign(overrides):
    with pytest.raises(codec.RejectedBlock) as info:
        decode(frame(), **overrides)
    assert info.value.kind == "foreign"


def test_unsupported_dtype_is_an_error_on_encode():
    with pytest.raises(ValueError, match="unsupported"):
        codec.encode_block([torch.zeros(2, dtype=torch.complex64)], fingerprint=FP, chain_hash=H, block_size=BS)
