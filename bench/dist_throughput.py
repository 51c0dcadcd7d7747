"""Throughput of ``fastmarl train`` on 1 and 2 ranks (torchrun, gloo) on this machine's CPU cores.

Providers, each a whole short run, alternated round by round (the order flips every round) so
that a change in the machine's load hits all of them:

- ``1 rank``: ``torchrun --standalone --nproc-per-node 1 -m fastmarl train ...``, 1 torch thread;
- ``2 ranks``: ``--nproc-per-node 2``, 1 torch thread per rank (each rank collects
  ``--frames-per-batch`` frames: an iteration is twice the frames);
- ``1 process, 2 threads``: plain ``fastmarl train`` with 2 torch threads, the other way to use
  two cores.

A run's throughput is the median over its iterations after the first (warm-up) of the frames
of all ranks per second of iteration; per round, each provider's throughput over the 1-rank
one's. Prints the median frames per second per provider and the median (and range) of the
per-round ratios; ``--json`` saves everything::

    python bench/dist_throughput.py --rounds 4 --json bench/results/dist-throughput-cpu-<date>.json

The default sizes are the tutorial's per rank except the frames (1,200 per rank, 12
environments x 100 steps, instead of 6,000), so that a round takes seconds, not minutes:
30 epochs of minibatches of 400, MAPPO.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROVIDERS = {
    "1 rank": {"nproc": 1, "threads": 1},
    "2 ranks": {"nproc": 2, "threads": 1},
    "1 process, 2 threads": {"nproc": None, "threads": 2},
}


def command(provider: str, args, out: Path) -> tuple[list[str], dict]:
    spec = PROVIDERS[provider]
    train = ["train", "--iters", str(args.iters), "--frames-per-batch", str(args.frames_per_batch),
             "--epochs", str(args.epochs), "--minibatch", str(args.minibatch), "--algo", args.algo,
             "--no-progress", "--out", str(out)]
    if spec["nproc"] is None:
        argv = [sys.executable, "-m", "fastmarl", *train]
    else:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={spec['nproc']}",
                "-m", "fastmarl", *train]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONWARNINGS": "ignore"}
    return argv, env


def throughput(folder: Path) -> float:
    rows = json.loads((folder / "metrics.json").read_text())
    return statistics.median(row["fps"] for row in rows[1:] or rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--frames-per-batch", type=int, default=1200)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--minibatch", type=int, default=400)
    parser.add_argument("--algo", default="mappo")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--dry-run", action="store_true", help="print the commands of one round and exit")
    args = parser.parse_args(argv)
    names = list(PROVIDERS)
    if args.dry_run:
        for name in names:
            argv_, env = command(name, args, Path("RUN"))
            print(f"{name}: OMP_NUM_THREADS={env['OMP_NUM_THREADS']} {' '.join(argv_)}")
        return 0
    fps = {name: [] for name in names}
    ratios = {name: [] for name in names[1:]}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = names if round_ % 2 == 0 else names[::-1]
            got = {}
            for name in order:
                out = Path(tmp) / f"r{round_}-{name.replace(' ', '-').replace(',', '')}"
                argv_, env = command(name, args, out)
                result = subprocess.run(argv_, capture_output=True, text=True, env=env)
                if result.returncode:
                    print(result.stderr[-3000:], file=sys.stderr)
                    return 1
                got[name] = throughput(out)
                fps[name].append(got[name])
            for name in names[1:]:
                ratios[name].append(got[name] / got[names[0]])
            print(f"round {round_ + 1}: " + ", ".join(f"{n} {got[n]:.0f} frames/s" for n in names), flush=True)
    print("\nmedian frames per second (all ranks), and per round over 1 rank's:")
    for name in names:
        line = f"  {name:<22} {statistics.median(fps[name]):8.0f}"
        if name in ratios:
            r = ratios[name]
            line += f"   {statistics.median(r):.2f}x (range {min(r):.2f}-{max(r):.2f}x over {len(r)} rounds)"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "load_average_at_end": os.getloadavg(), "args": vars(args),
            "fps": fps, "ratio_to_1_rank": ratios,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
