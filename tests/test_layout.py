"""The package's layout rules, checked on its source: one folder per op with one path policy,
the oracles out of the run-time path, no private names imported across packages, and every
private TorchRL / tensordict / torch.nn name read through ``fastmarl/_compat.py``."""

import ast
import importlib
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictParams
from torchrl.modules import MultiAgentMLP, ProbabilisticActor, TanhNormal
from torchrl.modules.models.multiagent import QMixer, VDNMixer
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.multiagent import IPPOLoss, MAPPOLoss, QMixerLoss
from torchrl.objectives.value import GAE, MultiAgentGAE

from fastmarl import _compat

PACKAGE = Path(__file__).resolve().parents[1] / "fastmarl"
OPS = ("gae", "ppo", "qmix")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(path: Path) -> str:
    name = _module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


@pytest.mark.parametrize("op", OPS)
def test_one_folder_per_op_with_one_path_policy(op):
    folder = PACKAGE / "ops" / op
    assert {"naive.py", "cpu.py", "triton.py", "op.py"} <= {p.name for p in folder.iterdir()}
    policies = [path for path, tree in _modules() for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef) and node.name == "select_path"
                and path.parent == folder]
    assert policies == [folder / "op.py"]
    assert importlib.import_module(f"fastmarl.ops.{op}").select_path.__doc__


def test_naive_modules_are_not_imported_at_run_time():
    # naive.py is the tests' oracle and the benchmarks' baseline, nothing else; fastmarl check
    # (fastmarl/check.py) is the self-test a user runs, and compares with it too.
    for path, tree in _modules():
        if path == PACKAGE / "check.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module + "." + a.name for a in node.names]
                assert not any(n.split(".")[-1] == "naive" or ".naive" in node.module for n in names), (
                    f"{path.relative_to(PACKAGE.parent)} imports a naive oracle ({node.module})")


def test_no_private_name_imported_across_packages():
    for path, tree in _modules():
        own_package = _package_of(path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("fastmarl"):
                continue
            module_package = node.module
            for alias in node.names:
                private_module = any(part.startswith("_") and not part.startswith("__")
                                     for part in node.module.split(".")[1:])
                private_name = alias.name.startswith("_") and not alias.name.startswith("__")
                # A package's private names are visible to it and its subpackages only.
                inside = own_package == module_package or own_package.startswith(module_package + ".")
                if (private_name or private_module) and not inside:
                    pytest.fail(f"{path.relative_to(PACKAGE.parent)} imports {node.module}.{alias.name} "
                                f"across packages ({own_package})")


def _private_names_of_what_fastmarl_subclasses() -> set[str]:
    # Private attributes of TorchRL's, tensordict's and torch.nn's classes and instances (set in
    # __init__, so instances are built too).
    torch.manual_seed(0)
    actor_net = torch.nn.Sequential(MultiAgentMLP(4, 4, 2, centralized=False, share_params=True, depth=1),
                                    NormalParamExtractor())
    actor = ProbabilisticActor(TensorDictModule(actor_net, in_keys=["obs"], out_keys=["loc", "scale"]),
                               in_keys=["loc", "scale"], distribution_class=TanhNormal)
    critic = TensorDictModule(MultiAgentMLP(4, 1, 2, centralized=True, share_params=True, depth=1),
                              in_keys=["obs"], out_keys=["state_value"])
    mixer = TensorDictModule(QMixer((3,), 4, 2, "cpu"), in_keys=["q", "state"], out_keys=["q_tot"])
    qnet = TensorDictModule(torch.nn.Linear(4, 3), in_keys=["obs"], out_keys=["action_value"])
    objects = [
        ClipPPOLoss(actor, critic), MAPPOLoss(actor, critic), IPPOLoss(actor, critic),
        QMixerLoss(qnet, mixer, action_space="categorical"), GAE(gamma=0.9, lmbda=0.9, value_network=critic),
        MultiAgentGAE(gamma=0.9, lmbda=0.9, value_network=critic), mixer.module, VDNMixer(2, "cpu"),
        TensorDict({"a": torch.zeros(1)}, []), TensorDictParams(TensorDict({"a": torch.zeros(1)}, [])),
        torch.nn.Linear(2, 2), actor_net[0],
    ]
    names = set()
    for obj in objects:
        for cls in type(obj).__mro__:
            names.update(vars(cls))
        names.update(vars(obj) if hasattr(obj, "__dict__") else ())
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_private_torchrl_tensordict_and_nn_names_only_in_compat():
    private = _private_names_of_what_fastmarl_subclasses()
    assert {"_param_td", "_parameters", "_get_entropy", "_clip_bounds"} <= private  # the scan sees them
    offenders = []
    for path, tree in _modules():
        if path == PACKAGE / "_compat.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("torchrl", "tensordict"):
                offenders += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.module}.{a.name}"
                              for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders, "private names outside fastmarl/_compat.py:\n" + "\n".join(offenders)


def test_compat_refuses_untested_versions(monkeypatch):
    _compat.check_versions({"torchrl": "0.14.1", "tensordict": "0.14.3"})
    _compat.check_versions({"torchrl": "0.14.2+cpu", "tensordict": "0.14.0"})
    monkeypatch.delenv("FASTMARL_ALLOW_UNTESTED_VERSIONS", raising=False)
    for installed in ({"torchrl": "0.15.0", "tensordict": "0.14.3"}, {"torchrl": "0.14.0", "tensordict": "0.14.3"},
                      {"torchrl": "0.14.1", "tensordict": "0.13.2"}):
        with pytest.raises(ImportError, match=r"not tested with .* FASTMARL_ALLOW_UNTESTED_VERSIONS=1"):
            _compat.check_versions(installed)
    monkeypatch.setenv("FASTMARL_ALLOW_UNTESTED_VERSIONS", "1")
    with pytest.warns(UserWarning, match="torchrl 0.15.0"):
        _compat.check_versions({"torchrl": "0.15.0", "tensordict": "0.14.3"})
