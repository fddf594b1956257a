#include "safetensors.h"

#include <algorithm>
#include <cmath>
#include <fcntl.h>
#include <map>
#include <set>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "json.h"

namespace qwen {

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open file");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw Error(path + ": cannot stat file");
  }
  size_ = size_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      throw Error(path + ": cannot memory-map file");
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

namespace {

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool parse_dtype(const std::string& s, DType* out) {
  if (s == "F32") *out = DType::F32;
  else if (s == "BF16") *out = DType::BF16;
  else if (s == "F16") *out = DType::F16;
  else if (s == "I32") *out = DType::I32;
  else return false;
  return true;
}

}  // namespace

void Checkpoint::add_file(const std::string& path, const std::vector<std::string>* only) {
  auto file = std::make_unique<MappedFile>(path);
  const MappedFile& f = *file;
  if (f.size() < 8) throw Error(path + ": truncated safetensors file (" + std::to_string(f.size()) + " bytes)");
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f.data()[i];
  if (hlen < 2 || hlen > f.size() - 8)
    throw Error(path + ": safetensors header length " + std::to_string(hlen) + " does not fit in the " +
                std::to_string(f.size()) + "-byte file (truncated or not a safetensors file)");
  json::Value header = json::parse(reinterpret_cast<const char*>(f.data() + 8), size_t(hlen), path + " (header)");
  if (!header.is_object()) throw Error(path + ": safetensors header is not a JSON object");
  const uint8_t* base = f.data() + 8 + hlen;
  size_t data_size = f.size() - 8 - size_t(hlen);
  size_t file_index = files_.size();
  struct Span {
    size_t begin, end;
    std::string name;
  };
  std::vector<Span> spans;
  for (const auto& [name, e] : header.object) {
    if (name == "__metadata__") continue;
    std::string where = path + ": tensor " + name;
    const json::Value* dt = e.find("dtype");
    const json::Value* sh = e.find("shape");
    const json::Value* off = e.find("data_offsets");
    if (!dt || !dt->is_string() || !sh || !sh->is_array() || !off || !off->is_array() || off->array.size() != 2)
      throw Error(where + ": header entry needs dtype, shape and data_offsets [begin, end]");
    Tensor t;
    t.name = name;
    if (!parse_dtype(dt->string, &t.dtype))
      throw Error(where + ": dtype " + dt->string + " is not supported (supported: F32, BF16, F16, I32)");
    for (const json::Value& d : sh->array) {
      if (!d.is_number() || d.number < 0 || d.number != std::floor(d.number) || d.number > 1e12)
        throw Error(where + ": bad shape entry");
      t.shape.push_back(int64_t(d.number));
    }
    double b = off->array[0].is_number() ? off->array[0].number : -1;
    double en = off->array[1].is_number() ? off->array[1].number : -1;
    if (b < 0 || en < b || b != std::floor(b) || en != std::floor(en))
      throw Error(where + ": bad data_offsets");
    size_t begin = size_t(b), end = size_t(en);
    if (end - begin != t.nbytes())
      throw Error(where + ": data_offsets span " + std::to_string(end - begin) + " bytes but " + dt->string +
                  " " + shape_str(t.shape) + " needs " + std::to_string(t.nbytes()));
    if (end > data_size)
      throw Error(where + ": data_offsets end " + std::to_string(end) + " lies past the end of the data (" +
                  std::to_string(data_size) + " bytes; the file is truncated or the header is wrong)");
    t.data = base + begin;
    if (end > begin) spans.push_back(Span{begin, end, name});
    if (only && std::find(only->begin(), only->end(), name) == only->end()) continue;
    if (tensors_.count(name)) throw Error(where + ": tensor appears in more than one file");
    tensors_[name] = Entry{std::move(t), file_index};
  }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < spans.size(); i++)
    if (spans[i].begin < spans[i - 1].end)
      throw Error(path + ": tensors " + spans[i - 1].name + " and " + spans[i].name +
                  " overlap in the file (the header lies about data_offsets)");
  files_.push_back(std::move(file));
}

std::unique_ptr<Checkpoint> Checkpoint::open(const std::string& dir) {
  auto ck = std::unique_ptr<Checkpoint>(new Checkpoint());
  ck->dir_ = dir;
  std::string index = dir + "/model.safetensors.index.json";
  std::string single = dir + "/model.safetensors";
  if (file_exists(index)) {
    json::Value v = json::parse_file(index);
    const json::Value* wm = v.find("weight_map");
    if (!wm || !wm->is_object()) throw Error(index + ": missing \"weight_map\" object");
    std::map<std::string, std::vector<std::string>> by_file;
    for (const auto& [name, file] : wm->object) {
      if (!file.is_string() || file.string.find('/') != std::string::npos)
        throw Error(index + ": weight_map entry for " + name + " must be a file name in the folder");
      by_file[file.string].push_back(name);
    }
    for (const auto& [file, names] : by_file) {
      std::string p = dir + "/" + file;
      if (!file_exists(p)) throw Error(p + ": shard listed in model.safetensors.index.json is missing");
      ck->add_file(p, &names);
      for (const std::string& n : names)
        if (!ck->tensors_.count(n)) throw Error(p + ": tensor " + n + " is listed in the index but not in this shard");
    }
  } else if (file_exists(single)) {
    ck->add_file(single, nullptr);
  } else if (file_exists(dir + "/pytorch_model.bin") || file_exists(dir + "/pytorch_model.bin.index.json")) {
    throw Error(dir + ": holds pytorch_model*.bin (pickle) weights; qwen-native reads safetensors only "
                "(model.safetensors or model-*.safetensors with model.safetensors.index.json)");
  } else {
    throw Error(dir + ": no model.safetensors or model.safetensors.index.json found");
  }
  return ck;
}

const Tensor* Checkpoint::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second.tensor;
}

const Tensor& Checkpoint::get(const std::string& name) const {
  const Tensor* t = find(name);
  if (!t) throw Error(dir_ + ": tensor " + name + " is missing from the checkpoint");
  return *t;
}

const std::string& Checkpoint::file_of(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return dir_;
  return files_[it->second.file]->path();
}

size_t Checkpoint::total_bytes() const {
  size_t n = 0;
  for (const auto& [k, e] : tensors_) n += e.tensor.nbytes();
  return n;
}

}  // namespace qwen
