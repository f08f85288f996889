"""Loss maths and the small tensor helpers under it, as pure functions.

Each loss takes tensors and returns `(loss, *detached_metrics)`. Shapes are written as comments.
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` where `mask` is 1. Equivalent loop: sum(v for v, m in zip(values, mask) if m)."""
    masked = values * mask.to(values.dtype)
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` over positions where `mask` is 1."""
    return masked_sum(values, mask, dim) / mask.to(values.dtype).sum(dim=dim).clamp_min(1)
