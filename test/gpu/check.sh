#!/usr/bin/env bash
# One device call after a kernel change: the CUDA kernel tests, the decode-step profile with and
# without PDL (QWEN_CUDA_PDL=0), and the Node suites on CUDA. Logs under $OUT.
# Carried (see prepare-carry.sh): .carry/ with node.xz, node_modules, dist, fixtures, and the two
# binaries built here: .carry/qwen_cuda_tests (cmake -DQWEN_CUDA_TESTS=ON) and
# .carry/qwen_native.node (the CUDA addon). CHECK_KERNELS=0 skips the kernel tests,
# CHECK_SANITIZER=1 adds compute-sanitizer memcheck over --quick (CHECK_SANITIZER_S, 120 s),
# CHECK_NODE_SUITES overrides the Node test files.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/qwen-check}
mkdir -p "$OUT"
. test/gpu/setup.sh
if [ "${CHECK_KERNELS:-1}" = 1 ]; then
  timeout 300 .carry/qwen_cuda_tests --no-timing > "$OUT/kernel-tests.log" 2>&1
  echo "kernel tests rc=$?: $(tail -1 "$OUT/kernel-tests.log")"
  grep -E "^FAIL" "$OUT/kernel-tests.log" | head -20
fi
.carry/qwen_cuda_tests --filter profile 2>&1 | grep -E "^profile|FAIL|rror"
QWEN_CUDA_PDL=0 .carry/qwen_cuda_tests --filter profile 2>&1 | grep -E "^profile|FAIL|rror" | sed 's/^/[PDL off] /'
if [ "${CHECK_SANITIZER:-0}" = 1 ]; then
  # memcheck over the reduced kernel run (every op, the whole-model and batched cases at tiny shapes)
  timeout "${CHECK_SANITIZER_S:-120}" compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
    .carry/qwen_cuda_tests --quick --no-timing > "$OUT/memcheck.log" 2>&1
  echo "memcheck --quick rc=$? (124: cut by the time limit): $(grep -E 'ERROR SUMMARY|LEAK SUMMARY|cases passed' "$OUT/memcheck.log" | tr '\n' ' ')"
  # racecheck over the kernels that share shared-memory tiles between warps
  timeout 90 compute-sanitizer --tool racecheck --error-exitcode 9 .carry/qwen_cuda_tests --quick --no-timing \
    --filter attention > "$OUT/racecheck.log" 2>&1
  echo "racecheck (attention) rc=$?: $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY|cases passed' "$OUT/racecheck.log" | tr '\n' ' ')"
fi
SUITES=${CHECK_NODE_SUITES:-"test/fixtures.test.mjs test/quantized.test.mjs test/sampling.test.mjs test/qwen2.test.mjs test/batching.test.mjs test/logprobs.test.mjs"}
QWEN_FIXTURES=$PWD/.carry/fixtures QWEN_DEVICE=cuda timeout 240 node --test $SUITES > "$OUT/node-cuda.log" 2>&1
echo "node suites on cuda rc=$?"
grep -E "^# (tests|pass|fail|skip)|^not ok" "$OUT/node-cuda.log" | head -30
