"""fastmarl's MultiAgentMLP against TorchRL's: same parameters, state_dict, outputs and gradients.

fastmarl's computes the MLP from the (stacked) parameters instead of swapping them into an
empty copy with ``to_module``; these tests load a TorchRL ``MultiAgentMLP`` state_dict into it
and compare outputs and gradients for every ``share_params`` x ``centralized`` x depth, with
one agent and several, and check that ``to_module`` swaps (what TorchRL's functional losses and
target networks do) still take effect.
"""

import itertools
import warnings

import pytest
import torch
from helpers import assert_close
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.modules import MultiAgentMLP as TorchRLMultiAgentMLP
from torchrl.modules import QValueModule, SafeSequential

from fastmarl.modules import MultiAgentMLP
from fastmarl.modules.models.multiagent_mlp import MLPParamsSwap

N_IN, N_OUT = 5, 4


def pair(n_agents, share_params, centralized, depth, cells=8, **kwargs):
    """A TorchRL and a fastmarl MLP with the TorchRL one's parameters loaded into fastmarl's."""
    torch.manual_seed(0)
    theirs = TorchRLMultiAgentMLP(N_IN, N_OUT, n_agents, centralized=centralized, share_params=share_params,
                                  depth=depth, num_cells=cells, **kwargs)
    torch.manual_seed(1)  # a different init: the state_dict must carry everything
    ours = MultiAgentMLP(N_IN, N_OUT, n_agents, centralized=centralized, share_params=share_params,
                         depth=depth, num_cells=cells, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


CASES = list(itertools.product([1, 3], [True, False], [True, False], [0, 1, 2]))


@pytest.mark.parametrize("n_agents,share_params,centralized,depth", CASES,
                         ids=[f"A{a}-{'shared' if s else 'per_agent'}-{'central' if c else 'local'}-d{d}"
                              for a, s, c, d in CASES])
def test_state_dict_outputs_and_gradients_match_torchrl(n_agents, share_params, centralized, depth):
    theirs, ours = pair(n_agents, share_params, centralized, depth)
    assert ours.__dict__["_fastmarl_plan"] is not None, "the fast path should cover this network"
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for x in (torch.randn(7, n_agents, N_IN), torch.randn(2, 3, n_agents, N_IN), torch.randn(n_agents, N_IN)):
        out_theirs, out_ours = theirs(x), ours(x)
        assert out_ours.shape == out_theirs.shape
        cotangent = torch.randn_like(out_theirs)
        grads_theirs = torch.autograd.grad((out_theirs * cotangent).sum(), list(theirs.parameters()))
        grads_ours = torch.autograd.grad((out_ours * cotangent).sum(), list(ours.parameters()))
        if share_params:
            # Shared parameters: the same F.linear calls as TorchRL, the same bits.
            assert torch.equal(out_ours, out_theirs)
        else:
            # Per-agent: baddbmm over the stacked weights against TorchRL's vmap of F.linear.
            assert_close(out_ours, out_theirs, atol=1e-6, rtol=1e-5, name="output")
        for name, a, b in zip(dict(theirs.named_parameters()), grads_ours, grads_theirs):
            assert_close(a, b, atol=1e-5, rtol=1e-5, name=f"grad {name}")


def test_multiple_inputs_are_concatenated_like_torchrl():
    theirs, ours = pair(3, False, False, 1)
    a, b = torch.randn(4, 3, 2), torch.randn(4, 3, N_IN - 2)
    assert_close(ours(a, b), theirs(a, b), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(dropout=0.5), dict(norm_class=torch.nn.LayerNorm, norm_kwargs={"normalized_shape": 8}),
    dict(use_td_params=False), dict(activate_last_layer=True, activation_class=torch.nn.Softmax,
                                    activation_kwargs={"dim": -1}),
], ids=["dropout", "layernorm", "no_td_params", "softmax"])
def test_networks_outside_the_fast_path_run_torchrl_forward(kwargs):
    theirs, ours = pair(3, False, False, 1, **kwargs)
    assert ours.__dict__["_fastmarl_plan"] is None
    x = torch.randn(5, 3, N_IN)
    theirs.eval(), ours.eval()
    assert torch.equal(ours(x), theirs(x))


def test_wrong_agent_count_is_a_clear_error():
    _, ours = pair(3, True, False, 1)
    with pytest.raises(ValueError, match=r"expected input with shape\[-2\]=3"):
        ours(torch.randn(4, 2, N_IN))


@pytest.mark.parametrize("share_params", [True, False])
def test_to_module_swap_takes_effect(share_params):
    # What TorchRL's functional losses and target networks do: swap other parameters in.
    theirs, ours = pair(3, share_params, False, 2)
    other = TensorDict.from_module(ours).data.clone().apply(lambda p: p * 0.5 + 0.1)
    x = torch.randn(6, 3, N_IN)
    with other.to_module(theirs):
        expected = theirs(x)
    with other.to_module(ours):
        swapped = ours(x)
    assert_close(swapped, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(ours(x), swapped)  # and back to its own parameters afterwards
    assert_close(ours(x), theirs(x), atol=1e-6, rtol=1e-5)


def test_params_swap_equals_to_module():
    # MLPParamsSwap (QMixerLoss's target-network swap) against TensorDict.to_module.
    mlp = TensorDictModule(MultiAgentMLP(N_IN, N_OUT, 3, centralized=False, share_params=True, depth=2, num_cells=8),
                           in_keys=[("agents", "observation")], out_keys=[("agents", "action_value")])
    net = SafeSequential(mlp, QValueModule(action_value_key=("agents", "action_value"), action_space="categorical",
                                           out_keys=[("agents", "action"), ("agents", "action_value"),
                                                     ("agents", "chosen_action_value")]))
    params = TensorDict.from_module(net, as_module=True)
    swap = MLPParamsSwap.build(net, params)
    assert swap is not None
    target = params.data.clone().apply(lambda p: p * -0.7)
    td = TensorDict({("agents", "observation"): torch.randn(5, 3, N_IN)}, [5])
    with target.to_module(net):
        expected = net(td.clone())[("agents", "action_value")]
    saved = swap.bind(target)
    try:
        got = net(td.clone())[("agents", "action_value")]
    finally:
        swap.restore(saved)
    assert torch.equal(got, expected)
    assert not torch.equal(net(td.clone())[("agents", "action_value")], expected)
    # A network with parameters outside fastmarl MLPs is not handled (to_module then).
    other = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert MLPParamsSwap.build(other, TensorDict.from_module(other)) is None


def test_compiles_without_graph_break():
    from torch._dynamo.utils import counters

    _, ours = pair(3, False, True, 2)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(ours, backend="eager", fullgraph=True)
    x = torch.randn(6, 3, N_IN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            out = compiled(x)
    # Traced, the bias is added apart from the GEMM and tanh is 2 sigmoid(2x) - 1 (fastmarl's
    # MultiAgentMLP under compile on the CPU): the same values to float32 rounding.
    assert_close(out, ours(x), atol=1e-6, rtol=1e-6)
    assert sum(counters["graph_break"].values()) == 0
    assert counters["stats"]["unique_graphs"] == 1
