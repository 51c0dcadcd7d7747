"""``fastmarl bench``: run the pytest-benchmark suites (or read saved JSON), report, chart, compare.

- ``compact``: the default table, one row per op and size: fastmarl's median against the
  fastest TorchRL provider, eager against eager and compiled against compiled, with speed-ups.
- ``report``: every provider of every group (``--verbose``, and ``report.txt``), with GAE's
  achieved bandwidth (bytes the op must move / median) against a copy of the same bytes.
- ``headline_chart``: the README's figure, fastmarl's speed-up per op and size on a log scale.
- ``training_chart``: the reward curves and seconds per iteration of a ``fastmarl compare`` run.
- ``regressions``: every fastmarl provider whose median grew by more than a threshold.

Imports neither torch nor the suites: it reads JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

FASTMARL = ("fastmarl", "fastmarl_compiled", "fastmarl_cudagraph", "fastmarl_reduce_overhead")
# TorchRL's providers per mode; a row compares fastmarl with the fastest of them.
TORCHRL = {
    "eager": ("torchrl", "torchrl_loop", "torchrl_vectorized"),
    "compiled": ("torchrl_compiled", "torchrl_loop_compiled"),
}
OURS = {"eager": "fastmarl", "compiled": "fastmarl_compiled"}

# Size names every suite understands (bench/benchutil.py: --bench-sizes), and how a suite whose
# own sizes are named differently maps them. QMIX's grid is B samples x n agents (E=32):
# tutorial = PyMARL's batch of 32 with the tutorial's 3 agents, benchmarl = a batch of 4,096
# with 8 agents, large = 65,536 x 8.
SHARED_SIZES = ("tiny", "tutorial", "benchmarl", "large", "long")
SIZE_ALIASES = {
    "qmix": {"tutorial": ["B32-n3"], "benchmarl": ["B4096-n8"], "large": ["B65536-n8"]},
    "update": {"benchmarl": ["B4096-n8"]},  # bench_update.py's QMIX step
}

# The headline chart: these ops, in this order, at the shared sizes (at most 10 categories,
# so at most 20 bars: tutorial and benchmarl first, then large while there is room).
HEADLINE_OPS = {
    "gae": "GAE\n(MultiAgentGAE)",
    "ppo_loss": "MAPPOLoss\nfwd+bwd",
    "qmix_loss": "QMixerLoss\nfwd+bwd",
    "update_ppo_step": "PPO update step\n(UpdateStep)",
    "update_qmix_step": "QMIX update step\n(UpdateStep)",
    "update_ppo_iteration": "PPO update\n(1 iteration)",
    # bench_update.py's names in results from before 2026-11-30
    "update_ppo": "PPO update\n(1 iteration)",
    "update_qmix": "QMIX update\n(1 round)",
}
HEADLINE_SIZES = ("tutorial", "benchmarl", "large")
MAX_CATEGORIES = 10


def shared_size(op: str, size: str) -> str:
    """The shared size name of a suite's own size (``B4096-n8`` of a QMIX op is ``benchmarl``)."""
    suite = "qmix" if op.startswith("qmix") else op.split("_")[0]
    for name, own in SIZE_ALIASES.get(suite, {}).items():
        if size in own:
            return name
    return size


def load_results(paths) -> list[dict]:
    """Benchmarks from pytest-benchmark JSON files, each with its machine's device info and date."""
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
                "op": info.get("op"), "size": info.get("size"), "info": info,
                "median": stats["median"], "min": stats["min"], "rounds": stats.get("rounds"),
                "bytes": info.get("bytes"), "device_name": machine.get("device_name"),
                "torch": machine.get("torch"), "threads": machine.get("torch_num_threads"),
                "date": (data.get("datetime") or "")[:10], "file": str(path),
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


def fastest_torchrl(providers: dict[str, dict], mode: str) -> dict | None:
    """TorchRL's fastest provider of a mode (``eager`` or ``compiled``) in one group."""
    present = [providers[name] for name in TORCHRL[mode] if name in providers]
    return min(present, key=lambda row: row["median"]) if present else None


def pairs(providers: dict[str, dict]) -> dict[str, tuple[dict | None, dict | None]]:
    """``mode -> (fastmarl row, fastest TorchRL row)``, like for like."""
    return {mode: (providers.get(OURS[mode]), fastest_torchrl(providers, mode)) for mode in OURS}


def _groups_in_order(rows):
    """Groups sorted by op, then shared size in SHARED_SIZES order, then the suite's size name."""
    order = {name: i for i, name in enumerate(SHARED_SIZES)}

    def key(item):
        group, providers = item
        row = next(iter(providers.values()))
        size = shared_size(row["op"] or "", row["size"] or "")
        return (row["op"] or group, order.get(size, len(order)), row["size"] or "", group)

    return sorted(by_group(rows).items(), key=key)


def compact(rows) -> str:
    """The default table: a row per op and size, fastmarl against TorchRL's fastest provider,
    eager and compiled (peer median / fastmarl median; above 1.00x fastmarl is faster)."""
    entries = []
    for group, providers in _groups_in_order(rows):
        row = next(iter(providers.values()))
        op = row["op"] or group
        size = row["size"] or ""
        alias = shared_size(op, size)
        label = f"{alias} ({size})" if alias != size else size
        cells = []
        for mode in ("eager", "compiled"):
            ours, theirs = pairs(providers)[mode]
            speedup = f"{theirs['median'] / ours['median']:.2f}x" if ours and theirs else "-"
            cells.append(f"{_fmt_time(ours['median']) if ours else '-':>11}"
                         f"{_fmt_time(theirs['median']) if theirs else '-':>11}{speedup:>10}")
        entries.append((op, label, cells))
    # Columns as wide as their longest entry (op names such as update_ppo_iteration ran into
    # the size column at a fixed width).
    op_width = max([14] + [len(op) + 2 for op, _, _ in entries])
    size_width = max([20] + [len(label) + 2 for _, label, _ in entries])
    header = (f"{'op':<{op_width}}{'size':<{size_width}}{'fastmarl':>11}{'TorchRL':>11}{'speed-up':>10}"
              f"{'fastmarl':>12}{'TorchRL':>11}{'speed-up':>10}")
    lines = [f"{'':<{op_width + size_width}}{' eager ':-^32} {' compiled ':-^32}", header]
    for op, label, cells in entries:
        lines.append(f"{op:<{op_width}}{label:<{size_width}}{cells[0]} {cells[1]}".rstrip())
    devices = sorted({r["device_name"] for r in rows if r["device_name"]})
    lines.append("")
    lines.append("TorchRL = its fastest provider of the mode (GAE: the loop, the vectorised path, the loop under "
                 "torch.compile); medians" + (f" on {', '.join(devices)}" if devices else "")
                 + ". --verbose: every provider.")
    return "\n".join(lines) + "\n"


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
    """A Markdown table, a row per group: the medians of fastmarl and TorchRL's fastest provider,
    eager and compiled, and the two like-for-like speed-ups (eager over eager, compiled over
    compiled). GAE's TorchRL peers are its loop, its vectorised path and the loop under
    torch.compile (LeanRL's recipe)."""

    def cell(row):
        return _fmt_time(row["median"]) if row else "–"

    def ratio(peer, ours):
        return f"{peer['median'] / ours['median']:.2f}×" if peer and ours else "–"

    lines = ["| group | fastmarl | TorchRL | speed-up | fastmarl compiled | TorchRL compiled | speed-up |",
             "|---|---|---|---|---|---|---|"]
    for group, providers in sorted(by_group(rows).items()):
        (ours, theirs), (ours_c, theirs_c) = pairs(providers).values()
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


def _dims(row: dict) -> str:
    info = row["info"]
    op = row["op"]
    if op == "gae":
        return f"{info['B']}×{info['T']}×{info['A']}"
    if op in ("ppo_loss", "ppo_math"):
        return f"{info['N']}×{info['A']}"
    if op and op.startswith("qmix"):
        return f"B={info['B']}, n={info['n']}"
    if op in ("update_ppo", "update_ppo_iteration"):
        return f"{info['envs']}×{info['steps']}×{info['agents']}"
    if op == "update_ppo_step":
        return f"{info['N']}×{info['A']}"
    if op == "update_qmix_step":
        return f"B={info['B']}, n={info['A']}"
    if op == "update_qmix":
        return f"{info['updates']}×{info['minibatch']}×{info['agents']}"
    return row["size"] or ""


def headline(rows) -> list[dict]:
    """The headline chart's categories: ``{op, size, label, eager, compiled}`` (speed-ups or None)."""
    groups = {}
    for _, providers in by_group(rows).items():
        row = next(iter(providers.values()))
        if row["op"] in HEADLINE_OPS:
            groups[(row["op"], shared_size(row["op"], row["size"] or ""))] = providers
    chosen = [(op, size) for size in HEADLINE_SIZES[:2] for op in HEADLINE_OPS if (op, size) in groups]
    for op in HEADLINE_OPS:
        for size in HEADLINE_SIZES[2:]:
            if (op, size) in groups and len(chosen) < MAX_CATEGORIES:
                chosen.append((op, size))
    chosen = chosen[:MAX_CATEGORIES]
    ops = list(HEADLINE_OPS)
    chosen.sort(key=lambda k: (ops.index(k[0]), HEADLINE_SIZES.index(k[1])))
    out = []
    for op, size in chosen:
        providers = groups[(op, size)]
        ratios = {}
        for mode, (ours, theirs) in pairs(providers).items():
            ratios[mode] = theirs["median"] / ours["median"] if ours and theirs else None
        any_row = next(iter(providers.values()))
        out.append({"op": op, "size": size, "label": f"{HEADLINE_OPS[op]}\n{size}\n{_dims(any_row)}", **ratios})
    return out


def _caption(rows) -> str:
    devices = sorted({r["device_name"] for r in rows if r["device_name"]}) or ["unknown device"]
    torches = sorted({r["torch"] for r in rows if r["torch"]})
    threads = sorted({str(r["threads"]) for r in rows if r["threads"]})
    dates = sorted({r["date"] for r in rows if r["date"]})
    when = dates[-1] if len(dates) == 1 else (f"{dates[0]} to {dates[-1]}" if dates else "date unknown")
    return (f"{', '.join(devices)}" + (f" ({', '.join(threads)} threads)" if threads else "")
            + (f", torch {', '.join(torches)}" if torches else "") + f"; measured {when}. "
            "Speed-up = TorchRL median / fastmarl median (pytest-benchmark), against TorchRL's fastest "
            "provider of each mode; below 1× TorchRL was faster.")


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written next to its final name, then renamed: a crash never leaves half a PNG.
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def headline_chart(rows, path: Path) -> None:
    """fastmarl's speed-up over TorchRL per op and size: two bars per category (eager vs eager,
    compiled vs compiled), log scale, at most 20 bars, the device and date in the caption."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    plt = _matplotlib()
    cats = headline(rows)
    fig, ax = plt.subplots(figsize=(12, 6))
    width = 0.38
    series = (("eager", "fastmarl vs TorchRL, both eager", "#1f77b4"),
              ("compiled", "fastmarl vs TorchRL, both under torch.compile", "#ff7f0e"))
    values = [c[m] for c in cats for m in ("eager", "compiled") if c[m]]
    lo = min([0.5] + [v / 1.3 for v in values])
    hi = max([2.0] + [v * 1.4 for v in values])
    labelled: set[str] = set()
    for i, (mode, label, color) in enumerate(series):
        xs = [k + (i - 0.5) * width for k in range(len(cats))]
        for x, cat in zip(xs, cats):
            value = cat[mode]
            if value is None:
                ax.text(x, 1.0, "n/a", ha="center", va="bottom", fontsize=7, color="gray")
                continue
            # Bars grow from 1x (no change) up or down, so a slowdown reads as one.
            ax.bar(x, abs(value - 1.0), width=width, bottom=min(1.0, value), color=color,
                   label=None if label in labelled else label)
            labelled.add(label)
            ax.text(x, value * (1.03 if value >= 1 else 1 / 1.03), f"{value:.2f}×", ha="center",
                    va="bottom" if value >= 1 else "top", fontsize=8)
    ax.axhline(1.0, color="black", linewidth=0.9)
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ticks = [t for t in (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16) if lo <= t <= hi]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.set_xticks(range(len(cats)), [c["label"] for c in cats], fontsize=8)
    ax.set_ylabel("speed-up over TorchRL (log scale)")
    ax.set_title("fastmarl speed-up over TorchRL 0.14.1 per op and size (higher is better)")
    ax.grid(axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), loc="upper right", fontsize=8)
    fig.text(0.01, 0.01, _caption(rows), fontsize=7.5, wrap=True, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _save(fig, path)


def training_chart(comparison: str | Path | dict, path: Path) -> None:
    """The reward curves of both backends and the speed-up per iteration, from a
    ``fastmarl compare`` ``comparison.json``."""
    plt = _matplotlib()
    data = comparison if isinstance(comparison, dict) else json.loads(Path(comparison).read_text())
    config = data.get("config", {})
    speedup = data.get("speedup", {})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    styles = {"torchrl": dict(color="#7f7f7f", marker="o", linestyle="-", linewidth=2.5, markersize=7),
              "fastmarl": dict(color="#1f77b4", marker="x", linestyle="--", linewidth=1.5, markersize=7)}
    names = {"torchrl": "TorchRL losses", "fastmarl": "fastmarl losses"}
    for backend in ("torchrl", "fastmarl"):
        if backend in data:
            rewards = data[backend]["rewards"]
            left.plot(range(1, len(rewards) + 1), rewards, label=names[backend], **styles[backend])
    left.set_xlabel("iteration")
    left.set_ylabel("mean episode reward")
    difference = speedup.get("max_reward_difference")
    left.set_title("reward: same seed, same data" + (f" (largest difference {difference:.2g})"
                                                     if difference is not None else ""), fontsize=10)
    left.legend(fontsize=8)
    per_iteration = speedup.get("round_by_iteration") or []
    if per_iteration:
        xs = range(1, len(per_iteration) + 1)
        right.fill_between(xs, [r["q1"] for r in per_iteration], [r["q3"] for r in per_iteration],
                           color="#1f77b4", alpha=0.25, label="interquartile range of the rounds")
        right.plot(xs, [r["median"] for r in per_iteration], color="#1f77b4", marker="o",
                   label="median over the iteration's rounds")
        right.set_ylabel("TorchRL time / fastmarl time")
        overall = speedup.get("round")
        title = "speed-up per minibatch update round (backends taking turns)"
        if overall:
            title += (f"\nall {overall['n']} rounds: median {overall['median']:.2f}× "
                      f"(interquartile {overall['q1']:.2f}–{overall['q3']:.2f}×)")
        whole = speedup.get("iteration")
        if whole:
            title += (f"\nwhole iterations: median {whole['median']:.2f}× "
                      f"(interquartile {whole['q1']:.2f}–{whole['q3']:.2f}×)")
        right.axhline(1.0, color="black", linewidth=0.9)
        values = [r["q1"] for r in per_iteration] + [r["q3"] for r in per_iteration]
        right.set_ylim(min(0.8, min(values) * 0.95), max(1.3, max(values) * 1.05))
        right.set_title(title, fontsize=10)
    else:  # a comparison.json without rounds: seconds per iteration
        for backend in ("torchrl", "fastmarl"):
            seconds = data.get(backend, {}).get("seconds") or []
            right.plot(range(1, len(seconds) + 1), seconds, label=names[backend], **styles[backend])
        right.set_ylabel("seconds per iteration")
        right.set_ylim(bottom=0)
        right.set_title("seconds per iteration", fontsize=10)
    right.set_xlabel("iteration")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=8, loc="upper right")
    algo = str(config.get("algo", "mappo")).upper()
    fig.suptitle(f"fastmarl compare: {algo} on VMAS {config.get('scenario', 'navigation')}, "
                 f"{config.get('frames_per_batch', '?')} frames × {config.get('epochs', '?')} epochs per iteration")
    fig.text(0.01, 0.01, f"{data.get('device_name', 'unknown device')}, torch {data.get('torch', '?')}; "
                         f"measured {data.get('date', 'date unknown')} with `fastmarl compare` (seed "
                         f"{config.get('seed', 0)}) while other jobs shared the machine",
             fontsize=7.5, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    _save(fig, path)


def chart(rows, path: Path) -> None:
    """The headline chart (kept under its old name)."""
    headline_chart(rows, path)


def run_suite(bench_dir: Path, json_path: Path, device: str | None, sizes: str | None, select: str | None,
              verbose: bool = False) -> int:
    """Run ``bench/`` with pytest-benchmark, writing ``json_path``; returns pytest's exit code.
    pytest-benchmark's own wide tables are printed only when ``verbose``."""
    cmd = [sys.executable, "-m", "pytest", str(bench_dir), "-q", "-p", "no:logging", "-p", "no:cacheprovider",
           f"--benchmark-json={json_path}"]
    if not verbose:
        cmd += ["--benchmark-quiet", "--disable-warnings"]
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
