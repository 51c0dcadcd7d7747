"""The GPU targets of issue 13, measured: each one met or missed, with its figure.

    python bench/gpu_targets.py --json DIR/targets.json           # on a GPU (gpu_session.sh runs it)
    python bench/gpu_targets.py --json DIR/targets.json --dry-run # CPU, tiny sizes, no compile

Targets (float32):

- GAE forward at 4096 envs x 512 steps x 8 agents: >= 85% of a device-to-device copy of as many
  bytes (3 tensors in, 2 out, 2 bool flags per env step).
- GAE full call at 4096 envs x 128 steps (one agent): <= 34 us (rl-triton's H100 figure).
- PPO clip + critic forward + backward at 4096x3 and 65536x8: >= 2.5x ``torch.compile`` of
  TorchRL's math and >= 5x TorchRL eager.
- QMIX mixer forward + backward at B=4096, n in {3, 8}, E=32: >= 2.5x compile, >= 5x eager.

The providers are :meth:`fastmarl.check.Checker.providers` (the speed rows of ``fastmarl
check``). Each is timed as a training loop calls it: back-to-back calls between two device
synchronisations, so a call bound by its host work (a Python loss at 4096x3) counts that work;
blocks of calls alternate between providers and the median block is kept. (CUDA-event timing of
single calls, ``triton.testing.do_bench``, hides up to the L2 flush's duration of host time per
call: wrong for the 34 us target.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from fastmarl.check import Checker, gae_bytes

# (name, op, size, what is compared, threshold): speed-up = peer / fastmarl, higher is better;
# for "us" the figure is fastmarl's time per call, lower is better; for "copy" the fraction of
# the copy's bandwidth.
TARGETS = [
    ("GAE 4096x512x8 bandwidth", "gae", (4096, 512, 8), "copy", 0.85),
    ("GAE 4096x128 full call", "gae", (4096, 128, 1), "us", 34.0),
    ("PPO 4096x3 vs compile", "ppo_clip", (4096, 3), "torchrl_compiled", 2.5),
    ("PPO 4096x3 vs eager", "ppo_clip", (4096, 3), "torchrl", 5.0),
    ("PPO 65536x8 vs compile", "ppo_clip", (65536, 8), "torchrl_compiled", 2.5),
    ("PPO 65536x8 vs eager", "ppo_clip", (65536, 8), "torchrl", 5.0),
    ("QMIX B=4096 n=3 vs compile", "qmix", (4096, 3), "torchrl_compiled", 2.5),
    ("QMIX B=4096 n=3 vs eager", "qmix", (4096, 3), "torchrl", 5.0),
    ("QMIX B=4096 n=8 vs compile", "qmix", (4096, 8), "torchrl_compiled", 2.5),
    ("QMIX B=4096 n=8 vs eager", "qmix", (4096, 8), "torchrl", 5.0),
]
DRY_SIZES = {"gae": (8, 16, 3), "ppo_clip": (64, 3), "qmix": (32, 3)}


def per_call_ms(providers: dict, device, *, block_seconds: float, blocks: int) -> dict[str, float]:
    """Median over ``blocks`` of the time per call of back-to-back calls, per provider."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    calls = {}
    for name, fn in providers.items():  # warm up (compiles), then size a block
        for _ in range(3):
            fn()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        calls[name] = max(1, min(1000, int(block_seconds / max(time.perf_counter() - start, 1e-6))))
    samples = {name: [] for name in providers}
    for _ in range(blocks):
        for name, fn in providers.items():
            sync()
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / calls[name])
    return {name: 1e3 * statistics.median(s) for name, s in samples.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no compile: the code path only")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_targets: error: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    checker = Checker(device.type, [], quick=args.dry_run)
    timings, errors, rows = {}, {}, []
    start = time.perf_counter()
    for name, op, size, peer, threshold in TARGETS:
        if args.dry_run:
            size = DRY_SIZES[op]
        if (op, size) not in timings:
            providers, errors[(op, size)], _ = checker.providers(op, size, compiled=not args.dry_run)
            timings[(op, size)] = per_call_ms(providers, device, block_seconds=0.01 if args.dry_run else 0.2,
                                              blocks=3 if args.dry_run else 7)
            del providers
        ms = timings[(op, size)]
        ours = ms["fastmarl"]
        if peer == "us":
            figure, met = 1e3 * ours, 1e3 * ours <= threshold
            text = f"{figure:.1f} us (target <= {threshold:g} us)"
        elif peer == "copy":
            figure = ms["copy"] / ours if "copy" in ms else None
            met = figure is not None and figure >= threshold
            text = (f"{gae_bytes(*size) / ours / 1e6:.0f} GB/s = {figure:.0%} of a copy (target >= {threshold:.0%})"
                    if figure is not None else "no copy on this device")
        else:
            figure = ms[peer] / ours if peer in ms else None
            met = figure is not None and figure >= threshold
            text = (f"{figure:.2f}x: {ours:.3f} ms against {ms[peer]:.3f} ms (target >= {threshold:g}x)"
                    if figure is not None else "no compiled peer in a dry run")
        rows.append(dict(target=name, op=op, size=list(size), peer=peer, threshold=threshold, figure=figure,
                         met=bool(met), text=text, ms=ms, error_vs_torchrl=errors[(op, size)]))
    info = checker.header_info()
    payload = dict(device_name=info["device_name"], torch=info["torch"], triton=info["triton"],
                   torchrl=info["torchrl"], dry_run=args.dry_run, seconds=round(time.perf_counter() - start, 1),
                   targets=rows)
    Path(args.json).write_text(json.dumps(payload, indent=1))
    width = max(len(r["target"]) for r in rows)
    print(f"targets on {info['device_name']}" + (" (dry run: sizes are tiny, nothing here is a measurement)"
                                                   if args.dry_run else ""))
    for r in rows:
        print(f"  {r['target']:<{width}}  {'met   ' if r['met'] else 'MISSED'}  {r['text']}")
    bad = [r for r in rows if r["error_vs_torchrl"] > 1e-4]
    for r in bad:
        print(f"  {r['target']}: fastmarl and TorchRL disagree (error {r['error_vs_torchrl']:.2g})")
    # Missed targets are findings, not failures of the script; a disagreement is a failure.
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
