// libFuzzer harness: bytes as an ONNX file -> import (through a MemoryByteSource, as the CLI's file
// source and the browser's Blob source do) -> estimate -> JSON. memfit::Error is the expected answer
// to a bad file; any other exception, a crash, a sanitizer report or a hang is a bug (fuzz/README.md).
// Seeds: fuzz/seeds/onnx (the committed fixtures of tests/fixtures/onnx).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "memfit/api.hpp"
#include "memfit/onnx.hpp"
#include "memfit/report.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    memfit::MemoryByteSource src(bytes);
    memfit::Model m = memfit::import_onnx(src, "fuzz.onnx", {{"seq", 4}});
    (void)memfit::model_json(m);
    memfit::Options o;
    o.train.batch = 2;
    memfit::Estimate e = memfit::estimate(m, o);
    (void)memfit::estimate_json(m, e);
  } catch (const memfit::Error&) {
    // bad input, reported to the user: fine
  }
  return 0;
}
