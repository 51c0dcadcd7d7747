"""Launchers of the QMIX Triton kernels (:mod:`fastmarl.kernels.qmix`): arguments by keyword,
block sizes from the state, embedding and hidden widths only; samples per program and warps
from :func:`fastmarl.ops.tuning.launch_config` (keyed on the embedding and hidden blocks).

These are what ``fastmarl::qmix``/``fastmarl::qmix_backward`` call on CUDA, and what the
interpreter tests call on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import wrap_triton

from fastmarl.kernels import qmix as kernels
from fastmarl.ops import tuning
from fastmarl.ops.qmix.params import QMixParams

__all__ = ["covers", "qmix_fwd", "qmix_bwd"]


def covers(params: QMixParams) -> bool:
    """Whether the kernels take this mixer (``kernels.MAX_BLOCK_E``/``MAX_BLOCK_H`` wide at most)."""
    return kernels.qmix_kernel_fits(params.embed, params.hidden)


def _weights(params: QMixParams) -> tuple[dict[str, Tensor], Tensor]:
    # The kernels' weight pointers by name; one-layer hypernetworks pass any valid pointer for
    # the second layers, which TWO_LAYER=False never reads.
    p = params.map(lambda x: x.contiguous())
    second = (p.hyper_w1_out_weight, p.hyper_w1_out_bias, p.hyper_wf_out_weight, p.hyper_wf_out_bias)
    if not p.two_layer:
        second = (p.hyper_w1_weight,) * 4
    return dict(
        w1_ptr=p.hyper_w1_weight, w1b_ptr=p.hyper_w1_bias, wf_ptr=p.hyper_wf_weight,
        wfb_ptr=p.hyper_wf_bias, b1_ptr=p.hyper_b1_weight, b1b_ptr=p.hyper_b1_bias,
        v1_ptr=p.v1_weight, v1b_ptr=p.v1_bias, v2_ptr=p.v2_weight,
        w12_ptr=second[0], w12b_ptr=second[1], wf2_ptr=second[2], wf2b_ptr=second[3],
    ), p.v2_bias


def _sizes(family: str, q: Tensor, state: Tensor, params: QMixParams,
           block_b: int | None) -> tuple[dict, tuple]:
    B, n = q.shape
    block_k, block_e, block_h = kernels.qmix_block_sizes(params.state_dim, params.embed, params.hidden)
    config = tuning.launch_config(family, q.device, be=block_e, bh=block_h)
    block_b = block_b or config["BB"]
    sizes = dict(B=B, S=params.state_dim, N=n, E=params.embed, H=params.hidden,
                 s_qb=q.stride(0), s_qn=q.stride(1), s_sb=state.stride(0), s_sk=state.stride(1),
                 BB=block_b, BK=block_k, BE=block_e, BH=block_h, TWO_LAYER=params.two_layer,
                 num_warps=config["num_warps"])
    return sizes, kernels.qmix_grid(B, block_b)


def qmix_fwd(
    q: Tensor, state: Tensor, params: QMixParams, *, q_tot: Tensor, hidden_pre: Tensor | None,
    block_b: int | None = None,
) -> None:
    """Fill ``q_tot`` ``[B, 1]`` and, unless None, ``hidden_pre`` ``[B, E]`` (both contiguous).
    ``block_b`` overrides the samples per program (tests use 16 to cross blocks at small B)."""
    weights, v2_bias = _weights(params)
    sizes, grid = _sizes("qmix_fwd", q, state, params, block_b)
    wrap_triton(kernels.qmix_fwd_kernel)[grid](
        q_ptr=q, state_ptr=state, **weights, v2b_ptr=v2_bias, q_tot_ptr=q_tot,
        hidden_pre_ptr=q_tot if hidden_pre is None else hidden_pre, **sizes,
        SAVE_HIDDEN=hidden_pre is not None,
        ACC_FP64=torch.float64 in (q.dtype, state.dtype, params.hyper_w1_weight.dtype),
    )


def qmix_bwd(
    grad_q_tot: Tensor, q: Tensor, state: Tensor, params: QMixParams, hidden_pre: Tensor, *,
    dq: Tensor, dz1: Tensor, dz2: Tensor, g: Tensor, block_b: int | None = None,
) -> None:
    """Fill the per-sample gradients ``dq`` ``[B, n]``, ``dz1`` ``[B, C1 + E]`` and, two-layer
    only, ``dz2`` ``[B, (n+1)E]`` and ``g`` ``[B, 2H]`` (all contiguous, in ``hidden_pre``'s
    dtype, the accumulation dtype); see
    :func:`fastmarl.ops.qmix.weight_grads.weight_and_state_grads` for the layout."""
    weights, _ = _weights(params)  # V.2's bias has no per-sample gradient
    sizes, grid = _sizes("qmix_bwd", q, state, params, block_b)
    wrap_triton(kernels.qmix_bwd_kernel)[grid](
        grad_q_tot_ptr=grad_q_tot, q_ptr=q, state_ptr=state, hidden_pre_ptr=hidden_pre, **weights,
        dq_ptr=dq, dz1_ptr=dz1, dz2_ptr=dz2, g_ptr=g, s_gb=grad_q_tot.stride(0), **sizes,
        ACC_FP64=hidden_pre.dtype == torch.float64,
    )
