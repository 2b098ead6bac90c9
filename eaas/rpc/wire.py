"""Wire format of the expert data path: torch tensors <-> `eaas.v1.Tensor` (raw bytes + dtype + shape).

Both sides use these functions, so the byte layout is defined once: little-endian, C order. Every problem
is a `WireError`: a server returns its message as INVALID_ARGUMENT, a gateway treats a bad reply as INTERNAL.
"""

from __future__ import annotations

import math
import sys

import torch

from eaas.protos import expert_pb2

DTYPE_BY_NAME = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "int32": torch.int32}
NAME_BY_DTYPE = {v: k for k, v in DTYPE_BY_NAME.items()}
FLOAT_DTYPES = ("float32", "bfloat16", "float16")
MAX_MESSAGE_BYTES = 64 << 20        # largest CombineRequest a server serves (e.g. 8192 tokens x 2048 hidden x fp32)
TRANSPORT_MESSAGE_BYTES = 2 * MAX_MESSAGE_BYTES  # gRPC's own limit on both ends: above ours, so ours answers first

if sys.byteorder != "little":  # the wire is little-endian; torch.frombuffer reads native order
    raise ImportError("eaas wire format needs a little-endian host")


class WireError(ValueError):
    """A malformed or unservable request; the message says what is wrong."""


def encode_tensor(t: torch.Tensor) -> expert_pb2.Tensor:
    t = t.detach().contiguous()
    if t.device.type != "cpu":
        t = t.cpu()
    data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return expert_pb2.Tensor(data=data, dtype=NAME_BY_DTYPE[t.dtype], shape=list(t.shape))


def decode_tensor(msg: expert_pb2.Tensor, what: str, allowed: tuple[str, ...]) -> torch.Tensor:
    """A CPU tensor of msg's dtype and shape (a private copy: gRPC's bytes are read-only)."""
    if msg.dtype not in allowed:
        raise WireError(f"{what}: dtype {msg.dtype!r} not allowed here; expected one of {', '.join(allowed)}")
    dtype = DTYPE_BY_NAME[msg.dtype]
    shape = tuple(msg.shape)
    if any(n < 0 for n in shape):
        raise WireError(f"{what}: negative dimension in shape {list(shape)}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = math.prod(shape) * itemsize
    if len(msg.data) != expected:
        raise WireError(f"{what}: {len(msg.data)} bytes do not match shape {list(shape)} of {msg.dtype} "
                        f"({expected} bytes)")
    if expected == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(msg.data), dtype=dtype).reshape(shape)
