"""QMIX: fastmarl's fused mixer and drop-in QMixerLoss against TorchRL, eager and compiled.

Three groups per size:

- ``qmix-fwd``: the mixer's forward alone (no grad: the target network's call).
- ``qmix-fwd-bwd``: mixer forward + backward into the agent Q-values and every parameter.
- ``qmix-loss``: a full ``QMixerLoss`` step, forward + backward, with delay_value target
  networks and TD(0): the local Q-network (an MLP shared by the agents) on the step and on the
  next step, both mixer calls, the Bellman target and the TD-error priority.

Providers: ``torchrl`` (TorchRL's ``QMixer`` / ``QMixerLoss``), ``torchrl_compiled`` (the same
under ``torch.compile``), ``fastmarl``, ``fastmarl_compiled``. Sizes are B samples x n agents
with E=32; the state width follows SMAC's formula for n marines against n (n*4 ally, n*3 enemy
and n*(6+n) last-action features): 48 for 3m, 168 for 8m, 1440 for 32 vs 32.

    pytest bench/bench_qmix.py --benchmark-json bench/results/qmix-<device>.json
"""

from __future__ import annotations

import warnings

import pytest
import torch
from benchutil import run_pedantic, selected_sizes, skip_compiled_in_smoke_run
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.modules import MLP, QValueModule, SafeSequential
from torchrl.modules.models.multiagent import QMixer as TorchRLQMixer
from torchrl.objectives.multiagent import QMixerLoss as TorchRLQMixerLoss

from fastmarl.bench_report import SIZE_ALIASES
from fastmarl.modules import QMixer
from fastmarl.objectives import QMixerLoss

EMBED, OBS = 32, 32
SMAC_STATE = {3: 48, 8: 168, 32: 1440}
# name: (B samples, n agents, E, S state features)
SIZES = {"tiny": (8, 3, 8, 11)}
SIZES.update({f"B{b}-n{n}": (b, n, EMBED, SMAC_STATE[n]) for b in (32, 4096, 65536) for n in (3, 8, 32)})
PROVIDERS = ["torchrl", "torchrl_compiled", "fastmarl", "fastmarl_compiled"]


def pytest_generate_tests(metafunc):
    if "size" in metafunc.fixturenames:
        metafunc.parametrize("size", selected_sizes(metafunc.config, SIZES, SIZE_ALIASES["qmix"], "bench_qmix.py"))


def _rounds(batch, n_agents, state_dim):
    # (input sets, rounds): several sets rotate for small problems; enough rounds for a stable
    # median without the CPU baselines taking minutes at B=65536.
    work = batch * (n_agents * EMBED + state_dim)
    if work <= 1 << 20:
        return 4, 30
    return (1, 10) if work <= 1 << 24 else (1, 3)


def _mixers(n_agents, embed, state_dim, device):
    torch.manual_seed(0)
    ours = QMixer((state_dim,), embed, n_agents, device)
    theirs = TorchRLQMixer((state_dim,), embed, n_agents, device)
    theirs.load_state_dict(ours.state_dict())
    return theirs, ours


@pytest.mark.parametrize("mode", ["fwd", "fwd-bwd"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_qmix_mixer(benchmark, bench_device, size, provider, mode):
    B, n, E, S = SIZES[size]
    benchmark.group = f"qmix-{mode}-{size}-{bench_device}"
    benchmark.extra_info.update(op=f"qmix_{mode}", size=size, B=B, n=n, E=E, S=S,
                                device=bench_device, provider=provider)
    skip_compiled_in_smoke_run(benchmark, provider)
    theirs, ours = _mixers(n, E, S, bench_device)
    mixer = theirs if provider.startswith("torchrl") else ours
    if provider.endswith("compiled"):
        mixer = torch.compile(mixer)

    if mode == "fwd":
        def step(q, state):
            with torch.no_grad():
                return mixer(q, state)
    else:
        def step(q, state):
            # As in training after optimizer.zero_grad(): the backward writes fresh gradients.
            mixer.zero_grad(set_to_none=True)
            q = q.detach().requires_grad_()
            out = mixer(q, state)
            out.sum().backward()
            return out.detach(), q.grad

    n_sets, rounds = _rounds(B, n, S)
    input_sets = [(torch.randn(B, n, 1, device=bench_device), torch.randn(B, S, device=bench_device))
                  for _ in range(n_sets)]
    result, (q, state) = run_pedantic(benchmark, step, input_sets, bench_device, rounds=rounds)
    # Every provider computes TorchRL's mixer: check on the last inputs.
    q_ref = q.detach().requires_grad_()
    reference = theirs(q_ref, state)
    torch.testing.assert_close(result if mode == "fwd" else result[0], reference.detach(),
                               atol=1e-4, rtol=1e-4)
    if mode == "fwd-bwd":
        reference.sum().backward()
        torch.testing.assert_close(result[1], q_ref.grad, atol=1e-4, rtol=1e-4)


def _loss(provider, n_agents, embed, state_dim, device):
    torch.manual_seed(0)
    n_actions = 6 + n_agents
    local = TensorDictModule(MLP(in_features=OBS, out_features=n_actions, num_cells=[64], device=device),
                             in_keys=[("agents", "observation")], out_keys=[("agents", "action_value")])
    value = QValueModule(action_value_key=("agents", "action_value"), action_space="categorical",
                         out_keys=[("agents", "action"), ("agents", "action_value"),
                                   ("agents", "chosen_action_value")])
    qnet = SafeSequential(local, value)
    theirs, ours = _mixers(n_agents, embed, state_dim, device)
    torchrl = provider.startswith("torchrl")
    mixer = TensorDictModule(theirs if torchrl else ours, in_keys=[("agents", "chosen_action_value"), "state"],
                             out_keys=["chosen_action_value"])
    loss_cls = TorchRLQMixerLoss if torchrl else QMixerLoss
    return loss_cls(qnet, mixer, action_space="categorical", delay_value=True), n_actions


def _minibatch(B, n_agents, state_dim, n_actions, device):
    done = torch.rand(B, 1, device=device) < 0.05
    return TensorDict({
        "agents": TensorDict({"observation": torch.randn(B, n_agents, OBS, device=device),
                              "action": torch.randint(n_actions, (B, n_agents), device=device)},
                             [B, n_agents]),
        "state": torch.randn(B, state_dim, device=device),
        "next": TensorDict({
            "agents": TensorDict({"observation": torch.randn(B, n_agents, OBS, device=device)},
                                 [B, n_agents]),
            "state": torch.randn(B, state_dim, device=device),
            "reward": torch.randn(B, 1, device=device),
            "done": done,
            "terminated": done & (torch.rand(B, 1, device=device) < 0.5),
        }, [B]),
    }, [B], device=device)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_qmix_loss(benchmark, bench_device, size, provider):
    B, n, E, S = SIZES[size]
    benchmark.group = f"qmix-loss-{size}-{bench_device}"
    benchmark.extra_info.update(op="qmix_loss", size=size, B=B, n=n, E=E, S=S, device=bench_device,
                                provider=provider)
    skip_compiled_in_smoke_run(benchmark, provider)
    loss, n_actions = _loss(provider, n, E, S, bench_device)

    def step(td):
        loss.zero_grad(set_to_none=True)
        out = loss(td)
        out["loss"].backward()
        return out["loss"].detach()

    if provider.endswith("compiled"):
        step = torch.compile(step)
    n_sets, rounds = _rounds(B, n, S)
    input_sets = [(_minibatch(B, n, S, n_actions, bench_device),) for _ in range(n_sets)]
    with warnings.catch_warnings():
        # TorchRL warns on every call that no target updater is attached (none is needed here).
        warnings.simplefilter("ignore")
        value, (td,) = run_pedantic(benchmark, step, input_sets, bench_device, rounds=rounds,
                                    warmup_rounds=10 if provider.endswith("compiled") else 2)
        reference_loss, _ = _loss("torchrl", n, E, S, bench_device)
        expected = reference_loss(td.clone())["loss"]
    torch.testing.assert_close(value, expected.detach(), atol=1e-4, rtol=1e-4)
