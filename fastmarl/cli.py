"""``fastmarl`` command line (also ``python -m fastmarl``).

    fastmarl train     MAPPO / IPPO (the seed tutorial, by default) or QMIX on VMAS, with a
                       progress bar and a run folder (metrics, reward curve, configuration,
                       time per phase, checkpoint for --resume)
    fastmarl compare   the same run with TorchRL's and fastmarl's losses, side by side
    fastmarl bench     run the benchmark suite (or read saved JSON): a table per op and size,
                       speed-ups over each peer, GAE bandwidth against a copy, a PNG chart,
                       and --compare against saved results to flag regressions
    fastmarl demo      GAE on a real VMAS Navigation rollout: TorchRL's MultiAgentGAE against
                       fastmarl's on the same TensorDict (parity and time)
    fastmarl check     self-test of every op here against float64 references, then a short
                       speed table against TorchRL (see fastmarl/check.py)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _device(text: str) -> str:
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("--device cuda asked for, but no CUDA device is available")
    return text


def _demo(args) -> int:
    import torch
    from tensordict.nn import TensorDictModule
    from torchrl.envs.libs.vmas import VmasEnv
    from torchrl.modules import MultiAgentMLP
    from torchrl.objectives.value import MultiAgentGAE as TorchRLMultiAgentGAE

    from fastmarl.objectives.value import MultiAgentGAE

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


# (flag, TrainConfig field, type, help); defaults come from TrainConfig.
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
    ("--lr", "lr", float, "Adam learning rate"),
    ("--max-grad-norm", "max_grad_norm", float, "gradient clipping norm"),
    ("--clip-epsilon", "clip_epsilon", float, "PPO clip"),
    ("--gamma", "gamma", float, "discount"),
    ("--lmbda", "lmbda", float, "GAE lambda"),
    ("--entropy-coeff", "entropy_coeff", float, "entropy bonus"),
    ("--num-cells", "num_cells", int, "hidden width"),
    ("--depth", "depth", int, "hidden layers"),
    ("--device", "device", str, "cpu or cuda[:N]"),
    ("--seed", "seed", int, "seed"),
    ("--buffer-size", "buffer_size", int, "QMIX replay buffer size"),
    ("--qmix-lr", "qmix_lr", float, "QMIX Adam learning rate"),
    ("--qmix-updates-per-iter", "qmix_updates_per_iter", int, "QMIX gradient steps per iteration"),
    ("--eps-start", "eps_start", float, "QMIX initial exploration"),
    ("--eps-end", "eps_end", float, "QMIX final exploration"),
    ("--target-tau", "target_tau", float, "QMIX target soft-update rate"),
]


def _add_train_options(parser: argparse.ArgumentParser, *, backend: bool = True) -> None:
    from fastmarl.training import TrainConfig

    defaults = TrainConfig()
    for flag, name, kind, text in _TRAIN_OPTIONS:
        if name == "backend" and not backend:
            continue
        parser.add_argument(flag, dest=name, type=kind, default=getattr(defaults, name),
                            help=f"{text} (default: {getattr(defaults, name)})")
    parser.add_argument("--compile", action="store_true", help="run the update step under torch.compile")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<algo>-<scenario>-<backend>-<time>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _config_from(args):
    import dataclasses

    from fastmarl.training import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def _validated_config(args, command: str):
    """The run's TrainConfig, or None after printing why it is invalid (exit code 2)."""
    from fastmarl.training import validate

    config = _config_from(args)
    try:
        validate(config)
    except ValueError as err:
        print(f"fastmarl {command}: error: {err}", file=sys.stderr)
        return None
    return config


def _train(args) -> int:
    from fastmarl.training import train
    from fastmarl.training.run import phase_table

    if args.resume:
        result = train(resume=args.resume, iters=args.resume_iters, progress=not args.no_progress)
    else:
        config = _validated_config(args, "train")
        if config is None:
            return 2
        result = train(config, out=args.out, progress=not args.no_progress)
    rows = result["metrics"]
    print(f"run folder: {result['run_dir']}")
    print("mean episode reward per iteration: " + ", ".join(f"{r['episode_reward_mean']:.3f}" for r in rows))
    print(phase_table(result["phase_seconds"], len(rows)))
    return 0


def _compare(args) -> int:
    from fastmarl.training import compare

    config = _validated_config(args, "compare")
    if config is None:
        return 2
    result = compare(config, out=args.out, progress=not args.no_progress)
    print(f"run folder: {result['run_dir']}")
    print(result["table"])
    return 0


def _bench(args) -> int:
    from pathlib import Path

    from fastmarl import bench_report as B

    paths = list(args.json or [])
    if not paths:
        bench_dir = B.find_bench_dir()
        if bench_dir is None:
            print("fastmarl bench: error: no bench/ folder here (run from a source checkout) and no --json given",
                  file=sys.stderr)
            return 2
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        json_path = out / "bench.json"
        code = B.run_suite(bench_dir, json_path, args.device, args.sizes, args.select)
        if code != 0:
            print(f"fastmarl bench: the benchmark suite failed (pytest exit code {code})", file=sys.stderr)
            return 1
        paths = [json_path]
    rows = B.load_results(paths)
    if not rows:
        print("fastmarl bench: error: no benchmark with timings in " + ", ".join(map(str, paths)), file=sys.stderr)
        return 2
    text = B.report(rows)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from fastmarl.training.run import atomic_write_text

    atomic_write_text(out / "report.txt", text)
    atomic_write_text(out / "report.md", B.markdown(rows))
    B.chart(rows, out / "speedups.png")
    print(f"report: {out / 'report.txt'} (table: {out / 'report.md'}), chart: {out / 'speedups.png'}")
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
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train MAPPO / IPPO / QMIX on VMAS (the seed tutorial by default)")
    _add_train_options(train)
    train.add_argument("--resume", default=None, help="continue the run in this folder (its config is used)")
    train.add_argument("--resume-iters", type=int, default=None, help="with --resume: train up to this many iterations")
    train.set_defaults(func=_train)
    compare = sub.add_parser("compare", help="the same run with TorchRL's and fastmarl's losses, side by side")
    _add_train_options(compare, backend=False)
    compare.set_defaults(func=_compare)
    bench = sub.add_parser("bench", help="run or read the benchmarks; report, chart, compare")
    bench.add_argument("--json", nargs="+", default=None, help="read these pytest-benchmark JSON files instead of running")
    bench.add_argument("--device", choices=["cpu", "cuda"], default=None)
    bench.add_argument("--sizes", default=None, help="comma-separated size names (default: all but tiny)")
    bench.add_argument("--select", default=None, help="pytest -k expression, e.g. 'gae or ppo_math'")
    bench.add_argument("--compare", nargs="+", default=None, help="saved JSON to compare against")
    bench.add_argument("--threshold", type=float, default=0.10, help="regression threshold (default 0.10 = 10%%)")
    bench.add_argument("--out", default="bench-report", help="folder for bench.json, report.txt, report.md, speedups.png")
    bench.set_defaults(func=_bench)
    demo = sub.add_parser("demo", help="GAE on a VMAS rollout: TorchRL vs fastmarl")
    demo.add_argument("--scenario", default="navigation")
    demo.add_argument("--envs", type=_positive_int, default=60)
    demo.add_argument("--steps", type=_positive_int, default=100)
    demo.add_argument("--agents", type=_positive_int, default=3)
    demo.add_argument("--repeats", type=_positive_int, default=50)
    demo.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or auto")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    from fastmarl.check import add_check_parser  # light: torch loads when the check runs

    add_check_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
