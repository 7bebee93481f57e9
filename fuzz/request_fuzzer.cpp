// libFuzzer harness: request bytes -> memfit::handle_request, the WebAssembly module's entry point.
// It catches everything itself, so the only failures are crashes, sanitizer reports, hangs, and an
// answer saying "internal error" (a user's input must get a user-facing message): that one aborts.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "memfit/api.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string answer = memfit::handle_request(std::string_view(reinterpret_cast<const char*>(data), size));
  if (answer.find("internal error") != std::string::npos) std::abort();
  return 0;
}
