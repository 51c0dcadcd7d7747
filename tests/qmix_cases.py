"""Input factories for the QMIX tests, shared by the op/module, loss and Triton-interpreter tests."""

from __future__ import annotations

import torch


def make_params(n_agents, embed, state_dim, hidden=0, dtype=torch.float32, device="cpu", seed=0):
    """The mixer's tensors in the op's order (``reference.QMIX_PARAM_NAMES``), nn.Linear-like
    scales so that ``abs``, ReLU and both ELU branches all see both signs. ``hidden`` > 0 gives
    two-layer hypernetworks."""
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
    return params


def make_inputs(batch, n_agents, state_dim, dtype=torch.float32, device="cpu", seed=1):
    """``(q [B, n], state [B, S])``."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n_agents, generator=g).to(dtype=dtype, device=device)
    state = torch.randn(batch, state_dim, generator=g).to(dtype=dtype, device=device)
    return q, state
