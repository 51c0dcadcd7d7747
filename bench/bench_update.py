"""The update step users feel: loss forward, backward, gradient clipping, Adam (and QMIX's target update).

Groups:

- ``update-ppo-step``: one PPO step of the seed tutorial (``ClipPPOLoss`` with
  ``normalize_advantage=False``, MultiAgentMLP 2x256 Tanh actor with ``TanhNormal``,
  centralised critic, clip 1.0, Adam 3e-4) on a minibatch N x agents: tutorial 400x3,
  BenchMARL's VMAS 4096x4.
- ``update-qmix-step``: one QMIX step (local Q MultiAgentMLP 2x256 + ``QValueModule`` +
  ``QMixer`` E=32 + ``QMixerLoss`` TD(0), clip 10, Adam 5e-4, ``SoftUpdate``): B=4096 with
  n=8 agents, the issue's cell, and tutorial 400x3.
- ``update-ppo-iteration``: one PPO iteration's training phase as ``fastmarl train`` runs it
  (GAE over the batch, then epochs x minibatches of steps).

Providers:

- ``torchrl``: TorchRL's classes, the tutorial's loop (``loss(...)``, ``backward()``,
  ``clip_grad_norm_``, ``optim.step()``, ``optim.zero_grad()``), ``Adam(lr)``;
- ``torchrl_compiled``: the same loop as one function under ``torch.compile`` (LeanRL's recipe);
- ``fastmarl``: fastmarl's classes (MultiAgentMLP, losses, mixer) in ``UpdateStep``, eager,
  with :func:`fastmarl.make_optimizer`'s Adam (fused when eager, ``foreach`` when compiled);
- ``fastmarl_compiled``: ``UpdateStep(compile=True)``;
- CUDA only: ``fastmarl_cudagraph`` (``UpdateStep(compile=True, cudagraph=True)`` through
  ``CudaGraphModule``) and ``fastmarl_reduce_overhead`` (the same through
  ``torch.compile(mode="reduce-overhead")``), so one GPU run settles
  ``fastmarl.update.CUDAGRAPH_IMPL``.

Compile (and capture) time is the first calls' wall time, recorded apart in
``extra_info["compile_seconds"]``; the benchmark's rounds time the steady state.

    pytest bench/bench_update.py --bench-sizes tutorial,benchmarl --benchmark-json bench/results/update-<device>.json
"""

from __future__ import annotations

import importlib
import time
import warnings

import pytest
import torch
from benchutil import run_pedantic, selected_sizes, skip_compiled_in_smoke_run, synchronize
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.modules import ProbabilisticActor, QValueModule, SafeSequential, TanhNormal
from torchrl.objectives import SoftUpdate

import fastmarl.update
from fastmarl import UpdateStep, make_optimizer

OBS, ACT, CELLS, N_ACTIONS = 18, 2, 256, 9
LR, MAX_GRAD_NORM, CLIP, ENTROPY_COEFF = 3e-4, 1.0, 0.2, 1e-4
QMIX_LR, QMIX_MAX_GRAD_NORM, TAU, EMBED = 5e-4, 10.0, 0.005, 32
PROVIDERS = ["torchrl", "torchrl_compiled", "fastmarl", "fastmarl_compiled", "fastmarl_cudagraph",
             "fastmarl_reduce_overhead"]
CUDA_ONLY = ("fastmarl_cudagraph", "fastmarl_reduce_overhead")

# name: (minibatch N, agents)
STEP_SIZES = {"tiny": (16, 3), "tutorial": (400, 3), "benchmarl": (4096, 4)}
# name: (minibatch B, agents)
QMIX_SIZES = {"tiny": (16, 3), "tutorial": (400, 3), "B4096-n8": (4096, 8)}
# name: (envs, steps, agents, minibatch, epochs)
ITERATION_SIZES = {"tiny": (4, 10, 3, 20, 2), "tutorial": (60, 100, 3, 400, 30), "benchmarl": (600, 100, 4, 4096, 45)}

KEYS = dict(reward=("agents", "reward"), action=("agents", "action"), sample_log_prob=("agents", "sample_log_prob"),
            value=("agents", "state_value"), done=("agents", "done"), terminated=("agents", "terminated"))


def pytest_generate_tests(metafunc):
    # Each group by its own sizes, under the size names every suite shares (--bench-sizes
    # tutorial,benchmarl,...; QMIX's benchmarl size is B4096-n8), plus the group's own names.
    suite = metafunc.module.__name__ + ".py"
    groups = {"step_size": (STEP_SIZES, {}), "qmix_size": (QMIX_SIZES, {"benchmarl": ["B4096-n8"]}),
              "iteration_size": (ITERATION_SIZES, {})}
    for name, (sizes, aliases) in groups.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, selected_sizes(metafunc.config, sizes, aliases, suite=f"{suite} ({name})"))


def _backend(provider: str) -> str:
    return "torchrl" if provider.startswith("torchrl") else "fastmarl"


def _mlp_class(backend: str):
    return importlib.import_module(f"{backend}.modules").MultiAgentMLP


# --------------------------------------------------------------------------- PPO


def ppo_networks(backend: str, A: int, device, cells: int = CELLS):
    """The tutorial's actor (MultiAgentMLP -> NormalParamExtractor -> TanhNormal) and
    centralised critic, from ``backend``'s MultiAgentMLP, same seed for both backends."""
    MultiAgentMLP = _mlp_class(backend)
    torch.manual_seed(0)
    policy_net = torch.nn.Sequential(
        MultiAgentMLP(n_agent_inputs=OBS, n_agent_outputs=2 * ACT, n_agents=A, centralised=False, share_params=True,
                      device=device, depth=2, num_cells=cells, activation_class=torch.nn.Tanh),
        NormalParamExtractor(),
    )
    policy = ProbabilisticActor(
        module=TensorDictModule(policy_net, in_keys=[("agents", "observation")],
                                out_keys=[("agents", "loc"), ("agents", "scale")]),
        in_keys=[("agents", "loc"), ("agents", "scale")], out_keys=[("agents", "action")],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -torch.ones(ACT, device=device), "high": torch.ones(ACT, device=device)},
        return_log_prob=True, log_prob_key=("agents", "sample_log_prob"),
    )
    critic = TensorDictModule(
        MultiAgentMLP(n_agent_inputs=OBS, n_agent_outputs=1, n_agents=A, centralised=True, share_params=True,
                      device=device, depth=2, num_cells=cells, activation_class=torch.nn.Tanh),
        in_keys=[("agents", "observation")], out_keys=[("agents", "state_value")],
    )
    return policy, critic


def ppo_loss(backend: str, A: int, device, cells: int = CELLS):
    objectives = importlib.import_module(f"{backend}.objectives")
    policy, critic = ppo_networks(backend, A, device, cells)
    loss = objectives.ClipPPOLoss(actor_network=policy, critic_network=critic, clip_epsilon=CLIP,
                                  entropy_coeff=ENTROPY_COEFF, normalize_advantage=False)
    loss.set_keys(**KEYS)
    loss.make_value_estimator(objectives.ValueEstimators.GAE, gamma=0.99, lmbda=0.9)
    return loss


def ppo_minibatch(N: int, A: int, device, generator: torch.Generator) -> TensorDict:
    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    td = TensorDict(batch_size=[N], device=device)
    td.set(("agents", "observation"), randn(N, A, OBS))
    td.set(("agents", "action"), (torch.rand(N, A, ACT, generator=generator) * 1.8 - 0.9).to(device))
    td.set(("agents", "sample_log_prob"), randn(N, A) - 1)
    td.set(("agents", "state_value"), randn(N, A, 1))
    td.set("advantage", randn(N, A, 1))
    td.set("value_target", randn(N, A, 1))
    return td


def tutorial_step(loss, optim, loss_keys, max_grad_norm, after_step=None):
    """The TorchRL tutorial's minibatch loop body, as a function of the minibatch."""

    def step(subdata):
        out = loss(subdata)
        total = out[loss_keys[0]]
        for key in loss_keys[1:]:
            total = total + out[key]
        total.backward()
        torch.nn.utils.clip_grad_norm_(loss.parameters(), max_grad_norm)
        optim.step()
        optim.zero_grad()
        if after_step is not None:
            after_step()
        return total.detach()

    return step


def make_step(provider: str, loss, lr: float, loss_keys, max_grad_norm, after_step=None):
    """The step function of ``provider`` for ``loss`` (built from the provider's backend)."""
    if _backend(provider) == "torchrl":
        step = tutorial_step(loss, torch.optim.Adam(loss.parameters(), lr), loss_keys, max_grad_norm, after_step)
        return torch.compile(step) if provider == "torchrl_compiled" else step
    params = list(loss.parameters())
    cudagraph = provider in CUDA_ONLY
    optim = make_optimizer(params, lr, compile=provider != "fastmarl", cudagraph=cudagraph)
    previous = fastmarl.update.CUDAGRAPH_IMPL
    if provider == "fastmarl_reduce_overhead":
        fastmarl.update.CUDAGRAPH_IMPL = "reduce-overhead"
    try:
        return UpdateStep(loss, optim, loss_keys=loss_keys, max_grad_norm=max_grad_norm,
                          compile=provider != "fastmarl", cudagraph=cudagraph, after_step=after_step)
    finally:
        fastmarl.update.CUDAGRAPH_IMPL = previous


def warm_calls(provider: str) -> int:
    """Calls until a provider runs its steady state: compile on the first call; capture
    after CudaGraphModule's two warm-up calls; TorchRL's compiled step recompiles on every
    call until dynamo's limit (8) sends it back to eager."""
    return {"torchrl": 1, "fastmarl": 1, "fastmarl_compiled": 2, "torchrl_compiled": 10}.get(provider, 4)


def ppo_step_case(provider: str, N: int, A: int, device, n_batches: int = 4):
    """``(step, minibatches)`` for one PPO step of ``provider``."""
    loss = ppo_loss(_backend(provider), A, device)
    step = make_step(provider, loss, LR, ["loss_objective", "loss_critic", "loss_entropy"], MAX_GRAD_NORM)
    generator = torch.Generator().manual_seed(1)
    return step, [ppo_minibatch(N, A, device, generator) for _ in range(n_batches)]


# --------------------------------------------------------------------------- QMIX


def qmix_loss(backend: str, A: int, device, cells: int = CELLS):
    modules = importlib.import_module(f"{backend}.modules")
    objectives = importlib.import_module(f"{backend}.objectives")
    torch.manual_seed(0)
    q_net = TensorDictModule(
        modules.MultiAgentMLP(n_agent_inputs=OBS, n_agent_outputs=N_ACTIONS, n_agents=A, centralised=False,
                              share_params=True, device=device, depth=2, num_cells=cells,
                              activation_class=torch.nn.Tanh),
        in_keys=[("agents", "observation")], out_keys=[("agents", "action_value")])
    qnet = SafeSequential(q_net, QValueModule(
        action_value_key=("agents", "action_value"), action_space="categorical",
        out_keys=[("agents", "action"), ("agents", "action_value"), ("agents", "chosen_action_value")]))
    mixer = TensorDictModule(modules.QMixer(state_shape=(A * OBS,), mixing_embed_dim=EMBED, n_agents=A, device=device),
                             in_keys=[("agents", "chosen_action_value"), "state"], out_keys=["chosen_action_value"])
    loss = objectives.QMixerLoss(qnet, mixer, delay_value=True, action_space="categorical")
    loss.set_keys(action_value=("agents", "action_value"), local_value=("agents", "chosen_action_value"),
                  global_value="chosen_action_value", action=("agents", "action"))
    loss.make_value_estimator(objectives.ValueEstimators.TD0, gamma=0.99)
    return loss


def qmix_minibatch(N: int, A: int, device, generator: torch.Generator) -> TensorDict:
    td = TensorDict(batch_size=[N], device=device)
    for prefix in ((), ("next",)):
        obs = torch.randn(N, A, OBS, generator=generator).to(device)
        td.set((*prefix, "agents", "observation"), obs)
        td.set((*prefix, "state"), obs.flatten(-2))
    td.set(("agents", "action"), torch.randint(0, N_ACTIONS, (N, A), generator=generator).to(device))
    td.set(("next", "reward"), torch.randn(N, 1, generator=generator).to(device))
    done = (torch.rand(N, 1, generator=generator) < 0.05).to(device)
    td.set(("next", "done"), done)
    td.set(("next", "terminated"), done)
    return td


def qmix_step_case(provider: str, N: int, A: int, device, n_batches: int = 4):
    """``(step, minibatch factory)``: a QMIX step reads a fresh replay sample each call (the
    loss writes its ``priority`` into it), so the factory clones one of ``n_batches``."""
    loss = qmix_loss(_backend(provider), A, device)
    updater = SoftUpdate(loss, tau=TAU)
    step = make_step(provider, loss, QMIX_LR, ["loss"], QMIX_MAX_GRAD_NORM, after_step=updater.step)
    generator = torch.Generator().manual_seed(1)
    return step, [qmix_minibatch(N, A, device, generator) for _ in range(n_batches)]


# --------------------------------------------------------------------------- the benchmarks


def _timed_warmup(step, batches, calls: int, device, fresh=False) -> float:
    synchronize(device)
    start = time.perf_counter()
    for i in range(calls):
        batch = batches[i % len(batches)]
        step(batch.clone(False) if fresh else batch)
    synchronize(device)
    return time.perf_counter() - start


def _skip(benchmark, bench_device, provider):
    skip_compiled_in_smoke_run(benchmark, provider)
    if provider in CUDA_ONLY and bench_device != "cuda":
        pytest.skip("CUDA graphs need a CUDA device")
    if provider in CUDA_ONLY and benchmark.disabled:
        pytest.skip("captured provider skipped in a --benchmark-disable smoke run (compile time)")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_ppo_step(benchmark, bench_device, step_size, provider):
    _skip(benchmark, bench_device, provider)
    N, A = STEP_SIZES[step_size]
    benchmark.group = f"update-ppo-step-{step_size}-{bench_device}"
    benchmark.extra_info.update(op="update_ppo_step", size=step_size, N=N, A=A, device=bench_device,
                                provider=provider)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step, batches = ppo_step_case(provider, N, A, bench_device)
        benchmark.extra_info["compile_seconds"] = _timed_warmup(step, batches, warm_calls(provider), bench_device)
        run_pedantic(benchmark, step, [(b,) for b in batches], bench_device, rounds=30 if N * A < 1 << 14 else 10,
                     warmup_rounds=1)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_qmix_step(benchmark, bench_device, qmix_size, provider):
    _skip(benchmark, bench_device, provider)
    N, A = QMIX_SIZES[qmix_size]
    benchmark.group = f"update-qmix-step-{qmix_size}-{bench_device}"
    benchmark.extra_info.update(op="update_qmix_step", size=qmix_size, B=N, A=A, device=bench_device,
                                provider=provider)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step, batches = qmix_step_case(provider, N, A, bench_device)
        benchmark.extra_info["compile_seconds"] = _timed_warmup(step, batches, warm_calls(provider), bench_device,
                                                                fresh=True)
        run_pedantic(benchmark, lambda b: step(b.clone(False)), [(b,) for b in batches], bench_device,
                     rounds=30 if N * A < 1 << 14 else 10, warmup_rounds=1)


def rollout(B, T, A, device):
    td = TensorDict(batch_size=[B, T], device=device)
    td.set(("agents", "observation"), torch.randn(B, T, A, OBS, device=device))
    td.set(("agents", "action"), torch.rand(B, T, A, ACT, device=device) * 1.8 - 0.9)
    td.set(("agents", "sample_log_prob"), torch.randn(B, T, A, device=device) - 1)
    td.set(("next", "agents", "observation"), torch.randn(B, T, A, OBS, device=device))
    td.set(("next", "agents", "reward"), torch.randn(B, T, A, 1, device=device))
    done = torch.rand(B, T, 1, 1, device=device) < 0.01
    td.set(("next", "agents", "done"), done.expand(B, T, A, 1))
    td.set(("next", "agents", "terminated"), done.expand(B, T, A, 1))
    return td


@pytest.mark.parametrize("provider", PROVIDERS)
def test_ppo_iteration(benchmark, bench_device, iteration_size, provider):
    """A round is GAE over the whole batch (critic calls included), then ``epochs`` x
    ``frames / minibatch`` steps, with the tutorial's networks."""
    _skip(benchmark, bench_device, provider)
    B, T, A, minibatch, epochs = ITERATION_SIZES[iteration_size]
    benchmark.group = f"update-ppo-iteration-{iteration_size}-{bench_device}"
    benchmark.extra_info.update(op="update_ppo_iteration", size=iteration_size, envs=B, steps=T, agents=A,
                                minibatch=minibatch, epochs=epochs, device=bench_device, provider=provider)
    loss = ppo_loss(_backend(provider), A, bench_device)
    step = make_step(provider, loss, LR, ["loss_objective", "loss_critic", "loss_entropy"], MAX_GRAD_NORM)
    data = rollout(B, T, A, bench_device)
    n_minibatches = B * T // minibatch
    generator = torch.Generator(device="cpu").manual_seed(0)
    orders = [torch.randperm(B * T, generator=generator).to(bench_device) for _ in range(epochs)]

    def iteration(data):
        with torch.no_grad():
            loss.value_estimator(data, params=loss.critic_network_params,
                                 target_params=loss.target_critic_network_params)
        flat = data.reshape(-1)
        for order in orders:
            for i in range(n_minibatches):
                step(flat[order[i * minibatch:(i + 1) * minibatch]])

    small = B * T * A <= 20_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_pedantic(benchmark, iteration, [(data,)], bench_device, rounds=5 if small else 2, warmup_rounds=1)
