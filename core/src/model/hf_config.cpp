// A Hugging Face config.json -> memfit::Model: the layers transformers' modeling code runs in a
// training step (model.train(), labels given, no padding mask), one memfit layer per tensor op that
// allocates or is a view, named by the module path it runs in (docs/hf-config.md).
//
// Followed, per family (huggingface/transformers, the v4.5x modular modeling files):
//   llama, mistral, qwen2: src/transformers/models/{llama,mistral,qwen2}/modeling_*.py
//     (LlamaForCausalLM, LlamaModel, LlamaDecoderLayer, LlamaAttention, LlamaMLP, LlamaRMSNorm,
//      LlamaRotaryEmbedding) and src/transformers/integrations/sdpa_attention.py;
//   gpt2: src/transformers/models/gpt2/modeling_gpt2.py (GPT2LMHeadModel, GPT2Block, GPT2Attention,
//     GPT2MLP; Conv1D from pytorch_utils.py);
//   bert: src/transformers/models/bert/modeling_bert.py (BertEmbeddings, BertLayer, BertForMaskedLM
//     with BertLMPredictionHead, BertForSequenceClassification with BertPooler);
//   vit: src/transformers/models/vit/modeling_vit.py (ViTEmbeddings, ViTPatchEmbeddings, ViTLayer,
//     ViTForImageClassification).
// The layer kinds and their options are the transformer contract of core/src/ops/transformer.cpp.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <set>

#include "memfit/hf_config.hpp"
#include "memfit/ops.hpp"
#include "model_parse.hpp"

namespace memfit {

namespace {

using json = nlohmann::json;

// Every size read from a config is at most 2^31: the largest real ones (vocab_size 256,000,
// intermediate_size 53,248) are far below, and products of three of them stay inside int64, so a
// typo (hidden_size 1e15) is refused here with its field's name instead of overflowing later.
constexpr i64 kMaxConfigInt = i64{1} << 31;

const char* const kModelTypes = "llama, mistral, qwen2, gpt2, bert, vit";

// A config's top-level fields, read with their positions (the value's line in config.json).
class Cfg {
 public:
  Cfg(const json& j, const std::map<std::string, SourcePos>& pos, std::string file)
      : j_(j), pos_(pos), file_(std::move(file)) {}

  SourcePos at(const std::string& key) const {
    auto it = pos_.find(key);
    return it != pos_.end() ? it->second : SourcePos{file_, 1, 1};
  }
  const std::string& file() const { return file_; }
  // Present and not null: transformers treats `"n_inner": null` as absent.
  bool has(const std::string& key) const { return j_.contains(key) && !j_[key].is_null(); }
  const json& raw(const std::string& key) const { return j_[key]; }

  [[noreturn]] void bad(const std::string& key, const std::string& problem, const std::string& fix) const {
    throw Error(at(key), "", "config field \"" + key + "\" " + problem, fix);
  }

  i64 integer(const std::string& key) const {
    if (!has(key)) bad(key, "is missing", "add it from the model's published config.json (e.g. \"" + key + "\": 768)");
    return int_value(key, 1);
  }
  i64 integer_or(const std::string& key, i64 fallback, i64 lo = 1) const { return has(key) ? int_value(key, lo) : fallback; }

  bool boolean_or(const std::string& key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_boolean()) bad(key, "is " + shown(key) + ", expected true or false", "write \"" + key + "\": true");
    return j_[key].get<bool>();
  }

  std::string text_or(const std::string& key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_string()) bad(key, "is " + shown(key) + ", expected a string", "write e.g. \"" + key + "\": \"" + fallback + "\"");
    return j_[key].get<std::string>();
  }

  // A real as the config spells it (1e-05 stays "1e-05"), in [lo, hi) (hi exclusive when `open`).
  std::string real_or(const std::string& key, const char* fallback, double lo, double hi, bool open_hi) const {
    if (!has(key)) return fallback;
    const json& v = j_[key];
    if (!v.is_number()) bad(key, "is " + shown(key) + ", expected a number", std::string("write e.g. \"") + key + "\": " + fallback);
    double d = v.get<double>();
    if (!std::isfinite(d) || d < lo || (open_hi ? d >= hi : d > hi))
      bad(key, "is " + v.dump() + ", outside [" + json(lo).dump() + ", " + json(hi).dump() + (open_hi ? ")" : "]"),
          std::string("give a value in that range, e.g. \"") + key + "\": " + fallback);
    return v.dump();
  }

  std::string shown(const std::string& key) const {
    std::string s = j_[key].dump(-1, ' ', true);
    return s.size() > 40 ? s.substr(0, 37) + "..." : s;
  }

 private:
  i64 int_value(const std::string& key, i64 lo) const {
    const json& v = j_[key];
    i64 out = 0;
    bool ok = v.is_number_integer() && !(v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(kMaxConfigInt));
    if (ok) out = v.get<i64>();
    if (!ok || out < lo || out > kMaxConfigInt)
      bad(key, "is " + shown(key) + ", expected a whole number from " + std::to_string(lo) + " to " + format_count(kMaxConfigInt),
          "use the value from the model's published config.json");
    return out;
  }

  const json& j_;
  const std::map<std::string, SourcePos>& pos_;
  std::string file_;
};

// An attribute as text (the text format's spelling) and the config field it came from.
struct AttrText {
  const char* key;
  std::string text;
  std::string field;  // "" = not from one field (positions then point at model_type)
};

class Builder {
 public:
  Builder(const Cfg& c, std::string name) : c_(c) {
    m_.name = std::move(name);
    m_.file = c.file();
    pos_ = c.at("model_type");
  }

  // Adds a layer reading `from` (default: the previous layer); returns its name.
  std::string add(const std::string& name, const char* kind, std::vector<AttrText> attrs, std::vector<std::string> from = {}) {
    if (static_cast<i64>(m_.layers.size()) >= kMaxLayers)
      throw Error(c_.at(layers_field_), "", "the config gives more than " + format_count(kMaxLayers) + " memfit layers",
                  "memfit refuses models this large; check \"" + layers_field_ + "\"");
    Layer l;
    l.name = name;
    l.kind = kind;
    l.pos = pos_;
    // the input and a module's nn.Parameter read no layer
    if (std::string(kind) != "input" && std::string(kind) != "parameter") l.inputs = from.empty() ? std::vector<std::string>{m_.layers.back().name} : std::move(from);
    for (auto& a : attrs) {
      Value v;
      v.type = Value::Type::text;
      v.text = std::move(a.text);
      v.pos = a.field.empty() ? pos_ : c_.at(a.field);
      l.attrs[a.key] = std::move(v);
    }
    m_.layers.push_back(std::move(l));
    return m_.layers.back().name;
  }
  std::string last() const { return m_.layers.back().name; }
  void note(std::string s) { m_.notes.push_back(std::move(s)); }
  void set_layers_field(std::string f) { layers_field_ = std::move(f); }
  Model take() { return std::move(m_); }

 private:
  const Cfg& c_;
  Model m_;
  SourcePos pos_;
  std::string layers_field_ = "num_hidden_layers";
};

std::string str(i64 v) { return std::to_string(v); }
AttrText I(const char* key, i64 v, std::string field = "") { return {key, str(v), std::move(field)}; }
AttrText B(const char* key, bool v, std::string field = "") { return {key, v ? "true" : "false", std::move(field)}; }
AttrText T(const char* key, std::string v, std::string field = "") { return {key, std::move(v), std::move(field)}; }

bool positive_p(const std::string& p) { return std::strtod(p.c_str(), nullptr) > 0.0; }

// nn.Dropout in train mode; p = 0 is not emitted: at::dropout returns its input unchanged when p is 0
// (aten/src/ATen/native/Dropout.cpp, _dropout_impl: `if (p == 0 || !train || input.sym_numel() == 0)
// return input;`), so no mask and no copy exist.
void dropout(Builder& b, const std::string& name, const std::string& p, const std::string& field) {
  if (positive_p(p)) b.add(name, "dropout", {T("p", p, field)});
}

// The architecture the config is trained as: its "architectures" entry, or the family's default.
std::string architecture(const Cfg& c, Builder& b, const std::vector<std::string>& supported) {
  if (!c.has("architectures")) {
    b.note("the config names no \"architectures\": built as " + supported[0]);
    return supported[0];
  }
  const json& a = c.raw("architectures");
  std::string list;
  for (const auto& s : supported) list += (list.empty() ? "" : ", ") + s;
  if (!a.is_array() || a.empty() || !a[0].is_string())
    c.bad("architectures", "is " + c.shown("architectures") + ", expected a list of class names", "write e.g. \"architectures\": [\"" + supported[0] + "\"]");
  std::string name = a[0].get<std::string>();
  for (const auto& s : supported)
    if (name == s) return name;
  c.bad("architectures", "names " + name + ", which memfit does not build for this model_type",
        "memfit builds " + list + " (docs/hf-config.md); set \"architectures\" to one of them");
}

// The tokens per sample: --seq, or min(kDefaultSeq, max_position_embeddings).
i64 sequence(const Cfg& c, Builder& b, const HfOptions& o, const std::string& max_field) {
  i64 max_pos = c.integer(max_field);
  if (o.seq == 0) {
    i64 seq = std::min(kDefaultSeq, max_pos);
    b.note("sequence length " + str(seq) + " tokens (the default: " + str(kDefaultSeq) + ", at most \"" + max_field +
           "\"); --seq T sets it");
    return seq;
  }
  if (o.seq > max_pos)
    throw Error(c.at(max_field), "",
                "--seq " + str(o.seq) + " is longer than the model's " + max_field + " (" + str(max_pos) + ")",
                "give --seq " + str(max_pos) + " or less (the position embeddings / RoPE range end there)");
  return o.seq;
}

// ACT2FN names (src/transformers/activations.py) memfit has a kind for.
void activation(Builder& b, const Cfg& c, const std::string& name, const std::string& act, const std::string& field) {
  if (act == "gelu") b.add(name, "gelu", {T("approximate", "none")});  // GELUActivation: nn.functional.gelu
  else if (act == "gelu_pytorch_tanh") b.add(name, "gelu", {T("approximate", "tanh")});  // PytorchGELUTanh
  else if (act == "gelu_new") b.add(name, "gelu_new", {});  // NewGELUActivation (its own composite)
  else if (act == "relu") b.add(name, "relu", {});
  else if (act == "silu" || act == "swish") b.add(name, "silu", {});  // nn.SiLU
  else
    c.bad(field, "is \"" + act + "\", an activation memfit does not model",
          "use gelu, gelu_new, gelu_pytorch_tanh, relu or silu (docs/hf-config.md)");
}

// The attention core after q, k, v are [N, heads, T, head_dim]: transformers' sdpa_attention_forward
// or eager_attention_forward, then `attn_output.transpose(1, 2).contiguous()` and
// `reshape(*input_shape, -1)` back to [N, T, heads * head_dim].
struct AttnSpec {
  std::string prefix;         // "model.layers.0.self_attn"
  std::string q, k, v;        // layer names
  i64 heads = 0, kv_heads = 0, head_dim = 0;
  bool causal = true;
  std::string dropout = "0";  // attention probabilities' dropout (training)
  std::string dropout_field;
  HfAttention impl = HfAttention::sdpa;
  // eager only: the additive mask layer ("" = none, ViT) and GPT-2's division by a 0-d tensor
  std::string mask;
  bool scale_by_tensor = false;
  // Llama's eager_attention_forward: softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype);
  // GPT-2, BERT and ViT call a plain softmax
  bool float32_softmax = false;
};

void attention_core(Builder& b, const AttnSpec& a) {
  const std::string& p = a.prefix;
  if (a.impl == HfAttention::sdpa) {
    // integrations/sdpa_attention.py: with torch >= 2.5 and no attention mask (training without
    // padding: the model's mask is None and is_causal=True), GQA goes to SDPA as enable_gqa=True
    // instead of repeat_kv (use_gqa_in_sdpa); dropout_p is the module's attention dropout in training.
    b.add(p + ".sdpa", "sdpa",
          {B("causal", a.causal), T("dropout", a.dropout, a.dropout_field), T("backend", "auto"),
           B("enable_gqa", a.kv_heads != a.heads, "num_key_value_heads")},
          {a.q, a.k, a.v});
  } else {
    // eager_attention_forward: repeat_kv, matmul(q, k^T) * scaling, + the mask, softmax (Llama's in
    // float32, then cast back to q's dtype: `to dtype=compute`), dropout, matmul with v, then
    // transpose(1, 2).contiguous().
    std::string k = a.k, v = a.v;
    if (a.kv_heads != a.heads) {
      i64 n_rep = a.heads / a.kv_heads;
      k = b.add(p + ".repeat_k", "repeat_kv", {I("n_rep", n_rep, "num_key_value_heads")}, {a.k});
      v = b.add(p + ".repeat_v", "repeat_kv", {I("n_rep", n_rep, "num_key_value_heads")}, {a.v});
    }
    b.add(p + ".key_t", "transpose", {I("dim0", 2), I("dim1", 3)}, {k});
    b.add(p + ".scores", "matmul", {}, {a.q, p + ".key_t"});
    // self.scaling = head_dim ** -0.5 (LlamaAttention, ViTSelfAttention; BERT divides by
    // math.sqrt(head_dim)); GPT-2: attn_weights / torch.full([], value.size(-1) ** 0.5)
    const double root = std::sqrt(static_cast<double>(a.head_dim));
    char scale[32];
    std::snprintf(scale, sizeof scale, "%.17g", a.scale_by_tensor ? root : 1.0 / root);
    b.add(p + ".scale", "scale", {T("factor", scale, "num_attention_heads"), B("tensor", a.scale_by_tensor)});
    if (!a.mask.empty()) b.add(p + ".mask_add", "add", {}, {p + ".scale", a.mask});
    if (a.float32_softmax) {
      b.add(p + ".softmax", "softmax", {I("dim", -1), T("dtype", "float32")});
      b.add(p + ".softmax_to_query_dtype", "to", {T("dtype", "compute")});
    } else {
      b.add(p + ".softmax", "softmax", {I("dim", -1)});
    }
    dropout(b, p + ".attn_dropout", a.dropout, a.dropout_field);
    b.add(p + ".context", "matmul", {}, {b.last(), v});
    if (a.scale_by_tensor) {
      // GPT-2's own eager_attention_forward returns attn_output.transpose(1, 2) without
      // contiguous(); GPT2Attention then does reshape(*shape[:-2], -1).contiguous(): the reshape copies
      b.add(p + ".out_transpose", "transpose", {I("dim0", 1), I("dim1", 2)});
      b.add(p + ".out_reshape", "reshape", {T("shape", "-1x" + str(a.heads * a.head_dim))});
      b.add(p + ".out_contiguous", "contiguous", {});
      return;
    }
  }
  b.add(p + ".out_transpose", "transpose", {I("dim0", 1), I("dim1", 2)});
  b.add(p + ".out_contiguous", "contiguous", {});
  b.add(p + ".out_reshape", "reshape", {T("shape", "-1x" + str(a.heads * a.head_dim))});
}

// q/k/v projections viewed as heads: proj(x).view(*input_shape, -1, head_dim).transpose(1, 2), here
// with the heads written and T inferred (the same view). Named `name`_view, `name`_transpose.
std::string heads_of(Builder& b, const std::string& from, const std::string& name, i64 heads, i64 head_dim) {
  b.add(name + "_view", "reshape", {T("shape", "-1x" + str(heads) + "x" + str(head_dim))}, {from});
  return b.add(name + "_transpose", "transpose", {I("dim0", 1), I("dim1", 2)});
}

// ---- llama, mistral, qwen2: LlamaForCausalLM and its copies (Mistral: no biases, a sliding window;
// Qwen2: q/k/v with bias, o_proj without).
Model build_llama(const Cfg& c, const HfOptions& o, const std::string& name) {
  const std::string type = c.text_or("model_type", "llama");
  Builder b(c, name);
  const std::string arch_default = type == "llama" ? "LlamaForCausalLM" : type == "mistral" ? "MistralForCausalLM" : "Qwen2ForCausalLM";
  architecture(c, b, {arch_default});
  if (o.head) throw Error(c.at("model_type"), "", "--head applies to BERT configs", "remove --head (a " + type + " config is a causal LM)");
  const i64 vocab = c.integer("vocab_size"), hidden = c.integer("hidden_size"), inter = c.integer("intermediate_size");
  const i64 n_layers = c.integer("num_hidden_layers"), heads = c.integer("num_attention_heads");
  const i64 kv_heads = c.integer_or("num_key_value_heads", heads);  // LlamaConfig: None -> num_attention_heads
  if (heads % kv_heads != 0)
    c.bad("num_key_value_heads", "(" + str(kv_heads) + ") does not divide num_attention_heads (" + str(heads) + ")",
          "grouped-query attention needs num_attention_heads = k * num_key_value_heads");
  // getattr(config, "head_dim", hidden_size // num_attention_heads) in LlamaAttention.__init__
  if (!c.has("head_dim") && hidden % heads != 0)
    c.bad("num_attention_heads", "(" + str(heads) + ") does not divide hidden_size (" + str(hidden) + ")", "add \"head_dim\" or fix the sizes");
  const i64 head_dim = c.integer_or("head_dim", hidden / heads);
  if (head_dim % 2 != 0) c.bad("head_dim", "is " + str(head_dim) + ", odd: rotate_half splits it in two", "use an even head_dim");
  if (c.integer_or("pretraining_tp", 1) != 1)
    c.bad("pretraining_tp", "is " + c.shown("pretraining_tp") + "; the sliced-weight forward of pretraining_tp > 1 is not modelled",
          "set \"pretraining_tp\": 1 (what fine-tuning uses)");
  const std::string act = c.text_or("hidden_act", "silu");
  if (act != "silu") c.bad("hidden_act", "is \"" + act + "\"; LlamaMLP is modelled with silu", "use \"silu\"");
  const std::string eps = c.real_or("rms_norm_eps", "1e-06", 0, 1, true);  // LlamaConfig default 1e-6
  const std::string theta = c.real_or("rope_theta", "10000.0", 0, 1e300, false);
  const std::string attn_drop = c.real_or("attention_dropout", "0.0", 0, 1, true);
  const bool tie = c.boolean_or("tie_word_embeddings", false);  // LlamaConfig default False
  // Biases: Llama's attention_bias/mlp_bias (default false); Mistral none; Qwen2 q/k/v always.
  const bool qkv_bias = type == "qwen2" ? true : type == "llama" ? c.boolean_or("attention_bias", false) : false;
  const bool o_bias = type == "llama" ? c.boolean_or("attention_bias", false) : false;
  const bool mlp_bias = type == "llama" ? c.boolean_or("mlp_bias", false) : false;
  const HfAttention impl = o.attention.value_or(HfAttention::sdpa);
  const i64 seq = sequence(c, b, o, "max_position_embeddings");
  // A sliding window narrower than the sequence makes transformers build a mask tensor
  // (masking_utils: the causal-mask skip needs kv_length < local_attention_size): not modelled.
  bool window = type == "mistral" ? c.has("sliding_window") : type == "qwen2" ? c.boolean_or("use_sliding_window", false) : false;
  if (window) {
    i64 w = c.integer("sliding_window");
    if (seq >= w)
      throw Error(c.at("sliding_window"), "",
                  "--seq " + str(seq) + " reaches the sliding window (" + str(w) + "): transformers then builds a [N, 1, T, T] "
                  "attention mask, which memfit does not model",
                  "give --seq " + str(w - 1) + " or less");
  }
  if (c.has("rope_scaling")) b.note("rope_scaling changes the RoPE frequencies, not what is allocated");

  b.add("input_ids", "input", {I("shape", seq), T("dtype", "int64")});
  // LlamaModel: nn.Embedding(vocab_size, hidden_size, padding_idx=config.pad_token_id)
  std::vector<AttrText> emb{I("num_embeddings", vocab, "vocab_size"), I("embedding_dim", hidden, "hidden_size")};
  if (c.has("pad_token_id")) emb.push_back(I("padding_idx", c.integer_or("pad_token_id", -1, 0), "pad_token_id"));
  std::string h = b.add("model.embed_tokens", "embedding", emb);
  // eager: create_causal_mask's additive [N, 1, T, T] mask, once per forward (masking_utils.py eager_mask)
  if (impl == HfAttention::eager) b.add("model.causal_mask", "attn_mask", {B("causal", true)}, {"input_ids"});
  // position_embeddings = self.rotary_emb(hidden_states, position_ids): cos, sin once per forward
  b.add("model.rotary_emb", "rotary_embedding", {I("head_dim", head_dim, "head_dim"), T("theta", theta, "rope_theta")}, {h});
  for (i64 i = 0; i < n_layers; ++i) {
    const std::string p = "model.layers." + str(i);
    std::string norm = b.add(p + ".input_layernorm", "rms_norm",
                             {I("normalized_shape", hidden, "hidden_size"), T("eps", eps, "rms_norm_eps"), T("impl", "hf")}, {h});
    const std::string a = p + ".self_attn";
    b.add(a + ".q_proj", "linear", {I("out_features", heads * head_dim, "num_attention_heads"), B("bias", qkv_bias, "attention_bias")}, {norm});
    std::string q = heads_of(b, a + ".q_proj", a + ".q", heads, head_dim);
    b.add(a + ".k_proj", "linear", {I("out_features", kv_heads * head_dim, "num_key_value_heads"), B("bias", qkv_bias, "attention_bias")}, {norm});
    std::string k = heads_of(b, a + ".k_proj", a + ".k", kv_heads, head_dim);
    b.add(a + ".v_proj", "linear", {I("out_features", kv_heads * head_dim, "num_key_value_heads"), B("bias", qkv_bias, "attention_bias")}, {norm});
    std::string v = heads_of(b, a + ".v_proj", a + ".v", kv_heads, head_dim);
    // apply_rotary_pos_emb(q, k, cos, sin)
    q = b.add(a + ".q_rotary", "rotary", {}, {q, "model.rotary_emb:0", "model.rotary_emb:1"});
    k = b.add(a + ".k_rotary", "rotary", {}, {k, "model.rotary_emb:0", "model.rotary_emb:1"});
    attention_core(b, {a, q, k, v, heads, kv_heads, head_dim, true, attn_drop, "attention_dropout", impl, "model.causal_mask", false, true});
    b.add(a + ".o_proj", "linear", {I("out_features", hidden, "hidden_size"), B("bias", o_bias, "attention_bias")});
    h = b.add(p + ".attn_residual", "add", {}, {h, b.last()});  // hidden_states = residual + hidden_states
    norm = b.add(p + ".post_attention_layernorm", "rms_norm",
                 {I("normalized_shape", hidden, "hidden_size"), T("eps", eps, "rms_norm_eps"), T("impl", "hf")});
    // LlamaMLP: down_proj(act_fn(gate_proj(x)) * up_proj(x))
    const std::string mlp = p + ".mlp";
    b.add(mlp + ".gate_proj", "linear", {I("out_features", inter, "intermediate_size"), B("bias", mlp_bias, "mlp_bias")}, {norm});
    b.add(mlp + ".act_fn", "silu", {});
    b.add(mlp + ".up_proj", "linear", {I("out_features", inter, "intermediate_size"), B("bias", mlp_bias, "mlp_bias")}, {norm});
    b.add(mlp + ".act_mul", "mul", {}, {mlp + ".act_fn", mlp + ".up_proj"});
    b.add(mlp + ".down_proj", "linear", {I("out_features", hidden, "hidden_size"), B("bias", mlp_bias, "mlp_bias")});
    h = b.add(p + ".mlp_residual", "add", {}, {h, b.last()});
  }
  b.add("model.norm", "rms_norm", {I("normalized_shape", hidden, "hidden_size"), T("eps", eps, "rms_norm_eps"), T("impl", "hf")}, {h});
  std::vector<AttrText> head{I("out_features", vocab, "vocab_size"), B("bias", false)};
  if (tie) head.push_back(T("tied_to", "model.embed_tokens", "tie_word_embeddings"));
  b.add("lm_head", "linear", head);
  b.add("loss", "causal_lm_loss", {});
  return b.take();
}

// ---- gpt2: GPT2LMHeadModel.
Model build_gpt2(const Cfg& c, const HfOptions& o, const std::string& name) {
  Builder b(c, name);
  b.set_layers_field("n_layer");
  architecture(c, b, {"GPT2LMHeadModel"});
  if (o.head) throw Error(c.at("model_type"), "", "--head applies to BERT configs", "remove --head (GPT-2 is a causal LM)");
  const HfAttention impl = o.attention.value_or(HfAttention::sdpa);
  if (!c.boolean_or("scale_attn_weights", true) || c.boolean_or("scale_attn_by_inverse_layer_idx", false) ||
      c.boolean_or("reorder_and_upcast_attn", false))
    throw Error(c.at("model_type"), "", "GPT-2's scale_attn_weights=false, scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn is not modelled",
                "use the published GPT-2 settings (scale_attn_weights true, the others false)");
  const i64 vocab = c.integer("vocab_size"), d = c.integer("n_embd"), n_layers = c.integer("n_layer"), heads = c.integer("n_head");
  if (d % heads != 0) c.bad("n_head", "(" + str(heads) + ") does not divide n_embd (" + str(d) + ")", "fix the sizes");
  const i64 inner = c.integer_or("n_inner", 4 * d);  // GPT2MLP: n_inner if not None else 4 * hidden_size
  if (c.boolean_or("add_cross_attention", false))
    c.bad("add_cross_attention", "is true; cross-attention blocks are not modelled", "remove it (GPT2LMHeadModel does not use it)");
  const std::string act = c.text_or("activation_function", "gelu_new");
  const std::string eps = c.real_or("layer_norm_epsilon", "1e-05", 0, 1, true);
  const std::string embd_p = c.real_or("embd_pdrop", "0.1", 0, 1, true);
  const std::string attn_p = c.real_or("attn_pdrop", "0.1", 0, 1, true);
  const std::string resid_p = c.real_or("resid_pdrop", "0.1", 0, 1, true);
  const bool tie = c.boolean_or("tie_word_embeddings", true);  // PretrainedConfig default True
  const i64 seq = sequence(c, b, o, "n_positions");
  const i64 head_dim = d / heads;

  b.add("input_ids", "input", {I("shape", seq), T("dtype", "int64")});
  std::string wte = b.add("transformer.wte", "embedding", {I("num_embeddings", vocab, "vocab_size"), I("embedding_dim", d, "n_embd")});
  // position_embeds = self.wpe(position_ids) with position_ids = arange(T): [1, T, D]
  b.add("transformer.wpe", "embedding",
        {I("num_embeddings", c.integer("n_positions"), "n_positions"), I("embedding_dim", d, "n_embd"), B("positions", true)},
        {"input_ids"});
  std::string h = b.add("transformer.add_positions", "add", {}, {wte, "transformer.wpe"});
  // eager: GPT2Model.forward builds the additive causal mask after the embeddings, before self.drop
  if (impl == HfAttention::eager) b.add("transformer.causal_mask", "attn_mask", {B("causal", true)}, {"input_ids"});
  if (positive_p(embd_p)) h = b.add("transformer.drop", "dropout", {T("p", embd_p, "embd_pdrop")}, {h});
  for (i64 i = 0; i < n_layers; ++i) {
    const std::string p = "transformer.h." + str(i);
    b.add(p + ".ln_1", "layer_norm", {I("normalized_shape", d, "n_embd"), T("eps", eps, "layer_norm_epsilon")}, {h});
    const std::string a = p + ".attn";
    b.add(a + ".c_attn", "gpt2_conv1d", {I("out_features", 3 * d, "n_embd")});
    // query, key, value = self.c_attn(hidden_states).split(self.split_size, dim=2)
    b.add(a + ".split", "chunk", {I("chunks", 3), I("dim", 2)});
    std::string q = heads_of(b, a + ".split:0", a + ".q", heads, head_dim);
    std::string k = heads_of(b, a + ".split:1", a + ".k", heads, head_dim);
    std::string v = heads_of(b, a + ".split:2", a + ".v", heads, head_dim);
    attention_core(b, {a, q, k, v, heads, heads, head_dim, true, attn_p, "attn_pdrop", impl, "transformer.causal_mask", true});
    b.add(a + ".c_proj", "gpt2_conv1d", {I("out_features", d, "n_embd")});
    dropout(b, a + ".resid_dropout", resid_p, "resid_pdrop");
    h = b.add(p + ".attn_residual", "add", {}, {b.last(), h});  // attn_output + residual
    b.add(p + ".ln_2", "layer_norm", {I("normalized_shape", d, "n_embd"), T("eps", eps, "layer_norm_epsilon")});
    b.add(p + ".mlp.c_fc", "gpt2_conv1d", {I("out_features", inner, "n_inner")});
    activation(b, c, p + ".mlp.act", act, "activation_function");
    b.add(p + ".mlp.c_proj", "gpt2_conv1d", {I("out_features", d, "n_embd")});
    dropout(b, p + ".mlp.dropout", resid_p, "resid_pdrop");
    h = b.add(p + ".mlp_residual", "add", {}, {h, b.last()});  // residual + feed_forward_hidden_states
  }
  b.add("transformer.ln_f", "layer_norm", {I("normalized_shape", d, "n_embd"), T("eps", eps, "layer_norm_epsilon")}, {h});
  std::vector<AttrText> head{I("out_features", vocab, "vocab_size"), B("bias", false)};
  if (tie) head.push_back(T("tied_to", "transformer.wte", "tie_word_embeddings"));
  b.add("lm_head", "linear", head);
  b.add("loss", "causal_lm_loss", {});
  return b.take();
}

// ---- encoders: BERT and ViT share BertLayer's shape (ViT's norms come first).
struct EncoderSpec {
  std::string prefix;  // "bert.encoder.layer" / "vit.encoder.layer"
  i64 n_layers = 0, d = 0, heads = 0, inter = 0;
  std::string eps, eps_field, act, attn_p, hidden_p;
  bool qkv_bias = true;
  bool pre_norm = false;  // ViT: layernorm_before / layernorm_after
  HfAttention impl = HfAttention::sdpa;
  std::string mask;  // eager: the mask layer ("" = none)
  // ViT's eager_attention_forward (modeling_vit.py): softmax(..., dtype=torch.float32).to(query.dtype);
  // BertSelfAttention (v4.5x) calls nn.functional.softmax(attention_scores, dim=-1)
  bool float32_softmax = false;
};

std::string encoder(Builder& b, const Cfg& c, const EncoderSpec& s, std::string h) {
  const i64 head_dim = s.d / s.heads;
  auto ln = [&](const std::string& name, const std::string& from) {
    return b.add(name, "layer_norm", {I("normalized_shape", s.d, "hidden_size"), T("eps", s.eps, s.eps_field)}, {from});
  };
  for (i64 i = 0; i < s.n_layers; ++i) {
    const std::string p = s.prefix + "." + str(i);
    std::string x = s.pre_norm ? ln(p + ".layernorm_before", h) : h;
    const std::string a = s.pre_norm ? p + ".attention.attention" : p + ".attention.self";
    std::string qkv[3];
    const char* names[3] = {"query", "key", "value"};
    for (int j = 0; j < 3; ++j) {
      b.add(a + "." + names[j], "linear", {I("out_features", s.d, "hidden_size"), B("bias", s.qkv_bias, s.pre_norm ? "qkv_bias" : "")}, {x});
      qkv[j] = heads_of(b, a + "." + names[j], a + "." + names[j], s.heads, head_dim);
    }
    attention_core(b, {a, qkv[0], qkv[1], qkv[2], s.heads, s.heads, head_dim, false, s.attn_p, "attention_probs_dropout_prob",
                       s.impl, s.mask, false, s.float32_softmax});
    b.add(p + ".attention.output.dense", "linear", {I("out_features", s.d, "hidden_size")});
    dropout(b, p + ".attention.output.dropout", s.hidden_p, "hidden_dropout_prob");
    // BertSelfOutput: LayerNorm(hidden_states + input_tensor); ViT: attention_output + hidden_states
    h = b.add(p + ".attention.residual", "add", {}, {b.last(), h});
    if (!s.pre_norm) h = ln(p + ".attention.output.LayerNorm", h);
    x = s.pre_norm ? ln(p + ".layernorm_after", h) : h;
    b.add(p + ".intermediate.dense", "linear", {I("out_features", s.inter, "intermediate_size")}, {x});
    activation(b, c, p + ".intermediate.intermediate_act_fn", s.act, "hidden_act");
    b.add(p + ".output.dense", "linear", {I("out_features", s.d, "hidden_size")});
    dropout(b, p + ".output.dropout", s.hidden_p, "hidden_dropout_prob");
    h = b.add(p + ".output.residual", "add", {}, {b.last(), h});
    if (!s.pre_norm) h = ln(p + ".output.LayerNorm", h);
  }
  return h;
}

// The first token: sequence_output[:, 0] (a select view; its backward, like slice's, makes a zero
// gradient of the whole input).
std::string first_token(Builder& b, const std::string& prefix, const std::string& from, i64 d) {
  b.add(prefix + ".first_token", "slice", {I("dim", 1), I("start", 0), I("end", 1)}, {from});
  return b.add(prefix + ".first_token_view", "reshape", {T("shape", str(d))});
}

// num_labels: len(id2label) (PretrainedConfig), else "num_labels", else 2 (its default).
i64 num_labels(const Cfg& c) {
  if (c.has("id2label")) {
    const json& m = c.raw("id2label");
    if (!m.is_object() || m.empty()) c.bad("id2label", "is " + c.shown("id2label") + ", expected an object of labels", "write \"id2label\": {\"0\": \"neg\", \"1\": \"pos\"}");
    return static_cast<i64>(m.size());
  }
  return c.integer_or("num_labels", 2);
}

Model build_bert(const Cfg& c, const HfOptions& o, const std::string& name) {
  Builder b(c, name);
  std::string arch;
  if (o.head) {
    arch = *o.head == HfHead::mlm ? "BertForMaskedLM" : "BertForSequenceClassification";
    b.note("head from --head: " + arch);
  } else {
    arch = architecture(c, b, {"BertForMaskedLM", "BertForSequenceClassification"});
  }
  const i64 vocab = c.integer("vocab_size"), d = c.integer("hidden_size"), heads = c.integer("num_attention_heads");
  if (d % heads != 0) c.bad("num_attention_heads", "(" + str(heads) + ") does not divide hidden_size (" + str(d) + ")", "fix the sizes");
  if (c.text_or("position_embedding_type", "absolute") != "absolute")
    c.bad("position_embedding_type", "is " + c.shown("position_embedding_type") + "; only \"absolute\" is modelled", "use \"absolute\"");
  if (c.boolean_or("is_decoder", false)) c.bad("is_decoder", "is true; BERT as a decoder is not modelled", "remove it");
  EncoderSpec s{"bert.encoder.layer", c.integer("num_hidden_layers"), d, heads, c.integer("intermediate_size"),
                c.real_or("layer_norm_eps", "1e-12", 0, 1, true), "layer_norm_eps", c.text_or("hidden_act", "gelu"),
                c.real_or("attention_probs_dropout_prob", "0.1", 0, 1, true), c.real_or("hidden_dropout_prob", "0.1", 0, 1, true),
                true, false, o.attention.value_or(HfAttention::sdpa), ""};
  const i64 seq = sequence(c, b, o, "max_position_embeddings");

  b.add("input_ids", "input", {I("shape", seq), T("dtype", "int64")});
  // eager: BertModel makes get_extended_attention_mask of the all-ones attention_mask (an additive
  // [N, 1, 1, T] float mask) before the embeddings run
  if (s.impl == HfAttention::eager) s.mask = b.add("bert.extended_attention_mask", "attn_mask", {B("causal", false)}, {"input_ids"});
  // BertEmbeddings: word + token_type (the zero token_type_ids buffer expanded to [N, T]) +=
  // position (arange(T)), LayerNorm, dropout.
  b.add("bert.embeddings.word_embeddings", "embedding",
        {I("num_embeddings", vocab, "vocab_size"), I("embedding_dim", d, "hidden_size"),
         I("padding_idx", c.integer_or("pad_token_id", 0, 0), "pad_token_id")},
        {"input_ids"});
  b.add("bert.embeddings.token_type_embeddings", "embedding",
        {I("num_embeddings", c.integer_or("type_vocab_size", 2), "type_vocab_size"), I("embedding_dim", d, "hidden_size")}, {"input_ids"});
  b.add("bert.embeddings.add_token_type", "add", {}, {"bert.embeddings.word_embeddings", "bert.embeddings.token_type_embeddings"});
  b.add("bert.embeddings.position_embeddings", "embedding",
        {I("num_embeddings", c.integer("max_position_embeddings"), "max_position_embeddings"), I("embedding_dim", d, "hidden_size"),
         B("positions", true)},
        {"input_ids"});
  b.add("bert.embeddings.add_positions", "add", {B("inplace", true)},
        {"bert.embeddings.add_token_type", "bert.embeddings.position_embeddings"});  // embeddings += position_embeddings
  b.add("bert.embeddings.LayerNorm", "layer_norm", {I("normalized_shape", d, "hidden_size"), T("eps", s.eps, "layer_norm_eps")});
  dropout(b, "bert.embeddings.dropout", s.hidden_p, "hidden_dropout_prob");
  std::string h = encoder(b, c, s, b.last());
  if (arch == "BertForMaskedLM") {
    // BertModel(config, add_pooling_layer=False); cls.predictions: transform (dense, act, LayerNorm) and
    // the decoder tied to the word embeddings, with its own bias (cls.predictions.bias).
    b.add("cls.predictions.transform.dense", "linear", {I("out_features", d, "hidden_size")}, {h});
    activation(b, c, "cls.predictions.transform.transform_act_fn", s.act, "hidden_act");
    b.add("cls.predictions.transform.LayerNorm", "layer_norm", {I("normalized_shape", d, "hidden_size"), T("eps", s.eps, "layer_norm_eps")});
    std::vector<AttrText> dec{I("out_features", vocab, "vocab_size"), B("bias", true)};
    if (c.boolean_or("tie_word_embeddings", true)) dec.push_back(T("tied_to", "bert.embeddings.word_embeddings", "tie_word_embeddings"));
    b.add("cls.predictions.decoder", "linear", dec);
    b.add("loss", "masked_lm_loss", {});
  } else {
    const i64 labels = num_labels(c);
    if (labels < 2)
      throw Error(c.at(c.has("id2label") ? "id2label" : "num_labels"), "", "one label makes BertForSequenceClassification a regression (MSELoss), which is not modelled",
                  "give two or more labels");
    // BertPooler: dense + tanh on hidden_states[:, 0]; dropout (classifier_dropout or hidden_dropout_prob)
    first_token(b, "bert.pooler", h, d);
    b.add("bert.pooler.dense", "linear", {I("out_features", d, "hidden_size")});
    b.add("bert.pooler.activation", "tanh", {});
    std::string p = c.has("classifier_dropout") ? c.real_or("classifier_dropout", "0.1", 0, 1, true) : s.hidden_p;
    dropout(b, "dropout", p, c.has("classifier_dropout") ? "classifier_dropout" : "hidden_dropout_prob");
    b.add("classifier", "linear", {I("out_features", labels, c.has("id2label") ? "id2label" : "num_labels")});
    b.add("loss", "cross_entropy", {});
  }
  return b.take();
}

Model build_vit(const Cfg& c, const HfOptions& o, const std::string& name) {
  Builder b(c, name);
  architecture(c, b, {"ViTForImageClassification"});
  if (o.head) throw Error(c.at("model_type"), "", "--head applies to BERT configs", "remove --head");
  const i64 d = c.integer("hidden_size"), heads = c.integer("num_attention_heads");
  if (d % heads != 0) c.bad("num_attention_heads", "(" + str(heads) + ") does not divide hidden_size (" + str(d) + ")", "fix the sizes");
  const i64 image = c.integer("image_size"), patch = c.integer("patch_size"), channels = c.integer_or("num_channels", 3);
  if (image % patch != 0 || patch > image)
    c.bad("patch_size", "(" + str(patch) + ") does not divide image_size (" + str(image) + ")", "use the published sizes (224 and 16)");
  const i64 patches = (image / patch) * (image / patch);
  if (o.seq != 0)
    throw Error(c.at("image_size"), "", "--seq does not apply to ViT: its sequence is (image_size / patch_size)^2 + 1 = " +
                    str(patches + 1) + " tokens",
                "remove --seq (change \"image_size\" for other resolutions)");
  EncoderSpec s{"vit.encoder.layer", c.integer("num_hidden_layers"), d, heads, c.integer("intermediate_size"),
                c.real_or("layer_norm_eps", "1e-12", 0, 1, true), "layer_norm_eps", c.text_or("hidden_act", "gelu"),
                c.real_or("attention_probs_dropout_prob", "0.0", 0, 1, true), c.real_or("hidden_dropout_prob", "0.0", 0, 1, true),
                c.boolean_or("qkv_bias", true), true, o.attention.value_or(HfAttention::sdpa), "", true};  // eager: no mask
  const i64 labels = num_labels(c);

  b.add("pixel_values", "input", {T("shape", str(channels) + "x" + str(image) + "x" + str(image), "image_size")});
  // ViTPatchEmbeddings: Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=patch_size),
  // then embeddings.flatten(2).transpose(1, 2) -> [N, patches, D]
  b.add("vit.embeddings.patch_embeddings.projection", "conv2d",
        {I("out_channels", d, "hidden_size"), I("kernel", patch, "patch_size"), I("stride", patch, "patch_size")});
  b.add("vit.embeddings.patch_embeddings.flatten", "reshape", {T("shape", str(d) + "x" + str(patches))});
  std::string tokens = b.add("vit.embeddings.patch_embeddings.transpose", "transpose", {I("dim0", 1), I("dim1", 2)});
  // cls_tokens = self.cls_token.expand(batch_size, -1, -1); torch.cat((cls_tokens, embeddings), dim=1);
  // embeddings + self.position_embeddings; dropout. cls_token [1, 1, D] and position_embeddings
  // [1, patches + 1, D] are nn.Parameters of ViTEmbeddings.
  b.add("vit.embeddings.cls_token", "parameter", {T("shape", "1x1x" + str(d), "hidden_size")}, {});
  b.add("vit.embeddings.cls_expand", "expand", {T("shape", "1x" + str(d))});
  b.add("vit.embeddings.cat", "concat", {I("dim", 1)}, {"vit.embeddings.cls_expand", tokens});
  b.add("vit.embeddings.position_embeddings", "parameter", {T("shape", "1x" + str(patches + 1) + "x" + str(d), "image_size")}, {});
  b.add("vit.embeddings.add_positions", "add", {}, {"vit.embeddings.cat", "vit.embeddings.position_embeddings"});
  dropout(b, "vit.embeddings.dropout", s.hidden_p, "hidden_dropout_prob");
  std::string h = encoder(b, c, s, b.last());
  b.add("vit.layernorm", "layer_norm", {I("normalized_shape", d, "hidden_size"), T("eps", s.eps, "layer_norm_eps")}, {h});
  first_token(b, "vit", "vit.layernorm", d);
  b.add("classifier", "linear", {I("out_features", labels, c.has("id2label") ? "id2label" : "num_labels")});
  b.add("loss", "cross_entropy", {});
  Model vit = b.take();
  vit.input_embeddings = tokens;  // ViTModel.get_input_embeddings() returns embeddings.patch_embeddings
  return vit;
}

// Attribute texts to the registry's typed values; every kind must exist and know every option.
void resolve(Model& m) {
  for (const Layer& l : m.layers)  // a missing kind first: it explains a missing option too
    if (!find_op(l.kind))
      throw Error(l.pos, l.name, "the Hugging Face builder needs the layer kind '" + l.kind + "', which this memfit does not have",
                  l.kind == "scale" || l.kind == "attn_mask" || l.kind == "repeat_kv" ? "use --attention sdpa (the default)"
                      : "this memfit lacks the transformer layer kinds (docs/hf-config.md)");
  for (Layer& l : m.layers) {
    const OpRule* rule = find_op(l.kind);
    l.kind = rule->kind;
    for (auto& [key, v] : l.attrs) {
      if (l.kind == "input" && key == "shape") continue;  // the input's shape stays text ("128", "3x224x224")
      const AttrSpec* spec = find_attr(*rule, key);
      if (!spec)
        throw Error(v.pos, l.name, "the layer kind '" + l.kind + "' has no option '" + key + "' that the Hugging Face builder sets",
                    "this memfit's op registry and hf_config.cpp disagree: please report it");
      v = parse_attr_text(*spec, v.text, v.pos, l.name);
    }
    fill_defaults(*rule, l);
  }
}

}  // namespace

std::string hf_model_types() { return kModelTypes; }

HfAttention parse_hf_attention(std::string_view s) {
  if (s == "sdpa") return HfAttention::sdpa;
  if (s == "eager") return HfAttention::eager;
  throw Error({}, "", "unknown attention implementation '" + std::string(s) + "'",
              "use sdpa (default, transformers' torch.nn.functional.scaled_dot_product_attention) or eager");
}

HfHead parse_hf_head(std::string_view s) {
  if (s == "mlm") return HfHead::mlm;
  if (s == "cls") return HfHead::cls;
  throw Error({}, "", "unknown head '" + std::string(s) + "'", "use mlm (BertForMaskedLM) or cls (BertForSequenceClassification)");
}

void refuse_hf_options(const HfOptions& hf, const Model& m) {
  if (!hf.any()) return;
  const char* flag = hf.seq ? "--seq" : hf.attention ? "--attention" : "--head";
  throw Error({m.file, 0, 0}, "", std::string(flag) + " applies to a Hugging Face config.json, and this is a memfit model",
              hf.seq ? "remove --seq: the input layer's shape fixes this model's sequence length"
                     : std::string("remove ") + flag);
}

Model build_hf_model_unresolved(const json& config, const std::map<std::string, SourcePos>& key_pos, std::string_view file,
                                const HfOptions& hf) {
  Cfg c(config, key_pos, std::string(file));
  if (!config["model_type"].is_string())
    c.bad("model_type", "is " + c.shown("model_type") + ", expected a string", std::string("use one of: ") + kModelTypes);
  const std::string type = config["model_type"].get<std::string>();
  // The model's name: the config's "_name_or_path" when it has one, else the file name.
  std::string name = utf8_or_question_marks(file);
  if (auto slash = name.find_last_of('/'); slash != std::string::npos) name = name.substr(slash + 1);
  if (name.size() > 5 && name.substr(name.size() - 5) == ".json") name.resize(name.size() - 5);
  if (c.has("_name_or_path") && config["_name_or_path"].is_string() && !config["_name_or_path"].get<std::string>().empty())
    name = utf8_or_question_marks(config["_name_or_path"].get<std::string>());
  if (type == "llama" || type == "mistral" || type == "qwen2") return build_llama(c, hf, name);
  if (type == "gpt2") return build_gpt2(c, hf, name);
  if (type == "bert") return build_bert(c, hf, name);
  if (type == "vit") return build_vit(c, hf, name);
  c.bad("model_type", "is \"" + type + "\", which memfit cannot build", std::string("supported model types: ") + kModelTypes);
}

Model parse_hf_config_unresolved(std::string_view source, std::string_view file, const HfOptions& hf) {
  json config = json::parse(source.begin(), source.end());
  return build_hf_model_unresolved(config, {}, file, hf);
}

Model build_hf_model(const json& config, const std::map<std::string, SourcePos>& key_pos, std::string_view file, const HfOptions& hf) {
  Model m = build_hf_model_unresolved(config, key_pos, file, hf);
  resolve(m);
  return m;
}

}  // namespace memfit
