"""The QMIX mixer as TorchRL 0.14.1's ``QMixer`` (PyMARL's) defines it, with EPyMARL's two-layer
hypernetworks as an option: the readable statement, the tests' float64 oracle and the
benchmarks' baseline. Nothing at run time imports this module.

For agent Q-values ``q`` ``[B, n]`` and state ``s`` ``[B, S]``::

    W1    = |hyper_w_1(s)|  viewed [B, n, E]        W_f = |hyper_w_final(s)|  [B, E]
    b1    = hyper_b_1(s)    [B, E]                  V   = V.2(relu(V.0(s)))   [B, 1]
    h     = ELU(sum_i q_i W1_i + b1)                Q_tot = sum_e h_e W_f,e + V

A two-layer hypernetwork is ``Linear(S, H) -> ReLU -> Linear(H, .)`` in place of the Linear.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import elu, linear, relu

from fastmarl.ops.qmix.params import QMixParams

__all__ = ["qmix"]


def _hypernet(state: Tensor, weight, bias, out_weight, out_bias) -> Tensor:
    hidden = linear(state, weight, bias)
    return hidden if out_weight is None else linear(relu(hidden), out_weight, out_bias)


def qmix(chosen_action_value: Tensor, state: Tensor, params: QMixParams) -> Tensor:
    """``Q_tot`` ``[*B, 1]`` of ``chosen_action_value`` ``[*B, n, 1]`` and ``state``
    ``[*B, *state_shape]`` (flattened to its ``S`` features, as TorchRL does)."""
    p = params
    batch_shape, n = chosen_action_value.shape[:-2], chosen_action_value.shape[-2]
    q = chosen_action_value.reshape(-1, n)
    s = state.reshape(q.shape[0], -1)
    w1 = _hypernet(s, p.hyper_w1_weight, p.hyper_w1_bias, p.hyper_w1_out_weight, p.hyper_w1_out_bias)
    w_final = _hypernet(s, p.hyper_wf_weight, p.hyper_wf_bias, p.hyper_wf_out_weight, p.hyper_wf_out_bias)
    w1 = w1.abs().view(q.shape[0], n, p.embed)
    b1 = linear(s, p.hyper_b1_weight, p.hyper_b1_bias)
    hidden = elu(torch.einsum("bn,bne->be", q, w1) + b1)
    v = linear(relu(linear(s, p.v1_weight, p.v1_bias)), p.v2_weight, p.v2_bias)
    q_tot = torch.einsum("be,be->b", hidden, w_final.abs()).unsqueeze(-1) + v
    return q_tot.view(*batch_shape, 1)
