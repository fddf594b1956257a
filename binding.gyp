# node-gyp build of the CPU backend (the CUDA backend needs nvcc and is built through CMake:
# scripts/install.js / CMakeLists.txt). Kept so that tools which only know node-gyp
# (prebuildify, node-gyp-build's fallback, electron-rebuild) can still build a working addon.
{
  "targets": [
    {
      "target_name": "qwen_native",
      "sources": [
        "<!@(node -p \"require('fs').readdirSync('csrc/core').filter(f=>f.endsWith('.cpp')).map(f=>'csrc/core/'+f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('csrc/cpu').filter(f=>f.endsWith('.cpp')).map(f=>'csrc/cpu/'+f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('csrc/napi').filter(f=>f.endsWith('.cpp')).map(f=>'csrc/napi/'+f).join(' ')\")",
        "csrc/cuda/unavailable.cpp"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_API_NO_EXTERNAL_BUFFERS_ALLOWED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions"]
    }
  ]
}
