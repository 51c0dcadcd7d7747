"""The QMIX backward's batch-reducing GEMMs, shared by both backward kernels (torch's Triton-free
matmuls: cuBLAS on CUDA, MKL on the CPU)."""

from __future__ import annotations

import torch
from torch import Tensor

from fastmarl.ops.dtypes import cast
from fastmarl.ops.qmix.params import QMixParams

__all__ = ["weight_and_state_grads"]


def _weight_grad(dz: Tensor, x: Tensor) -> Tensor:
    # [k, S] = dz^T @ x. From B=128 on, (x^T @ dz)^T made contiguous is the faster way on the
    # CPU machine (MKL, one thread, 352 columns, S=37): 1.5 against 2.3 ms at B=4096, 0.11
    # against 0.15 at B=256, but 34 against 26 us at B=32.
    if dz.shape[0] >= 128:
        return torch.mm(x.t(), dz).t().contiguous()
    return torch.mm(dz.t(), x)


def weight_and_state_grads(
    grad_q_tot: Tensor, dq: Tensor, dz_first: Tensor, dz_rest: Tensor, dz2_w1: Tensor | None,
    dz2_wf: Tensor | None, g: Tensor | None, q: Tensor, state: Tensor, params: QMixParams,
    need_state_grad: bool, independent: bool = True,
) -> list[Tensor | None]:
    """``[dq, dstate, *dparams]`` from the per-sample gradients the backward kernels produce.

    ``dz_first`` ``[B, rows]`` holds the gradient of the first Linear's output (``hyper_w_1``
    or its first layer), ``dz_rest`` ``[B, rows + 3E]`` those of ``hyper_w_final`` (ditto),
    ``hyper_b_1`` and ``V.0``, then ``dy * relu(V.0(s))``; ``dz2_w1`` ``[B, nE]``, ``dz2_wf``
    ``[B, E]`` and ``g`` ``[B, 2H]`` (the ReLU activations that feed them) the second layers of
    two-layer hypernetworks. What is left are matmuls that reduce over the batch (``dZ^T @ x``)
    and ``dZ @ W`` for the state. ``independent`` copies the gradients that are slices of one
    result (an op's outputs may not alias one another; autograd does not mind).
    """
    acc = dz_first.dtype
    rows = [w.shape[0] for w in params.state_weights]
    E = params.embed
    state_acc = cast(state, acc)

    def own(x):
        return x.clone() if independent else x

    d_rest = _weight_grad(dz_rest[:, :-E], state_acc).split(rows[1:])
    d_b_rest = dz_rest.sum(0).split([*rows[1:], E])
    # The first slice of each split result may stay a view: no other output aliases it.
    grads = [_weight_grad(dz_first, state_acc), dz_first.sum(0), d_rest[0], d_b_rest[0],
             own(d_rest[1]), own(d_b_rest[1]), own(d_rest[2]), own(d_b_rest[2]),
             own(d_b_rest[3].view(1, E)), cast(grad_q_tot, acc).sum().view(1)]
    if params.two_layer:
        H = rows[0]
        grads += [_weight_grad(dz2_w1, g[:, :H]), dz2_w1.sum(0), _weight_grad(dz2_wf, g[:, H:]), dz2_wf.sum(0)]
    d_state = None
    if need_state_grad:
        rest_weight = torch.cat([cast(w, acc) for w in params.state_weights[1:]])
        d_state = torch.addmm(torch.mm(dz_rest[:, :-E], rest_weight), dz_first, cast(params.hyper_w1_weight, acc))
        d_state = cast(d_state, state.dtype)
    return [cast(dq, q.dtype), d_state, *(cast(d, x.dtype) for d, x in zip(grads, params.flat()))]
