#!/usr/bin/env bash
# The GPTQ rows and peak-memory targets alone (bench/run.sh with no bf16 shapes), after the kernel
# tests' GPTQ/embedding groups: for a device run that follows test/gpu/final-run.sh.
python3 -c "import lzma,shutil;shutil.copyfileobj(lzma.open('.carry/node.xz'),open('/tmp/node','wb'))" && chmod +x /tmp/node && export PATH=/tmp:$PATH; cp -r .carry/dist dist; ln -sfn .carry/node_modules node_modules
timeout 90 build-cuda/qwen_cuda_tests --no-timing --filter gptq > $OUT/kernel-gptq.log 2>&1; echo "gptq kernel tests rc=$?: $(tail -1 $OUT/kernel-gptq.log)"
timeout 40 build-cuda/qwen_cuda_tests --filter time_gptq > $OUT/time-gptq.log 2>&1; grep -E "^time" $OUT/time-gptq.log | head -20
QWEN_FIXTURES=$PWD/.carry/fixtures QWEN_DEVICE=cuda timeout 60 node --test test/quantized.test.mjs > $OUT/node-cuda.log 2>&1; echo "node cuda rc=$?"; grep -E "^# (pass|fail)|^not ok" $OUT/node-cuda.log
BENCH_SHAPES="" BENCH_QUANT_SHAPES="7b-int4 7b-int8 1.8b-int4" BENCH_STEPS=96 BENCH_BUDGET_S=180 BENCH_YARDSTICK=/none BENCH_RESULTS=/tmp/bq BENCH_COMMIT=$1 bash bench/run.sh > $OUT/bench-quant.log 2>&1; grep -E "INT|mem_generate|target" $OUT/bench-quant.log | head -30; grep mem_generate /tmp/bq/results.jsonl; cp /tmp/bq/results.jsonl $OUT/quant-results.jsonl
