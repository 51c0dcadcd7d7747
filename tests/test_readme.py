"""The README cannot rot: its shell commands run (the expensive ones at a tiny size), its training
loop example runs with fastmarl's losses and with TorchRL's and prints the same rewards, and its
figures and phase names exist."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# Appended to `fastmarl train` / `compare` (argparse: the last value of an option wins), so the
# README's commands run in seconds: 2 iterations of 40 frames, tiny networks.
TINY_TRAIN = ["--iters", "2", "--frames-per-batch", "40", "--max-steps", "20", "--epochs", "1", "--minibatch", "20",
              "--num-cells", "8", "--qmix-updates-per-iter", "3", "--buffer-size", "1000", "--no-progress"]
TINY_DEMO = ["--envs", "4", "--steps", "20", "--repeats", "2"]
# The example's constants at a tiny size: each line must appear exactly once in the README.
EXAMPLE_TINY = {
    "frames_per_batch = 6_000": "frames_per_batch = 60",
    "n_iters = 10": "n_iters = 3",
    "num_epochs = 30": "num_epochs = 2",
    "minibatch_size = 400": "minibatch_size = 20",
    "max_steps = 100": "max_steps = 20",
    "num_cells = 256": "num_cells = 16",
}
FASTMARL_IMPORT = "from fastmarl.objectives import ClipPPOLoss, ValueEstimators"
TORCHRL_IMPORT = "# from torchrl.objectives import ClipPPOLoss, ValueEstimators"


def shell_commands(text: str) -> list[str]:
    """The commands of the README's ```bash blocks, in order (continuation lines joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)\n```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()  # a trailing comment, two spaces before it
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def plan(command: str) -> tuple[str, list[str] | None]:
    """``(why, argv)``: what the test runs for a README command (argv None: not run here)."""
    # Installs need the network; .ci/run runs the README's test command on a fresh machine and
    # tests/test_package.py checks that the two are the same. What follows an install runs.
    rest = [part.strip() for part in command.split("&&") if not part.strip().startswith("pip install")]
    if not rest:
        return "install", None
    if len(rest) > 1:
        raise AssertionError(f"README command chains several commands after its installs: {command}")
    argv = shlex.split(rest[0])
    if argv[:3] == ["python", "-m", "pytest"]:
        # The suite itself runs in CI; here its arguments are checked by collecting it.
        keep = [a for a in argv[3:] if not a.startswith("--benchmark-json=")]
        if "--benchmark-json" in keep:
            i = keep.index("--benchmark-json")
            keep = keep[:i] + keep[i + 2:]
        keep = [str(ROOT / a) if (ROOT / a.split("::")[0]).exists() else a for a in keep]
        return "pytest, collected", [sys.executable, "-m", "pytest", *keep, "--collect-only", "-q", "-p", "no:cacheprovider"]
    if argv[:2] == ["python", "bench/interleaved.py"]:
        return "interleaved A/B, cells checked", [sys.executable, str(ROOT / argv[1]), *argv[2:], "--dry-run"]
    if argv[:3] == ["python", "-m", "fastmarl.integrations.benchmarl"]:
        # Hydra composes the configuration (every override checked) and prints it; a sweep (-m)
        # is composed per value of its swept option.
        args = [a for a in argv[3:] if a not in ("-m", "--multirun")]
        swept = [a for a in args if "=" in a and "," in a.split("=", 1)[1] and not a.split("=", 1)[1].startswith("[")]
        if swept:
            key, values = swept[0].split("=", 1)
            args[args.index(swept[0])] = f"{key}={values.split(',')[-1]}"
        return "benchmarl, config composed", [sys.executable, "-m", "fastmarl.integrations.benchmarl", *args, "--cfg", "job"]
    if argv[:2] == ["python", "bench/benchmarl_fps.py"]:
        keep = [a for a in argv[2:] if not a.startswith("--json")]
        return "benchmarl fps, tiny", [sys.executable, str(ROOT / argv[1]), *keep, "--rounds", "1", "--frames", "120",
                                       "--steps", "1"]
    if argv[:1] == ["torchrun"]:
        # A 2-rank run on this machine (gloo), tiny; a resume keeps its checkpoint's configuration.
        launch = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
        if "--resume" in argv:
            i = launch.index("--resume-iters")
            return "torchrun resume", launch[: i + 1] + ["3"] + launch[i + 2:] + ["--no-progress"]
        return "torchrun tiny training", launch + TINY_TRAIN
    if argv[:2] == ["python", "bench/dist_throughput.py"]:
        return "dist throughput, commands checked", [sys.executable, str(ROOT / argv[1]), *argv[2:], "--dry-run"]
    if argv[:2] == ["fastmarl", "train"] and "--resume" in argv:
        i = argv.index("--resume-iters")
        return "resume", argv[: i + 1] + ["3"] + argv[i + 2:] + ["--no-progress"]
    if argv[:2] in (["fastmarl", "train"], ["fastmarl", "compare"]):
        return "tiny training", argv + TINY_TRAIN
    if argv[:2] == ["fastmarl", "check"]:
        # The quick variant on this machine's paths, one process, no timing.
        return "self-test, quick", argv + ["--quick", "--no-speed", "--jobs", "1"]
    if argv[:2] == ["fastmarl", "demo"]:
        return "tiny demo", argv + TINY_DEMO
    if argv[:2] == ["fastmarl", "bench"]:
        if "--json" in argv:
            return "report from saved JSON", argv
        if "--sizes" not in argv:
            raise AssertionError(f"README bench command without --sizes (runs every size): {command}")
        i = argv.index("--sizes")
        return "bench at the tiny size", argv[: i + 1] + ["tiny"] + argv[i + 2:]
    raise AssertionError(f"README command not covered by tests/test_readme.py: {command}")


def _fastmarl() -> list[str]:
    exe = Path(sys.executable).with_name("fastmarl")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "fastmarl"]


def test_every_readme_command_is_planned():
    commands = shell_commands(README)
    kinds = [plan(c)[0] for c in commands]
    # The README shows at least: the installs, the main job, a resume, QMIX, compare... (if one
    # goes, this list says so).
    for kind in ("install", "tiny training", "resume", "bench at the tiny size", "report from saved JSON"):
        assert kind in kinds, (kind, commands)


@pytest.mark.slow_cli
def test_readme_shell_commands_run(tmp_path):
    # Relative paths of the README (bench/results/...) resolve in a scratch copy, so that nothing
    # is written into the checkout; `fastmarl bench` finds the suites through the installed package.
    (tmp_path / "bench" / "results").mkdir(parents=True)
    for path in (ROOT / "bench" / "results").glob("*.json"):
        shutil.copy(path, tmp_path / "bench" / "results" / path.name)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ran, planned = [], []
    for command in shell_commands(README):
        why, argv = plan(command)
        if argv is None or any(argv == done for _, done in planned):
            continue  # an install, or the same tiny command as one already run
        planned.append((command, argv))
        if argv[0] == "fastmarl":
            argv = _fastmarl() + argv[1:]
        elif "benchmarl" in why and importlib.util.find_spec("benchmarl") is None:
            continue  # the BenchMARL section's commands need BenchMARL (CI installs it)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
        assert result.returncode == 0, f"{command!r} ({why}) failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        ran.append((command, result.stdout))
    outputs = dict(ran)
    train = next(out for cmd, out in ran if "fastmarl train --out" in cmd)
    assert "mean episode reward per iteration" in train and "sample" in train
    bench = next(out for cmd, out in ran if cmd.startswith("fastmarl bench") and "--sizes" in cmd)
    assert "speed-up" in bench and "gae" in bench and "qmix_loss" in bench and "update_ppo" in bench
    assert (tmp_path / "bench-report" / "speedups.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "bench" / "results" / "report" / "training.png").is_file()
    assert len(outputs) >= 5
    assert len(planned) < len([c for c in shell_commands(README) if plan(c)[1] is not None])  # tiny bench once


def _example() -> str:
    blocks = [b for b in re.findall(r"```python\n(.*?)\n```", README, flags=re.S) if "Collector(" in b]
    assert len(blocks) == 1, "the README should hold one training-loop example"
    return blocks[0]


def _tiny_example(code: str) -> str:
    for old, new in EXAMPLE_TINY.items():
        assert len(re.findall(rf"^{re.escape(old)}\b", code, flags=re.M)) == 1, old
        code = re.sub(rf"^{re.escape(old)}\b", new, code, flags=re.M)
    return code


@pytest.mark.slow_cli
def test_readme_training_loop_runs_and_matches_torchrl(tmp_path):
    code = _tiny_example(_example())
    assert FASTMARL_IMPORT in code and TORCHRL_IMPORT in code
    variants = {"fastmarl": code,
                "torchrl": code.replace(FASTMARL_IMPORT, "").replace(TORCHRL_IMPORT, TORCHRL_IMPORT[2:])}
    printed = {}
    for name, source in variants.items():
        script = tmp_path / f"example_{name}.py"
        script.write_text(source)
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                                cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        printed[name] = [line for line in result.stdout.splitlines() if line.startswith("iteration ")]
    assert len(printed["fastmarl"]) == 3
    # Only the loss imports differ, and the rewards are the same.
    assert printed["fastmarl"] == printed["torchrl"]


def test_readme_documents_every_phase_and_the_figures_exist():
    from fastmarl.training.run import PHASES

    for phase in PHASES + ("loss_forward_backward",):
        assert f"`{phase}`" in README, phase
    assert "phases.json" in README
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / image).is_file(), image
