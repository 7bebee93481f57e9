// The kinds ViT's embeddings need, by hand: `parameter` (an nn.Parameter used as an operand: no
// forward bytes, parameter bytes, its incoming gradient becomes .grad) and `expand` (a stride-0
// view whose backward sums to the input's shape), with concat and a broadcast add around them as
// in ViTEmbeddings; then vit-base-patch16-224 itself in fp32, bf16 autocast and with LoRA.
// The PyTorch facts quoted were measured with torch 1.13 on the CPU (data_ptr / storage sizes of
// .grad after backward) or are cited from its source; the byte counts are worked out in the test.
#include <catch2/catch.hpp>

#include "memfit/api.hpp"
#include "memfit/ops.hpp"
#include "memfit/report.hpp"
#include "test_util.hpp"

using namespace memfit;
using test::row;

namespace {

Options opts(i64 batch) { return test::tensor_options(batch); }

// ViTEmbeddings in small: N x 4 tokens of 8, a [1, 1, 8] cls token expanded and put in front, a
// [1, 5, 8] position parameter added, then a classifier on the flattened tokens.
const char* kEmbeddings =
    "input 4x8\n"
    "cls: parameter 1x1x8\n"
    "e: expand 1x8\n"
    "c: concat dim=1 from=e,input\n"
    "pos: parameter 1x5x8\n"
    "a: add from=c,pos\n"
    "f: flatten\n"
    "fc: linear 3\n";

int node_of(const Estimate& e, const std::string& layer) { return row(e, layer).node; }

// Bytes allocated by one node in a phase of iteration `it` (every category).
i64 allocated(const Estimate& e, const std::string& layer, Phase phase, int it = 1) {
  const int node = node_of(e, layer);
  i64 b = 0;
  for (const auto& ev : e.plan.events)
    if (!ev.is_free && ev.phase == phase && ev.iteration == it && ev.node == node)
      b += e.plan.tensors[static_cast<std::size_t>(ev.tensor)].bytes;
  return b;
}

// The tensors one node allocated in a phase of iteration `it`.
std::vector<int> tensors_of(const Estimate& e, const std::string& layer, Phase phase, int it = 1) {
  const int node = node_of(e, layer);
  std::vector<int> out;
  for (const auto& ev : e.plan.events)
    if (!ev.is_free && ev.phase == phase && ev.iteration == it && ev.node == node) out.push_back(ev.tensor);
  return out;
}

// The phase and iteration where tensor t is freed (setup/0 if never).
std::pair<Phase, int> freed(const Estimate& e, int t) {
  for (const auto& ev : e.plan.events)
    if (ev.is_free && ev.tensor == t) return {ev.phase, ev.iteration};
  return {Phase::setup, 0};
}

}  // namespace

TEST_CASE("parameter and expand: no forward bytes, parameter bytes, the gradient becomes .grad", "[vit][parameter]") {
  const Estimate e = estimate(test::keep_model(kEmbeddings), opts(2));
  // parameters: cls 1*1*8 = 8, pos 1*5*8 = 40, fc 40*3 + 3 = 123
  CHECK(row(e, "cls").params == 8);
  CHECK(row(e, "cls").param_bytes == 8 * 4);
  CHECK(row(e, "pos").params == 40);
  CHECK(e.total_params == 8 + 40 + 123);
  CHECK(e.total_grad_bytes == (8 + 40 + 123) * 4);
  CHECK(std::string(row(e, "cls").output_storage) == "parameter");
  CHECK(std::string(row(e, "e").output_storage) == "view");
  // the expanded view: [2, 1, 8] with stride 0 on the batch (TensorShape.cpp inferExpandGeometry)
  const Node& en = e.graph.nodes[static_cast<std::size_t>(node_of(e, "e"))];
  CHECK(en.shape.out.shape == std::vector<i64>{2, 1, 8});
  CHECK(en.shape.out.strides == std::vector<i64>{0, 8, 1});
  CHECK(e.graph.nodes[static_cast<std::size_t>(node_of(e, "a"))].shape.out.shape == std::vector<i64>{2, 5, 8});
  // forward: the parameter and the view allocate nothing; cat and add one [2, 5, 8] tensor each
  CHECK(allocated(e, "cls", Phase::forward) == 0);
  CHECK(allocated(e, "pos", Phase::forward) == 0);
  CHECK(allocated(e, "e", Phase::forward) == 0);
  CHECK(allocated(e, "c", Phase::forward) == 2 * 5 * 8 * 4);
  CHECK(allocated(e, "a", Phase::forward) == 2 * 5 * 8 * 4);
  // expand, cat and add save nothing; fc saves its input (the add's output through the flatten view)
  CHECK(row(e, "e").saved_bytes == 0);
  CHECK(row(e, "c").saved_bytes == 0);
  CHECK(row(e, "a").saved_bytes == 0);
  CHECK(row(e, "fc").saved_bytes == 2 * 5 * 8 * 4);
  // backward: add hands `c` its gradient and sums pos's to [1, 5, 8] (validate_outputs at::sum_to):
  // 160 B; expand's sum_to to [1, 1, 8]: 32 B; the parameters' AccumulateGrad steals both (the only
  // reference, contiguous): nothing allocated at cls or pos
  CHECK(allocated(e, "a", Phase::backward) == 1 * 5 * 8 * 4);
  CHECK(allocated(e, "e", Phase::backward) == 1 * 1 * 8 * 4);
  CHECK(allocated(e, "cls", Phase::backward) == 0);
  CHECK(allocated(e, "pos", Phase::backward) == 0);
  CHECK(e.plan.node_grad_bytes[static_cast<std::size_t>(node_of(e, "cls"))] == 8 * 4);
  CHECK(e.plan.node_grad_bytes[static_cast<std::size_t>(node_of(e, "pos"))] == 40 * 4);
  // the 32-B sum_to buffer is cls.grad: kept through the step, freed by the next zero_grad(set_to_none)
  const std::vector<int> sum_to = tensors_of(e, "e", Phase::backward);
  REQUIRE(sum_to.size() == 1);
  CHECK(e.plan.tensors[static_cast<std::size_t>(sum_to[0])].category == Category::gradient);
  CHECK(freed(e, sum_to[0]) == std::pair<Phase, int>{Phase::zero_grad, 2});
}

TEST_CASE("parameter at batch 1: a shared gradient is cloned, a dense slice is stolen", "[vit][parameter]") {
  // torch 1.13 CPU, this model at N = 1 (cls [1,1,8] expanded, cat, + pos [1,5,8], flatten @ w):
  // cls.grad has strides (40, 8, 1) in a 160-B storage (a view of cat's gradient: stolen), pos.grad
  // its own 160-B storage (AddBackward0 hands the same tensor to cat and to pos: use_count 2, cloned).
  const Estimate e = estimate(test::keep_model(kEmbeddings), opts(1));
  // nothing is broadcast: add passes its gradient to both inputs, expand's sum_to returns it
  CHECK(allocated(e, "a", Phase::backward) == 0);
  CHECK(allocated(e, "e", Phase::backward) == 0);
  CHECK(allocated(e, "pos", Phase::backward) == 1 * 5 * 8 * 4);  // clone_obey_contract
  CHECK(allocated(e, "cls", Phase::backward) == 0);              // the slice itself
  // fc's input gradient [1, 5, 8] = 160 B is that storage: alive as cls.grad until the next zero_grad
  const std::vector<int> fc_grads = tensors_of(e, "fc", Phase::backward);
  int kept = -1;
  for (int t : fc_grads)
    if (e.plan.tensors[static_cast<std::size_t>(t)].bytes == 1 * 5 * 8 * 4) kept = t;
  REQUIRE(kept >= 0);
  CHECK(freed(e, kept) == std::pair<Phase, int>{Phase::zero_grad, 2});
}

TEST_CASE("parameter: frozen, accumulated into, refused in place, read from text and JSON", "[vit][parameter]") {
  SECTION("--freeze cls: no .grad, and expand records no backward") {
    Options o = opts(2);
    o.train.freeze = {"cls"};
    const Estimate e = estimate(test::keep_model(kEmbeddings), o);
    CHECK(e.graph.n_frozen_params == 8);
    CHECK(row(e, "cls").frozen_params == 8);
    CHECK(e.total_grad_bytes == (40 + 123) * 4);
    CHECK_FALSE(e.graph.nodes[static_cast<std::size_t>(node_of(e, "e"))].requires_grad);
    CHECK(allocated(e, "e", Phase::backward) == 0);
  }
  SECTION("zero_grad(set_to_none=False): the next gradient is added into .grad in place") {
    Options o = opts(2);
    o.train.set_to_none = false;
    const Estimate e = estimate(test::keep_model(kEmbeddings), o);
    // iteration 2: expand's 32-B sum_to is made again, added into cls.grad and released in backward
    const std::vector<int> sum_to = tensors_of(e, "e", Phase::backward, 2);
    REQUIRE(sum_to.size() == 1);
    CHECK(e.plan.tensors[static_cast<std::size_t>(sum_to[0])].bytes == 32);
    CHECK(freed(e, sum_to[0]) == std::pair<Phase, int>{Phase::backward, 2});
    CHECK(allocated(e, "cls", Phase::backward, 2) == 0);
  }
  SECTION("an in-place write into a trainable parameter is PyTorch's leaf error") {
    const std::string src = "input 5x8\npos: parameter 1x5x8\na: add inplace from=pos,input\nf: flatten\nfc: linear 3\n";
    CHECK_THROWS_WITH(estimate(test::keep_model(src), opts(1)), Catch::Contains("a leaf Variable that requires grad"));
  }
  SECTION("a parameter reads no layer") {
    CHECK_THROWS_WITH(parse_model("input 4x8\ncls: parameter 1x1x8 from=input\n", "t.memfit"), Catch::Contains("remove from="));
    CHECK_THROWS_WITH(estimate(test::keep_model("input 4x8\ncls: parameter 1x0x8\nflatten\nfc 2\n"), opts(1)),
                      Catch::Contains("not positive"));
    CHECK_THROWS_WITH(estimate(test::keep_model("input 4x8\ncls: parameter 1x2x8\ne: expand 3x8\nflatten\nfc 2\n"), opts(1)),
                      Catch::Contains("only size-1 dims broadcast"));
  }
  SECTION("the JSON form (memfit model --json) estimates the same") {
    const Model& m = test::keep_model(kEmbeddings);
    const std::string j = model_json(m);
    CHECK_THAT(j, Catch::Contains("\"kind\": \"parameter\""));
    const Model& back = test::keep_model(j, "t.json");
    const Estimate a = estimate(m, opts(2)), b = estimate(back, opts(2));
    CHECK(a.total_params == b.total_params);
    CHECK(a.peak_allocated_bytes == b.peak_allocated_bytes);
    CHECK(row(b, "cls").params == 8);
  }
  SECTION("a model's own \"freeze\" names the parameter as PyTorch does (vit.embeddings.cls_token)") {
    const std::string j =
        R"({"format": "memfit-model/1", "freeze": ["cls"], "layers": [{"name": "input", "kind": "input", "shape": [4, 8]},
            {"name": "cls", "kind": "parameter", "shape": "1x1x8"}, {"name": "e", "kind": "expand", "shape": "1x8"},
            {"name": "c", "kind": "concat", "dim": 1, "from": ["e", "input"]}, {"name": "f", "kind": "flatten"},
            {"name": "fc", "kind": "linear", "out_features": 3}]})";
    const Estimate e = estimate(test::keep_model(j, "f.json"), opts(2));
    CHECK(row(e, "cls").frozen_params == 8);
  }
}

TEST_CASE("vit-base-patch16-224 estimates in fp32, bf16 autocast and with LoRA", "[vit][hf]") {
  const BuiltinModel* b = find_builtin_model("vit-base-patch16-224");
  REQUIRE(b != nullptr);
  auto run = [&](OptionStrings s) {
    s.batch = "8";
    Options o = make_options(s);
    static std::deque<Model> kept;
    kept.push_back(load_model_source(b->text, b->path, o));
    return estimate(kept.back(), o);
  };
  const i64 D = 768, tokens = 197, N = 8;
  SECTION("fp32") {
    const Estimate e = run({});
    CHECK(e.total_params == 86567656);
    // cls_token.grad: 1*1*768*4 = 3,072 B, expand's sum_to buffer; position_embeddings.grad:
    // 197*768*4 = 605,184 B, the add's sum_to; neither parameter allocates in forward
    CHECK(e.plan.node_grad_bytes[static_cast<std::size_t>(node_of(e, "vit.embeddings.cls_token"))] == D * 4);
    CHECK(allocated(e, "vit.embeddings.cls_expand", Phase::backward) == D * 4);
    CHECK(allocated(e, "vit.embeddings.add_positions", Phase::backward) == tokens * D * 4);
    CHECK(allocated(e, "vit.embeddings.position_embeddings", Phase::backward) == 0);
    CHECK(allocated(e, "vit.embeddings.cls_token", Phase::forward) == 0);
    // cat: [8, 197, 768] float32 = 4,841,472 B, saving nothing
    CHECK(allocated(e, "vit.embeddings.cat", Phase::forward) == N * tokens * D * 4);
    CHECK(row(e, "vit.embeddings.cat").saved_bytes == 0);
  }
  SECTION("bf16 autocast: cat promotes the bfloat16 patches with the float32 cls token to float32") {
    OptionStrings s;
    s.dtype = "bf16";
    const Estimate e = run(s);
    const Node& cat = e.graph.nodes[static_cast<std::size_t>(node_of(e, "vit.embeddings.cat"))];
    CHECK(cat.in_types[1].dtype == DType::bf16);  // the patch conv ran in bfloat16
    CHECK(cat.shape.out.dtype == DType::f32);     // result_type(float32, bfloat16); no cat in PyTorch 2's autocast lists
    CHECK(allocated(e, "vit.embeddings.cat", Phase::forward) == N * tokens * D * 4);
    CHECK(e.total_params == 86567656);
  }
  SECTION("LoRA on query and value: the embeddings' parameters are frozen with the base model") {
    OptionStrings s;
    s.lora = "targets=query,value";
    const Estimate e = run(s);
    CHECK(row(e, "vit.embeddings.cls_token").frozen_params == D);
    CHECK(row(e, "vit.embeddings.position_embeddings").frozen_params == tokens * D);
    CHECK(allocated(e, "vit.embeddings.cls_expand", Phase::backward) == 0);
    CHECK(e.peak_allocated_bytes > 0);
  }
  SECTION("LoRA with reentrant checkpointing: enable_input_require_grads hooks ViTModel.get_input_embeddings()") {
    // get_input_embeddings() is embeddings.patch_embeddings; its output (the patch transpose) requires grad,
    // so the reentrant checkpoints of the frozen encoder get gradients (PyTorch would warn and train nothing).
    OptionStrings s;
    s.lora = "targets=query,value";
    s.checkpoint = "vit.encoder.layer.*";
    s.checkpoint_impl = "reentrant";
    const Estimate e = run(s);
    CHECK(e.graph.nodes[static_cast<std::size_t>(node_of(e, "vit.embeddings.patch_embeddings.transpose"))].requires_grad);
    CHECK_FALSE(e.graph.nodes[static_cast<std::size_t>(node_of(e, "vit.embeddings.patch_embeddings.projection"))].requires_grad);
    // 12 layers x (query + value) x (lora_A 8x768 + lora_B 768x8) float32 gradients
    CHECK(e.total_grad_bytes == 12 * 2 * (8 * 768 + 768 * 8) * 4);
  }
}
