// The Hugging Face config.json builder (core/src/model/hf_config.cpp) and the configs shipped in
// models/hf/. Parameter counts are checked three ways: a hand formula from the config's numbers with
// named terms, the published count (source given per model), and the count read off the built
// model's layers (sizes followed through the layers here, independently of memfit's shape rules).
#include <catch2/catch.hpp>

#include <deque>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "memfit/api.hpp"
#include "memfit/hf_config.hpp"
#include "model/model_parse.hpp"
#include "test_util.hpp"

namespace {

using memfit::i64;
using memfit::Layer;
using memfit::Model;

const memfit::BuiltinModel& config(const std::string& name) {
  const memfit::BuiltinModel* b = memfit::find_builtin_model(name);
  REQUIRE(b != nullptr);
  return *b;
}

Model layers_of(const std::string& name, memfit::HfOptions o = {}) {
  const auto& b = config(name);
  return memfit::parse_hf_config_unresolved(b.text, b.path, o);
}

// ---- sizes through the layers, from their attributes alone (unresolved: every value is text) ----
i64 num(const Layer& l, const char* key, i64 fallback = -999) {
  auto it = l.attrs.find(key);
  if (it == l.attrs.end()) {
    if (fallback == -999) FAIL("layer " << l.name << " has no " << key);
    return fallback;
  }
  return std::stoll(it->second.text);
}
bool flag(const Layer& l, const char* key, bool fallback) {
  auto it = l.attrs.find(key);
  return it == l.attrs.end() ? fallback : it->second.text == "true";
}
std::vector<i64> dims(const std::string& text) {
  std::vector<i64> out;
  std::size_t start = 0;
  while (true) {
    std::size_t x = text.find('x', start);
    out.push_back(std::stoll(text.substr(start, x == std::string::npos ? std::string::npos : x - start)));
    if (x == std::string::npos) return out;
    start = x + 1;
  }
}
i64 numel(const std::vector<i64>& s) {
  i64 n = 1;
  for (i64 d : s) n *= d;
  return n;
}

// Trainable parameters of the built model, following shapes with batch 1 through the kinds the
// builder emits. A tied weight (tied_to=) is the embedding's and is not counted again, as
// model.num_parameters() counts a shared tensor once.
i64 count_params(const Model& m) {
  std::map<std::string, std::vector<i64>> shape;
  i64 params = 0;
  for (const Layer& l : m.layers) {
    auto in = [&](std::size_t k) -> const std::vector<i64>& {
      REQUIRE(k < l.inputs.size());
      auto it = shape.find(l.inputs[k]);
      if (it == shape.end()) FAIL("layer " << l.name << " reads unknown '" << l.inputs[k] << "'");
      return it->second;
    };
    std::vector<i64> out;
    const std::string& k = l.kind;
    if (k == "input") {
      out = dims(l.attrs.at("shape").text);
      out.insert(out.begin(), 1);
    } else if (k == "embedding") {
      out = in(0);
      out.push_back(num(l, "embedding_dim"));
      params += num(l, "num_embeddings") * num(l, "embedding_dim");
    } else if (k == "rotary_embedding") {
      const auto& x = in(0);
      shape[l.name + ":0"] = shape[l.name + ":1"] = {1, x[1], num(l, "head_dim")};
      out = x;
    } else if (k == "linear" || k == "gpt2_conv1d") {
      out = in(0);
      i64 features = out.back(), n_out = num(l, "out_features");
      out.back() = n_out;
      if (k == "gpt2_conv1d" || !l.attrs.count("tied_to")) params += features * n_out;
      if (k == "gpt2_conv1d" || flag(l, "bias", true)) params += n_out;
    } else if (k == "rms_norm") {
      out = in(0);
      params += num(l, "normalized_shape");
    } else if (k == "layer_norm") {
      out = in(0);
      if (flag(l, "elementwise_affine", true)) params += num(l, "normalized_shape") * (flag(l, "bias", true) ? 2 : 1);
    } else if (k == "conv2d") {
      const auto& x = in(0);
      i64 kk = num(l, "kernel"), s = num(l, "stride", 1), o = num(l, "out_channels");
      out = {x[0], o, (x[2] - kk) / s + 1, (x[3] - kk) / s + 1};
      params += x[1] * o * kk * kk + (flag(l, "bias", true) ? o : 0);
    } else if (k == "parameter") {
      out = dims(l.attrs.at("shape").text);
      params += numel(out);
    } else if (k == "expand") {
      out = dims(l.attrs.at("shape").text);
      out.insert(out.begin(), in(0)[0]);
    } else if (k == "reshape") {
      const auto& x = in(0);
      std::vector<i64> per = dims(l.attrs.at("shape").text);
      i64 known = 1;
      for (i64 d : per)
        if (d != -1) known *= d;
      for (i64& d : per)
        if (d == -1) d = numel(x) / x[0] / known;
      out = {x[0]};
      out.insert(out.end(), per.begin(), per.end());
      REQUIRE(numel(out) == numel(x));
    } else if (k == "transpose") {
      out = in(0);
      std::swap(out[static_cast<std::size_t>(num(l, "dim0"))], out[static_cast<std::size_t>(num(l, "dim1"))]);
    } else if (k == "chunk") {
      out = in(0);
      out[static_cast<std::size_t>(num(l, "dim"))] /= num(l, "chunks");
      for (i64 j = 0; j < num(l, "chunks"); ++j) shape[l.name + ":" + std::to_string(j)] = out;
    } else if (k == "concat") {
      out = in(0);
      i64 d = num(l, "dim");
      out[static_cast<std::size_t>(d)] = 0;
      for (std::size_t j = 0; j < l.inputs.size(); ++j) out[static_cast<std::size_t>(d)] += in(j)[static_cast<std::size_t>(d)];
    } else if (k == "slice") {
      out = in(0);
      out[static_cast<std::size_t>(num(l, "dim"))] = num(l, "end") - num(l, "start");
    } else if (k == "sdpa") {
      out = in(0);
      out.back() = in(2).back();
    } else if (k == "matmul") {
      out = in(0);
      out.back() = in(1).back();
    } else if (k == "add" || k == "mul") {
      out = numel(in(0)) >= numel(in(1)) ? in(0) : in(1);
    } else if (k == "repeat_kv") {
      out = in(0);
      out[1] *= num(l, "n_rep");
    } else {  // element-wise and losses: the input's shape, no parameters
      out = in(0);
    }
    shape[l.name] = out;
  }
  return params;
}

const Layer* find(const Model& m, const std::string& name) {
  for (const auto& l : m.layers)
    if (l.name == name) return &l;
  return nullptr;
}

std::string error_of(const std::string& source, const std::string& file, memfit::HfOptions o = {}) {
  try {
    memfit::parse_model(source, file, o);
  } catch (const memfit::Error& e) {
    return e.what();
  }
  return "(no error)";
}

// A small llama config for error cases: each test edits one field.
std::string tiny_llama(const std::string& extra = "", const std::string& drop = "") {
  std::map<std::string, std::string> f{{"model_type", "\"llama\""},        {"vocab_size", "1000"},
                                       {"hidden_size", "64"},              {"intermediate_size", "128"},
                                       {"num_hidden_layers", "2"},         {"num_attention_heads", "4"},
                                       {"num_key_value_heads", "2"},       {"max_position_embeddings", "256"},
                                       {"rms_norm_eps", "1e-05"},          {"tie_word_embeddings", "false"}};
  if (!drop.empty()) f.erase(drop);
  std::string s = "{\n";
  for (const auto& [k, v] : f) s += "  \"" + k + "\": " + v + ",\n";
  s += extra.empty() ? "  \"rope_theta\": 10000.0\n}\n" : "  \"rope_theta\": 10000.0,\n" + extra + "\n}\n";
  return s;
}

}  // namespace

// Hand formulas. Published counts: the Hugging Face Hub's safetensors metadata for each repository
// ("Model size ... params" on the model page, the total of the checkpoint's tensors: a tied
// lm_head is stored once), which equals transformers' model.num_parameters() for these models.
TEST_CASE("shipped configs: parameter counts by hand, published and from the built layers", "[hf][models]") {
  SECTION("gpt2 (openai-community/gpt2, GPT2LMHeadModel, tied lm_head): 124,439,808") {
    const i64 V = 50257, D = 768, L = 12, P = 1024, inner = 4 * D;
    const i64 wte = V * D, wpe = P * D;
    const i64 ln = 2 * D;                                  // weight + bias
    const i64 c_attn = D * 3 * D + 3 * D, c_proj = D * D + D;
    const i64 c_fc = D * inner + inner, mlp_proj = inner * D + D;
    const i64 block = 2 * ln + c_attn + c_proj + c_fc + mlp_proj;
    const i64 total = wte + wpe + L * block + ln;          // + ln_f; lm_head = wte
    CHECK(total == 124439808);
    CHECK(count_params(layers_of("gpt2")) == total);
  }
  SECTION("bert-base-uncased (google-bert/bert-base-uncased, BertForMaskedLM): 109,514,298") {
    const i64 V = 30522, D = 768, L = 12, P = 512, types = 2, I = 3072;
    const i64 embeddings = V * D + P * D + types * D + 2 * D;  // word, position, token type, LayerNorm
    const i64 attention = 4 * (D * D + D) + 2 * D;            // query, key, value, output.dense, LayerNorm
    const i64 ffn = (D * I + I) + (I * D + D) + 2 * D;        // intermediate, output, LayerNorm
    const i64 head = (D * D + D) + 2 * D + V;                 // transform dense, LayerNorm, decoder bias (weight tied)
    const i64 total = embeddings + L * (attention + ffn) + head;
    CHECK(total == 109514298);
    CHECK(count_params(layers_of("bert-base-uncased")) == total);
  }
  // Llama family: embed V*D (+ lm_head V*D untied); per layer q H*d*D, k and v KV*d*D each, o D*H*d,
  // gate/up/down 3*D*I, two RMSNorm weights 2*D; final norm D.
  auto llama = [](i64 V, i64 D, i64 L, i64 H, i64 KV, i64 d, i64 I, bool tied) {
    const i64 embed = V * D, lm_head = tied ? 0 : V * D;
    const i64 attention = H * d * D + 2 * KV * d * D + D * H * d;
    const i64 mlp = 3 * D * I, norms = 2 * D;
    return embed + L * (attention + mlp + norms) + D + lm_head;
  };
  SECTION("Llama-3.2-1B (meta-llama/Llama-3.2-1B, tied): 1,235,814,400") {
    i64 total = llama(128256, 2048, 16, 32, 8, 64, 8192, true);
    CHECK(total == 1235814400);
    CHECK(count_params(layers_of("llama-3.2-1b")) == total);
  }
  SECTION("Llama-3.2-3B (meta-llama/Llama-3.2-3B, tied): 3,212,749,824") {
    i64 total = llama(128256, 3072, 28, 24, 8, 128, 8192, true);
    CHECK(total == 3212749824);
    CHECK(count_params(layers_of("llama-3.2-3b")) == total);
  }
  SECTION("Llama-3.1-8B (meta-llama/Llama-3.1-8B): 8,030,261,248") {
    i64 total = llama(128256, 4096, 32, 32, 8, 128, 14336, false);
    CHECK(total == 8030261248);
    CHECK(count_params(layers_of("llama-3.1-8b")) == total);
  }
  SECTION("Mistral-7B-v0.1 (mistralai/Mistral-7B-v0.1): 7,241,732,096") {
    i64 total = llama(32000, 4096, 32, 32, 8, 128, 14336, false);
    CHECK(total == 7241732096);
    CHECK(count_params(layers_of("mistral-7b-v0.1")) == total);
  }
  SECTION("Llama-3.1-70B (meta-llama/Llama-3.1-70B): 70,553,706,496") {
    i64 total = llama(128256, 8192, 80, 64, 8, 128, 28672, false);
    CHECK(total == 70553706496);
    CHECK(count_params(layers_of("llama-3.1-70b")) == total);
  }
  SECTION("vit-base-patch16-224 (google/vit-base-patch16-224, ViTForImageClassification): 86,567,656") {
    const i64 D = 768, L = 12, I = 3072, C = 3, patch = 16, image = 224, labels = 1000;
    const i64 tokens = (image / patch) * (image / patch) + 1;  // 196 patches + [CLS]
    const i64 embeddings = (C * patch * patch * D + D) + D + tokens * D;  // projection, cls_token, position_embeddings
    const i64 layer = 2 * (2 * D) + 4 * (D * D + D) + (D * I + I) + (I * D + D);  // 2 LayerNorms, attention, MLP
    const i64 total = embeddings + L * layer + 2 * D + (D * labels + labels);     // + final layernorm, classifier
    CHECK(total == 86567656);
    CHECK(count_params(layers_of("vit-base-patch16-224")) == total);
  }
}

TEST_CASE("llama layers follow transformers' module paths and the kinds contract", "[hf]") {
  memfit::HfOptions o;
  o.seq = 128;
  Model m = layers_of("llama-3.2-1b", o);
  CHECK(m.name == "llama-3.2-1b");
  CHECK(m.layers[0].kind == "input");
  CHECK(m.layers[0].attrs.at("shape").text == "128");
  CHECK(m.layers[0].attrs.at("dtype").text == "int64");
  for (const char* n : {"model.embed_tokens", "model.rotary_emb", "model.layers.0.input_layernorm", "model.layers.0.self_attn.q_proj",
                        "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.sdpa",
                        "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
                        "model.layers.0.mlp.act_mul", "model.layers.0.mlp.down_proj", "model.layers.15.mlp.down_proj", "model.norm",
                        "lm_head", "loss"}) {
    INFO(n);
    CHECK(find(m, n) != nullptr);
  }
  CHECK(find(m, "model.layers.16.input_layernorm") == nullptr);
  // GQA: 32 query heads of 64, 8 key/value heads; SDPA gets enable_gqa (no repeat_kv)
  CHECK(find(m, "model.layers.0.self_attn.q_proj")->attrs.at("out_features").text == "2048");
  CHECK(find(m, "model.layers.0.self_attn.k_proj")->attrs.at("out_features").text == "512");
  const Layer* sdpa = find(m, "model.layers.0.self_attn.sdpa");
  CHECK(sdpa->attrs.at("enable_gqa").text == "true");
  CHECK(sdpa->attrs.at("causal").text == "true");
  CHECK(sdpa->inputs == std::vector<std::string>{"model.layers.0.self_attn.q_rotary", "model.layers.0.self_attn.k_rotary",
                                                 "model.layers.0.self_attn.v_transpose"});
  CHECK(find(m, "model.layers.0.self_attn.q_rotary")->inputs ==
        std::vector<std::string>{"model.layers.0.self_attn.q_transpose", "model.rotary_emb:0", "model.rotary_emb:1"});
  CHECK(find(m, "model.rotary_emb")->attrs.at("theta").text == "500000.0");
  CHECK(find(m, "model.layers.0.input_layernorm")->attrs.at("eps").text == "1e-05");
  CHECK(find(m, "lm_head")->attrs.at("tied_to").text == "model.embed_tokens");
  CHECK(find(m, "model.layers.0.mlp.act_mul")->inputs ==
        std::vector<std::string>{"model.layers.0.mlp.act_fn", "model.layers.0.mlp.up_proj"});
  // attention_dropout 0.0: no dropout layer (at::dropout returns its input at p = 0)
  for (const auto& l : m.layers) CHECK(l.kind != "dropout");
  // the 8B is untied: its lm_head has its own weight
  CHECK(find(layers_of("llama-3.1-8b"), "lm_head")->attrs.count("tied_to") == 0);
}

TEST_CASE("eager attention emits eager_attention_forward's ops", "[hf]") {
  memfit::HfOptions o;
  o.seq = 64;
  o.attention = memfit::HfAttention::eager;
  Model m = layers_of("llama-3.2-1b", o);
  const std::string a = "model.layers.0.self_attn.";
  for (const char* n : {"repeat_k", "repeat_v", "key_t", "scores", "scale", "mask_add", "softmax", "context"}) {
    INFO(n);
    CHECK(find(m, a + n) != nullptr);
  }
  CHECK(find(m, a + "sdpa") == nullptr);
  CHECK(find(m, a + "repeat_k")->attrs.at("n_rep").text == "4");  // 32 heads / 8 key-value heads
  // scaling = head_dim ** -0.5 = 1/8 for head_dim 64
  CHECK(std::stod(find(m, a + "scale")->attrs.at("factor").text) == 0.125);
  CHECK(find(m, a + "mask_add")->inputs == std::vector<std::string>{a + "scale", "model.causal_mask"});
  CHECK(find(m, "model.causal_mask")->kind == "attn_mask");
  CHECK(find(m, "model.causal_mask")->attrs.at("causal").text == "true");
  // GPT-2 divides by torch.full([], sqrt(head_dim)) (a 0-d tensor autograd keeps); BERT's mask is
  // the extended padding mask, not causal
  memfit::HfOptions e;
  e.attention = memfit::HfAttention::eager;
  Model g = layers_of("gpt2", e);
  CHECK(find(g, "transformer.h.0.attn.scale")->attrs.at("tensor").text == "true");
  CHECK(std::stod(find(g, "transformer.h.0.attn.scale")->attrs.at("factor").text) == Approx(8.0));
  CHECK(find(g, "transformer.drop")->inputs == std::vector<std::string>{"transformer.add_positions"});
  Model bert = layers_of("bert-base-uncased", e);
  CHECK(find(bert, "bert.extended_attention_mask")->attrs.at("causal").text == "false");
  CHECK(find(bert, "bert.embeddings.word_embeddings")->inputs == std::vector<std::string>{"input_ids"});
}

TEST_CASE("gpt2, bert and vit layers", "[hf]") {
  Model g = layers_of("gpt2");
  CHECK(g.layers[0].attrs.at("shape").text == "1024");  // default: min(2048, n_positions)
  CHECK(find(g, "transformer.h.0.attn.c_attn")->kind == "gpt2_conv1d");
  CHECK(find(g, "transformer.h.0.attn.split")->attrs.at("chunks").text == "3");
  CHECK(find(g, "transformer.h.0.mlp.act")->kind == "gelu_new");
  CHECK(find(g, "transformer.wpe")->attrs.at("positions").text == "true");
  CHECK(find(g, "transformer.h.0.attn.sdpa")->attrs.at("dropout").text == "0.1");
  CHECK(find(g, "transformer.drop") != nullptr);
  CHECK(find(g, "lm_head")->attrs.at("tied_to").text == "transformer.wte");

  Model b = layers_of("bert-base-uncased");
  CHECK(b.layers[0].attrs.at("shape").text == "512");
  CHECK(find(b, "bert.encoder.layer.11.output.LayerNorm") != nullptr);
  CHECK(find(b, "bert.encoder.layer.0.attention.self.sdpa")->attrs.at("causal").text == "false");
  CHECK(find(b, "cls.predictions.decoder")->attrs.at("tied_to").text == "bert.embeddings.word_embeddings");
  CHECK(b.layers.back().kind == "masked_lm_loss");
  memfit::HfOptions cls;
  cls.head = memfit::HfHead::cls;
  Model bc = layers_of("bert-base-uncased", cls);
  CHECK(find(bc, "bert.pooler.dense") != nullptr);
  CHECK(find(bc, "classifier")->attrs.at("out_features").text == "2");  // PretrainedConfig's num_labels default
  CHECK(bc.layers.back().kind == "cross_entropy");
  // BertForSequenceClassification: BertModel with its pooler, + classifier D*2+2
  CHECK(count_params(bc) == 109514298 - (768 * 768 + 768) - 2 * 768 - 30522 + (768 * 768 + 768) + (768 * 2 + 2));

  Model v = layers_of("vit-base-patch16-224");
  CHECK(v.layers[0].attrs.at("shape").text == "3x224x224");
  CHECK(find(v, "vit.embeddings.position_embeddings")->attrs.at("shape").text == "1x197x768");
  CHECK(find(v, "vit.encoder.layer.0.layernorm_before") != nullptr);
  CHECK(find(v, "classifier")->attrs.at("out_features").text == "1000");
  // hidden_dropout_prob and attention_probs_dropout_prob are 0.0: no dropout layers
  for (const auto& l : v.layers) CHECK(l.kind != "dropout");
}

TEST_CASE("config errors name the field, its line and what to do", "[hf][errors]") {
  SECTION("unknown model_type lists the supported ones") {
    std::string e = error_of("{\n  \"model_type\": \"t5\",\n  \"d_model\": 512\n}\n", "t5.json");
    CHECK_THAT(e, Catch::Contains("t5.json:2"));
    CHECK_THAT(e, Catch::Contains("\"t5\""));
    CHECK_THAT(e, Catch::Contains("llama, mistral, qwen2, gpt2, bert, vit"));
  }
  SECTION("a missing size") {
    std::string e = error_of(tiny_llama("", "hidden_size"), "c.json");
    CHECK_THAT(e, Catch::Contains("c.json"));
    CHECK_THAT(e, Catch::Contains("\"hidden_size\" is missing"));
  }
  SECTION("a size that is not a whole number, with its line") {
    std::string e = error_of(tiny_llama("  \"head_dim\": 16.5"), "c.json");
    CHECK_THAT(e, Catch::Contains("c.json:13"));
    CHECK_THAT(e, Catch::Contains("\"head_dim\" is 16.5"));
    CHECK_THAT(error_of(tiny_llama("  \"head_dim\": \"16\""), "c.json"), Catch::Contains("whole number"));
    CHECK_THAT(error_of(tiny_llama("  \"head_dim\": 99999999999"), "c.json"), Catch::Contains("whole number from 1 to"));
    CHECK_THAT(error_of(tiny_llama("  \"head_dim\": -4"), "c.json"), Catch::Contains("\"head_dim\""));
  }
  SECTION("grouped-query heads that do not divide") {
    std::string e = error_of(tiny_llama("", "num_key_value_heads") .replace(0, 1, "{\"num_key_value_heads\": 3,"), "c.json");
    CHECK_THAT(e, Catch::Contains("\"num_key_value_heads\" (3) does not divide num_attention_heads (4)"));
  }
  SECTION("--seq beyond max_position_embeddings") {
    memfit::HfOptions o;
    o.seq = 257;
    std::string e = error_of(tiny_llama(), "c.json", o);
    CHECK_THAT(e, Catch::Contains("--seq 257 is longer than the model's max_position_embeddings (256)"));
    CHECK_THAT(e, Catch::Contains("--seq 256 or less"));
  }
  SECTION("an unsupported architecture or activation, a wrong type, a dropout of 1") {
    CHECK_THAT(error_of(tiny_llama("  \"architectures\": [\"LlamaForSequenceClassification\"]"), "c.json"),
               Catch::Contains("LlamaForCausalLM"));
    CHECK_THAT(error_of(tiny_llama("  \"hidden_act\": \"gelu\""), "c.json"), Catch::Contains("\"hidden_act\""));
    CHECK_THAT(error_of(tiny_llama("  \"tie_word_embeddings\": \"yes\"", "tie_word_embeddings"), "c.json"),
               Catch::Contains("\"tie_word_embeddings\" is \"yes\", expected true or false"));
    // the JSON reader's own refusals hold for configs too
    CHECK_THAT(error_of(tiny_llama("  \"vocab_size\": 5"), "c.json"), Catch::Contains("appears twice"));
    CHECK_THAT(error_of(tiny_llama("  \"attention_dropout\": 1.0"), "c.json"), Catch::Contains("\"attention_dropout\" is 1.0"));
    CHECK_THAT(error_of(tiny_llama("  \"pretraining_tp\": 2"), "c.json"), Catch::Contains("pretraining_tp"));
  }
  SECTION("Mistral's sliding window and ViT's fixed sequence") {
    memfit::HfOptions o;
    o.seq = 4096;
    std::string e = error_of(config("mistral-7b-v0.1").text, "models/hf/mistral-7b-v0.1.json", o);
    CHECK_THAT(e, Catch::Contains("mistral-7b-v0.1.json:18"));
    CHECK_THAT(e, Catch::Contains("--seq 4095 or less"));
    o.seq = 100;
    CHECK_THAT(error_of(config("vit-base-patch16-224").text, "vit.json", o), Catch::Contains("197 tokens"));
  }
  SECTION("settings for a config on a memfit model are refused") {
    memfit::HfOptions o;
    o.seq = 128;
    std::string e = error_of(config("resnet18").text, "models/resnet18.memfit", o);
    CHECK_THAT(e, Catch::Contains("--seq applies to a Hugging Face config.json"));
    o = {};
    o.head = memfit::HfHead::mlm;
    CHECK_THAT(error_of(config("gpt2").text, "gpt2.json", o), Catch::Contains("--head applies to BERT"));
  }
  SECTION("a JSON object with layers stays a memfit model") {
    std::string e = error_of("{\"model_type\": \"llama\", \"layers\": 3}", "m.json");
    CHECK_THAT(e, Catch::Contains("\"layers\" must be an array"));
  }
  SECTION("hostile values are refused before any work") {
    // 2^31 layers would be ~60 billion memfit layers: refused at the model's layer limit, quickly
    CHECK_THAT(error_of(tiny_llama("", "num_hidden_layers").replace(0, 1, "{\"num_hidden_layers\": 2147483648,"), "c.json"),
               Catch::Contains("more than 200,000 memfit layers"));
    CHECK_THAT(error_of("{\"model_type\": 5}", "c.json"), Catch::Contains("\"model_type\" is 5, expected a string"));
    CHECK_THAT(error_of(tiny_llama("  \"architectures\": \"LlamaForCausalLM\""), "c.json"),
               Catch::Contains("expected a list of class names"));
    CHECK_THAT(error_of(tiny_llama("  \"attention_dropout\": -0.5"), "c.json"), Catch::Contains("\"attention_dropout\" is -0.5, outside [0.0, 1.0)"));
    CHECK_THAT(error_of(tiny_llama("  \"rms_norm_eps\": 1e400", "rms_norm_eps"), "c.json"), Catch::Contains("beyond the range of a double"));
    CHECK_THAT(error_of(tiny_llama("  \"head_dim\": 15"), "c.json"), Catch::Contains("odd: rotate_half"));
  }
  SECTION("the request API reads seq, attention and head") {
    nlohmann::json req{{"command", "model"}, {"model", config("llama-3.1-8b").text}, {"file", "llama.json"},
                       {"options", {{"seq", 200000}}}};
    std::string out = memfit::handle_request(req.dump());
    CHECK_THAT(out, Catch::Contains("--seq 200000 is longer than the model's max_position_embeddings (131072)"));
    req["options"] = {{"attention", "flash"}};
    CHECK_THAT(memfit::handle_request(req.dump()), Catch::Contains("unknown attention implementation 'flash'"));
    req["options"] = {{"head", "mlm"}};
    CHECK_THAT(memfit::handle_request(req.dump()), Catch::Contains("--head applies to BERT"));
  }
  SECTION("option strings") {
    memfit::OptionStrings s;
    s.seq = "0";
    CHECK_THROWS_WITH(memfit::make_options(s), Catch::Contains("--seq 2048"));
    s.seq = "2048";
    s.attention = "flash";
    CHECK_THROWS_WITH(memfit::make_options(s), Catch::Contains("use sdpa"));
    s.attention = "eager";
    s.head = "mlm";
    memfit::Options o = memfit::make_options(s);
    CHECK(o.seq == 2048);
    CHECK(o.attention == memfit::HfAttention::eager);
    CHECK(o.head == memfit::HfHead::mlm);
  }
}

TEST_CASE("the default sequence length is said in the notes", "[hf]") {
  Model m = layers_of("llama-3.1-8b");
  CHECK(m.layers[0].attrs.at("shape").text == "2048");
  REQUIRE(!m.notes.empty());
  CHECK_THAT(m.notes[0], Catch::Contains("sequence length 2048 tokens (the default"));
}

// Needs the transformer kinds (core/src/ops/transformer.cpp): a config runs once every kind it uses is
// registered (ViT also needs `parameter` and `expand`).
TEST_CASE("every shipped config estimates", "[hf][models]") {
  const std::map<std::string, i64> published{{"gpt2", 124439808},           {"bert-base-uncased", 109514298},
                                             {"llama-3.2-1b", 1235814400},  {"llama-3.2-3b", 3212749824},
                                             {"llama-3.1-8b", 8030261248},  {"mistral-7b-v0.1", 7241732096},
                                             {"llama-3.1-70b", 70553706496}, {"vit-base-patch16-224", 86567656}};
  for (const auto& b : memfit::builtin_hf_configs()) {
    INFO(b.name);
    memfit::Options o;
    o.train.batch = 1;
    if (std::string(b.name) != "vit-base-patch16-224") o.seq = 256;
    std::string missing;
    for (const Layer& l : memfit::parse_hf_config_unresolved(b.text, b.path, o.hf()).layers)
      if (!memfit::find_op(l.kind)) missing = l.kind;
    if (!missing.empty()) {
      WARN(b.name << ": layer kind '" << missing << "' is not registered yet: not estimated");
      continue;
    }
    static std::deque<Model> kept;  // an Estimate points into its Model
    kept.push_back(memfit::parse_model(b.text, b.path, o.hf()));
    memfit::Estimate e = memfit::estimate(kept.back(), o);
    REQUIRE(published.count(b.name));
    CHECK(e.total_params == published.at(b.name));
    CHECK(e.peak_allocated_bytes > 0);
  }
}

// A tiny config against tkinds' hand-written twin of the same model (tests/fixtures/transformers/,
// written from transformers' eager code and checked against CPU runs of tools/transformer_fixtures.py):
// built from the config, the same model must estimate to the same bytes.
TEST_CASE("tiny configs estimate as the hand-written transformer twins", "[hf][twins]") {
  for (const char* kind : {"embedding", "rms_norm", "rotary_embedding", "rotary", "repeat_kv", "scale", "attn_mask",
                           "gpt2_conv1d", "gelu_new", "causal_lm_loss", "parameter", "expand"})
    if (!memfit::find_op(kind)) {
      WARN("layer kind '" << kind << "' is not registered yet: twins not compared");
      return;
    }
  // tools/transformer_fixtures.py: D=32, T=16, vocab 100, 2 layers, 4 heads (llama: 2 kv heads,
  // intermediate 64), dropout 0, eager attention, llama's lm_head untied, GPT-2's tied.
  const std::map<std::string, std::string> configs{
      {"llama_tiny",
       R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 16, "tie_word_embeddings": false})"},
      {"gpt2_tiny",
       R"({"model_type": "gpt2", "vocab_size": 100, "n_embd": 32, "n_head": 4, "n_layer": 2, "n_positions": 16,
           "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0})"},
      // vit_tiny: images 3x16x16 in 4x4 patches (17 tokens), intermediate 128, 10 labels
      {"vit_tiny",
       R"({"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
           "image_size": 16, "patch_size": 4, "num_channels": 3, "num_labels": 10, "hidden_dropout_prob": 0.0,
           "attention_probs_dropout_prob": 0.0})"}};
  for (const auto& [twin, json] : configs) {
    INFO(twin);
    std::ifstream in(std::string(MEMFIT_SOURCE_DIR) + "/tests/fixtures/transformers/" + twin + ".memfit");
    if (!in) {
      WARN("no twin " << twin);
      continue;
    }
    std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    memfit::Options o;
    o.train.batch = 2;
    o.seq = twin == "vit_tiny" ? 0 : 16;  // ViT's sequence comes from image_size / patch_size
    o.attention = memfit::HfAttention::eager;
    static std::deque<Model> kept;  // an Estimate points into its Model
    kept.push_back(memfit::parse_model(json, twin + ".json", o.hf()));
    kept.push_back(memfit::parse_model(text, twin + ".memfit"));
    memfit::Options plain = o;
    plain.seq = 0;
    plain.attention.reset();
    memfit::Estimate a = memfit::estimate(kept[kept.size() - 2], o);
    memfit::Estimate b = memfit::estimate(kept.back(), plain);
    CHECK(a.total_params == b.total_params);
    CHECK(a.total_saved_bytes == b.total_saved_bytes);
    CHECK(a.peak_allocated_bytes == b.peak_allocated_bytes);
    CHECK(a.peak_reserved_bytes == b.peak_reserved_bytes);
  }
}

// Qwen2Attention: q/k/v with bias, o_proj without (modeling_qwen2.py); MistralAttention: no biases;
// Llama: attention_bias for all four, mlp_bias for the MLP.
TEST_CASE("biases per family", "[hf]") {
  auto bias = [](const std::string& json, const std::string& layer) {
    Model m = memfit::parse_hf_config_unresolved(json, "c.json", {});
    const Layer* l = find(m, layer);
    REQUIRE(l != nullptr);
    return l->attrs.at("bias").text;
  };
  const std::string base = R"("vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64)";
  const std::string qwen = "{\"model_type\": \"qwen2\", " + base + "}";
  CHECK(bias(qwen, "model.layers.0.self_attn.q_proj") == "true");
  CHECK(bias(qwen, "model.layers.0.self_attn.v_proj") == "true");
  CHECK(bias(qwen, "model.layers.0.self_attn.o_proj") == "false");
  CHECK(bias(qwen, "model.layers.0.mlp.gate_proj") == "false");
  const std::string mistral = "{\"model_type\": \"mistral\", \"attention_bias\": true, " + base + "}";
  CHECK(bias(mistral, "model.layers.0.self_attn.q_proj") == "false");
  const std::string llama = "{\"model_type\": \"llama\", \"attention_bias\": true, \"mlp_bias\": true, " + base + "}";
  CHECK(bias(llama, "model.layers.0.self_attn.o_proj") == "true");
  CHECK(bias(llama, "model.layers.0.mlp.down_proj") == "true");
  // 1 layer: 32*32 + 2 * 32*16 + 32*32 (+ biases 32 + 16 + 16 for qwen2's q/k/v) + 3*32*64 + 2*32 + 32 + 100*32 * 2
  const i64 plain = 32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 64 + 2 * 32 + 32 + 2 * 100 * 32;
  CHECK(count_params(memfit::parse_hf_config_unresolved(qwen, "c.json", {})) == plain + 32 + 16 + 16);
}
