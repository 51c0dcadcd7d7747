"""Launchers of the GAE Triton kernels (:mod:`fastmarl.kernels.gae`): allocation is the caller's,
arguments go by keyword, the launch configuration comes from the feature count only
(:func:`fastmarl.ops.tuning.launch_config`, measured per GPU architecture).

These are what ``fastmarl::gae``/``fastmarl::gae_backward`` call on CUDA, and what the
interpreter tests call on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import wrap_triton

from fastmarl.kernels import gae as kernels
from fastmarl.ops import tuning

__all__ = ["gae_fwd", "gae_bwd"]


def _strides(prefix: str, x: Tensor | None) -> dict[str, int]:
    # The kernels' three strides of an [R, T, F] operand; an absent γ/λ tensor is never read.
    r, t, f = (0, 0, 0) if x is None else x.stride()
    return {f"s_{prefix}_r": r, f"s_{prefix}_t": t, f"s_{prefix}_f": f}


def _discount_args(gamma: float, lmbda: float, gamma_tensor: Tensor | None,
                   lmbda_tensor: Tensor | None, placeholder: Tensor) -> dict:
    # An absent tensor's pointer is any valid tensor: HAS_*_TENSOR keeps the kernel off it.
    return dict(
        gamma_ptr=placeholder if gamma_tensor is None else gamma_tensor,
        lmbda_ptr=placeholder if lmbda_tensor is None else lmbda_tensor,
        gamma=gamma, lmbda=lmbda,
        **_strides("g", gamma_tensor), **_strides("l", lmbda_tensor),
        HAS_GAMMA_TENSOR=gamma_tensor is not None, HAS_LMBDA_TENSOR=lmbda_tensor is not None,
    )


def _launch_config(family: str, num_features: int, device, block_t: int | None) -> tuple[int, int, int]:
    # (BT, BF, num_warps): BF from F, BT and warps from the table; ``block_t`` overrides BT.
    block_f = kernels.gae_block_f(num_features)
    config = tuning.launch_config(family, device, bf=block_f)
    return block_t or config["BT"], block_f, config["num_warps"]


def gae_fwd(
    value: Tensor, next_value: Tensor, reward: Tensor, done: Tensor, terminated: Tensor,
    gamma: float, lmbda: float, gamma_tensor: Tensor | None, lmbda_tensor: Tensor | None,
    advantage: Tensor, value_target: Tensor, *, block_t: int | None = None,
) -> None:
    """Fill ``advantage``/``value_target`` (contiguous ``[R, T, F]``). ``block_t`` overrides the
    tile length (tests use a short one to cross tiles at small T)."""
    R, T, F = value.shape
    block_t, block_f, num_warps = _launch_config("gae_fwd", F, value.device, block_t)
    wrap_triton(kernels.gae_fwd_kernel)[kernels.gae_grid(R, F, block_f)](
        value_ptr=value, next_value_ptr=next_value, reward_ptr=reward, done_ptr=done,
        terminated_ptr=terminated, advantage_ptr=advantage, value_target_ptr=value_target,
        T=T, F=F,
        **_strides("v", value), **_strides("nv", next_value), **_strides("r", reward),
        **_strides("d", done), **_strides("te", terminated),
        **_discount_args(gamma, lmbda, gamma_tensor, lmbda_tensor, value),
        BT=block_t, BF=block_f, ACC_FP64=advantage.dtype == torch.float64,
        num_warps=num_warps,
    )


def gae_bwd(
    grad_advantage: Tensor, grad_value_target: Tensor, done: Tensor, terminated: Tensor,
    gamma: float, lmbda: float, gamma_tensor: Tensor | None, lmbda_tensor: Tensor | None,
    grad_value: Tensor, grad_next_value: Tensor, grad_reward: Tensor, *, block_t: int | None = None,
) -> None:
    """Fill the three gradients (contiguous ``[R, T, F]``)."""
    R, T, F = done.shape
    block_t, block_f, num_warps = _launch_config("gae_bwd", F, done.device, block_t)
    wrap_triton(kernels.gae_bwd_kernel)[kernels.gae_grid(R, F, block_f)](
        grad_advantage_ptr=grad_advantage, grad_value_target_ptr=grad_value_target,
        done_ptr=done, terminated_ptr=terminated, grad_value_ptr=grad_value,
        grad_next_value_ptr=grad_next_value, grad_reward_ptr=grad_reward,
        T=T, F=F,
        **_strides("ga", grad_advantage), **_strides("gv", grad_value_target),
        **_strides("d", done), **_strides("te", terminated),
        **_discount_args(gamma, lmbda, gamma_tensor, lmbda_tensor, done),
        BT=block_t, BF=block_f,
        ACC_FP64=torch.float64 in (grad_advantage.dtype, grad_value_target.dtype),
        num_warps=num_warps,
    )
