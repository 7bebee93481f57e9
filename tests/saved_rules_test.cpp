// Per-rule saved tensors, by hand (derivatives.yaml; docs/pytorch-behaviour.md s4): unique storages
// are counted once, at the first layer that saves them.
#include <catch2/catch.hpp>

#include "memfit/estimate.hpp"
#include "test_util.hpp"

using namespace memfit;

namespace {
Estimate run(const std::string& src, i64 batch = 4) {
  Options o;
  o.train.batch = batch;
  return estimate(test::keep_model(src), o);
}
using test::row;
}  // namespace

TEST_CASE("a ReLU feeding a conv shares one saved tensor with it", "[saved]") {
  Estimate e = run("input 8x8x3 layout=hwc\nc1: conv 16 3x3 pad=1\nr: relu\nc2: conv 16 3x3 pad=1\nflatten\nfc 10\n");
  // relu saves its result [4,16,8,8] float32; c2 saves the same tensor as its input: counted at r only.
  const i64 relu_out = 4 * 16 * 8 * 8 * 4;
  CHECK(row(e, "r").saved_bytes == relu_out);
  CHECK(row(e, "c2").saved_bytes == 0);
  REQUIRE(row(e, "c2").saved.size() == 2);  // input + weight
  CHECK(row(e, "c2").saved[0].owner == row(e, "r").node);
  // c1's output is saved by nobody (relu saves its result, not its input): it is not counted.
  CHECK(row(e, "c1").saved_bytes == 0);
}

TEST_CASE("in-place ReLU after batch norm: BN saves its input, ReLU the output storage", "[saved]") {
  Estimate e = run("input 8x8x3 layout=hwc\nc1: conv 16 3x3 pad=1 bias=false\nb: bn\nr: relu inplace\n"
                   "c2: conv 16 3x3 pad=1\nflatten\nfc 10\n");
  const i64 act = 4 * 16 * 8 * 8 * 4;
  // bn: input (c1's output) + save_mean + save_invstd, float32 [16] each
  CHECK(row(e, "b").saved_bytes == act + 2 * 16 * 4);
  CHECK(row(e, "r").saved_bytes == act);  // bn's output, modified in place by relu_
  CHECK(std::string(row(e, "r").output_storage) == "in-place");
  CHECK(row(e, "c2").saved_bytes == 0);   // same storage as r's
  CHECK(row(e, "b").buffer_bytes == 2 * 16 * 4 + 8);  // running_mean, running_var, num_batches_tracked (int64)
}

TEST_CASE("dropout saves a bool mask; avg pools save their input", "[saved]") {
  Estimate e = run("input 32 \nfc 64\nd: dropout 0.5\na: fc 10\n");
  CHECK(row(e, "d").saved_bytes == 4 * 64 * 1);  // CUDA native_dropout: bool mask, 1 B per element
  CHECK(row(e, "a").saved_bytes == 4 * 64 * 4);  // dropout's output, saved by the next linear
  Estimate p = run("input 8x8x4 layout=hwc\nc: conv 4 1x1\nap: avgpool 2\ng: gap\nflatten\nfc 3\n");
  CHECK(row(p, "ap").saved_bytes == 4 * 4 * 8 * 8 * 4);  // conv output (avg_pool2d saves self)
  // gap = adaptive_avg_pool2d to 1x1 = mean over H, W: PyTorch 2.x's mean.dim keeps only the sizes
  CHECK(row(p, "g").saved_bytes == 0);
  CHECK(row(p, "g").saved.empty());
}

TEST_CASE("adaptive average pooling: 1x1 saves nothing in PyTorch 2, its input in 1.13 and otherwise", "[saved]") {
  const Model& m = test::keep_model("input 8x8x4 layout=hwc\nc: conv 4 1x1\na2: adaptive_avgpool 2\n"
                                    "g: gap\nflatten\nfc 3\n");
  Options o;
  o.train.batch = 4;
  Estimate e2 = estimate(m, o);
  CHECK(row(e2, "a2").saved_bytes == 4 * 4 * 8 * 8 * 4);  // _adaptive_avg_pool2d saves self: c's output
  CHECK(row(e2, "g").saved_bytes == 0);
  o.train.rules = TorchRules::v1_13;  // torch 1.13's MeanBackward1 saved self (measured)
  Estimate e1 = estimate(m, o);
  CHECK(row(e1, "g").saved_bytes == 4 * 4 * 2 * 2 * 4);  // a2's output
}

TEST_CASE("the first linear of an MLP saves its input but not its weight", "[saved]") {
  // addmm saves mat2 (weight.t()) only when mat1 (the input) requires grad: the data does not.
  Estimate e = run("input 784\nfc1: fc 100\nfc2: fc 10\n");
  REQUIRE(row(e, "fc1").saved.size() == 1);
  CHECK(row(e, "fc1").saved[0].is_input);
  REQUIRE(row(e, "fc2").saved.size() == 2);
}

TEST_CASE("residual add and concat save nothing; the gradient passes through", "[saved]") {
  Estimate e = run("input 8x8x8 layout=hwc\nc: conv 8 3x3 pad=1\ns: add from=c,input\n"
                   "k: concat from=s,c\nflatten\nfc 2\n");
  CHECK(row(e, "s").saved.empty());
  CHECK(row(e, "k").saved.empty());
  CHECK(row(e, "k").out.shape == std::vector<i64>{4, 16, 8, 8});
}
