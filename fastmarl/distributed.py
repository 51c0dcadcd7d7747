"""Data-parallel training on ``torch.distributed``: gradient averaging that fits TorchRL's losses.

Each rank runs the same loss on its own shard of the global minibatch; after the backward, the
gradients are averaged over the ranks, so every rank takes the same optimizer step on the
gradient of the mean loss over the union of the shards (for equal shard sizes and a
``reduction="mean"`` loss).

Why not ``DistributedDataParallel``: TorchRL's losses hold their networks' parameters in
``TensorDictParams`` and call the networks from inside ``forward`` (functional parameters),
so there is no one module whose ``forward`` DDP could wrap; and :class:`fastmarl.UpdateStep`
computes the gradients with ``torch.autograd.grad`` (so that the backward is traced into the
compiled step), which never fires the gradient-accumulation hooks DDP's reducer all-reduces
from. Under ``torch.compile``, DDP also splits the graph at its bucket boundaries
(``DDPOptimizer``), where the update step is one graph. :func:`average_gradients` instead
all-reduces the flattened gradients between the backward and the gradient clipping: one
collective per dtype (one in practice), a functional collective that ``torch.compile`` traces
into the step's graph. What DDP would add, overlapping the all-reduce with the backward in
buckets, matters for large models; MARL networks (the tutorial's: 151,813 parameters, 0.6 MB
in float32) are one small message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from fastmarl import _compat

__all__ = ["average_gradients", "broadcast_tensors", "world_size"]


def world_size(group) -> int:
    """The number of ranks of ``group`` (1 for ``None``)."""
    return 1 if group is None else group.size()


def average_gradients(grads: Sequence[Tensor], group) -> None:
    """Replace each tensor of ``grads`` (in place) by its mean over the ranks of ``group``.

    The tensors of one dtype and device are flattened into one buffer, all-reduced with a sum
    (gloo has no average) and divided by the world size: one collective per (dtype, device).
    Every rank must call it with gradients of the same shapes in the same order. Traceable by
    ``torch.compile`` (a functional collective); nothing is read back to the host.
    """
    world = world_size(group)
    if world == 1 or not grads:
        return
    keys = list(dict.fromkeys((g.dtype, g.device) for g in grads))
    for key in keys:
        bucket = [g for g in grads if (g.dtype, g.device) == key]
        flat = torch.cat([g.reshape(-1) for g in bucket])
        flat = _compat.all_reduce_functional(flat, "sum", group) / world
        chunks = flat.split([g.numel() for g in bucket])
        torch._foreach_copy_(bucket, [chunk.view_as(g) for chunk, g in zip(chunks, bucket)])


def broadcast_tensors(tensors: Iterable[Tensor], group, src: int = 0) -> None:
    """Overwrite ``tensors`` (in place, eagerly) with rank ``src``'s: what DDP does to a module's
    parameters and buffers at construction, so that every rank starts from the same networks."""
    import torch.distributed as dist

    tensors = list(tensors)
    if world_size(group) == 1 or not tensors:
        return
    with torch.no_grad():
        for key in dict.fromkeys((t.dtype, t.device) for t in tensors):
            bucket = [t for t in tensors if (t.dtype, t.device) == key]
            flat = torch.cat([t.detach().reshape(-1) for t in bucket])
            dist.broadcast(flat, src=dist.get_global_rank(group, src), group=group)
            for chunk, t in zip(flat.split([t.numel() for t in bucket]), bucket):
                t.copy_(chunk.view_as(t))
