// max-seq is a search over full estimates of a model per sequence length: the length it returns fits
// and one more does not (under the allocator model), the cap stops it, and sources without $seq are
// refused. The fixture (tests/fixtures/seq_attention.json) is an attention-shaped stack on a [T, 64]
// input: layer_norm, q/k/v linear, q @ k^T ([T, T]), softmax, @ v, output linear, residual add.
#include <catch2/catch.hpp>

#include <fstream>

#include <nlohmann/json.hpp>

#include "memfit/api.hpp"
#include "memfit/estimate.hpp"

using namespace memfit;

namespace {
std::string fixture() {
  std::ifstream f(std::string(MEMFIT_SOURCE_DIR) + "/tests/fixtures/seq_attention.json", std::ios::binary);
  REQUIRE(f);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
}  // namespace

TEST_CASE("max-seq: the longest sequence fits and one token more does not", "[max-seq]") {
  SeqModelFactory f = seq_model_factory(fixture(), "seq_attention.json");
  // the factory builds [T, 64] inputs: batch first, as the model's own shapes
  CHECK(build_graph(f.build(77), GraphSettings{.batch = 2}).nodes[0].shape.out.shape == std::vector<i64>{2, 77, 64});
  for (const char* size : {"2GiB", "8GiB"}) {
    INFO(size);
    Options o;
    o.gpu = parse_gpu(size);
    o.train.batch = 4;
    MaxSeq ms = max_seq(f, o);
    REQUIRE(ms.max_seq >= 1);
    CHECK_FALSE(ms.capped);
    CHECK(ms.n_probes <= 40);  // a bounded number of full pipelines (galloping + bisection)
    CHECK(*estimate(f.build(ms.max_seq), o).fits);
    CHECK_FALSE(*estimate(f.build(ms.max_seq + 1), o).fits);
  }
}

TEST_CASE("max-seq stops at the model's cap and refuses models without $seq", "[max-seq]") {
  SeqModelFactory f = seq_model_factory(fixture(), "seq_attention.json");
  f.limit = 512;  // e.g. max_position_embeddings
  Options o;
  o.gpu = parse_gpu("80GiB");
  o.train.batch = 1;
  MaxSeq ms = max_seq(f, o);
  CHECK(ms.capped);
  CHECK(ms.max_seq == 512);
  CHECK_THROWS_WITH(seq_model_factory("input 16\nfc 4\n", "t.memfit"), Catch::Contains("no $seq"));
  Options no_gpu;
  CHECK_THROWS_WITH(max_seq(f, no_gpu), Catch::Contains("needs a GPU"));
  // $seq_len is another name, not the token
  CHECK_THROWS_WITH(seq_model_factory("input $seq_len\nfc 4\n", "t.memfit"), Catch::Contains("no $seq"));
}

TEST_CASE("max-seq through the request API", "[max-seq][api]") {
  nlohmann::json req = {{"command", "max-seq"}, {"model", fixture()}, {"options", {{"gpu", "2GiB"}, {"batch", "4"}}},
                        {"seq_limit", 100000}};
  nlohmann::json out = nlohmann::json::parse(handle_request(req.dump()));
  REQUIRE(out.contains("max_seq"));
  CHECK(out["max_seq"].get<i64>() >= 1);
  CHECK(out["max_seq_search_cap"].get<i64>() == 100000);
  CHECK(out["fits"].get<bool>());
}
