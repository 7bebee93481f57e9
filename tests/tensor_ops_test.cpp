// N-d tensor kinds by hand: views and their layouts (reshape, permute, transpose, contiguous,
// slice), broadcasting add/mul, matmul, layer_norm, linear on 3-d input, hardswish, stochastic
// depth. The PyTorch facts each case relies on were measured with torch 1.13 on the CPU
// (saved_tensors_hooks storage pointers; the profiler for the shuffle's backward copy) and are
// quoted where used.
#include <catch2/catch.hpp>

#include "memfit/api.hpp"
#include "memfit/ops.hpp"
#include "test_util.hpp"

using namespace memfit;
using test::row;

namespace {
Options opts(i64 batch) { return test::tensor_options(batch); }
Estimate run(const std::string& src, i64 batch = 2) { return estimate(test::keep_model(src), opts(batch)); }
// activation-gradient bytes allocated by one node's backward in iteration 1
i64 grad_allocs(const Estimate& e, const std::string& layer) {
  int node = row(e, layer).node;
  i64 b = 0;
  for (const auto& ev : e.plan.events)
    if (!ev.is_free && ev.phase == Phase::backward && ev.iteration == 1 && ev.node == node &&
        e.plan.tensors[static_cast<std::size_t>(ev.tensor)].category == Category::activation_grad)
      b += e.plan.tensors[static_cast<std::size_t>(ev.tensor)].bytes;
  return b;
}
}  // namespace

TEST_CASE("computeStride: views of contiguous, transposed and sliced layouts", "[tensor]") {
  std::vector<i64> st;
  // contiguous [2,3,4] -> [6,4]: a view with strides (4,1)
  REQUIRE(view_strides({2, 3, 4}, {12, 4, 1}, {6, 4}, st));
  CHECK(st == std::vector<i64>{4, 1});
  // [2,3,4].transpose(1,2) = shape [2,4,3] strides (12,1,4): merging 4 and 3 is impossible
  CHECK_FALSE(view_strides({2, 4, 3}, {12, 1, 4}, {2, 12}, st));
  // ... but merging the batch with the transposed pair's leading dim is (k.transpose(-2,-1) folds)
  REQUIRE(view_strides({2, 4, 3}, {12, 1, 4}, {2, 4, 3}, st));
  // size-1 dims are free: [2,1,3] with any stride for the 1 views as [2,3]
  REQUIRE(view_strides({2, 1, 3}, {3, 99, 1}, {2, 3}, st));
  CHECK(st == std::vector<i64>{3, 1});
}

TEST_CASE("channel shuffle: contiguous() copies, and the first view's backward copies too", "[tensor]") {
  // ShuffleNetV2's channel_shuffle: view(b, g, c/g, h, w); transpose(1, 2).contiguous(); view(b, -1, h, w).
  // torch 1.13 profiler on this exact sequence (b=2, c=8, 4x4): one 1,024 B copy in forward
  // (aten::clone in contiguous) and one 1,024 B copy in backward (ViewBackward0 -> aten::reshape ->
  // aten::clone: the gradient that TransposeBackward hands on is not contiguous).
  Estimate e = run(
      "input 8x4x4 layout=chw\nconv1: conv 8 3x3 padding=1\nv1: reshape 2x4x4x4\nt: transpose 1 2\n"
      "c: contiguous\nv2: reshape 8x4x4\nr: relu\ngap\nflatten\nfc 10\n");
  const i64 tensor_bytes = 2 * 8 * 4 * 4 * 4;  // 1,024 B
  CHECK(row(e, "v1").output_bytes == tensor_bytes);
  CHECK(e.graph.nodes[static_cast<std::size_t>(row(e, "v1").node)].mem.output == OpMemory::Output::view);
  CHECK(e.graph.nodes[static_cast<std::size_t>(row(e, "t").node)].mem.output == OpMemory::Output::view);
  CHECK(e.graph.nodes[static_cast<std::size_t>(row(e, "c").node)].mem.output == OpMemory::Output::fresh);
  CHECK(e.graph.nodes[static_cast<std::size_t>(row(e, "v2").node)].mem.output == OpMemory::Output::view);
  CHECK(grad_allocs(e, "v2") == 0);             // grad.reshape of a contiguous gradient: a view
  CHECK(grad_allocs(e, "c") == 0);              // CloneBackward hands it on
  CHECK(grad_allocs(e, "t") == 0);              // TransposeBackward: a (non-contiguous) view
  CHECK(grad_allocs(e, "v1") == tensor_bytes);  // reshape of that view: the copy
}

TEST_CASE("reshape of a transposed tensor copies in forward; view of a contiguous one does not", "[tensor]") {
  Estimate e = run("input 4x6\nfc1: fc 6\nt: transpose 1 2\nr: reshape 24\nfc 3\n", 2);
  // t: [2,6,4] strides (24,1,6) -> [2,24]: no view exists, so reshape clones (TensorShape.cpp reshape)
  CHECK(e.graph.nodes[static_cast<std::size_t>(row(e, "r").node)].mem.output == OpMemory::Output::fresh);
  CHECK(row(e, "r").output_bytes == 2 * 24 * 4);
}

TEST_CASE("reshape sizes: -1 inferred, wrong element counts refused with the layer", "[tensor]") {
  Estimate e = run("input 8x4x4 layout=chw\nr: reshape -1x16\nflatten\nfc 2\n");
  CHECK(row(e, "r").out.shape == std::vector<i64>{2, 8, 16});
  CHECK_THROWS_WITH(run("input 8x4x4 layout=chw\nr: reshape 3x16\nflatten\nfc 2\n"),
                    Catch::Contains("layer 'r'") && Catch::Contains("48 elements per sample, the input 8x4x4 has 128"));
  CHECK_THROWS_WITH(run("input 8x4x4 layout=chw\np: permute 0,1,1,2\nflatten\nfc 2\n"),
                    Catch::Contains("not a permutation"));
}

TEST_CASE("broadcasting mul (squeeze-excitation): saves both inputs, sums the scale's gradient", "[tensor]") {
  // torch 1.13: (a [2,8,4,4]) * (b [2,8,1,1]) saves a (1,024 B) and b (64 B), both requiring grad.
  Estimate e = run(
      "input 8x4x4 layout=chw\nx: conv 8 1\ng: gap\ns: sigmoid\nm: mul from=x,g\nflatten\nfc 2\n");
  (void)e;
  Estimate e2 = run("input 8x4x4 layout=chw\nx: conv 8 1\ng: gap\nsc: conv 8 1 from=g\nm: mul from=x,sc\nflatten\nfc 2\n");
  // m saves x (conv output, 1,024 B, first saved here) and sc (64 B)
  CHECK(row(e2, "m").saved_bytes == 2 * 8 * 4 * 4 * 4 + 2 * 8 * 4);
  // backward: x's gradient is grad*sc (1,024 B); sc's is grad*x (1,024 B) summed to 2x8x1x1 (64 B)
  CHECK(grad_allocs(e2, "m") == 1024 + 64);
  CHECK_THROWS_WITH(run("input 8x4x4 layout=chw\nx: conv 8 1\ny: conv 4 1 from=input\nm: mul from=x,y\nflatten\nfc 2\n"),
                    Catch::Contains("layer 'm'") && Catch::Contains("do not broadcast"));
}

TEST_CASE("broadcast add: the full-shape input gets the gradient itself, the small one a sum", "[tensor]") {
  Estimate e = run("input 8x4x4 layout=chw\nx: conv 8 1\ng: gap\nb: conv 8 1 from=g\na: add from=x,b\nflatten\nfc 2\n");
  CHECK(row(e, "a").out.shape == std::vector<i64>{2, 8, 4, 4});
  CHECK(grad_allocs(e, "a") == 2 * 8 * 4);  // at::sum_to for b only
}

TEST_CASE("linear on [N, T, D] and layer_norm: what torch 1.13 saved", "[tensor]") {
  // nn.Linear(8, 16) on a contiguous [2,5,8]: saved mat1 is the input's own storage (320 B, a
  // [10,8] view) and the weight. nn.LayerNorm(8) on [2,5,8]: input (320 B), weight, bias,
  // mean and rstd [2,5,1] float32 (40 B each).
  Estimate e = run("input 5x8\nl1: fc 8\nln: layer_norm 8\nl2: fc 16\nflatten\nfc 2\n");
  CHECK(row(e, "l1").out.shape == std::vector<i64>{2, 5, 8});
  CHECK(row(e, "l1").params == 8 * 8 + 8);
  CHECK(row(e, "ln").params == 16);
  CHECK(row(e, "ln").saved_bytes == 320 + 40 + 40);  // l1's output first saved here, + mean + rstd
  CHECK(row(e, "l2").saved_bytes == 2 * 5 * 8 * 4);  // ln's output (the input of l2)
  CHECK_THROWS_WITH(run("input 5x8\nln: layer_norm 6\nflatten\nfc 2\n"), Catch::Contains("normalized_shape=6"));
}

TEST_CASE("linear on a transposed 3-d input saves a contiguous copy", "[tensor]") {
  // input.reshape(-1, D) of a [2,8,5]-transposed tensor cannot be a view: matmul folds a copy.
  Estimate e = run("input 5x8\nl0: fc 8\nt: transpose 1 2\nl1: fc 3\nflatten\nfc 2\n");
  CHECK(row(e, "l1").saved_bytes == 2 * 8 * 5 * 4);  // the copy (l0's output itself is not saved)
}

TEST_CASE("matmul q @ k^T saves views; a transposed q is copied", "[tensor]") {
  // torch 1.13: torch.matmul(q [2,3,5,4], k.transpose(-2,-1)) saved q's storage and k's storage
  // (both 480 B, as [6,5,4] and [6,4,5] views). With q = x.transpose(1, 2) the folded q is a copy.
  const char* src =
      "input 3x5x4 layout=chw\nq: fc 4\nk: fc 4 from=input\nkt: transpose 2 3 from=k\nqk: matmul from=q,kt\nflatten\nfc 2\n";
  Estimate e = run(src);
  CHECK(row(e, "qk").out.shape == std::vector<i64>{2, 3, 5, 5});
  CHECK(row(e, "qk").saved_bytes == 480 + 480);
  Estimate e2 = run(
      "input 5x3x4 layout=chw\nq0: fc 4\nq: transpose 1 2\nk: fc 4 from=input\nkt: permute 0,2,3,1 from=k\nqk: matmul from=q,kt\nflatten\nfc 2\n");
  // q: [2,3,5,4] strides (60,4,12,1): folding [2,3] is impossible -> a 480 B copy; kt [2,3,4,5]
  // strides (60,4,1,12): folding 2 and 3 is impossible too -> another 480 B copy.
  CHECK(row(e2, "qk").saved_bytes == 480 + 480);
  CHECK(e2.graph.nodes[static_cast<std::size_t>(row(e2, "qk").node)].mem.extras.size() == 2);
}

TEST_CASE("hardswish in place saves a copy of its input; stochastic depth saves only its noise", "[tensor]") {
  // torch 1.13: F.hardswish(x, inplace=True) saved a 1,024 B storage that is not the output's.
  Estimate e = run("input 8x4x4 layout=chw\nc: conv 8 1\nh: hardswish inplace\nflatten\nfc 2\n");
  CHECK(row(e, "h").saved_bytes == 1024);
  // stochastic_depth p=0.2 row mode: noise [2,1,1,1] float32 = 8 B saved (torchvision/ops/stochastic_depth.py)
  Estimate e2 = run("input 8x4x4 layout=chw\nc: conv 8 1\nsd: stochastic_depth 0.2\nflatten\nfc 2\n");
  CHECK(row(e2, "sd").saved_bytes == 8);
  Estimate e3 = run("input 8x4x4 layout=chw\nc: conv 8 1\nsd: stochastic_depth 0\nflatten\nfc 2\n");
  CHECK(row(e3, "sd").saved_bytes == 0);
  CHECK(e3.graph.nodes[static_cast<std::size_t>(row(e3, "sd").node)].mem.output == OpMemory::Output::view);
}

TEST_CASE("slice is a view whose backward allocates the input's size", "[tensor]") {
  Estimate e = run("input 8x4x4 layout=chw\nc: conv 8 1\ns: slice dim=1 start=2 end=6\nflatten\nfc 2\n");
  CHECK(row(e, "s").out.shape == std::vector<i64>{2, 4, 4, 4});
  CHECK(grad_allocs(e, "s") == 1024);
  CHECK_THROWS_WITH(run("input 8x4x4 layout=chw\ns: slice dim=1 start=6 end=2\nflatten\nfc 2\n"), Catch::Contains("empty"));
}

TEST_CASE("a saved chunk view keeps its whole storage alive (ShuffleNetV2's x2)", "[tensor]") {
  // torch 1.13, batch 2 (measured with saved_tensors_hooks, distinct storages by nbytes): 2,116 B.
  // c's output 2x8x4x4 x 4 B = 1,024 B is saved whole by c1 through the view ch:1 (512 B of it);
  // c1's output 2x4x4x4 = 512 B is not saved (cat saves nothing); mean (1.13) saves cat's output
  // 2x8x4x4 = 1,024 B; the loss saves log-probs 2x8 x 4 = 64 B + total_weight 4 B.
  // 1,024 + 1,024 + 64 + 4 = 2,116.
  Options o = opts(2);
  o.train.rules = TorchRules::v1_13;
  Estimate e = estimate(test::keep_model("input 3x4x4 layout=chw\nc: conv 8 1\nch: chunk 2\nc1: conv 4 1 from=ch:1\n"
                                         "cat: concat from=ch:0,c1\nm: mean 2,3\n"),
                        o);
  CHECK(e.total_saved_bytes == 2116);
  CHECK(row(e, "c1").saved_bytes == 1024);
}
