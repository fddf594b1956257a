// A small JSON reader for config files and safetensors headers (RFC 8259; numbers as double).
// Errors name the source (a file path) and the byte offset.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace qwen::json {

struct Value {
  enum class Kind { Null, Bool, Number, String, Array, Object } kind = Kind::Null;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Value> array;
  std::vector<std::pair<std::string, Value>> object;  // in file order

  bool is_null() const { return kind == Kind::Null; }
  bool is_object() const { return kind == Kind::Object; }
  bool is_array() const { return kind == Kind::Array; }
  bool is_number() const { return kind == Kind::Number; }
  bool is_string() const { return kind == Kind::String; }
  bool is_bool() const { return kind == Kind::Bool; }
  const Value* find(const std::string& key) const;  // nullptr when absent (objects only)
};

// Throws qwen::Error("<source>: invalid JSON at byte N: ...").
Value parse(const char* text, size_t len, const std::string& source);
Value parse_file(const std::string& path);

}  // namespace qwen::json
