// The WebAssembly module: Embind over the core's own entry point (memfit::handle_request), nothing else.
// The page and the Node tests send the same JSON requests the CLI's flags turn into; results are the
// core's JSON text, byte for byte what `memfit <command> --json` prints. Errors come back as
// {"error": {...}} values; handle_request catches everything, and we catch again so the module never aborts.
#include <emscripten/bind.h>
#include <emscripten/val.h>

#include <exception>
#include <string>

#include "memfit/api.hpp"
#include "memfit/onnx.hpp"
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

// An ONNX file held by JS (a dropped File in the worker, a Buffer in Node): `reader.size()` is its byte
// count and `reader.read(offset, n)` returns a Uint8Array of exactly those bytes, or null when the read
// failed (it must not throw: a JS exception unwinding through C++ frames would skip their destructors).
// Only the protobuf structure is copied into the module's memory; the weights are skipped unread.
class JsByteSource : public memfit::ByteSource {
 public:
  JsByteSource(emscripten::val reader, std::string file) : reader_(std::move(reader)), file_(std::move(file)) {
    double n = reader_.call<double>("size");
    // a File's size is an integer below 2^53; anything else is a broken reader
    if (!(n >= 0 && n <= 9007199254740991.0) || n != static_cast<double>(static_cast<memfit::i64>(n)))
      throw memfit::Error({file_, 0, 0}, "", "the file's size is not a byte count", "drop the file again");
    size_ = static_cast<memfit::i64>(n);
  }
  memfit::i64 size() override { return size_; }
  void read(memfit::i64 offset, memfit::i64 n, char* out) override {
    emscripten::val chunk = reader_.call<emscripten::val>("read", static_cast<double>(offset), static_cast<double>(n));
    if (chunk.isNull() || chunk.isUndefined() || chunk["length"].as<double>() != static_cast<double>(n))
      throw memfit::Error({file_, 0, 0}, "", "reading the file failed at byte " + std::to_string(offset), "drop the file again");
    emscripten::val view(emscripten::typed_memory_view(static_cast<std::size_t>(n), reinterpret_cast<unsigned char*>(out)));
    view.call<void>("set", chunk);
  }

 private:
  emscripten::val reader_;
  std::string file_;
  memfit::i64 size_ = 0;
};

// handle_request with the model read from an ONNX file through `reader` (see JsByteSource).
std::string request_onnx(const std::string& request_json, emscripten::val reader, const std::string& file) {
  try {
    JsByteSource src(std::move(reader), file);
    return memfit::handle_request(request_json, &src);
  } catch (const memfit::Error& e) {
    return memfit::error_json(e);
  } catch (...) {
    return kInternalError;
  }
}

std::string version() { return memfit::kVersion; }

}  // namespace

EMSCRIPTEN_BINDINGS(memfit) {
  emscripten::function("request", &request);
  emscripten::function("request_onnx", &request_onnx);
  emscripten::function("version", &version);
}
