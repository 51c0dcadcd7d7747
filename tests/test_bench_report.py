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
    }, bytes_=10**6)
    rows = B.load_results([path])
    text = B.report(rows)
    assert "## gae-tutorial-cpu  (TestCPU)" in text
    assert "4.00x" in text and "2.00x" in text
    assert "bandwidth: fastmarl 1.0 GB/s, copy 10.0 GB/s (10% of copy)" in text
    speedups = B.speedups(B.by_group(rows)["gae-tutorial-cpu"])
    assert speedups[("fastmarl", "torchrl_loop")] == 4.0
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


def test_bench_without_results_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    result = subprocess.run([sys.executable, "-m", "fastmarl", "bench", "--json", str(empty), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no benchmark with timings" in result.stderr
