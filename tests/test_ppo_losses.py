"""fastmarl's ClipPPOLoss / MAPPOLoss / IPPOLoss against TorchRL's on identical TensorDicts.

Both losses share the same actor and critic modules; the global RNG is reseeded before each
forward because TanhNormal's entropy is a Monte-Carlo estimate. Every output entry and every
parameter gradient is compared.
"""

import copy
import inspect
import warnings
from contextlib import nullcontext

import pytest
import torch
from helpers import assert_close
from ppo_cases import ACT, KEYS, OBS, make_actor, make_batch, make_critic
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictSequential
from torchrl.modules import PopArtValueNorm, RunningValueNorm
from torchrl.objectives import ClipPPOLoss as TorchRLClipPPOLoss
from torchrl.objectives import ValueEstimators
from torchrl.objectives.multiagent import IPPOLoss as TorchRLIPPOLoss
from torchrl.objectives.multiagent import MAPPOLoss as TorchRLMAPPOLoss
from torchrl.objectives.value import GAE as TorchRLGAE
from torchrl.objectives.value import TD0Estimator

import fastmarl.objectives as fm
import fastmarl.objectives.multiagent as fm_multiagent
from fastmarl.objectives.value import GAE, MultiAgentGAE
from fastmarl.ops import force_path

PAIRS = {
    "ClipPPOLoss": (fm.ClipPPOLoss, TorchRLClipPPOLoss),
    "MAPPOLoss": (fm.MAPPOLoss, TorchRLMAPPOLoss),
    "IPPOLoss": (fm.IPPOLoss, TorchRLIPPOLoss),
}


def build(cls, actor, critic, keys=KEYS, **kwargs):
    loss = cls(actor, critic, **kwargs)
    loss.set_keys(**keys)
    return loss


def run(loss, td, seed=7):
    torch.manual_seed(seed)
    out = loss(td)
    total = sum(v.sum() for k, v in out.items() if k.startswith("loss_"))
    params = [p for p in loss.parameters() if p.requires_grad]
    grads = torch.autograd.grad(total, params, allow_unused=True)
    return out, grads


def assert_same(ours, theirs, rtol=1e-5, atol=1e-6):
    (out_a, grads_a), (out_b, grads_b) = ours, theirs
    assert list(out_a.keys()) == list(out_b.keys())
    for key in out_b.keys():
        assert out_a[key].shape == out_b[key].shape, key
        assert_close(out_a[key], out_b[key], atol=atol, rtol=rtol, name=key)
    assert len(grads_a) == len(grads_b)
    for i, (a, b) in enumerate(zip(grads_a, grads_b)):
        assert (a is None) == (b is None), i
        if a is not None:
            assert_close(a, b, atol=atol, rtol=rtol, name=f"grad[{i}]")


CONFIGS = [
    pytest.param("ClipPPOLoss", dict(normalize_advantage=False, entropy_coeff=1e-4), id="tutorial-clip"),
    pytest.param("ClipPPOLoss", dict(normalize_advantage=True, normalize_advantage_exclude_dims=(-2,)), id="clip-per-agent-std"),
    pytest.param("ClipPPOLoss", dict(normalize_advantage=True), id="clip-global-std"),
    pytest.param("ClipPPOLoss", dict(clip_epsilon=(0.1, 0.3), loss_critic_type="l2"), id="asymmetric-l2"),
    pytest.param("ClipPPOLoss", dict(clip_value=0.3, loss_critic_type="l1"), id="clip-value-l1"),
    pytest.param("ClipPPOLoss", dict(clip_value=True), id="clip-value-true"),
    pytest.param("ClipPPOLoss", dict(reduction="sum", critic_coeff=0.5), id="sum-coeff"),
    pytest.param("ClipPPOLoss", dict(reduction="none", clip_value=0.2), id="none"),
    pytest.param("ClipPPOLoss", dict(entropy_bonus=False, log_explained_variance=False), id="no-entropy-no-ev"),
    pytest.param("ClipPPOLoss", dict(critic_coeff=0), id="no-critic"),
    pytest.param("ClipPPOLoss", dict(functional=False), id="non-functional"),
    pytest.param("ClipPPOLoss", dict(normalize_advantage=True, normalize_advantage_exclude_dims=(-1,)), id="exclude-last"),
    pytest.param("MAPPOLoss", dict(), id="mappo-default"),
    pytest.param("MAPPOLoss", dict(value_norm=PopArtValueNorm(shape=1), clip_value=0.2), id="mappo-popart-clip"),
    pytest.param("MAPPOLoss", dict(value_norm=RunningValueNorm(shape=1), loss_critic_type="l2"), id="mappo-running-norm"),
    pytest.param("MAPPOLoss", dict(entropy_coeff=0.0, separate_losses=True), id="mappo-separate"),
    pytest.param("IPPOLoss", dict(), id="ippo-default"),
    pytest.param("IPPOLoss", dict(reduction="none"), id="ippo-none"),
]


@pytest.mark.parametrize("name,kwargs", CONFIGS)
@pytest.mark.parametrize("N", [1, 37, 400])
@pytest.mark.parametrize("path", ["policy", "fused"])
def test_outputs_and_gradients_match_torchrl(name, kwargs, N, path):
    # "policy": as shipped (these sizes run the composite path on the CPU, TorchRL's bits);
    # "fused": the fused torch kernels forced at every size.
    with force_path("fused", "ppo_clip", "ppo_critic") if path == "fused" else nullcontext():
        _check_against_torchrl(name, kwargs, N)


def _check_against_torchrl(name, kwargs, N):
    ours_cls, theirs_cls = PAIRS[name]
    centralised = name != "IPPOLoss"
    actor, critic = make_actor(), make_critic(centralised=centralised)
    td = make_batch(N)
    results = []
    for cls in (ours_cls, theirs_cls):
        # A ValueNorm is stateful (its statistics update on every call): each loss gets its own.
        kw = {k: copy.deepcopy(v) if k == "value_norm" else v for k, v in kwargs.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results.append(run(build(cls, actor, critic, **kw), td))
    # Standardised advantages: fastmarl takes the mean shifted by the first sample (exact for a
    # constant advantage), TorchRL plainly; the two agree to rounding, which gradients summed
    # over the batch carry up to ~3e-6 where they cancel.
    standardised = kwargs.get("normalize_advantage", cls in (TorchRLMAPPOLoss, TorchRLIPPOLoss))
    assert_same(*results, atol=1e-5 if standardised else 1e-6)


def test_single_agent_and_odd_sizes():
    actor, critic = make_actor(n_agents=1), make_critic(n_agents=1)
    td = make_batch(53, n_agents=1)
    results = [run(build(cls, actor, critic, normalize_advantage=True), td)
               for cls in (fm.MAPPOLoss, TorchRLMAPPOLoss)]
    assert_same(*results)


def test_all_equal_advantages_and_extreme_log_ratios():
    actor, critic = make_actor(), make_critic()
    td = make_batch(64, advantage=torch.full((64, 3, 1), 0.5))
    results = [run(build(cls, actor, critic), td) for cls in (fm.MAPPOLoss, TorchRLMAPPOLoss)]
    assert_same(*results)
    td = make_batch(64, log_ratio_scale=30.0)
    results = [run(build(cls, actor, critic), td) for cls in (fm.MAPPOLoss, TorchRLMAPPOLoss)]
    # Ratios up to e^30 carry the standardisation's rounding (shifted mean against TorchRL's
    # plain one) into gradients of ~1e24: relative 1e-4.
    assert_same(*results, rtol=1e-4, atol=1e-4)
    for value in results[0][0].values():
        assert torch.isfinite(value).all()


def test_shared_trunk_with_separate_losses():
    # Actor and critic share a trunk; separate_losses keeps the critic loss off it, which
    # TorchRL does with detached leaves in critic_network_params (fastmarl must then swap).
    torch.manual_seed(0)
    trunk = TensorDictModule(torch.nn.Linear(OBS, 16), in_keys=[("agents", "observation")], out_keys=[("agents", "hidden")])
    head = TensorDictModule(torch.nn.Sequential(torch.nn.Linear(16, 4), torch.nn.Unflatten(-1, (2, 2))),
                            in_keys=[("agents", "hidden")], out_keys=[("agents", "params")])
    split = TensorDictModule(lambda p: (p[..., 0, :], torch.nn.functional.softplus(p[..., 1, :]) + 1e-3),
                             in_keys=[("agents", "params")], out_keys=[("agents", "loc"), ("agents", "scale")])
    from torchrl.modules import ProbabilisticActor, TanhNormal

    actor = ProbabilisticActor(TensorDictSequential(trunk, head, split), in_keys=[("agents", "loc"), ("agents", "scale")],
                               out_keys=[("agents", "action")], distribution_class=TanhNormal,
                               distribution_kwargs={"low": -1.0, "high": 1.0}, return_log_prob=True,
                               log_prob_key=("agents", "sample_log_prob"))
    critic = TensorDictSequential(trunk, TensorDictModule(torch.nn.Linear(16, 1), in_keys=[("agents", "hidden")],
                                                          out_keys=[("agents", "state_value")]))
    td = make_batch(40)
    results = [run(build(cls, actor, critic, separate_losses=True), td) for cls in (fm.ClipPPOLoss, TorchRLClipPPOLoss)]
    assert_same(*results)


@pytest.mark.parametrize("kwargs", [dict(delay_actor=True), dict(max_importance_ratio=2.0)], ids=["delay-actor", "ratio-cap"])
def test_configurations_outside_the_kernel_run_torchrl_math(kwargs):
    actor, critic = make_actor(), make_critic()
    td = make_batch(40)
    results = [run(build(cls, actor, critic, **kwargs), td) for cls in (fm.MAPPOLoss, TorchRLMAPPOLoss)]
    assert_same(*results, rtol=0, atol=0)


def test_validity_mask_in_the_data_runs_torchrl_math():
    actor, critic = make_actor(), make_critic()
    td = make_batch(40)
    td.set(("collector", "mask"), torch.rand(40) < 0.7)
    results = [run(build(cls, actor, critic, normalize_advantage=True), td) for cls in (fm.MAPPOLoss, TorchRLMAPPOLoss)]
    assert_same(*results, rtol=0, atol=0)


def _rollout(B, T, n_agents=3, seed=3):
    """A [B, T] rollout with per-agent reward and done, the value estimator's inputs."""
    g = torch.Generator().manual_seed(seed)
    flat = make_batch(B * T, n_agents, seed=seed)
    td = TensorDict(batch_size=[B, T])
    for key in (("agents", "observation"), ("agents", "action"), ("agents", "sample_log_prob")):
        td.set(key, flat.get(key).reshape(B, T, *flat.get(key).shape[1:]))
    done = torch.rand(B, T, 1, 1, generator=g) < 0.2
    td.set(("next", "agents", "observation"), torch.randn(B, T, n_agents, OBS, generator=g))
    td.set(("next", "agents", "reward"), torch.randn(B, T, n_agents, 1, generator=g))
    td.set(("next", "agents", "done"), done.expand(B, T, n_agents, 1))
    td.set(("next", "agents", "terminated"), done.expand(B, T, n_agents, 1))
    return td


def test_advantage_computed_inside_the_loss_uses_fastmarl_gae():
    actor, critic = make_actor(), make_critic()
    td = _rollout(2, 30)
    losses = [build(cls, actor, critic) for cls in (fm.MAPPOLoss, TorchRLMAPPOLoss)]
    assert type(losses[0].value_estimator) is MultiAgentGAE
    results = [run(loss, td) for loss in losses]
    assert_same(*results)


def test_seed_tutorial_configuration_by_import_swap():
    """The tutorial: ClipPPOLoss(normalize_advantage=False) + set_keys + GAE via ValueEstimators."""
    actor, critic = make_actor(), make_critic()
    rollout = _rollout(60, 5)
    results = []
    for cls, gae_cls in ((fm.ClipPPOLoss, GAE), (TorchRLClipPPOLoss, TorchRLGAE)):
        loss = cls(actor_network=actor, critic_network=critic, clip_epsilon=0.2, entropy_coeff=1e-4,
                   normalize_advantage=False)
        loss.set_keys(reward=("agents", "reward"), action=("agents", "action"),
                      sample_log_prob=("agents", "sample_log_prob"), value=("agents", "state_value"),
                      done=("agents", "done"), terminated=("agents", "terminated"))
        loss.make_value_estimator(ValueEstimators.GAE, gamma=0.99, lmbda=0.9)
        estimator = loss.value_estimator
        assert type(estimator) is gae_cls
        data = rollout.clone()
        with torch.no_grad():
            estimator(data, params=loss.critic_network_params, target_params=loss.target_critic_network_params)
        results.append(run(loss, data.reshape(-1)))
    assert_same(*results)


def test_seed_objectives_page_mappo_example():
    actor, critic = make_actor(), make_critic()
    loss = fm_multiagent.MAPPOLoss(actor, critic, value_norm=PopArtValueNorm(shape=1))
    loss.set_keys(value=("agents", "state_value"), action=("agents", "action"))
    loss.set_keys(sample_log_prob=("agents", "sample_log_prob"))
    out, grads = run(loss, make_batch(32))
    assert set(out.keys()) >= {"loss_objective", "loss_critic", "loss_entropy", "ESS", "explained_variance"}
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_same_public_surface_as_torchrl():
    actor, critic = make_actor(), make_critic()
    for name, (ours, theirs) in PAIRS.items():
        assert issubclass(ours, theirs)
        # TorchRL's constructor plus one keyword, advantage_stats_group (tests/test_distributed.py).
        ours_params = dict(inspect.signature(ours.__init__).parameters)
        extra = ours_params.pop("advantage_stats_group")
        assert extra.kind is inspect.Parameter.KEYWORD_ONLY and extra.default is None
        assert list(ours_params.values()) == list(inspect.signature(theirs.__init__).parameters.values())
        a, b = build(ours, actor, critic), build(theirs, actor, critic)
        assert sorted(map(str, a.in_keys)) == sorted(map(str, b.in_keys))
        assert a.out_keys == b.out_keys
        assert type(a).default_value_estimator == type(b).default_value_estimator
    assert fm.ClipPPOLoss is fm.ppo.ClipPPOLoss
    assert fm_multiagent.MAPPOLoss is fm.MAPPOLoss and fm_multiagent.IPPOLoss is fm.IPPOLoss


def test_value_estimators_fastmarl_for_gae_torchrl_otherwise():
    actor, critic = make_actor(), make_critic()
    loss = build(fm.ClipPPOLoss, actor, critic)
    assert type(loss.value_estimator) is GAE
    assert loss.value_type is ValueEstimators.GAE
    assert loss.value_estimator.tensor_keys.value == ("agents", "state_value")
    loss.make_value_estimator(ValueEstimators.MAGAE, gamma=0.9, lmbda=0.8)
    assert type(loss.value_estimator) is MultiAgentGAE and float(loss.value_estimator.gamma) == pytest.approx(0.9)
    loss.make_value_estimator(ValueEstimators.TD0, gamma=0.9)
    assert type(loss.value_estimator) is TD0Estimator
    assert type(build(fm.IPPOLoss, actor, make_critic(centralised=False)).value_estimator) is MultiAgentGAE
    # TorchRL's own losses are untouched.
    assert type(build(TorchRLMAPPOLoss, actor, critic).value_estimator).__module__.startswith("torchrl")


def _plain_actor():
    # nn.Linear leaves live in the module's own _parameters, not in a TensorDict it shares with
    # the loss: replacing a leaf of actor_network_params leaves the module behind.
    from torchrl.modules import ProbabilisticActor, TanhNormal

    torch.manual_seed(0)
    net = TensorDictModule(torch.nn.Sequential(torch.nn.Linear(OBS, 2 * 2), NormalParamExtractor()),
                           in_keys=[("agents", "observation")], out_keys=[("agents", "loc"), ("agents", "scale")])
    return ProbabilisticActor(net, in_keys=[("agents", "loc"), ("agents", "scale")], out_keys=[("agents", "action")],
                              distribution_class=TanhNormal, distribution_kwargs={"low": -1.0, "high": 1.0},
                              return_log_prob=True, log_prob_key=("agents", "sample_log_prob"))


@pytest.mark.parametrize("make", [make_actor, _plain_actor], ids=["multiagent-mlp", "plain-linear"])
def test_replaced_parameter_leaf_is_used(make):
    td = make_batch(40)
    results = []
    for cls in (fm.MAPPOLoss, TorchRLMAPPOLoss):
        loss = build(cls, make(), make_critic())  # own copies: the replacement must not leak
        key = next(iter(loss.actor_network_params.keys(True, True)))
        loss.actor_network_params.set(key, torch.nn.Parameter(loss.actor_network_params.get(key).detach() * 1.5))
        results.append(run(loss, td))
    assert_same(*results)


def test_loss_accepts_tensors_without_tensordict():
    # TorchRL's dispatch form: keyword tensors named after in_keys, a tuple of out_keys back.
    actor, critic = make_actor(), make_critic()
    td = _rollout(2, 8)
    outs = []
    for cls in (fm.MAPPOLoss, TorchRLMAPPOLoss):
        loss = build(cls, actor, critic)
        torch.manual_seed(3)
        kwargs = {"_".join(k) if isinstance(k, tuple) else k: td.get(k) for k in loss.in_keys}
        outs.append(loss(**kwargs))
    assert len(outs[0]) == len(outs[1])
    for a, b in zip(*outs):
        assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_advantage_without_its_value_dim_is_a_clear_error():
    # A [*S] advantage against [*S, 1] log-weights would broadcast to an outer product over the
    # samples. TorchRL refuses it with an "outer product" message for a flat batch
    # (test_ppo_flat_advantage_raises) and fails deep inside its forward with a size mismatch
    # for per-agent data; the drop-in raises the functional's error in both, which names the
    # argument, the expected shape and the outer product.
    loss = build(fm.MAPPOLoss, make_actor(), make_critic())
    td = make_batch(16)
    td.set("advantage", torch.randn(16, 3))
    with pytest.raises(ValueError, match=r"advantage has shape \(16, 3\), expected \[\*S, 1\] = \(16, 3, 1\) "
                                         r".* outer product over samples"):
        loss(td)
    with pytest.raises(RuntimeError, match="must match the size"):  # TorchRL's, for comparison
        build(TorchRLMAPPOLoss, make_actor(), make_critic())(td)
    td.set("advantage", torch.randn(16, 2, 1))
    with pytest.raises(ValueError, match=r"advantage has shape \(16, 2, 1\), expected \[\*S, 1\] = \(16, 3, 1\)"):
        loss(td)


def test_team_advantage_broadcast_over_agents_matches_torchrl():
    # A team advantage [N, 1, 1] against per-agent log-probs [N, A]: TorchRL broadcasts it over
    # the agents; the drop-in runs TorchRL's forward for it, so the numbers are TorchRL's.
    actor, critic = make_actor(), make_critic()
    td = make_batch(24)
    td.set("advantage", torch.randn(24, 1, 1))
    results = [run(build(cls, actor, critic), td) for cls in (fm.MAPPOLoss, TorchRLMAPPOLoss)]
    assert_same(*results, rtol=0, atol=0)


def _parameter_free_actor():
    # Loc and scale read straight from the observation: no parameters at all, so TorchRL keeps a
    # plain TensorDict (not a TensorDictParams) as actor_network_params.
    from torchrl.modules import ProbabilisticActor, TanhNormal

    net = TensorDictModule(lambda obs: (obs[..., :ACT], obs[..., ACT:2 * ACT].exp()),
                           in_keys=[("agents", "observation")], out_keys=[("agents", "loc"), ("agents", "scale")])
    return ProbabilisticActor(net, in_keys=[("agents", "loc"), ("agents", "scale")], out_keys=[("agents", "action")],
                              distribution_class=TanhNormal, distribution_kwargs={"low": -1.0, "high": 1.0},
                              return_log_prob=True, log_prob_key=("agents", "sample_log_prob"))


def _parameter_free_critic():
    return TensorDictModule(lambda obs: obs.sum(-1, keepdim=True), in_keys=[("agents", "observation")],
                            out_keys=[("agents", "state_value")])


@pytest.mark.parametrize("actor_kind,critic_kind", [("free", "mlp"), ("mlp", "free")])
def test_parameter_free_actor_or_critic_matches_torchrl(actor_kind, critic_kind):
    # Issue 12: the functional loss crashed in FunctionalParams ('TensorDict' object has no
    # attribute '_param_td') for a module without parameters (TorchRL's test_ppo_composite_dists,
    # test_ppo_marl_aggregate).
    results = []
    for cls in (fm.MAPPOLoss, TorchRLMAPPOLoss):
        actor = _parameter_free_actor() if actor_kind == "free" else make_actor()
        critic = _parameter_free_critic() if critic_kind == "free" else make_critic()
        loss = build(cls, actor, critic, functional=True)
        assert loss.functional
        results.append(run(loss, make_batch(24)))
    assert_same(*results)


@pytest.mark.parametrize("cls", [fm.ClipPPOLoss, fm.MAPPOLoss, fm.IPPOLoss])
@pytest.mark.parametrize("epsilon,match", [
    (1.5, r"clip_epsilon \(low\) must lie in \[0, 1\), got 1.5"),
    (1.0, r"clip_epsilon \(low\) must lie in \[0, 1\), got 1.0"),
    (-0.2, r"clip_epsilon \(low\) must lie in \[0, 1\), got -0.2"),
])
def test_float_clip_epsilon_out_of_range_is_rejected(cls, epsilon, match):
    # TorchRL builds these (its loss is then NaN for 1.5 and clips every ratio for -0.2).
    TorchRLClipPPOLoss(make_actor(), make_critic(), clip_epsilon=epsilon)
    with pytest.raises(ValueError, match=match):
        cls(make_actor(), make_critic(), clip_epsilon=epsilon)


def test_clip_epsilon_annealed_out_of_range_is_rejected_at_the_forward():
    loss = build(fm.MAPPOLoss, make_actor(), make_critic(), clip_epsilon=0.2)
    td = make_batch(8)
    loss(td)
    loss.clip_epsilon.fill_(1.5)  # a schedule writing the buffer in place
    with pytest.raises(ValueError, match=r"clip_low = log1p\(-ε_low\) .* got nan \(clip_epsilon \(low\) > 1\)"):
        loss(td)
    loss.clip_epsilon.fill_(0.3)
    loss(td)
    pair = build(fm.ClipPPOLoss, make_actor(), make_critic(), clip_epsilon=(0.1, 0.3))
    pair.clip_epsilon_high.fill_(-0.5)
    with pytest.raises(ValueError, match=r"clip_high = log1p\(ε_high\) must be >= 0 .*clip_epsilon \(high\) = -0.5"):
        pair(td)


def test_compile_no_recompilation_and_fewer_graph_breaks_than_torchrl():
    from torch._dynamo.utils import counters

    actor, critic = make_actor(), make_critic()
    batches = [make_batch(64, seed=s) for s in range(4)]
    stats = {}
    # Graph breaks and recompilations happen in dynamo, whatever the backend: fastmarl's step
    # also goes through AOTAutograd (its ops' backward traced), TorchRL's only through dynamo.
    for name, cls, backend in (("fastmarl", fm.MAPPOLoss, "aot_eager"), ("torchrl", TorchRLMAPPOLoss, "eager")):
        loss = build(cls, actor, critic)

        def step(td):
            out = loss(td)
            total = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
            total.backward()
            return total.detach()

        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(step, backend=backend)
        graphs = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for td in batches:
                compiled(td)
                graphs.append(counters["stats"]["unique_graphs"])
        stats[name] = (graphs, sum(counters["graph_break"].values()))
    (ours_graphs, ours_breaks), (theirs_graphs, theirs_breaks) = stats["fastmarl"], stats["torchrl"]
    # Compiled once (the first two calls warm up), then reused: no graph is added afterwards.
    assert ours_graphs[1] == ours_graphs[-1], f"fastmarl recompiled: graphs per call {ours_graphs}"
    assert ours_breaks <= theirs_breaks, (ours_breaks, theirs_breaks)
    print(f"graph breaks: fastmarl {ours_breaks}, torchrl {theirs_breaks}; "
          f"graphs per call: fastmarl {ours_graphs}, torchrl {theirs_graphs}")


@pytest.mark.parametrize("dims", [(0, 1, 2), (-3, -2, -1)])
def test_every_dim_excluded_leaves_the_advantage_as_torchrl_does(dims):
    # Issue 12: excluding every dim standardised the advantage anyway (0.1518 against TorchRL's
    # 0.1673 through ClipPPOLoss); TorchRL leaves it as it is.
    actor, critic = make_actor(), make_critic()
    td = make_batch(16)
    results = [run(build(cls, actor, critic, normalize_advantage=True, normalize_advantage_exclude_dims=dims), td)
               for cls in (fm.ClipPPOLoss, TorchRLClipPPOLoss)]
    assert_same(*results)
    raw = run(build(fm.ClipPPOLoss, actor, critic, normalize_advantage=False), td)
    assert torch.equal(results[0][0]["loss_objective"], raw[0]["loss_objective"])


@pytest.mark.parametrize("dims", [(5,), (-4,), (1, -2)], ids=["above", "below", "repeated"])
def test_exclude_dims_out_of_range_or_repeated_raise_like_torchrl(dims):
    # Issue 12: out-of-range dims wrapped modulo ndim; TorchRL raises ValueError, so does the
    # drop-in (naming the argument, the advantage's shape and the valid range).
    td = make_batch(16)
    for cls in (fm.ClipPPOLoss, TorchRLClipPPOLoss):
        loss = build(cls, make_actor(), make_critic(), normalize_advantage=True, normalize_advantage_exclude_dims=dims)
        with pytest.raises(ValueError):
            loss(td)
    with pytest.raises(ValueError, match=r"normalize_advantage_exclude_dims=.* advantage of shape \(16, 3, 1\)"):
        build(fm.ClipPPOLoss, make_actor(), make_critic(), normalize_advantage=True,
              normalize_advantage_exclude_dims=dims)(td)
