#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before a device run: assembles .carry/ (git-ignored) with what
# the GPU machine lacks: our node binary, the two runtime npm packages, the compiled TypeScript,
# the fixtures and the torch yardstick. Name `.carry` and `build` in the device call's carry list.
set -euo pipefail
cd "$(dirname "$0")/../.."
shared=${QWEN_SHARED:-../shared}
mkdir -p .carry
[ -f .carry/node.xz ] || bash "$shared/tools/pack-node.sh"
rm -rf .carry/node_modules .carry/fixtures .carry/fixtures.tar.xz .carry/dist
mkdir -p .carry/node_modules/tiktoken .carry/fixtures
cp -r node_modules/node-gyp-build .carry/node_modules/
cp node_modules/tiktoken/package.json .carry/node_modules/tiktoken/
cp -r node_modules/tiktoken/lite .carry/node_modules/tiktoken/
cp -r dist .carry/dist
# the openai client (the server and logprobs suites use it), without its types and maps: ~150 KB
tar cf - -C node_modules --exclude='*.map' --exclude='*.d.ts' --exclude='*.d.mts' --exclude='*.d.cts' \
  --exclude='src' --exclude='*.md' openai | xz -T2 -6 > .carry/openai.tar.xz
# cp -L: the fixtures hold symbolic links (chat-tiny-bf16/qwen.tiktoken, the kvcache model)
for f in tiny-fp32 tiny-bf16 tiny-fp16 chat-tiny-bf16 tokenizer tiny-gptq-int4 tiny-gptq-int4-actorder tiny-gptq-int8 tiny-fp32-kvcache-int8; do
  cp -rL "$shared/fixtures/$f" .carry/fixtures/ 2>/dev/null || cp -r "$shared/fixtures/$f" .carry/fixtures/
done
cp "$shared/fixtures/README.md" .carry/fixtures/
# xz saves ~6 MB of the 64 MiB a device call may carry; the device scripts unpack it.
chmod -R u+w .carry/fixtures
tar cf - -C .carry fixtures | xz -T2 -6 > .carry/fixtures.tar.xz
rm -rf .carry/fixtures
# The binaries a device script runs, when built here: the kernel tests and the CUDA addon.
# xz: 7 MB each stripped, ~1.4 MB compressed (setup.sh unpacks them); the call's 64 MiB is tight.
rm -f .carry/qwen_cuda_tests .carry/qwen_native.node
[ -x build-cuda/qwen_cuda_tests ] && cp build-cuda/qwen_cuda_tests .carry/ && strip .carry/qwen_cuda_tests && xz -T2 -6 -f .carry/qwen_cuda_tests
[ -f build-cuda-addon/Release/qwen_native.node ] && cp build-cuda-addon/Release/qwen_native.node .carry/ && strip .carry/qwen_native.node && xz -T2 -6 -f .carry/qwen_native.node
cp "$shared/tools/torch_yardstick.py" .carry/
du -sh .carry
