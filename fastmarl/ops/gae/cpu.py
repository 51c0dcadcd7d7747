"""The GAE scan's torch kernels, for every tensor that is not on CUDA.

All take ``[R, T, F]`` views (strides free, stride 0 welcome): ``R`` rows of ``T`` steps and
``F`` features. γ is ``gamma * gamma_tensor`` when ``gamma_tensor`` is given, else ``gamma``
(λ likewise); see :mod:`fastmarl.ops.gae.naive` for the recurrence.

- :func:`gae_forward` / :func:`gae_backward`: the kernels of ``fastmarl::gae`` and
  ``fastmarl::gae_backward``. TorchRL's arithmetic in TorchRL's order (so its bits in float32
  and float64), restructured for speed: time chunks that stay in cache, in-place updates, one
  Python step per time step. Half inputs are computed in float32 and rounded once at the end.
- :func:`gae_composite`: the same recurrence out of place, differentiable by autograd with
  respect to γ and λ too (the path for a γ or λ tensor that requires grad).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
from torch import Tensor

from fastmarl.ops.dtypes import accumulate_dtype, cast, result_dtype

__all__ = ["gae_forward", "gae_backward", "gae_composite", "CPU_CHUNK_ELEMENTS"]

# Time steps per chunk: chunk temporaries of at most 2**18 elements (1 MiB in fp32) stay in
# cache. Measured on this project's 2-core CPU machine at B=4096, T=512, A=8: 148 ms with
# 2**18, 193 ms with 2**16, 298 ms unchunked; the small sizes were flat.
CPU_CHUNK_ELEMENTS = 1 << 18


@contextmanager
def _one_thread():
    # The scan is T dependent steps on [R, F] slices, each too small for intra-op threads; only
    # the chunk-wide elementwise ops are parallel, ~100 OpenMP regions a call at 1024x500x8. Each
    # region waits for every thread: with a busy neighbour on the cores a region costs a time
    # slice, and the call took 1774 ms against TorchRL's 257 (interleaved, 2 threads, load ~6 on
    # the 2-core machine). On one thread it took 28.6 ms against TorchRL's 122 there. Setting
    # and restoring the count costs 0.2 us.
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _single_threaded(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _one_thread():
            return fn(*args, **kwargs)

    return wrapper


def _effective(scalar: float, tensor: Tensor | None):
    # γ as ``scalar * tensor`` (tensor optional); multiplying by 1.0 is exact but costs a pass.
    if tensor is None:
        return scalar
    if not any(tensor.stride()):
        # One value expanded to [R, T, F] (a TorchRL module's γ buffer): as a 0-dim tensor it
        # takes TensorIterator's scalar path, the same bits for less time.
        tensor = tensor.as_strided((), ())
    return tensor if scalar == 1.0 else scalar * tensor


def _as_torchrl_rounds(discount):
    # TorchRL multiplies a float γ (and λγ) into an int flag tensor: a tensor of the default
    # dtype, so a float64 GAE runs with γ rounded to float32. Same value here, as a Python float
    # (exact in float64, and what float32 rounds it to anyway).
    if isinstance(discount, Tensor):
        return discount
    return torch.tensor(discount, dtype=torch.get_default_dtype()).item()


def _not_flag(flag: Tensor, out: Tensor) -> Tensor:
    # 1 - flag as 0./1. floats in ``out``. A bool flag goes through its bytes: 0.022 ms for a
    # [1024, 32, 8] chunk on one thread of the CPU machine, against 0.10-0.13 ms for
    # logical_not and a multiply into floats (bool kernels are not vectorised). Multiplying by
    # 0./1. is exact, so (1 - flag) * x * γ has the bits of TorchRL's (γ * not_flag) * x.
    if flag.dtype == torch.bool:
        return torch.sub(1, flag.view(torch.uint8), out=out)
    return torch.eq(flag, 0, out=out)  # uint8: any non-zero byte is a set flag


def _discount_dtype(acc: torch.dtype, lg) -> torch.dtype:
    # The discount buffer holds λγ(1 - done): a λ or γ tensor wider than the accumulation dtype
    # keeps its precision there, as the out-of-place product did before.
    return torch.promote_types(acc, lg.dtype) if isinstance(lg, Tensor) else acc


def _chunk_steps(num_rows_features: int, num_steps: int, chunk_elements: int) -> int:
    return max(1, min(num_steps, chunk_elements // max(1, num_rows_features)))


def _time_chunks(num_rows_features: int, num_steps: int, reverse: bool, chunk_elements: int):
    chunk = _chunk_steps(num_rows_features, num_steps, chunk_elements)
    starts = range(0, num_steps, chunk)
    for t0 in (reversed(starts) if reverse else starts):
        yield t0, min(t0 + chunk, num_steps)


def _window(x, window: slice):
    # The time window of an [R, T, F] operand; scalars and 0-dim tensors broadcast as they are.
    return x[:, window] if isinstance(x, Tensor) and x.ndim else x


@_single_threaded
def gae_forward(
    value: Tensor, next_value: Tensor, reward: Tensor, done: Tensor, terminated: Tensor,
    gamma: float, lmbda: float, gamma_tensor: Tensor | None, lmbda_tensor: Tensor | None,
    *, chunk_elements: int = CPU_CHUNK_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """``(advantage, value_target)`` ``[R, T, F]``, contiguous, in the promoted input dtype."""
    R, T, F = value.shape
    out_dtype = result_dtype(value, next_value, reward)
    acc = accumulate_dtype(out_dtype)
    device = value.device
    value, next_value, reward = value.to(acc), next_value.to(acc), reward.to(acc)
    g = _effective(gamma, gamma_tensor)
    lg = _as_torchrl_rounds(_effective(lmbda, lmbda_tensor) * g)
    g = _as_torchrl_rounds(g)

    advantage = torch.empty(R, T, F, dtype=acc, device=device)
    value_target = torch.empty(R, T, F, dtype=acc, device=device)
    flags = torch.empty(R, _chunk_steps(R * F, T, chunk_elements), F, dtype=_discount_dtype(acc, lg),
                        device=device)
    step_buffer = torch.empty(R, F, dtype=acc, device=device)
    later = None  # A_{t+1}, an [R, F] view into ``advantage``
    for t0, t1 in _time_chunks(R * F, T, True, chunk_elements):
        w = slice(t0, t1)
        adv = advantage[:, w]
        chunk_flags = flags[:, :t1 - t0]
        # delta in TorchRL's order, (reward + (g * not_terminated) * next_value) - value, with
        # the exact 0./1. factor first: ((not_terminated * next_value) * g + reward) - value.
        torch.mul(_not_flag(terminated[:, w], chunk_flags), next_value[:, w], out=adv)
        adv.mul_(_window(g, w)).add_(reward[:, w]).sub_(value[:, w])
        discount = _not_flag(done[:, w], chunk_flags).mul_(_window(lg, w)).unbind(1)
        steps = adv.unbind(1)
        for i in range(t1 - t0 - 1, -1, -1):
            if later is not None:
                # delta_t + (A_{t+1} * discount_t): a multiply then an add, as TorchRL
                # (addcmul fuses them into an FMA and rounds differently).
                torch.mul(later, discount[i], out=step_buffer)
                steps[i].add_(step_buffer)
            later = steps[i]
        torch.add(adv, value[:, w], out=value_target[:, w])
    return advantage.to(out_dtype), value_target.to(out_dtype)


@_single_threaded
def gae_backward(
    grad_advantage: Tensor | None, grad_value_target: Tensor | None, done: Tensor,
    terminated: Tensor, gamma: float, lmbda: float, gamma_tensor: Tensor | None,
    lmbda_tensor: Tensor | None, value_dtype: torch.dtype, next_value_dtype: torch.dtype,
    reward_dtype: torch.dtype, *, chunk_elements: int = CPU_CHUNK_ELEMENTS,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients for value, next value and reward ``[R, T, F]``: the adjoint of the reverse
    recurrence, which runs forward in time::

        u_t = (dA_t + dG_t) + (λ_{t-1} γ_{t-1} (1 - done_{t-1})) u_{t-1}
        d reward_t = u_t,  d next_value_t = γ_t (1 - terminated_t) u_t,  d value_t = dG_t - u_t
    """
    grads = [g for g in (grad_advantage, grad_value_target) if g is not None]
    R, T, F = done.shape
    acc = accumulate_dtype(*(x.dtype for x in grads))
    g = _effective(gamma, gamma_tensor)
    lg = _as_torchrl_rounds(_effective(lmbda, lmbda_tensor) * g)
    g = _as_torchrl_rounds(g)

    u = torch.empty(R, T, F, dtype=acc, device=done.device)
    u.copy_(grads[0])
    for grad in grads[1:]:
        u.add_(grad)
    flags = torch.empty(R, _chunk_steps(R * F, T, chunk_elements), F, dtype=_discount_dtype(acc, lg),
                        device=done.device)
    step_buffer = torch.empty(R, F, dtype=acc, device=done.device)
    earlier = None  # u_{t-1}
    for t0, t1 in _time_chunks(R * F, T, False, chunk_elements):
        # discount of steps t0-1 .. t1-2, the ones that carry u into steps t0 .. t1-1
        first = max(t0 - 1, 0)
        not_done = _not_flag(done[:, first:t1 - 1], flags[:, :t1 - 1 - first])
        discount = not_done.mul_(_window(lg, slice(first, t1 - 1))).unbind(1)
        steps = u[:, t0:t1].unbind(1)
        for i in range(t1 - t0):
            if earlier is not None:
                torch.mul(earlier, discount[i + t0 - 1 - first], out=step_buffer)
                steps[i].add_(step_buffer)
            earlier = steps[i]

    # (1 - terminated) * u is exact; then one rounding of γ u, as (γ (1 - terminated)) u.
    grad_next_value = _not_flag(terminated, torch.empty_like(u)).mul_(u).mul_(g)
    grad_value = -u if grad_value_target is None else grad_value_target.to(acc) - u
    return grad_value.to(value_dtype), grad_next_value.to(next_value_dtype), u.to(reward_dtype)


def gae_composite(
    value: Tensor, next_value: Tensor, reward: Tensor, done: Tensor, terminated: Tensor,
    gamma: Tensor | float, lmbda: Tensor | float,
) -> tuple[Tensor, Tensor]:
    """``(advantage, value_target)`` ``[R, T, F]`` by autograd-friendly out-of-place steps; γ and
    λ are floats or ``[R, T, F]`` tensors and receive gradients. TorchRL's order of operations,
    in the accumulation dtype like the op: half-precision inputs are computed in float32 and
    rounded once, float32/float64 inputs exactly as TorchRL computes them. (The value target was
    the half-rounded advantage plus the value in the half dtype: up to 474 bf16 half-ulps off
    the float64 result where they nearly cancel, 32% of the elements beyond one, at 8x200x3.)"""
    out_dtype = result_dtype(value, next_value, reward)
    acc = accumulate_dtype(out_dtype)
    value, next_value, reward = cast(value, acc), cast(next_value, acc), cast(reward, acc)
    delta = reward + (gamma * terminated.logical_not().int()) * next_value - value
    discount = lmbda * gamma * done.logical_not().int()
    steps = []
    later = 0
    for t in range(delta.shape[1] - 1, -1, -1):
        later = delta[:, t] + later * discount[:, t]
        steps.append(later)
    advantage = cast(torch.stack(steps[::-1], 1), acc)
    return cast(advantage, out_dtype), cast(advantage + value, out_dtype)
