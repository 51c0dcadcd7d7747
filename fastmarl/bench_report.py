"""``fastmarl bench``: run the pytest-benchmark suite (or read saved JSON), report, compare.

The report has one table per benchmark group (an op or step at one size on one device): the
median of each provider, fastmarl's speed-up over every peer, and for GAE the achieved
bandwidth (bytes the op must move / median) against a copy of the same bytes measured in the
same run. ``--compare OLD.json`` flags every fastmarl provider whose median grew by more than
the threshold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

FASTMARL = ("fastmarl", "fastmarl_compiled", "fastmarl_cudagraph", "fastmarl_reduce_overhead")


def load_results(paths) -> list[dict]:
    """Benchmarks from pytest-benchmark JSON files, each with its machine's device info."""
    rows = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        machine = data.get("machine_info", {}).get("fastmarl", {})
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info", {})
            stats = bench.get("stats") or {}
            if not stats or "provider" not in info:
                continue
            rows.append({
                "group": bench.get("group") or bench["name"], "provider": info["provider"],
                "median": stats["median"], "min": stats["min"], "rounds": stats.get("rounds"),
                "bytes": info.get("bytes"), "device_name": machine.get("device_name"), "file": str(path),
            })
    return rows


def by_group(rows) -> dict[str, dict[str, dict]]:
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        groups[row["group"]][row["provider"]] = row
    return dict(groups)


def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"


def speedups(providers: dict[str, dict]) -> dict[tuple[str, str], float]:
    """``(fastmarl provider, peer) -> peer median / fastmarl median`` within one group."""
    out = {}
    for ours in FASTMARL:
        if ours not in providers:
            continue
        for peer, row in providers.items():
            if peer in FASTMARL or peer == "copy":
                continue
            out[(ours, peer)] = row["median"] / providers[ours]["median"]
    return out


def report(rows) -> str:
    """One table per group: every provider's median and min, and for each peer the speed-up of
    every fastmarl provider present (peer median / fastmarl median), so that eager compares with
    eager and compiled with compiled."""
    lines = []
    for group, providers in sorted(by_group(rows).items()):
        device = next((r["device_name"] for r in providers.values() if r["device_name"]), "")
        lines.append(f"## {group}" + (f"  ({device})" if device else ""))
        ours = [name for name in FASTMARL if name in providers]
        copy = providers.get("copy")
        header = f"{'provider':<26}{'median':>12}{'min':>12}"
        header += "".join(f"  {'x ' + name:>22}" for name in ours)
        lines.append(header)
        for name, row in sorted(providers.items(), key=lambda kv: kv[1]["median"]):
            line = f"{name:<26}{_fmt_time(row['median']):>12}{_fmt_time(row['min']):>12}"
            if name not in FASTMARL and name != "copy":
                line += "".join(f"  {row['median'] / providers[o]['median']:>21.2f}x" for o in ours)
            lines.append(line.rstrip())
        best = providers.get("fastmarl")
        if best and best.get("bytes") and copy:
            ours_bw = best["bytes"] / best["median"] / 1e9
            copy_bw = copy["bytes"] / copy["median"] / 1e9
            lines.append(f"bandwidth: fastmarl {ours_bw:.1f} GB/s, copy {copy_bw:.1f} GB/s "
                         f"({ours_bw / copy_bw:.0%} of copy)")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def markdown(rows) -> str:
    """A Markdown table, a row per group: the medians of fastmarl and TorchRL, eager and
    compiled, and the two like-for-like speed-ups (eager over eager, compiled over compiled).
    GAE's TorchRL peers are its loop (eager) and the loop under torch.compile (LeanRL)."""
    peers = {"eager": ("torchrl", "torchrl_loop"), "compiled": ("torchrl_compiled", "torchrl_loop_compiled")}

    def pick(providers, names):
        return next((providers[n] for n in names if n in providers), None)

    def cell(row):
        return _fmt_time(row["median"]) if row else "–"

    def ratio(peer, ours):
        return f"{peer['median'] / ours['median']:.2f}×" if peer and ours else "–"

    lines = ["| group | fastmarl | TorchRL | speed-up | fastmarl compiled | TorchRL compiled | speed-up |",
             "|---|---|---|---|---|---|---|"]
    for group, providers in sorted(by_group(rows).items()):
        ours, ours_c = providers.get("fastmarl"), providers.get("fastmarl_compiled")
        theirs, theirs_c = pick(providers, peers["eager"]), pick(providers, peers["compiled"])
        lines.append(f"| {group} | {cell(ours)} | {cell(theirs)} | {ratio(theirs, ours)} | "
                     f"{cell(ours_c)} | {cell(theirs_c)} | {ratio(theirs_c, ours_c)} |")
    return "\n".join(lines) + "\n"


def regressions(new_rows, old_rows, threshold: float) -> list[str]:
    """fastmarl providers whose median grew by more than ``threshold`` (0.1 = 10%)."""
    old = {(r["group"], r["provider"]): r for r in old_rows}
    found = []
    for row in new_rows:
        key = (row["group"], row["provider"])
        if row["provider"] not in FASTMARL or key not in old:
            continue
        ratio = row["median"] / old[key]["median"]
        if ratio > 1 + threshold:
            found.append(f"{row['group']} {row['provider']}: {_fmt_time(old[key]['median'])} -> "
                         f"{_fmt_time(row['median'])} ({ratio - 1:+.0%})")
    return found


def chart(rows, path: Path) -> None:
    """A horizontal bar chart of fastmarl's speed-up over each peer, per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    for group, providers in sorted(by_group(rows).items()):
        for (ours, peer), ratio in sorted(speedups(providers).items()):
            # fastmarl eager against every peer; the compiled and CUDA-graph providers against
            # the compiled peers (like for like).
            if ours != "fastmarl" and not peer.endswith("compiled"):
                continue
            labels.append(f"{group}: {ours} vs {peer}")
            values.append(ratio)
    fig, ax = plt.subplots(figsize=(8, max(2.0, 0.28 * len(labels) + 1)))
    colors = ["tab:green" if v >= 1 else "tab:red" for v in values]
    ax.barh(range(len(values)), values, color=colors)
    ax.set_yticks(range(len(values)), labels, fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("fastmarl speed-up (peer median / fastmarl median), log scale")
    ax.invert_yaxis()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written next to its final name, then renamed: a crash never leaves half a PNG.
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def run_suite(bench_dir: Path, json_path: Path, device: str | None, sizes: str | None, select: str | None) -> int:
    """Run ``bench/`` with pytest-benchmark, writing ``json_path``; returns pytest's exit code."""
    cmd = [sys.executable, "-m", "pytest", str(bench_dir), "-q", "-p", "no:logging",
           f"--benchmark-json={json_path}"]
    if device:
        cmd.append(f"--bench-device={device}")
    if sizes:
        cmd.append(f"--bench-sizes={sizes}")
    if select:
        cmd += ["-k", select]
    return subprocess.call(cmd)


def find_bench_dir() -> Path | None:
    for candidate in (Path.cwd() / "bench", Path(__file__).resolve().parents[1] / "bench"):
        if (candidate / "conftest.py").is_file():
            return candidate
    return None
