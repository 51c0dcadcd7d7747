"""Networks and data for the PPO tests: the seed tutorial's layout at a small width."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.modules import MultiAgentMLP, ProbabilisticActor, TanhNormal

OBS, ACT = 5, 2

KEYS = dict(
    value=("agents", "state_value"), action=("agents", "action"),
    sample_log_prob=("agents", "sample_log_prob"), reward=("agents", "reward"),
    done=("agents", "done"), terminated=("agents", "terminated"),
)


def make_actor(n_agents=3, cells=16, seed=0, mlp=MultiAgentMLP):
    """The tutorial's actor: MultiAgentMLP (shared, decentralised) -> TanhNormal; ``mlp`` is
    TorchRL's MultiAgentMLP or fastmarl's."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        mlp(n_agent_inputs=OBS, n_agent_outputs=2 * ACT, n_agents=n_agents, centralised=False,
                      share_params=True, depth=2, num_cells=cells, activation_class=torch.nn.Tanh),
        NormalParamExtractor(),
    )
    module = TensorDictModule(net, in_keys=[("agents", "observation")], out_keys=[("agents", "loc"), ("agents", "scale")])
    return ProbabilisticActor(
        module=module, in_keys=[("agents", "loc"), ("agents", "scale")], out_keys=[("agents", "action")],
        distribution_class=TanhNormal, distribution_kwargs={"low": -torch.ones(ACT), "high": torch.ones(ACT)},
        return_log_prob=True, log_prob_key=("agents", "sample_log_prob"),
    )


def make_critic(n_agents=3, cells=16, centralised=True, seed=1, mlp=MultiAgentMLP):
    torch.manual_seed(seed)
    net = mlp(n_agent_inputs=OBS, n_agent_outputs=1, n_agents=n_agents, centralised=centralised,
                        share_params=True, depth=2, num_cells=cells, activation_class=torch.nn.Tanh)
    return TensorDictModule(net, in_keys=[("agents", "observation")], out_keys=[("agents", "state_value")])


def make_batch(N, n_agents=3, *, log_ratio_scale=0.3, advantage=None, seed=2):
    """A minibatch ``[N]`` with agents ``[N, A]``: actions from the actor's support, log-probs
    near the current policy's so that some ratios clip and some do not."""
    g = torch.Generator().manual_seed(seed)
    td = TensorDict(batch_size=[N])
    td.set(("agents", "observation"), torch.randn(N, n_agents, OBS, generator=g))
    td.set(("agents", "action"), torch.rand(N, n_agents, ACT, generator=g) * 1.6 - 0.8)
    td.set(("agents", "state_value"), torch.randn(N, n_agents, 1, generator=g))
    td.set("advantage", torch.randn(N, n_agents, 1, generator=g) if advantage is None else advantage)
    td.set("value_target", torch.randn(N, n_agents, 1, generator=g))
    td.set(("next", "agents", "reward"), torch.randn(N, n_agents, 1, generator=g))
    td.set(("next", "agents", "done"), torch.zeros(N, n_agents, 1, dtype=torch.bool))
    td.set(("next", "agents", "terminated"), torch.zeros(N, n_agents, 1, dtype=torch.bool))
    actor = make_actor(n_agents)
    with torch.no_grad():
        log_prob = actor.get_dist(td.clone()).log_prob(td.get(("agents", "action")))
    td.set(("agents", "sample_log_prob"), log_prob + log_ratio_scale * torch.randn(N, n_agents, generator=g))
    return td
