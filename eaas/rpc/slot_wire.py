"""Frames of the shared-memory data path: fixed headers on a unix socket, tensors in shared slots.

A gateway maps one memfd per expert server and hands the server its fd (SCM_RIGHTS) in the hello: the
memory holds `slots` slots, each a request area then a response area of `slot_bytes` each. A Combine is
  gateway: hidden, expert ids, weights -> the slot's request area; REQUEST header on the socket (doorbell)
  server:  reads the tensors in place, computes, writes the weighted combine into the response area,
           REPLY header on the socket
Each request carries the slot's generation; a reply is read only if slot and generation match the call
waiting on that slot, so a late answer can never be taken for a later call's. Pure: no I/O here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import torch

from eaas.rpc.wire import DTYPE_BY_NAME, WireError

MAGIC = b"EAS2"
TOKEN_BYTES = 32
HELLO = struct.Struct("<4sIQ32s")       # magic, slots, slot_bytes, the server's shm_token (the memfd beside it)
HELLO_ANSWER = struct.Struct("<4sI")    # magic, 0 = accepted, else a gRPC status code
REQUEST = struct.Struct("<IQIIIIBB2x")  # slot, generation, layer, tokens, hidden_size, top_k, hidden dt, weights dt
REPLY = struct.Struct("<IQIII")         # slot, generation, gRPC status code (0 = OK), tokens, detail bytes
ALIGN = 64
DTYPE_CODES = ("float32", "bfloat16", "float16", "int32")


def aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def itemsize(dtype_name: str) -> int:
    return DTYPE_BY_NAME[dtype_name].itemsize


@dataclass(frozen=True)
class SlotRequest:
    """A REQUEST header: where a call's tensors lie in its slot and what they are."""

    slot: int
    generation: int
    layer: int
    tokens: int
    hidden_size: int
    top_k: int
    hidden_dtype: str
    weights_dtype: str

    def offsets(self) -> tuple[int, int, int, int]:
        """Byte offsets of hidden, expert ids, weights inside the request area, and its end."""
        ids_at = aligned(self.tokens * self.hidden_size * itemsize(self.hidden_dtype))
        weights_at = aligned(ids_at + self.tokens * self.top_k * 4)
        return 0, ids_at, weights_at, weights_at + self.tokens * self.top_k * itemsize(self.weights_dtype)

    def pack(self) -> bytes:
        return REQUEST.pack(self.slot, self.generation, self.layer, self.tokens, self.hidden_size, self.top_k,
                            DTYPE_CODES.index(self.hidden_dtype), DTYPE_CODES.index(self.weights_dtype))

    @classmethod
    def unpack(cls, data: bytes) -> SlotRequest:
        slot, gen, layer, tokens, hidden, k, hdt, wdt = REQUEST.unpack(data)
        if hdt >= len(DTYPE_CODES) or wdt >= len(DTYPE_CODES):
            raise WireError(f"unknown dtype code {max(hdt, wdt)}")
        return cls(slot, gen, layer, tokens, hidden, k, DTYPE_CODES[hdt], DTYPE_CODES[wdt])


def socket_address(endpoint: str) -> str:
    """The unix socket address of an endpoint; '@name' is the abstract name (a leading NUL byte)."""
    return "\0" + endpoint[1:] if endpoint.startswith("@") else endpoint


def request_tensors(buf, req: SlotRequest, slot_bytes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [T, D], expert ids [T, k], weights [T, k] as views of the slot's request area (no copy): the
    gateway copies its tensors into them, the server computes from them."""
    base = req.slot * 2 * slot_bytes
    at_hidden, at_ids, at_weights, _ = req.offsets()
    t, k = req.tokens, req.top_k

    def view(offset: int, dtype_name: str, shape: tuple[int, int]) -> torch.Tensor:
        count = shape[0] * shape[1]
        if count == 0:
            return torch.empty(shape, dtype=DTYPE_BY_NAME[dtype_name])
        return torch.frombuffer(buf, dtype=DTYPE_BY_NAME[dtype_name], count=count,
                                offset=base + offset).view(shape)
    return (view(at_hidden, req.hidden_dtype, (t, req.hidden_size)), view(at_ids, "int32", (t, k)),
            view(at_weights, req.weights_dtype, (t, k)))


def response_view(buf, slot: int, slot_bytes: int, tokens: int, hidden_size: int, dtype_name: str) -> torch.Tensor:
    """The slot's response area as a [T, D] tensor (written by the server, read by the gateway)."""
    count = tokens * hidden_size
    if count == 0:
        return torch.empty((tokens, hidden_size), dtype=DTYPE_BY_NAME[dtype_name])
    return torch.frombuffer(buf, dtype=DTYPE_BY_NAME[dtype_name], count=count,
                            offset=(2 * slot + 1) * slot_bytes).view(tokens, hidden_size)

