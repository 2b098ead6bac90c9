"""One Combine request as tensors: what RemoteExpertBackend hands its transport.

The shared-memory slots copy the tensors straight into a slot and hand the reply back as a tensor, so the
protobuf message is built only when a request goes over gRPC (once, however often it is re-sent).
Measured on the slot path: encoding and decoding the messages (three tensor -> bytes copies, the message
and the reply's bytes -> message -> tensor) cost ~0.3 ms per layer on 2 loaded cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from eaas.protos import expert_pb2
from eaas.rpc.wire import FLOAT_DTYPES, decode_tensor, encode_tensor


@dataclass(eq=False)
class CombinePayload:
    layer: int
    hidden: torch.Tensor      # [T, D] on the CPU, contiguous, in the servers' dtype
    expert_ids: torch.Tensor  # [T, k] int32, -1 = none
    weights: torch.Tensor     # [T, k]
    _request: expert_pb2.CombineRequest | None = field(default=None, repr=False)

    @property
    def request(self) -> expert_pb2.CombineRequest:
        """The gRPC message (built on first use; two threads building it at once build equal messages)."""
        if self._request is None:
            self._request = expert_pb2.CombineRequest(layer=self.layer, hidden=encode_tensor(self.hidden),
                                                      expert_ids=encode_tensor(self.expert_ids),
                                                      weights=encode_tensor(self.weights))
        return self._request

    @classmethod
    def from_request(cls, request: expert_pb2.CombineRequest) -> CombinePayload:
        """The tensors of a message (raises WireError if it is malformed; the server would refuse it too)."""
        payload = cls(request.layer, decode_tensor(request.hidden, "hidden", FLOAT_DTYPES),
                      decode_tensor(request.expert_ids, "expert_ids", ("int32",)),
                      decode_tensor(request.weights, "weights", FLOAT_DTYPES), request)
        return payload


def as_request(payload: CombinePayload | expert_pb2.CombineRequest) -> expert_pb2.CombineRequest:
    return payload.request if isinstance(payload, CombinePayload) else payload
