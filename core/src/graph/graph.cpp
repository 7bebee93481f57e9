// Shape inference over the flat layer list, in order: each node asks its rule for the output type
// and parameters, the settings decide which parameters train, and then the rule says what the op
// allocates and saves given what requires grad. Also: regions from the dotted names, and the
// checks PyTorch would only fail at backward (an in-place write into a saved tensor).
#include "memfit/graph.hpp"

#include <algorithm>
#include <map>
#include <unordered_map>

namespace memfit {

namespace {

bool is_float(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; }

// The dtype autocast makes an op consume (aten/src/ATen/autocast_mode.h lists, see ops.hpp Autocast).
DType autocast_dtype(Autocast policy, DType compute, DType in, DType widest) {
  if (compute == DType::f32 || !is_float(in)) return in;
  switch (policy) {
    case Autocast::lower: return compute;
    case Autocast::fp32: return DType::f32;
    case Autocast::promote: return widest;
    case Autocast::keep: return in;
    case Autocast::fp32_set_opt_dtype: return in == DType::f16 ? in : DType::f32;  // f16: half_to_float, no copy
  }
  return in;
}

// Does a glob select this parameter: the layer itself, any region holding it, or `layer.param`.
bool selects(const std::string& glob, const std::string& layer, const std::string& param) {
  if (glob_match(glob, layer) || glob_match(glob, layer + "." + param)) return true;
  for (std::size_t dot = layer.find('.'); dot != std::string::npos; dot = layer.find('.', dot + 1))
    if (glob_match(glob, std::string_view(layer).substr(0, dot))) return true;
  return false;
}

// Regions: every dotted prefix of a layer name ("layer1.0.conv1" -> "layer1", "layer1.0").
void build_regions(Graph& g) {
  std::unordered_map<std::string, int> by_name;
  // Layers of one block are consecutive: the previous layer's chain of regions is checked first, so
  // the map (and a string per prefix) is needed only where a region starts or is re-entered.
  std::vector<int> chain;  // the previous layer's regions, outermost first
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    const std::string& name = g.nodes[i].layer->name;
    int parent = -1;
    std::size_t level = 0;
    for (std::size_t dot = name.find('.'); dot != std::string::npos; dot = name.find('.', dot + 1), ++level) {
      std::string_view prefix(name.data(), dot);
      int id = -1;
      if (level < chain.size() && g.regions[static_cast<std::size_t>(chain[level])].name == prefix) {
        id = chain[level];
      } else {
        chain.resize(level);
        auto [it, inserted] = by_name.emplace(std::string(prefix), static_cast<int>(g.regions.size()));
        if (inserted) {
          Region r;
          r.name = std::string(prefix);
          r.parent = parent;
          r.depth = parent < 0 ? 0 : g.regions[static_cast<std::size_t>(parent)].depth + 1;
          r.first_node = static_cast<int>(i);
          g.regions.push_back(std::move(r));
        }
        id = it->second;
        chain.push_back(id);
      }
      Region& r = g.regions[static_cast<std::size_t>(id)];
      r.last_node = static_cast<int>(i);
      r.n_nodes++;
      parent = id;
    }
    chain.resize(level);
    g.nodes[i].region = parent;
  }
}

// The layout of the gradient each value receives, from the last node back: a gradient an op
// allocates is contiguous; one handed on (add, clone) has its source's layout; a view gradient is
// the rule's view of the incoming one (a permute's backward permutes its strides back; a reshape's
// backward is a view when computeStride allows, else a copy, marked in grad_copies). A value with
// several consumers gets a sum: contiguous. Only the copies change memory (channel shuffle:
// view, transpose, contiguous, view; the first view's backward copies: measured, torch 1.13).
void gradient_layouts(Graph& g) {
  std::vector<std::vector<i64>> layout(static_cast<std::size_t>(g.n_values));  // empty: contiguous
  for (std::size_t i = g.nodes.size(); i-- > 1;) {
    Node& nd = g.nodes[i];
    if (!nd.requires_grad) continue;
    const TensorType& out = nd.shape.out;
    const std::vector<i64>& out_grad = layout[static_cast<std::size_t>(nd.first_value)];
    for (std::size_t j = 0; j < nd.in.size(); ++j) {
      const Node& prod = g.nodes[static_cast<std::size_t>(nd.in[j])];
      const std::size_t v = static_cast<std::size_t>(prod.first_value + nd.in_out[j]);
      if (prod.out_consumers[static_cast<std::size_t>(nd.in_out[j])] != 1) continue;  // a sum, or nobody
      const TensorType& in = prod.out_type(nd.in_out[j]);
      std::vector<i64> st;
      switch (nd.mem.grad_in[j]) {
        case OpMemory::GradIn::fresh: break;
        case OpMemory::GradIn::pass: st = out_grad; break;
        case OpMemory::GradIn::slice: st = out_grad.empty() ? TensorType{out.shape}.layout() : out_grad; break;
        case OpMemory::GradIn::view:
          if (nd.mem.grad_view == OpMemory::GradView::permute) {
            const std::vector<i64> full = out_grad.empty() ? TensorType{out.shape}.layout() : out_grad;
            st.assign(in.shape.size(), 0);
            for (std::size_t k = 0; k < nd.mem.permutation.size(); ++k)
              st[static_cast<std::size_t>(nd.mem.permutation[k])] = full[k];
            if (TensorType{in.shape, in.dtype, st}.is_contiguous()) st.clear();
          } else if (!out_grad.empty()) {
            if (!view_strides(out.shape, out_grad, in.shape, st)) {
              nd.grad_copies[j] = true;
              st.clear();
            } else if (TensorType{in.shape, in.dtype, st}.is_contiguous()) {
              st.clear();
            }
          }
          break;
      }
      // utils::obeys_layout_contract (torch/csrc/autograd/utils/grad_layout_contract.h): strides
      // of the non-size-1 dims equal the parameter's own (contiguous) ones
      Node& pn = g.nodes[static_cast<std::size_t>(nd.in[j])];
      if (pn.mem.output == OpMemory::Output::parameter)
        pn.param_grad_strided = !st.empty() && !TensorType{in.shape, in.dtype, st}.is_contiguous();
      layout[v] = std::move(st);
    }
  }
}

}  // namespace

bool glob_match(std::string_view p, std::string_view s) {
  // Iterative wildcard match: linear in |p| * |s| at worst, no recursion.
  std::size_t pi = 0, si = 0, star = std::string_view::npos, mark = 0;
  while (si < s.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == s[si])) {
      ++pi;
      ++si;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = si;
    } else if (star != std::string_view::npos) {
      pi = star + 1;
      si = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

Graph build_graph(const Model& model, const GraphSettings& gs) {
  if (model.layers.empty()) throw Error({model.file, 0, 0}, "", "the model has no layers", "add an input layer");
  if (gs.batch < 1) throw Error({}, "", "batch size must be at least 1", "give --batch N with N >= 1");
  if (!gs.freeze.empty() && !gs.train.empty())
    throw Error({}, "", "both --freeze and --train are given", "give one: --freeze what stays fixed, or --train what learns");
  Graph g;
  g.model_name = model.name;
  g.batch = gs.batch;
  g.compute = gs.compute;
  g.target = {{gs.batch}, DType::i64};
  const auto& globs = gs.freeze.empty() ? gs.train : gs.freeze;
  // the model's own frozen parameters (exact "layer.param" names); --train replaces them
  std::map<std::string, bool, std::less<>> model_frozen;  // name -> matched a parameter
  if (gs.train.empty())
    for (const auto& name : model.frozen) model_frozen.emplace(name, false);
  std::vector<bool> glob_used(globs.size(), false);
  std::map<std::string, int, std::less<>> by_name;
  // storage root of each node's output (in-place and view outputs share their input's), and the
  // node that saved a root for backward
  std::vector<int> root;
  std::vector<int> saved_by(model.layers.size() + 1, -1);  // root node -> first node that saved it
  g.nodes.reserve(model.layers.size() + 1);
  root.reserve(model.layers.size() + 1);
  auto add_node = [&](const Layer& layer) {
    const OpRule* rule = find_op(layer.kind);
    if (!rule) throw Error(layer.pos, layer.name, "unknown layer kind '" + layer.kind + "'", "see docs/model-format.md");
    Node n;
    n.layer = &layer;
    n.rule = rule;
    for (const auto& name : layer.inputs) {
      auto it = by_name.find(name);
      int out = 0;
      if (it == by_name.end()) {
        // `layer:K`: output K of an op with several outputs
        auto colon = name.rfind(':');
        if (colon != std::string::npos && colon + 1 < name.size() &&
            name.find_first_not_of("0123456789", colon + 1) == std::string::npos && name.size() - colon <= 6) {
          it = by_name.find(std::string_view(name).substr(0, colon));
          out = std::stoi(name.substr(colon + 1));
        }
        if (it == by_name.end())
          throw Error(layer.pos, layer.name, "no earlier layer is named '" + name + "'", "inputs must be defined above");
        const Node& prod = g.nodes[static_cast<std::size_t>(it->second)];
        if (out >= prod.n_outputs())
          throw Error(layer.pos, layer.name,
                      "'" + prod.layer->name + "' has " + std::to_string(prod.n_outputs()) + " output" +
                          (prod.n_outputs() == 1 ? "" : "s") + ", so '" + name + "' does not exist",
                      "name outputs 0 to " + std::to_string(prod.n_outputs() - 1) + " (e.g. '" + prod.layer->name + ":0')");
      }
      n.in.push_back(it->second);
      n.in_out.push_back(out);
    }
    DType widest = DType::f16;
    for (std::size_t j = 0; j < n.in.size(); ++j) {
      DType t = g.nodes[static_cast<std::size_t>(n.in[j])].out_type(n.in_out[j]).dtype;
      if (t == DType::f32 || (t == DType::bf16 && widest == DType::f16)) widest = t;
    }
    bool any_rg = false, half_to_float = false;
    std::vector<bool> in_rg;
    for (std::size_t j = 0; j < n.in.size(); ++j) {
      Node& prod = g.nodes[static_cast<std::size_t>(n.in[j])];
      TensorType t = prod.out_type(n.in_out[j]);
      // int64 token ids feed an embedding (or the rotary tables, which read only their length);
      // PyTorch would refuse them in a matmul ("expected scalar type Float but found Long").
      if (t.dtype == DType::i64 && !rule->takes_indices)
        throw Error(layer.pos, layer.name,
                    std::string(rule->kind) + " gets '" + layer.inputs[j] + "', int64 token ids: it computes on floating tensors",
                    "put an embedding first (embedding num_embeddings=V embedding_dim=D), as a transformer's embed_tokens / wte");
      const Autocast policy = gs.rules == TorchRules::v1_13 && rule->autocast_1_13 ? *rule->autocast_1_13 : rule->autocast;
      const DType produced = t.dtype;
      t.dtype = autocast_dtype(policy, gs.compute, t.dtype, widest);
      if (policy == Autocast::fp32_set_opt_dtype && j == 0 && is_float(produced)) {
        // softmax(x, dim, dtype=...) as written (LlamaAttention's float32 softmax) wins over autocast's
        // set_opt_dtype; either way SoftMax.cpp converts the input unless it is float16 going to float32
        auto want = layer.attrs.find("dtype");
        DType d = gs.compute != DType::f32 ? DType::f32 : produced;
        if (want != layer.attrs.end() && !want->second.text.empty() && !parse_dtype_name(want->second.text, d))
          throw Error(want->second.pos, layer.name, "dtype='" + want->second.text + "' is not a floating dtype memfit knows",
                      "write dtype=float32 (F.softmax(x, dim, dtype=torch.float32)), or leave it out");
        half_to_float = d == DType::f32 && produced == DType::f16;
        t.dtype = half_to_float ? produced : d;
      }
      n.in_types.push_back(std::move(t));
      any_rg = any_rg || prod.requires_grad;
      in_rg.push_back(prod.requires_grad);
      prod.n_consumers++;
      prod.out_consumers[static_cast<std::size_t>(n.in_out[j])]++;
    }
    OpCall call{.layer = layer, .in = n.in_types, .in_requires_grad = in_rg, .batch = gs.batch, .rules = gs.rules,
                .compute_dtype = gs.compute != DType::f32 ? gs.compute : gs.param_dtype, .autocast = gs.compute,
                .half_to_float = half_to_float};
    try {
      n.shape = rule->shape(call);
      // model.to(dtype): the batch is cast too when it is floating (token ids stay int64); what the
      // input layer produces is what the loop feeds the model.
      if (n.in.empty() && gs.param_dtype != DType::f32 && n.shape.out.dtype == DType::f32) n.shape.out.dtype = gs.param_dtype;
      // Rules give a float32 result where it comes from float32 weights or from no floating input at
      // all (embedding rows, LlamaRMSNorm's `weight * h.to(input_dtype)`, the additive attention mask
      // built in the embeddings' dtype); they run before the parameters' dtype is set below, so in a
      // model.to(dtype) model those results take the model's dtype.
      auto own_dtype = gs.layer_param_dtype.find(layer.name);  // LoRA adapters keep theirs
      const DType layer_dtype = own_dtype != gs.layer_param_dtype.end() ? own_dtype->second : gs.param_dtype;
      if (!n.in.empty() && layer_dtype != DType::f32) {
        bool float_param = false, float_input = false;
        for (const auto& p : n.shape.params) float_param = float_param || (!p.is_buffer && p.dtype == DType::f32 && p.tied_node < 0);
        for (const auto& t : n.in_types) float_input = float_input || is_float(t.dtype);
        if (float_param || !float_input) {
          if (n.shape.out.dtype == DType::f32) n.shape.out.dtype = layer_dtype;
          for (auto& t : n.shape.extra_outs)
            if (t.dtype == DType::f32) t.dtype = layer_dtype;
        }
      }
      n.shape.out.bytes();  // checks the element count and bytes fit 64 bits
      for (const auto& t : n.shape.extra_outs) t.bytes();
    } catch (const Error& e) {
      // Overflow errors from the checked helpers know no position: give them the layer's.
      if (!e.pos().file.empty() || !e.layer().empty()) throw;
      throw Error(layer.pos, layer.name, e.problem(), e.fix().empty() ? "use smaller sizes" : e.fix());
    }
    bool has_trainable = false;
    for (std::size_t k = 0; k < n.shape.params.size(); ++k) {
      ParamSpec& p = n.shape.params[k];
      if (!p.tied_to.empty()) {
        // The weight is an earlier layer's (lm_head tied to the token embedding): the same tensor,
        // so it trains exactly when the owner's does and is counted once (PreTrainedModel.tie_weights).
        auto owner = by_name.find(p.tied_to);
        if (owner == by_name.end())
          throw Error(layer.pos, layer.name, "tied_to='" + p.tied_to + "' names no earlier layer",
                      "name the embedding whose weight this layer shares, e.g. tied_to=transformer.wte");
        const Node& on = g.nodes[static_cast<std::size_t>(owner->second)];
        int idx = -1;
        for (std::size_t q = 0; q < on.shape.params.size(); ++q)
          if (on.shape.params[q].name == p.name && on.shape.params[q].tied_node < 0) idx = static_cast<int>(q);
        if (idx < 0)
          throw Error(layer.pos, layer.name, "'" + p.tied_to + "' has no own parameter '" + p.name + "' to share",
                      "tie to the layer that owns the weight (the embedding)");
        const ParamSpec& op = on.shape.params[static_cast<std::size_t>(idx)];
        if (op.shape != p.shape) {
          auto txt = [](const std::vector<i64>& v) {
            std::string o;
            for (std::size_t q = 0; q < v.size(); ++q) o += (q ? "x" : "") + std::to_string(v[q]);
            return o;
          };
          throw Error(layer.pos, layer.name,
                      "its weight is " + txt(p.shape) + " but '" + p.tied_to + "'." + p.name + " is " + txt(op.shape),
                      "a tied output layer has out_features = the vocabulary and the embedding's dimension as input");
        }
        p.tied_node = owner->second;
        p.tied_index = idx;
        p.trainable = op.trainable;
        p.dtype = op.dtype;
      }
    }
    for (auto& p : n.shape.params) {
      if (p.tied_node >= 0) {
        has_trainable = has_trainable || p.trainable;
        if (p.dtype == DType::f32) p.dtype = gs.param_dtype;  // the shared weight, as model.to(dtype) left it
        bool cast = is_float(p.dtype) && rule->autocast == Autocast::lower && gs.compute != DType::f32 && p.dtype != gs.compute;
        n.param_cast.push_back(cast);
        n.param_cached.push_back(cast && p.trainable);
        call.param_requires_grad.push_back(p.trainable);
        continue;
      }
      try {
        checked_mul(p.numel(), dtype_size(p.dtype), "parameter bytes");
      } catch (const Error& e) {
        throw Error(layer.pos, layer.name, e.problem(), "use smaller sizes");
      }
      // model.to(dtype) casts floating parameters and buffers (torch/nn/modules/module.py _apply with
      // `t.to(dtype) if t.is_floating_point()`); int64 counters and packed uint8 weights keep theirs.
      if (p.dtype == DType::f32) {
        auto own = gs.layer_param_dtype.find(layer.name);
        p.dtype = own != gs.layer_param_dtype.end() ? own->second : gs.param_dtype;
      }
      if (!p.is_buffer && !model_frozen.empty()) {
        auto it = model_frozen.find(layer.name + "." + p.name);
        // a `parameter` layer is named as PyTorch names the nn.Parameter (vit.embeddings.cls_token)
        if (it == model_frozen.end() && std::string_view(rule->kind) == "parameter") it = model_frozen.find(layer.name);
        if (it != model_frozen.end()) {
          it->second = true;
          p.trainable = false;
        }
      }
      if (p.is_buffer) {
        p.trainable = false;
      } else if (!is_float(p.dtype)) {
        // "Only Tensors of floating point and complex dtype can require gradients" (c10 TensorImpl):
        // bitsandbytes' Params4bit is created with requires_grad=False.
        p.trainable = false;
      } else if (!globs.empty()) {
        bool hit = false;
        for (std::size_t k = 0; k < globs.size(); ++k)
          if (selects(globs[k], layer.name, p.name)) {
            hit = true;
            glob_used[k] = true;
          }
        p.trainable = gs.freeze.empty() ? hit : (!hit && p.trainable);
      }
      if (!p.is_buffer && !p.trainable) g.n_frozen_params = checked_add(g.n_frozen_params, p.count(), "parameter count");
      has_trainable = has_trainable || p.trainable;
      // autocast_mode.cpp cached_cast casts an eligible floating argument whose dtype differs.
      bool cast = !p.is_buffer && is_float(p.dtype) && rule->autocast == Autocast::lower && gs.compute != DType::f32 &&
                  p.dtype != gs.compute;
      n.param_cast.push_back(cast);
      n.param_cached.push_back(cast && p.trainable);
      call.param_requires_grad.push_back(p.trainable);
    }
    const bool forced = std::find(gs.output_requires_grad.begin(), gs.output_requires_grad.end(), layer.name) !=
                        gs.output_requires_grad.end();
    n.requires_grad = rule->differentiable && (any_rg || has_trainable || forced);
    if (rule->is_loss) g.target = rule->target ? rule->target(call) : TensorType{{gs.batch}, DType::i64};
    n.grad_copies.assign(n.in.size(), false);
    n.mem = rule->memory(call, n.shape);
    if (n.mem.output == OpMemory::Output::parameter) {
      if (n.shape.params.empty() || !n.in.empty())
        throw std::logic_error(std::string("op rule '") + rule->kind + "' outputs a parameter: it needs one and no inputs");
      n.shape.out.dtype = n.shape.params[0].dtype;  // the parameter as model.to(dtype) left it
    }
    if (!n.shape.extra_outs.empty())
      for (auto gi : n.mem.grad_in)
        if (gi != OpMemory::GradIn::fresh)
          throw std::logic_error(std::string("op rule '") + rule->kind + "' has several outputs: its input gradients must be fresh");
    n.out_consumers.assign(static_cast<std::size_t>(n.n_outputs()), 0);
    n.first_value = g.n_values;
    g.n_values += n.n_outputs();
    if (n.requires_grad)
      for (const auto& sv : n.mem.saved) {
        bool keep = sv.when.kind == SaveIf::always ||
                    (sv.when.kind == SaveIf::input_needs_grad && in_rg[static_cast<std::size_t>(sv.when.index)]) ||
                    (sv.when.kind == SaveIf::param_needs_grad &&
                     call.param_requires_grad[static_cast<std::size_t>(sv.when.index)]);
        if (keep) n.saved.push_back(sv);
      }
    const int self = static_cast<int>(g.nodes.size());
    int my_root = n.mem.output == OpMemory::Output::fresh || n.in.empty() ? self : root[static_cast<std::size_t>(n.in[0])];
    if (n.mem.output == OpMemory::Output::in_place && !n.in.empty()) {
      // PyTorch refuses an in-place write into one of several views a function returned (chunk),
      // when autograd records it: "... is a view and is being modified inplace ... returns multiple views".
      const Node& src = g.nodes[static_cast<std::size_t>(n.in[0])];
      if (src.n_outputs() > 1 && src.mem.output == OpMemory::Output::view && src.requires_grad)
        throw Error(layer.pos, layer.name,
                    "writes in place into '" + layer.inputs[0] + "', one of the views '" + src.layer->name +
                        "' returns: PyTorch refuses in-place writes into such views",
                    "drop inplace on '" + layer.name + "'");
    }
    if (n.mem.output == OpMemory::Output::in_place) {
      // An nn.Parameter (or a view of one: expand) written in place while it requires grad: PyTorch
      // refuses in forward (VariableTypeUtils.h check_inplace: "a leaf Variable that requires grad is
      // being used in an in-place operation", or "a view of a leaf Variable ...").
      const Node& rn = g.nodes.size() > static_cast<std::size_t>(my_root) ? g.nodes[static_cast<std::size_t>(my_root)] : n;
      if (rn.mem.output == OpMemory::Output::parameter && rn.requires_grad)
        throw Error(layer.pos, layer.name,
                    "writes in place into '" + layer.inputs[0] + "', which is the trainable parameter '" + rn.layer->name +
                        "' (or a view of it): PyTorch refuses with \"a leaf Variable that requires grad is being used in an "
                        "in-place operation\"",
                    "drop inplace on '" + layer.name + "'");
      if (saved_by[static_cast<std::size_t>(my_root)] >= 0) {
        const std::string& saver = g.nodes[static_cast<std::size_t>(saved_by[static_cast<std::size_t>(my_root)])].layer->name;
        throw Error(layer.pos, layer.name,
                    "writes in place into '" + layer.inputs[0] + "', which '" + saver +
                        "' saved for backward: PyTorch fails in loss.backward() with \"one of the variables needed "
                        "for gradient computation has been modified by an inplace operation\"",
                    "drop inplace on '" + layer.name + "' (or on '" + saver + "')");
      }
    }
    auto mark_saved = [&](int r) {
      if (saved_by[static_cast<std::size_t>(r)] < 0) saved_by[static_cast<std::size_t>(r)] = self;
    };
    for (const auto& sv : n.saved) {
      if (sv.ref.kind == TensorRef::input) mark_saved(root[static_cast<std::size_t>(n.in[static_cast<std::size_t>(sv.ref.index)])]);
      // (outputs of one multi-output view op share their input's root, so saving any of them counts)
      if (sv.ref.kind == TensorRef::output) mark_saved(my_root);
    }
    root.push_back(my_root);
    by_name[layer.name] = self;
    g.nodes.push_back(std::move(n));
  };
  for (const auto& layer : model.layers) {
    if (!g.nodes.empty() && g.nodes.back().rule->is_loss)
      throw Error(layer.pos, layer.name, "a layer after the loss", "the loss must be the last layer");
    add_node(layer);
  }
  if (g.nodes.size() < 2) throw Error(model.layers[0].pos, model.layers[0].name, "the model has only an input", "add layers");
  for (const auto& [name, matched] : model_frozen)
    if (!matched)
      throw Error(model.frozen_pos, "", "\"freeze\" names '" + name + "', which is no parameter of the model",
                  "name parameters as 'layer.param' (e.g. 'conv1.weight'); 'memfit model MODEL --json' lists the layers");
  for (std::size_t k = 0; k < globs.size(); ++k)
    if (!glob_used[k])
      throw Error({}, "", std::string(gs.freeze.empty() ? "--train" : "--freeze") + " '" + globs[k] +
                              "' matches no parameter of the model",
                  "name layers or regions as the model does (e.g. 'layer4', 'fc', 'features.*'); "
                  "'memfit model MODEL --json' lists the layer names");
  if (!g.nodes.back().rule->is_loss) {
    // Training needs a loss: nn.CrossEntropyLoss on the last output (docs/model-format.md).
    const Layer& last = *g.nodes.back().layer;
    g.appended_loss = std::make_unique<Layer>();
    Layer& l = *g.appended_loss;
    l.name = "loss";
    l.kind = "cross_entropy";
    l.inputs = {last.name};
    l.pos = last.pos;
    if (by_name.count("loss")) l.name = "loss (appended)";
    g.loss_appended = true;
    add_node(l);
  }
  if (!g.nodes.back().requires_grad && !globs.empty())
    throw Error({}, "", "nothing trains: every parameter is frozen", "leave at least one layer trainable (--train NAME)");
  // The loop holds the loss's input as `out` until the step ends, whether memfit appended the loss
  // or the model has its own (tools/memfit_torch.py training_step: out = model(x); loss_fn(out, y)).
  g.model_output = g.nodes.back().in.empty() ? -1 : g.nodes.back().in[0];
  g.model_output_out = g.nodes.back().in.empty() ? 0 : g.nodes.back().in_out[0];
  build_regions(g);
  gradient_layouts(g);
  return g;
}

}  // namespace memfit
