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


def _time_chunks(num_rows_features: int, num_steps: int, reverse: bool, chunk_elements: int):
    chunk = max(1, min(num_steps, chunk_elements // max(1, num_rows_features)))
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
    lg = _effective(lmbda, lmbda_tensor) * g

    advantage = torch.empty(R, T, F, dtype=acc, device=device)
    value_target = torch.empty(R, T, F, dtype=acc, device=device)
    step_buffer = torch.empty(R, F, dtype=acc, device=device)
    later = None  # A_{t+1}, an [R, F] view into ``advantage``
    for t0, t1 in _time_chunks(R * F, T, True, chunk_elements):
        w = slice(t0, t1)
        adv = advantage[:, w]
        # delta in TorchRL's order: (reward + (g * not_terminated) * next_value) - value. A bool
        # mask multiplies like TorchRL's int one (g * 1 is g, g * 0 is 0) and costs one pass
        # less: 1.21 against 1.58 ms at B=600, T=100, A=3 on this project's CPU machine.
        torch.mul(_window(g, w) * terminated[:, w].logical_not(), next_value[:, w], out=adv)
        adv.add_(reward[:, w]).sub_(value[:, w])
        discount = (_window(lg, w) * done[:, w].logical_not()).unbind(1)
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
    lg = _effective(lmbda, lmbda_tensor) * g

    u = torch.zeros(R, T, F, dtype=acc, device=done.device)
    for grad in grads:
        u.add_(grad)
    step_buffer = torch.empty(R, F, dtype=acc, device=done.device)
    earlier = None  # u_{t-1}
    for t0, t1 in _time_chunks(R * F, T, False, chunk_elements):
        # discount of steps t0-1 .. t1-2, the ones that carry u into steps t0 .. t1-1
        first = max(t0 - 1, 0)
        lg_chunk = _window(lg, slice(first, t1 - 1))
        discount = (lg_chunk * done[:, first:t1 - 1].logical_not()).unbind(1)
        steps = u[:, t0:t1].unbind(1)
        for i in range(t1 - t0):
            if earlier is not None:
                torch.mul(earlier, discount[i + t0 - 1 - first], out=step_buffer)
                steps[i].add_(step_buffer)
            earlier = steps[i]

    grad_next_value = (g * terminated.logical_not()) * u
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
