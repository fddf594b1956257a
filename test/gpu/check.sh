#!/usr/bin/env bash
# One device call after a kernel change: the CUDA kernel tests, the decode-step profile with and
# without PDL (QWEN_CUDA_PDL=0), and the Node suites on CUDA. Logs under $OUT.
# Carried (see prepare-carry.sh): .carry/ with node.xz, node_modules, dist, fixtures, and the two
# binaries built here: .carry/qwen_cuda_tests (cmake -DQWEN_CUDA_TESTS=ON) and
# .carry/qwen_native.node (the CUDA addon). CHECK_KERNELS=0 skips the kernel tests,
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
SUITES=${CHECK_NODE_SUITES:-"test/fixtures.test.mjs test/quantized.test.mjs test/sampling.test.mjs test/qwen2.test.mjs test/batching.test.mjs test/logprobs.test.mjs"}
QWEN_FIXTURES=$PWD/.carry/fixtures QWEN_DEVICE=cuda timeout 240 node --test $SUITES > "$OUT/node-cuda.log" 2>&1
echo "node suites on cuda rc=$?"
grep -E "^# (tests|pass|fail|skip)|^not ok" "$OUT/node-cuda.log" | head -30
