// The one error type of the native core. Every failure the user can cause (a bad file, a wrong
// shape, an id out of range, out of memory) is thrown as qwen::Error with a message that names
// its subject; the N-API layer turns it into a JS Error. Nothing in the core calls abort().
#pragma once
#include <stdexcept>
#include <string>

namespace qwen {

struct Error : std::runtime_error {
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

}  // namespace qwen
