"""``fastmarl bench``: report, chart and regression check from pytest-benchmark JSON."""

import json
import subprocess
import sys

from fastmarl import bench_report as B


def _write(path, medians, bytes_=None):
    benchmarks = []
    for (group, provider), median in medians.items():
        benchmarks.append({
            "name": f"test[{group}-{provider}]", "group": group,
            "extra_info": {"provider": provider, **({"bytes": bytes_} if bytes_ else {})},
            "stats": {"median": median, "min": median * 0.9, "rounds": 5},
        })
    path.write_text(json.dumps({"machine_info": {"fastmarl": {"device_name": "TestCPU"}}, "benchmarks": benchmarks}))
    return path


def test_report_speedups_and_bandwidth(tmp_path):
    path = _write(tmp_path / "a.json", {
        ("gae-tutorial-cpu", "torchrl_loop"): 4e-3, ("gae-tutorial-cpu", "fastmarl"): 1e-3,
        ("gae-tutorial-cpu", "copy"): 1e-4, ("gae-tutorial-cpu", "torchrl_loop_compiled"): 2e-3,
        ("gae-tutorial-cpu", "fastmarl_compiled"): 5e-4,
    }, bytes_=10**6)
    rows = B.load_results([path])
    text = B.report(rows)
    assert "## gae-tutorial-cpu  (TestCPU)" in text
    # Each peer's row: its speed-up column for fastmarl, then for fastmarl_compiled.
    loop_row = next(line for line in text.splitlines() if line.startswith("torchrl_loop "))
    assert loop_row.split()[-2:] == ["4.00x", "8.00x"]
    compiled_row = next(line for line in text.splitlines() if line.startswith("torchrl_loop_compiled"))
    assert compiled_row.split()[-2:] == ["2.00x", "4.00x"]
    assert "x fastmarl_compiled" in text
    assert "bandwidth: fastmarl 1.0 GB/s, copy 10.0 GB/s (10% of copy)" in text
    table = B.markdown(rows).splitlines()
    assert table[0].startswith("| group | fastmarl | TorchRL | speed-up |")
    assert table[2] == "| gae-tutorial-cpu | 1.000 ms | 4.000 ms | 4.00× | 500.0 us | 2.000 ms | 4.00× |"
    speedups = B.speedups(B.by_group(rows)["gae-tutorial-cpu"])
    assert speedups[("fastmarl", "torchrl_loop")] == 4.0
    assert speedups[("fastmarl_compiled", "torchrl_loop_compiled")] == 4.0
    B.chart(rows, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_flags_regressions_beyond_the_threshold(tmp_path):
    old = _write(tmp_path / "old.json", {("g", "fastmarl"): 1.0, ("g", "torchrl"): 2.0})
    slower = _write(tmp_path / "new.json", {("g", "fastmarl"): 1.2, ("g", "torchrl"): 3.0})
    found = B.regressions(B.load_results([slower]), B.load_results([old]), 0.1)
    assert len(found) == 1 and found[0].startswith("g fastmarl") and "+20%" in found[0]
    assert B.regressions(B.load_results([slower]), B.load_results([old]), 0.25) == []
    cli = [sys.executable, "-m", "fastmarl", "bench", "--json", str(slower), "--out", str(tmp_path / "out"),
           "--compare", str(old)]
    result = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "regressions beyond 10%" in result.stdout
    result = subprocess.run(cli + ["--threshold", "0.3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "report.txt").is_file() and (tmp_path / "out" / "speedups.png").is_file()
    assert (tmp_path / "out" / "report.md").read_text().startswith("| group |")


def test_bench_without_results_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    result = subprocess.run([sys.executable, "-m", "fastmarl", "bench", "--json", str(empty), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no benchmark with timings" in result.stderr


def test_bench_unknown_size_is_a_usage_error(tmp_path):
    # Was exit 1 with "the benchmark suite failed (pytest exit code 4)" after pytest's message.
    result = subprocess.run([sys.executable, "-m", "fastmarl", "bench", "--sizes", "nonsense", "--out",
                             str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "unknown size(s) ['nonsense']" in result.stdout + result.stderr
    assert "fastmarl bench: error:" in result.stderr and "B4096-n8" in result.stderr


def test_interleaved_ab_script_runs_and_writes_json(tmp_path):
    # bench/interleaved.py: the alternating A/B timer behind the closing notes' disputed cells.
    from pathlib import Path
    script = Path(__file__).parents[1] / "bench" / "interleaved.py"
    out = tmp_path / "ab.json"
    cells = ["qmix-fwd:tiny", "qmix-fwd-bwd:tiny", "qmix-loss:tiny", "ppo-math:tiny", "ppo-loss:tiny"]
    result = subprocess.run([sys.executable, str(script), *cells, "--rounds", "2", "--warmup", "1",
                             "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["results"]
    assert [(r["case"], r["size"]) for r in rows] == [tuple(c.split(":")) for c in cells]
    assert all(r["rounds"] == 2 and r["median"]["fastmarl"] > 0 and r["median"]["torchrl"] > 0 for r in rows)
    bad = subprocess.run([sys.executable, str(script), "nope:tiny"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown case 'nope'" in bad.stderr


# ---- shared size names, compact table, headline chart, training chart -------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
COMMITTED = sorted((ROOT / "bench" / "results").glob("*-cpu-2026-11-21.json"))
COMMITTED = [p for p in COMMITTED if not p.name.startswith("interleaved")]


def _collect(*args):
    return subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "bench"), "--collect-only", "-q",
                           "-p", "no:cacheprovider", *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_bench_sizes_are_shared_across_suites():
    result = _collect("--bench-sizes", "tutorial")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ids = result.stdout
    # Every suite collects the shared name; QMIX maps it onto its own grid.
    assert "bench_gae.py::test_gae[tutorial-fastmarl]" in ids
    assert "bench_ppo.py::test_ppo_loss[tutorial-fastmarl]" in ids
    assert "bench_qmix.py::test_qmix_loss[B32-n3-fastmarl]" in ids
    assert "bench_update.py::test_qmix_step[tutorial-fastmarl]" in ids
    assert "bench_update.py::test_ppo_step[tutorial-fastmarl]" in ids
    # A name only one suite has is a skip with a reason elsewhere, not an error.
    long = _collect("--bench-sizes", "long", "-rs")
    assert long.returncode == 0 and "bench_gae.py::test_gae[long-fastmarl]" in long.stdout
    run = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "bench" / "bench_ppo.py"), "-q", "-rs",
                          "-p", "no:cacheprovider", "--bench-sizes", "long", "--benchmark-disable", "-k", "ppo_math"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:]
    assert "bench_ppo.py has no size 'long'" in run.stdout


def test_unknown_bench_size_is_one_clear_error():
    result = _collect("--bench-sizes", "tutorial,huge")
    assert result.returncode != 0
    assert "--bench-sizes: unknown size(s) ['huge']" in result.stdout + result.stderr
    assert "B4096-n8" in result.stdout + result.stderr  # the known names are listed


def test_shared_size_names_map_qmix_sizes():
    assert B.shared_size("qmix_loss", "B4096-n8") == "benchmarl"
    assert B.shared_size("qmix_fwd-bwd", "B32-n3") == "tutorial"
    assert B.shared_size("qmix_loss", "B4096-n32") == "B4096-n32"
    assert B.shared_size("gae", "long") == "long"


def test_compact_table_one_row_per_op_and_size(tmp_path):
    path = _write(tmp_path / "a.json", {
        ("gae-tutorial-cpu", "torchrl_loop"): 4e-3, ("gae-tutorial-cpu", "torchrl_vectorized"): 9e-3,
        ("gae-tutorial-cpu", "fastmarl"): 1e-3, ("gae-tutorial-cpu", "torchrl_loop_compiled"): 2e-3,
        ("gae-tutorial-cpu", "fastmarl_compiled"): 4e-3, ("gae-tutorial-cpu", "copy"): 1e-4,
    })
    data = json.loads(path.read_text())
    for bench in data["benchmarks"]:
        bench["extra_info"].update(op="gae", size="tutorial")
    path.write_text(json.dumps(data))
    lines = B.compact(B.load_results([path])).splitlines()
    row = next(line for line in lines if line.startswith("gae"))
    # fastest eager TorchRL (the loop, not the vectorised path) and the compiled pair.
    assert row.split() == ["gae", "tutorial", "1.000", "ms", "4.000", "ms", "4.00x", "4.000", "ms", "2.000", "ms",
                           "0.50x"]
    assert sum(line.startswith("gae") for line in lines) == 1


def test_compact_table_keeps_long_op_names_apart_from_the_size(tmp_path):
    # bench_update's "update_ppo_iteration" ran into the size column ("update_ppo_iterationtiny").
    path = _write(tmp_path / "a.json", {("update-ppo-iteration-tiny-cpu", "torchrl"): 2e-3,
                                        ("update-ppo-iteration-tiny-cpu", "fastmarl"): 1e-3})
    data = json.loads(path.read_text())
    for bench in data["benchmarks"]:
        bench["extra_info"].update(op="update_ppo_iteration", size="tiny")
    path.write_text(json.dumps(data))
    lines = B.compact(B.load_results([path])).splitlines()
    row = next(line for line in lines if line.startswith("update_ppo_iteration"))
    assert row.split()[:2] == ["update_ppo_iteration", "tiny"]
    assert lines[1].index("fastmarl") == row.index("1.000 ms") + len("1.000 ms") - len("fastmarl")


def test_headline_chart_of_the_committed_results(tmp_path):
    rows = B.load_results(COMMITTED)
    cats = B.headline(rows)
    assert 1 <= len(cats) <= 10  # at most 20 bars
    bars = sum(c[m] is not None for c in cats for m in ("eager", "compiled"))
    assert bars <= 20
    assert {c["op"] for c in cats} >= {"gae", "ppo_loss", "qmix_loss", "update_ppo"}
    gae = next(c for c in cats if c["op"] == "gae" and c["size"] == "tutorial")
    # report.md's figure: TorchRL's loop 3.105 ms against fastmarl's 1.994 ms.
    assert gae["eager"] == __import__("pytest").approx(3.105 / 1.994, rel=1e-3)
    B.headline_chart(rows, tmp_path / "speedups.png")
    from PIL import Image

    with Image.open(tmp_path / "speedups.png") as image:
        width, height = image.size
    assert width <= 1400 and height <= 800  # one screen, not 880x3498


def test_headline_shows_the_update_steps_of_the_current_suite(tmp_path):
    # bench_update.py names its ops update_ppo_step / update_qmix_step / update_ppo_iteration (and
    # QMIX's benchmarl size B4096-n8); the chart knew only the older update_ppo / update_qmix.
    cases = {("update-ppo-step-tutorial-cpu", "update_ppo_step", "tutorial"): {"N": 400, "A": 3},
             ("update-qmix-step-B4096-n8-cpu", "update_qmix_step", "B4096-n8"): {"B": 4096, "A": 8},
             ("update-ppo-iteration-tutorial-cpu", "update_ppo_iteration", "tutorial"):
                 {"envs": 60, "steps": 100, "agents": 3}}
    path = _write(tmp_path / "u.json", {(group, provider): median for (group, _, _) in cases
                                        for provider, median in (("torchrl", 2.0), ("fastmarl", 1.0),
                                                                 ("torchrl_compiled", 3.0),
                                                                 ("fastmarl_compiled", 1.0))})
    data = json.loads(path.read_text())
    for bench in data["benchmarks"]:
        (_, op, size), info = next((k, v) for k, v in cases.items() if k[0] == bench["group"])
        bench["extra_info"].update(op=op, size=size, **info)
    path.write_text(json.dumps(data))
    cats = {(c["op"], c["size"]): c for c in B.headline(B.load_results([path]))}
    assert set(cats) == {("update_ppo_step", "tutorial"), ("update_qmix_step", "benchmarl"),
                         ("update_ppo_iteration", "tutorial")}
    assert cats[("update_qmix_step", "benchmarl")]["eager"] == 2.0
    assert cats[("update_qmix_step", "benchmarl")]["compiled"] == 3.0
    assert "B=4096, n=8" in cats[("update_qmix_step", "benchmarl")]["label"]
    assert "400×3" in cats[("update_ppo_step", "tutorial")]["label"]


def test_training_chart_from_a_comparison(tmp_path):
    comparison = {
        "config": {"algo": "mappo", "scenario": "navigation", "frames_per_batch": 6000, "epochs": 30, "seed": 0},
        "device_name": "TestCPU", "torch": "2.x", "date": "2026-11-30",
        "speedup": {"iteration": {"median": 1.1, "q1": 1.05, "q3": 1.2, "min": 1.0, "max": 1.3, "n": 3}},
        "torchrl": {"rewards": [-0.5, 0.1, 0.8], "seconds": [11, 10, 10]},
        "fastmarl": {"rewards": [-0.5, 0.1, 0.8], "seconds": [10, 9, 9]},
    }
    path = tmp_path / "comparison.json"
    path.write_text(json.dumps(comparison))
    B.training_chart(path, tmp_path / "training.png")
    assert (tmp_path / "training.png").read_bytes()[:4] == b"\x89PNG"
