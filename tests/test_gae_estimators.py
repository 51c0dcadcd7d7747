"""fastmarl's GAE / MultiAgentGAE against TorchRL's on identical TensorDicts."""

import inspect

import pytest
import torch
from helpers import assert_close
from gae_cases import DONE_PATTERNS, make_flags
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.modules import MultiAgentMLP
from torchrl.objectives import ClipPPOLoss, ValueEstimators
from torchrl.objectives.value import GAE as TorchRLGAE
from torchrl.objectives.value import MultiAgentGAE as TorchRLMultiAgentGAE

import fastmarl.objectives.value as fm_value
from fastmarl.objectives.value import GAE, MultiAgentGAE

B, T, A, OBS = 6, 12, 3, 5


def make_critic(centralised=True):
    net = MultiAgentMLP(
        n_agent_inputs=OBS, n_agent_outputs=1, n_agents=A, centralised=centralised,
        share_params=True, depth=2, num_cells=16, activation_class=torch.nn.Tanh,
    )
    return TensorDictModule(net, in_keys=[("agents", "observation")], out_keys=[("agents", "state_value")])


def make_data(pattern="random", team=True, with_values=False, batch=(B, T)):
    flag_shape = (*batch, 1)
    done, terminated = make_flags(flag_shape, pattern)
    data = {
        ("agents", "observation"): torch.randn(*batch, A, OBS),
        ("next", "agents", "observation"): torch.randn(*batch, A, OBS),
        ("next", "done"): done,
        ("next", "terminated"): terminated,
        ("next", "truncated"): done & ~terminated,
    }
    if team:
        data[("next", "reward")] = torch.randn(*flag_shape)
    else:
        data[("next", "agents", "reward")] = torch.randn(*batch, A, 1)
        data[("next", "agents", "done")] = done.unsqueeze(-1).expand(*batch, A, 1)
        data[("next", "agents", "terminated")] = terminated.unsqueeze(-1).expand(*batch, A, 1)
    if with_values:
        data[("agents", "state_value")] = torch.randn(*batch, A, 1)
        data[("next", "agents", "state_value")] = torch.randn(*batch, A, 1)
    td = TensorDict(batch_size=batch)
    for key, value in data.items():
        td.set(key, value)
    return td


def run_both(fm_cls, trl_cls, td, set_keys=None, call_kwargs=None, **kwargs):
    """Build both estimators alike, run each on its own copy of ``td``, return both outputs."""
    outs = []
    for cls in (fm_cls, trl_cls):
        est = cls(**kwargs)
        if set_keys:
            est.set_keys(**set_keys)
        outs.append(est(td.clone(), **(call_kwargs or {})))
    return outs


def assert_same_outputs(ours, theirs, keys=("advantage", "value_target")):
    for key in keys:
        assert_close(ours.get(key), theirs.get(key), atol=1e-6, rtol=0, name=str(key))


# --------------------------------------------------------------------------- MultiAgentGAE


@pytest.mark.parametrize("pattern", DONE_PATTERNS)
@pytest.mark.parametrize("centralised", [True, False], ids=["mappo-critic", "ippo-critic"])
def test_multi_agent_gae_team_reward(pattern, centralised):
    critic = make_critic(centralised)
    ours, theirs = run_both(
        MultiAgentGAE, TorchRLMultiAgentGAE, make_data(pattern),
        set_keys=dict(value=("agents", "state_value")),
        gamma=0.99, lmbda=0.9, value_network=critic,
    )
    assert ours.get("advantage").shape == (B, T, A, 1)
    assert_same_outputs(ours, theirs)


@pytest.mark.parametrize("pattern", DONE_PATTERNS)
def test_multi_agent_gae_per_agent_reward(pattern):
    keys = dict(
        value=("agents", "state_value"), reward=("agents", "reward"),
        done=("agents", "done"), terminated=("agents", "terminated"),
        advantage=("agents", "advantage"), value_target=("agents", "value_target"),
    )
    ours, theirs = run_both(
        MultiAgentGAE, TorchRLMultiAgentGAE, make_data(pattern, team=False), set_keys=keys,
        gamma=0.95, lmbda=0.9, value_network=make_critic(),
    )
    assert_same_outputs(ours, theirs, keys=(("agents", "advantage"), ("agents", "value_target")))


@pytest.mark.parametrize("average_gae", [False, True])
@pytest.mark.parametrize("shifted", [False, True])
def test_multi_agent_gae_options(average_gae, shifted):
    ours, theirs = run_both(
        MultiAgentGAE, TorchRLMultiAgentGAE, make_data("truncated"),
        set_keys=dict(value=("agents", "state_value")),
        gamma=0.99, lmbda=0.95, value_network=make_critic(), average_gae=average_gae,
        shifted=shifted,
    )
    assert_same_outputs(ours, theirs)


def test_multi_agent_gae_agent_dim_and_time_dim():
    # Time-first data [T, B] with the time dim named, so both estimators must find it.
    td = make_data("truncated", with_values=True, batch=(T, B))
    td.names = ["time", None]
    ours, theirs = run_both(
        MultiAgentGAE, TorchRLMultiAgentGAE, td,
        set_keys=dict(value=("agents", "state_value")),
        gamma=0.99, lmbda=0.9, value_network=None, agent_dim=-2,
    )
    assert_same_outputs(ours, theirs)


def test_multi_agent_gae_precomputed_values_and_skip_existing():
    td = make_data("random", with_values=True)
    critic = make_critic()
    ours, theirs = run_both(
        MultiAgentGAE, TorchRLMultiAgentGAE, td,
        set_keys=dict(value=("agents", "state_value")),
        gamma=0.99, lmbda=0.9, value_network=critic, skip_existing=True,
    )
    assert_same_outputs(ours, theirs)
    # skip_existing: the stored values were used, not the critic's.
    expected = fm_value.functional.generalized_advantage_estimate(
        0.99, 0.9, td.get(("agents", "state_value")), td.get(("next", "agents", "state_value")),
        td.get(("next", "reward")).unsqueeze(-1), td.get(("next", "done")).unsqueeze(-1),
        td.get(("next", "terminated")).unsqueeze(-1), time_dim=1,
    )[0]
    assert_close(ours.get("advantage"), expected, atol=1e-6, rtol=0)


def test_multi_agent_gae_auto_reset_env():
    td = make_data("truncated")
    ours, theirs = run_both(
        MultiAgentGAE, TorchRLMultiAgentGAE, td,
        set_keys=dict(value=("agents", "state_value")),
        gamma=0.99, lmbda=0.9, value_network=make_critic(), auto_reset_env=True,
    )
    assert td.get(("next", "truncated")).any()
    assert_same_outputs(ours, theirs)


def test_gae_steps_to_next_obs_matches_torchrl():
    td = make_data("truncated", team=False, with_values=True)
    td.set("steps_to_next_obs", torch.randint(1, 4, (B, T, A, 1)))
    keys = dict(value=("agents", "state_value"), reward=("agents", "reward"),
                done=("agents", "done"), terminated=("agents", "terminated"))
    ours, theirs = run_both(GAE, TorchRLGAE, td, set_keys=keys, gamma=0.99, lmbda=0.9, value_network=None)
    assert_same_outputs(ours, theirs)


def test_multi_agent_gae_team_steps_to_next_obs_broadcasts_over_agents():
    # TorchRL 0.14.1's MultiAgentGAE raises here: γ**steps is shaped like the team reward
    # [B, T, 1] and is broadcast against [B, T, A, 1] from the right. fastmarl broadcasts it
    # across the agents like the reward itself.
    td = make_data("truncated", with_values=True)
    steps = torch.randint(1, 4, (B, T, 1))
    td.set("steps_to_next_obs", steps)
    est = MultiAgentGAE(gamma=0.99, lmbda=0.9, value_network=None)
    est.set_keys(value=("agents", "state_value"))
    out = est(td.clone())
    expected = fm_value.functional.generalized_advantage_estimate(
        (torch.tensor(0.99) ** steps).unsqueeze(-1), 0.9, td.get(("agents", "state_value")),
        td.get(("next", "agents", "state_value")), td.get(("next", "reward")).unsqueeze(-1),
        td.get(("next", "done")).unsqueeze(-1), td.get(("next", "terminated")).unsqueeze(-1),
        time_dim=1,
    )
    assert_close(out.get("advantage"), expected[0], atol=0, rtol=0)


def test_multi_agent_gae_value_estimate():
    td = make_data("truncated")
    critic = make_critic()
    targets = []
    for cls in (MultiAgentGAE, TorchRLMultiAgentGAE):
        est = cls(gamma=0.99, lmbda=0.9, value_network=critic)
        est.set_keys(value=("agents", "state_value"))
        targets.append(est.value_estimate(td.clone()))
    # TorchRL's value_estimate is its vectorised (truncated conv1d) path, accurate to ~1e-4.
    assert_close(targets[0], targets[1], atol=1e-4, rtol=1e-4)
    ours_forward = MultiAgentGAE(gamma=0.99, lmbda=0.9, value_network=critic)
    ours_forward.set_keys(value=("agents", "state_value"))
    assert_close(targets[0], ours_forward(td.clone()).get("value_target"), atol=0, rtol=0)


def test_multi_agent_gae_differentiable_gradients_match():
    td = make_data("truncated", with_values=True)
    grads = []
    for cls in (MultiAgentGAE, TorchRLMultiAgentGAE):
        data = td.clone()
        value = data.get(("agents", "state_value")).requires_grad_()
        data.set(("agents", "state_value"), value)
        est = cls(gamma=0.99, lmbda=0.9, value_network=None, differentiable=True)
        est.set_keys(value=("agents", "state_value"))
        out = est(data)
        (out.get("advantage") * torch.linspace(-1, 1, A).view(A, 1)).sum().backward()
        grads.append(value.grad)
    assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-6)


def test_multi_agent_gae_wrong_agent_count_is_a_clear_error():
    td = make_data("random", team=False, with_values=True)
    td.set(("next", "agents", "reward2"), torch.randn(B, T, A, 1)[..., :2, :], )
    est = MultiAgentGAE(gamma=0.99, lmbda=0.9, value_network=None)
    est.set_keys(value=("agents", "state_value"), reward=("agents", "reward2"),
                 done=("agents", "done"), terminated=("agents", "terminated"))
    with pytest.raises(ValueError, match=r"reward has shape \(6, 12, 2, 1\), expected .*\(6, 12, 3, 1\)"):
        est(td)


# --------------------------------------------------------------------------- GAE and the loss API


def test_gae_through_make_value_estimator_and_standalone_call_like_the_tutorial():
    """The seed tutorial's flow: ClipPPOLoss + make_value_estimator, then GAE(td, params=...)."""
    actor = TensorDictModule(torch.nn.Identity(), in_keys=["x"], out_keys=["y"])
    td = make_data("truncated", team=False)
    outs = []
    for cls in (GAE, TorchRLGAE):
        loss = ClipPPOLoss(actor_network=actor, critic_network=make_critic(), normalize_advantage=False)
        torch.manual_seed(1)
        for p in loss.critic_network_params.values(True, True):
            p.data.normal_()
        loss.set_keys(
            reward=("agents", "reward"), action=("agents", "action"),
            sample_log_prob=("agents", "sample_log_prob"), value=("agents", "state_value"),
            done=("agents", "done"), terminated=("agents", "terminated"),
        )
        loss.make_value_estimator(cls, gamma=0.99, lmbda=0.9, value_network=loss.critic_network)
        estimator = loss.value_estimator
        assert type(estimator) is cls
        # An estimator class passed to make_value_estimator does not inherit the loss's keys
        # (TorchRL's contract): set them on the estimator.
        estimator.set_keys(
            reward=("agents", "reward"), value=("agents", "state_value"),
            done=("agents", "done"), terminated=("agents", "terminated"),
        )
        with torch.no_grad():
            outs.append(estimator(td.clone(), params=loss.critic_network_params,
                                  target_params=loss.target_critic_network_params))
    assert_same_outputs(*outs)


def test_torchrl_registry_is_untouched():
    # A TorchRL loss built after fastmarl's estimators exist still gets TorchRL's GAE.
    MultiAgentGAE(gamma=0.9, lmbda=0.9, value_network=None)
    actor = TensorDictModule(torch.nn.Identity(), in_keys=["x"], out_keys=["y"])
    loss = ClipPPOLoss(actor_network=actor, critic_network=make_critic())
    loss.set_keys(value=("agents", "state_value"))
    loss.make_value_estimator(ValueEstimators.GAE, gamma=0.9, lmbda=0.9)
    assert type(loss.value_estimator) is TorchRLGAE


def test_gae_tensor_call_without_tensordict():
    value_net = TensorDictModule(torch.nn.Linear(3, 1), in_keys=["obs"], out_keys=["state_value"])
    obs, next_obs = torch.randn(2, 1, 10, 3)
    reward = torch.randn(1, 10, 1)
    done = torch.zeros(1, 10, 1, dtype=torch.bool)
    done[0, 4] = True
    outs = [
        cls(gamma=0.98, lmbda=0.94, value_network=value_net)(
            obs=obs, next_reward=reward, next_done=done, next_obs=next_obs, next_terminated=done
        )
        for cls in (GAE, TorchRLGAE)
    ]
    for a, e in zip(*outs):
        assert_close(a, e, atol=1e-6, rtol=0)


def test_same_public_surface_as_torchrl():
    for ours, theirs in [(GAE, TorchRLGAE), (MultiAgentGAE, TorchRLMultiAgentGAE)]:
        assert issubclass(ours, theirs)
        assert inspect.signature(ours) == inspect.signature(theirs)
        a = ours(gamma=0.9, lmbda=0.9, value_network=make_critic())
        b = theirs(gamma=0.9, lmbda=0.9, value_network=make_critic())
        for est in (a, b):
            est.set_keys(value=("agents", "state_value"))
        assert a.in_keys == b.in_keys and a.out_keys == b.out_keys
    for name in ("TD0Estimator", "TD1Estimator", "TDLambdaEstimator", "VTrace", "ValueEstimatorBase"):
        assert getattr(fm_value, name) is getattr(__import__("torchrl.objectives.value", fromlist=[name]), name)


def test_missing_reward_key_is_a_clear_error():
    est = MultiAgentGAE(gamma=0.9, lmbda=0.9, value_network=None)
    with pytest.raises(KeyError, match=r"no reward at \('next', 'nope'\).*set_keys\(reward=...\)"):
        est.set_keys(reward="nope")
        est(make_data(with_values=True))


def test_discount_out_of_range_rejected_at_construction():
    with pytest.raises(ValueError, match=r"gamma must lie in \[0, 1\]"):
        MultiAgentGAE(gamma=1.2, lmbda=0.9, value_network=None)
    with pytest.raises(ValueError, match=r"lmbda must lie in \[0, 1\]"):
        GAE(gamma=0.9, lmbda=torch.tensor(-0.5), value_network=None)
