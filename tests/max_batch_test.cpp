// max-batch is a search over the real estimate: the batch it returns fits and one more does not.
#include <catch2/catch.hpp>

#include "memfit/api.hpp"
#include "memfit/estimate.hpp"

using namespace memfit;

TEST_CASE("max-batch: max fits, max + 1 does not", "[max-batch]") {
  Model m = parse_model(find_builtin_model("question_cnn")->text, "question_cnn.memfit");
  for (const char* size : {"2GiB", "3GB", "1200MiB"}) {
    for (Optimizer opt : {Optimizer::sgd, Optimizer::adam}) {
      INFO(size << " " << optimizer_name(opt));
      Options o;
      o.gpu = parse_gpu(size);
      o.train.optimizer = opt;
      MaxBatch mb = max_batch(m, o);
      REQUIRE(mb.max_batch >= 1);
      o.train.batch = mb.max_batch;
      CHECK(*estimate(m, o).fits);
      o.train.batch = mb.max_batch + 1;
      CHECK_FALSE(*estimate(m, o).fits);
    }
  }
}

TEST_CASE("max-batch is 0 when even batch 1 does not fit", "[max-batch]") {
  Model m = parse_model(find_builtin_model("question_cnn")->text, "question_cnn.memfit");
  Options o;
  o.gpu = parse_gpu("400MiB");  // less than the 426 MiB CUDA context alone
  CHECK(max_batch(m, o).max_batch == 0);
}

TEST_CASE("GPU sizes: GB and GiB are different and exact", "[gpu]") {
  CHECK(parse_gpu("8GiB").memory_bytes == 8LL * 1024 * 1024 * 1024);
  CHECK(parse_gpu("12GB").memory_bytes == 12000000000LL);
  CHECK(parse_gpu("12000MiB").memory_bytes == 12000LL * 1024 * 1024);
  CHECK(parse_gpu("1.5GiB").memory_bytes == 1610612736LL);
  CHECK(parse_gpu("rtx3090").name == "RTX 3090");
  CHECK(parse_gpu("RTX 3090").memory_bytes == 24576LL * 1024 * 1024);  // nvidia-smi 24576MiB
  CHECK(parse_gpu("h100").cc_major == 9);
  CHECK_THROWS_AS(parse_gpu("potato"), Error);
  CHECK_THROWS_AS(parse_gpu("12 parsecs"), Error);
}

TEST_CASE("a model that does not fit gets remedies computed by the core", "[remedies]") {
  Model m = parse_model(find_builtin_model("question_cnn")->text, "question_cnn.memfit");
  Options o;
  o.gpu = parse_gpu("1GiB");
  o.train.batch = 4096;
  o.train.optimizer = Optimizer::adam;
  Estimate e = estimate(m, o);
  REQUIRE_FALSE(*e.fits);
  auto rs = remedies(m, o);
  REQUIRE(!rs.empty());
  // ordered by cost: free switches first (fused Adam), the smaller batch (a different training) last;
  // the largest batch that fits is among them and fits
  CHECK(rs.front().change == "--optimizer-impl fused");
  CHECK_THAT(rs.back().change, Catch::StartsWith("--batch "));
  CHECK(rs.back().fits);
  for (const auto& r : rs) {
    CHECK_FALSE(r.cost.empty());
    Estimate check = estimate(m, r.options);  // each remedy's number is the core's estimate
    CHECK(check.device_bytes == r.device_bytes);
  }
}
