"""The fastmarl PPO update step captured whole in a CUDA graph gives the eager parameters.

The CUDA test captures ``ppo_update_step`` with ``tensordict.nn.CudaGraphModule`` (two eager
warm-up steps, then capture and replays) and checks that after N steps the parameters equal
those of N eager steps on the same minibatches. Its CPU twin runs the same step function
through the same wrapper path on the CPU, where there is no graph to capture, and checks the
same equality: it covers the step function (in-place gradient zeroing, detached outputs), not
the capture.
"""

import pytest
import torch
from helpers import assert_close, requires_cuda
from ppo_cases import KEYS, make_actor, make_batch, make_critic

import fastmarl.objectives as fm
from fastmarl.training.update import captured, ppo_update_step

STEPS = 6


def _setup(device, capturable):
    actor, critic = make_actor().to(device), make_critic().to(device)
    loss = fm.ClipPPOLoss(actor, critic, entropy_coeff=1e-3)
    loss.set_keys(**KEYS)
    optim = torch.optim.Adam(loss.parameters(), 1e-3, capturable=capturable)
    return loss, optim


def _params(loss):
    return [p.detach().clone() for p in loss.parameters()]


def _run(device, mode, capturable):
    loss, optim = _setup(device, capturable)
    step = captured(ppo_update_step(loss, optim, 1.0), mode)
    batches = [make_batch(64, seed=s).to(device) for s in range(STEPS)]
    torch.manual_seed(11)
    totals = [step(batch) for batch in batches]
    return _params(loss), torch.stack([t.reshape(()) for t in totals])


@requires_cuda
def test_cuda_graph_update_matches_eager():
    eager_params, eager_totals = _run("cuda", "eager", capturable=True)
    graph_params, graph_totals = _run("cuda", "cudagraph", capturable=True)
    # Same minibatches, same RNG stream for the entropy samples: the same training run.
    assert_close(graph_totals, eager_totals, atol=1e-5, rtol=1e-4)
    for a, b in zip(graph_params, eager_params):
        assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_cpu_twin_update_step_matches_the_plain_loop():
    # Two independent copies built from the same seeds (a deepcopy of a functional loss does
    # not keep its modules tied to its parameter TensorDicts).
    loss, optim = _setup("cpu", capturable=False)
    ref_loss, ref_optim = _setup("cpu", capturable=False)
    step = ppo_update_step(loss, optim, 1.0)
    batches = [make_batch(64, seed=s) for s in range(STEPS)]
    for batch in batches:
        torch.manual_seed(5)
        step(batch)
        torch.manual_seed(5)
        ref_optim.zero_grad()
        out = ref_loss(batch)
        (out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]).backward()
        torch.nn.utils.clip_grad_norm_(ref_loss.parameters(), 1.0)
        ref_optim.step()
    for a, b in zip(_params(loss), _params(ref_loss)):
        assert_close(a, b, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="mode must be eager, compiled or cudagraph"):
        captured(step, "graph")
