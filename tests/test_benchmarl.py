"""fastmarl.integrations.benchmarl: BenchMARL 1.5.2 on fastmarl and on TorchRL 0.14.

- parity: the same seed, task and a few hundred frames train ``Fast{Mappo,Ippo,Qmix,Vdn}Config``
  to the parameters BenchMARL's own ``{Mappo,Ippo,Qmix,Vdn}Config`` reach (VMAS balance, navigation),
  with fastmarl's default CPU dispatch and with its fused PPO kernels forced;
- the hydra entry point runs a tiny experiment and writes BenchMARL's usual outputs;
- per-agent advantage standardisation against a float64 reference;
- ``compile_update``: the UpdateStep wiring against BenchMARL's own update loop;
- the ImportError without BenchMARL.

Needs BenchMARL (``pip install -e ".[benchmarl]" && pip install --no-deps benchmarl==1.5.2``,
as ``.ci/run`` does); without it only the ImportError tests run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile

import pytest
import torch

HAS_BENCHMARL = importlib.util.find_spec("benchmarl") is not None
needs_benchmarl = pytest.mark.skipif(
    not HAS_BENCHMARL,
    reason="BenchMARL is not installed: pip install -e '.[benchmarl]' && pip install --no-deps benchmarl==1.5.2 "
    "(.ci/run installs it)",
)
needs_hydra = pytest.mark.skipif(
    importlib.util.find_spec("hydra") is None, reason="hydra-core is not installed: pip install -e '.[benchmarl]'"
)

# Frames: 2 iterations × 200 (2 envs × 100 steps); PPO 2 passes of 2 minibatches of 100;
# off-policy 4 steps of 256 samples (QMIX's fused mixer runs from 256 samples on).
TINY = dict(
    max_n_frames=400,
    on_policy_collected_frames_per_batch=200,
    on_policy_n_envs_per_worker=2,
    on_policy_n_minibatch_iters=2,
    on_policy_minibatch_size=100,
    off_policy_collected_frames_per_batch=200,
    off_policy_n_envs_per_worker=2,
    off_policy_n_optimizer_steps=4,
    off_policy_train_batch_size=256,
    off_policy_memory_size=1000,
    # 20× BenchMARL's 5e-5, so that the parameters move far (≥ 1e-3) from where they start
    # and a wrong gradient shows far above float32 rounding.
    lr=1e-3,
    evaluation=False,
    render=False,
    loggers=[],
    create_json=False,
)
# What the parameters may differ by (float32 rounding through 4-8 Adam steps, measured ≤ 1.1e-6),
# and what they must have moved by for the comparison to mean anything.
PARITY_ATOL = 1e-5
MIN_TRAINED_CHANGE = 1e-3


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # These runs are many tiny matmuls: one thread is several times faster than two on a
    # shared 2-core machine (BenchMARL's and fastmarl's runs get the same setting).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _experiment_config(save_folder, **overrides):
    from benchmarl.experiment import ExperimentConfig

    config = ExperimentConfig.get_from_yaml()
    for key, value in {**TINY, **overrides}.items():
        setattr(config, key, value)
    config.save_folder = str(save_folder)
    return config


def _make(algorithm_config, task: str, experiment_class=None, **overrides):
    from benchmarl.environments import VmasTask
    from benchmarl.experiment import Experiment
    from benchmarl.models.mlp import MlpConfig

    experiment_class = experiment_class or Experiment
    return experiment_class(
        task=getattr(VmasTask, task.upper()).get_from_yaml(),
        algorithm_config=algorithm_config,
        model_config=MlpConfig.get_from_yaml(),
        seed=0,
        config=_experiment_config(tempfile.mkdtemp(prefix="fastmarl-benchmarl-"), **overrides),
    )


def _params(experiment) -> dict:
    # Every parameter and buffer of the group's loss: actor, critic / Q-network, mixer, targets.
    return {k: v.detach().clone() for k, v in experiment.losses["agents"].state_dict().items()}


def _train(algorithm_config, task: str, **overrides):
    experiment = _make(algorithm_config, task, **overrides)
    start = _params(experiment)
    experiment.run()
    return start, _params(experiment), experiment


def _max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(
        (a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point()
    )


_REFERENCE_RUNS = {}


def _benchmarl_run(algorithm: str, task: str):
    # BenchMARL's own config; cached, as two fastmarl variants compare against each.
    from benchmarl.algorithms import IppoConfig, MappoConfig, QmixConfig, VdnConfig

    key = (algorithm, task)
    if key not in _REFERENCE_RUNS:
        config = {"mappo": MappoConfig, "ippo": IppoConfig, "qmix": QmixConfig, "vdn": VdnConfig}[algorithm]
        start, end, experiment = _train(config.get_from_yaml(), task)
        _REFERENCE_RUNS[key] = (start, end, type(experiment.losses["agents"]))
    return _REFERENCE_RUNS[key]


def _force_fused_ppo(request):
    # fastmarl.ops.force_path for the rest of the test.
    from fastmarl.ops import force_path

    forced = force_path("fused", "ppo_clip", "ppo_critic")
    forced.__enter__()
    request.addfinalizer(lambda: forced.__exit__(None, None, None))


@needs_benchmarl
@pytest.mark.parametrize("task", ["balance", "navigation"])
@pytest.mark.parametrize(
    "algorithm, fused",
    [("mappo", False), ("mappo", True), ("ippo", False), ("ippo", True), ("qmix", True), ("vdn", True)],
    ids=["mappo-default", "mappo-fused", "ippo-default", "ippo-fused", "qmix", "vdn"],
)
def test_same_parameters_as_benchmarl(algorithm, fused, task, request):
    from fastmarl.integrations import benchmarl as fb

    if fused and algorithm in ("mappo", "ippo"):
        # At 100 samples × 3-4 agents fastmarl's CPU policy runs the composite path (TorchRL's
        # op sequence, faster there); forced, the fused PPO kernels run on every call.
        _force_fused_ppo(request)
    ref_start, ref_end, ref_loss_class = _benchmarl_run(algorithm, task)
    config = {"mappo": fb.FastMappoConfig, "ippo": fb.FastIppoConfig, "qmix": fb.FastQmixConfig,
              "vdn": fb.FastVdnConfig}[algorithm]
    start, end, experiment = _train(config.get_from_yaml(), task)

    loss = experiment.losses["agents"]
    assert type(loss).__module__.startswith("fastmarl.") and not ref_loss_class.__module__.startswith("fastmarl.")
    if algorithm in ("qmix", "vdn"):
        assert type(loss.mixer_network.module).__module__.startswith("fastmarl.")
    else:
        assert type(loss.value_estimator).__module__.startswith("fastmarl.")
    assert _max_abs_diff(start, ref_start) == 0.0  # same seed, same initial parameters
    assert _max_abs_diff(ref_end, ref_start) > MIN_TRAINED_CHANGE
    diff = _max_abs_diff(end, ref_end)
    print(f"{algorithm} {task} fused={fused}: max |fastmarl - BenchMARL| = {diff:.3g} "
          f"(training moved them by up to {_max_abs_diff(ref_end, ref_start):.3g})")
    assert diff <= PARITY_ATOL


@needs_benchmarl
def test_configs_read_benchmarl_yaml_and_are_registered():
    from benchmarl.algorithms import (
        IppoConfig, MappoConfig, QmixConfig, VdnConfig, algorithm_config_registry,
    )

    from fastmarl.integrations import benchmarl as fb

    for name, fast, base in [("fastmappo", fb.FastMappoConfig, MappoConfig), ("fastippo", fb.FastIppoConfig, IppoConfig),
                             ("fastqmix", fb.FastQmixConfig, QmixConfig), ("fastvdn", fb.FastVdnConfig, VdnConfig)]:
        assert algorithm_config_registry[name] is fast and issubclass(fast, base)
        fast_values, base_values = vars(fast.get_from_yaml()), vars(base.get_from_yaml())
        extra = {k: v for k, v in fast_values.items() if k not in base_values}
        assert {k: fast_values[k] for k in base_values} == base_values
        assert set(extra) <= {"normalize_advantage_per_agent", "compile_update"} and not any(extra.values())
        # BenchMARL's own required fields, no new required ones.
        with pytest.raises(TypeError):
            fast()
        assert fast(**base_values) == fast.get_from_yaml()


@needs_benchmarl
def test_benchmarl_qmix_runs_on_torchrl_014_with_the_shim():
    # BenchMARL's own QmixConfig builds the QValueModule the shim relaxes; without it,
    # TorchRL 0.14.1 raises "Action shape ... does not match expected shape" here.
    import fastmarl.integrations.benchmarl  # noqa: F401, I001  (applies the shims; first, as documented)
    import benchmarl.algorithms.qmix as benchmarl_qmix
    from benchmarl.algorithms import QmixConfig

    assert benchmarl_qmix.QValueModule.__module__ == "fastmarl.integrations.benchmarl.torchrl_shims"
    experiment = _make(QmixConfig.get_from_yaml(), "balance")
    batch = next(iter(experiment.collector))
    action = batch["agents", "action"]  # one discrete action per env, step and agent
    assert action.shape == (2, 100, 4) and not action.is_floating_point()
    assert 0 <= action.min() and action.max() < experiment.action_spec["agents", "action"].space.n
    experiment.close()


def _collected_minibatch(experiment, size: int):
    group = "agents"
    batch = next(iter(experiment.collector))
    batch = experiment.algorithm.process_batch(group, batch.exclude(*experiment._get_excluded_keys(group)))
    return batch.reshape(-1)[:size]


@needs_benchmarl
@pytest.mark.parametrize("fused", [False, True], ids=["default", "fused"])
@pytest.mark.parametrize("config_name", ["FastMappoConfig", "FastIppoConfig"])
def test_per_agent_advantage_normalisation_matches_reference(config_name, fused, request):
    from torchrl.objectives import ClipPPOLoss as TorchRLClipPPOLoss

    from fastmarl.integrations import benchmarl as fb

    if fused:  # the fused op's own per-agent statistics (see test_same_parameters_as_benchmarl)
        _force_fused_ppo(request)

    config = getattr(fb, config_name).get_from_yaml()
    config.normalize_advantage_per_agent = True
    # Navigation: each agent has its own goal and reward, so the agents' advantages differ.
    experiment = _make(config, "navigation")
    loss = experiment.losses["agents"]
    assert loss.normalize_advantage and tuple(loss.normalize_advantage_exclude_dims) == (-2,)
    data = _collected_minibatch(experiment, 200)
    experiment.close()
    # Move the actor off the collecting policy: ratios ≠ 1, so the loss weighs each sample's
    # standardised advantage differently (at ratio 1 every standardisation gives -mean = 0).
    with torch.no_grad():
        for p in loss.actor_network_params.values(True, True):
            p.add_(0.05 * torch.randn_like(p))

    advantage = data["agents", "advantage"]  # [B, n_agents, 1]
    assert advantage.shape == (200, 3, 1)

    def standardised(dims):
        adv = advantage.double()
        mean = adv.mean(dims, keepdim=True)
        std = adv.std(dims, keepdim=True).clamp_min(1e-6)  # TorchRL's unbiased std and clamp
        return ((adv - mean) / std).float()

    def reference(adv):
        # TorchRL's own ClipPPOLoss, no standardisation, on the same networks and data with the
        # advantage standardised beforehand in float64.
        ref = TorchRLClipPPOLoss(
            actor=loss.actor_network, critic=loss.critic_network, clip_epsilon=config.clip_epsilon,
            entropy_coeff=config.entropy_coef, critic_coeff=config.critic_coef,
            loss_critic_type=config.loss_critic_type, normalize_advantage=False,
        )
        ref.set_keys(**{k: getattr(loss.tensor_keys, k) for k in (
            "reward", "action", "done", "terminated", "advantage", "value_target", "value", "sample_log_prob")})
        ref_data = data.clone()
        ref_data["agents", "advantage"] = adv
        return _objective_and_grads(ref, ref_data, loss.actor_network_params)

    got, got_grads = _objective_and_grads(loss, data.clone(), loss.actor_network_params)
    want, want_grads = reference(standardised(0))  # per agent: over the batch, each agent alone
    across_agents, across_grads = reference(standardised((0, 1)))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    # The check can tell per-agent from whole-batch standardisation.
    gap = max((g - w).abs().max().item() for g, w in zip(got_grads, across_grads))
    print(f"per-agent vs whole batch: loss {got.item():.5f} vs {across_agents.item():.5f}, max grad gap {gap:.3g}")
    assert gap > 1e-3


def _objective_and_grads(loss_module, data, params):
    leaves = list(params.values(True, True))
    objective = loss_module(data)["loss_objective"]
    grads = torch.autograd.grad(objective, leaves, allow_unused=True)
    return objective.detach(), [g for g in grads if g is not None]


@needs_benchmarl
def test_per_agent_normalisation_changes_training_and_is_off_by_default():
    from fastmarl.integrations import benchmarl as fb

    assert fb.FastMappoConfig.get_from_yaml().normalize_advantage_per_agent is False
    config = fb.FastMappoConfig.get_from_yaml()
    config.normalize_advantage_per_agent = True
    _, normalised, _ = _train(config, "balance")
    _, plain, _ = _train(fb.FastMappoConfig.get_from_yaml(), "balance")
    assert _max_abs_diff(normalised, plain) > 1e-4


class _EagerUpdateStep:
    """fastmarl.UpdateStep's documented contract (issue 11), eager: zero-grad, loss forward, sum
    of ``loss_keys``, backward, optional clip, ``optimizer.step()``, ``after_step``; returns the
    detached loss entries. Stands in for the real one to check FastExperiment's wiring."""

    calls = []

    def __init__(self, loss_module, optimizer, *, loss_keys=None, max_grad_norm=None, compile=False,
                 cudagraph=False, after_step=None):
        self.loss_module, self.optimizer, self.loss_keys = loss_module, optimizer, loss_keys
        self.max_grad_norm, self.after_step = max_grad_norm, after_step
        _EagerUpdateStep.calls.append(dict(loss_keys=loss_keys, max_grad_norm=max_grad_norm, compile=compile,
                                           cudagraph=cudagraph))

    def __call__(self, minibatch):
        self.optimizer.zero_grad()
        out = self.loss_module(minibatch)
        keys = self.loss_keys or [k for k in out.keys() if k.startswith("loss_")]
        sum(out[k] for k in keys).backward()
        assert self.max_grad_norm is None
        self.optimizer.step()
        if self.after_step is not None:
            self.after_step()
        return out.detach()


@needs_benchmarl
@pytest.mark.parametrize("algorithm", ["mappo", "qmix"])
def test_compile_update_wiring_matches_benchmarl_loop(algorithm, monkeypatch):
    from fastmarl.integrations import benchmarl as fb
    from fastmarl.integrations.benchmarl import experiment as fast_experiment

    _EagerUpdateStep.calls = []
    monkeypatch.setattr(fast_experiment, "_update_step_class", lambda: _EagerUpdateStep)
    config_class = {"mappo": fb.FastMappoConfig, "qmix": fb.FastQmixConfig}[algorithm]
    # clip_grad_val 0.5 so that BenchMARL's per-optimizer clipping is active on every step.
    overrides = dict(clip_grad_val=0.5)

    plain = _make(config_class.get_from_yaml(), "balance", fb.FastExperiment, **overrides)
    start = _params(plain)
    plain.run()
    config = config_class.get_from_yaml()
    config.compile_update = True
    wired = _make(config, "balance", fb.FastExperiment, **overrides)
    train_logs = []
    monkeypatch.setattr(wired.logger, "log_training",
                        lambda group, td, step: train_logs.append(td.clone()))
    wired.run()

    expected_keys = ["loss_objective", "loss_entropy", "loss_critic"] if algorithm == "mappo" else ["loss"]
    assert _EagerUpdateStep.calls == [dict(loss_keys=expected_keys, max_grad_norm=None, compile=True, cudagraph=False)]
    assert _max_abs_diff(_params(plain), start) > MIN_TRAINED_CHANGE
    assert _max_abs_diff(_params(wired), _params(plain)) <= PARITY_ATOL
    norms = [k for k in train_logs[0].keys() if k.startswith("grad_norm_")]
    assert sorted(norms) == sorted(f"grad_norm_{k}" for k in wired.optimizers["agents"])
    # Every logged norm above clip_grad_val: the per-optimizer clipping acted on every step.
    assert all((train_logs[0][k] > overrides["clip_grad_val"]).all() for k in norms)


@needs_benchmarl
def test_compile_update_needs_fast_experiment():
    from fastmarl.integrations import benchmarl as fb

    config = fb.FastMappoConfig.get_from_yaml()
    config.compile_update = True
    with pytest.raises(ValueError, match="FastExperiment in place of benchmarl's Experiment"):
        _make(config, "balance")


@needs_benchmarl
@pytest.mark.compile
def test_compile_update_with_fastmarl_update_step():
    from fastmarl.integrations import benchmarl as fb

    _, plain, _ = _train(fb.FastMappoConfig.get_from_yaml(), "balance", max_n_frames=200)
    config = fb.FastMappoConfig.get_from_yaml()
    config.compile_update = True
    experiment = _make(config, "balance", fb.FastExperiment, max_n_frames=200)
    experiment.run()
    # Compiled kernels reorder float32 sums: close, not bitwise.
    assert _max_abs_diff(_params(experiment), plain) <= 1e-4


@needs_benchmarl
@needs_hydra
@pytest.mark.slow_cli
def test_hydra_entry_point_writes_benchmarl_outputs(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [
        "algorithm=fastmappo", "task=vmas/balance", "experiment.max_n_frames=200",
        "experiment.on_policy_collected_frames_per_batch=200", "experiment.on_policy_n_envs_per_worker=2",
        "experiment.on_policy_n_minibatch_iters=1", "experiment.on_policy_minibatch_size=100",
        "experiment.evaluation_interval=200", "experiment.evaluation_episodes=2", "experiment.render=false",
        "experiment.loggers=[csv]", "experiment.checkpoint_at_end=true", "algorithm.normalize_advantage_per_agent=true",
        f"hydra.run.dir={run_dir}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "fastmarl.integrations.benchmarl", *overrides],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Algorithm: fastmappo, Task: vmas/balance" in result.stdout
    assert "normalize_advantage_per_agent: true" in result.stdout
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        assert (run_dir / ".hydra" / name).is_file()
    (folder,) = [p for p in run_dir.iterdir() if p.name.startswith("fastmappo_balance_mlp_")]
    assert (folder / "config.pkl").is_file()
    assert (folder / "checkpoints" / "checkpoint_200.pt").is_file()
    assert (folder / f"{folder.name}.json").is_file()  # marl-eval json
    scalars = folder / folder.name / "scalars"
    for name in ("train_agents_loss_objective.csv", "collection_reward_episode_reward_mean.csv",
                 "eval_reward_episode_reward_mean.csv", "timers_iteration_time.csv"):
        assert (scalars / name).read_text().strip(), name

    import pickle

    with open(folder / "config.pkl", "rb") as f:
        for _ in range(2):  # task, task config
            pickle.load(f)
        algorithm_config = pickle.load(f)
    from fastmarl.integrations.benchmarl import FastMappoConfig

    assert isinstance(algorithm_config, FastMappoConfig) and algorithm_config.normalize_advantage_per_agent


_HIDE_BENCHMARL = """
import sys, importlib.abc
class NoBenchMARL(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "benchmarl" or name.startswith("benchmarl."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoBenchMARL())
"""


def _run_hidden(args, tmp_path) -> subprocess.CompletedProcess:
    # A sitecustomize on PYTHONPATH hides BenchMARL from the whole interpreter, `-m` included.
    (tmp_path / "sitecustomize.py").write_text(_HIDE_BENCHMARL)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)


def test_import_without_benchmarl_says_how_to_install(tmp_path):
    result = _run_hidden(["-c", """
import torchrl.collectors
try:
    import fastmarl.integrations.benchmarl
except ImportError as err:
    print("ImportError:", err)
try:
    import benchmarl
except ImportError:
    print("benchmarl hidden")
import fastmarl, fastmarl.integrations  # the rest of fastmarl still imports
print("alias added:", hasattr(torchrl.collectors, "SyncDataCollector"))
"""], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "benchmarl hidden" in result.stdout
    assert "ImportError: fastmarl.integrations.benchmarl needs BenchMARL, which is not installed" in result.stdout
    assert "pip install --no-deps benchmarl==1.5.2" in result.stdout
    assert 'pip install -e ".[benchmarl]"' in result.stdout
    assert "alias added: False" in result.stdout  # nothing patched when the import fails


def test_cli_without_benchmarl_exits_with_the_install_hint(tmp_path):
    result = _run_hidden(["-m", "fastmarl.integrations.benchmarl", "algorithm=fastmappo", "task=vmas/balance"], tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "fastmarl.integrations.benchmarl needs BenchMARL, which is not installed" in result.stderr
    assert "pip install --no-deps benchmarl==1.5.2" in result.stderr
