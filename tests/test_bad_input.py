"""Bad input across the public API: each case raises an error whose message names the argument
and the expected shape, type or range (never a wrong number, a traceback from inside a kernel
or a matmul, or a silent broadcast).

One table, one row per case: ``(id, call, exception, regex)``; the regex must match the message
(``re.search``). The per-op files hold more (``test_gae.py``, ``test_ppo.py``,
``test_qmix_module.py``, ``test_update.py``...); the cases here are the ones the issue-12 sweep
found or added, plus one of each kind for every public entry point so that the table reads as
the API's input contract.
"""

from __future__ import annotations

import pytest
import torch
from ppo_cases import KEYS, make_actor, make_batch, make_critic
from qmix_cases import make_params
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import QValueModule, SafeSequential

from fastmarl import UpdateStep, make_optimizer
from fastmarl.functional import (
    generalized_advantage_estimate,
    ppo_clip_loss,
    ppo_clip_loss_with_bounds,
    ppo_critic_loss,
    qmix_mixer,
)
from fastmarl.modules import MultiAgentMLP, QMixer, VDNMixer
from fastmarl.objectives import GAE, ClipPPOLoss, IPPOLoss, MAPPOLoss, MultiAgentGAE, QMixerLoss


def randn(*shape, **kwargs):
    return torch.randn(*shape, **kwargs)


def flags(*shape):
    return torch.zeros(*shape, dtype=torch.bool)


# --------------------------------------------------------------------------- builders


def gae(**changes):
    args = dict(gamma=0.99, lmbda=0.95, state_value=randn(4, 10, 3, 1), next_state_value=randn(4, 10, 3, 1),
                reward=randn(4, 10, 3, 1), done=flags(4, 10, 3, 1), terminated=flags(4, 10, 3, 1), time_dim=-3)
    args.update(changes)
    return generalized_advantage_estimate(**args)


def clip(**changes):
    args = dict(log_prob=randn(8, 3), prev_log_prob=randn(8, 3), advantage=randn(8, 3, 1))
    args.update(changes)
    return ppo_clip_loss(args.pop("log_prob"), args.pop("prev_log_prob"), args.pop("advantage"), **args)


def clip_bounds_call(low, high):
    return ppo_clip_loss_with_bounds(randn(8, 3), randn(8, 3), randn(8, 3, 1), low, high)


def critic(**changes):
    args = dict(value=randn(8, 3, 1), target=randn(8, 3, 1))
    args.update(changes)
    return ppo_critic_loss(args.pop("value"), args.pop("target"), **args)


PARAMS = make_params(3, 8, 5)


def mix(q=None, state=None, params=PARAMS):
    return qmix_mixer(randn(4, 3) if q is None else q, randn(4, 5) if state is None else state, params)


def mlp(**changes):
    kwargs = dict(n_agent_inputs=4, n_agent_outputs=2, n_agents=3, centralized=False, share_params=True,
                  depth=1, num_cells=8)
    kwargs.update(changes)
    return MultiAgentMLP(**kwargs)


def ppo_loss(cls=MAPPOLoss, **kwargs):
    loss = cls(make_actor(), make_critic(), **kwargs)
    loss.set_keys(**KEYS)
    return loss


def batch_with(key, value):
    td = make_batch(8)
    td.set(key, value)
    return td


def batch_without(key):
    td = make_batch(8)
    td.del_(key)
    return td


def estimator(cls=GAE, **kwargs):
    return cls(gamma=kwargs.pop("gamma", 0.9), lmbda=kwargs.pop("lmbda", 0.9), value_network=make_critic(), **kwargs)


def qmix_loss():
    q_module = TensorDictModule(nn.Linear(4, 3), in_keys=[("agents", "observation")],
                                out_keys=[("agents", "action_value")])
    value_module = QValueModule(action_value_key=("agents", "action_value"), action_space="categorical",
                                out_keys=[("agents", "action"), ("agents", "action_value"),
                                          ("agents", "chosen_action_value")])
    mixer = TensorDictModule(QMixer((5,), 8, 2), in_keys=[("agents", "chosen_action_value"), "state"],
                             out_keys=["chosen_action_value"])
    return QMixerLoss(SafeSequential(q_module, value_module), mixer, action_space="categorical")


def qmix_data(state_shape=(5,)):
    def part():
        return TensorDict({"agents": TensorDict({"observation": randn(6, 2, 4)}, [6, 2]),
                           "state": randn(6, *state_shape)}, [6])
    td = part()
    td.set(("agents", "action"), torch.randint(3, (6, 2)))
    nxt = part()
    nxt.update({"reward": randn(6, 1), "done": flags(6, 1), "terminated": flags(6, 1)})
    td.set("next", nxt)
    return td


def update_step(**kwargs):
    loss = ppo_loss()
    return UpdateStep(loss, make_optimizer(loss.parameters(), 1e-3), **kwargs)


# --------------------------------------------------------------------------- the table

CASES = [
    # ---- generalized_advantage_estimate
    ("gae-gamma-int-tensor", lambda: gae(gamma=torch.tensor(1)), TypeError,
     r"gamma must be a float or a floating-point tensor, got dtype torch.int64"),
    ("gae-gamma-None", lambda: gae(gamma=None), TypeError, r"gamma must be a float in \[0, 1\] or a tensor, got NoneType"),
    ("gae-lmbda-bool", lambda: gae(lmbda=True), TypeError, r"lmbda must be a float in \[0, 1\] or a tensor, got bool"),
    ("gae-lmbda-tensor-above-1", lambda: gae(lmbda=torch.full((1, 10, 1, 1), 1.5)), ValueError,
     r"lmbda must lie in \[0, 1\], got values in \[1.5, 1.5\]"),
    ("gae-gamma-other-device", lambda: gae(gamma=torch.tensor(0.9, device="meta")), ValueError,
     r"gamma is on meta but state_value is on cpu"),
    ("gae-time-dim-float", lambda: gae(time_dim=1.0), ValueError,
     r"time_dim=1.0 is out of range for state_value of shape \(4, 10, 3, 1\)"),
    ("gae-time-dim-below", lambda: gae(time_dim=-5), ValueError, r"time_dim=-5 is out of range for state_value"),
    ("gae-state-value-0-dim", lambda: gae(state_value=torch.tensor(1.0)), ValueError,
     r"state_value is 0-dim; expected \[\*B, T, \*F\]"),
    ("gae-done-missing-agent-dim", lambda: gae(done=flags(4, 10, 3)), ValueError,
     r"done has shape \(4, 10, 3\), expected state_value's \[\*B, T, \*F\] = \(4, 10, 3, 1\)"),
    ("gae-terminated-other-T", lambda: gae(terminated=flags(4, 9, 3, 1)), ValueError,
     r"terminated has shape \(4, 9, 3, 1\), expected state_value's \[\*B, T, \*F\] = \(4, 10, 3, 1\) with T at dim 1"),
    ("gae-next-value-int", lambda: gae(next_state_value=randn(4, 10, 3, 1).long()), TypeError,
     r"next_state_value must be float16, bfloat16, float32 or float64, got torch.int64"),
    ("gae-done-list", lambda: gae(done=[0]), TypeError, r"done must be a torch.Tensor, got list"),
    # ---- ppo_clip_loss
    ("clip-epsilon-above-1", lambda: clip(clip_epsilon=1.5), ValueError, r"clip_epsilon \(low\) must lie in \[0, 1\), got 1.5"),
    ("clip-epsilon-1", lambda: clip(clip_epsilon=1.0), ValueError, r"clip_epsilon \(low\) must lie in \[0, 1\), got 1.0"),
    ("clip-epsilon-negative", lambda: clip(clip_epsilon=-0.2), ValueError, r"clip_epsilon \(low\) must lie in \[0, 1\), got -0.2"),
    ("clip-epsilon-nan", lambda: clip(clip_epsilon=float("nan")), ValueError, r"clip_epsilon \(low\) must lie in \[0, 1\), got nan"),
    ("clip-epsilon-high-negative", lambda: clip(clip_epsilon=(0.1, -0.3)), ValueError,
     r"clip_epsilon \(high\) must be >= 0, got -0.3"),
    ("clip-epsilon-tensor-above-1", lambda: clip(clip_epsilon=torch.tensor(1.5)), ValueError,
     r"clip_epsilon \(low\) must lie in \[0, 1\), got 1.5"),
    ("clip-epsilon-triple", lambda: clip(clip_epsilon=(0.1, 0.2, 0.3)), ValueError,
     r"clip_epsilon must be a float or a pair \(low, high\), got \(0.1, 0.2, 0.3\)"),
    ("clip-epsilon-str", lambda: clip(clip_epsilon="0.2"), TypeError,
     r"clip_epsilon must be a float, a scalar tensor or a pair of them, got str"),
    ("clip-epsilon-vector", lambda: clip(clip_epsilon=torch.tensor([0.1, 0.2])), ValueError,
     r"clip_epsilon must be a scalar, got a tensor of shape \(2,\)"),
    ("clip-epsilon-int-tensor", lambda: clip(clip_epsilon=torch.tensor(0)), TypeError,
     r"clip_epsilon must be a float or a floating-point tensor, got dtype torch.int64"),
    ("clip-exclude-dim-out-of-range", lambda: clip(log_prob=randn(8, 4, 3), prev_log_prob=randn(8, 4, 3),
                                                   advantage=randn(8, 4, 3, 1), normalize_advantage=True,
                                                   normalize_advantage_exclude_dims=(5,)), ValueError,
     r"normalize_advantage_exclude_dims=\(5,\): 5 is not a dim of the advantage of shape \(8, 4, 3, 1\) "
     r"\(expected integers in \[-4, 4\)\)"),
    ("clip-exclude-dim-below-range", lambda: clip(normalize_advantage=True, normalize_advantage_exclude_dims=(-4,)),
     ValueError, r"-4 is not a dim of the advantage of shape \(8, 3, 1\) \(expected integers in \[-3, 3\)\)"),
    ("clip-exclude-dim-repeated", lambda: clip(log_prob=randn(8, 4, 3), prev_log_prob=randn(8, 4, 3),
                                               advantage=randn(8, 4, 3, 1), normalize_advantage=True,
                                               normalize_advantage_exclude_dims=(1, -3)), ValueError,
     r"normalize_advantage_exclude_dims=\(1, -3\) names a dim twice for an advantage of shape \(8, 4, 3, 1\)"),
    ("clip-exclude-dim-float", lambda: clip(normalize_advantage=True, normalize_advantage_exclude_dims=(1.0,)),
     ValueError, r"1.0 is not a dim of the advantage .* \(expected integers in \[-3, 3\)\)"),
    ("clip-exclude-dims-not-a-sequence", lambda: clip(normalize_advantage=True, normalize_advantage_exclude_dims=-2),
     TypeError, r"normalize_advantage_exclude_dims must be a sequence of ints \(e.g. \(-2,\)\), got int -2"),
    ("clip-log-prob-list", lambda: clip(log_prob=[0.1]), TypeError, r"log_prob must be a torch.Tensor, got list"),
    ("clip-log-prob-0-dim", lambda: clip(log_prob=torch.tensor(0.0), prev_log_prob=torch.tensor(0.0),
                                         advantage=randn(1)), ValueError,
     r"log_prob is 0-dim; expected \[\*S\] with a batch dim first"),
    ("clip-flat-advantage", lambda: clip(advantage=randn(8, 3)), ValueError,
     r"advantage has shape \(8, 3\), expected \[\*S, 1\] = \(8, 3, 1\) .* outer product over samples"),
    ("clip-prev-log-prob-int", lambda: clip(prev_log_prob=randn(8, 3).long()), TypeError,
     r"prev_log_prob must be float16, bfloat16, float32 or float64, got torch.int64"),
    # ---- ppo_clip_loss_with_bounds (ClipPPOLoss's log-space bounds)
    ("bounds-low-nan", lambda: clip_bounds_call(torch.tensor(float("nan")), torch.tensor(0.1)), ValueError,
     r"clip_low = log1p\(-ε_low\) must lie in \(-inf, 0\] \(clip_epsilon \(low\) in \[0, 1\)\), got nan"),
    ("bounds-high-negative", lambda: clip_bounds_call(torch.tensor(-0.1), torch.tensor(-0.1)), ValueError,
     r"clip_high = log1p\(ε_high\) must be >= 0 \(clip_epsilon \(high\) >= 0\)"),
    ("bounds-python-float", lambda: clip_bounds_call(-0.2, 0.2), TypeError,
     r"clip_low must be a one-element floating-point tensor \(a log-space clip bound\), got float"),
    ("bounds-int-tensor", lambda: clip_bounds_call(torch.tensor(0), torch.tensor(0)), TypeError,
     r"clip_low must be a one-element floating-point tensor .* dtype torch.int64"),
    # ---- ppo_critic_loss
    ("critic-value-0-dim", lambda: critic(value=torch.tensor(1.0), target=torch.tensor(1.0)), ValueError,
     r"value of shape \(\) must have a batch dim and at least one sample"),
    ("critic-value-empty", lambda: critic(value=randn(0, 3, 1), target=randn(0, 3, 1)), ValueError,
     r"value of shape \(0, 3, 1\) must have a batch dim and at least one sample"),
    ("critic-old-value-shape", lambda: critic(old_value=randn(8, 2, 1), clip_value=0.2), ValueError,
     r"old_value has shape \(8, 2, 1\), expected value's \(8, 3, 1\)"),
    ("critic-old-value-int", lambda: critic(old_value=randn(8, 3, 1).long(), clip_value=0.2), TypeError,
     r"old_value must be float16, bfloat16, float32 or float64, got torch.int64"),
    ("critic-old-value-other-device", lambda: critic(old_value=randn(8, 3, 1, device="meta"), clip_value=0.2),
     ValueError, r"old_value is on meta but the log-prob is on cpu|old_value is on meta"),
    ("critic-clip-value-negative", lambda: critic(old_value=randn(8, 3, 1), clip_value=-0.2), ValueError,
     r"clip_value must be >= 0 \(the value-clipping range ±clip_value\), got -0.2"),
    ("critic-clip-value-vector", lambda: critic(old_value=randn(8, 3, 1), clip_value=torch.tensor([0.1, 0.2])),
     ValueError, r"clip_value must be a scalar, got a tensor of shape \(2,\)"),
    ("critic-clip-value-str", lambda: critic(old_value=randn(8, 3, 1), clip_value="0.2"), TypeError,
     r"clip_value must be a float or a one-element tensor, got str"),
    ("critic-coeff-str", lambda: critic(coeff="a"), TypeError, r"coeff must be a float or a one-element tensor, got str"),
    ("critic-coeff-int-tensor", lambda: critic(coeff=torch.tensor(1)), TypeError,
     r"coeff must be a float or a floating-point tensor, got dtype torch.int64"),
    ("critic-value-list", lambda: critic(value=[1.0]), TypeError, r"value must be a torch.Tensor, got list"),
    # ---- qmix_mixer
    ("mixer-q-1-dim", lambda: mix(q=randn(3)), ValueError, r"q has shape \(3,\), expected a non-empty \[B, n\]"),
    ("mixer-q-empty", lambda: mix(q=randn(0, 3), state=randn(0, 5)), ValueError,
     r"q has shape \(0, 3\), expected a non-empty \[B, n\]"),
    ("mixer-state-features", lambda: mix(state=randn(4, 6)), ValueError,
     r"state has shape \(4, 6\), expected \[B, S\] = \(4, 5\)"),
    ("mixer-params-count", lambda: mix(params=list(PARAMS)[:9]), ValueError,
     r"params must hold 10 tensors \(one-layer hypernetworks\) or 14 \(two-layer\), got 9"),
    ("mixer-params-not-a-sequence", lambda: mix(params=3), TypeError,
     r"params must be a QMixParams or a sequence of its 10 or 14 tensors, got int"),
    ("mixer-param-shape", lambda: mix(params=PARAMS._replace(hyper_w1_weight=randn(23, 5))), ValueError,
     r"params.hyper_w1_weight has shape \(23, 5\), expected \(24, 5\) for q's n=3 agents, state dim S=5 and "
     r"mixing width E=8"),
    ("mixer-agents-mismatch", lambda: mix(q=randn(4, 4)), ValueError,
     r"params.hyper_w1_weight has shape \(24, 5\), expected \(32, 5\) for q's n=4 agents"),
    ("mixer-param-int", lambda: mix(params=PARAMS._replace(v1_weight=PARAMS.v1_weight.long())), TypeError,
     r"params.v1_weight must be float16, bfloat16, float32 or float64, got torch.int64"),
    ("mixer-param-missing", lambda: mix(params=PARAMS._replace(v1_weight=None)), TypeError,
     r"params.v1_weight must be a torch.Tensor, got NoneType"),
    ("mixer-state-list", lambda: mix(state=[1.0]), TypeError, r"state must be a torch.Tensor, got list"),
    # ---- QMixer, VDNMixer
    ("QMixer-state-shape-zero", lambda: QMixer((0,), 8, 3), ValueError,
     r"state_shape must be a tuple of positive integers .* got \(0,\)"),
    ("QMixer-state-shape-negative", lambda: QMixer((-1,), 8, 3), ValueError,
     r"state_shape must be a tuple of positive integers .* got \(-1,\)"),
    ("QMixer-state-shape-int", lambda: QMixer(5, 8, 3), ValueError,
     r"state_shape must be a tuple of positive integers \(the state's shape without batch dims, e.g. \(37,\)"),
    ("QMixer-embed-zero", lambda: QMixer((5,), 0, 3), ValueError, r"mixing_embed_dim must be a positive integer, got 0"),
    ("QMixer-n-agents-str", lambda: QMixer((5,), 8, "3"), ValueError, r"n_agents must be a positive integer, got '3'"),
    ("QMixer-hypernet-embed-zero", lambda: QMixer((5,), 8, 3, hypernet_layers=2, hypernet_embed=0), ValueError,
     r"hypernet_embed must be a positive integer, got 0"),
    ("QMixer-three-inputs", lambda: QMixer((5,), 8, 3)(randn(4, 3, 1), randn(4, 5), randn(4, 5)), ValueError,
     r"QMixer takes \(chosen_action_value, state\), got 3 input\(s\)"),
    ("QMixer-image-state-shape", lambda: QMixer((8, 8, 3), 8, 3)(randn(4, 3, 1), randn(4, 8, 8, 4)), ValueError,
     r"state has shape \(4, 8, 8, 4\), expected \[\*B, \*state_shape\] = \(4, 8, 8, 3\)"),
    ("VDNMixer-n-agents-zero", lambda: VDNMixer(0), ValueError, r"n_agents must be a positive integer, got 0"),
    ("VDNMixer-wrong-agents", lambda: VDNMixer(3)(randn(4, 2, 1)), ValueError,
     r"expected chosen_action_value with last 2 dimensions \(3, 1\), but got torch.Size\(\[4, 2, 1\]\)"),
    # ---- MultiAgentMLP
    ("MLP-n-agents-zero", lambda: mlp(n_agents=0), ValueError, r"n_agents must be a positive integer, got 0"),
    ("MLP-outputs-zero", lambda: mlp(n_agent_outputs=0), ValueError, r"n_agent_outputs must be a positive integer, got 0"),
    ("MLP-depth-negative", lambda: mlp(depth=-1), ValueError,
     r"depth must be a non-negative integer \(the number of hidden layers\), got -1"),
    ("MLP-input-features", lambda: mlp()(randn(5, 3, 5)), ValueError,
     r"MultiAgentMLP input has shape \(5, 3, 5\), expected \[\*B, n_agents, n_agent_inputs\] = \[\*B, 3, 4\]"),
    ("MLP-input-features-centralised-per-agent", lambda: mlp(centralized=True, share_params=False)(randn(5, 3, 5)),
     ValueError, r"MultiAgentMLP input has shape \(5, 3, 5\), expected .* = \[\*B, 3, 4\]"),
    ("MLP-input-1-dim", lambda: mlp()(randn(4)), ValueError, r"MultiAgentMLP input has shape \(4,\), expected"),
    ("MLP-input-int", lambda: mlp()(randn(5, 3, 4).long()), TypeError,
     r"MultiAgentMLP input must be a floating-point tensor, got torch.int64"),
    ("MLP-input-agents", lambda: mlp()(randn(5, 2, 4)), ValueError,
     r"Multi-agent network expected input with shape\[-2\]=3, but got torch.Size\(\[5, 2, 4\]\)"),
    # ---- ClipPPOLoss / MAPPOLoss / IPPOLoss
    ("ClipPPOLoss-epsilon-above-1", lambda: ppo_loss(ClipPPOLoss, clip_epsilon=1.5), ValueError,
     r"clip_epsilon \(low\) must lie in \[0, 1\), got 1.5"),
    ("IPPOLoss-epsilon-negative", lambda: ppo_loss(IPPOLoss, clip_epsilon=-0.1), ValueError,
     r"clip_epsilon \(low\) must lie in \[0, 1\), got -0.1"),
    ("MAPPOLoss-reduction", lambda: ppo_loss(reduction="avg")(make_batch(8)), ValueError,
     r"reduction must be one of \['mean', 'sum', 'none'\], got 'avg'"),
    ("MAPPOLoss-critic-type", lambda: ppo_loss(loss_critic_type="huber")(make_batch(8)), ValueError,
     r"loss_critic_type must be one of \['l1', 'l2', 'smooth_l1'\], got 'huber'"),
    ("MAPPOLoss-clip-value-negative", lambda: ppo_loss(clip_value=-0.2)(make_batch(8)), ValueError,
     r"clip_value must be >= 0"),
    ("MAPPOLoss-exclude-dim", lambda: ppo_loss(normalize_advantage=True, normalize_advantage_exclude_dims=(7,))(
        make_batch(8)), ValueError, r"normalize_advantage_exclude_dims=\(7,\): 7 is not a dim of the advantage of shape \(8, 3, 1\)"),
    ("MAPPOLoss-advantage-agents", lambda: ppo_loss()(batch_with("advantage", randn(8, 2, 1))), ValueError,
     r"advantage has shape \(8, 2, 1\), expected \[\*S, 1\] = \(8, 3, 1\)"),
    ("MAPPOLoss-advantage-int", lambda: ppo_loss()(batch_with("advantage", torch.zeros(8, 3, 1, dtype=torch.long))),
     TypeError, r"advantage must be float16, bfloat16, float32 or float64, got torch.int64"),
    ("MAPPOLoss-value-target-agents", lambda: ppo_loss()(batch_with("value_target", randn(8, 2, 1))), ValueError,
     r"target has shape \(8, 2, 1\), expected value's \(8, 3, 1\)"),
    ("MAPPOLoss-log-prob-missing", lambda: ppo_loss()(batch_without(("agents", "sample_log_prob"))), KeyError,
     r"Couldn't find the log-prob \('agents', 'sample_log_prob'\) in the input data"),
    # ---- GAE / MultiAgentGAE estimators
    ("GAE-gamma-above-1", lambda: estimator(gamma=1.5), ValueError, r"gamma must lie in \[0, 1\], got values in \[1.5, 1.5\]"),
    ("MultiAgentGAE-lmbda-negative", lambda: estimator(MultiAgentGAE, lmbda=-0.5), ValueError,
     r"lmbda must lie in \[0, 1\], got values in \[-0.5, -0.5\]"),
    # ---- QMixerLoss
    ("QMixerLoss-state-missing", lambda: qmix_loss()(qmix_data().exclude("state")), KeyError,
     r'key "state" not found in TensorDict'),
    ("QMixerLoss-state-shape", lambda: qmix_loss()(qmix_data(state_shape=(6,))), ValueError,
     r"state has shape \(6, 6\), expected \[\*B, \*state_shape\] = \(6, 5\)"),
    # ---- UpdateStep
    ("UpdateStep-max-grad-norm-negative", lambda: update_step(max_grad_norm=-1.0), ValueError,
     r"max_grad_norm must be a positive number or None, got -1.0"),
    ("UpdateStep-loss-keys-str", lambda: update_step(loss_keys="loss_objective"), TypeError,
     r"loss_keys must be a non-empty sequence of keys, got 'loss_objective'"),
    ("UpdateStep-loss-keys-absent", lambda: update_step(loss_keys=["loss_foo"])(make_batch(8)), KeyError,
     r"loss_keys \['loss_foo'\] are not all entries of the loss output"),
    ("UpdateStep-minibatch-tensor", lambda: update_step()(torch.zeros(3)), TypeError,
     r"minibatch must be a TensorDict, got Tensor"),
    ("UpdateStep-after-step", lambda: update_step(after_step=3), TypeError, r"after_step must be callable or None, got int"),
]


@pytest.mark.parametrize("call,error,match", [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_bad_input_names_the_argument_and_the_expectation(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_the_table_has_fifty_distinct_cases():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 50
