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
