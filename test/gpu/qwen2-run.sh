#!/usr/bin/env bash
# Device run for the qwen2/qwen3 CUDA path: GQA kernels and whole models vs the CPU twin, a quick
# regression of the v1 kernels, and the qwen2 Node suite on CUDA. Carry: .carry/node.xz,
# .carry/node_modules, .carry/fixtures/tokenizer, dist, build-cuda/qwen_cuda_tests,
# build-cuda-addon/Release/qwen_native.node (a CUDA build of the addon).
python3 -c "import lzma,shutil;shutil.copyfileobj(lzma.open('.carry/node.xz'),open('/tmp/node','wb'))" && chmod +x /tmp/node && export PATH=/tmp:$PATH; ln -sfn .carry/node_modules node_modules; mkdir -p build/Release && cp build-cuda-addon/Release/qwen_native.node build/Release/; B=build-cuda/qwen_cuda_tests
timeout 50 $B --filter gqa > $OUT/gqa.log 2>&1; echo "gqa rc=$? $(tail -1 $OUT/gqa.log)"; grep ^FAIL $OUT/gqa.log | head -10
timeout 80 $B --filter qwen2 > $OUT/qwen2.log 2>&1; echo "qwen2 rc=$? $(tail -1 $OUT/qwen2.log)"; grep -E "^FAIL|exception" $OUT/qwen2.log | head -10
QWEN_FIXTURES=$PWD/.carry/fixtures QWEN_DEVICE=cuda timeout 60 node --test test/qwen2.test.mjs > $OUT/node-qwen2.log 2>&1; echo "node rc=$?"; grep -E "^# (pass|fail)|^not ok|max rel" $OUT/node-qwen2.log | head -12
timeout 80 $B --quick --no-timing > $OUT/quick.log 2>&1; echo "quick rc=$? $(tail -1 $OUT/quick.log)"; grep ^FAIL $OUT/quick.log | head
