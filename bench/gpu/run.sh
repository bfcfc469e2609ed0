#!/usr/bin/env bash
# The GPU proof: build, test and benchmark every GPU path of hyperfused on a bare GPU machine, in one command.
#
#   bash bench/gpu/run.sh              # full: environment, build (local arch only), GPU tests, benchmarks
#   bash bench/gpu/run.sh --quick      # a warm machine: reuse the build, shorter benchmarks
#   bash bench/gpu/run.sh --dry-run    # no GPU needed: everything that does not need one (CI runs this)
#   bash bench/gpu/run.sh --quick --diag   # also: isolated cases, one process each (bench/gpu/diag.py)
#
# Run from anywhere; it works in the repo root with the machine's python3 (PYTHON=... to choose), builds the
# extensions in place (setup.py build_ext --inplace, no network, no pip) and imports hyperfused from the tree.
# Every phase writes under $OUT (./gpu-out when OUT is unset) and appends one line to $OUT/summary.txt, so a
# run cut off by a time limit still says how far it got. Files: summary.txt env.json build.log tests.log
# tests.xml bench.log bench.json bench.md (eight: what the device tool brings back).
set -uo pipefail
cd "$(dirname "$0")/../.."
MODE=full
DIAG=0
for arg in "$@"; do
  case "$arg" in
    --quick) MODE=quick ;;
    --diag) DIAG=1 ;;
    --dry-run) MODE=dry ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "bench/gpu/run.sh: unknown argument '$arg' (expected --quick, --dry-run or --diag)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
FAILED=0
T0=$(date +%s)
phase() {  # phase NAME STATUS DETAIL  (one summary line, also on stdout)
  local line="[$(( $(date +%s) - T0 ))s] phase $1: $2${3:+ - $3}"
  echo "$line" | tee -a "$SUMMARY"
  [ "$2" = FAIL ] && FAILED=1
  return 0
}
echo "mode: $MODE, out: $OUT, python: $($PY -c 'import sys; print(sys.executable)')" | tee -a "$SUMMARY"

# ---- 1. environment
if $PY bench/gpu/env.py --json "$OUT/env.json" >> "$SUMMARY" 2>&1; then
  phase env ok "$($PY -c "import json; d=json.load(open('$OUT/env.json')); print(d.get('gpu'), 'cc', d.get('capability'), '| torch', d['torch'], '| triton', d['triton'], '| driver', d.get('driver'))")"
else
  phase env FAIL "bench/gpu/env.py failed (see summary.txt)"
fi
if [ "$MODE" != dry ] && ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  phase env FAIL "no CUDA device visible to torch: use --dry-run on a machine without a GPU"
  exit 1
fi

# ---- 2. build (the local architecture only, every core, against this machine's torch, no network)
built() { ls hyperfused/_C.*.so >/dev/null 2>&1 && ls hyperfused/_C_cuda.*.so >/dev/null 2>&1; }
if [ "$MODE" = dry ]; then
  phase build skipped "dry run: would run TORCH_CUDA_ARCH_LIST=<cc> HYPERFUSED_CUDA=1 MAX_JOBS=$(nproc) $PY setup.py build_ext --inplace"
elif [ "$MODE" = quick ] && built; then
  phase build skipped "--quick: the extensions are already built"
else
  ARCH=$($PY bench/gpu/env.py --arch)
  tb=$(date +%s)
  if CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST="$ARCH" HYPERFUSED_CUDA=1 MAX_JOBS=$(nproc) \
      timeout 330 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1 && built; then
    spills=$(grep -c "bytes spill stores" "$OUT/build.log" || true)
    nonzero=$(grep -E "[1-9][0-9]* bytes spill stores" "$OUT/build.log" | grep -vc " 0 bytes spill stores" || true)
    phase build ok "sm_${ARCH/./} in $(( $(date +%s) - tb )) s; ptxas: $spills kernel reports, $nonzero with spill stores"
    grep -B2 -E "[1-9][0-9]* bytes spill stores" "$OUT/build.log" | grep -v " 0 bytes spill stores" | head -40 >> "$SUMMARY"
  else
    phase build FAIL "after $(( $(date +%s) - tb )) s; last lines of build.log follow"
    tail -40 "$OUT/build.log" | tee -a "$SUMMARY"
    exit 1
  fi
fi
$PY -c "import hyperfused.ops as o; print('extension:', o.extension_available(), o._ext.extension_error() or '', '| cuda extension:', o.cuda_extension_available(), '' if o.cuda_extension_available() else o._ext.cuda_extension_error(), '| triton:', o.triton_available())" 2>&1 | tee -a "$SUMMARY"

# ---- 2b. isolated cases (--diag): each in a process of its own, so a device fault names its case
if [ "$DIAG" = 1 ]; then
  td=$(date +%s)
  $PY bench/gpu/diag.py $([ "$MODE" = dry ] && echo --dry-run) 2>&1 | tee -a "$SUMMARY"
  phase diag done "$(( $(date +%s) - td )) s"
fi

# ---- 3. tests on the GPU
# the paper's package (the towers' oracle) is pure Python; a machine without network gets it from wheels carried in
# .whl (pip download --no-deps -d .whl gradient-descent-the-ultimate-optimizer==1.0), else those tests skip
if [ "$MODE" != dry ] && ! $PY -c "import gradient_descent_the_ultimate_optimizer" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/hf-site .whl/*.whl >> "$SUMMARY" 2>&1 && export PYTHONPATH="$PYTHONPATH:/tmp/hf-site"
fi
TESTS="tests/test_cuda_kernels.py tests/test_triton_kernels.py tests/test_triton_agd.py tests/test_agd.py tests/test_optim_api.py tests/test_gpu.py tests/test_hypergradient_precision.py tests/test_skip_contract.py"
if [ "$MODE" = dry ]; then
  if $PY -m pytest -q --collect-only -p no:cacheprovider $TESTS > "$OUT/tests.log" 2>&1; then
    phase tests ok "dry run: $(tail -1 "$OUT/tests.log")"
  else
    phase tests FAIL "collection failed: $(tail -1 "$OUT/tests.log")"
  fi
else
  xdist=""
  $PY -c "import xdist" 2>/dev/null && xdist="-n 8"
  tlimit=""
  $PY -c "import pytest_timeout" 2>/dev/null && tlimit="--timeout=100"
  tt=$(date +%s)
  timeout $([ "$MODE" = quick ] && echo 120 || echo 180) $PY -m pytest -q -rfEs -p no:cacheprovider $xdist $tlimit \
    --junitxml="$OUT/tests.xml" $TESTS > "$OUT/tests.log" 2>&1
  rc=$?
  last=$(grep -E "(passed|failed|error)" "$OUT/tests.log" | tail -1)
  if [ $rc = 0 ]; then phase tests ok "$last in $(( $(date +%s) - tt )) s"
  else
    phase tests FAIL "rc $rc: ${last:-no summary (cut off?)} in $(( $(date +%s) - tt )) s"
    grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -40 >> "$SUMMARY"
  fi
fi

# ---- 4. benchmarks (CUDA events, medians, side by side in one process)
bargs="--out $OUT"
[ "$MODE" = quick ] && bargs="$bargs --quick"
[ "$MODE" = dry ] && bargs="$bargs --dry-run"
tb=$(date +%s)
if timeout $([ "$MODE" = full ] && echo 170 || echo 110) $PY bench/gpu/bench_gpu.py $bargs > "$OUT/bench.log" 2>&1; then
  phase bench ok "$(( $(date +%s) - tb )) s; tables in bench.md"
else
  phase bench FAIL "rc $? after $(( $(date +%s) - tb )) s; last lines of bench.log follow"
  tail -30 "$OUT/bench.log" >> "$SUMMARY"
  if [ "$MODE" != dry ]; then   # a device fault ends the process: the other backends' numbers, without cuda
    tb=$(date +%s)
    if timeout 110 $PY bench/gpu/bench_gpu.py $bargs --backends triton >> "$OUT/bench.log" 2>&1; then
      phase bench-triton ok "$(( $(date +%s) - tb )) s; bench.md holds torch and triton only"
    else
      phase bench-triton FAIL "rc $?"
    fi
  fi
fi
cat "$OUT/bench.log"
echo
cat "$SUMMARY"
exit $FAILED
