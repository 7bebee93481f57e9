// The JSON form's top-level "freeze" (requires_grad=False per parameter, as tools/memfit_export.py
// records it at export time), and how --freeze / --train combine with it.
#include <catch2/catch.hpp>

#include "memfit/api.hpp"
#include "memfit/report.hpp"
#include "test_util.hpp"

using namespace memfit;
using test::row;

namespace {
const char* kJson = R"({"format": "memfit-model/1", "name": "mlp", "freeze": ["fc1.weight"], "layers": [
  {"name": "input", "kind": "input", "shape": [32]},
  {"name": "fc1", "kind": "linear", "from": ["input"], "out_features": 64},
  {"name": "r", "kind": "relu", "from": ["fc1"]},
  {"name": "fc2", "kind": "linear", "from": ["r"], "out_features": 10}]})";
Estimate run(const std::string& src, std::vector<std::string> freeze = {}, std::vector<std::string> train = {}) {
  Options o;
  o.train.batch = 4;
  o.train.freeze = std::move(freeze);
  o.train.train = std::move(train);
  return estimate(test::keep_model(src, "m.json"), o);
}
}  // namespace

TEST_CASE("JSON freeze: exactly the named parameters stop training", "[freeze]") {
  Estimate e = run(kJson);
  // fc1.weight 64x32 = 2,048 frozen; fc1.bias 64 and fc2 (10x64 + 10 = 650) train: 714 x 4 B of .grad
  CHECK(row(e, "fc1").frozen_params == 2048);
  CHECK(e.total_grad_bytes == (64 + 650) * 4);
  // --freeze adds to it; --train replaces it
  CHECK(run(kJson, {"fc2"}).total_grad_bytes == 64 * 4);
  CHECK(run(kJson, {}, {"fc1"}).total_grad_bytes == (2048 + 64) * 4);
  // memfit model --json writes it back
  auto back = nlohmann::json::parse(model_json(test::keep_model(kJson, "m.json")));
  CHECK(back["freeze"] == nlohmann::json::array({"fc1.weight"}));
}

TEST_CASE("JSON freeze: a name that is no parameter, and unknown top-level keys, are errors", "[freeze]") {
  std::string bad = kJson;
  bad.replace(bad.find("fc1.weight"), 10, "fc9.weight");
  CHECK_THROWS_WITH(run(bad), Catch::Contains("m.json:1:") && Catch::Contains("'fc9.weight', which is no parameter"));
  std::string typo = kJson;
  typo.replace(typo.find("\"freeze\""), 8, "\"frozen\"");
  CHECK_THROWS_WITH(run(typo), Catch::Contains("unknown top-level key \"frozen\""));
}
