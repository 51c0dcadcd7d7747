"""The summary of a ``bench/gpu_session.sh`` run: ``session.json`` and the table printed last.

    python bench/gpu_session.py summarize OUTDIR

Reads what the parts left in OUTDIR (``parts.tsv`` from the script: name, exit code, seconds,
limit, kernels; ``env.json``, ``check.json``, ``targets.json``, ``tuned_configs.json``, the
pytest-benchmark JSON, the kernel counts of a dry run in ``logs/*.kernels.jsonl``) and writes
``session.json`` (all of it in one file: what to commit under ``bench/results/``) and
``summary.txt``. Exits 1 if a part failed or timed out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Seconds to compile one Triton kernel specialisation on the GPU machine's host, for the budget
# of a dry run (which compiles nothing). Measured on this project's 2-vCPU CPU machine, shared
# with other sessions: tests/test_kernels_compile.py compiled 67 kernel variants for 2 targets
# (134 compiles to cubin, ptxas included) in 293 s, 2.2 s each under a load average of ~5 on 2
# cores, so ~1 s on a free core; the GPU host's 16 cores are no slower. A GPU run measures it:
# its summary gives each part's seconds next to the kernels it compiled.
COMPILE_SECONDS = 1.0


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _parts(out: Path) -> list[dict]:
    rows = []
    tsv = out / "parts.tsv"
    if tsv.exists():
        for line in tsv.read_text().splitlines():
            name, rc, seconds, limit, kernels = (line.split("\t") + [""] * 5)[:5]
            rows.append(dict(part=name, rc=int(rc), seconds=int(seconds), limit=int(limit),
                             kernels=int(kernels) if kernels.isdigit() else None))
    return rows


def _dry_kernel_counts(out: Path, parts: list[dict]) -> None:
    # Distinct specialisations per part, and how many are new to the session (the Triton cache
    # is shared between the parts of one run: a kernel compiled by the check is not compiled
    # again by the tests).
    seen: set[str] = set()
    for part in parts:
        path = out / "logs" / f"{part['part']}.kernels.jsonl"
        if not path.exists():
            continue
        keys = {json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()}
        part["kernels"] = len(keys)
        part["new_kernels"] = len(keys - seen)
        seen |= keys


def summarize(out: Path) -> int:
    parts = _parts(out)
    env = _load(out / "env.json") or {}
    dry = bool(env.get("dry_run"))
    if dry:
        _dry_kernel_counts(out, parts)
    check = _load(out / "check.json")
    targets = _load(out / "targets.json")
    tuned = _load(out / "tuned_configs.json")
    benches = {p.name: _load(p) for p in sorted(out.glob("bench-*.json"))}

    lines = [f"fastmarl GPU session on {env.get('device_name', '?')}: torch {env.get('torch')}, "
             f"triton {env.get('triton')}, torchrl {env.get('torchrl')}"
             + (" (DRY RUN on the CPU: tiny sizes, Triton interpreter; no figure is a measurement)" if dry else "")]
    lines.append(f"{'part':<16}{'exit':>5}{'s':>6}{'limit':>7}{'kernels':>9}{'new':>6}"
                 + (f"{'GPU est. s':>12}" if dry else ""))
    budget = 0.0
    for p in parts:
        status = "TIMEOUT" if p["rc"] in (124, 137) else "skip" if p["rc"] == -1 else str(p["rc"])
        kernels = "" if p.get("kernels") is None else str(p["kernels"])
        new = str(p.get("new_kernels", ""))
        row = f"{p['part']:<16}{status:>5}{p['seconds']:>6}{p['limit']:>7}{kernels:>9}{new:>6}"
        if dry and p.get("new_kernels") is not None:
            estimate = p["new_kernels"] * COMPILE_SECONDS
            budget += estimate
            row += f"{estimate:>12.0f}"
        lines.append(row)
    if dry:
        lines.append(f"GPU compile budget of the kernels above: {budget:.0f} s at {COMPILE_SECONDS} s each "
                     "(one process; bench/gpu_session.sh compiles the sweep and the check in parallel)")
    if check:
        results = check.get("results", [])
        failed = [r for r in results if not r["passed"]]
        lines.append(f"check: {len(results)} cases, {len(failed)} failed"
                     + "".join(f"\n  FAILED {r['op']} {r['dtype']} [{r['shape_class']}] {r['path']} {r['variant']}: "
                               f"{r['worst']} {r['error']}" for r in failed[:8]))
    if tuned:
        chosen = sum(len(keys) for fams in tuned.get("table", {}).values() for keys in fams.values())
        lines.append(f"tuned: {chosen} keys in {tuned.get('arch')}'s table ({len(tuned.get('measurements', []))} "
                     f"measurements) -> tuned_configs.py")
    if targets:
        for t in targets.get("targets", []):
            lines.append(f"  {'met   ' if t['met'] else 'MISSED'}  {t['target']}: {t['text']}")
    for name, data in benches.items():
        count = len((data or {}).get("benchmarks", []))
        lines.append(f"{name}: {count} benchmarks")
    failed_parts = [p["part"] for p in parts if p["rc"] not in (0, -1)]
    skipped = [p["part"] for p in parts if p["rc"] == -1]
    lines.append("parts failed or timed out: " + (", ".join(failed_parts) if failed_parts else "none")
                 + (f"; skipped at the deadline: {', '.join(skipped)}" if skipped else ""))
    text = "\n".join(lines)
    (out / "summary.txt").write_text(text + "\n")
    session = dict(env=env, parts=parts, check=check, targets=targets, tuned=tuned,
                   benchmarks={k: v for k, v in benches.items()},
                   compile_seconds_assumed=COMPILE_SECONDS if dry else None)
    (out / "session.json").write_text(json.dumps(session, indent=1, default=str))
    print(text)
    return 1 if failed_parts else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "summarize":
        print(__doc__, file=sys.stderr)
        return 2
    return summarize(Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main())
