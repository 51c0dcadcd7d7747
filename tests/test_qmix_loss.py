"""The drop-in QMixerLoss: TorchRL parity of the loss, its gradients and the TD-error priority
(delay_value targets, TD estimators, action spaces), after target updates, with other mixers,
custom keys, and the objectives page's QMIX example by import swap."""

import pytest
import torch
from qmix_cases import S, scaled_close
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import QValueModule, SafeSequential
from torchrl.modules.models.multiagent import QMixer as TorchRLQMixer
from torchrl.modules.models.multiagent import VDNMixer as TorchRLVDNMixer
from torchrl.objectives import SoftUpdate, ValueEstimators
from torchrl.objectives.multiagent import QMixerLoss as TorchRLQMixerLoss

from fastmarl.modules import QMixer, VDNMixer
from fastmarl.objectives import QMixerLoss

N_AGENTS, OBS, N_ACTIONS, BATCH = 3, 10, 4, 33


def _build_loss(mixer_cls, loss_cls, *, action_space="categorical", seed=1, **loss_kwargs):
    torch.manual_seed(seed)
    q_module = TensorDictModule(nn.Linear(OBS, N_ACTIONS), in_keys=[("agents", "observation")],
                                out_keys=[("agents", "action_value")])
    value_module = QValueModule(
        action_value_key=("agents", "action_value"),
        out_keys=[("agents", "action"), ("agents", "action_value"), ("agents", "chosen_action_value")],
        action_space=action_space,
    )
    qnet = SafeSequential(q_module, value_module)
    if mixer_cls in (VDNMixer, TorchRLVDNMixer):
        module, in_keys = mixer_cls(n_agents=N_AGENTS, device="cpu"), [("agents", "chosen_action_value")]
    else:
        module, in_keys = mixer_cls((S,), 8, N_AGENTS, "cpu"), [("agents", "chosen_action_value"), "state"]
    mixer = TensorDictModule(module, in_keys=in_keys, out_keys=["chosen_action_value"])
    return loss_cls(qnet, mixer, action_space=action_space, **loss_kwargs)


def _loss_data(action_space="categorical", seed=2):
    g = torch.Generator().manual_seed(seed)
    action = torch.randint(N_ACTIONS, (BATCH, N_AGENTS), generator=g)
    if action_space == "one-hot":
        action = torch.nn.functional.one_hot(action, N_ACTIONS)
    return TensorDict({
        "agents": TensorDict({"observation": torch.randn(BATCH, N_AGENTS, OBS, generator=g),
                              "action": action}, [BATCH, N_AGENTS]),
        "state": torch.randn(BATCH, S, generator=g),
        "next": TensorDict({
            "agents": TensorDict({"observation": torch.randn(BATCH, N_AGENTS, OBS, generator=g)},
                                 [BATCH, N_AGENTS]),
            "state": torch.randn(BATCH, S, generator=g),
            "reward": torch.randn(BATCH, 1, generator=g),
            "done": torch.rand(BATCH, 1, generator=g) < 0.2,
            "terminated": torch.rand(BATCH, 1, generator=g) < 0.1,
        }, [BATCH]),
    }, [BATCH])


def _loss_step(loss, data):
    out = loss(data)
    loss.zero_grad()
    out["loss"].backward()
    return out, {k: p.grad for k, p in loss.named_parameters() if p.grad is not None}


def _assert_losses_agree(expected_loss, actual_loss, expected_data, actual_data, rel, priority="td_error"):
    (e_out, e_grads), (a_out, a_grads) = expected_loss, actual_loss
    assert a_out.keys() == e_out.keys() == {"loss"}
    scaled_close(a_out["loss"], e_out["loss"], rel, "loss")
    assert actual_data[priority].shape == expected_data[priority].shape == (BATCH, 1)
    scaled_close(actual_data[priority], expected_data[priority], 10 * rel, "priority")
    assert a_grads.keys() == e_grads.keys() and e_grads
    for name, g in e_grads.items():
        scaled_close(a_grads[name], g, 10 * rel, name)


@pytest.mark.parametrize("delay_value", [True, False])
@pytest.mark.parametrize("estimator", [None, ValueEstimators.TD1, ValueEstimators.TDLambda])
@pytest.mark.parametrize("action_space,loss_function", [("categorical", "l2"), ("one-hot", "smooth_l1")])
def test_loss_matches_torchrl(delay_value, estimator, action_space, loss_function, monkeypatch):
    kwargs = dict(action_space=action_space, delay_value=delay_value, loss_function=loss_function)
    theirs = _build_loss(TorchRLQMixer, TorchRLQMixerLoss, **kwargs)
    ours = _build_loss(QMixer, QMixerLoss, **kwargs)
    if estimator is not None:
        theirs.make_value_estimator(estimator, gamma=0.9)
        ours.make_value_estimator(estimator, gamma=0.9)
    if delay_value:
        # Target networks that differ from the online ones, as after training.
        for loss in (theirs, ours):
            with torch.no_grad():
                for p in loss.target_mixer_network_params.values(True, True):
                    p.mul_(0.5)
    assert ours.in_keys == theirs.in_keys and ours.out_keys == theirs.out_keys
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    fused = []
    monkeypatch.setattr(QMixerLoss, "_mix", lambda self, *a, _f=QMixerLoss._mix: fused.append(1) or _f(self, *a))
    expected_data, actual_data = _loss_data(action_space), _loss_data(action_space)
    expected = _loss_step(theirs, expected_data)
    actual = _loss_step(ours, actual_data)
    assert len(fused) == 2, "the online and target mixers should run as fused calls from the loss"
    _assert_losses_agree(expected, actual, expected_data, actual_data, 2e-6)


def test_loss_after_target_update_and_optimizer_step():
    theirs = _build_loss(TorchRLQMixer, TorchRLQMixerLoss, delay_value=True)
    ours = _build_loss(QMixer, QMixerLoss, delay_value=True)
    for loss in (theirs, ours):
        updater = SoftUpdate(loss, eps=0.5)
        optim = torch.optim.SGD(loss.parameters(), lr=0.1)
        for step in range(2):
            out = loss(_loss_data(seed=10 + step))
            optim.zero_grad()
            out["loss"].backward()
            optim.step()
            updater.step()
    expected_data, actual_data = _loss_data(seed=20), _loss_data(seed=20)
    _assert_losses_agree(_loss_step(theirs, expected_data), _loss_step(ours, actual_data),
                         expected_data, actual_data, 2e-5)


@pytest.mark.parametrize("mixer_cls", [TorchRLQMixer, TorchRLVDNMixer, VDNMixer])
def test_loss_with_other_mixers_is_torchrls(mixer_cls):
    theirs = _build_loss(mixer_cls, TorchRLQMixerLoss)
    ours = _build_loss(mixer_cls, QMixerLoss)
    assert ours._fused_forward is None
    expected_data, actual_data = _loss_data(), _loss_data()
    (e_out, e_grads), (a_out, a_grads) = _loss_step(theirs, expected_data), _loss_step(ours, actual_data)
    assert torch.equal(a_out["loss"], e_out["loss"])
    assert torch.equal(actual_data["td_error"], expected_data["td_error"])
    assert all(torch.equal(a_grads[k], g) for k, g in e_grads.items())


def test_loss_custom_priority_key_and_fastmarl_mixer_in_torchrl_loss():
    theirs = _build_loss(TorchRLQMixer, TorchRLQMixerLoss)
    ours = _build_loss(QMixer, QMixerLoss)
    for loss in (theirs, ours):
        loss.set_keys(priority="prio")
    expected_data, actual_data = _loss_data(), _loss_data()
    _assert_losses_agree(_loss_step(theirs, expected_data), _loss_step(ours, actual_data),
                         expected_data, actual_data, 2e-6, priority="prio")
    # A fastmarl QMixer in TorchRL's own loss: the module swap path, same numbers.
    mixed = _build_loss(QMixer, TorchRLQMixerLoss)
    mixed.set_keys(priority="prio")
    mixed_data = _loss_data()
    _assert_losses_agree(_loss_step(theirs, expected_data), _loss_step(mixed, mixed_data),
                         expected_data, mixed_data, 2e-6, priority="prio")


SEED_PAGE_QMIX_EXAMPLE = """
import torch
from torch import nn
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.modules import QValueModule, SafeSequential
{imports}

n_agents, obs_dim, n_actions = 4, 10, 3
state_shape = (64, 64, 3)

# Per-agent Q-network
q_module = TensorDictModule(
    nn.Linear(obs_dim, n_actions),
    in_keys=[("agents", "observation")],
    out_keys=[("agents", "action_value")],
)
value_module = QValueModule(
    action_value_key=("agents", "action_value"),
    out_keys=[
        ("agents", "action"),
        ("agents", "action_value"),
        ("agents", "chosen_action_value"),
    ],
    action_space="categorical",
)
qnet = SafeSequential(q_module, value_module)

# QMIX mixer
qmixer = TensorDictModule(
    module=QMixer(
        state_shape=state_shape,
        mixing_embed_dim=32,
        n_agents=n_agents,
        device="cpu",
    ),
    in_keys=[("agents", "chosen_action_value"), "state"],
    out_keys=["chosen_action_value"],
)

loss = QMixerLoss(qnet, qmixer, action_space="categorical")

# Data with agent dimension and global state
td = TensorDict({
    "agents": TensorDict(
        {"observation": torch.zeros(32, n_agents, obs_dim)}, [32, n_agents]
    ),
    "state": torch.zeros(32, *state_shape),
    "next": TensorDict({
        "agents": TensorDict(
            {"observation": torch.zeros(32, n_agents, obs_dim)}, [32, n_agents]
        ),
        "state": torch.zeros(32, *state_shape),
        "reward": torch.zeros(32, 1),
        "done": torch.zeros(32, 1, dtype=torch.bool),
        "terminated": torch.zeros(32, 1, dtype=torch.bool),
    }, [32]),
}, [32])

loss_td = loss(qnet(td))
print(loss_td["loss"])
"""


def test_seed_page_qmix_example_by_import_swap(capsys):
    # The TorchRL multi-agent objectives page's "Complete QMIX Example", verbatim but for the
    # two imports; its state is a 64x64x3 image, flattened by the mixer as TorchRL does.
    results = {}
    for name, imports in [
        ("torchrl", "from torchrl.modules.models.multiagent import QMixer\n"
                    "from torchrl.objectives.multiagent import QMixerLoss"),
        ("fastmarl", "from fastmarl.modules.models.multiagent import QMixer\n"
                     "from fastmarl.objectives.multiagent import QMixerLoss"),
    ]:
        torch.manual_seed(0)
        namespace = {}
        exec(SEED_PAGE_QMIX_EXAMPLE.replace("{imports}", imports), namespace)
        results[name] = namespace
    assert isinstance(results["fastmarl"]["loss"], QMixerLoss)
    loss = results["fastmarl"]["loss"]
    assert loss._fused_forward is not None and loss._fast_target()
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and all(line.startswith("tensor(") for line in printed)
    expected, actual = results["torchrl"]["loss_td"]["loss"], results["fastmarl"]["loss_td"]["loss"]
    scaled_close(actual, expected, 2e-6, "loss")
    assert expected.item() > 0  # the zero-state example still has a nonzero Bellman error
    scaled_close(results["fastmarl"]["td"]["td_error"], results["torchrl"]["td"]["td_error"], 2e-5, "td_error")


def test_reset_parameters_recursive_resets_online_and_target_networks():
    # Issue 12: the mixer kept in the loss's __dict__ for the fused call was an nn.Module there,
    # which LossModule.reset_parameters_recursive() tried to reset as one of the loss's networks
    # ("'QMixer' object has no attribute 'reset_parameters_recursive'").
    loss = _build_loss(QMixer, QMixerLoss, delay_value=True)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    torch.manual_seed(5)
    loss.reset_parameters_recursive()
    after = loss.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Every weight of the online and target Q-network and mixer is redrawn.
    assert {k for k in before if k.endswith("weight")} <= changed
    assert any("target_mixer" in k for k in changed) and any("target_local" in k for k in changed)
    assert loss._fused_forward is not None  # still the fused path, on the new parameters
    data = _loss_data()
    theirs = _build_loss(TorchRLQMixer, TorchRLQMixerLoss, delay_value=True)
    theirs.load_state_dict(loss.state_dict())
    expected_data = _loss_data()
    _assert_losses_agree(_loss_step(theirs, expected_data), _loss_step(loss, data), expected_data, data, 2e-6)


@pytest.mark.parametrize("missing", [("agents", "chosen_action_value"), "state"])
def test_missing_mixer_input_is_a_key_error_like_torchrl(missing):
    # Issue 12: the fused call passed None to the mixer (a TypeError) where TorchRL's
    # TensorDictModule raises KeyError.
    for loss_cls, mixer_cls in ((QMixerLoss, QMixer), (TorchRLQMixerLoss, TorchRLQMixer)):
        loss = _build_loss(mixer_cls, loss_cls)
        mixer = loss.mixer_network
        wrong = "other" if missing == "state" else ("agents", "other")
        mixer.in_keys = [wrong if k == missing else k for k in mixer.in_keys]
        loss = loss_cls(loss.local_value_network, mixer, action_space="categorical")
        with pytest.raises(KeyError, match="other"):
            loss(_loss_data())


def test_mixer_output_key_not_the_global_value_key_is_torchrls_key_error():
    # The mixer writes ("nested", "other") while the loss reads "chosen_action_value": TorchRL's
    # message, raised before the default value estimator is built (TorchRL's test_mixer_keys).
    for loss_cls, mixer_cls in ((QMixerLoss, QMixer), (TorchRLQMixerLoss, TorchRLQMixer)):
        loss = _build_loss(mixer_cls, loss_cls)
        mixer = TensorDictModule(loss.mixer_network.module, in_keys=loss.mixer_network.in_keys,
                                 out_keys=[("nested", "other")])
        loss = loss_cls(loss.local_value_network, mixer, action_space="categorical")
        with pytest.raises(KeyError, match='key "chosen_action_value" not found in TensorDict'):
            loss(_loss_data())
