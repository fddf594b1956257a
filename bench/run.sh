#!/usr/bin/env bash
# The whole benchmark in one command on the GPU machine, from the repository root:
#
#   bash bench/run.sh
#
# 1. the copy bandwidth (bench/roofline.py --probe), 2. per shape: a random bf16 checkpoint
# (bench/make_checkpoint.py, kept when already complete) and qwen-native on it
# (bench/qwen_native.mjs), then the same for the GPTQ shapes, 3. the torch yardstick
# (.carry/torch_yardstick.py, when carried; v1 shapes 1.8b/7b only) at each context, 4. Hugging
# Face transformers (bench/hf_baseline.py) per shape (a GPTQ shape gets a "not measured" line),
# 5. the report (bench/report.py): a table on stdout, docs/bench.md and docs/bench.svg.
#
# Needs, carried to the GPU machine: .carry/node.xz (node; unpacked to /tmp/node), dist/, the CUDA
# build of the addon where node-gyp-build finds it (build/Release/qwen_native.node), and
# node_modules/node-gyp-build (node_modules/tiktoken is optional: a stub stands in).
#
# Each step runs under `timeout`, within an overall budget; a step that fails, crashes or times
# out leaves an error line that the table shows, and the run goes on (no `set -e`).
# Environment (defaults): BENCH_BUDGET_S (480: everything, the report included, in 8 minutes;
# lower it when the same device call builds and tests first), BENCH_SHAPES ("1.8b 7b"; the bf16
# shapes of bench/shapes.py: 1.8b, 7b, qwen2.5-7b; tiny, qwen2-tiny for a CPU check),
# BENCH_QUANT_SHAPES ("7b-int4 7b-int8 1.8b-int4 1.8b-int8"; GPTQ shapes, decode at context 128
# only: also qwen2.5-7b-int4; tiny-int4, qwen2-tiny-int4 for a CPU check; either one set but empty
# means none), BENCH_CTX (128,4096), BENCH_STEPS (128, qwen-native and the yardstick), HF_STEPS (32:
# HF decode is Python-bound, ~15 tok/s), BENCH_YARDSTICK (.carry/torch_yardstick.py), BENCH_CKPT
# (checkpoint folder: /dev/shm/bench-ckpt when /dev/shm has 24 GB free, so that no disk write-back
# runs under the measurements; else /tmp/bench-ckpt), BENCH_RESULTS (/tmp/bench-results),
# BENCH_COMMIT (the commit to print when the tree has no .git), PYTHON (python3), OUT (when set,
# the four outputs are copied there: bench.md, bench.svg, bench-results.jsonl, bench-run.log),
# BENCH_SERVE_SHAPES (none: shapes whose serving throughput bench/concurrent.mjs and
# bench/hf_batched.py measure at BENCH_CONCURRENCY (1,4,16,64) concurrent requests of
# BENCH_SERVE_PROMPT (128) prompt ids and BENCH_SERVE_TOKENS (64) new tokens),
# BENCH_KEEP_CKPT (1; 0 removes each checkpoint no later step needs once it was measured),
# BENCH_DEVICE (cuda; cpu only to check this script without a GPU), BENCH_MEMORY (1: the 7b-int4 /
# 7b peak-memory runs, where their checkpoints are in BENCH_CKPT; 0: none).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
T0=$SECONDS
BUDGET=${BENCH_BUDGET_S:-480}
RESERVE=20 # seconds kept for the report
SHAPES=${BENCH_SHAPES-"1.8b 7b"}
QSHAPES=${BENCH_QUANT_SHAPES-"7b-int4 7b-int8 1.8b-int4 1.8b-int8"}
CTX=${BENCH_CTX:-128,4096}
STEPS=${BENCH_STEPS:-128}
HF_STEPS=${HF_STEPS:-32}
RES=${BENCH_RESULTS:-/tmp/bench-results}
PY=${PYTHON:-python3}
YARDSTICK=${BENCH_YARDSTICK:-.carry/torch_yardstick.py}
DEVICE=${BENCH_DEVICE:-cuda} # cpu: only to check this script on a machine without a GPU (shapes tiny, qwen2-tiny)
# A misspelt shape would otherwise cost a checkpoint step and vanish from the table.
"$PY" bench/shapes.py $SHAPES $QSHAPES || exit 2
if [ -z "${BENCH_CKPT:-}" ]; then
  shm_free=$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 {print $4}')
  if [ -n "$shm_free" ] && [ "$shm_free" -gt $((24 * 1024 * 1024)) ]; then BENCH_CKPT=/dev/shm/bench-ckpt; else BENCH_CKPT=/tmp/bench-ckpt; fi
fi
mkdir -p "$RES" "$BENCH_CKPT" docs
RESULTS=$RES/results.jsonl
LOG=$RES/run.log
: > "$RESULTS"
: > "$LOG"

say() { echo "bench: $*" | tee -a "$LOG" >&2; }

# error_line IMPL SHAPE MESSAGE: one JSON line for a step that produced no result of its own
error_line() {
  "$PY" -c 'import json,sys; print(json.dumps({"impl": sys.argv[1], "shape": sys.argv[2] or None, "metric": "run", "error": sys.argv[3]}))' "$@" >> "$RESULTS"
}

# run_step NAME IMPL SHAPE MAX_S CMD...: stdout to $RES/NAME.out (its JSON lines go to the
# results), stderr to the console and the log; limited to MAX_S and to what the budget has left.
run_step() {
  local name=$1 impl=$2 shape=$3 max=$4
  shift 4
  local left=$((BUDGET - (SECONDS - T0) - RESERVE))
  local lim=$((max < left ? max : left))
  if [ "$lim" -lt 10 ]; then
    say "$name: skipped, the time budget is spent"
    error_line "$impl" "$shape" "skipped: the run's ${BUDGET} s budget was spent"
    return 1
  fi
  say "$name: start (limit ${lim} s, $((SECONDS - T0)) s elapsed)"
  local t=$SECONDS rc
  # stderr through tee to the console and the logs; stdout to NAME.out; rc is the command's (pipefail)
  timeout -k 10 "$lim" "$@" 2>&1 > "$RES/$name.out" | tee "$RES/$name.err" | tee -a "$LOG" >&2
  rc=$?
  grep '^{' "$RES/$name.out" >> "$RESULTS"
  if [ "$rc" -ne 0 ]; then
    local why
    case $rc in
      124 | 137) why="timed out after ${lim} s" ;;
      13[0-9] | 14[0-9]) why="killed by SIG$(kill -l $((rc - 128)) 2>/dev/null): $(grep -v '^\s*$' "$RES/$name.err" 2>/dev/null | tail -n 1 | cut -c1-300)" ;;
      *) why="exit $rc: $(grep -v '^\s*$' "$RES/$name.err" 2>/dev/null | tail -n 1 | cut -c1-300)" ;;
    esac
    say "$name: FAILED ($why)"
    error_line "$impl" "$shape" "$name: $why"
  fi
  say "$name: done in $((SECONDS - t)) s, $(grep -c '^{' "$RES/$name.out") result lines, $(grep -c '"error"' "$RES/$name.out") errors"
  return "$rc"
}

# drop_ckpt SHAPE: with BENCH_KEEP_CKPT=0, removes the shape's checkpoint once its qwen-native
# step is done, unless a later step reads it (the memory runs: 7b, 7b-int4; the serving shapes),
# so a run over many 7B shapes fits a /dev/shm of ~64 GB.
drop_ckpt() {
  [ "${BENCH_KEEP_CKPT:-1}" = 0 ] || return 0
  case " 7b 7b-int4 ${BENCH_SERVE_SHAPES:-} " in *" $1 "*) return 0 ;; esac
  rm -rf "${BENCH_CKPT:?}/$1" && say "removed the $1 checkpoint (BENCH_KEEP_CKPT=0)"
}

# ---- node: the GPU machine has none; ours travels as .carry/node.xz
NODE=$(command -v node || true)
if [ -z "$NODE" ]; then
  if [ -x /tmp/node ]; then
    NODE=/tmp/node
  elif [ -f .carry/node.xz ]; then
    "$PY" -c "import lzma,shutil;shutil.copyfileobj(lzma.open('.carry/node.xz'),open('/tmp/node','wb'))" && chmod +x /tmp/node && NODE=/tmp/node
  fi
fi
[ -n "$NODE" ] || say "no node and no .carry/node.xz: qwen-native cannot run"

COMMIT=${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
"$PY" -c 'import json,sys; print(json.dumps({"impl": "env", "node": sys.argv[1], "commit": sys.argv[2], "ckpt_dir": sys.argv[3], "budget_s": int(sys.argv[4])}))' \
  "$([ -n "$NODE" ] && "$NODE" --version || echo none)" "$COMMIT" "$BENCH_CKPT" "$BUDGET" >> "$RESULTS"
nvidia-smi -L 2>&1 | tee -a "$LOG" >&2
say "checkpoints in $BENCH_CKPT, results in $RES, budget $BUDGET s"

# ---- 1. the copy bandwidth, on an idle GPU
run_step probe probe "" 60 "$PY" bench/roofline.py --probe --shapes "$SHAPES $QSHAPES"

# ---- 2. qwen-native, per shape on its own checkpoint (the 7B one is 15.4 GB: written once, kept)
for shape in $SHAPES; do
  if run_step "checkpoint-$shape" checkpoint "$shape" 150 "$PY" bench/make_checkpoint.py --shape "$shape" --out "$BENCH_CKPT/$shape" --skip-if-present; then
    if [ -n "$NODE" ]; then
      run_step "qwen-native-$shape" qwen-native "$shape" 180 "$NODE" bench/qwen_native.mjs --model "$BENCH_CKPT/$shape" --label "$shape" --device "$DEVICE" --ctx "$CTX" --steps "$STEPS"
      drop_ckpt "$shape"
    else
      error_line qwen-native "$shape" "no node on the GPU machine (carry .carry/node.xz)"
    fi
  else
    error_line qwen-native "$shape" "no checkpoint (its writing failed: see the log)"
  fi
done

# ---- 2b. GPTQ checkpoints (no HF or yardstick numbers: those run bf16 only), then the peak
# memory of the quantization issue's targets.
for shape in $QSHAPES; do
  if run_step "checkpoint-$shape" checkpoint "$shape" 120 "$PY" bench/make_checkpoint.py --shape "$shape" --out "$BENCH_CKPT/$shape" --skip-if-present && [ -n "$NODE" ]; then
    run_step "qwen-native-$shape" qwen-native "$shape" 120 "$NODE" bench/qwen_native.mjs --model "$BENCH_CKPT/$shape" --label "$shape" --device "$DEVICE" --ctx 128 --steps "$STEPS" --prefill 2048
    drop_ckpt "$shape"
  fi
done
if [ -n "$NODE" ] && [ "$DEVICE" = cuda ] && [ "${BENCH_MEMORY:-1}" = 1 ]; then
  for m in "7b-int4 float 1 2047" "7b-int4 int8 1 2047" "7b int8 8191 1"; do
    set -- $m
    [ -d "$BENCH_CKPT/$1" ] && run_step "memory-$1-$2" qwen-native "$1" 90 "$NODE" bench/memory.mjs --model "$BENCH_CKPT/$1" --label "$1" --kv "$2" --prompt "$3" --new "$4"
  done
fi

# ---- 3. the torch yardstick (CUDA graph decode), if carried: one run per context, over the
# shapes it knows (v1 1.8b and 7b) among BENCH_SHAPES
YSHAPES=$(for s in $SHAPES; do case $s in 1.8b | 7b) echo "$s" ;; esac; done | sort -u | tr '\n' ' ')
YSHAPES=${YSHAPES% }
if [ ! -f "$YARDSTICK" ]; then
  say "no $YARDSTICK: the yardstick column stays empty"
elif [ -z "$YSHAPES" ]; then
  say "no shape the yardstick knows (1.8b, 7b) in BENCH_SHAPES: the yardstick column stays empty"
else
  ymodel=$([ "$YSHAPES" = "1.8b 7b" ] && echo both || echo "$YSHAPES")
  prefill_flag=() # its prefill does not depend on the context: taken from the first run only
  for c in ${CTX//,/ }; do
    run_step "yardstick-ctx$c" torch-yardstick "" 120 "$PY" "$YARDSTICK" --model "$ymodel" --ctx "$c" --steps "$STEPS" --json "$RES/yardstick-ctx$c.json"
    "$PY" bench/report.py yardstick --ctx "$c" --json "$RES/yardstick-ctx$c.json" --log "$RES/yardstick-ctx$c.out" --steps "$STEPS" \
      --shapes "$YSHAPES" "${prefill_flag[@]}" >> "$RESULTS"
    prefill_flag=(--no-prefill)
  done
fi

# ---- 4. Hugging Face transformers, per shape (a GPTQ shape: one "not measured" line, no torch)
for shape in $SHAPES $QSHAPES; do
  run_step "hf-$shape" hf-transformers "$shape" 150 "$PY" bench/hf_baseline.py --shape "$shape" --device "$DEVICE" --ctx "$CTX" --steps "$HF_STEPS"
done

# ---- 4b. serving throughput at several concurrent requests (BENCH_SERVE_SHAPES, default none:
# each is a few minutes), ours and HF's batched generate (bf16 shapes only) on the same shapes
for shape in ${BENCH_SERVE_SHAPES:-}; do
  if [ -d "$BENCH_CKPT/$shape" ] || run_step "checkpoint-$shape" checkpoint "$shape" 150 "$PY" bench/make_checkpoint.py --shape "$shape" --out "$BENCH_CKPT/$shape" --skip-if-present; then
    [ -n "$NODE" ] && run_step "serve-$shape" qwen-native "$shape" 240 "$NODE" bench/concurrent.mjs --model "$BENCH_CKPT/$shape" --label "$shape" \
      --device "$DEVICE" --concurrency "${BENCH_CONCURRENCY:-1,4,16,64}" --prompt "${BENCH_SERVE_PROMPT:-128}" --tokens "${BENCH_SERVE_TOKENS:-64}"
  fi
  run_step "hf-batched-$shape" hf-transformers "$shape" 200 "$PY" bench/hf_batched.py --shape "$shape" \
    --batch "${BENCH_CONCURRENCY:-1,4,16,64}" --prompt "${BENCH_SERVE_PROMPT:-128}" --tokens "${BENCH_SERVE_TOKENS:-64}"
done

# ---- 5. the report
CMD="bash bench/run.sh   # BENCH_SHAPES=\"$SHAPES\" BENCH_QUANT_SHAPES=\"$QSHAPES\" BENCH_SERVE_SHAPES=\"${BENCH_SERVE_SHAPES:-}\" BENCH_CTX=$CTX BENCH_STEPS=$STEPS HF_STEPS=$HF_STEPS"
"$PY" bench/report.py table "$RESULTS" --md docs/bench.md --svg docs/bench.svg --command "$CMD" 2>&1 | tee -a "$LOG"
say "total $((SECONDS - T0)) s"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp docs/bench.md docs/bench.svg "$OUT/" 2>/dev/null
  cp "$RESULTS" "$OUT/bench-results.jsonl"
  cp "$LOG" "$OUT/bench-run.log"
fi
