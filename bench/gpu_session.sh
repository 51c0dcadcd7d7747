#!/usr/bin/env bash
# The whole GPU validation of fastmarl in one command (issue 13). Parts, in order:
#   env       device, driver, torch/triton/torchrl versions
#   tune      block-size sweep of every kernel family (bench/tune_kernels.py): tuned_configs.py,
#             then used by every later part (FASTMARL_TUNED_CONFIGS), so they check and time
#             the configurations that will be committed
#   check     fastmarl check --device cuda: every op, dtype, shape class against float64
#   cuda-tests  pytest -k "cuda or cudagraph" tests (opcheck, compile, CUDA graphs, parity)
#   targets   the issue's GPU targets, met or missed (bench/gpu_targets.py)
#   bench-*   the benchmark suites at the tutorial, BenchMARL and large sizes, eager providers,
#             then the compiled providers at the BenchMARL size, each with --benchmark-json
#   report    fastmarl bench on those JSON files
# then a short summary table (bench/gpu_session.py). Everything lands in OUTDIR. Each part has
# its own time limit, and the whole a deadline (--deadline, default 480 s) that the limits
# shrink to, so the run ends inside one 10-minute device call even when a part hangs.
#
#   bash bench/gpu_session.sh [--dry-run] [--pack] [--deadline SECONDS] OUTDIR
#
#   --dry-run   the same parts on the CPU at the tiny sizes, the kernels in Triton's interpreter,
#               nothing compiled; CI runs it (tests/test_gpu_session.py) so this script cannot
#               rot. It also counts the Triton kernel specialisations each part launches
#               (bench/count_kernels/): the GPU budget below comes from those counts.
#   --pack      leave at most 8 files in OUTDIR, as the device tool brings back 8: summary.txt,
#               session.json (every part's results in one file), tuned_configs.py, report.md,
#               and session.tar.gz with everything else (logs, each part's JSON).
#
# The device run (the project's lent machine: one H200, torch 2.11 + triton 3.6, no TorchRL;
# see /work/.library/device/README.md). Here, once:
#     bash ../shared/tools/device-wheels.sh            # TorchRL, TensorDict, VMAS... into .whl/
# then ONE call of the device tool `run`, with carry=[".whl"] and timeout_s=600:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit; bash bench/gpu_session.sh --pack "$OUT"
# then here: copy the returned files (files_at) to bench/results/gpu-<device>-<date>/, copy
# tuned_configs.py over fastmarl/ops/tuned_configs.py, and commit both.
#
# GPU time budget. Compiles: 1 s a Triton kernel specialisation (bench/gpu_session.py says
# where that figure comes from); counts of specialisations from the interpreter's counter
# (bench/count_kernels/), run on the full check (`fastmarl check --interpret --paths triton`,
# all dtypes: 407) and from the sweep's configuration space (188); run times are estimates
# until a GPU session replaces them (its summary has seconds and kernels per part).
#   part           kernels  compile (wall)              run (est.)            limit   dry run (CPU)
#   env                  0  -                           5 s                   20 s      3 s
#   tune               188  ~30 s (8 processes)         272 timings: ~15 s    150 s    25 s (18 kernels)
#   check              407  ~60 s (12 processes; the    oracles on the CPU:   180 s    60 s (118 kernels,
#                             longest, PPO clip in one    ~20 s                                float32)
#                             dtype, has ~53)
#   cuda-tests        ~60*  ~30 s (4 xdist workers)     + 3 Inductor compiles 180 s    12 s (all skip)
#   targets             ~0  Inductor: 4 compiled peers  ~20 s                 150 s     8 s
#                           x ~20 s = ~80 s
#   bench-gae/ppo/qmix  ~5  -                           3 x ~40 s             3x60 s   11 + 17 + 24 s
#   bench-compiled       0  Inductor: 2 x ~20 s         ~10 s                 the rest  7 s
#   report               0  -                           5 s                   30 s      6 s
#   total: ~7 min of 8 on an H100/H200 (* mostly specialisations the check compiled already);
#   the dry run takes ~3 min on the project's 2-core CPU machine. A part that runs over its
#   limit is killed and the next one starts; the deadline skips what no longer fits.
set -u
export PYTHONUNBUFFERED=1

dry=0 pack=0 deadline=480 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --pack) pack=1 ;;
    --deadline) shift; deadline=$1 ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    -*) echo "gpu_session.sh: unknown option $1" >&2; exit 2 ;;
    *) out=$1 ;;
  esac
  shift
done
if [ -z "$out" ]; then echo "usage: bash bench/gpu_session.sh [--dry-run] [--pack] [--deadline S] OUTDIR" >&2; exit 2; fi
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
logs="$out/logs"
: > "$out/parts.tsv"
py=${PYTHON:-python3}
start=$SECONDS
# A fresh compile cache: the session counts and times every compile, and nothing stale runs.
cache=$(mktemp -d "${TMPDIR:-/tmp}/fastmarl-gpu-session.XXXXXX")
export TRITON_CACHE_DIR="$cache/triton" TORCHINDUCTOR_CACHE_DIR="$cache/inductor"
trap 'rm -rf "$cache"' EXIT

if [ $dry = 1 ]; then
  device=cpu
  export FASTMARL_BENCH_MIN_SECONDS=0
  export PYTHONPATH="$root/bench/count_kernels${PYTHONPATH:+:$PYTHONPATH}"
  [ "$deadline" = 480 ] && deadline=1200   # the CPU interpreter is slow, not the budget
else
  device=cuda
  # A GPU's timings barely drift: 0.3 s a provider instead of the CPU machine's 3 s.
  export FASTMARL_BENCH_MIN_SECONDS=0.3
fi

cubins() { find "$cache" -name '*.cubin' 2>/dev/null | wc -l; }

# part NAME LIMIT COMMAND...: run with the smaller of LIMIT and what the deadline leaves
# (minus 15 s for the summary), log to logs/NAME.log, record exit code, seconds, kernels.
part() {
  local name=$1 limit=$2; shift 2
  local left=$((deadline - (SECONDS - start) - 15))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then  # exit code -1: skipped (the summary lists it, not as a failure)
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" -1 0 0 "" >> "$out/parts.tsv"
    echo "[$name] skipped: no time left before the deadline" | tee "$logs/$name.log"
    return
  fi
  local t0=$SECONDS before
  before=$(cubins)
  echo "[$name] (limit ${limit}s) $*"
  FASTMARL_COUNT_KERNELS="$logs/$name.kernels.jsonl" timeout --kill-after=10 "$limit" "$@" > "$logs/$name.log" 2>&1
  local rc=$?
  local kernels=""
  [ $dry = 0 ] && kernels=$(( $(cubins) - before ))
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" "$kernels" >> "$out/parts.tsv"
  echo "[$name] exit $rc after $((SECONDS - t0))s"
  tail -n 3 "$logs/$name.log" | sed 's/^/    /'
}

part env 20 "$py" - "$out/env.json" "$dry" <<'EOF'
import importlib.metadata, json, subprocess, sys, torch
def version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
cuda = torch.cuda.is_available() and sys.argv[2] == "0"
info = dict(dry_run=sys.argv[2] == "1", torch=torch.__version__, cuda=torch.version.cuda, triton=version("triton"),
            torchrl=version("torchrl"), tensordict=version("tensordict"), python=sys.version.split()[0],
            device_name=torch.cuda.get_device_name() if cuda else "CPU",
            capability=".".join(map(str, torch.cuda.get_device_capability())) if cuda else None)
if cuda:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm",
                                         "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(info)
EOF

if [ $dry = 1 ]; then
  part tune 300 "$py" bench/tune_kernels.py --out "$out" --dry-run --jobs 2
else
  part tune 150 "$py" bench/tune_kernels.py --out "$out" --jobs 8
fi
if [ -s "$out/tuned_configs.json" ] && [ $dry = 0 ]; then
  export FASTMARL_TUNED_CONFIGS="$out/tuned_configs.json"
fi

if [ $dry = 1 ]; then
  # The Triton path of every op in the interpreter (the CPU paths have their own unit tests).
  part check 400 "$py" -m fastmarl check --device cpu --quick --interpret --paths triton \
    --dtypes float32 --jobs 2 --json "$out/check.json"
else
  # --no-speed: the targets part times the same providers (fastmarl.check.Checker.providers)
  part check 180 "$py" -m fastmarl check --device cuda --jobs 12 --no-speed --json "$out/check.json"
fi

xdist=""
[ $dry = 0 ] && "$py" -c "import xdist" 2>/dev/null && xdist="-n 4"
part cuda-tests 180 "$py" -m pytest -q -p no:cacheprovider -k "cuda or cudagraph" $xdist tests

if [ $dry = 1 ]; then
  part targets 120 "$py" bench/gpu_targets.py --json "$out/targets.json" --dry-run
else
  part targets 150 "$py" bench/gpu_targets.py --json "$out/targets.json"
fi

bench() {  # bench NAME LIMIT FILE SIZES [pytest args...]
  local name=$1 limit=$2 file=$3 sizes=$4; shift 4
  part "$name" "$limit" "$py" -m pytest -q -p no:cacheprovider "bench/$file" --bench-device "$device" \
    --bench-sizes "$sizes" --benchmark-json "$out/$name.json" "$@"
}
if [ $dry = 1 ]; then
  bench bench-gae 120 bench_gae.py tiny -k "not compiled"
  bench bench-ppo 120 bench_ppo.py tiny -k "not compiled"
  bench bench-qmix 120 bench_qmix.py tiny -k "not compiled"
  # compiled providers take minutes to compile on a CPU: collected and skipped here
  part bench-compiled 120 "$py" -m pytest -q -p no:cacheprovider bench/bench_ppo.py --bench-device cpu \
    --bench-sizes tiny -k "compiled and math" --benchmark-disable
else
  bench bench-gae 60 bench_gae.py tutorial,benchmarl,large -k "not compiled"
  bench bench-ppo 60 bench_ppo.py tutorial,benchmarl,large -k "not compiled"
  bench bench-qmix 60 bench_qmix.py B4096-n3,B4096-n8,B65536-n8 -k "not compiled"
  # compiled peers last: what the deadline leaves after 40 s for the report (Inductor compiles
  # ~20 s a provider)
  bench bench-compiled $((deadline - (SECONDS - start) - 55)) bench_ppo.py benchmarl -k "compiled and math"
fi

jsons=""
for f in "$out"/bench-*.json; do [ -s "$f" ] && jsons="$jsons $f"; done  # a failed suite leaves none or an empty one
if [ -n "$jsons" ]; then
  # shellcheck disable=SC2086
  part report 30 "$py" -m fastmarl bench --json $jsons --out "$out/report"
fi

echo "--- summary ($((SECONDS - start)) s; everything in $out)"
"$py" bench/gpu_session.py summarize "$out"
status=$?
if [ $pack = 1 ]; then
  [ -f "$out/report/report.md" ] && cp "$out/report/report.md" "$out/report.md"
  (cd "$out" && tar czf session.tar.gz --exclude=session.tar.gz -- *) \
    && find "$out" -mindepth 1 -maxdepth 1 ! -name session.tar.gz ! -name summary.txt ! -name session.json \
         ! -name tuned_configs.py ! -name report.md -exec rm -rf {} +
fi
exit $status
