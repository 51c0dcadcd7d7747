"""``fastmarl`` command line (also ``python -m fastmarl``).

    fastmarl demo    GAE on a real VMAS Navigation rollout: TorchRL's MultiAgentGAE against
                     fastmarl's on the same TensorDict (parity and time)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastmarl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="GAE on a VMAS rollout: TorchRL vs fastmarl")
    demo.add_argument("--scenario", default="navigation")
    demo.add_argument("--envs", type=_positive_int, default=60)
    demo.add_argument("--steps", type=_positive_int, default=100)
    demo.add_argument("--agents", type=_positive_int, default=3)
    demo.add_argument("--repeats", type=_positive_int, default=50)
    demo.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or auto")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
