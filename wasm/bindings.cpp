// The WebAssembly module: Embind over the core's own entry point (memfit::handle_request), nothing else.
// The page and the Node tests send the same JSON requests the CLI's flags turn into; results are the
// core's JSON text, byte for byte what `memfit <command> --json` prints. Errors come back as
// {"error": {...}} values; handle_request catches everything, and we catch again so the module never aborts.
#include <emscripten/bind.h>

#include <exception>
#include <string>

#include "memfit/api.hpp"
#include "memfit/report.hpp"

namespace {

// handle_request turns every exception into an {"error"} value itself; this second net only sees what
// escapes that (bad_alloc while formatting the error). It must not allocate much, and it must not let a
// C++ exception reach JS: Embind would rethrow it there, past the destructors, and leak the heap.
// Stack overflows are not C++ exceptions (a RangeError in JS, nothing to catch here): handle_request
// refuses deep nesting before recursing (core/src/api/api.cpp check_depth).
const char kInternalError[] =
    "{\n  \"error\": {\n    \"message\": \"internal error\",\n    \"file\": \"\",\n    \"line\": 0,\n"
    "    \"column\": 0,\n    \"layer\": \"\",\n    \"problem\": \"internal error\",\n"
    "    \"fix\": \"please report this request\"\n  }\n}\n";

std::string request(const std::string& request_json) {
  try {
    return memfit::handle_request(request_json);
  } catch (...) {
    return kInternalError;
  }
}

std::string version() { return memfit::kVersion; }

}  // namespace

EMSCRIPTEN_BINDINGS(memfit) {
  emscripten::function("request", &request);
  emscripten::function("version", &version);
}
