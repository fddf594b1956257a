// Memory-mapped safetensors checkpoints: one `model.safetensors`, or shards listed by
// `model.safetensors.index.json` (weight_map: tensor name -> file).
// File layout: u64 little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data;
// offsets are relative to the end of the header. Every entry is checked against the file before
// any byte is read: known dtype, size = numel x dtype size, inside the file, no overlaps.
#pragma once
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "tensor.h"

namespace qwen {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws Error naming the path
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

class Checkpoint {
 public:
  // Opens every weight file of a checkpoint folder and validates every header.
  static std::unique_ptr<Checkpoint> open(const std::string& dir);

  const Tensor* find(const std::string& name) const;
  // The tensor, or Error("<dir>: tensor <name> is missing ...").
  const Tensor& get(const std::string& name) const;
  // The file a tensor lives in (for error messages).
  const std::string& file_of(const std::string& name) const;
  const std::string& dir() const { return dir_; }
  size_t total_bytes() const;
  size_t tensor_count() const { return tensors_.size(); }

 private:
  void add_file(const std::string& path, const std::vector<std::string>* only);
  std::string dir_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  struct Entry {
    Tensor tensor;
    size_t file;
  };
  std::unordered_map<std::string, Entry> tensors_;
};

}  // namespace qwen
