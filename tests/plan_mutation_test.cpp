// Tests written to catch two planner mutations that every other test let through:
//  (a) the cuBLAS/cuBLASLt workspaces removed from the plan;
//  (b) gradients never accumulated in place in autograd's input buffers.
// Every expected number is derived by hand below from the cited PyTorch source; none is taken from
// a run of memfit.
#include <catch2/catch.hpp>

#include "memfit/api.hpp"
#include "memfit/device.hpp"
#include "memfit/estimate.hpp"
#include "test_util.hpp"

using namespace memfit;

namespace {

struct WorkspaceAlloc {
  i64 bytes;
  Phase phase;
  int iteration;
  std::string layer;
  bool freed;
};

std::vector<WorkspaceAlloc> workspace_allocs(const Estimate& e) {
  std::vector<bool> freed(e.plan.tensors.size(), false);
  for (const auto& ev : e.plan.events)
    if (ev.is_free) freed[static_cast<std::size_t>(ev.tensor)] = true;
  std::vector<WorkspaceAlloc> out;
  for (const auto& ev : e.plan.events) {
    if (ev.is_free || e.plan.tensors[static_cast<std::size_t>(ev.tensor)].category != Category::workspace) continue;
    out.push_back({e.plan.tensors[static_cast<std::size_t>(ev.tensor)].bytes, ev.phase, ev.iteration,
                   ev.node >= 0 ? e.graph.nodes[static_cast<std::size_t>(ev.node)].layer->name : "-",
                   freed[static_cast<std::size_t>(ev.tensor)]});
  }
  return out;
}

// Default sizes, by hand from aten/src/ATen/cuda/CublasHandlePool.cpp (docs/pytorch-behaviour.md
// section 5): parseChosenWorkspaceSize's default ":4096:2:16:8" is 4096 KiB x 2 + 16 KiB x 8
// = 8,388,608 + 131,072 = 8,519,680 B, and 4096 KiB x 8 = 33,554,432 B on sm_90 (H100);
// CUBLASLT_WORKSPACE_SIZE defaults to 1024 KiB = 1,048,576 B.
constexpr i64 kCublas = 8519680;
constexpr i64 kCublasSm90 = 33554432;
constexpr i64 kCublasLt = 1048576;

}  // namespace

TEST_CASE("cuBLAS workspaces: one per thread that runs a matmul, kept by the handle pool", "[mutation][workspace]") {
  // question_cnn (models/question_cnn.memfit): conv1, pool1, conv2, pool2, flatten, fc1 (bias),
  // fc2 (bias), softmax, loss. CublasHandlePool.cpp keys a workspace by (handle, stream) and handles
  // are thread-local (docs/pytorch-behaviour.md section 5), so:
  //  * forward thread, first matmul = fc1: addmm with a 1-d bias takes the cuBLASLt path, which
  //    gets the cuBLAS handle's workspace (8,519,680 B) and its own Lt workspace (1,048,576 B);
  //  * autograd's backward thread, first matmul = fc2's backward (mm, no Lt): a second cuBLAS
  //    workspace, 8,519,680 B;
  //  * nothing more: later iterations reuse the handles; the pool never frees them.
  Model m = parse_model(find_builtin_model("question_cnn")->text, "models/question_cnn.memfit");
  Options o;
  o.train.batch = 64;
  Estimate e = estimate(m, o);
  auto ws = workspace_allocs(e);
  REQUIRE(ws.size() == 3);
  CHECK(ws[0].bytes == kCublas);
  CHECK(ws[0].phase == Phase::forward);
  CHECK(ws[0].layer == "fc1");
  CHECK(ws[1].bytes == kCublasLt);
  CHECK(ws[1].layer == "fc1");
  CHECK(ws[2].bytes == kCublas);
  CHECK(ws[2].phase == Phase::backward);
  CHECK(ws[2].layer == "fc2");
  for (const auto& w : ws) {
    CHECK(w.iteration == 1);
    CHECK_FALSE(w.freed);
  }
  CHECK(e.workspace_bytes == 2 * kCublas + kCublasLt);  // 18,087,936 B
  // The peak is in the first backward step at pool2 (README), after fc2's backward: all three are
  // live. Their blocks are exactly their sizes: both sizes are multiples of 512; 8,519,680 B goes to
  // a 20 MiB large-pool segment and the 12,451,840 B rest (> 1 MiB) is split off; 1 MiB is a
  // small-pool request in a 2 MiB segment, the rest split off (CUDACachingAllocator.cpp, section 1).
  CHECK(e.peak_phase == Phase::backward);
  CHECK(e.sim.peak_breakdown[static_cast<std::size_t>(Category::workspace)] == 2 * kCublas + kCublasLt);

  // Mixed precision and a stateful optimizer change neither the threads nor the first matmuls.
  {
    Options b = o;
    b.train.precision = DType::bf16;
    b.train.optimizer = Optimizer::adam;
    Estimate eb = estimate(m, b);
    CHECK(workspace_allocs(eb).size() == 3);
    CHECK(eb.workspace_bytes == 2 * kCublas + kCublasLt);
  }

  // On an H100 (sm_90) the cuBLAS workspace is 4096 KiB x 8.
  o.gpu = parse_gpu("H100 80GB");
  REQUIRE(o.gpu->cc_major == 9);
  REQUIRE(o.gpu->cc_minor == 0);
  Estimate h = estimate(m, o);
  CHECK(h.workspace_bytes == 2 * kCublasSm90 + kCublasLt);  // 68,157,440 B
  CHECK(workspace_allocs(h).size() == 3);
}

TEST_CASE("cuBLAS workspaces: bias-free linear layers, an MLP fixture and a model without matmuls",
          "[mutation][workspace]") {
  // Linear layers without bias lower to mm (no cuBLASLt): one cuBLAS workspace per thread.
  {
    Model m = test::keep_model("input 12\nfc1: fc 8 bias=false\nfc2: fc 3 bias=false\n", "nobias.memfit");
    Estimate e = estimate(m, Options{});
    auto ws = workspace_allocs(e);
    REQUIRE(ws.size() == 2);
    CHECK(ws[0].bytes == kCublas);
    CHECK(ws[0].layer == "fc1");  // forward thread
    CHECK(ws[1].bytes == kCublas);
    CHECK(ws[1].layer == "fc2");  // backward thread: fc2's backward runs first
    CHECK(ws[1].phase == Phase::backward);
    CHECK(e.workspace_bytes == 2 * kCublas);  // 17,039,360 B
  }
  // tests/reference/fixtures/tiny_mlp.json: linear 64 (bias) -> relu -> dropout -> linear 3 (no
  // bias). Forward: fc with bias first (cuBLAS + cuBLASLt); backward: the bias-free one (cuBLAS).
  {
    auto doc = test::load_reference("tests/reference/fixtures/tiny_mlp.json");
    Model m = test::keep_model(doc.dump(), "tiny_mlp.json");
    Estimate e = estimate(m, Options{});
    auto ws = workspace_allocs(e);
    REQUIRE(ws.size() == 3);
    CHECK(ws[0].bytes + ws[1].bytes == kCublas + kCublasLt);
    CHECK(ws[2].bytes == kCublas);
    CHECK(e.workspace_bytes == 2 * kCublas + kCublasLt);
  }
  // No linear layer, no cuBLAS call (convolutions go to cuDNN): no workspace.
  {
    Model m = test::keep_model("input 3x8x8 layout=chw\nconv 4 3x3 pad=1\nconv 10 1x1\ngap\nflatten\n", "convonly.memfit");
    Estimate e = estimate(m, Options{});
    CHECK(workspace_allocs(e).empty());
    CHECK(e.workspace_bytes == 0);
  }
  // The sizes come from the options: zero means none (the CPU reference tests rely on this).
  {
    Model m = parse_model(find_builtin_model("question_cnn")->text, "models/question_cnn.memfit");
    Options o;
    o.workspaces = Workspaces{};
    CHECK(workspace_allocs(estimate(m, o)).empty());
  }
}

namespace {

// Gradient buffers: the activation_grad allocations of each iteration's backward phase.
struct GradAllocs {
  int count = 0;
  i64 bytes = 0;
};
std::vector<GradAllocs> activation_grad_allocs(const Estimate& e) {
  std::vector<GradAllocs> per(static_cast<std::size_t>(e.options.train.n_iterations) + 1);
  for (const auto& ev : e.plan.events) {
    const PlanTensor& t = e.plan.tensors[static_cast<std::size_t>(ev.tensor)];
    if (ev.is_free || t.category != Category::activation_grad) continue;
    REQUIRE(ev.phase == Phase::backward);
    ++per[ev.iteration].count;
    per[ev.iteration].bytes += t.bytes;
  }
  return per;
}

}  // namespace

TEST_CASE("gradient accumulation: a second gradient is added in place into a sole buffer", "[mutation][accumulate]") {
  // Two branches of fc1 joined by add. Nodes: 0 input [8,16], 1 fc1 [8,16], 2 a [8,16], 3 b [8,16],
  // 4 sum [8,16], 5 out [8,4], 6 loss (nn.CrossEntropyLoss appended). Batch 8, float32, SGD.
  // Backward runs nodes in reverse creation order; activation_grad allocations:
  //  * loss.backward(): torch.ones_like(loss), a 0-dim float32              4 B
  //  * loss: d out ([8,4] float32; the nll_loss grad before it is a temporary) 8*4*4  = 128 B
  //  * out (linear): d sum, mm(grad, weight)                                 8*16*4 = 512 B
  //  * sum (add): no allocation; AddBackward hands the same gradient to a and b
  //  * b (linear): d fc1 = 512 B, the first gradient for fc1: kept as its input buffer
  //  * a (linear): d fc1 = 512 B, the second one. torch/csrc/autograd/input_buffer.cpp: the buffer
  //    holds the only reference to b's gradient, so a's is added into it in place (buffer.add_) and
  //    freed; no new tensor. (Without that: a third 512 B tensor old + new.)
  //  * fc1: its input (the batch) needs no gradient; only weight/bias gradients (category gradient)
  // Total per iteration: 5 allocations, 4 + 128 + 512 + 512 + 512 = 1,668 B.
  Model m = test::keep_model(
      "input 16\nfc1: fc 16\na: fc 16 from=fc1\nb: fc 16 from=fc1\nsum: add from=a,b\nout: fc 4 from=sum\n",
      "branches.memfit");
  Options o;
  o.train.batch = 8;
  Estimate e = estimate(m, o);
  REQUIRE(e.graph.nodes.size() == 7);
  auto per = activation_grad_allocs(e);
  for (int it = 1; it <= 3; ++it) {
    INFO("iteration " << it);
    CHECK(per[static_cast<std::size_t>(it)].count == 5);
    CHECK(per[static_cast<std::size_t>(it)].bytes == 1668);
  }
  // The in-place add also means fc1's buffer is b's gradient itself: the 512 B tensor allocated at
  // node b is the one freed at node fc1 (when fc1's backward has run).
  int b_grad = -1;
  for (const auto& ev : e.plan.events)
    if (ev.iteration == 1 && !ev.is_free && ev.node == 3 &&
        e.plan.tensors[static_cast<std::size_t>(ev.tensor)].category == Category::activation_grad)
      b_grad = ev.tensor;
  REQUIRE(b_grad >= 0);
  int freed_at = -2;
  for (const auto& ev : e.plan.events)
    if (ev.is_free && ev.tensor == b_grad) freed_at = ev.node;
  CHECK(freed_at == 1);
}

TEST_CASE("gradient accumulation: a shared buffer is summed into a new tensor", "[mutation][accumulate]") {
  // The other branch of input_buffer.cpp: add(fc1, fc1). AddBackward returns the same gradient g
  // for both inputs; the second arrives while fc1's buffer (g) is also referenced by the other
  // output slot, so it is not the only reference: old + new goes into a new tensor.
  // Nodes: 0 input [8,16], 1 fc1 [8,16], 2 sum [8,16], 3 out [8,4], 4 loss. activation_grad:
  //  4 B (ones_like) + 128 B (d out) + 512 B (d sum) + 512 B (g + g for fc1) = 4 allocations, 1,156 B.
  Model m = test::keep_model("input 16\nfc1: fc 16\nsum: add from=fc1,fc1\nout: fc 4 from=sum\n", "twice.memfit");
  Options o;
  o.train.batch = 8;
  Estimate e = estimate(m, o);
  auto per = activation_grad_allocs(e);
  for (int it = 1; it <= 3; ++it) {
    INFO("iteration " << it);
    CHECK(per[static_cast<std::size_t>(it)].count == 4);
    CHECK(per[static_cast<std::size_t>(it)].bytes == 1156);
  }
}

TEST_CASE("gradient accumulation: a torchvision residual block accumulates in place", "[mutation][accumulate]") {
  // A basic block as torchvision writes it (out += identity), on [2,4,4,4] float32 tensors
  // (128 elements, 512 B each): 0 input, 1 conv0, 2 relu0 (in place), 3 conv1, 4 bn1, 5 relu1
  // (in place), 6 conv2, 7 bn2, 8 add (in place into bn2's output, from=bn2,relu0), 9 relu2 (in
  // place), 10 gap [2,4,1,1], 11 flatten [2,4], 12 fc [2,3], 13 loss.
  // activation_grad allocations in backward, in order:
  //  ones_like 4 B; loss -> d fc 2*3*4 = 24 B; fc -> d flatten 2*4*4 = 32 B (flatten: a view, none);
  //  gap -> d relu2 512 B; relu2 (threshold_backward) -> d add 512 B; add: hands it to bn2 and relu0;
  //  bn2 -> d conv2 512 B; conv2 -> d relu1 512 B; relu1 -> d bn1 512 B; bn1 -> d conv1 512 B;
  //  conv1 -> d relu0 512 B: relu0's buffer already holds the add's gradient, whose other holder
  //  (bn2's buffer) was released when bn2 ran: the only reference, so added in place, no tensor;
  //  relu0 -> d conv0 512 B; conv0: its input needs no gradient.
  // Total: 3 small (4 + 24 + 32 = 60 B) + 8 x 512 B = 11 allocations, 4,156 B.
  Model m = test::keep_model(
      "input 4x4x4 layout=chw\nconv0: conv 4 3x3 pad=1\nrelu0: relu inplace\nconv1: conv 4 3x3 pad=1 bias=false\n"
      "bn1: bn\nrelu1: relu inplace\nconv2: conv 4 3x3 pad=1 bias=false\nbn2: bn\n"
      "add: add from=bn2,relu0 inplace\nrelu2: relu inplace\ngap\nflatten\nfc 3\n",
      "block.memfit");
  Options o;
  o.train.batch = 2;
  Estimate e = estimate(m, o);
  REQUIRE(e.graph.nodes.size() == 14);
  auto per = activation_grad_allocs(e);
  for (int it = 1; it <= 3; ++it) {
    INFO("iteration " << it);
    CHECK(per[static_cast<std::size_t>(it)].count == 11);
    CHECK(per[static_cast<std::size_t>(it)].bytes == 4156);
  }
}
