// libFuzzer harness: model source bytes -> parse -> estimate (small batch, with and without a GPU) ->
// JSON and text. memfit::Error is the expected answer to bad input; any other exception, a crash, a
// sanitizer report or a hang is a bug (fuzz/README.md).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <nlohmann/json.hpp>

#include "memfit/api.hpp"
#include "memfit/report.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    memfit::Model m;
    try {
      m = memfit::parse_model(text, "fuzz.memfit");
    } catch (const nlohmann::json::exception& e) {
      // Known, pending (tests/corpus/fuzz03..05): model_json.cpp lets out_of_range 406 ("number overflow",
      // 1e400) and type_error 302 (a non-string "kind" or "name") escape. Tolerated only here, only those
      // two ids, so the short CI run stays deterministic; delete this catch when those cases' pending:
      // lines go.
      if (e.id != 406 && e.id != 302) throw;
      return 0;
    }
    memfit::Options o;
    o.train.batch = 2;
    memfit::Estimate e = memfit::estimate(m, o);
    (void)memfit::estimate_json(m, e);
    (void)memfit::render_text(m, e, true);
    o.gpu = memfit::parse_gpu("8GiB");
    (void)memfit::estimate(m, o);
  } catch (const memfit::Error&) {
    // bad input, reported to the user: fine
  }
  return 0;
}
