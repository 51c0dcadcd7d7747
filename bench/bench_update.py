"""End-to-end update: one PPO iteration's training phase, as in ``fastmarl train``.

A round is GAE over the whole batch (critic calls included), then ``epochs`` x
``frames / minibatch`` steps of loss forward, backward, gradient clipping and Adam, with the
seed tutorial's networks. Shapes: tutorial (60 envs x 100 steps x 3 agents, minibatches of 400,
30 epochs) and BenchMARL VMAS (600 envs x 100 steps x 4 agents, minibatches of 4096, 45 epochs).

Providers: ``torchrl`` / ``torchrl_compiled`` (TorchRL's ClipPPOLoss and GAE, the update step
under ``torch.compile``), ``fastmarl`` / ``fastmarl_compiled``, and ``fastmarl_cudagraph`` (the
update step captured whole in a CUDA graph; CUDA only).

    pytest bench/bench_update.py --benchmark-json bench/results/update-<device>.json
"""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch
from bench_ppo import tutorial_networks
from benchutil import run_pedantic, selected_sizes, skip_compiled_in_smoke_run
from tensordict import TensorDict

from fastmarl.training.update import captured, ppo_update_step

# name: (envs, steps, agents, minibatch, epochs)
SIZES = {
    "tiny": (4, 10, 3, 20, 2),
    "tutorial": (60, 100, 3, 400, 30),
    "benchmarl": (600, 100, 4, 4096, 45),
}
PROVIDERS = ["torchrl", "torchrl_compiled", "fastmarl", "fastmarl_compiled", "fastmarl_cudagraph"]
OBS, ACT = 18, 2


def pytest_generate_tests(metafunc):
    if "size" in metafunc.fixturenames:
        metafunc.parametrize("size", selected_sizes(metafunc.config, SIZES, suite=metafunc.module.__name__ + ".py"))
    if "qmix_size" in metafunc.fixturenames:
        metafunc.parametrize("qmix_size", selected_sizes(metafunc.config, QMIX_SIZES, suite=metafunc.module.__name__ + ".py (QMIX)"))


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
def test_ppo_update(benchmark, bench_device, size, provider):
    skip_compiled_in_smoke_run(benchmark, provider)
    if provider == "fastmarl_cudagraph" and bench_device != "cuda":
        pytest.skip("CUDA graphs need a CUDA device")
    B, T, A, minibatch, epochs = SIZES[size]
    benchmark.group = f"update-ppo-{size}-{bench_device}"
    benchmark.extra_info.update(op="update_ppo", size=size, envs=B, steps=T, agents=A, minibatch=minibatch,
                                epochs=epochs, device=bench_device, provider=provider)
    backend = "torchrl" if provider.startswith("torchrl") else "fastmarl"
    objectives = importlib.import_module(f"{backend}.objectives")
    policy, critic = tutorial_networks(A, bench_device)
    loss = objectives.ClipPPOLoss(actor_network=policy, critic_network=critic, clip_epsilon=0.2,
                                  entropy_coeff=1e-4, normalize_advantage=False)
    loss.set_keys(reward=("agents", "reward"), action=("agents", "action"),
                  sample_log_prob=("agents", "sample_log_prob"), value=("agents", "state_value"),
                  done=("agents", "done"), terminated=("agents", "terminated"))
    loss.make_value_estimator(objectives.ValueEstimators.GAE, gamma=0.99, lmbda=0.9)
    optim = torch.optim.Adam(loss.parameters(), 3e-4, capturable=provider == "fastmarl_cudagraph")
    mode = provider.split("_", 1)[1] if "_" in provider else "eager"
    step = captured(ppo_update_step(loss, optim, 1.0), mode)
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


# --------------------------------------------------------------------------- QMIX

# name: (minibatch, agents, updates per round)
QMIX_SIZES = {"tiny": (32, 3, 4), "tutorial": (256, 3, 50), "benchmarl": (4096, 4, 50)}
N_ACTIONS = 9


def qmix_step(loss, optim, updater, max_grad_norm: float):
    params = [p for p in loss.parameters() if p.requires_grad]

    def step(subdata):
        optim.zero_grad(set_to_none=False)
        value = loss(subdata)["loss"]
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optim.step()
        updater.step()
        return value.detach()

    return step


def qmix_minibatch(N, A, device, generator):
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



@pytest.mark.parametrize("provider", PROVIDERS)
def test_qmix_update(benchmark, bench_device, qmix_size, provider):
    """A round is ``updates`` QMIX steps: loss forward, backward, clipping, Adam, soft target
    update, on replay minibatches (the update phase of ``fastmarl train --algo qmix``)."""
    from tensordict.nn import TensorDictModule
    from torchrl.modules import MultiAgentMLP, QValueModule, SafeSequential
    from torchrl.objectives import SoftUpdate

    skip_compiled_in_smoke_run(benchmark, provider)
    if provider == "fastmarl_cudagraph" and bench_device != "cuda":
        pytest.skip("CUDA graphs need a CUDA device")
    N, A, updates = QMIX_SIZES[qmix_size]
    benchmark.group = f"update-qmix-{qmix_size}-{bench_device}"
    benchmark.extra_info.update(op="update_qmix", size=qmix_size, minibatch=N, agents=A, updates=updates,
                                device=bench_device, provider=provider)
    backend = "torchrl" if provider.startswith("torchrl") else "fastmarl"
    modules = importlib.import_module(f"{backend}.modules")
    objectives = importlib.import_module(f"{backend}.objectives")
    torch.manual_seed(0)
    q_net = TensorDictModule(
        MultiAgentMLP(n_agent_inputs=OBS, n_agent_outputs=N_ACTIONS, n_agents=A, centralised=False, share_params=True,
                      device=bench_device, depth=2, num_cells=256, activation_class=torch.nn.Tanh),
        in_keys=[("agents", "observation")], out_keys=[("agents", "action_value")])
    qnet = SafeSequential(q_net, QValueModule(
        action_value_key=("agents", "action_value"), action_space="categorical",
        out_keys=[("agents", "action"), ("agents", "action_value"), ("agents", "chosen_action_value")]))
    mixer = TensorDictModule(modules.QMixer(state_shape=(A * OBS,), mixing_embed_dim=32, n_agents=A, device=bench_device),
                             in_keys=[("agents", "chosen_action_value"), "state"], out_keys=["chosen_action_value"])
    loss = objectives.QMixerLoss(qnet, mixer, delay_value=True, action_space="categorical")
    loss.set_keys(action_value=("agents", "action_value"), local_value=("agents", "chosen_action_value"),
                  global_value="chosen_action_value", action=("agents", "action"))
    loss.make_value_estimator(objectives.ValueEstimators.TD0, gamma=0.99)
    optim = torch.optim.Adam(loss.parameters(), 5e-4, capturable=provider == "fastmarl_cudagraph")
    mode = provider.split("_", 1)[1] if "_" in provider else "eager"
    step = captured(qmix_step(loss, optim, SoftUpdate(loss, tau=0.005), 10.0), mode)
    generator = torch.Generator().manual_seed(0)
    batches = [qmix_minibatch(N, A, bench_device, generator) for _ in range(min(updates, 8))]

    def updates_round():
        for i in range(updates):
            step(batches[i % len(batches)])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_pedantic(benchmark, updates_round, [()], bench_device, rounds=5, warmup_rounds=1)
