#!/usr/bin/env bash
# The benchmark on the GPU machine, from the repository root, after test/gpu/prepare-carry.sh:
# bench/run.sh with the shapes given (defaults: the Qwen v1 and Qwen2.5-7B bf16 and GPTQ rows and
# the serving rows of 7B bf16 and int4); every argument is passed through the environment, e.g.
#   BENCH_SHAPES="qwen2.5-7b" BENCH_QUANT_SHAPES="qwen2.5-7b-int4" bash test/gpu/bench-all.sh
# Its outputs (bench.md, bench.svg, the results) land in $OUT.
set -u
cd "$(dirname "$0")/../.."
. test/gpu/setup.sh
export BENCH_SHAPES=${BENCH_SHAPES-"1.8b 7b qwen2.5-7b"}
export BENCH_QUANT_SHAPES=${BENCH_QUANT_SHAPES-"7b-int4 7b-int8 1.8b-int4 qwen2.5-7b-int4"}
export BENCH_SERVE_SHAPES=${BENCH_SERVE_SHAPES-"7b 7b-int4"} BENCH_SERVE_TOKENS=${BENCH_SERVE_TOKENS:-128}
export BENCH_KEEP_CKPT=${BENCH_KEEP_CKPT:-0}
export BENCH_STEPS=${BENCH_STEPS:-96} BENCH_BUDGET_S=${BENCH_BUDGET_S:-560}
bash bench/run.sh > "${OUT:-/tmp}/bench-stdout.log" 2>&1
echo "bench rc=$?"
tail -60 "${OUT:-/tmp}/bench-stdout.log"
