"""Where each sequence's tokens sit in one packed forward (plain data, computed once per step)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class BatchLayout:
    """B sequences; sequence i brings new[i] tokens after cached[i] already-cached ones."""

    cached: list[int]
    new: list[int]
    token_offsets: list[int] = field(init=False)   # packed index of sequence i's first new token
    context: list[int] = field(init=False)         # cached + new
    max_new: int = field(init=False)
    max_context: int = field(init=False)
    positions: torch.Tensor = field(init=False)    # [T] absolute position of every packed token
    pad_index: torch.Tensor = field(init=False)    # [B * max_new] packed index, or T for padding
    valid_index: torch.Tensor = field(init=False)  # [T] position in the padded [B * max_new] grid
    last_index: torch.Tensor = field(init=False)   # [B] packed index of each sequence's last token
    _masks: dict = field(init=False, default_factory=dict)

    def __post_init__(self):
        offs = [0]
        for n in self.new:
            offs.append(offs[-1] + n)
        self.token_offsets = offs
        self.context = [c + n for c, n in zip(self.cached, self.new)]
        self.max_new = max(self.new)
        self.max_context = max(self.context)
        total = offs[-1]
        pos, pad, valid = [], [], []
        for i, (c, n) in enumerate(zip(self.cached, self.new)):
            pos.extend(range(c, c + n))
            row = list(range(offs[i], offs[i] + n)) + [total] * (self.max_new - n)
            pad.extend(row)
            valid.extend(range(i * self.max_new, i * self.max_new + n))
        self.positions = torch.tensor(pos, dtype=torch.long)
        self.pad_index = torch.tensor(pad, dtype=torch.long)
        self.valid_index = torch.tensor(valid, dtype=torch.long)
        self.last_index = torch.tensor([o - 1 for o in offs[1:]], dtype=torch.long)

    @property
    def num_tokens(self) -> int:
        return self.token_offsets[-1]

    def mask(self, sliding_window: int | None = None) -> torch.Tensor:
        """[B, 1, max_new, max_context] bool: query r of sequence i may see key j (causal, in context)."""
        key = sliding_window or 0
        if key not in self._masks:
            B = len(self.new)
            q_pos = torch.tensor(self.cached).view(B, 1) + torch.arange(self.max_new).view(1, -1)  # [B, max_new]
            k_pos = torch.arange(self.max_context).view(1, 1, -1)
            m = k_pos <= q_pos.unsqueeze(-1)
            m &= k_pos < torch.tensor(self.context).view(B, 1, 1)
            if sliding_window:
                m &= k_pos > q_pos.unsqueeze(-1) - sliding_window
            m[:, :, 0] |= ~m.any(-1)  # padding rows: see one key rather than produce NaN
            self._masks[key] = m.unsqueeze(1)
        return self._masks[key]
