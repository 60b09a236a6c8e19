"""Differentiable collectives for the losses (which take them as plain callables)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's (B, ...) tensor along dim 0; backward sums the gradients over ranks.

    Each rank's loss uses the gathered copy of every other rank's rows, so the gradient of the
    sum of all ranks' losses w.r.t. this rank's rows is the all-reduced gradient of the gathered
    tensor, restricted to this rank's slice. (``torch.distributed.nn.functional.all_gather`` does
    the same but is deprecated.)
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce is in place
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """(B, ...) on each of R ranks -> (R * B, ...), rank r's rows at [r * B, (r + 1) * B).

    Gradients flow back to every rank's input (summed over the ranks' losses); every rank must
    pass the same shape. Identity when torch.distributed is not initialised.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return x
    return _AllGather.apply(x)
