"""The fastmarl command line (also python -m fastmarl).

  fastmarl train     MAPPO / IPPO (the seed tutorial, by default) or QMIX on VMAS, with a
                     progress bar and a run folder (metrics, reward curve, configuration,
                     time per phase, checkpoint for --resume)
  fastmarl compare   the same run with TorchRL's and fastmarl's losses, taking turns
                     minibatch by minibatch: rewards side by side, median speed-up and spread
  fastmarl bench     run the benchmark suites (or read saved JSON): a compact table of
                     fastmarl against each peer, the headline chart, and --compare against
                     saved results to flag regressions
  fastmarl demo      GAE on a real VMAS Navigation rollout: TorchRL's MultiAgentGAE against
                     fastmarl's on the same TensorDict (parity and time)
  fastmarl check     self-test of every op here against float64 references, then a short
                     speed table against TorchRL (see fastmarl/check.py)

Run "fastmarl <command> --help" for a command's options.
"""

# Only the standard library and fastmarl.training.config at import time: `fastmarl --help`
# and every command's --help answer without importing torch (~1.3 s) or TorchRL (~2 s).
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time

EXTRAS = {
    # command: (extra, modules it needs beyond torch / torchrl / tensordict)
    "train": ("train", ("vmas", "tqdm", "matplotlib")),
    "compare": ("train", ("vmas", "tqdm", "matplotlib")),
    "demo": ("train", ("vmas",)),
    "bench": ("test", ("pytest", "pytest_benchmark", "matplotlib")),
    "bench --json": ("train", ("matplotlib",)),
}


def _missing_extra(command: str) -> str | None:
    """The error line when a module the command needs is not installed, else None."""
    extra, modules = EXTRAS[command]
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    name = command.split()[0]
    return (f"fastmarl {name}: error: fastmarl {command} needs the [{extra}] extra (missing: {', '.join(missing)}): "
            f"pip install 'fastmarl[{extra}]'")


def _fail(command: str, message: str) -> int:
    print(f"fastmarl {command}: error: {message}", file=sys.stderr)
    return 2


def _unwritable_out(out) -> str | None:
    """Why the run folder ``out`` cannot be created or written, or None (checked before any work)."""
    import os
    from pathlib import Path

    if out is None:
        return None
    path = Path(out)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"--out {out}: {existing} is a file, not a folder"
    if existing is None or not os.access(existing, os.W_OK | os.X_OK):
        return f"--out {out}: cannot create or write the run folder ({existing or path} is not writable)"
    return None


def _quiet_torchrl() -> None:
    """TorchRL logs INFO lines with raw ANSI colour codes (e.g. "Initialized LazyTensorStorage"
    from every replay buffer); keep its warnings, unless RL_LOGGING_LEVEL asks for more."""
    import logging
    import os

    if "RL_LOGGING_LEVEL" not in os.environ:
        import torchrl  # noqa: F401  (configures its logger at import: set the level after)

        logging.getLogger("torchrl").setLevel(logging.WARNING)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _device(text: str) -> str:
    if text == "auto" or text.startswith("cuda"):
        import torch

        if text == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError("--device cuda asked for, but no CUDA device is available")
    return text


def _demo(args) -> int:
    missing = _missing_extra("demo")
    if missing:
        print(missing, file=sys.stderr)
        return 2
    import torch
    from tensordict.nn import TensorDictModule
    from torchrl.envs.libs.vmas import VmasEnv
    from torchrl.modules import MultiAgentMLP
    from torchrl.objectives.value import MultiAgentGAE as TorchRLMultiAgentGAE

    from fastmarl.objectives.value import MultiAgentGAE

    _quiet_torchrl()
    torch.manual_seed(args.seed)
    print(f"VMAS {args.scenario}: {args.envs} envs x {args.steps} steps x {args.agents} agents on {args.device}")
    env = VmasEnv(
        scenario=args.scenario, num_envs=args.envs, continuous_actions=True,
        max_steps=args.steps, device=args.device, n_agents=args.agents, seed=args.seed,
    )
    rollout = env.rollout(args.steps, break_when_any_done=False)
    # The tutorial's layout: per-agent reward, done/terminated expanded across the agents.
    reward_shape = rollout.get_item_shape(("next", env.reward_key))
    for key in ("done", "terminated"):
        rollout.set(("next", "agents", key), rollout.get(("next", key)).unsqueeze(-1).expand(reward_shape))
    critic = TensorDictModule(
        MultiAgentMLP(
            n_agent_inputs=rollout.get(("agents", "observation")).shape[-1], n_agent_outputs=1,
            n_agents=env.n_agents, centralised=True, share_params=True, device=args.device,
            depth=2, num_cells=256, activation_class=torch.nn.Tanh,
        ),
        in_keys=[("agents", "observation")], out_keys=[("agents", "state_value")],
    )
    with torch.no_grad():
        critic(rollout)
        critic(rollout.get("next"))

    keys = dict(reward=env.reward_key, value=("agents", "state_value"), done=("agents", "done"),
                terminated=("agents", "terminated"))
    estimators = {}
    for name, cls in (("torchrl", TorchRLMultiAgentGAE), ("fastmarl", MultiAgentGAE)):
        # value_network=None: the values are in the rollout, so only the advantage is timed.
        estimators[name] = cls(gamma=0.99, lmbda=0.9, value_network=None)
        estimators[name].set_keys(**keys)

    outputs, times = {}, {name: [] for name in estimators}
    for i in range(args.repeats + 3):
        for name, estimator in estimators.items():
            data = rollout.clone(False)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.no_grad():
                out = estimator(data)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= 3:  # warm-up calls are not counted
                times[name].append(time.perf_counter() - start)
            outputs[name] = out
    diff = {
        key: (outputs["fastmarl"].get(key) - outputs["torchrl"].get(key)).abs().max().item()
        for key in ("advantage", "value_target")
    }
    print(f"max |fastmarl - torchrl|: advantage {diff['advantage']:.3g}, value_target {diff['value_target']:.3g}")
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    for name, ms in medians.items():
        print(f"  {name:9s} MultiAgentGAE: median {ms:8.3f} ms over {len(times[name])} calls")
    print(f"  speed-up {medians['torchrl'] / medians['fastmarl']:.2f}x")
    if max(diff.values()) > 1e-5:
        print("error: fastmarl and TorchRL disagree", file=sys.stderr)
        return 1
    return 0


# (flag, TrainConfig field, type, help); defaults come from TrainConfig. Parsed with
# default=SUPPRESS, so that an option given with --resume can be told from a default.
_TRAIN_OPTIONS = [
    ("--algo", "algo", str, "mappo, ippo or qmix"),
    ("--backend", "backend", str, "fastmarl or torchrl: where the losses and value estimator come from"),
    ("--scenario", "scenario", str, "VMAS scenario"),
    ("--n-agents", "n_agents", int, "agents"),
    ("--iters", "iters", int, "collection + update iterations"),
    ("--frames-per-batch", "frames_per_batch", int, "frames per iteration (num_envs x max_steps)"),
    ("--max-steps", "max_steps", int, "episode length / rollout steps"),
    ("--epochs", "epochs", int, "PPO epochs per batch"),
    ("--minibatch", "minibatch", int, "minibatch size"),
    ("--lr", "lr", float, "PPO Adam learning rate"),
    ("--max-grad-norm", "max_grad_norm", float, "gradient clipping norm"),
    ("--clip-epsilon", "clip_epsilon", float, "PPO clip"),
    ("--gamma", "gamma", float, "discount"),
    ("--lmbda", "lmbda", float, "GAE lambda"),
    ("--entropy-coeff", "entropy_coeff", float, "entropy bonus"),
    ("--num-cells", "num_cells", int, "hidden width"),
    ("--depth", "depth", int, "hidden layers"),
    ("--device", "device", str, "cpu or cuda[:N]"),
    ("--seed", "seed", int, "seed"),
    ("--buffer-size", "buffer_size", int, "QMIX replay buffer size in frames"),
    ("--qmix-lr", "qmix_lr", float, "QMIX Adam learning rate"),
    ("--qmix-updates-per-iter", "qmix_updates_per_iter", int, "QMIX gradient steps per iteration"),
    ("--eps-start", "eps_start", float, "QMIX initial exploration"),
    ("--eps-end", "eps_end", float, "QMIX final exploration"),
    ("--eps-anneal-frames", "eps_anneal_frames", int, "QMIX frames over which exploration anneals, whatever --iters"),
    ("--target-tau", "target_tau", float, "QMIX target soft-update rate"),
]
# Flags that set a TrainConfig field without a value: (flag, field, action, help).
_TRAIN_SWITCHES = [
    ("--compile", "compile", "store_true",
     "compile the whole update step (fastmarl.UpdateStep; compile time is its own phase)"),
    ("--cudagraph", "cudagraph", "store_true", "capture the update step in a CUDA graph (needs --device cuda)"),
    ("--normalize-advantage", "normalize_advantage", "store_true",
     "PPO: standardise the advantage per agent (MAPPOLoss's default; the tutorial does not); under torchrun "
     "with the statistics of every rank's minibatch"),
    ("--no-save-buffer", "save_buffer", "store_false",
     "QMIX: leave the replay buffer out of checkpoint.pt (smaller, but a resumed run starts from an "
     "empty buffer and is no longer exact)"),
]


def _add_train_options(parser: argparse.ArgumentParser, *, backend: bool = True) -> None:
    from fastmarl.training.config import TrainConfig

    defaults = TrainConfig()
    for flag, name, kind, text in _TRAIN_OPTIONS:
        if name == "backend" and not backend:
            continue
        parser.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS,
                            help=f"{text} (default: {getattr(defaults, name)})")
    for flag, name, action, text in _TRAIN_SWITCHES:
        parser.add_argument(flag, dest=name, action=action, default=argparse.SUPPRESS, help=text)
    parser.add_argument("--out", default=argparse.SUPPRESS,
                        help="run folder (default: runs/<algo>-<scenario>-<backend>-<time>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _given_options(args) -> dict:
    """The TrainConfig fields given on the command line (the rest keep TrainConfig's defaults)."""
    import dataclasses

    from fastmarl.training.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def _flag_of(name: str) -> str:
    for flag, field, *_ in _TRAIN_OPTIONS + _TRAIN_SWITCHES:
        if field == name:
            return flag
    return "--" + name.replace("_", "-")


def _validated_config(args, command: str):
    """The run's TrainConfig, or an error line (exit code 2) when it is invalid."""
    from fastmarl.training.config import RunError, TrainConfig, validate

    config = TrainConfig(**_given_options(args))
    try:
        validate(config)
    except RunError as err:
        return None, _fail(command, str(err))
    return config, 0


def _under_torchrun() -> bool:
    import os

    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _rank_argv(args) -> list[str]:
    """The options of this ``fastmarl train`` call, less ``--nproc``, for each rank to parse again."""
    given = vars(args)
    argv = []
    for flag, name, _, _ in _TRAIN_OPTIONS:
        if name in given:
            argv += [flag, repr(given[name]) if isinstance(given[name], float) else str(given[name])]
    argv += [flag for flag, name, _, _ in _TRAIN_SWITCHES if name in given]
    if "out" in given:
        argv += ["--out", given["out"]]
    if args.no_progress:
        argv.append("--no-progress")
    if args.resume is not None:
        argv += ["--resume", args.resume]
    if args.resume_iters is not None:
        argv += ["--resume-iters", str(args.resume_iters)]
    if args.dist_timeout is not None:
        argv += ["--dist-timeout", repr(args.dist_timeout)]
    return argv


def _launch(args) -> int:
    """``fastmarl train --nproc N ...``: ``torchrun --standalone --nproc-per-node N -m fastmarl train ...``
    in this process (torch's launcher), with a one-line summary instead of its traceback on failure."""
    from fastmarl.training import RunError

    if _under_torchrun():
        return _fail("train", "--nproc launches torchrun; this process already is a torchrun rank (drop --nproc)")
    from fastmarl.training.distributed import check_config

    try:  # the checks every rank would make, before starting any
        if args.resume is None:
            config, code = _validated_config(args, "train")
            if config is None:
                return code
        else:
            from fastmarl.training.driver import open_checkpoint

            config = open_checkpoint(args.resume, args.resume_iters, args.nproc)[2]
        check_config(config, args.nproc)
    except RunError as err:
        return _fail("train", str(err))
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(["--standalone", f"--nproc-per-node={args.nproc}", "-m", "fastmarl", "train",
                        *_rank_argv(args)]))
    except ChildFailedError as err:
        failures = sorted(err.failures.items(), key=lambda item: item[1].timestamp)
        codes = sorted({failure.exitcode for _, failure in failures})
        first_rank, first = failures[0]
        print(f"fastmarl train: error: {len(failures)} of {args.nproc} rank(s) failed, first rank {first_rank} "
              f"(exit status {first.exitcode}); each rank's own error is printed above", file=sys.stderr)
        return 2 if codes == [2] else 1
    return 0


def _train_rank(args, config) -> int:
    """One rank of a torchrun launch (rank 0 prints)."""
    from fastmarl.training.distributed import DEFAULT_TIMEOUT_S, describe, train_rank

    def on_start(ctx, run):
        print(describe(run.config, ctx, run.path), flush=True)

    code, result = train_rank(config, out=getattr(args, "out", None), resume=args.resume, iters=args.resume_iters,
                              progress=not args.no_progress, on_start=on_start,
                              timeout_s=DEFAULT_TIMEOUT_S if args.dist_timeout is None else args.dist_timeout)
    if code or result is None:
        return code
    return _print_run(result)


def _print_run(result: dict) -> int:
    """The end of a training run on the terminal: its folder, rewards and seconds per phase."""
    from fastmarl.training.run import phase_table

    rows = result["metrics"]
    print(f"run folder: {result['run_dir']}")
    print("mean episode reward per iteration: " + ", ".join(f"{r['episode_reward_mean']:.3f}" for r in rows))
    print(phase_table(result["phase_seconds"], len(rows)))
    return 0


def _train(args) -> int:
    given = _given_options(args)
    out = getattr(args, "out", None)
    if args.dist_timeout is not None and not (args.dist_timeout > 0):
        return _fail("train", f"--dist-timeout must be a positive number of seconds, got {args.dist_timeout}")
    if args.dist_timeout is not None and args.nproc is None and not _under_torchrun():
        return _fail("train", "--dist-timeout applies to a distributed run: add --nproc N or launch with torchrun")
    if args.resume is None:
        if args.resume_iters is not None:
            return _fail("train", "--resume-iters needs --resume RUN_FOLDER (a new run takes --iters)")
    else:
        conflicting = [_flag_of(name) for name in given] + (["--out"] if out is not None else [])
        if conflicting:
            return _fail("train", f"{', '.join(conflicting)} cannot be combined with --resume: a resumed run keeps "
                                  f"the configuration in its checkpoint (extend it with --resume-iters N)")
    missing = _missing_extra("train")
    if missing:
        print(missing, file=sys.stderr)
        return 2
    problem = _unwritable_out(out)
    if problem:
        return _fail("train", problem)
    from fastmarl.training import RunError

    if args.nproc is not None:
        _quiet_torchrl()
        return _launch(args)
    config = None
    if args.resume is None:
        config, code = _validated_config(args, "train")
        if config is None:
            return code
    _quiet_torchrl()
    if _under_torchrun():
        return _train_rank(args, config)
    from fastmarl.training import train

    try:
        if args.resume is not None:
            result = train(resume=args.resume, iters=args.resume_iters, progress=not args.no_progress)
        else:
            result = train(config, out=out, progress=not args.no_progress)
    except RunError as err:
        return _fail("train", str(err))
    except OSError as err:  # the run folder: a full disk, permissions changed under the run
        return _fail("train", f"cannot write the run folder: {err}")
    return _print_run(result)


def _compare(args) -> int:
    if _under_torchrun():
        return _fail("compare", "compare runs both backends in one process; launch it without torchrun")
    missing = _missing_extra("compare")
    if missing:
        print(missing, file=sys.stderr)
        return 2
    config, code = _validated_config(args, "compare")
    if config is None:
        return code
    problem = _unwritable_out(getattr(args, "out", None))
    if problem:
        return _fail("compare", problem)
    _quiet_torchrl()
    from fastmarl.training import compare

    try:
        result = compare(config, out=getattr(args, "out", None), progress=not args.no_progress)
    except OSError as err:
        return _fail("compare", f"cannot write the run folder: {err}")
    print(f"run folder: {result['run_dir']}")
    print(result["table"])
    return 0


def _bench(args) -> int:
    from pathlib import Path

    missing = _missing_extra("bench --json" if args.json else "bench")
    if missing:
        print(missing, file=sys.stderr)
        return 2
    from fastmarl import bench_report as B

    paths = list(args.json or [])
    out = Path(args.out)
    if not paths:
        bench_dir = B.find_bench_dir()
        if bench_dir is None:
            return _fail("bench", "no bench/ folder here (run from a source checkout) and no --json given")
        out.mkdir(parents=True, exist_ok=True)
        json_path = out / "bench.json"
        code = B.run_suite(bench_dir, json_path, args.device, args.sizes, args.select, verbose=args.verbose)
        if code == 4:  # pytest's usage error: an unknown --sizes name, a bad --select; its message is above
            print("fastmarl bench: error: the benchmark suite rejected its arguments (pytest's message above; "
                  "--sizes takes tiny, tutorial, benchmarl, large, long or a QMIX grid name such as B4096-n8)",
                  file=sys.stderr)
            return 2
        if code != 0:
            print(f"fastmarl bench: the benchmark suite failed (pytest exit code {code})", file=sys.stderr)
            return 1
        paths = [json_path]
    missing_files = [p for p in paths + list(args.compare or []) + ([args.training] if args.training else [])
                     if not Path(p).is_file()]
    if missing_files:
        return _fail("bench", f"no such file: {', '.join(map(str, missing_files))}")
    rows = B.load_results(paths)
    if not rows:
        return _fail("bench", "no benchmark with timings in " + ", ".join(map(str, paths)))
    print(B.report(rows) if args.verbose else B.compact(rows))
    out.mkdir(parents=True, exist_ok=True)
    from fastmarl.training.run import atomic_write_text

    atomic_write_text(out / "report.txt", B.report(rows))
    atomic_write_text(out / "report.md", B.markdown(rows))
    charts = [out / "speedups.png"]
    B.headline_chart(rows, charts[0])
    if args.training:
        charts.append(out / "training.png")
        B.training_chart(args.training, charts[1])
    print(f"report: {out / 'report.txt'} (table: {out / 'report.md'}), chart(s): {', '.join(map(str, charts))}")
    if args.compare:
        found = B.regressions(rows, B.load_results(args.compare), args.threshold)
        if found:
            print(f"regressions beyond {args.threshold:.0%}:")
            print("\n".join("  " + line for line in found))
            return 1
        print(f"no regression beyond {args.threshold:.0%} against {', '.join(args.compare)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastmarl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,compare,bench,demo}")
    train = sub.add_parser(
        "train", help="train MAPPO / IPPO / QMIX on VMAS (the seed tutorial by default)",
        description="Train MAPPO / IPPO (the seed tutorial's settings by default) or QMIX on a VMAS scenario, "
                    "writing a run folder: metrics.csv/json, reward.png, config.json, phases.txt/json, checkpoint.pt.")
    _add_train_options(train)
    train.add_argument("--resume", default=None, metavar="RUN_FOLDER",
                       help="continue the run in this folder with the configuration saved in its checkpoint "
                            "(no other training option may be given)")
    train.add_argument("--resume-iters", type=_positive_int, default=None, metavar="N",
                       help="with --resume: train up to N iterations in all (default: the run's --iters)")
    train.add_argument("--nproc", type=_positive_int, default=None, metavar="N",
                       help="data-parallel on N processes: launches torchrun --standalone --nproc-per-node N -m "
                            "fastmarl train with the other options (--frames-per-batch and --minibatch are per rank)")
    train.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                       help="distributed runs: seconds a collective waits for the other ranks before the run "
                            "fails (default: 300)")
    train.set_defaults(func=_train)
    compare = sub.add_parser(
        "compare", help="the same run with TorchRL's and fastmarl's losses, taking turns minibatch by minibatch",
        description="Run the same configuration with TorchRL's and fastmarl's losses in one process, the two "
                    "taking turns minibatch by minibatch; print rewards side by side, seconds per phase and the "
                    "median speed-up per round and per iteration with their spread.")
    _add_train_options(compare, backend=False)
    compare.set_defaults(func=_compare)
    bench = sub.add_parser(
        "bench", help="run or read the benchmarks: compact table, headline chart, regression check",
        description="Run the pytest-benchmark suites in bench/ (or read saved JSON) and print fastmarl's "
                    "median against each peer's with the speed-up; write report.txt (every provider), "
                    "report.md and speedups.png.")
    bench.add_argument("--json", nargs="+", default=None, metavar="FILE",
                       help="read these pytest-benchmark JSON files instead of running the suites")
    bench.add_argument("--device", choices=["cpu", "cuda"], default=None,
                       help="device to benchmark on (default: cuda when available, else cpu)")
    bench.add_argument("--sizes", default=None,
                       help="comma-separated size names, the same in every suite: tiny, tutorial, benchmarl, large, "
                            "long (or a suite's own, e.g. B4096-n8); default: all but tiny")
    bench.add_argument("--select", default=None, help="pytest -k expression, e.g. 'gae or ppo_math'")
    bench.add_argument("--verbose", action="store_true",
                       help="print every provider's table and pytest-benchmark's raw tables")
    bench.add_argument("--training", default=None, metavar="COMPARISON_JSON",
                       help="also draw training.png from a `fastmarl compare` comparison.json")
    bench.add_argument("--compare", nargs="+", default=None, metavar="OLD_JSON",
                       help="saved JSON to compare against: exit 1 on a regression")
    bench.add_argument("--threshold", type=float, default=0.10,
                       help="regression threshold (default: 0.10, i.e. 10%%)")
    bench.add_argument("--out", default="bench-report",
                       help="folder for bench.json, report.txt, report.md, speedups.png (default: bench-report)")
    bench.set_defaults(func=_bench)
    demo = sub.add_parser(
        "demo", help="GAE on a VMAS rollout: TorchRL vs fastmarl",
        description="Collect a random-policy VMAS rollout, compute multi-agent GAE with TorchRL's MultiAgentGAE "
                    "and fastmarl's on the same TensorDict, and print the largest difference and the times.")
    demo.add_argument("--scenario", default="navigation", help="VMAS scenario (default: %(default)s)")
    demo.add_argument("--envs", type=_positive_int, default=60, help="vectorised environments (default: %(default)s)")
    demo.add_argument("--steps", type=_positive_int, default=100, help="rollout steps (default: %(default)s)")
    demo.add_argument("--agents", type=_positive_int, default=3, help="agents (default: %(default)s)")
    demo.add_argument("--repeats", type=_positive_int, default=50,
                      help="timed calls per estimator, after 3 warm-up calls (default: %(default)s)")
    demo.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    demo.set_defaults(func=_demo)
    from fastmarl.check import add_check_parser  # light: torch loads when the check runs

    add_check_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # The output went to a program that stopped reading (`| head`): no traceback, and no
        # second error when Python flushes stdout at exit (the recipe of Python's signal docs).
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
