#include "json.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "error.h"

namespace qwen::json {

const Value* Value::find(const std::string& key) const {
  if (kind != Kind::Object) return nullptr;
  for (const auto& kv : object)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

namespace {

struct Parser {
  const char* s;
  size_t n;
  size_t i = 0;
  const std::string& source;
  int depth = 0;

  [[noreturn]] void fail(const std::string& what) {
    throw Error(source + ": invalid JSON at byte " + std::to_string(i) + ": " + what);
  }
  void ws() {
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
  }
  bool lit(const char* w) {
    size_t k = 0;
    while (w[k]) {
      if (i + k >= n || s[i + k] != w[k]) return false;
      k++;
    }
    i += k;
    return true;
  }
  static void put_utf8(std::string& out, uint32_t c) {
    if (c < 0x80) {
      out += char(c);
    } else if (c < 0x800) {
      out += char(0xc0 | (c >> 6));
      out += char(0x80 | (c & 0x3f));
    } else if (c < 0x10000) {
      out += char(0xe0 | (c >> 12));
      out += char(0x80 | ((c >> 6) & 0x3f));
      out += char(0x80 | (c & 0x3f));
    } else {
      out += char(0xf0 | (c >> 18));
      out += char(0x80 | ((c >> 12) & 0x3f));
      out += char(0x80 | ((c >> 6) & 0x3f));
      out += char(0x80 | (c & 0x3f));
    }
  }
  uint32_t hex4() {
    if (i + 4 > n) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
      char c = s[i++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= uint32_t(c - '0');
      else if (c >= 'a' && c <= 'f') v |= uint32_t(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= uint32_t(c - 'A' + 10);
      else fail("bad \\u escape");
    }
    return v;
  }
  std::string str() {
    if (i >= n || s[i] != '"') fail("expected a string");
    i++;
    std::string out;
    while (true) {
      if (i >= n) fail("unterminated string");
      char c = s[i++];
      if (c == '"') break;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i >= n) fail("unterminated escape");
      char e = s[i++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t c1 = hex4();
          if (c1 >= 0xd800 && c1 < 0xdc00 && i + 1 < n && s[i] == '\\' && s[i + 1] == 'u') {
            i += 2;
            uint32_t c2 = hex4();
            if (c2 >= 0xdc00 && c2 < 0xe000) c1 = 0x10000 + ((c1 - 0xd800) << 10) + (c2 - 0xdc00);
            else fail("bad surrogate pair");
          }
          put_utf8(out, c1);
          break;
        }
        default: fail(std::string("bad escape \\") + e);
      }
    }
    return out;
  }
  Value value() {
    if (++depth > 256) fail("nesting too deep");
    ws();
    if (i >= n) fail("unexpected end");
    Value v;
    char c = s[i];
    if (c == '{') {
      i++;
      v.kind = Value::Kind::Object;
      ws();
      if (i < n && s[i] == '}') {
        i++;
      } else {
        while (true) {
          ws();
          std::string k = str();
          ws();
          if (i >= n || s[i] != ':') fail("expected ':'");
          i++;
          v.object.emplace_back(std::move(k), value());
          ws();
          if (i < n && s[i] == ',') { i++; continue; }
          if (i < n && s[i] == '}') { i++; break; }
          fail("expected ',' or '}'");
        }
      }
    } else if (c == '[') {
      i++;
      v.kind = Value::Kind::Array;
      ws();
      if (i < n && s[i] == ']') {
        i++;
      } else {
        while (true) {
          v.array.push_back(value());
          ws();
          if (i < n && s[i] == ',') { i++; continue; }
          if (i < n && s[i] == ']') { i++; break; }
          fail("expected ',' or ']'");
        }
      }
    } else if (c == '"') {
      v.kind = Value::Kind::String;
      v.string = str();
    } else if (lit("true")) {
      v.kind = Value::Kind::Bool;
      v.boolean = true;
    } else if (lit("false")) {
      v.kind = Value::Kind::Bool;
    } else if (lit("null")) {
      v.kind = Value::Kind::Null;
    } else if (c == '-' || (c >= '0' && c <= '9') || c == 'N' || c == 'I') {
      // NaN / Infinity are not JSON but Python's json writes them; accept them.
      if (lit("NaN")) { v.kind = Value::Kind::Number; v.number = NAN; depth--; return v; }
      if (lit("Infinity")) { v.kind = Value::Kind::Number; v.number = INFINITY; depth--; return v; }
      if (lit("-Infinity")) { v.kind = Value::Kind::Number; v.number = -INFINITY; depth--; return v; }
      size_t start = i;
      if (s[i] == '-') i++;
      while (i < n && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.' || s[i] == 'e' || s[i] == 'E' ||
                       s[i] == '+' || s[i] == '-'))
        i++;
      std::string num(s + start, i - start);
      char* end = nullptr;
      v.kind = Value::Kind::Number;
      v.number = std::strtod(num.c_str(), &end);
      if (num.empty() || end != num.c_str() + num.size()) { i = start; fail("bad number"); }
    } else {
      fail(std::string("unexpected character '") + c + "'");
    }
    depth--;
    return v;
  }
};

}  // namespace

Value parse(const char* text, size_t len, const std::string& source) {
  Parser p{text, len, 0, source};
  Value v = p.value();
  p.ws();
  if (p.i != len) p.fail("trailing characters");
  return v;
}

Value parse_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open file");
  std::stringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  return parse(text.data(), text.size(), path);
}

}  // namespace qwen::json
