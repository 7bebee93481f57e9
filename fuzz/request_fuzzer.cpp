// libFuzzer harness: request bytes -> memfit::handle_request, the WebAssembly module's entry point.
// It catches everything itself, so the only failures are crashes, sanitizer reports, hangs, and an
// internal error (a user's input must get a user-facing message): that one aborts. Only the error's
// "problem" is checked: the message may quote the user's own text, "internal error" included.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "memfit/api.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string answer = memfit::handle_request(std::string_view(reinterpret_cast<const char*>(data), size));
  nlohmann::json j = nlohmann::json::parse(answer);  // the answer is always JSON; throwing here is a find too
  if (j.contains("error") && j["error"]["problem"].get<std::string>().rfind("internal error", 0) == 0) {
    std::fprintf(stderr, "%s", answer.c_str());
    std::abort();
  }
  return 0;
}
