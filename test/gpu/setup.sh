# Sourced by the device scripts (check.sh, bench-all.sh) from the repository root: unpacks what
# test/gpu/prepare-carry.sh put in .carry/ (node, the npm packages, dist, the fixtures, the CUDA
# addon) where the tests and the benchmark look for them.
python3 -c "import lzma,shutil;shutil.copyfileobj(lzma.open('.carry/node.xz'),open('/tmp/node','wb'))" && chmod +x /tmp/node
export PATH=/tmp:$PATH
for f in qwen_cuda_tests qwen_native.node; do
  [ -f .carry/$f.xz ] && python3 -c "import lzma,shutil,sys;shutil.copyfileobj(lzma.open(sys.argv[1]+'.xz'),open(sys.argv[1],'wb'))" .carry/$f
done
[ -f .carry/qwen_cuda_tests ] && chmod +x .carry/qwen_cuda_tests
[ -d .carry/fixtures ] || tar xJf .carry/fixtures.tar.xz -C .carry
rm -rf dist && cp -r .carry/dist dist
ln -sfn .carry/node_modules node_modules
[ -f .carry/openai.tar.xz ] && [ ! -d .carry/node_modules/openai ] && tar xJf .carry/openai.tar.xz -C .carry/node_modules
mkdir -p build/Release && cp .carry/qwen_native.node build/Release/qwen_native.node
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
