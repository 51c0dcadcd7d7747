"""``fastmarl.UpdateStep``: the whole update step, eager, compiled and (CUDA) captured.

- Eager: the step equals the TorchRL tutorial's loop (``loss``, ``backward``,
  ``clip_grad_norm_``, ``optim.step()``, ``optim.zero_grad()``, target update) step for step.
- Compiled (``fallback_random=True`` so that random numbers match eager bit for bit): 100
  steps give the eager loop's parameters, in one graph, with no graph break and no
  recompilation, for the tutorial's ``ClipPPOLoss`` and the QMIX step with soft target updates
  (Inductor), ``MAPPOLoss`` (AOTAutograd without Inductor's code generation) and ``IPPOLoss``
  (dynamo alone).
  These compile a tiny network each (Inductor: 30-90 s with a cold cache on the 2-vCPU CPU
  machine; marked ``compile``: ``-m "not compile"`` leaves them out).
- Randomness: two compiled calls draw different Monte-Carlo entropy samples (Inductor's own
  random lowering, the default), and the same seed gives the same draw.
- CUDA (skipped without a GPU): ``cudagraph=True`` parameters after 20 replays equal eager's,
  and replays draw fresh entropy samples. The CPU twin runs the same step through
  ``CudaGraphModule``'s TensorDict path, which passes through without CUDA.
"""

import contextlib
import warnings

import pytest
import torch
from helpers import assert_close
from ppo_cases import KEYS, make_actor, make_batch, make_critic
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch._dynamo.utils import counters
from torchrl.modules import QValueModule, SafeSequential
from torchrl.objectives import SoftUpdate

import fastmarl.objectives as fm
from fastmarl import UpdateStep, make_optimizer
from fastmarl.modules import MultiAgentMLP, QMixer

STEPS = 100
requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="CUDA graphs need a CUDA device; test_cpu_twin_step_through_cudagraphmodule runs the CPU path",
)
PPO_KINDS = ("tutorial", "mappo", "ippo")
QMIX_OBS, QMIX_ACTIONS, QMIX_AGENTS = 4, 5, 3


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchRL's MC-entropy and target-updater warnings
        yield


def build_ppo(kind: str):
    """The tutorial's networks (fastmarl MultiAgentMLP) in ``kind``'s loss, and Adam."""
    actor = make_actor(cells=8, mlp=MultiAgentMLP)
    critic = make_critic(cells=8, centralised=kind != "ippo", mlp=MultiAgentMLP)
    if kind == "tutorial":  # the seed tutorial's ClipPPOLoss
        loss = fm.ClipPPOLoss(actor, critic, clip_epsilon=0.2, entropy_coeff=1e-3, normalize_advantage=False)
    else:
        loss = (fm.MAPPOLoss if kind == "mappo" else fm.IPPOLoss)(actor, critic, entropy_coeff=1e-3)
    loss.set_keys(**KEYS)
    return loss, torch.optim.Adam(loss.parameters(), 1e-3)


def ppo_batches():
    return [make_batch(32, seed=s) for s in range(4)]


def build_qmix():
    torch.manual_seed(0)
    q_net = TensorDictModule(
        MultiAgentMLP(QMIX_OBS, QMIX_ACTIONS, QMIX_AGENTS, centralized=False, share_params=True, depth=2,
                      num_cells=8, activation_class=torch.nn.Tanh),
        in_keys=[("agents", "observation")], out_keys=[("agents", "action_value")])
    qnet = SafeSequential(q_net, QValueModule(
        action_value_key=("agents", "action_value"), action_space="categorical",
        out_keys=[("agents", "action"), ("agents", "action_value"), ("agents", "chosen_action_value")]))
    mixer = TensorDictModule(QMixer(state_shape=(QMIX_AGENTS * QMIX_OBS,), mixing_embed_dim=8, n_agents=QMIX_AGENTS),
                             in_keys=[("agents", "chosen_action_value"), "state"], out_keys=["chosen_action_value"])
    loss = fm.QMixerLoss(qnet, mixer, delay_value=True, action_space="categorical")
    loss.set_keys(action_value=("agents", "action_value"), local_value=("agents", "chosen_action_value"),
                  global_value="chosen_action_value", action=("agents", "action"))
    loss.make_value_estimator(fm.ValueEstimators.TD0, gamma=0.9)
    return loss, torch.optim.Adam(loss.parameters(), 1e-2), SoftUpdate(loss, tau=0.1)


def qmix_batches(n=4, N=16):
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        td = TensorDict(batch_size=[N])
        for prefix in ((), ("next",)):
            obs = torch.randn(N, QMIX_AGENTS, QMIX_OBS, generator=g)
            td.set((*prefix, "agents", "observation"), obs)
            td.set((*prefix, "state"), obs.flatten(-2))
        td.set(("agents", "action"), torch.randint(0, QMIX_ACTIONS, (N, QMIX_AGENTS), generator=g))
        td.set(("next", "reward"), torch.randn(N, 1, generator=g))
        done = torch.rand(N, 1, generator=g) < 0.2
        td.set(("next", "done"), done)
        td.set(("next", "terminated"), done)
        out.append(td)
    return out


def tutorial_loop(loss, optim, loss_keys, max_grad_norm, after_step=None):
    """The TorchRL tutorial's minibatch loop, the reference."""

    def step(td):
        out = loss(td)
        total = sum(out[k] for k in loss_keys)
        total.backward()
        torch.nn.utils.clip_grad_norm_(loss.parameters(), max_grad_norm)
        optim.step()
        optim.zero_grad()
        if after_step is not None:
            after_step()
        return out
    return step


PPO_LOSS_KEYS = ("loss_objective", "loss_critic", "loss_entropy")


def state(loss):
    """Every parameter and buffer of the loss (target networks included)."""
    return {k: v.detach().clone() for k, v in loss.state_dict().items() if isinstance(v, torch.Tensor)}


def assert_same_state(a, b, atol, rtol):
    assert a.keys() == b.keys()
    for key in a:
        assert_close(a[key], b[key], atol=atol, rtol=rtol, name=key)


def run_pair(step, reference, batches, steps, fresh=False):
    """The same minibatches and seeds through ``step`` and ``reference``; returns the metrics
    of the first and the number of dynamo graphs after the first call."""
    metrics, graphs_after_first = [], None
    for i in range(steps):
        batch = batches[i % len(batches)]
        torch.manual_seed(i)
        metrics.append(step(batch.clone(False) if fresh else batch))
        if i == 0:
            graphs_after_first = counters["stats"]["unique_graphs"]
        torch.manual_seed(i)
        reference(batch.clone(False) if fresh else batch)
    return metrics, graphs_after_first


# --------------------------------------------------------------------------- eager


@pytest.mark.parametrize("kind", PPO_KINDS)
def test_eager_ppo_step_is_the_tutorial_loop(kind):
    loss, optim = build_ppo(kind)
    ref_loss, ref_optim = build_ppo(kind)
    step = UpdateStep(loss, optim, max_grad_norm=0.5)
    metrics, _ = run_pair(step, tutorial_loop(ref_loss, ref_optim, PPO_LOSS_KEYS, 0.5), ppo_batches(), 6)
    assert_same_state(state(loss), state(ref_loss), atol=1e-6, rtol=1e-5)
    m = metrics[-1]
    assert set(PPO_LOSS_KEYS) | {"grad_norm", "clip_fraction", "entropy"} <= set(m.keys())
    assert all(not v.requires_grad for v in m.values())


def test_eager_qmix_step_with_soft_updates_is_the_tutorial_loop():
    loss, optim, updater = build_qmix()
    ref_loss, ref_optim, ref_updater = build_qmix()
    step = UpdateStep(loss, optim, max_grad_norm=10.0, after_step=updater.step)
    batches = qmix_batches()
    metrics, _ = run_pair(step, tutorial_loop(ref_loss, ref_optim, ["loss"], 10.0, ref_updater.step), batches, 6,
                          fresh=True)
    after = state(loss)
    assert_same_state(after, state(ref_loss), atol=1e-6, rtol=1e-5)
    assert set(metrics[0].keys()) == {"loss", "grad_norm"}  # default loss_keys: "loss" only
    # The target networks moved (soft updates ran inside the step).
    target = [k for k in after if k.startswith("target_")]
    assert target and any(not torch.equal(after[k], state(build_qmix()[0])[k]) for k in target)


def test_priority_is_written_into_the_minibatch():
    loss, optim, updater = build_qmix()
    batch = qmix_batches(1)[0]
    UpdateStep(loss, optim, after_step=updater.step)(batch)
    assert batch.get("td_error").shape == (16, 1)


def test_external_zero_grad_and_unused_parameters():
    loss, optim = build_ppo("tutorial")
    unused = torch.nn.Parameter(torch.ones(3))
    optim.add_param_group({"params": [unused]})
    step = UpdateStep(loss, optim)
    batches = ppo_batches()
    step(batches[0])
    optim.zero_grad()  # set_to_none: the step re-attaches its static gradient buffers
    step(batches[1])
    assert all(p.grad is not None for g in optim.param_groups for p in g["params"])
    # A parameter the loss does not reach keeps a zero gradient, so Adam leaves it in place.
    assert torch.equal(unused.grad, torch.zeros(3)) and torch.equal(unused.detach(), torch.ones(3))


def test_optimizer_hooks_still_run():
    loss, optim = build_ppo("tutorial")
    calls = []
    optim.register_step_post_hook(lambda *args: calls.append(1))
    step = UpdateStep(loss, optim)
    step(ppo_batches()[0])
    assert calls == [1]


def test_bad_arguments_are_clear_errors():
    loss, optim = build_ppo("tutorial")
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        UpdateStep(loss, "adam")
    with pytest.raises(TypeError, match="loss_keys must be a non-empty sequence"):
        UpdateStep(loss, optim, loss_keys="loss_objective")
    with pytest.raises(ValueError, match="max_grad_norm must be a positive number"):
        UpdateStep(loss, optim, max_grad_norm=-1.0)
    with pytest.raises(TypeError, match="compile must be a bool or a dict"):
        UpdateStep(loss, optim, compile="yes")
    with pytest.raises(TypeError, match="minibatch must be a TensorDict"):
        UpdateStep(loss, optim)({"a": 1})
    with pytest.raises(KeyError, match="loss_nope"):
        UpdateStep(loss, optim, loss_keys=["loss_nope"])(ppo_batches()[0])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cudagraph=True needs a CUDA device"):
            UpdateStep(loss, optim, cudagraph=True)


def test_make_optimizer_flags():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert make_optimizer(params, 1e-3).param_groups[0]["fused"] is True
    group = make_optimizer(params, 1e-3, compile=True).param_groups[0]
    assert not group["fused"] and group["foreach"] is True
    group = make_optimizer(params, 1e-3, fused=None, foreach=False).param_groups[0]
    assert not group["fused"] and group["foreach"] is False


@pytest.mark.compile
def test_torchrl_loss_works_compiled():
    # TorchRL's own loss (and MultiAgentMLP) in a compiled step: graph breaks, same result.
    from torchrl.objectives import ClipPPOLoss

    def build():
        loss = ClipPPOLoss(make_actor(cells=8), make_critic(cells=8), entropy_coeff=1e-3, normalize_advantage=False)
        loss.set_keys(**KEYS)
        return loss, torch.optim.Adam(loss.parameters(), 1e-3)

    loss, optim = build()
    ref_loss, ref_optim = build()
    torch._dynamo.reset()
    step = UpdateStep(loss, optim, max_grad_norm=0.5, compile={"backend": "eager"})
    run_pair(step, tutorial_loop(ref_loss, ref_optim, PPO_LOSS_KEYS, 0.5), ppo_batches(), 1)
    assert_same_state(state(loss), state(ref_loss), atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- compiled


@contextlib.contextmanager
def fresh_dynamo(**inductor):
    torch._dynamo.reset()
    counters.clear()
    with torch._inductor.config.patch(**inductor):
        yield


def assert_one_graph(graphs_after_first):
    breaks = {k.splitlines()[0]: v for k, v in counters["graph_break"].items()}
    assert not breaks, f"graph breaks: {breaks}"
    assert graphs_after_first == 1
    assert counters["stats"]["unique_graphs"] == 1, f"recompiled: {counters['stats']['unique_graphs']} graphs"


@pytest.mark.compile
@pytest.mark.parametrize("kind", PPO_KINDS)
def test_compiled_ppo_step_matches_the_eager_loop_in_one_graph(kind):
    # Inductor for the tutorial's loss; MAPPO through AOTAutograd without Inductor's code
    # generation ("aot_eager": the same dynamo graph, traced backward and functionalised
    # optimizer); IPPO (MAPPO's step with a per-agent critic) through dynamo alone. Inductor
    # for all three took 30-90 s each with a cold cache on the loaded 2-vCPU CI machine.
    backend = {"tutorial": None, "mappo": "aot_eager", "ippo": "eager"}[kind]
    loss, optim = build_ppo(kind)
    ref_loss, ref_optim = build_ppo(kind)
    with fresh_dynamo(fallback_random=True):
        step = UpdateStep(loss, optim, max_grad_norm=0.5, compile={"backend": backend} if backend else True)
        metrics, graphs_after_first = run_pair(
            step, tutorial_loop(ref_loss, ref_optim, PPO_LOSS_KEYS, 0.5), ppo_batches(), STEPS)
    assert_one_graph(graphs_after_first)
    # Inductor fuses and reorders float32 sums: equal to rounding after 100 Adam steps.
    assert_same_state(state(loss), state(ref_loss), atol=2e-5, rtol=1e-4)
    assert torch.isfinite(metrics[-1]["loss_objective"])


@pytest.mark.compile
def test_compiled_qmix_step_with_soft_updates_matches_the_eager_loop_in_one_graph():
    loss, optim, updater = build_qmix()
    ref_loss, ref_optim, ref_updater = build_qmix()
    with fresh_dynamo():
        step = UpdateStep(loss, optim, max_grad_norm=10.0, compile=True, after_step=updater.step)
        _, graphs_after_first = run_pair(
            step, tutorial_loop(ref_loss, ref_optim, ["loss"], 10.0, ref_updater.step), qmix_batches(), STEPS,
            fresh=True)
    assert_one_graph(graphs_after_first)
    assert_same_state(state(loss), state(ref_loss), atol=2e-5, rtol=1e-4)


@pytest.mark.compile
def test_compiled_calls_draw_fresh_entropy_samples():
    loss, _ = build_ppo("tutorial")
    optim = torch.optim.Adam(loss.parameters(), lr=0.0)  # parameters stay put
    batch = ppo_batches()[0]
    with fresh_dynamo():  # Inductor's own random lowering, not fallback_random
        step = UpdateStep(loss, optim, compile=True)
        first, second = step(batch)["loss_entropy"], step(batch)["loss_entropy"]
        torch.manual_seed(7)
        third = step(batch)["loss_entropy"]
        torch.manual_seed(7)
        fourth = step(batch)["loss_entropy"]
    assert first != second, "two compiled calls drew the same Monte-Carlo entropy samples"
    assert third == fourth, "the samples should come from torch's generator"


# --------------------------------------------------------------------------- captured


@requires_cuda
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_cuda_graph_replays_match_eager(compile):
    def build():
        loss, _ = build_ppo("tutorial")
        loss = loss.to("cuda")
        return loss, make_optimizer(loss.parameters(), 1e-3, compile=compile, cudagraph=True)

    loss, optim = build()
    ref_loss, ref_optim = build()
    step = UpdateStep(loss, optim, max_grad_norm=0.5, compile=compile, cudagraph=True)
    ref = UpdateStep(ref_loss, ref_optim, max_grad_norm=0.5)
    batches = [b.to("cuda") for b in ppo_batches()]
    # A warm-up call, a call that captures, then 21 replays.
    run_pair(step, ref, batches, 23)
    assert_same_state(state(loss), state(ref_loss), atol=1e-5, rtol=1e-4)


@requires_cuda
def test_cuda_graph_replays_draw_fresh_entropy_samples():
    loss, _ = build_ppo("tutorial")
    loss = loss.to("cuda")
    step = UpdateStep(loss, make_optimizer(loss.parameters(), 0.0, cudagraph=True), cudagraph=True)
    batch = ppo_batches()[0].to("cuda")
    entropies = [step(batch)["loss_entropy"].item() for _ in range(6)]  # calls 3-6 replay
    assert len(set(entropies[2:])) == 4, f"replays drew the same entropy samples: {entropies}"


def test_cpu_twin_step_through_cudagraphmodule_is_the_tutorial_loop():
    # The TensorDict path of tensordict's CudaGraphModule, as cudagraph=True builds it; without
    # CUDA it clones the inputs (rejecting any that require grad) and calls the step.
    from tensordict.nn import CudaGraphModule

    loss, optim = build_ppo("tutorial")
    ref_loss, ref_optim = build_ppo("tutorial")
    step = UpdateStep(loss, optim, max_grad_norm=0.5)
    wrapped = CudaGraphModule(step._step, warmup=2, in_keys=[], out_keys=[])
    run_pair(wrapped, tutorial_loop(ref_loss, ref_optim, PPO_LOSS_KEYS, 0.5), ppo_batches(), 5)
    assert_same_state(state(loss), state(ref_loss), atol=1e-6, rtol=1e-5)
