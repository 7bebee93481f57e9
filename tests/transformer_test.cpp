// Transformer kinds against PyTorch: the four CPU fixtures of tools/transformer_fixtures.py
// (GPT-2, Llama with grouped-query attention, BERT, ViT; eager attention, torch 1.13) for saved bytes
// and live bytes, GPT-2 small's parameter count with the tied lm_head, and sdpa by hand from the
// cited source (torch 1.13 has no F.scaled_dot_product_attention, so nothing to measure here).
#include <catch2/catch.hpp>
#include <fstream>

#include "memfit/api.hpp"
#include "memfit/ops.hpp"
#include "memfit/report.hpp"
#include "cpu_live_util.hpp"
#include "test_util.hpp"

using namespace memfit;
using test::row;

namespace {

std::string read_text(const std::string& relative) {
  std::ifstream f(std::string(MEMFIT_SOURCE_DIR) + "/" + relative, std::ios::binary);
  REQUIRE(f);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

Options opts_113(i64 batch) {
  Options o;
  o.train.batch = batch;
  o.train.rules = TorchRules::v1_13;  // the references were recorded with torch 1.13
  o.workspaces = Workspaces{};        // the CPU has no cuBLAS workspaces
  return o;
}

const Model& fixture(const std::string& name) {
  const std::string path = "tests/fixtures/transformers/" + name + ".memfit";
  return test::keep_model(read_text(path), path);
}

constexpr i64 kScalarSlackBytes = 16;  // CPU 0-d scalars (as tests/live_bytes_test.cpp)
constexpr i64 kAdamCpuStepBytes = 4;   // torch 1.13 Adam's state['step']: a CPU float per parameter tensor

}  // namespace

TEST_CASE("transformer fixtures: saved bytes and parameters equal torch 1.13's", "[transformer][reference]") {
  // tests/reference/cpu_saved_transformers.json: unique storages autograd saved in forward + loss,
  // parameters, the token ids / labels (held by the loop) and CPU wrapped-number scalars (0-d
  // float64: `0.5 * x` saves a Python float as a CPU tensor on CUDA too) excluded.
  nlohmann::json doc = test::load_reference("tests/reference/cpu_saved_transformers.json");
  REQUIRE(doc["fixtures"].size() == 4);
  for (const auto& f : doc["fixtures"]) {
    const std::string name = f["name"];
    INFO(name);
    Estimate e = estimate(fixture(name), opts_113(f["batch"].get<i64>()));
    CHECK(e.total_params == f["params"].get<i64>());
    CHECK(e.total_param_bytes == f["param_bytes"].get<i64>());
    CHECK(e.total_buffer_bytes == f["buffer_bytes"].get<i64>());
    CHECK(e.total_saved_bytes == f["saved_total_bytes"].get<i64>());
    // per leaf module whose name is a memfit layer (functional ops are "(outside)" in torch)
    i64 outside = 0;
    for (const auto& r : e.layers) {
      const std::string& ln = e.graph.nodes[static_cast<std::size_t>(r.node)].layer->name;
      auto it = f["first_saved_bytes_by_module"].find(ln);
      if (it != f["first_saved_bytes_by_module"].end()) {
        INFO(ln);
        CHECK(r.saved_bytes == it->get<i64>());
      } else {
        outside += r.saved_bytes;
      }
    }
    CHECK(outside == f["first_saved_bytes_by_module"].value("(outside)", i64{0}));
  }
}

TEST_CASE("transformer fixtures: live bytes through three iterations match torch 1.13's", "[transformer][reference][live]") {
  // tests/reference/cpu_live_transformers.json (torch.profiler profile_memory, 1 thread): peaks and
  // iteration starts relative to the start of iteration 1. Tolerance as tests/live_bytes_test.cpp:
  // memfit never above the measurement by more than the CPU scalars, and at most the scalars, the
  // saved wrapped numbers and Adam's CPU step tensors below it (no dropout here; no peak is at ViT's
  // patch convolution, whose CPU kernel's scratch would not be modelled).
  nlohmann::json doc = test::load_reference("tests/reference/cpu_live_transformers.json");
  // Python numbers autograd saves as 0-d float64 CPU tensors (`0.5 * x`; cpu_saved_transformers.json
  // `saved_cpu_scalar_bytes`): alive through backward in the CPU measurement, CPU tensors on CUDA.
  nlohmann::json saved = test::load_reference("tests/reference/cpu_saved_transformers.json");
  auto scalar_bytes = [&](const std::string& name) {
    for (const auto& f : saved["fixtures"])
      if (f["name"] == name) return f["saved_cpu_scalar_bytes"].get<i64>();
    FAIL("no saved reference for " << name);
    return i64{0};
  };
  int n_checked = 0;
  for (const auto& f : doc["fixtures"]) {
    for (const auto& run : f["runs"]) {
      Options o = opts_113(f["batch"].get<i64>());
      o.train.optimizer = parse_optimizer(run["optimizer"].get<std::string>());
      o.train.impl = parse_optimizer_impl(run["optimizer_impl"].get<std::string>());
      Estimate e = estimate(fixture(f["name"].get<std::string>()), o);
      const bool adam = o.train.optimizer == Optimizer::adam;
      const i64 scalars = scalar_bytes(f["name"].get<std::string>());
      const i64 step_bytes = adam ? kAdamCpuStepBytes * run["param_tensors"].get<i64>() : 0;
      CHECK(e.total_grad_bytes == run["grad_bytes_after"].get<i64>());
      INFO(f["name"] << " " << run["optimizer"] << " " << run["optimizer_impl"]);
      // no dropout, no batch norm: the CPU peak is the raw one
      n_checked += test::check_live_iterations(run, test::relative_live(e, o.train.n_iterations),
                                               {.step_bytes = step_bytes, .above = kScalarSlackBytes + scalars});
    }
  }
  CHECK(n_checked == 36);  // 4 fixtures x 3 optimizer runs x 3 iterations
}

TEST_CASE("GPT-2 small: the tied lm_head is counted, graded and stepped once", "[transformer][tied]") {
  // GPT2LMHeadModel (n_embd 768, 12 layers, 12 heads, vocab 50257, n_positions 1024):
  // num_parameters() = 124,439,808 with lm_head.weight = transformer.wte.weight. By hand:
  // wte 50257 x 768 = 38,597,376; wpe 1024 x 768 = 786,432; per layer 2 LayerNorms 3,072 +
  // c_attn 768 x 2304 + 2304 = 1,771,776 + c_proj 590,592 + c_fc 2,362,368 + mlp c_proj 2,360,064
  // = 7,087,872, x 12 = 85,054,464; ln_f 1,536. Sum 124,439,808.
  std::string src = read_text("tests/fixtures/transformers/gpt2_tiny.memfit");
  auto sub = [&](const std::string& a, const std::string& b) {
    for (std::size_t p = src.find(a); p != std::string::npos; p = src.find(a, p + b.size())) src.replace(p, a.size(), b);
  };
  sub("gpt2_conv1d 96", "gpt2_conv1d 2304");
  sub("reshape 16x4x8", "reshape 8x12x64");
  sub("reshape 16x32", "reshape 8x768");
  sub("gpt2_conv1d 32", "gpt2_conv1d 768");
  sub("gpt2_conv1d 128", "gpt2_conv1d 3072");
  sub("layer_norm 32", "layer_norm 768");
  sub("repeat 2 gpt2_block", "repeat 12 gpt2_block");
  sub("num_embeddings=100 embedding_dim=32", "num_embeddings=50257 embedding_dim=768");
  sub("num_embeddings=16 embedding_dim=32", "num_embeddings=1024 embedding_dim=768");
  sub("linear 100", "linear 50257");
  sub("input 16", "input 8");
  Options o;
  o.train.batch = 1;
  o.train.optimizer = Optimizer::adamw;
  Estimate e = estimate(test::keep_model(src, "gpt2_small.memfit"), o);
  const i64 n = 124439808;
  CHECK(e.total_params == n);
  CHECK(e.total_param_bytes == 4 * n);
  CHECK(e.total_grad_bytes == 4 * n);            // one .grad for the shared weight
  CHECK(e.total_optimizer_bytes == 2 * 4 * n);   // exp_avg + exp_avg_sq once
  CHECK(row(e, "lm_head").params == 0);          // the weight is transformer.wte's
  CHECK(row(e, "transformer.wte").params == 50257 * 768);
}

TEST_CASE("tied weights: errors name the layer and what to tie", "[transformer][tied]") {
  const std::string head = "input 4 dtype=int64\nemb: embedding num_embeddings=10 embedding_dim=8\n";
  CHECK_THROWS_WITH(estimate(test::keep_model(head + "out: linear 10 bias=false tied_to=nope\nloss: causal_lm_loss\n"), opts_113(1)),
                    Catch::Contains("layer 'out'") && Catch::Contains("tied_to='nope' names no earlier layer"));
  CHECK_THROWS_WITH(estimate(test::keep_model(head + "out: linear 12 bias=false tied_to=emb\nloss: causal_lm_loss\n"), opts_113(1)),
                    Catch::Contains("its weight is 12x8 but 'emb'.weight is 10x8"));
}

TEST_CASE("int64 token ids: parsed in both forms, refused by float ops", "[transformer]") {
  Estimate e = estimate(test::keep_model("input 16 dtype=int64\nemb: embedding num_embeddings=100 embedding_dim=32\nhead: linear 100\nloss: causal_lm_loss\n"),
                        opts_113(2));
  CHECK(e.graph.nodes[0].shape.out.dtype == DType::i64);
  CHECK(e.input_bytes == 2 * 16 * 8 + 2 * 16 * 8);  // token ids + labels int64 [N, T] (loss-stated target)
  CHECK(e.graph.target.shape == std::vector<i64>{2, 16});
  Model j = parse_model(R"({"format": "memfit-model/1", "name": "t", "layers": [
      {"name": "input", "kind": "input", "shape": [16], "dtype": "int64"},
      {"name": "emb", "kind": "embedding", "num_embeddings": 100, "embedding_dim": 32},
      {"name": "loss", "kind": "masked_lm_loss"}]})",
                        "t.json");
  Estimate ej = estimate(j, opts_113(2));
  CHECK(ej.graph.nodes[0].shape.out.dtype == DType::i64);
  CHECK(model_json(j).find("\"dtype\": \"int64\"") != std::string::npos);
  CHECK_THROWS_WITH(estimate(test::keep_model("input 16 dtype=int64\nfc: linear 10\n"), opts_113(2)),
                    Catch::Contains("layer 'fc'") && Catch::Contains("int64 token ids") && Catch::Contains("embedding"));
  CHECK_THROWS_WITH(parse_model("input 16 dtype=int8\nfc: linear 10\n", "t.memfit"), Catch::Contains("not float32 or int64"));
  CHECK_THROWS_WITH(estimate(test::keep_model("input 16\nemb: embedding num_embeddings=10 embedding_dim=4\n"), opts_113(2)),
                    Catch::Contains("embedding takes int64 token ids"));
}

TEST_CASE("dropout p=0 returns its input: nothing saved, no mask", "[transformer]") {
  // aten/src/ATen/native/Dropout.cpp: native_dropout only for 0 < p < 1; _dropout_impl returns
  // the input when p == 0 (llama_tiny's F.dropout(p=0.0) saves nothing: cpu_saved_transformers.json).
  Estimate e = estimate(test::keep_model("input 8\nfc: linear 8\nd: dropout 0\nout: linear 3\n"), opts_113(4));
  CHECK(row(e, "d").saved_bytes == 0);
  CHECK(e.graph.nodes[static_cast<std::size_t>(row(e, "d").node)].mem.output == OpMemory::Output::view);
}

namespace {
// The sdpa rule called directly on q, k, v (and a mask) of the given dtype and shapes.
struct SdpaCase {
  Layer layer;
  OpShape shape;
  OpMemory mem;
};
SdpaCase sdpa_case(DType dt, std::vector<i64> q, std::vector<i64> kv, bool mask, const std::string& extra = "") {
  const OpRule* r = find_op("sdpa");
  REQUIRE(r);
  std::string src = "input 4\nq: linear 4\nk: linear 4 from=input\nv: linear 4 from=input\n";
  const bool causal_given = extra.find("causal") != std::string::npos;
  src += std::string("a: sdpa ") + extra + (mask && !causal_given ? " causal=false" : "") + (mask ? " from=q,k,v,q" : " from=q,k,v") + "\n";
  Model m = parse_model(src, "t.memfit");
  SdpaCase c;
  c.layer = m.layers.back();
  std::vector<TensorType> in{{q, dt}, {kv, dt}, {kv, dt}};
  if (mask) in.push_back({{q[0], 1, q[2], kv[2]}, dt});
  OpCall call{.layer = c.layer, .in = in, .in_requires_grad = std::vector<bool>(in.size(), true), .batch = q[0]};
  c.shape = r->shape(call);
  c.mem = r->memory(call, c.shape);
  return c;
}
i64 extra_bytes(const OpMemory& m) {
  i64 b = 0;
  for (const auto& x : m.extras) b += x.type.bytes();
  return b;
}
}  // namespace

TEST_CASE("sdpa: the backend PyTorch picks and what it keeps, by hand from the source", "[transformer][sdpa]") {
  const std::vector<i64> q{2, 4, 16, 8};
  // bfloat16, no mask, head_dim 8 <= 256: flash (sdp_utils.cpp can_use_flash_attention). Saved: q,
  // k, v, out and softmax_lse float32 [N, H, T] = 2*4*16*4 = 512 B.
  SdpaCase flash = sdpa_case(DType::bf16, q, q, false);
  CHECK(flash.mem.saved.size() == 5);
  CHECK_THAT(flash.mem.note, Catch::Contains("flash attention") && Catch::Contains("not measured on a GPU"));
  CHECK(extra_bytes(flash.mem) == 512);
  // backward (flash_api.cpp mha_bwd): softmax_d float32 [2, 4, 128] = 4,096 B and dq_accum float32
  // [2, 128, 4, 32] = 131,072 B (T rounded up to 128, head_dim to 32)
  REQUIRE(flash.mem.bwd_temps.size() == 2);
  CHECK(flash.mem.bwd_temps[0].bytes() == 4096);
  CHECK(flash.mem.bwd_temps[1].bytes() == 131072);
  // a mask rules flash out (check_for_attn_mask): memory-efficient, which keeps the mask too and
  // pads logsumexp's rows to 32: float32 [2, 4, 32] = 1,024 B
  SdpaCase eff = sdpa_case(DType::bf16, q, q, true);
  CHECK_THAT(eff.mem.note, Catch::Contains("memory-efficient attention"));
  CHECK(eff.mem.saved.size() == 6);
  CHECK(extra_bytes(eff.mem) == 1024);
  // float32 with head_dim 8 (divisible by 4): memory-efficient; head_dim 6: math, whose composite
  // keeps q * sqrt(scale) [2,4,16,6] and k^T * sqrt(scale) [2,4,6,16] (3,072 B each), softmax's
  // result [2,4,16,16] (8,192 B) and v itself
  CHECK(sdpa_case(DType::f32, q, q, false).mem.saved.size() == 5);
  SdpaCase math = sdpa_case(DType::f32, {2, 4, 16, 6}, {2, 4, 16, 6}, false);
  CHECK(extra_bytes(math.mem) == 2 * 4 * 16 * 6 * 4 * 2 + 2 * 4 * 16 * 16 * 4);
  // math with bfloat16 (backend=math): 2.5+ computes in float32, keeping a float32 copy of v
  SdpaCase math_bf16 = sdpa_case(DType::bf16, q, q, false, "backend=math");
  CHECK(extra_bytes(math_bf16.mem) == (2 * 4 * 16 * 8 * 4) * 3 + 2 * 4 * 16 * 16 * 4);
  CHECK(math_bf16.shape.out.dtype == DType::bf16);
  // refusals: flash in float32, causal with a mask, fewer kv heads without enable_gqa, torch 1.13
  CHECK_THROWS_WITH(sdpa_case(DType::f32, q, q, false, "backend=flash"), Catch::Contains("float16/bfloat16"));
  CHECK_THROWS_WITH(sdpa_case(DType::f32, q, q, true, "causal=true"), Catch::Contains("causal=true with an attn_mask"));
  CHECK_THROWS_WITH(sdpa_case(DType::bf16, q, {2, 2, 16, 8}, false), Catch::Contains("enable_gqa"));
  SdpaCase gqa = sdpa_case(DType::bf16, q, {2, 2, 16, 8}, false, "enable_gqa=true");
  CHECK(gqa.mem.bwd_temps.size() == 4);  // + dk, dv of q's heads before the sum to 2 kv heads
  CHECK_THROWS_WITH(estimate(test::keep_model("input 4x8\nq: linear 8\nt: reshape 1x4x8\na: sdpa from=t,t,t\n"), opts_113(1)),
                    Catch::Contains("torch 1.13 has no F.scaled_dot_product_attention"));
}

TEST_CASE("rms_norm: what each form keeps, by hand (hf composite in 1.13 and 2.x, half input, fused)", "[transformer]") {
  // x = fc's output [4, 8, 16] float32 = 2,048 B, first saved by the norm; rsqrt [4, 8, 1] = 128 B.
  const std::string src = "input 8x16\nfc: linear 16\nn: rms_norm 16 IMPL\nout: linear 4\nflatten\nhead: linear 2\n";
  auto with = [&](const std::string& impl) {
    std::string s = src;
    s.replace(s.find("IMPL"), 4, impl);
    return s;
  };
  Options o = opts_113(4);
  // torch 1.13: x (pow's self), x^2 (MeanBackward1's self), rsqrt, h (weight * h's other)
  CHECK(row(estimate(test::keep_model(with("impl=hf")), o), "n").saved_bytes == 2048 + 2048 + 128 + 2048);
  // 2.x: mean.dim keeps nothing (derivatives.yaml mean_backward(grad, sizes, dim, numel, keepdim))
  o.train.rules = TorchRules::v2;
  CHECK(row(estimate(test::keep_model(with("impl=hf")), o), "n").saved_bytes == 2048 + 128 + 2048);
  // bfloat16 input (autocast: fc runs in bf16): x.to(float32) 2,048 B, rsqrt, h.to(bfloat16) 1,024 B;
  // the bf16 input itself is not kept
  o.train.precision = DType::bf16;
  Estimate h = estimate(test::keep_model(with("impl=hf")), o);
  CHECK(row(h, "n").saved_bytes == 2048 + 128 + 1024);
  CHECK(row(h, "n").out.dtype == DType::f32);  // float32 weight * bf16 h promotes
  // fused (_fused_rms_norm): input, rstd and the weight
  o.train.precision = DType::f32;
  CHECK(row(estimate(test::keep_model(with("impl=fused")), o), "n").saved_bytes == 2048 + 128);
  CHECK_THROWS_WITH(estimate(test::keep_model(with("impl=triton")), o), Catch::Contains("impl must be hf or fused"));
}

TEST_CASE("transformer fixtures under the PyTorch 2 rules: what changes from 1.13, by hand", "[transformer]") {
  // llama_tiny has five LlamaRMSNorms ([2, 16, 32] float32 inputs): 2.x's mean.dim keeps no x^2,
  // 4,096 B each: 211,332 - 5 x 4,096 = 190,852 B. gpt2_tiny and bert_tiny have no op whose saving
  // differs between the versions, so their saved bytes stay 268,428 and 182,404 B.
  Options o = opts_113(2);
  o.train.rules = TorchRules::v2;
  CHECK(estimate(fixture("llama_tiny"), o).total_saved_bytes == 190852);
  CHECK(estimate(fixture("gpt2_tiny"), o).total_saved_bytes == 268428);
  CHECK(estimate(fixture("bert_tiny"), o).total_saved_bytes == 182404);
}

TEST_CASE("embedding on CUDA: more than 3,072 indices are sorted in backward", "[transformer]") {
  // Embedding.cu embedding_dense_backward_cuda: sorted_indices, orig_indices and the arange, int64
  // [N*T] each, for N*T > 3072: batch 4 x 1024 tokens = 4,096 indices -> 3 x 32,768 B.
  Options o;
  o.train.batch = 4;
  o.workspaces = Workspaces{};
  Estimate e = estimate(test::keep_model("input 1024 dtype=int64\nemb: embedding num_embeddings=100 embedding_dim=8\nhead: linear 100\nloss: causal_lm_loss\n"), o);
  const Node& nd = e.graph.nodes[static_cast<std::size_t>(row(e, "emb").node)];
  REQUIRE(nd.mem.bwd_temps.size() == 3);
  CHECK(nd.mem.bwd_temps[0].bytes() == 4 * 1024 * 8);
  o.train.batch = 3;  // 3,072 indices: the direct kernel, no sort
  Estimate e3 = estimate(test::keep_model("input 1024 dtype=int64\nemb: embedding num_embeddings=100 embedding_dim=8\nhead: linear 100\nloss: causal_lm_loss\n"), o);
  CHECK(e3.graph.nodes[static_cast<std::size_t>(row(e3, "emb").node)].mem.bwd_temps.empty());
}

TEST_CASE("the attention mask lives until its module's forward returns", "[transformer]") {
  // transformers' LlamaModel.forward makes causal_mask and passes it to every layer; it is freed when
  // that forward returns, after model.norm and before lm_head (the fixtures do the same).
  Estimate e = estimate(fixture("llama_tiny"), opts_113(2));
  const int mask = row(e, "model.mask").node, norm = row(e, "model.norm").node, head = row(e, "lm_head").node;
  int freed_at = -1;
  for (const auto& ev : e.plan.events)
    if (ev.is_free && ev.iteration == 1 && ev.phase == Phase::forward &&
        e.plan.tensors[static_cast<std::size_t>(ev.tensor)].node == mask)
      freed_at = ev.node;
  CHECK(freed_at == head);
  CHECK(freed_at > norm);
}

TEST_CASE("transformer kinds on wrong inputs: a memfit::Error, never a crash or another exception", "[transformer][robustness]") {
  const std::vector<std::string> inputs = {"input 4", "input 4x8", "input 4 dtype=int64", "input 2x4x8", "input 2x3x4x8",
                                           "input 1x1x1x1x1 dtype=int64"};
  const std::vector<std::string> layers = {
      "embedding num_embeddings=10 embedding_dim=4", "embedding num_embeddings=0 embedding_dim=4 positions=true",
      "embedding num_embeddings=10 embedding_dim=4 padding_idx=10", "rms_norm 8", "rms_norm 8 impl=fused",
      "rotary_embedding head_dim=8", "rotary_embedding head_dim=3", "rotary from=input,input,input",
      "repeat_kv 2", "repeat_kv 0", "sdpa from=input,input,input", "sdpa causal=false from=input,input,input,input",
      "sdpa backend=flash from=input,input,input", "sdpa backend=nope from=input,input,input", "gelu_new",
      "gpt2_conv1d 4", "gpt2_conv1d -1", "scale 0.5", "scale 2 tensor=true", "attn_mask", "attn_mask causal=false",
      "causal_lm_loss", "masked_lm_loss", "linear 4 tied_to=input"};
  int ok = 0, refused = 0;
  for (TorchRules rules : {TorchRules::v1_13, TorchRules::v2})
    for (const auto& in : inputs)
      for (const auto& l : layers) {
        const std::string src = in + "\nl: " + l + "\n";
        INFO(src);
        Options o = opts_113(2);
        o.train.rules = rules;
        try {
          estimate(test::keep_model(src), o);
          ++ok;
        } catch (const Error& e) {
          CHECK_FALSE(std::string(e.what()).empty());
          ++refused;
        } catch (const std::exception& e) {
          FAIL("not a memfit::Error: " << e.what());
        }
      }
  CHECK(refused > 0);
  CHECK(ok + refused == 2 * static_cast<int>(inputs.size() * layers.size()));
}

TEST_CASE("the fixtures' JSON form gives the same estimate", "[transformer]") {
  for (const char* name : {"gpt2_tiny", "llama_tiny", "bert_tiny"}) {
    INFO(name);
    const Model& text = fixture(name);
    const std::string json = model_json(text);
    const Model& back = test::keep_model(json, std::string(name) + ".json");
    Estimate a = estimate(text, opts_113(2)), b = estimate(back, opts_113(2));
    CHECK(a.total_params == b.total_params);
    CHECK(a.total_saved_bytes == b.total_saved_bytes);
    CHECK(a.peak_allocated_bytes == b.peak_allocated_bytes);
  }
}

TEST_CASE("the tied weight's two gradients: a new sum in torch 1.13, added in place in 2.x", "[transformer][tied]") {
  // AccumulateGrad of transformer.wte.weight has two input edges (lm_head, wte): the engine sums them in
  // its input buffer (input_buffer.cpp): torch 1.13 into a new [V, D] tensor (measured: gpt2_tiny's live
  // peaks match with it), 2.x in place when the buffer is the only reference. V x D x 4 = 12,800 B.
  auto allocs = [](TorchRules rules) {
    Options o = opts_113(2);
    o.train.rules = rules;
    Estimate e = estimate(fixture("gpt2_tiny"), o);
    const int wte = row(e, "transformer.wte").node, head = row(e, "lm_head").node;
    int n = 0;
    for (const auto& ev : e.plan.events) {
      const PlanTensor& t = e.plan.tensors[static_cast<std::size_t>(ev.tensor)];
      if (!ev.is_free && ev.iteration == 1 && ev.phase == Phase::backward && (ev.node == wte || ev.node == head) &&
          t.bytes == 100 * 32 * 4)
        ++n;
    }
    return n;
  };
  CHECK(allocs(TorchRules::v1_13) == 3);  // lm_head's gradient, wte's, their sum
  CHECK(allocs(TorchRules::v2) == 2);
}
