"""K LoRA adapters on one frozen linear layer, trained together: the layer of a packed trial (torch only).

A packed trial runs K study trials ("slots") on one copy of the base model. Every slot sees the same batch,
so the batch is repeated K times along its first dimension, slot-major: rows [k*B, (k+1)*B) are slot k's.
Each wrapped linear layer computes the frozen base once over all K*B rows and adds slot k's low-rank update
to slot k's rows only:

    y[k] = base(x[k]) + scaling[k] * dropout_k(x[k]) @ A[k].T @ B[k].T

Slots keep their own parameters (their own shapes: ranks may differ), so an optimizer gives each slot its
own param group (learning rate, weight decay, schedule) and gradients never mix: slot k's rows are the only
path from A[k], B[k] to the loss. For the two batched matmuls (`torch.bmm`) the A and B of every slot are
zero-padded to the largest rank; the padding is a constant, so it gets no gradient and adds exactly nothing.

Example:
    >>> import torch
    >>> layer = MultiLoRALinear(torch.nn.Linear(8, 4), ranks=[2, 4], alphas=[4, 8], dropouts=[0.0, 0.0])
    >>> layer(torch.randn(2 * 3, 5, 8)).shape  # 2 slots x 3 rows, 5 tokens, 8 features
    torch.Size([6, 5, 4])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def linear_dims(base: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a linear layer: `nn.Linear`, or GPT-2's `Conv1D` (weight stored [in, out])."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if type(base).__name__ == "Conv1D":
        in_features, out_features = base.weight.shape
        return in_features, out_features
    raise TypeError(f"MultiLoRALinear wraps linear layers (nn.Linear, Conv1D), not {type(base).__name__}")


def adapter_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """The adapter's dtype on a base of `base_dtype`: float32 on a half-precision base, as PEFT keeps its LoRA
    weights (`autocast_adapter_dtype`), so a slot trains as the trial alone does."""
    return torch.float32 if base_dtype in (torch.float16, torch.bfloat16) else base_dtype


class MultiLoRALinear(nn.Module):
    """A frozen linear layer with one LoRA adapter per slot; the input's rows are grouped by slot.

    Args:
        base: the frozen layer (kept as is; its output is computed once for all rows).
        ranks, alphas, dropouts: per slot, LoRA's r, lora_alpha and lora_dropout; scaling is alpha / r
            (or alpha / sqrt(r) where `rslora` says so).
    """

    def __init__(self, base: nn.Module, ranks: Sequence[int], alphas: Sequence[float], dropouts: Sequence[float],
                 rslora: Sequence[bool] | None = None) -> None:
        super().__init__()
        if not (len(ranks) == len(alphas) == len(dropouts)) or not ranks:
            raise ValueError("one rank, alpha and dropout per slot, at least one slot")
        self.base = base
        self.in_features, self.out_features = linear_dims(base)
        weight = base.weight
        dtype = adapter_dtype(weight.dtype)
        self.lora_A = nn.ParameterList(
            nn.Parameter(torch.zeros(r, self.in_features, dtype=dtype, device=weight.device)) for r in ranks)
        self.lora_B = nn.ParameterList(
            nn.Parameter(torch.zeros(self.out_features, r, dtype=dtype, device=weight.device)) for r in ranks)
        self.ranks = list(ranks)
        rslora = list(rslora or [False] * len(ranks))
        self.register_buffer("scaling", torch.tensor(
            [a / (r ** 0.5 if rs else r) for a, r, rs in zip(alphas, ranks, rslora)], dtype=torch.float32),
            persistent=False)
        self.dropouts = list(dropouts)

        self.active: list[int] = list(range(len(ranks)))  # the slots whose rows the input holds, in order

    @property
    def slots(self) -> int:
        return len(self.ranks)

    def slot_parameters(self, k: int) -> list[nn.Parameter]:
        """Slot k's own trainable tensors."""
        return [self.lora_A[k], self.lora_B[k]]

    def set_slot(self, k: int, a: torch.Tensor, b: torch.Tensor, *, alpha: float, dropout: float,
                 rslora: bool = False) -> None:
        """Give slot k a new adapter (a backfilled trial): new tensors of its own rank, initialised to `a`, `b`."""
        weight = self.base.weight
        dtype = adapter_dtype(weight.dtype)
        self.lora_A[k] = nn.Parameter(a.detach().clone().to(device=weight.device, dtype=dtype))
        self.lora_B[k] = nn.Parameter(b.detach().clone().to(device=weight.device, dtype=dtype))
        r = a.shape[0]
        self.ranks[k] = r
        self.scaling[k] = alpha / (r ** 0.5 if rslora else r)
        self.dropouts[k] = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        slots = self.active
        widest = max(self.ranks[k] for k in slots)
        rows = x.reshape(len(slots), -1, self.in_features)  # [slots, rows of a slot x tokens, in]
        dropouts = [self.dropouts[k] for k in slots]
        if self.training and any(dropouts):
            # Each slot its own mask (independent draws), as each trial alone would have.
            keep = torch.tensor([1.0 - p for p in dropouts], dtype=rows.dtype, device=rows.device)[:, None, None]
            rows = rows * torch.bernoulli(keep.expand_as(rows)) / keep
        a = torch.stack([nn.functional.pad(self.lora_A[k], (0, 0, 0, widest - self.ranks[k])) for k in slots])
        b = torch.stack([nn.functional.pad(self.lora_B[k], (0, widest - self.ranks[k])) for k in slots])
        update = torch.bmm(torch.bmm(rows.to(a.dtype), a.transpose(1, 2)), b.transpose(1, 2))  # [slots, n, out]
        update = update * self.scaling[slots].to(update.dtype)[:, None, None]
        return out + update.reshape(out.shape).to(out.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, ranks={self.ranks}"
