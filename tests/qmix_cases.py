"""Inputs and helpers shared by the QMIX tests (op, module, loss, Triton interpreter)."""

from __future__ import annotations

import torch
from helpers import assert_close
from torchrl.modules.models.multiagent import QMixer as TorchRLQMixer

from fastmarl.ops.qmix import QMixParams

S = 37  # odd state width: masks in every K tile of the kernels


def make_params(n_agents, embed, state_dim, hidden=0, dtype=torch.float32, device="cpu", seed=0) -> QMixParams:
    """The mixer's tensors, nn.Linear-like scales so that ``abs``, ReLU and both ELU branches all
    see both signs. ``hidden`` > 0 gives two-layer hypernetworks."""
    g = torch.Generator().manual_seed(seed)

    def linear(out_features, in_features):
        bound = in_features ** -0.5
        weight = (torch.rand(out_features, in_features, generator=g) * 2 - 1) * bound
        bias = (torch.rand(out_features, generator=g) * 2 - 1) * bound
        return [weight.to(dtype=dtype, device=device), bias.to(dtype=dtype, device=device)]

    first = hidden or n_agents * embed
    params = (linear(first, state_dim) + linear(hidden or embed, state_dim) + linear(embed, state_dim)
              + linear(embed, state_dim) + linear(1, embed))
    if hidden:
        params += linear(n_agents * embed, hidden) + linear(embed, hidden)
    return QMixParams(*params)


def make_inputs(batch, n_agents, state_dim, dtype=torch.float32, device="cpu", seed=1):
    """``(q [B, n], state [B, S])``."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n_agents, generator=g).to(dtype=dtype, device=device)
    state = torch.randn(batch, state_dim, generator=g).to(dtype=dtype, device=device)
    return q, state


def run_mixer(mixer, q, state, cotangent):
    """Q_tot and the gradients of q, state and every parameter, for ``sum(Q_tot * cotangent)``."""
    q = q.detach().clone().requires_grad_()
    state = state.detach().clone().requires_grad_()
    mixer.zero_grad(set_to_none=True)
    out = mixer(q, state)
    out.backward(cotangent)
    grads = {"q": q.grad, "state": state.grad}
    # (a compiled module names its parameters "_orig_mod.<name>")
    grads.update({name.removeprefix("_orig_mod."): p.grad for name, p in mixer.named_parameters()})
    return out, grads


def torchrl_twin(mixer):
    """TorchRL's QMixer with ``mixer``'s (one-layer) parameters."""
    twin = TorchRLQMixer(mixer.state_shape, mixer.embed_dim, mixer.n_agents, "cpu")
    twin.load_state_dict(mixer.state_dict())
    return twin.to(next(mixer.parameters()).dtype)


def scaled_close(actual, expected, rel, name):
    """Gradients of the weights sum over the batch: the tolerance scales with their magnitude."""
    scale = float(expected.detach().abs().max()) + 1.0
    assert_close(actual, expected, atol=rel * scale, rtol=rel, name=name)
