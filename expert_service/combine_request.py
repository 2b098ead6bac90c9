"""A Combine request checked against what this server holds: the job its batcher computes.

Every problem is a `WireError` whose message the server returns as INVALID_ARGUMENT.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from eaas.protos import expert_pb2
from eaas.rpc.wire import FLOAT_DTYPES, WireError, decode_tensor
from eaas.topology import format_expert_ids

MAX_TOP_K = 64  # no family routes a token to more experts; bounds [T, k] allocations


@dataclass
class CombineJob:
    """One validated Combine request: what the batcher computes."""

    layer: int
    hidden: torch.Tensor      # [T, D]
    expert_ids: torch.Tensor  # [T, k] int32
    weights: torch.Tensor     # [T, k]

    @property
    def tokens(self) -> int:
        return self.hidden.shape[0]


@dataclass(frozen=True)
class ServedExperts:
    """What a server holds: checked against every request."""

    layers: frozenset[int]
    expert_ids: frozenset[int]
    num_experts: int
    hidden_size: int
    dtype: str
    max_message_bytes: int

    @cached_property
    def accepts_id(self) -> torch.Tensor:
        """Lookup at (expert id clamped to -2..num_experts) + 2: True for -1 and for held experts only."""
        table = torch.zeros(self.num_experts + 3, dtype=torch.bool)
        table[[1] + [e + 2 for e in self.expert_ids]] = True
        return table


def decode_combine(req: expert_pb2.CombineRequest, served: ServedExperts) -> CombineJob:
    size = req.ByteSize()
    if size > served.max_message_bytes:
        raise WireError(f"request of {size} bytes exceeds this server's limit of {served.max_message_bytes} "
                        f"bytes; split the batch")
    if req.layer not in served.layers:
        raise WireError(f"layer {req.layer} is not served here; layers: {sorted(served.layers)}")
    hidden = decode_tensor(req.hidden, "hidden", (served.dtype,))
    if hidden.dim() != 2 or hidden.shape[1] != served.hidden_size:
        raise WireError(f"hidden: shape {list(hidden.shape)} is not [T, {served.hidden_size}]")
    ids = decode_tensor(req.expert_ids, "expert_ids", ("int32",))
    weights = decode_tensor(req.weights, "weights", FLOAT_DTYPES)
    tokens = hidden.shape[0]
    if ids.dim() != 2 or ids.shape[0] != tokens or not 1 <= ids.shape[1] <= MAX_TOP_K:
        raise WireError(f"expert_ids: shape {list(ids.shape)} is not [{tokens}, k] with 1 <= k <= {MAX_TOP_K}")
    if weights.shape != ids.shape:
        raise WireError(f"weights: shape {list(weights.shape)} differs from expert_ids {list(ids.shape)}")
    check_routing(ids, weights, served)
    return CombineJob(req.layer, hidden, ids, weights)


def check_routing(ids: torch.Tensor, weights: torch.Tensor, served: ServedExperts) -> None:
    """Raise WireError unless the weights are finite and every id is -1 or held here (both transports)."""
    if not bool(torch.isfinite(weights).all()):  # routing weights are probabilities (found by fuzzing: NaN passed)
        raise WireError("weights: NaN or infinite routing weights")
    problem = accepted_ids(ids, served)
    if problem:
        raise WireError(problem)


def accepted_ids(ids: torch.Tensor, served: ServedExperts) -> str | None:
    """None if every id in ids is -1 or held here; else what is wrong (shared by both transports)."""
    if not ids.numel() or bool(served.accepts_id[ids.clamp(-2, served.num_experts) + 2].all()):
        return None
    foreign = sorted(set(torch.unique(ids).tolist()) - served.expert_ids - {-1})
    out_of_range = [e for e in foreign if not 0 <= e < served.num_experts]
    if out_of_range:
        return (f"expert ids {format_expert_ids(out_of_range)} out of range "
                f"0..{served.num_experts - 1} (use -1 for none)")
    return (f"experts {format_expert_ids(foreign)} are not held by this server "
            f"(it holds {format_expert_ids(served.expert_ids)})")
