// Core v2 behaviour by hand: frozen parameters (requires_grad=False), conditional saving,
// gradient sums into a concat's inputs, mean over dims, in-place writes into saved tensors,
// gradient accumulation, regions, the schedule and the planned events.
#include <catch2/catch.hpp>
#include <algorithm>
#include <map>
#include <sstream>

#include "memfit/api.hpp"
#include "memfit/device.hpp"
#include "memfit/report.hpp"
#include "test_util.hpp"

using namespace memfit;
using test::row;

namespace {
Options opts(i64 batch = 4) { return test::tensor_options(batch); }
Estimate run(const std::string& src, Options o) { return estimate(test::keep_model(src), o); }
i64 count_allocs(const Estimate& e, Category c, Phase ph, int iteration) {
  i64 n = 0;
  for (const auto& ev : e.plan.events)
    if (!ev.is_free && ev.phase == ph && ev.iteration == iteration &&
        e.plan.tensors[static_cast<std::size_t>(ev.tensor)].category == c)
      ++n;
  return n;
}
i64 bytes_of(const Estimate& e, Category c, Phase ph, int iteration) {
  i64 b = 0;
  for (const auto& ev : e.plan.events)
    if (!ev.is_free && ev.phase == ph && ev.iteration == iteration &&
        e.plan.tensors[static_cast<std::size_t>(ev.tensor)].category == c)
      b += e.plan.tensors[static_cast<std::size_t>(ev.tensor)].bytes;
  return b;
}
const char* kMlp = "input 32\nfc1: fc 64\nr: relu\nfc2: fc 10\n";
}  // namespace

TEST_CASE("frozen fc1: no .grad, no Adam state, and addmm saves what it still needs", "[frozen]") {
  Options o = opts();
  o.train.optimizer = Optimizer::adam;
  o.train.freeze = {"fc1"};
  Estimate e = run(kMlp, o);
  // fc1: weight 64x32 + bias 64 = 2,112 parameters, frozen; fc2: 10x64 + 10 = 650 trainable.
  CHECK(row(e, "fc1").params == 2112);
  CHECK(row(e, "fc1").frozen_params == 2112);
  CHECK(row(e, "fc1").grad_bytes == 0);
  CHECK(row(e, "fc1").optimizer_bytes == 0);
  CHECK(row(e, "fc2").grad_bytes == 650 * 4);
  CHECK(row(e, "fc2").optimizer_bytes == 2 * 650 * 4);  // exp_avg, exp_avg_sq
  CHECK(e.total_grad_bytes == 650 * 4);
  CHECK(e.graph.n_frozen_params == 2112);
  // fc1's input (the batch) needs no grad and its weight is frozen: autograd records nothing, so
  // relu's input needs no grad either... but relu's output feeds fc2 whose weight trains.
  CHECK_FALSE(e.graph.nodes[1].requires_grad);
  CHECK(row(e, "fc1").saved.empty());
  CHECK(row(e, "r").saved.empty());  // relu on a tensor that needs no grad records nothing
  // fc2: mat1 (relu's output, 4x64 fp32) is saved because fc2.weight trains; mat2 (the weight)
  // only if mat1 needs grad, which it does not.
  REQUIRE(row(e, "fc2").saved.size() == 1);
  CHECK(row(e, "fc2").saved_bytes == 4 * 64 * 4);
  // Parameters stay on the device as parameters (not buffers): 2,762 x 4 B.
  CHECK(e.total_param_bytes == (2112 + 650) * 4);
  CHECK(e.total_buffer_bytes == 0);
}

TEST_CASE("--train keeps only the named regions trainable; globs must match", "[frozen]") {
  const char* src =
      "input 8x8x3 layout=hwc\nblock unit c\n  conv: conv $c 3x3 pad=1\n  relu\nend\n"
      "stage1: repeat 2 unit 4\nstage2: repeat 1 unit 8\nflatten\nfc: fc 10\n";
  Options o = opts();
  o.train.train = {"stage2", "fc"};
  Estimate e = run(src, o);
  // stage1.0.conv: 4*3*9+4 = 112, stage1.1.conv: 4*4*9+4 = 148 (frozen); stage2.0.conv: 8*4*9+8 = 296,
  // fc: 10*512+10 = 5,130 (trainable)
  CHECK(e.graph.n_frozen_params == 112 + 148);
  CHECK(e.total_grad_bytes == (296 + 5130) * 4);
  // The first trainable conv still saves its input (convolution saves input and weight whenever
  // it is recorded) although that input needs no grad; the frozen convs save nothing.
  CHECK(row(e, "stage1.0.conv").saved.empty());
  CHECK(row(e, "stage1.1.conv").saved.empty());
  CHECK(row(e, "stage2.0.conv").saved.size() == 2);
  // Regions come from the dotted names.
  std::map<std::string, int> depth;
  for (const auto& r : e.graph.regions) depth[r.name] = r.depth;
  CHECK(depth.at("stage1") == 0);
  CHECK(depth.at("stage1.0") == 1);
  CHECK(depth.at("stage2.0") == 1);

  Options bad = opts();
  bad.train.freeze = {"stage9"};
  CHECK_THROWS_WITH(run(src, bad), Catch::Contains("'stage9' matches no parameter"));
  Options all = opts();
  all.train.freeze = {"*"};
  CHECK_THROWS_WITH(run(src, all), Catch::Contains("every parameter is frozen"));
  OptionStrings both;
  both.freeze = "fc";
  both.train = "fc";
  CHECK_THROWS_WITH(make_options(both), Catch::Contains("both --freeze and --train"));
}

TEST_CASE("autocast casts frozen weights per call; only trainable ones are cached", "[frozen]") {
  // Under bf16 autocast, a cached cast lives until autocast exits; a frozen weight's cast is made
  // for the call and kept only if the op saves it. fc1 frozen, input needs no grad: fc1 saves
  // nothing, so its 64x32 bf16 weight cast (4,096 B) and bias cast (128 B) die with the call.
  Options o = opts();
  o.train.precision = DType::bf16;
  o.train.freeze = {"fc1"};
  Estimate e = run(kMlp, o);
  CHECK(row(e, "fc1").saved.empty());
  // Temporaries allocated in fc1's forward of iteration 2: exactly the two casts.
  i64 fc1 = row(e, "fc1").node;
  i64 n = 0, b = 0;
  for (const auto& ev : e.plan.events)
    if (!ev.is_free && ev.iteration == 2 && ev.node == fc1 && ev.phase == Phase::forward &&
        e.plan.tensors[static_cast<std::size_t>(ev.tensor)].category == Category::temporary) {
      ++n;
      b += e.plan.tensors[static_cast<std::size_t>(ev.tensor)].bytes;
    }
  CHECK(n == 2);
  CHECK(b == 64 * 32 * 2 + 64 * 2);
}

TEST_CASE("gradient sums into a concat's inputs have the input's size, not the concat's", "[concat]") {
  // x feeds both a relu and a concat (with y); backward runs in reverse creation order, so cat's
  // backward hands x a slice of its gradient first, then relu's backward a fresh gradient.
  // input_buffer.cpp: the buffered slice is not dense (can_accumulate_inplace is false), so the two
  // are summed into a new tensor of x's size. (Were relu's gradient first, the slice would be added
  // into it in place: no sum.)
  const char* src =
      "input 4x4x2 layout=hwc\nx: conv 2 1x1\ny: conv 6 1x1 from=input\n"
      "r: relu from=x\ncat: concat from=x,y\nm: concat from=cat,r\nflatten\nfc 3\n";
  Estimate e = run(src, opts(1));
  // batch 1: x is [1,2,4,4] fp32 = 128 B; cat is [1,8,4,4] = 512 B.
  const i64 x_bytes = 1 * 2 * 4 * 4 * 4, cat_bytes = 1 * 8 * 4 * 4 * 4;
  // r's backward allocates relu's gradient for x (128 B) and then the sum (128 B), nothing else.
  std::vector<i64> at_r;
  for (const auto& ev : e.plan.events)
    if (!ev.is_free && ev.iteration == 2 && ev.phase == Phase::backward && ev.node == row(e, "r").node)
      at_r.push_back(e.plan.tensors[static_cast<std::size_t>(ev.tensor)].bytes);
  CHECK(at_r == std::vector<i64>{x_bytes, x_bytes});
  CHECK(std::find(at_r.begin(), at_r.end(), cat_bytes) == at_r.end());
}

TEST_CASE("concat of one input copies (DenseNet's torch.cat([x], 1))", "[concat]") {
  Estimate e = run("input 4x4x2 layout=hwc\nc: conv 2 1x1\nk: concat from=c\nflatten\nfc 3\n", opts(1));
  CHECK(std::string(row(e, "k").output_storage) == "new");
  CHECK(row(e, "k").out.shape == std::vector<i64>{1, 2, 4, 4});
}

TEST_CASE("mean over dims: shapes, and it saves nothing in PyTorch 2 but its input in 1.13", "[mean]") {
  const char* src = "input 4x4x8 layout=hwc\nc: conv 8 1x1\nm: mean 2,3\nfc 3\n";
  Estimate e = run(src, opts(2));
  CHECK(row(e, "m").out.shape == std::vector<i64>{2, 8});
  CHECK(row(e, "m").saved.empty());
  Options v113 = opts(2);
  v113.train.rules = TorchRules::v1_13;
  Estimate old = run(src, v113);
  CHECK(row(old, "m").saved_bytes == 2 * 8 * 4 * 4 * 4);  // the conv output [2,8,4,4] float32
  Estimate keep = run("input 4x4x8 layout=hwc\nc: conv 8 1x1\nm: mean -1 keepdim=true\nflatten\nfc 3\n", opts(2));
  CHECK(row(keep, "m").out.shape == std::vector<i64>{2, 8, 4, 1});
  CHECK_THROWS_WITH(run("input 4x4x8 layout=hwc\nc: conv 8 1x1\nm: mean 0\nflatten\nfc 3\n", opts(2)),
                    Catch::Contains("not a non-batch dimension"));
}

TEST_CASE("an in-place write into a tensor saved for backward is refused, as PyTorch fails at backward", "[inplace]") {
  // relu saves its result; `add inplace` then writes into it.
  const char* bad = "input 8\na: fc 8\nr: relu\nb: fc 8 from=a\ns: add from=r,b inplace\nfc 2\n";
  CHECK_THROWS_WITH(run(bad, opts()), Catch::Contains("which 'r' saved for backward"));
  // writing into b (saved by nobody: the add's consumer is a linear that saves its own input later)
  const char* ok = "input 8\na: fc 8\nr: relu\nb: fc 8 from=a\ns: add from=b,r inplace\nfc 2\n";
  CHECK_NOTHROW(run(ok, opts()));
}

TEST_CASE("gradient accumulation: K forward/backward passes, one step; .grad accumulates in place", "[schedule]") {
  Options o1 = opts(8);
  Options o4 = opts(2);
  o4.train.grad_accumulation = 4;
  Estimate e1 = run(kMlp, o1);
  Estimate e4 = run(kMlp, o4);
  // Parameter gradients: iteration 2 allocates one gradient per parameter tensor per micro-batch
  // (4 tensors: fc1.weight, fc1.bias, fc2.weight, fc2.bias); .grad was freed by zero_grad
  // (set_to_none), so the first is stolen as .grad and the other three are added in place.
  CHECK(count_allocs(e1, Category::gradient, Phase::backward, 2) == 4);
  CHECK(count_allocs(e4, Category::gradient, Phase::backward, 2) == 4);
  // Micro-batches 2..4 allocate each parameter's gradient again and add it into .grad in place:
  // 3 x 4 such temporaries at the linear layers (the loss node's own backward temporary aside).
  i64 fc_temps = 0, fc_grads = 0;
  for (const auto& ev : e4.plan.events) {
    if (ev.is_free || ev.iteration != 2 || ev.phase != Phase::backward) continue;
    if (ev.node != row(e4, "fc1").node && ev.node != row(e4, "fc2").node) continue;
    auto c = e4.plan.tensors[static_cast<std::size_t>(ev.tensor)].category;
    fc_temps += c == Category::temporary;
    fc_grads += c == Category::gradient;
  }
  CHECK(fc_grads == 4);
  CHECK(fc_temps == 3 * 4);
  // Where activations dominate, accumulation lowers the peak: a conv on 32x32x3 at batch 64 vs 4 x 16.
  // conv output 64x16x32x32 fp32 = 4 MiB vs 1 MiB per micro-batch; parameters 448 + 163,850.
  const char* conv = "input 32x32x3 layout=hwc\nc: conv 16 3x3 pad=1\nflatten\nfc 10\n";
  Options big = opts(64), acc = opts(16);
  acc.train.grad_accumulation = 4;
  CHECK(run(conv, acc).peak_allocated_bytes < run(conv, big).peak_allocated_bytes);
  // Forward activations of one iteration, by hand: fc1 out [b,64] + relu out [b,64] + fc2 out [b,10]
  // (fp32), and in the loss phase log_softmax [b,10] + total_weight + the loss (4 B scalars per pass).
  CHECK(bytes_of(e1, Category::activation, Phase::forward, 2) == 8 * 64 * 4 * 2 + 8 * 10 * 4);
  CHECK(bytes_of(e4, Category::activation, Phase::forward, 2) == 4 * (2 * 64 * 4 * 2 + 2 * 10 * 4));
  CHECK(bytes_of(e1, Category::activation, Phase::loss, 2) == 8 * 10 * 4 + 4 + 4);
  CHECK(bytes_of(e4, Category::activation, Phase::loss, 2) == 4 * (2 * 10 * 4 + 4 + 4));
}

TEST_CASE("the schedule: setup, then per iteration zero_grad, forward, backward, step", "[schedule]") {
  Graph g = build_graph(test::keep_model(kMlp), GraphSettings{.batch = 2});
  TrainSettings t;
  t.n_iterations = 2;
  auto steps = build_schedule(g, t);
  // 1 setup + 2 x (zero_grad + begin_fwd + 4 fwd + end_fwd + begin_bwd + 4 bwd + end_bwd + step + end)
  // nodes: input, fc1, r, fc2, loss -> 4 forward and 4 backward nodes
  CHECK(steps.size() == 1 + 2 * (1 + 1 + 4 + 1 + 1 + 4 + 1 + 1 + 1));
  CHECK(steps.front().kind == Step::Kind::setup);
  CHECK(steps[1].kind == Step::Kind::zero_grad);
  CHECK(steps.back().kind == Step::Kind::end_micro_batch);
  CHECK(steps[steps.size() - 2].kind == Step::Kind::optimizer);
}

TEST_CASE("--events: the plan as text, and replaying it gives memfit's own peaks", "[events]") {
  Options o = opts(8);
  o.train.optimizer = Optimizer::adam;
  o.workspaces.reset();
  o.gpu = parse_gpu("RTX 3060 12GB");
  const Model& m = test::keep_model(kMlp);
  Estimate e = estimate(m, o);
  std::string text = events_text(e);
  // Parse the lines back into a Plan and replay it through the allocator model.
  std::istringstream in(text);
  std::string line;
  Plan replay;
  std::map<std::string, Category> cats;
  for (int c = 0; c < n_categories; ++c) cats[category_name(static_cast<Category>(c))] = static_cast<Category>(c);
  int n_alloc = 0, n_free = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream f(line);
    std::string op;
    int id = 0;
    f >> op >> id;
    if (op == "alloc") {
      i64 bytes = 0;
      std::string cat, layer, phase;
      int it = 0;
      f >> bytes >> cat >> layer >> phase >> it;
      REQUIRE(cats.count(cat));
      if (static_cast<int>(replay.tensors.size()) <= id) replay.tensors.resize(static_cast<std::size_t>(id) + 1);
      replay.tensors[static_cast<std::size_t>(id)] = {bytes, cats[cat], -1};
      replay.events.push_back({id, false, Phase::setup, static_cast<std::uint8_t>(it), -1});
      ++n_alloc;
    } else {
      REQUIRE(op == "free");
      replay.events.push_back({id, true, Phase::setup, 0, -1});
      ++n_free;
    }
  }
  CHECK(n_alloc == static_cast<int>(e.plan.tensors.size()));
  CHECK(n_alloc + n_free == static_cast<int>(e.plan.events.size()));
  SimResult s = simulate(replay, AllocatorConfig{});
  CHECK(s.peak_allocated_bytes == e.peak_allocated_bytes);
  CHECK(s.peak_reserved_bytes == e.peak_reserved_bytes);
  // The same lines in the JSON API.
  o.events = true;
  auto j = nlohmann::json::parse(estimate_json(m, o));
  REQUIRE(j["events"].is_array());
  CHECK(j["events"].size() == e.plan.events.size());
}

TEST_CASE("softmax before the cross-entropy loss is noted, with what removing it changes", "[notes]") {
  const Model& m = test::keep_model(find_builtin_model("question_cnn")->text, "models/question_cnn.memfit");
  Estimate e = estimate(m, Options{});
  std::string all;
  for (const auto& n : e.notes) all += n + "\n";
  // softmax over [64, 10] float32 saves its result: 64 x 10 x 4 = 2,560 B
  CHECK_THAT(all, Catch::Contains("'softmax1' (softmax) feeds the loss"));
  CHECK_THAT(all, Catch::Contains("its output (2,560 B, saved for backward) and its input's gradient (2,560 B)"));
  Estimate plain = estimate(test::keep_model("input 8\nfc 4\n"), Options{});
  for (const auto& n : plain.notes) CHECK_THAT(n, !Catch::Contains("feeds the loss"));
}

TEST_CASE("dropout's p must lie in [0, 1], as F.dropout requires", "[rules]") {
  CHECK_THROWS_WITH(run("input 8\nfc 8\nd: dropout p=-3\nfc 2\n", opts()), Catch::Contains("is not between 0 and 1"));
  CHECK_THROWS_WITH(run("input 8\nfc 8\nd: dropout 1.5\nfc 2\n", opts()), Catch::Contains("is not between 0 and 1"));
  CHECK_NOTHROW(run("input 8\nfc 8\nd: dropout 1\nfc 2\n", opts()));
}

TEST_CASE("a remedy keeps the effective batch with gradient accumulation", "[remedies]") {
  const Model& m = test::keep_model(find_builtin_model("question_cnn")->text, "models/question_cnn.memfit");
  Options o;
  o.train.batch = 20000;
  o.gpu = parse_gpu("RTX 3060 12GB");
  MaxBatch mb = max_batch(m, o);
  REQUIRE(mb.max_batch < 20000);
  bool found = false;
  for (const auto& r : remedies(m, o)) {
    if (r.options.train.grad_accumulation == 1) continue;
    found = true;
    // the smallest K dividing 20,000 = 2^5 x 5^4 whose micro-batch fits in the largest batch
    i64 k = 2;
    while (20000 % k != 0 || 20000 / k > mb.max_batch) ++k;
    CHECK(r.options.train.grad_accumulation == k);
    CHECK(r.options.train.batch * k == 20000);
    CHECK(r.fits);
    CHECK(r.change == "--batch " + std::to_string(20000 / k) + " --grad-accum " + std::to_string(k));
  }
  CHECK(found);
}

TEST_CASE("replaying one plan at other batch sizes gives the whole pipeline's peaks", "[schedule]") {
  // The searches and sweeps build the plan once and rescale its sizes (affine in the batch); the
  // whole pipeline at each batch is the reference.
  for (const char* name : {"question_cnn", "resnet18", "mobilenet_v2", "lenet5"}) {
    const Model& m = test::keep_model(find_builtin_model(name)->text, std::string("models/") + name + ".memfit");
    for (DType dt : {DType::f32, DType::bf16}) {
      Options o;
      o.train.precision = dt;
      o.train.optimizer = Optimizer::adam;
      BatchReplayer r(m, o);
      CHECK(r.reuses_plan());
      for (i64 b : {1, 7, 64, 333}) {
        INFO(name << " batch " << b);
        Options ob = o;
        ob.train.batch = b;
        SimResult full = run_pipeline(m, ob).sim;
        SimResult fast = r.simulate(b);
        CHECK(fast.peak_allocated_bytes == full.peak_allocated_bytes);
        CHECK(fast.peak_reserved_bytes == full.peak_reserved_bytes);
        const i64 cap = full.peak_reserved_bytes / 2;
        CHECK(r.simulate(b, cap).oom == run_pipeline(m, ob, cap).sim.oom);
      }
    }
  }
}

TEST_CASE("an op with several outputs: chunk's outputs are views, its backward one new gradient", "[multi-output]") {
  // torch.chunk(c, 2, 1): two views of c's [2,8,4,4] output, [2,4,4,4] each; a and b consume one
  // each. Forward allocates nothing at s. Backward: a and b hand s:0 and s:1 fresh gradients of
  // 2x4x4x4 x 4 B = 512 B; SplitBackward concatenates them into one new 2x8x4x4 x 4 B = 1,024 B
  // gradient for c, and the two are freed.
  const char* src =
      "input 4x4x8 layout=hwc\nc: conv 8 1x1\ns: chunk 2\na: conv 4 1x1 from=s:0\nb: conv 4 1x1 from=s:1\n"
      "k: add from=a,b\nflatten\nfc 3\n";
  Estimate e = run(src, opts(2));
  const Node& s = e.graph.nodes[static_cast<std::size_t>(row(e, "s").node)];
  REQUIRE(s.n_outputs() == 2);
  CHECK(s.out_type(1).shape == std::vector<i64>{2, 4, 4, 4});
  std::vector<i64> fwd, bwd;
  i64 freed_at_s = 0;
  for (const auto& ev : e.plan.events) {
    if (ev.iteration != 2 || ev.node != row(e, "s").node) continue;
    if (ev.is_free) {
      if (ev.phase == Phase::backward) ++freed_at_s;
      continue;
    }
    (ev.phase == Phase::forward ? fwd : bwd).push_back(e.plan.tensors[static_cast<std::size_t>(ev.tensor)].bytes);
  }
  CHECK(fwd.empty());
  CHECK(bwd == std::vector<i64>{1024});
  CHECK(freed_at_s == 2);  // the two output gradients
  // torch.chunk(x, 3) of 8 channels: ceil(8/3) = 3, so 3 + 3 + 2
  Estimate three = run("input 4x4x8 layout=hwc\nc: conv 8 1x1\ns: chunk 3\nx: add from=s:0,s:1\nflatten\nfc 3\n", opts(2));
  const Node& t = three.graph.nodes[static_cast<std::size_t>(row(three, "s").node)];
  REQUIRE(t.n_outputs() == 3);
  CHECK(t.out_type(2).shape == std::vector<i64>{2, 2, 4, 4});
  CHECK_THROWS_WITH(run("input 4x4x8 layout=hwc\nc: conv 8 1x1\ns: chunk 2\nx: relu from=s:2\nflatten\nfc 3\n", opts(2)),
                    Catch::Contains("'s' has 2 outputs, so 's:2' does not exist"));
}

TEST_CASE("a tensor too large for the allocator model is refused with its layer and line", "[limits]") {
  // 36,028,797,018,960,000 x 64 x 4 B = 9,223,372,036,853,760,000 B: within 2 MiB of 2^63.
  const Model& m = test::keep_model("input 36028797018960000\nrelu\n");
  CHECK_THROWS_WITH(estimate(m, Options{}), Catch::Contains("t.memfit:1:1: layer 'input'") && Catch::Contains("overflows"));
}

TEST_CASE("a sweep is bounded before the work", "[limits]") {
  // (100,001 layers + the loss) x 3 iterations = 300,006 steps a point; x 24 = 7,200,144 > 6,000,000;
  // 6,000,000 / 300,006 = 19.99: at most 19 points
  std::string big = "input 4\n";
  for (int i = 0; i < 100000; ++i) big += "relu\n";
  const Model& m = test::keep_model(big);
  CHECK_THROWS_WITH(batch_sweep_json(m, Options{}, 64, 24), Catch::Contains("ask for at most 19 points"));
}

TEST_CASE("the largest-batch search refuses models beyond its size limit, before the work", "[limits]") {
  std::string big = "input 4\n";
  for (i64 i = 0; i < kMaxSearchLayers; ++i) big += "relu\n";  // 50,001 layers with the input
  const Model& m = test::keep_model(big);
  Options o;
  o.gpu = parse_gpu("8GiB");
  CHECK_THROWS_WITH(max_batch(m, o), Catch::Contains("up to 50,000 layers; this one has 50,001"));
}

TEST_CASE("review finds: chunk bounds, in-place writes into chunk views, no copy when autograd records nothing", "[multi-output]") {
  CHECK_THROWS_WITH(run("input 8\nc: chunk 9223372036854775807\nfc 2 from=c:0\n", opts()), Catch::Contains("must be from 1 to 4096"));
  // PyTorch: "Output 0 of SplitBackward0 is a view and is being modified inplace ... returns multiple views"
  CHECK_THROWS_WITH(run("input 8\nf: fc 8\nc: chunk 2\nx: relu from=c:1 inplace\nfc 2\n", opts()),
                    Catch::Contains("one of the views 'c' returns"));
  // relu6_ on a tensor that needs no grad (the batch itself): not recorded, so no copy of self
  Estimate e = run("input 4x4x3 layout=hwc\nr: relu6 inplace\nc: conv 4 1x1\nflatten\nfc 2\n", opts(2));
  for (const auto& ev : e.plan.events)
    if (!ev.is_free && ev.node == row(e, "r").node) FAIL("relu6_ without autograd allocated " << e.plan.tensors[static_cast<std::size_t>(ev.tensor)].bytes << " B");
}

TEST_CASE("add under autocast: promoted in the kernel, no input copies; the gradient cast back per input", "[autocast]") {
  // bf16 autocast: f is bfloat16 [4,64] (linear), sm float32 [4,64] (softmax runs in fp32).
  // s = f + sm: float32 [4,64] = 1,024 B, and no float32 copy of f (PyTorch's add is in no autocast list).
  Options o = opts(4);
  o.train.precision = DType::bf16;
  Estimate e = run("input 64\nf: fc 64\nsm: softmax from=f\ns: add from=f,sm\nfc 2\n", o);
  CHECK(row(e, "s").out.dtype == DType::f32);
  std::vector<i64> fwd, bwd;
  for (const auto& ev : e.plan.events) {
    if (ev.is_free || ev.iteration != 2 || ev.node != row(e, "s").node) continue;
    (ev.phase == Phase::forward ? fwd : bwd).push_back(e.plan.tensors[static_cast<std::size_t>(ev.tensor)].bytes);
  }
  CHECK(fwd == std::vector<i64>{4 * 64 * 4});  // the output only
  // backward: sm (float32) gets the gradient itself; f (bfloat16) a cast of it, 4 x 64 x 2 B = 512 B
  CHECK(bwd == std::vector<i64>{4 * 64 * 2});
}

namespace {
// Bytes the node `name` allocates in the steady-state iteration, forward and backward, in event order.
std::pair<std::vector<i64>, std::vector<i64>> node_allocs(const Estimate& e, const std::string& name) {
  std::vector<i64> fwd, bwd;
  for (const auto& ev : e.plan.events) {
    if (ev.is_free || ev.iteration != 2 || ev.node != row(e, name).node) continue;
    (ev.phase == Phase::backward ? bwd : fwd).push_back(e.plan.tensors[static_cast<std::size_t>(ev.tensor)].bytes);
  }
  return {fwd, bwd};
}
}  // namespace

TEST_CASE("softmax's float32 result: bfloat16 is converted first, float16 goes to half_to_float uncopied", "[autocast]") {
  // autocast_mode.h AT_FORALL_FP32_SET_OPT_DTYPE calls softmax(x, dim, dtype=float32); SoftMax.cpp then
  // `if (input_.is_cuda() && input_.scalar_type() == ScalarType::Half && dtype == ScalarType::Float)
  //  return at::_softmax(input_, dim_, true); else converted = input_.toType(dtype.value())`.
  // f is [4, 64] from the linear (autocast's dtype); softmax's result is float32 4 x 64 x 4 B = 1,024 B.
  const char* model = "input 64\nf: fc 64\nsm: softmax from=f\nfc 2\n";
  Options o = opts(4);
  o.train.precision = DType::bf16;
  Estimate bf = run(model, o);
  CHECK(row(bf, "sm").out.dtype == DType::f32);
  auto [bf_fwd, bf_bwd] = node_allocs(bf, "sm");
  CHECK(bf_fwd == std::vector<i64>{1024, 1024});  // the float32 copy of f (toType), then the result
  CHECK(bf_bwd == std::vector<i64>{1024, 512});   // the float32 gradient, then ToCopyBackward's bfloat16 one
  o.train.precision = DType::f16;
  Estimate h = run(model, o);
  CHECK(row(h, "sm").out.dtype == DType::f32);
  auto [h_fwd, h_bwd] = node_allocs(h, "sm");
  CHECK(h_fwd == std::vector<i64>{1024});  // the result only: the kernel reads the float16 input
  CHECK(h_bwd == std::vector<i64>{512});   // _softmax_backward_data(..., input_dtype=Half): a float16 gradient
}

TEST_CASE("LlamaAttention's softmax(..., dtype=torch.float32).to(query.dtype) in a bfloat16 model", "[autocast]") {
  // eager_attention_forward: softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype).
  // model.to(torch.bfloat16): f is bfloat16 [4, 64] (512 B). softmax converts it (float32 copy, 1,024 B) and
  // saves its float32 result (1,024 B); `to dtype=compute` makes the bfloat16 copy (512 B) the next
  // matmul sees. In float32 both are no-ops: the result only (1,024 B), and `to` is the tensor itself.
  const char* model = "input 64\nf: fc 64\nsm: softmax from=f dim=1 dtype=float32\nt: to dtype=compute\nfc 2\n";
  Options o = opts(4);
  o.train.param_dtype = DType::bf16;
  Estimate e = run(model, o);
  CHECK(row(e, "sm").out.dtype == DType::f32);
  CHECK(row(e, "t").out.dtype == DType::bf16);
  CHECK(node_allocs(e, "sm").first == std::vector<i64>{1024, 1024});
  CHECK(node_allocs(e, "t").first == std::vector<i64>{512});
  Estimate f32 = run(model, opts(4));
  CHECK(node_allocs(f32, "sm").first == std::vector<i64>{1024});
  CHECK(node_allocs(f32, "t").first.empty());
  CHECK(row(f32, "t").out.dtype == DType::f32);
  // a dtype memfit does not know is an error that names the layer
  CHECK_THROWS_WITH(run("input 64\nf: fc 64\nsm: softmax from=f dtype=float8\nfc 2\n", opts(4)),
                    Catch::Contains("dtype='float8'"));
}

TEST_CASE("gelu_new under autocast: pow's float32 copy and a float32 expression (autocast_mode.h lists)", "[autocast][transformer]") {
  // transformers NewGELUActivation: 0.5 * x * (1.0 + tanh(sqrt(2/pi) * (x + 0.044715 * pow(x, 3.0)))).
  // bf16 autocast: x is the linear's bfloat16 [4, 64] (256 elements). pow.Tensor_Scalar is in
  // AT_FORALL_FP32: it casts x to float32 and saves that copy (1,024 B); x + ... promotes to float32,
  // tanh (in no list) saves its float32 result (1,024 B); 0.5 * x stays bfloat16 (512 B); 1 + tanh is
  // float32 (1,024 B); the last mul (bf16 * f32) gives a float32 result. Saved: 3,584 B.
  Options o = opts(4);
  o.train.precision = DType::bf16;
  Estimate e = run("input 16\nf: fc 64\ng: gelu_new\nfc 2\n", o);
  CHECK(row(e, "g").out.dtype == DType::f32);
  CHECK(row(e, "g").saved_bytes == 1024 + 1024 + 512 + 1024);
  // without autocast, bf16-true: everything in bfloat16, x itself saved: 4 x 512 B
  Options t = opts(4);
  t.train.param_dtype = DType::bf16;
  Estimate b = run("input 16\nf: fc 64\ng: gelu_new\nfc 2\n", t);
  CHECK(row(b, "g").out.dtype == DType::bf16);
  CHECK(row(b, "g").saved_bytes == 4 * 512);
}

TEST_CASE("cross_entropy under CUDA autocast: log_softmax in the logits' dtype, nll_loss's float32 copy", "[autocast]") {
  // LossNLL.cpp cross_entropy_loss_symint: nll_loss_nd(at::log_softmax(self, class_dim, self.scalar_type()), ...).
  // CUDA autocast has no cross_entropy_loss entry (only KERNEL_CPU/XLA/XPU), so the composite runs: the
  // explicit dtype survives set_opt_dtype (a float16 log_softmax, saved as its result), and nll_loss
  // (AT_FORALL_FP32) casts it to float32 and saves that copy as self. Logits float16 [4, 10]:
  // 4 x 10 x 2 B = 80 B + 4 x 10 x 4 B = 160 B + total_weight (float32, 0-d) 4 B; the target is the loop's.
  Options o = opts(4);
  o.train.precision = DType::f16;
  Estimate e = run("input 16\nfc 10\n", o);
  CHECK(row(e, "loss").saved_bytes == 80 + 160 + 4);
  CHECK(row(e, "loss").out.dtype == DType::f32);
  auto [fwd, bwd] = node_allocs(e, "loss");
  // backward's seed (ones_like(loss), float32 0-d), nll_loss_backward (float32), ToCopyBackward, the input grad
  CHECK(bwd == std::vector<i64>{4, 160, 80, 80});
  // float32 logits: one float32 log_softmax result, 160 B + 4 B
  Estimate f = run("input 16\nfc 10\n", opts(4));
  CHECK(row(f, "loss").saved_bytes == 160 + 4);
}
