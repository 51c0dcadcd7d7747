"""Block-size sweep of every Triton kernel family: writes the tuned-configuration table.

    python bench/tune_kernels.py --out DIR [--jobs 8]      # on a GPU (bench/gpu_session.sh runs it)
    python bench/tune_kernels.py --out DIR --dry-run       # CPU, Triton's interpreter, tiny shapes

For each family of :mod:`fastmarl.ops.tuning` and each key (feature block) the workloads below
reach, every candidate configuration (:func:`fastmarl.ops.tuning.candidates`, at most 9) runs
the family's launchers on float32 workloads of representative sizes. A candidate counts only if
its outputs match the default configuration's (``‖out − ref‖/‖ref‖ <= 1e-5``: another tile
size only reorders float32 sums); among those the one with the smallest geometric mean of its
time ratios to the default over the key's workloads wins (the workloads differ in N or T,
which the key leaves out: the choice must be good for all of them). Times are medians of
``triton.testing.do_bench`` (CUDA events, L2 flushed between runs).

``--jobs N`` compiles first: N worker processes each run a share of the (configuration,
workload) pairs once, which fills Triton's on-disk cache; the timing process then loads every
kernel from it. On the GPU machine (16 cores) that takes the ~150 compiles from minutes to
seconds of wall time.

Writes ``DIR/tuned_configs.json`` (the table for ``FASTMARL_TUNED_CONFIGS``, with every
measurement) and ``DIR/tuned_configs.py`` (``fastmarl/ops/tuned_configs.py`` with this GPU
architecture's entries replaced: copy it over and commit). Prints one line per key.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

from fastmarl.check import rel_error
from fastmarl.ops import tuning

# float32 workloads per family: (key blocks, sizes). GAE [R, T, F]; PPO [N, M]; QMIX (B, n, S).
GAE_SIZES = [(4096, 128, 1), (4096, 512, 3), (4096, 512, 8), (512, 256, 64)]
PPO_SIZES = [(4096, 3), (65536, 3), (4096, 8), (65536, 8)]
QMIX_SIZES = [(4096, 3, 48, 0), (4096, 8, 168, 0), (4096, 3, 48, 64), (4096, 8, 168, 64)]
DRY_GAE_SIZES = [(3, 40, 3)]
DRY_PPO_SIZES = [(40, 3)]
DRY_QMIX_SIZES = [(20, 3, 11, 0)]


# --------------------------------------------------------------------------- workloads


def _gae_workloads(family, sizes, device):
    from fastmarl.kernels.gae import gae_block_f
    from fastmarl.ops.gae import triton as launchers

    for R, T, F in sizes:
        value, next_value, reward = (torch.randn(R, T, F, device=device) for _ in range(3))
        done = torch.rand(R, T, F, device=device) < 0.02
        terminated = done & (torch.rand(R, T, F, device=device) < 0.5)
        outs = [torch.empty(R, T, F, device=device) for _ in range(3)]
        if family == "gae_fwd":
            def run(v=value, nv=next_value, r=reward, d=done, te=terminated, o=outs):
                launchers.gae_fwd(v, nv, r, d, te, 0.99, 0.95, None, None, o[0], o[1])
                return o[:2]
        else:
            def run(ga=value, gv=next_value, d=done, te=terminated, o=outs):
                launchers.gae_bwd(ga, gv, d, te, 0.99, 0.95, None, None, o[0], o[1], o[2])
                return o
        yield {"bf": gae_block_f(F)}, f"{R}x{T}x{F}", run


def _ppo_workloads(family, sizes, device):
    from fastmarl.functional import clip_bounds
    from fastmarl.kernels.ppo import ppo_block_m
    from fastmarl.ops.ppo import triton as launchers

    for N, M in sizes:
        log_prob = 0.3 * torch.randn(N, M, device=device)
        prev = log_prob + 0.2 * torch.randn(N, M, device=device)
        advantage = torch.randn(N, M, device=device)
        low, high = clip_bounds(0.2, log_prob)
        scalars = [torch.empty((), device=device) for _ in range(5)]
        ess, stats = torch.empty(M, device=device), [torch.empty(M, device=device) for _ in range(2)]
        grad = torch.empty(N, M, device=device)
        clip_value, coeff = torch.tensor(0.2, device=device), torch.tensor(0.5, device=device)
        one = torch.tensor(1.0, device=device)
        if family == "ppo_clip":
            def run(lp=log_prob, pv=prev, a=advantage, lo=low, hi=high, sc=scalars, e=ess, st=stats, M=M):
                launchers.ppo_clip_fwd(lp, pv, a, lo, hi, M, True, "mean", loss=sc[0], clip_fraction=sc[1],
                                       kl_approx=sc[2], ess=e, max_ratio=sc[3], mean_ratio=sc[4],
                                       adv_mean=st[0], adv_std=st[1])
                return [*sc, e, *st]
        elif family == "ppo_clip_bwd":
            def run(lp=log_prob, pv=prev, a=advantage, lo=low, hi=high, g=grad, M=M, dev=device, one=one):
                mean, std = torch.zeros(M, device=dev), torch.ones(M, device=dev)
                launchers.ppo_clip_bwd(one, lp, pv, a, lo, hi, mean, std, M, "mean", grad_log_prob=g)
                return [g]
        elif family == "ppo_critic":
            def run(v=log_prob, t=advantage, o=prev, sc=scalars, e=ess, cv=clip_value, k=coeff):
                launchers.ppo_critic_fwd(v, t, o, cv, k, "smooth_l1", "mean", True,
                                         loss=sc[0], clip_fraction=sc[1], ev=e)
                return [sc[0], sc[1], e]
        else:
            def run(v=log_prob, t=advantage, o=prev, g=grad, one=one, cv=clip_value, k=coeff):
                launchers.ppo_critic_bwd(one, v, t, o, cv, k, "smooth_l1", "mean", grad_value=g)
                return [g]
        yield {"bm": ppo_block_m(M)}, f"{N}x{M}", run


def _qmix_workloads(family, sizes, device):
    from fastmarl.kernels.qmix import qmix_block_sizes
    from fastmarl.ops.qmix import QMixParams
    from fastmarl.ops.qmix import triton as launchers

    E = 32
    for B, n, S, H in sizes:
        first = H or n * E
        dims = [(first, S), (H or E, S), (E, S), (E, S), (1, E)] + ([(n * E, H), (E, H)] if H else [])
        tensors = []
        for rows, cols in dims:
            tensors += [torch.randn(rows, cols, device=device) * cols ** -0.5,
                        torch.randn(rows, device=device) * cols ** -0.5]
        params = QMixParams(*tensors)
        q, state = torch.randn(B, n, device=device), torch.randn(B, S, device=device)
        q_tot, hidden_pre = torch.empty(B, 1, device=device), torch.empty(B, E, device=device)
        c1 = sum(w.shape[0] for w in params.state_weights)
        grads = dict(dq=torch.empty(B, n, device=device), dz1=torch.empty(B, c1 + E, device=device),
                     dz2=torch.empty(B if H else 0, n * E + E, device=device),
                     g=torch.empty(B if H else 0, 2 * H, device=device))
        grad_q_tot = torch.randn(B, 1, device=device)
        launchers.qmix_fwd(q, state, params, q_tot=q_tot, hidden_pre=hidden_pre)  # the backward's input
        if family == "qmix_fwd":
            def run(q=q, s=state, p=params, o=q_tot, h=hidden_pre):
                launchers.qmix_fwd(q, s, p, q_tot=o, hidden_pre=h)
                return [o, h]
        else:
            def run(q=q, s=state, p=params, h=hidden_pre, gr=grads, gq=grad_q_tot):
                launchers.qmix_bwd(gq, q, s, p, h, **gr)
                return list(gr.values())
        _, be, bh = qmix_block_sizes(S, E, H)
        yield {"be": be, "bh": bh}, f"B={B} n={n} S={S} H={H}", run


def workloads(family: str, device, dry_run: bool):
    """``(key blocks, workload name, run)`` for ``family``; ``run()`` launches once and returns
    the output tensors."""
    if family.startswith("gae"):
        return _gae_workloads(family, DRY_GAE_SIZES if dry_run else GAE_SIZES, device)
    if family.startswith("ppo"):
        return _ppo_workloads(family, DRY_PPO_SIZES if dry_run else PPO_SIZES, device)
    return _qmix_workloads(family, DRY_QMIX_SIZES if dry_run else QMIX_SIZES, device)


def tasks(device, dry_run: bool):
    """Every (family, key, workload, candidate): the sweep's work, in a fixed order."""
    out = []
    for family in tuning.FAMILIES:
        for blocks, name, run in workloads(family, device, dry_run):
            configs = tuning.candidates(family, **blocks)
            if dry_run:
                configs = [configs[0], configs[-1]]  # the code path, not a measurement
            for config in configs:
                out.append((family, blocks, name, run, config))
    return out


# --------------------------------------------------------------------------- timing


def _median_ms(run, device, dry_run: bool) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(run, warmup=5, rep=25, return_mode="median"))
    times = []
    for _ in range(1 if dry_run else 5):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def warm(device, dry_run: bool, shard: int, shards: int) -> None:
    """Compile this shard's (configuration, workload) pairs: one launch each."""
    for i, (family, _, _, run, config) in enumerate(tasks(device, dry_run)):
        if i % shards == shard:
            try:
                with tuning.override({family: config}):
                    run()
            except Exception:  # noqa: BLE001 - the timing pass reports it
                pass
    if device.type == "cuda":
        torch.cuda.synchronize()


def sweep(device, dry_run: bool) -> list[dict]:
    """Time every task; returns one record per (family, key, workload, config)."""
    records = []
    references = {}
    for family, blocks, name, run, config in tasks(device, dry_run):
        key = tuning.key_of(family, **blocks)
        record = dict(family=family, key=key, workload=name, config=config, ms=None, error=None, ok=False)
        try:
            with tuning.override({family: config}):
                outputs = [x.clone() for x in run()]
                if (family, name) not in references:
                    # candidates() lists the default first: the reference of the others
                    references[(family, name)] = outputs
                record["error"] = max(rel_error(a, e) for a, e in zip(outputs, references[(family, name)]))
                record["ok"] = record["error"] <= 1e-5
                record["ms"] = _median_ms(run, device, dry_run)
        except Exception as exc:  # noqa: BLE001 - a configuration that fails to compile loses
            record["failure"] = f"{type(exc).__name__}: {exc}"[:300]
        records.append(record)
    return records


def choose(records: list[dict]) -> tuple[dict, list[str]]:
    """``(table entries {family: {key: config}}, report lines)``: per key, the correct
    configuration with the smallest geometric mean of time ratios to the default."""
    by_key: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        by_key.setdefault((r["family"], r["key"]), []).append(r)
    table, lines = {}, []
    for (family, key), rs in by_key.items():
        names = {r["workload"] for r in rs}
        default = {r["workload"]: r for r in rs if r["config"] == rs[0]["config"]}
        configs = []
        for r in rs:
            if r["config"] not in configs:
                configs.append(r["config"])
        scores = []
        for config in configs:
            mine = [r for r in rs if r["config"] == config]
            if len(mine) != len(names) or not all(r["ok"] and r["ms"] for r in mine):
                continue
            ratios = [r["ms"] / default[r["workload"]]["ms"] for r in mine if default[r["workload"]]["ms"]]
            scores.append((math.exp(sum(map(math.log, ratios)) / len(ratios)), config, mine))
        if not scores:
            lines.append(f"{family:15s} {key:10s} no correct configuration measured")
            continue
        score, config, mine = min(scores, key=lambda s: s[0])
        table.setdefault(family, {})[key] = config
        times = ", ".join(f"{r['workload']}: {default[r['workload']]['ms']:.4f} -> {r['ms']:.4f} ms" for r in mine)
        lines.append(f"{family:15s} {key:10s} {_fmt(rs[0]['config'])} -> {_fmt(config)} "
                     f"({1 / score:.2f}x): {times}")
    return table, lines


def _fmt(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


# --------------------------------------------------------------------------- output


def write_module(path: Path, arch: str, entries: dict, header: list[str]) -> None:
    """``fastmarl/ops/tuned_configs.py`` with ``arch``'s entries replaced by ``entries``."""
    from fastmarl.ops.tuned_configs import TABLE

    source = Path(tuning.__file__).with_name("tuned_configs.py").read_text()
    docstring = source.split('"""')[1].split("\n\nNo GPU has measured")[0]
    table = {k: v for k, v in TABLE.items() if k != arch}
    table[arch] = entries
    comments = "".join(f"# {line}\n" for line in header)
    # JSON of str and int keys and values is a Python literal too.
    path.write_text(f'"""{docstring}\n"""\n\n{comments}TABLE: dict[str, dict[str, dict[str, dict[str, int]]]] = '
                    f"{json.dumps(table, indent=4, sort_keys=True)}\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for tuned_configs.json and tuned_configs.py")
    parser.add_argument("--dry-run", action="store_true", help="CPU, Triton's interpreter, tiny shapes, 2 configs")
    parser.add_argument("--jobs", type=int, default=1, help="processes that compile in parallel first")
    parser.add_argument("--warm-shard", default=None, help=argparse.SUPPRESS)  # "i/N": a compile worker
    args = parser.parse_args(argv)
    if args.dry_run:
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            env = dict(os.environ, TRITON_INTERPRET="1")
            return subprocess.call([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])], env=env)
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("tune_kernels: error: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
    if args.warm_shard:
        shard, shards = map(int, args.warm_shard.split("/"))
        warm(device, args.dry_run, shard, shards)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.jobs > 1:
        base = [sys.executable, __file__, "--out", str(out)] + (["--dry-run"] if args.dry_run else [])
        workers = [subprocess.Popen([*base, "--warm-shard", f"{i}/{args.jobs}"]) for i in range(args.jobs)]
        codes = [w.wait() for w in workers]
        print(f"compiled in {args.jobs} processes in {time.perf_counter() - start:.1f} s (exit codes {codes})")
    records = sweep(device, args.dry_run)
    table, lines = choose(records)
    # The dry run's table is filed under "interpreter", an architecture no launch looks up.
    arch = "interpreter" if args.dry_run else tuning.arch_of(device)
    name = "CPU (Triton interpreter)" if args.dry_run else torch.cuda.get_device_name(device)
    import triton

    info = dict(arch=arch, device_name=name, date=str(date.today()), torch=torch.__version__,
                triton=triton.__version__, seconds=round(time.perf_counter() - start, 1))
    header = [f"{arch} ({name}): bench/tune_kernels.py on {info['date']}, torch {info['torch']}, "
              f"triton {info['triton']}; default -> chosen (geometric-mean speed-up): median times"] + lines
    (out / "tuned_configs.json").write_text(json.dumps(
        {**info, "table": {arch: table}, "measurements": records}, indent=1, default=str))
    write_module(out / "tuned_configs.py", arch, table, header)
    failures = [r for r in records if "failure" in r or not r["ok"]]
    print("\n".join(header))
    print(f"{len(records)} measurements, {len(failures)} failed or mismatched, {info['seconds']} s; "
          f"table: {out / 'tuned_configs.json'}, module: {out / 'tuned_configs.py'}")
    for r in failures[:10]:
        print(f"  {r['family']} {r['key']} {r['workload']} {_fmt(r['config'])}: "
              f"{r.get('failure') or 'error %.2g' % r['error']}")
    # A default configuration that fails or mismatches is a kernel bug; another candidate that
    # does is only not chosen.
    defaults_broken = [r for r in failures if r["config"] == tuning.candidates(r["family"], **_blocks(r["key"]))[0]]
    return 1 if defaults_broken or not table else 0


def _blocks(key: str) -> dict[str, int]:
    # "BF8" -> {"bf": 8}; "BE32-BH64" -> {"be": 32, "bh": 64}; "BM4" -> {"bm": 4}
    out = {}
    for part in key.split("-"):
        out[part[:2].lower()] = int(part[2:])
    return out


if __name__ == "__main__":
    sys.exit(main())
