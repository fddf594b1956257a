#!/usr/bin/env bash
# The final device run of a session: kernel tests, the Node suites on CUDA, the benchmark (see test/gpu/run.sh for the full one with sanitizers).
python3 -c "import lzma,shutil;shutil.copyfileobj(lzma.open('.carry/node.xz'),open('/tmp/node','wb'))" && chmod +x /tmp/node && export PATH=/tmp:$PATH; cp -r .carry/dist dist; ln -sfn .carry/node_modules node_modules
timeout 150 build-cuda/qwen_cuda_tests --no-timing > $OUT/kernel-tests.log 2>&1; krc=$?
echo "kernel tests rc=$krc: $(tail -1 $OUT/kernel-tests.log)"; grep -E "^FAIL" $OUT/kernel-tests.log | head -20
if [ $krc != 0 ]; then export QWEN_GPTQ_GEMV=v1 QWEN_WTE_ON_DEVICE=1 QWEN_DEVICE_ARGMAX=0; echo "FALLBACKS ON"; fi
QWEN_FIXTURES=$PWD/.carry/fixtures QWEN_DEVICE=cuda timeout 150 node --test test/fixtures.test.mjs test/quantized.test.mjs test/sampling.test.mjs > $OUT/node-cuda.log 2>&1; echo "node cuda rc=$?"; grep -E "^# (case|conv|tiny|.*chi2|pass|fail)|^not ok" $OUT/node-cuda.log | head -40
BENCH_BUDGET_S=260 BENCH_QUANT_SHAPES="7b-int4 7b-int8 1.8b-int4" BENCH_STEPS=96 BENCH_COMMIT=a3fa1f2 bash bench/run.sh > $OUT/bench-stdout.log 2>&1; tail -45 $OUT/bench-stdout.log; grep mem_generate /tmp/bench-results/results.jsonl
