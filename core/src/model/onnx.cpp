// The ONNX importer: the graph read by onnx_wire.cpp becomes a memfit::Model whose layers are the op
// registry's kinds, built through the same attribute parser and defaults as the text format
// (parse_attr_text, fill_defaults), so everything after parsing is unchanged. docs/onnx.md has the
// op mapping table and what an ONNX graph cannot say.
//
// Every value of the graph is either an activation (a memfit layer's output, with its full shape;
// dim 0 is the batch) or a constant (an initializer, a Constant node, or something computed from
// constants and from shapes: the Shape -> Gather -> Unsqueeze -> Concat chains torch.onnx writes for
// x.view(x.size(0), -1) are evaluated, so Reshape gets a static per-sample shape). Initializers that a
// layer takes as its weight or bias are the model's parameters; other constants are not.
#include "memfit/onnx.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <optional>
#include <set>

#include "memfit/ops.hpp"
#include "model_parse.hpp"
#include "onnx_wire.hpp"

namespace memfit {

namespace {

using onnx::Attribute;
using onnx::Tensor;
using ONode = onnx::Node;

// The batch dimension inside shapes and shape values: a marker no real size can take.
constexpr i64 kBatch = std::numeric_limits<i64>::min();
// Tolerance for recognising the constants of a decomposed GELU (sqrt(2), 1/sqrt(2), 1, 0.5): they
// are float32 in the file, exact to ~1e-7; 1e-4 accepts any float spelling and nothing else plausible.
constexpr double kConstTolerance = 1e-4;
// Largest size of one dimension we accept (2^40, as the text format's sizes): beyond it every
// product of a few dims would overflow the byte arithmetic.
constexpr i64 kMaxDim = i64{1} << 40;
// The ONNX default opset when a model imports none for the default domain (onnx/defs/schema.h:
// the first release). Only used to choose between attribute and input forms of an op.
constexpr i64 kDefaultOpset = 1;
// Opsets where an op moved an attribute to an input (onnx/docs/Changelog.md).
constexpr i64 kOpsetClipInputs = 11, kOpsetSliceInputs = 10, kOpsetDropoutInputs = 12, kOpsetSoftmaxLastAxis = 13,
              kOpsetSplitInput = 13, kOpsetUnsqueezeInput = 13, kOpsetReduceMeanInput = 18, kOpsetPadInput = 11;

bool near(double a, double b) { return std::fabs(a - b) <= kConstTolerance * std::max(1.0, std::fabs(b)); }

// The shortest decimal that reads back as the same float32: ONNX stores eps/momentum as float, and
// PyTorch's 1e-5 becomes 9.99999974738e-06; printing it as "1e-05" keeps the model readable.
std::string float_text(double v) {
  float f = static_cast<float>(v);
  char buf[64];
  for (int p = 1; p <= 9; ++p) {
    std::snprintf(buf, sizeof buf, "%.*g", p, static_cast<double>(f));
    if (static_cast<float>(std::strtod(buf, nullptr)) == f) return buf;
  }
  return buf;
}
std::string double_text(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.15g", v);
  return buf;
}

std::string join(const std::vector<i64>& v, const char* sep) {
  std::string s;
  for (std::size_t k = 0; k < v.size(); ++k) s += (k ? sep : "") + std::to_string(v[k]);
  return s;
}

std::string shape_text(const std::vector<i64>& s) {
  std::string t = "[";
  for (std::size_t k = 0; k < s.size(); ++k) t += (k ? ", " : "") + (s[k] == kBatch ? std::string("N") : std::to_string(s[k]));
  return t + "]";
}

struct Val {
  bool defined = false;
  bool activation = false;
  bool poisoned = false;  // produced by a node memfit could not map: consumers are not mapped either
  // activation
  std::string ref;  // the memfit layer (or `layer:K`) holding it
  std::vector<i64> shape;
  int layer = -1;   // index into the model's layers of its producer, -1 if an alias of the input
  // constant
  const Tensor* init = nullptr;  // an initializer: a parameter if a layer takes it
  bool transposed = false;       // Transpose(perm=[1, 0]) of `init`
  bool dims_known = false;
  std::vector<i64> dims;
  bool values_known = false;
  std::vector<double> values;  // kBatch marks the batch in shape values
  int dtype = 0;
};

class Importer {
 public:
  Importer(const onnx::ModelProto& mp, std::string file, const DimValues& dims)
      : mp_(mp), g_(mp.graph), file_(std::move(file)), dims_(dims) {}

  Model run();

 private:
  const onnx::ModelProto& mp_;
  const onnx::Graph& g_;
  std::string file_;
  const DimValues& dims_;
  i64 opset_ = kDefaultOpset;
  Model m_;
  std::map<std::string, Val> vals_;
  std::map<std::string, int> consumers_;
  std::map<std::string, int> producer_;  // value -> node index
  std::set<std::string> names_;
  std::vector<std::string> unsupported_;
  std::set<std::string> notes_seen_;
  std::set<int> absorbed_;                 // nodes folded into a pattern
  std::map<int, std::pair<std::string, std::string>> gelu_at_;  // final node -> (x, name source)
  std::vector<int> linear_open_;
  std::map<std::string, std::string> renamed_;  // slice layer -> "chunk:k" (slices_to_chunks)           // per layer: 1 when a MatMul made it and a bias may still fold in

  std::string where(const ONode& n) const {
    return "node '" + (n.name.empty() ? (n.output.empty() ? std::string("?") : n.output[0]) : n.name) + "' (" + n.op_type + ")";
  }
  [[noreturn]] void fail(const ONode& n, const std::string& problem, const std::string& fix) const {
    throw Error({file_, 0, 0}, "", where(n) + ": " + problem, fix);
  }
  void note(const std::string& s) {
    if (notes_seen_.insert(s).second) m_.notes.push_back(s);
  }
  void unsupported(const ONode& n, const std::string& why) {
    unsupported_.push_back(where(n) + (why.empty() ? "" : ": " + why));
    for (const auto& o : n.output) {
      Val& v = vals_[o];
      v.defined = true;
      v.poisoned = true;
    }
  }

  const Val* in(const ONode& n, std::size_t k) const {
    if (k >= n.input.size() || n.input[k].empty()) return nullptr;
    auto it = vals_.find(n.input[k]);
    return it == vals_.end() ? nullptr : &it->second;
  }
  bool is_act(const Val* v) const { return v && v->activation; }
  bool is_const(const Val* v) const { return v && !v->activation && !v->poisoned; }
  std::optional<double> scalar(const Val* v) const {
    if (!is_const(v) || !v->values_known || v->values.size() != 1) return std::nullopt;
    return v->values[0];
  }
  std::optional<double> scalar_of(const std::string& value) const {
    auto it = vals_.find(value);
    return it == vals_.end() ? std::nullopt : scalar(&it->second);
  }
  int n_consumers(const std::string& v) const {
    auto it = consumers_.find(v);
    return it == consumers_.end() ? 0 : it->second;
  }

  i64 attr_i(const ONode& n, const char* key, i64 dflt) const {
    const Attribute* a = n.attr(key);
    return a ? a->i : dflt;
  }
  double attr_f(const ONode& n, const char* key, double dflt) const {
    const Attribute* a = n.attr(key);
    return a ? a->f : dflt;
  }
  std::vector<i64> attr_ints(const ONode& n, const char* key) const {
    const Attribute* a = n.attr(key);
    return a ? a->ints : std::vector<i64>{};
  }

  std::string layer_name(const ONode& n);
  Layer* add_layer(const ONode& n, const std::string& kind, std::vector<std::string> inputs,
                   const std::vector<std::pair<std::string, std::string>>& attrs, std::vector<i64> out_shape,
                   const std::string& name_override = "");
  void set_output(const ONode& n, std::size_t k, Val v) { if (k < n.output.size() && !n.output[k].empty()) vals_[n.output[k]] = std::move(v); }
  Val act(const std::string& ref, std::vector<i64> shape, int layer) {
    Val v;
    v.defined = v.activation = true;
    v.ref = ref;
    v.shape = std::move(shape);
    v.layer = layer;
    return v;
  }
  void alias(const ONode& n, const Val& v) { set_output(n, 0, v); }

  void read_input();
  void topo_order(std::vector<int>& order);
  void find_patterns();
  void map_node(int index);
  bool eval_constant(const ONode& n);
  const Val* param(const ONode& n, std::size_t k, const char* role);
  void check_param(const ONode& n, const Val* p, const std::vector<i64>& want, const char* role);
  std::vector<i64> broadcast(const ONode& n, const std::vector<i64>& a, const std::vector<i64>& b);
  i64 axis(const ONode& n, i64 a, std::size_t rank, bool allow_batch = false);
  std::vector<i64> values_as_ints(const ONode& n, const Val* v, const char* what);

  void map_conv(const ONode& n);
  void map_pool(const ONode& n, bool max);
  void map_gemm(const ONode& n);
  void map_matmul(const ONode& n);
  void map_binary(const ONode& n);
  void map_reshape(const ONode& n, std::vector<i64> target, bool allowzero);
  void map_slice(const ONode& n);
  void map_split(const ONode& n);
  void drop_dead_layers(const std::string& output_ref);
  void slices_to_chunks();
};

// Ops PyTorch code calls as functions or tensor methods, not as modules (see layer_name).
const std::set<std::string> kFunctionalOps = {"Add", "Mul", "Sub", "Div", "Concat", "Flatten", "Reshape", "Transpose",
                                             "Squeeze", "Unsqueeze", "Split", "Slice", "ReduceMean", "MatMul"};

// Module paths as torch.onnx writes them: "/layer1/layer1.0/conv1/Conv" -> "layer1.0.conv1". Each
// scope is either already qualified by its parent ("layer1.0" inside "layer1") or one attribute
// name ("conv1"); the last part is the op ("Conv", "Conv_1"). Names of other exporters are kept.
std::string Importer::layer_name(const ONode& n) {
  std::string raw = n.name.empty() ? (n.output.empty() ? n.op_type : n.output[0]) : n.name;
  std::string path;
  if (!raw.empty() && raw[0] == '/') {
    std::vector<std::string> parts;
    std::size_t start = 1;
    while (start <= raw.size()) {
      std::size_t slash = raw.find('/', start);
      parts.push_back(raw.substr(start, slash == std::string::npos ? std::string::npos : slash - start));
      if (slash == std::string::npos) break;
      start = slash + 1;
    }
    for (std::size_t k = 0; k + 1 < parts.size(); ++k) {
      const std::string& p = parts[k];
      if (p.empty()) continue;
      if (!path.empty() && p.rfind(path + ".", 0) == 0) path = p;
      else path = path.empty() ? p : path + "." + p;
    }
    // A functional op inside a module's forward (x + identity, torch.flatten) is not a submodule: it gets
    // the op's own name under the module ("layer1.0.add"), so the module's path stays a region.
    std::string op_part;
    for (char ch : parts.empty() ? raw : parts.back()) op_part += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (path.empty()) path = op_part;
    else if (kFunctionalOps.count(n.op_type) && !(n.op_type == "MatMul" && n.input.size() == 2 && vals_.count(n.input[1]) && vals_.at(n.input[1]).init))
      path += "." + op_part;
  } else {
    path = raw;
  }
  std::string s;
  for (char c : path) s += (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-') ? c : '_';
  while (!s.empty() && s.front() == '.') s.erase(s.begin());
  while (!s.empty() && s.back() == '.') s.pop_back();
  if (s.empty()) {
    for (char c : n.op_type) s += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (s.empty() || !std::isalpha(static_cast<unsigned char>(s[0]))) s = "node";
  }
  if (s.size() > kMaxNameBytes / 2) s.resize(kMaxNameBytes / 2);
  std::string name = s;
  for (int k = 2; names_.count(name); ++k) name = s + "_" + std::to_string(k);
  names_.insert(name);
  return name;
}

Layer* Importer::add_layer(const ONode& n, const std::string& kind, std::vector<std::string> inputs,
                           const std::vector<std::pair<std::string, std::string>>& attrs, std::vector<i64> out_shape,
                           const std::string& name_override) {
  const OpRule* rule = find_op(kind);
  if (!rule) {
    unsupported(n, "needs the layer kind '" + kind + "', which this memfit build does not have");
    return nullptr;
  }
  for (const auto& [k, text] : attrs)
    if (!find_attr(*rule, k)) {
      unsupported(n, "needs option '" + k + "' of '" + kind + "', which this memfit build does not have");
      return nullptr;
    }
  // Every activation comes from here (or is the input): the batch first and only there, sizes bounded,
  // so the shape arithmetic of later nodes never meets the batch marker or a size near 2^63.
  for (std::size_t k = 0; k < out_shape.size(); ++k) {
    i64 d = out_shape[k];
    if (k == 0 ? d != kBatch : (d <= 0 || d > kMaxDim))
      fail(n, "the output shape " + shape_text(out_shape) + (k == 0 ? " does not keep the batch first" : " has a dimension that is not in 1..2^40"),
           "check the input shape and the node's attributes");
  }
  if (out_shape.empty()) fail(n, "the output is a scalar", "memfit needs the batch as dimension 0");
  Layer l;
  l.name = name_override.empty() ? layer_name(n) : name_override;
  l.kind = rule->kind;
  l.inputs = std::move(inputs);
  l.pos = {file_, 0, 0};
  for (const auto& [k, text] : attrs) l.attrs[k] = parse_attr_text(*find_attr(*rule, k), text, l.pos, l.name);
  fill_defaults(*rule, l);
  m_.layers.push_back(std::move(l));
  linear_open_.push_back(0);
  int index = static_cast<int>(m_.layers.size()) - 1;
  set_output(n, 0, act(m_.layers.back().name, std::move(out_shape), index));
  return &m_.layers.back();
}

void Importer::read_input() {
  std::set<std::string> inits;
  for (const auto& t : g_.initializer) inits.insert(t.name);
  std::vector<const onnx::ValueInfo*> real;
  for (const auto& vi : g_.input)
    if (!inits.count(vi.name)) real.push_back(&vi);  // IR < 4 lists initializers as inputs too
  if (real.size() != 1) {
    std::string names;
    for (const auto* v : real) names += (names.empty() ? "" : ", ") + v->name;
    throw Error({file_, 0, 0}, "", "the graph has " + std::to_string(real.size()) + " inputs" + (names.empty() ? "" : " (" + names + ")"),
                "memfit models one input (the batch); export the model with a single input tensor");
  }
  const onnx::ValueInfo& in = *real[0];
  if (!in.has_shape || in.dims.empty())
    throw Error({file_, 0, 0}, "", "the graph input '" + in.name + "' has no shape", "export with a sample input so the shape is recorded");
  if (in.elem_type != onnx::kFloat && in.elem_type != onnx::kFloat16 && in.elem_type != onnx::kBfloat16 && in.elem_type != onnx::kDouble)
    throw Error({file_, 0, 0}, "", "the graph input '" + in.name + "' is not floating point (ONNX type " + std::to_string(in.elem_type) +
                                       "): token ids need an embedding, which memfit does not model",
                "use a model whose input is a float tensor (images, features)");
  if (in.elem_type != onnx::kFloat) note("the graph input is not float32 in the file; memfit trains with a float32 batch (--dtype fp16/bf16 models autocast)");
  std::vector<i64> shape{kBatch};
  std::vector<std::string> missing;
  std::string per_sample;
  for (std::size_t k = 0; k < in.dims.size(); ++k) {
    const onnx::Dim& d = in.dims[k];
    if (k == 0) {
      if (d.known) note("the graph input has a fixed batch of " + std::to_string(d.value) + " in the file; memfit uses --batch instead");
      continue;
    }
    i64 v = 0;
    if (d.known) {
      v = d.value;
    } else {
      auto it = dims_.find(d.param);
      if (d.param.empty() || it == dims_.end()) {
        missing.push_back(d.param.empty() ? "dimension " + std::to_string(k) + " (unnamed)" : d.param);
        continue;
      }
      v = it->second;
      note("the input's dimension '" + d.param + "' is " + std::to_string(v) + " (--dim)");
    }
    if (v <= 0 || v > kMaxDim)
      throw Error({file_, 0, 0}, "", "the graph input '" + in.name + "' has dimension " + std::to_string(k) + " = " + std::to_string(v),
                  "sizes must be in 1..2^40");
    shape.push_back(v);
    per_sample += (per_sample.empty() ? "" : "x") + std::to_string(v);
  }
  if (!missing.empty()) {
    std::string list, eg;
    for (const auto& s : missing) list += (list.empty() ? "" : ", ") + s;
    for (const auto& s : missing) eg += " --dim " + (s.find(' ') == std::string::npos ? s : std::string("NAME")) + "=128";
    throw Error({file_, 0, 0}, "", "the graph input '" + in.name + "' has symbolic dimensions without a value: " + list,
                "give each a size:" + eg + " (in a request: \"dims\": {\"" + missing[0] + "\": 128})");
  }
  if (shape.size() < 2)
    throw Error({file_, 0, 0}, "", "the graph input '" + in.name + "' is 1-d (only a batch)", "memfit needs per-sample features");
  if (static_cast<i64>(shape.size()) - 1 > kMaxInputRank)
    throw Error({file_, 0, 0}, "", "the graph input '" + in.name + "' has " + std::to_string(shape.size() - 1) + " dimensions per sample",
                "memfit takes at most " + std::to_string(kMaxInputRank) + " (model.hpp kMaxInputRank)");
  Layer l;
  l.name = "input";
  l.kind = "input";
  l.pos = {file_, 0, 0};
  Value v;
  v.type = Value::Type::text;
  v.text = per_sample;
  v.pos = l.pos;
  l.attrs["shape"] = v;
  names_.insert("input");
  m_.layers.push_back(std::move(l));
  linear_open_.push_back(0);
  vals_[in.name] = act("input", shape, 0);
}

void Importer::topo_order(std::vector<int>& order) {
  const auto& nodes = g_.node;
  for (std::size_t i = 0; i < nodes.size(); ++i)
    for (const auto& o : nodes[i].output)
      if (!o.empty()) {
        if (producer_.count(o) || vals_.count(o))
          throw Error({file_, 0, 0}, "", where(nodes[i]) + " writes '" + o + "', which is already defined",
                      "every value in an ONNX graph has one producer (the file is malformed)");
        producer_[o] = static_cast<int>(i);
      }
  std::vector<int> pending(nodes.size(), 0);
  std::vector<std::vector<int>> users(nodes.size());
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    std::set<int> deps;
    for (const auto& x : nodes[i].input) {
      if (x.empty()) continue;
      ++consumers_[x];
      auto it = producer_.find(x);
      if (it != producer_.end()) deps.insert(it->second);
      else if (!vals_.count(x))
        throw Error({file_, 0, 0}, "", where(nodes[i]) + " reads '" + x + "', which no node, input or initializer defines",
                    "the file is malformed; export it again");
    }
    pending[i] = static_cast<int>(deps.size());
    for (int d : deps) users[static_cast<std::size_t>(d)].push_back(static_cast<int>(i));
  }
  for (const auto& o : g_.output) ++consumers_[o.name];
  std::vector<int> ready;
  for (std::size_t i = 0; i < nodes.size(); ++i)
    if (pending[i] == 0) ready.push_back(static_cast<int>(i));
  // Kahn's algorithm, smallest index first, so a sorted graph keeps the file's order.
  std::sort(ready.rbegin(), ready.rend());
  while (!ready.empty()) {
    int i = ready.back();
    ready.pop_back();
    order.push_back(i);
    for (int u : users[static_cast<std::size_t>(i)])
      if (--pending[static_cast<std::size_t>(u)] == 0) {
        ready.push_back(u);
        std::sort(ready.rbegin(), ready.rend());
      }
  }
  if (order.size() != nodes.size()) {
    std::string list;
    int shown = 0;
    for (std::size_t i = 0; i < nodes.size() && shown < 5; ++i)
      if (pending[i] > 0) list += (shown++ ? ", " : "") + where(nodes[i]);
    throw Error({file_, 0, 0}, "", "the graph has a cycle (" + std::to_string(nodes.size() - order.size()) +
                                       " nodes wait on each other, e.g. " + list + ")",
                "an ONNX graph must be acyclic; export the model again");
  }
}

// The GELU that torch.onnx writes for nn.GELU() below opset 20: x * 0.5 * (1 + erf(x / sqrt(2))), as
// Div(x, sqrt2) -> Erf -> Add(1) -> Mul(x, .) -> Mul(0.5) (or with x * 0.5 first). Scalars come from
// Constant nodes or initializers, which are already known (they are read before any node is mapped).
void Importer::find_patterns() {
  const auto& nodes = g_.node;
  auto sole_consumer = [&](const std::string& v) -> int {
    if (n_consumers(v) != 1) return -1;
    for (std::size_t i = 0; i < nodes.size(); ++i)
      for (const auto& x : nodes[i].input)
        if (x == v) return static_cast<int>(i);
    return -1;
  };
  auto prod = [&](const std::string& v) -> const ONode* {
    auto it = producer_.find(v);
    return it == producer_.end() ? nullptr : &nodes[static_cast<std::size_t>(it->second)];
  };
  auto const_scalar = [&](const std::string& v) -> std::optional<double> {
    if (auto s = scalar_of(v)) return s;
    const ONode* p = prod(v);
    if (p && p->op_type == "Constant" && p->attr("value") && p->attr("value")->t && p->attr("value")->t->values_known &&
        p->attr("value")->t->values.size() == 1)
      return p->attr("value")->t->values[0];
    return std::nullopt;
  };
  // For a binary node: the input that is not the scalar `c` (or "" if none is).
  auto other_than_scalar = [&](const ONode& b, double c) -> std::string {
    if (b.input.size() != 2) return "";
    for (int k = 0; k < 2; ++k)
      if (auto s = const_scalar(b.input[static_cast<std::size_t>(k)]); s && near(*s, c)) return b.input[static_cast<std::size_t>(1 - k)];
    return "";
  };
  for (std::size_t e = 0; e < nodes.size(); ++e) {
    const ONode& erf = nodes[e];
    if (erf.op_type != "Erf" || erf.input.size() != 1 || erf.output.size() != 1) continue;
    const ONode* div = prod(erf.input[0]);
    if (!div || n_consumers(erf.input[0]) != 1) continue;
    std::string x;
    if (div->op_type == "Div" && div->input.size() == 2) {
      if (auto s = const_scalar(div->input[1]); s && near(*s, std::sqrt(2.0))) x = div->input[0];
    } else if (div->op_type == "Mul") {
      x = other_than_scalar(*div, 1.0 / std::sqrt(2.0));
    }
    if (x.empty()) continue;
    int a = sole_consumer(erf.output[0]);
    if (a < 0 || nodes[static_cast<std::size_t>(a)].op_type != "Add") continue;
    const ONode& add = nodes[static_cast<std::size_t>(a)];
    if (other_than_scalar(add, 1.0) != erf.output[0]) continue;
    int mm = sole_consumer(add.output[0]);
    if (mm < 0 || nodes[static_cast<std::size_t>(mm)].op_type != "Mul") continue;
    const ONode& mul = nodes[static_cast<std::size_t>(mm)];
    if (mul.input.size() != 2) continue;
    std::string o = mul.input[0] == add.output[0] ? mul.input[1] : mul.input[0];
    std::vector<int> nodes_in{static_cast<int>(producer_[div->output[0]]), static_cast<int>(e), a, mm};
    int last = -1;
    if (o == x) {
      int f = sole_consumer(mul.output[0]);
      if (f < 0 || nodes[static_cast<std::size_t>(f)].op_type != "Mul" || other_than_scalar(nodes[static_cast<std::size_t>(f)], 0.5) != mul.output[0]) continue;
      last = f;
    } else {
      const ONode* h = prod(o);
      if (!h || h->op_type != "Mul" || n_consumers(o) != 1 || other_than_scalar(*h, 0.5) != x) continue;
      nodes_in.push_back(producer_[o]);
      last = mm;
    }
    for (int k : nodes_in)
      if (k != last) absorbed_.insert(k);  // skipped; the last node of the pattern is mapped (to gelu)
    gelu_at_[last] = {x, erf.name.empty() ? "" : erf.name};
  }
}

i64 Importer::axis(const ONode& n, i64 a, std::size_t rank, bool allow_batch) {
  i64 r = static_cast<i64>(rank);
  if (a < -r || a >= r) fail(n, "axis " + std::to_string(a) + " is out of range for a " + std::to_string(r) + "-d tensor", "the file is malformed");
  if (a < 0) a += r;
  if (a == 0 && !allow_batch) fail(n, "acts on dimension 0, the batch", "memfit models per-sample layers; the batch dimension must stay first and whole");
  return a;
}

std::vector<i64> Importer::broadcast(const ONode& n, const std::vector<i64>& a, const std::vector<i64>& b) {
  std::size_t r = std::max(a.size(), b.size());
  std::vector<i64> out(r);
  for (std::size_t k = 0; k < r; ++k) {
    i64 x = k + a.size() >= r ? a[k + a.size() - r] : 1;
    i64 y = k + b.size() >= r ? b[k + b.size() - r] : 1;
    if (x == y || y == 1) out[k] = x;
    else if (x == 1) out[k] = y;
    else fail(n, "the shapes " + shape_text(a) + " and " + shape_text(b) + " do not broadcast", "the file is malformed");
  }
  return out;
}

std::vector<i64> Importer::values_as_ints(const ONode& n, const Val* v, const char* what) {
  if (!is_const(v) || !v->values_known)
    fail(n, std::string("its ") + what + " is not a constant memfit can evaluate",
         "export with do_constant_folding=True and a static shape, or fix the size in the model");
  std::vector<i64> out;
  for (double d : v->values) {
    if (d != static_cast<double>(kBatch) && (d != std::floor(d) || std::fabs(d) > 9.0e15))
      fail(n, std::string("its ") + what + " holds " + double_text(d) + ", not an integer", "the file is malformed");
    out.push_back(d == static_cast<double>(kBatch) ? kBatch : static_cast<i64>(d));
  }
  return out;
}

// A parameter input: an initializer (or its 2-d transpose). Marks nothing; the layer's own rule
// creates the parameter, and check_param makes sure its shape is the initializer's.
const Val* Importer::param(const ONode& n, std::size_t k, const char* role) {
  const Val* v = in(n, k);
  if (!v) return nullptr;
  if (!is_const(v) || !v->init) {
    unsupported(n, std::string("its ") + role + " is " + (is_act(v) ? "computed by the graph" : "not an initializer") +
                       " (memfit takes weights from initializers)");
    return nullptr;
  }
  return v;
}

void Importer::check_param(const ONode& n, const Val* p, const std::vector<i64>& want, const char* role) {
  std::vector<i64> have = p->init->dims;
  if (p->transposed && have.size() == 2) std::swap(have[0], have[1]);
  if (have != want)
    fail(n, std::string("its ") + role + " '" + p->init->name + "' has shape " + shape_text(have) + ", but the layer needs " + shape_text(want),
         "the file is inconsistent; export it again");
  if (p->init->data_type != onnx::kFloat)
    note("some parameters are not float32 in the file (e.g. '" + p->init->name + "'); memfit trains float32 parameters (--dtype fp16/bf16 models autocast)");
}

bool Importer::eval_constant(const ONode& n) {
  const std::string& op = n.op_type;
  Val out;
  out.defined = true;
  if (op == "Constant") {
    const Attribute* a = n.attr("value");
    if (a && a->t) {
      out.dims_known = true;
      out.dims = a->t->dims;
      out.values_known = a->t->values_known;
      out.values = a->t->values;
      out.dtype = a->t->data_type;
    } else if (const Attribute* b = n.attr("value_int")) {
      out.dims_known = out.values_known = true;
      out.values = {static_cast<double>(b->i)};
      out.dtype = onnx::kInt64;
    } else if (const Attribute* c = n.attr("value_ints")) {
      out.dims_known = out.values_known = true;
      out.dims = {static_cast<i64>(c->ints.size())};
      for (i64 x : c->ints) out.values.push_back(static_cast<double>(x));
      out.dtype = onnx::kInt64;
    } else if (const Attribute* d = n.attr("value_float")) {
      out.dims_known = out.values_known = true;
      out.values = {d->f};
    }
    set_output(n, 0, out);
    return true;
  }
  const Val* x = in(n, 0);
  if (op == "Shape" && is_act(x)) {
    out.dims_known = out.values_known = true;
    i64 r = static_cast<i64>(x->shape.size());
    i64 start = attr_i(n, "start", 0), end = attr_i(n, "end", r);
    if (start < 0) start += r;
    if (end < 0) end += r;
    start = std::clamp<i64>(start, 0, r);
    end = std::clamp<i64>(end, start, r);
    for (i64 k = start; k < end; ++k) out.values.push_back(static_cast<double>(x->shape[static_cast<std::size_t>(k)]));
    out.dims = {static_cast<i64>(out.values.size())};
    out.dtype = onnx::kInt64;
    set_output(n, 0, out);
    return true;
  }
  // The rest needs every (non-empty) input constant.
  for (std::size_t k = 0; k < n.input.size(); ++k)
    if (!n.input[k].empty() && !is_const(in(n, k))) return false;
  if (n.input.empty()) return false;
  auto known = [&](const Val* v) { return v && v->values_known; };
  bool has_batch = false;
  for (std::size_t k = 0; k < n.input.size(); ++k)
    if (const Val* v = in(n, k); v && v->values_known)
      for (double d : v->values) has_batch = has_batch || d == static_cast<double>(kBatch);
  if (op == "Transpose" && x->init && x->init->dims.size() == 2) {
    std::vector<i64> perm = attr_ints(n, "perm");
    if (perm.empty() || perm == std::vector<i64>{1, 0}) {
      out = *x;
      out.transposed = !x->transposed;
      set_output(n, 0, out);
      return true;
    }
  }
  if (op == "Identity" && x->init) {  // torch.onnx shares equal initializers through Identity nodes
    set_output(n, 0, *x);
    return true;
  }
  if ((op == "Identity" || op == "Cast") && known(x)) {
    out = *x;
    out.init = nullptr;  // a computed copy, not the parameter itself
    out.transposed = false;
    if (op == "Cast") out.dtype = static_cast<int>(attr_i(n, "to", x->dtype));
    set_output(n, 0, out);
    return true;
  }
  if ((op == "Unsqueeze" || op == "Squeeze") && known(x)) {
    out = *x;
    out.init = nullptr;
    out.dims.clear();
    out.dims_known = false;  // values (what Reshape needs) are unchanged; ranks only matter for Concat below
    if (op == "Unsqueeze" && x->values.size() == 1) out.dims = {1}, out.dims_known = true;
    set_output(n, 0, out);
    return true;
  }
  if (op == "Gather" && known(x) && known(in(n, 1)) && attr_i(n, "axis", 0) == 0) {
    std::vector<i64> idx = values_as_ints(n, in(n, 1), "indices");
    out.values_known = true;
    for (i64 i : idx) {
      i64 s = static_cast<i64>(x->values.size());
      if (i < -s || i >= s) fail(n, "index " + std::to_string(i) + " is out of range", "the file is malformed");
      out.values.push_back(x->values[static_cast<std::size_t>(i < 0 ? i + s : i)]);
    }
    const Val* iv = in(n, 1);
    out.dims_known = iv->dims_known;
    out.dims = iv->dims;
    out.dtype = x->dtype;
    set_output(n, 0, out);
    return true;
  }
  if (op == "Concat") {
    out.values_known = true;
    for (std::size_t k = 0; k < n.input.size(); ++k) {
      const Val* v = in(n, k);
      if (!known(v)) return false;
      out.values.insert(out.values.end(), v->values.begin(), v->values.end());
      if (out.values.size() > static_cast<std::size_t>(onnx::kMaxValueElements)) return false;
    }
    out.dims_known = true;
    out.dims = {static_cast<i64>(out.values.size())};
    out.dtype = x->dtype;
    set_output(n, 0, out);
    return true;
  }
  if ((op == "Mul" || op == "Add" || op == "Sub" || op == "Div") && known(x) && known(in(n, 1)) && !has_batch) {
    const Val* y = in(n, 1);
    std::size_t len = std::max(x->values.size(), y->values.size());
    if ((x->values.size() != len && x->values.size() != 1) || (y->values.size() != len && y->values.size() != 1)) return false;
    out.values_known = true;
    for (std::size_t k = 0; k < len; ++k) {
      double a = x->values[x->values.size() == 1 ? 0 : k], b = y->values[y->values.size() == 1 ? 0 : k];
      // integer tensors divide as integers (ONNX Div on int64 truncates): x.chunk's sizes are computed so
      bool ints = x->dtype == onnx::kInt64 || x->dtype == onnx::kInt32 || y->dtype == onnx::kInt64 || y->dtype == onnx::kInt32;
      double r = op == "Mul" ? a * b : op == "Add" ? a + b : op == "Sub" ? a - b : (b == 0 ? NAN : ints ? std::trunc(a / b) : a / b);
      if (!std::isfinite(r)) return false;
      out.values.push_back(r);
    }
    out.dtype = x->dtype;
    out.dims_known = x->values.size() == len ? x->dims_known : y->dims_known;
    out.dims = x->values.size() == len ? x->dims : y->dims;
    set_output(n, 0, out);
    return true;
  }
  // Other constant-only nodes: a constant whose values memfit does not know (fine unless needed).
  for (std::size_t k = 0; k < n.output.size(); ++k) set_output(n, k, out);
  return true;
}

void Importer::map_conv(const ONode& n) {
  const Val* x = in(n, 0);
  if (x->shape.size() != 4) return unsupported(n, "only 2-d convolutions (4-d inputs) are modelled");
  const Val* w = param(n, 1, "weight");
  if (!w) return;
  const Val* b = n.input.size() > 2 && !n.input[2].empty() ? param(n, 2, "bias") : nullptr;
  if (n.input.size() > 2 && !n.input[2].empty() && !b) return;
  const auto& wd = w->init->dims;
  if (wd.size() != 4 || w->transposed) return unsupported(n, "the weight is not 4-d");
  std::string ap = n.attr("auto_pad") ? n.attr("auto_pad")->s : "NOTSET";
  if (ap != "NOTSET" && ap != "VALID") return unsupported(n, "auto_pad=" + ap + " (asymmetric padding) is not modelled");
  i64 groups = attr_i(n, "group", 1);
  std::vector<i64> k = attr_ints(n, "kernel_shape"), s = attr_ints(n, "strides"), p = attr_ints(n, "pads"), d = attr_ints(n, "dilations");
  if (k.empty()) k = {wd[2], wd[3]};
  if (s.empty()) s = {1, 1};
  if (d.empty()) d = {1, 1};
  if (p.empty() || ap == "VALID") p = {0, 0, 0, 0};
  if (k.size() != 2 || s.size() != 2 || d.size() != 2 || p.size() != 4) fail(n, "kernel/strides/pads/dilations do not describe a 2-d convolution", "the file is malformed");
  if (p[0] != p[2] || p[1] != p[3]) return unsupported(n, "asymmetric padding " + join(p, ",") + " (nn.Conv2d pads both sides equally)");
  if (groups <= 0 || x->shape[1] % groups != 0) fail(n, "group=" + std::to_string(groups) + " does not divide the input's channels", "the file is malformed");
  i64 out_c = wd[0];
  // torch.onnx names the weights it computes itself "onnx::Conv_N": in eval mode it folds a following
  // BatchNorm into the convolution, so the module had parameters and a layer this file no longer shows.
  if (w->init->name.rfind("onnx::Conv", 0) == 0)
    note("convolution weights named like '" + w->init->name + "' were computed by torch.onnx, which folds BatchNorm into "
         "the convolution when exporting in eval mode: the BatchNorm layers and their parameters are missing; export with "
         "training=torch.onnx.TrainingMode.TRAINING to keep them");
  check_param(n, w, {out_c, x->shape[1] / groups, k[0], k[1]}, "weight");
  if (b) check_param(n, b, {out_c}, "bias");
  std::vector<i64> out{kBatch, out_c, 0, 0};
  for (int a = 0; a < 2; ++a) {
    if (s[a] <= 0 || d[a] <= 0 || p[a] < 0 || k[a] <= 0) fail(n, "non-positive kernel, stride or dilation, or negative padding", "the file is malformed");
    i64 span = checked_add(checked_mul(d[a], k[a] - 1, "conv kernel"), 1, "conv kernel");
    i64 avail = checked_add(x->shape[2 + a], 2 * p[a], "conv input");
    if (avail < span) fail(n, "the kernel is larger than the padded input " + shape_text(x->shape), "check the input shape");
    out[2 + a] = (avail - span) / s[a] + 1;
  }
  add_layer(n, "conv2d", {x->ref},
            {{"out_channels", std::to_string(out_c)}, {"kernel", join(k, "x")}, {"stride", join(s, "x")},
             {"padding", std::to_string(p[0]) + "x" + std::to_string(p[1])}, {"dilation", join(d, "x")},
             {"groups", std::to_string(groups)}, {"bias", b ? "true" : "false"}},
            out);
}

void Importer::map_pool(const ONode& n, bool max) {
  const Val* x = in(n, 0);
  if (x->shape.size() != 4) return unsupported(n, "only 2-d pooling (4-d inputs) is modelled");
  if (n.output.size() > 1 && !n.output[1].empty() && n_consumers(n.output[1]) > 0) return unsupported(n, "the indices output is used");
  std::string ap = n.attr("auto_pad") ? n.attr("auto_pad")->s : "NOTSET";
  if (ap != "NOTSET" && ap != "VALID") return unsupported(n, "auto_pad=" + ap + " (asymmetric padding) is not modelled");
  std::vector<i64> k = attr_ints(n, "kernel_shape"), s = attr_ints(n, "strides"), p = attr_ints(n, "pads"), d = attr_ints(n, "dilations");
  if (s.empty()) s = {1, 1};  // ONNX's default stride is 1 (PyTorch's is the kernel): written out explicitly below
  if (d.empty()) d = {1, 1};
  if (p.empty() || ap == "VALID") p = {0, 0, 0, 0};
  if (k.size() != 2 || s.size() != 2 || d.size() != 2 || p.size() != 4) fail(n, "kernel/strides/pads do not describe 2-d pooling", "the file is malformed");
  if (p[0] != p[2] || p[1] != p[3]) return unsupported(n, "asymmetric padding " + join(p, ","));
  if (!max && (d[0] != 1 || d[1] != 1)) return unsupported(n, "dilated average pooling");
  bool ceil = attr_i(n, "ceil_mode", 0) != 0;
  std::vector<i64> out{kBatch, x->shape[1], 0, 0};
  for (int a = 0; a < 2; ++a) {
    if (s[a] <= 0 || d[a] <= 0 || p[a] < 0 || k[a] <= 0) fail(n, "non-positive kernel, stride or dilation, or negative padding", "the file is malformed");
    // PyTorch's pooling_output_shape (aten/src/ATen/native/Pool.h), which memfit's rule also uses.
    i64 span = checked_add(checked_mul(d[a], k[a] - 1, "pool kernel"), 1, "pool kernel");
    i64 h = x->shape[2 + a];
    i64 num = checked_add(h, 2 * p[a], "pool input") - span + (ceil ? s[a] - 1 : 0);
    if (num < 0) fail(n, "the window is larger than the padded input " + shape_text(x->shape), "check the input shape");
    i64 o = num / s[a] + 1;
    if (ceil && (o - 1) * s[a] >= h + p[a]) --o;
    out[2 + a] = o;
  }
  std::vector<std::pair<std::string, std::string>> attrs{{"kernel", join(k, "x")}, {"stride", join(s, "x")},
                                                         {"padding", std::to_string(p[0]) + "x" + std::to_string(p[1])},
                                                         {"ceil_mode", ceil ? "true" : "false"}};
  if (max) {
    attrs.push_back({"dilation", join(d, "x")});
    if (add_layer(n, "maxpool2d", {x->ref}, attrs, out))
      note("ONNX MaxPool is modelled as nn.MaxPool2d in training, which keeps int64 indices of the output's size for backward");
  } else {
    attrs.push_back({"count_include_pad", attr_i(n, "count_include_pad", 0) ? "true" : "false"});
    add_layer(n, "avgpool2d", {x->ref}, attrs, out);
  }
}

void Importer::map_gemm(const ONode& n) {
  const Val* a = in(n, 0);
  if (attr_i(n, "transA", 0) != 0) return unsupported(n, "transA=1 (the activation transposed)");
  if (a->shape.size() != 2) fail(n, "Gemm's input is not 2-d: " + shape_text(a->shape), "the file is malformed");
  const Val* w = param(n, 1, "weight");
  if (!w) return;
  const Val* b = n.input.size() > 2 && !n.input[2].empty() ? param(n, 2, "bias") : nullptr;
  if (n.input.size() > 2 && !n.input[2].empty() && !b) return;
  if (w->init->dims.size() != 2) fail(n, "the weight is not 2-d", "the file is malformed");
  std::vector<i64> kn = w->init->dims;  // as stored; B is [K, N] unless transposed
  if (w->transposed) std::swap(kn[0], kn[1]);
  if (attr_i(n, "transB", 0) != 0) std::swap(kn[0], kn[1]);
  i64 in_f = kn[0], out_f = kn[1];
  if (in_f != a->shape[1]) fail(n, "the weight takes " + std::to_string(in_f) + " features but the input has " + std::to_string(a->shape[1]), "the file is inconsistent");
  if (b) {
    i64 bn = 1;
    for (i64 d : b->init->dims) bn = checked_mul(bn, d, "bias");
    if (bn != out_f) fail(n, "the bias has " + std::to_string(bn) + " elements, not " + std::to_string(out_f), "the file is inconsistent");
  }
  add_layer(n, "linear", {a->ref}, {{"out_features", std::to_string(out_f)}, {"bias", b ? "true" : "false"}}, {kBatch, out_f});
}

void Importer::map_matmul(const ONode& n) {
  const Val* a = in(n, 0);
  const Val* b = in(n, 1);
  if (is_act(a) && is_act(b)) {
    if (a->shape.size() < 2 || b->shape.size() < 2) return unsupported(n, "a matrix-vector product");
    std::vector<i64> ba(a->shape.begin(), a->shape.end() - 2), bb(b->shape.begin(), b->shape.end() - 2);
    if (a->shape.back() != b->shape[b->shape.size() - 2]) fail(n, "inner dimensions differ: " + shape_text(a->shape) + " x " + shape_text(b->shape), "the file is malformed");
    std::vector<i64> out = broadcast(n, ba, bb);
    out.push_back(a->shape[a->shape.size() - 2]);
    out.push_back(b->shape.back());
    add_layer(n, "matmul", {a->ref, b->ref}, {}, out);
    return;
  }
  if (!is_act(a)) return unsupported(n, "weight @ activation (the activation second)");
  const Val* w = param(n, 1, "weight");
  if (!w) return;
  if (w->init->dims.size() != 2) return unsupported(n, "a weight that is not 2-d");
  std::vector<i64> kn = w->init->dims;
  if (w->transposed) std::swap(kn[0], kn[1]);
  if (kn[0] != a->shape.back()) fail(n, "the weight takes " + std::to_string(kn[0]) + " features but the input has " + std::to_string(a->shape.back()), "the file is inconsistent");
  std::vector<i64> out = a->shape;
  out.back() = kn[1];
  if (add_layer(n, "linear", {a->ref}, {{"out_features", std::to_string(kn[1])}, {"bias", "false"}}, out))
    linear_open_.back() = 1;  // an Add of a bias initializer right after folds in (nn.Linear)
}

void Importer::map_binary(const ONode& n) {
  const std::string& op = n.op_type;
  const Val* a = in(n, 0);
  const Val* b = in(n, 1);
  if (!a || !b) fail(n, "needs two inputs", "the file is malformed");
  if (is_act(a) && is_act(b)) {
    if (op == "Sub" || op == "Div") return unsupported(n, "memfit has no '" + std::string(op == "Sub" ? "sub" : "div") + "' layer");
    std::vector<i64> out = broadcast(n, a->shape, b->shape);
    if (out[0] != kBatch) fail(n, "the result does not keep the batch first", "memfit needs the batch as dimension 0");
    add_layer(n, op == "Add" ? "add" : "mul", {a->ref, b->ref}, {}, out);
    return;
  }
  const Val* x = is_act(a) ? a : b;
  const Val* c = is_act(a) ? b : a;
  // MatMul + Add(bias): nn.Linear on an N-d input, folded into the linear layer as its bias.
  if (op == "Add" && c->init && x->layer >= 0 && linear_open_[static_cast<std::size_t>(x->layer)] &&
      n_consumers(is_act(a) ? n.input[0] : n.input[1]) == 1 && x->layer == static_cast<int>(m_.layers.size()) - 1) {
    i64 numel = 1;
    for (i64 d : c->init->dims) numel = checked_mul(numel, d, "bias");
    if (c->init->dims.size() <= 1 && numel == x->shape.back()) {
      Layer& l = m_.layers[static_cast<std::size_t>(x->layer)];
      l.attrs["bias"] = parse_attr_text(*find_attr(*find_op("linear"), "bias"), "true", l.pos, l.name);
      linear_open_[static_cast<std::size_t>(x->layer)] = 0;
      alias(n, *x);
      return;
    }
  }
  std::optional<double> s = scalar(c);
  // x + 0, x - 0, x * 1, x / 1: no op in PyTorch's graph would survive as these; nothing to allocate.
  if (s && ((*s == 0 && (op == "Add" || op == "Sub")) || (*s == 1 && (op == "Mul" || op == "Div"))) && (c == b || op == "Add" || op == "Mul")) {
    alias(n, *x);
    return;
  }
  if (c->init && c->init->data_type == onnx::kFloat && !c->values_known)
    return unsupported(n, "applies the parameter '" + c->init->name + "', which no memfit layer holds");
  unsupported(n, "an elementwise " + op + " with a constant (memfit has no layer for tensor-with-constant arithmetic)");
}

void Importer::map_reshape(const ONode& n, std::vector<i64> target, bool allowzero) {
  const Val* x = in(n, 0);
  std::vector<i64> out;
  i64 in_numel = 1;  // per sample
  for (std::size_t k = 1; k < x->shape.size(); ++k) in_numel = checked_mul(in_numel, x->shape[k], "reshape");
  int infer = -1;
  for (std::size_t k = 0; k < target.size(); ++k) {
    i64 t = target[k];
    if (t == 0 && !allowzero) {
      if (k >= x->shape.size()) fail(n, "copies dimension " + std::to_string(k) + ", which the input lacks", "the file is malformed");
      t = x->shape[k];
    }
    if (t == -1) {
      if (infer >= 0) fail(n, "two -1 entries in the target shape", "the file is malformed");
      infer = static_cast<int>(k);
    } else if (t != kBatch && (t <= 0 || t > kMaxDim)) {
      fail(n, "target dimension " + std::to_string(t), "sizes must be in 1..2^40 (or -1 once)");
    }
    out.push_back(t);
  }
  if (out.empty()) return unsupported(n, "a reshape to a scalar");
  // The batch stays first: either the shape says so (kBatch, from Shape), or -1 there with the rest known.
  if (out[0] == -1 && infer == 0) {
    i64 rest = 1;
    for (std::size_t k = 1; k < out.size(); ++k) rest = checked_mul(rest, out[k], "reshape");
    if (rest == 0 || in_numel % rest != 0) fail(n, "the target shape does not divide the input", "the file is malformed");
    if (rest != in_numel) return unsupported(n, "a reshape that folds other dimensions into the batch");
    out[0] = kBatch;
    infer = -1;
  }
  if (out[0] != kBatch) return unsupported(n, "a reshape whose first dimension is not the batch (" + shape_text(out) + ")");
  i64 known = 1;
  for (std::size_t k = 1; k < out.size(); ++k)
    if (static_cast<int>(k) != infer) known = checked_mul(known, out[k], "reshape");
  if (infer > 0) {
    if (known == 0 || in_numel % known != 0) fail(n, "the target shape does not divide the input " + shape_text(x->shape), "the file is malformed");
    out[static_cast<std::size_t>(infer)] = in_numel / known;
  } else if (known != in_numel) {
    fail(n, "reshapes " + shape_text(x->shape) + " to " + shape_text(out) + ", which has a different size", "the file is malformed");
  }
  if (out == x->shape) return alias(n, *x);
  if (out.size() == 2 && x->shape.size() > 2) {  // x.view(N, -1) is torch.flatten(x, 1)
    add_layer(n, "flatten", {x->ref}, {}, out);
    return;
  }
  std::vector<i64> per(out.begin() + 1, out.end());
  add_layer(n, "reshape", {x->ref}, {{"shape", join(per, "x")}}, out);
}

void Importer::map_slice(const ONode& n) {
  const Val* x = in(n, 0);
  std::vector<i64> starts, ends, axes, steps;
  if (opset_ < kOpsetSliceInputs) {
    starts = attr_ints(n, "starts"), ends = attr_ints(n, "ends"), axes = attr_ints(n, "axes");
  } else {
    starts = values_as_ints(n, in(n, 1), "starts");
    ends = values_as_ints(n, in(n, 2), "ends");
    if (in(n, 3)) axes = values_as_ints(n, in(n, 3), "axes");
    if (in(n, 4)) steps = values_as_ints(n, in(n, 4), "steps");
  }
  if (axes.empty())
    for (std::size_t k = 0; k < starts.size(); ++k) axes.push_back(static_cast<i64>(k));
  if (steps.empty()) steps.assign(starts.size(), 1);
  if (starts.size() != 1 || ends.size() != 1 || axes.size() != 1 || steps.size() != 1)
    return unsupported(n, "a slice over several axes at once");
  i64 ax = axis(n, axes[0], x->shape.size());
  i64 dim = x->shape[static_cast<std::size_t>(ax)];
  if (steps[0] <= 0) return unsupported(n, "a slice with a negative step (PyTorch has none)");
  auto clampi = [&](i64 v) { if (v < 0) v += dim; return std::clamp<i64>(v, 0, dim); };
  i64 st = clampi(starts[0]), en = clampi(ends[0]);
  i64 len = en > st ? (en - st + steps[0] - 1) / steps[0] : 0;
  if (len <= 0) return unsupported(n, "an empty slice");
  std::vector<i64> out = x->shape;
  out[static_cast<std::size_t>(ax)] = len;
  add_layer(n, "slice", {x->ref}, {{"dim", std::to_string(ax)}, {"start", std::to_string(st)}, {"end", std::to_string(en)}, {"step", std::to_string(steps[0])}}, out);
}

void Importer::map_split(const ONode& n) {
  const Val* x = in(n, 0);
  i64 ax = axis(n, attr_i(n, "axis", 0), x->shape.size());
  i64 dim = x->shape[static_cast<std::size_t>(ax)];
  std::vector<i64> sizes;
  if (opset_ >= kOpsetSplitInput && in(n, 1)) sizes = values_as_ints(n, in(n, 1), "split sizes");
  else sizes = attr_ints(n, "split");
  i64 parts = static_cast<i64>(n.output.size());
  if (parts < 1) fail(n, "has no outputs", "the file is malformed");
  if (sizes.empty()) {
    if (dim % parts != 0) return unsupported(n, "an uneven split without sizes");
    sizes.assign(static_cast<std::size_t>(parts), dim / parts);
  }
  if (static_cast<i64>(sizes.size()) != parts) fail(n, "split sizes and outputs differ in number", "the file is malformed");
  // torch.chunk(x, n) gives ceil(dim / n) per part, the last smaller: the only sizes a chunk layer makes.
  i64 each = (dim + parts - 1) / parts, left = dim;
  for (i64 s : sizes) {
    if (s != std::min(each, left)) return unsupported(n, "split sizes " + join(sizes, ",") + " are not torch.chunk's");
    left -= s;
  }
  if (left != 0) fail(n, "the split sizes do not add up to the dimension", "the file is malformed");
  std::vector<i64> first = x->shape;
  first[static_cast<std::size_t>(ax)] = sizes[0];
  Layer* l = add_layer(n, "chunk", {x->ref}, {{"chunks", std::to_string(parts)}, {"dim", std::to_string(ax)}}, first);
  if (!l) return;
  for (std::size_t k = 1; k < sizes.size(); ++k) {
    std::vector<i64> s = x->shape;
    s[static_cast<std::size_t>(ax)] = sizes[k];
    set_output(n, k, act(l->name + ":" + std::to_string(k), s, static_cast<int>(m_.layers.size()) - 1));
  }
}

// Every op_type map_node handles (the rest are listed as unsupported; docs/onnx.md's table).
const std::set<std::string> kMappedOps = {
    "Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Identity", "Conv", "MaxPool",
    "AveragePool", "GlobalAveragePool", "Gemm", "MatMul", "Add", "Mul", "Sub", "Div", "Relu", "Sigmoid", "Tanh",
    "HardSwish", "Gelu", "Erf", "LeakyRelu", "HardSigmoid", "Clip", "Softmax", "LogSoftmax", "Flatten", "Reshape",
    "Transpose", "Split", "Slice", "BatchNormalization", "Dropout", "LayerNormalization", "ReduceMean", "Pad"};

void Importer::map_node(int index) {
  const ONode& n = g_.node[static_cast<std::size_t>(index)];
  if (absorbed_.count(index)) return;
  const std::string& op = n.op_type;
  if (!n.domain.empty() && n.domain != "ai.onnx") return unsupported(n, "operators of domain '" + n.domain + "' are not ONNX's");
  for (std::size_t k = 0; k < n.input.size(); ++k)
    if (const Val* v = in(n, k); v && v->poisoned) {
      for (const auto& o : n.output) vals_[o].defined = true, vals_[o].poisoned = true;
      // its producer is already listed; this node too if memfit would not map its op anyway
      if (!kMappedOps.count(op)) unsupported(n, "");
      return;
    }
  if (auto g = gelu_at_.find(index); g != gelu_at_.end()) {
    const Val& x = vals_[g->second.first];
    if (x.poisoned) {  // its producer is already listed
      for (const auto& o : n.output) vals_[o].defined = true, vals_[o].poisoned = true;
      return;
    }
    if (!x.activation) return unsupported(n, "a GELU pattern on a constant");
    ONode named = n;
    named.name = g->second.second;
    named.op_type = "Gelu";  // a module (nn.GELU), named by its path, not as a functional op
    std::string name = layer_name(named);
    if (add_layer(n, "gelu", {x.ref}, {}, x.shape, name))
      note("x * 0.5 * (1 + erf(x / sqrt(2))) (Div, Erf, Add, Mul, Mul) is modelled as nn.GELU()");
    return;
  }
  if (eval_constant(n)) return;
  // Binary ops take the activation on either side (torch.onnx writes Add(bias, x) for nn.Linear).
  if (op == "Add" || op == "Mul" || op == "Sub" || op == "Div") return map_binary(n);
  const Val* x = in(n, 0);
  if (!is_act(x)) return unsupported(n, x ? "its first input is a constant memfit cannot evaluate" : "it has no input");
  const auto& xs = x->shape;
  auto same = [&](const char* kind, std::vector<std::pair<std::string, std::string>> attrs = {}) { add_layer(n, kind, {x->ref}, attrs, xs); };
  if (op == "Conv") return map_conv(n);
  if (op == "MaxPool") return map_pool(n, true);
  if (op == "AveragePool") return map_pool(n, false);
  if (op == "GlobalAveragePool") {
    if (xs.size() != 4) return unsupported(n, "only 4-d inputs");
    if (add_layer(n, "adaptive_avgpool2d", {x->ref}, {{"output_size", "1"}}, {kBatch, xs[1], 1, 1}))
      note("GlobalAveragePool is modelled as nn.AdaptiveAvgPool2d(1) (torchvision's avgpool)");
    return;
  }
  if (op == "Gemm") return map_gemm(n);
  if (op == "MatMul") return map_matmul(n);
  if (op == "Relu") return same("relu");
  if (op == "Sigmoid") return same("sigmoid");
  if (op == "Tanh") return same("tanh");
  if (op == "HardSwish") return same("hardswish");
  if (op == "Gelu") {  // opset 20; approximate is "none" or "tanh", as nn.GELU's
    std::string a = n.attr("approximate") ? n.attr("approximate")->s : "none";
    if (a != "none" && a != "tanh") return unsupported(n, "approximate='" + a + "'");
    return same("gelu", {{"approximate", a}});
  }
  if (op == "LeakyRelu") return same("leaky_relu", {{"negative_slope", float_text(attr_f(n, "alpha", 0.01))}});
  if (op == "HardSigmoid") {
    // PyTorch's hardsigmoid is relu6(x + 3) / 6 = HardSigmoid(alpha=1/6, beta=0.5); ONNX's default alpha is 0.2
    if (!near(attr_f(n, "alpha", 0.2), 1.0 / 6) || !near(attr_f(n, "beta", 0.5), 0.5)) return unsupported(n, "alpha/beta other than PyTorch's 1/6, 0.5");
    return same("hardsigmoid");
  }
  if (op == "Clip") {
    std::optional<double> lo, hi;
    if (opset_ < kOpsetClipInputs) {
      if (n.attr("min")) lo = n.attr("min")->f;
      if (n.attr("max")) hi = n.attr("max")->f;
    } else {
      lo = scalar(in(n, 1));
      hi = scalar(in(n, 2));
      if ((in(n, 1) && !lo) || (in(n, 2) && !hi)) return unsupported(n, "bounds that are not constants");
    }
    if (lo && hi && *lo == 0 && *hi == 6) return same("relu6");
    if (lo && !hi && *lo == 0) return same("relu");
    return unsupported(n, "bounds other than (0, 6) (nn.ReLU6)");
  }
  if (op == "Softmax" || op == "LogSoftmax") {
    i64 a = attr_i(n, "axis", opset_ >= kOpsetSoftmaxLastAxis ? -1 : 1);
    i64 ax = axis(n, a, xs.size());
    if (opset_ < kOpsetSoftmaxLastAxis && ax != static_cast<i64>(xs.size()) - 1)
      return unsupported(n, "a softmax over the flattened trailing dimensions (opset < 13)");
    return same(op == "Softmax" ? "softmax" : "log_softmax", {{"dim", std::to_string(ax)}});
  }
  if (op == "Flatten") {
    i64 ax = attr_i(n, "axis", 1);
    if (ax != 1 && ax != 1 - static_cast<i64>(xs.size()))
      return unsupported(n, "flatten at axis " + std::to_string(ax) + " (torch.flatten(x, 1) is axis 1)");
    i64 f = 1;
    for (std::size_t k = 1; k < xs.size(); ++k) f = checked_mul(f, xs[k], "flatten");
    if (xs.size() == 2) return alias(n, *x);
    add_layer(n, "flatten", {x->ref}, {}, {kBatch, f});
    return;
  }
  if (op == "Reshape") return map_reshape(n, values_as_ints(n, in(n, 1), "target shape"), attr_i(n, "allowzero", 0) != 0);
  if (op == "Squeeze" || op == "Unsqueeze") {
    std::vector<i64> axes = (opset_ >= kOpsetUnsqueezeInput && in(n, 1)) ? values_as_ints(n, in(n, 1), "axes") : attr_ints(n, "axes");
    std::vector<i64> out = xs;
    if (op == "Unsqueeze") {
      std::size_t r = xs.size() + axes.size();
      std::vector<i64> ax;
      for (i64 a : axes) ax.push_back(axis(n, a, r));
      std::sort(ax.begin(), ax.end());
      for (i64 a : ax) out.insert(out.begin() + a, 1);
    } else {
      if (axes.empty())
        for (std::size_t k = 1; k < xs.size(); ++k) if (xs[k] == 1) axes.push_back(static_cast<i64>(k));
      std::vector<i64> ax;
      for (i64 a : axes) ax.push_back(axis(n, a, xs.size()));
      std::sort(ax.rbegin(), ax.rend());
      for (i64 a : ax) {
        if (out[static_cast<std::size_t>(a)] != 1) fail(n, "squeezes a dimension that is not 1", "the file is malformed");
        out.erase(out.begin() + a);
      }
    }
    std::vector<i64> target = out;
    target[0] = kBatch;
    return map_reshape(n, target, true);
  }
  if (op == "Transpose") {
    std::vector<i64> perm = attr_ints(n, "perm");
    if (perm.empty())
      for (std::size_t k = xs.size(); k-- > 0;) perm.push_back(static_cast<i64>(k));
    if (perm.size() != xs.size()) fail(n, "perm has " + std::to_string(perm.size()) + " entries for a " + std::to_string(xs.size()) + "-d input", "the file is malformed");
    std::vector<i64> out, seen(xs.size(), 0);
    for (i64 p : perm) {
      if (p < 0 || p >= static_cast<i64>(xs.size()) || seen[static_cast<std::size_t>(p)]++) fail(n, "perm is not a permutation", "the file is malformed");
      out.push_back(xs[static_cast<std::size_t>(p)]);
    }
    if (perm[0] != 0) return unsupported(n, "a transpose that moves the batch dimension");
    add_layer(n, "permute", {x->ref}, {{"dims", join(perm, ",")}}, out);
    return;
  }
  if (op == "Concat") {
    std::vector<std::string> refs;
    i64 ax = axis(n, attr_i(n, "axis", 0), xs.size());
    std::vector<i64> out = xs;
    out[static_cast<std::size_t>(ax)] = 0;
    for (std::size_t k = 0; k < n.input.size(); ++k) {
      const Val* v = in(n, k);
      if (!is_act(v)) return unsupported(n, "concatenates a constant");
      if (v->shape.size() != xs.size()) fail(n, "inputs of different ranks", "the file is malformed");
      out[static_cast<std::size_t>(ax)] = checked_add(out[static_cast<std::size_t>(ax)], v->shape[static_cast<std::size_t>(ax)], "concat");
      refs.push_back(v->ref);
    }
    add_layer(n, "concat", refs, {{"dim", std::to_string(ax)}}, out);
    return;
  }
  if (op == "Split") return map_split(n);
  if (op == "Slice") return map_slice(n);
  if (op == "BatchNormalization") {
    if (xs.size() != 4) return unsupported(n, "batch norm over a " + std::to_string(xs.size()) + "-d input (only nn.BatchNorm2d is modelled)");
    for (std::size_t k = 1; k <= 4; ++k) {
      const Val* p = param(n, k, k == 1 ? "scale" : k == 2 ? "bias" : k == 3 ? "running mean" : "running variance");
      if (!p) return;
      check_param(n, p, {xs[1]}, "scale/bias/statistics");
    }
    for (std::size_t k = 1; k < n.output.size(); ++k)
      if (!n.output[k].empty() && n_consumers(n.output[k]) > 0) return unsupported(n, "its running-statistics outputs are used");
    // ONNX's momentum weighs the running value (running = m * running + (1 - m) * batch), PyTorch's the batch.
    double m = std::strtod(float_text(attr_f(n, "momentum", 0.9)).c_str(), nullptr);
    if (add_layer(n, "batchnorm2d", {x->ref}, {{"eps", float_text(attr_f(n, "epsilon", 1e-5))}, {"momentum", double_text(1.0 - m)}}, xs))
      note("BatchNormalization is trained as nn.BatchNorm2d in train mode (batch statistics, running stats updated), "
           "whichever mode it was exported in");
    return;
  }
  if (op == "Dropout") {
    double p = attr_f(n, "ratio", 0.5);
    if (opset_ >= kOpsetDropoutInputs && in(n, 1)) {
      auto s = scalar(in(n, 1));
      if (!s) return unsupported(n, "a ratio that is not a constant");
      p = *s;
    }
    if (n.output.size() > 1 && !n.output[1].empty() && n_consumers(n.output[1]) > 0) return unsupported(n, "its mask output is used");
    if (p == 0) return alias(n, *x);
    if (add_layer(n, "dropout", {x->ref}, {{"p", float_text(p)}}, xs))
      note("Dropout is trained as nn.Dropout in train mode (a mask saved for backward); torch.onnx.export in eval mode "
           "drops Dropout nodes, so such a file holds none");
    return;
  }
  if (op == "LayerNormalization") {
    i64 ax = axis(n, attr_i(n, "axis", -1), xs.size());
    if (ax != static_cast<i64>(xs.size()) - 1) return unsupported(n, "normalization over more than the last dimension");
    const Val* sc = in(n, 1) ? param(n, 1, "scale") : nullptr;
    if (in(n, 1) && !sc) return;
    const Val* bi = in(n, 2) ? param(n, 2, "bias") : nullptr;
    if (in(n, 2) && !bi) return;
    if (sc) check_param(n, sc, {xs.back()}, "scale");
    if (bi) check_param(n, bi, {xs.back()}, "bias");
    if (bi && !sc) return unsupported(n, "a bias without a scale (nn.LayerNorm has none such)");
    same("layer_norm", {{"normalized_shape", std::to_string(xs.back())}, {"eps", float_text(attr_f(n, "epsilon", 1e-5))},
                        {"elementwise_affine", sc ? "true" : "false"}, {"bias", bi ? "true" : "false"}});
    return;
  }
  if (op == "ReduceMean") {
    std::vector<i64> axes = (opset_ >= kOpsetReduceMeanInput && in(n, 1)) ? values_as_ints(n, in(n, 1), "axes") : attr_ints(n, "axes");
    if (axes.empty()) return unsupported(n, "a mean over every dimension, the batch included");
    bool keep = attr_i(n, "keepdims", 1) != 0;
    std::vector<i64> ax;
    for (i64 a : axes) ax.push_back(axis(n, a, xs.size()));
    std::vector<i64> out;
    for (std::size_t k = 0; k < xs.size(); ++k) {
      bool r = std::find(ax.begin(), ax.end(), static_cast<i64>(k)) != ax.end();
      if (!r) out.push_back(xs[k]);
      else if (keep) out.push_back(1);
    }
    add_layer(n, "mean", {x->ref}, {{"dims", join(ax, ",")}, {"keepdim", keep ? "true" : "false"}}, out);
    return;
  }
  if (op == "Identity") return alias(n, *x);
  if (op == "Pad") {
    // torch.onnx writes a Pad of zeros before some pools (DenseNet's transitions): nothing happens
    std::vector<i64> pads = opset_ >= kOpsetPadInput ? (in(n, 1) ? values_as_ints(n, in(n, 1), "pads") : std::vector<i64>{}) : attr_ints(n, "pads");
    if (std::all_of(pads.begin(), pads.end(), [](i64 p) { return p == 0; })) return alias(n, *x);
    return unsupported(n, "non-zero padding (memfit has no pad layer; a convolution's or pool's own padding is modelled)");
  }
  unsupported(n, op == "ConvTranspose" ? "transposed convolutions are not modelled" : "");
}

// torch.onnx writes x.chunk(n, dim) (ShuffleNet's channel split) as n Slice nodes whose bounds come
// from Shape arithmetic. Slices of one input along one dimension, step 1, that cut it into exactly
// torch.chunk's pieces in order are one chunk layer: its backward concatenates the pieces' gradients,
// where n separate slices would each make a zero gradient of the whole input.
void Importer::slices_to_chunks() {
  std::map<std::pair<std::string, i64>, std::vector<std::size_t>> groups;  // (input, dim) -> slice layers
  for (std::size_t k = 0; k < m_.layers.size(); ++k) {
    const Layer& l = m_.layers[k];
    if (l.kind == "slice" && l.attrs.at("step").a == 1) groups[{l.inputs[0], l.attrs.at("dim").a}].push_back(k);
  }
  std::set<std::size_t> removed;
  std::string example;
  int n_chunks = 0;
  for (auto& [key, idx] : groups) {
    if (idx.size() < 2) continue;
    std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return m_.layers[a].attrs.at("start").a < m_.layers[b].attrs.at("start").a; });
    i64 parts = static_cast<i64>(idx.size());
    i64 total = m_.layers[idx.back()].attrs.at("end").a;
    i64 each = (total + parts - 1) / parts, at = 0;
    bool chunk = true;
    for (std::size_t k : idx) {
      const Layer& l = m_.layers[k];
      chunk = chunk && l.attrs.at("start").a == at && l.attrs.at("end").a == std::min(at + each, total);
      at = l.attrs.at("end").a;
    }
    // the input's size along dim is the last end only if that slice ran to the end: the slices' shapes say so
    const Val* src = nullptr;
    for (const auto& [name, v] : vals_)
      if (v.activation && v.ref == key.first) src = &v;
    if (!chunk || !src || src->shape.size() <= static_cast<std::size_t>(key.second) || src->shape[static_cast<std::size_t>(key.second)] != total) continue;
    std::size_t first = *std::min_element(idx.begin(), idx.end());
    Layer& c = m_.layers[first];
    std::string name = c.name;
    for (std::size_t p = 0; p < idx.size(); ++p) renamed_[m_.layers[idx[p]].name] = p == 0 ? name : name + ":" + std::to_string(p);
    const OpRule* rule = find_op("chunk");
    Layer l;
    l.name = name;
    l.kind = rule->kind;
    l.inputs = {key.first};
    l.pos = c.pos;
    l.attrs["chunks"] = parse_attr_text(*find_attr(*rule, "chunks"), std::to_string(parts), l.pos, l.name);
    l.attrs["dim"] = parse_attr_text(*find_attr(*rule, "dim"), std::to_string(key.second), l.pos, l.name);
    fill_defaults(*rule, l);
    c = std::move(l);
    for (std::size_t k : idx)
      if (k != first) removed.insert(k);
    if (example.empty()) example = name;
    ++n_chunks;
  }
  if (renamed_.empty()) return;
  note("ONNX cannot say whether Slices that cut a tensor into torch.chunk's pieces came from torch.chunk or from "
       "separate indexing; they are modelled as torch.chunk (" + std::to_string(n_chunks) + " such, e.g. '" + example + "')");
  std::vector<Layer> kept;
  for (std::size_t k = 0; k < m_.layers.size(); ++k) {
    if (removed.count(k)) continue;
    for (auto& in : m_.layers[k].inputs)
      if (auto r = renamed_.find(in); r != renamed_.end() && m_.layers[k].name != r->second) in = r->second;
    kept.push_back(std::move(m_.layers[k]));
  }
  m_.layers = std::move(kept);
}

void Importer::drop_dead_layers(const std::string& output_ref) {
  std::string base = output_ref.substr(0, output_ref.rfind(':') == std::string::npos || output_ref == "input" ? output_ref.size() : output_ref.rfind(':'));
  std::map<std::string, std::size_t> index;
  for (std::size_t k = 0; k < m_.layers.size(); ++k) index[m_.layers[k].name] = k;
  if (!index.count(base)) base = output_ref;
  std::vector<bool> live(m_.layers.size(), false);
  live[0] = true;
  std::vector<std::size_t> stack{index[base]};
  while (!stack.empty()) {
    std::size_t k = stack.back();
    stack.pop_back();
    if (live[k] && k != 0) continue;
    live[k] = true;
    for (const auto& r : m_.layers[k].inputs) {
      std::string b = r.substr(0, r.rfind(':') == std::string::npos || index.count(r) ? r.size() : r.rfind(':'));
      if (index.count(b)) stack.push_back(index[b]);
    }
  }
  std::vector<Layer> kept;
  int dropped = 0;
  for (std::size_t k = 0; k < m_.layers.size(); ++k) {
    if (live[k]) kept.push_back(std::move(m_.layers[k]));
    else ++dropped;
  }
  m_.layers = std::move(kept);
  if (dropped) note(std::to_string(dropped) + " layers whose results do not reach the graph's output were left out");
  // The training loop takes the last layer's output: the graph's output must be computed last.
  if (m_.layers.back().name != base)
    throw Error({file_, 0, 0}, base, "the graph's output is not computed by its last node", "export the model with its output last");
}

Model Importer::run() {
  for (const auto& [domain, version] : mp_.opset_import)
    if (domain.empty() || domain == "ai.onnx") opset_ = version;
  m_.file = file_;
  // the model's name: the file name without folders and extension
  std::string stem = file_.substr(file_.find_last_of("/\\") == std::string::npos ? 0 : file_.find_last_of("/\\") + 1);
  if (has_onnx_extension(stem)) stem.resize(stem.size() - 5);
  m_.name = utf8_or_question_marks(stem.empty() ? "onnx_model" : stem);
  if (static_cast<i64>(g_.node.size()) > kMaxLayers)
    throw Error({file_, 0, 0}, "", "the graph has more than " + std::to_string(kMaxLayers) + " nodes", "memfit refuses models this large");
  for (const auto& t : g_.initializer) {
    Val v;
    v.defined = true;
    v.init = &t;
    v.dims_known = true;
    v.dims = t.dims;
    v.values_known = t.values_known;
    v.values = t.values;
    v.dtype = t.data_type;
    if (t.external) note("the weights are in external data files, which memfit does not read (only their shapes matter)");
    vals_[t.name] = v;
  }
  read_input();
  std::vector<int> order;
  topo_order(order);
  find_patterns();
  for (int i : order) map_node(i);
  if (!unsupported_.empty()) {
    std::string list;
    for (const auto& u : unsupported_) list += "\n  " + u;
    throw Error({file_, 0, 0}, "", std::to_string(unsupported_.size()) + " ONNX node" + (unsupported_.size() == 1 ? "" : "s") +
                                       " memfit cannot model:" + list,
                "memfit's layer kinds are listed by 'memfit ops'; docs/onnx.md has the ONNX mapping. Rewrite the model "
                "in the text format (docs/model-format.md) with the closest layers");
  }
  if (g_.output.empty()) throw Error({file_, 0, 0}, "", "the graph has no output", "the file is malformed");
  auto out = vals_.find(g_.output[0].name);
  if (out == vals_.end() || !out->second.activation)
    throw Error({file_, 0, 0}, "", "the graph's output '" + g_.output[0].name + "' is not computed from its input", "the file is malformed");
  if (g_.output.size() > 1) note("the graph has " + std::to_string(g_.output.size()) + " outputs; the loss is put on the first, '" + g_.output[0].name + "'");
  if (m_.layers.size() < 2) throw Error({file_, 0, 0}, "", "the graph maps to no layers", "export a model with at least one layer");
  slices_to_chunks();
  std::string out_ref = out->second.ref;
  if (auto r = renamed_.find(out_ref); r != renamed_.end()) out_ref = r->second;
  drop_dead_layers(out_ref);
  note("imported from ONNX (IR version " + std::to_string(mp_.ir_version) + ", opset " + std::to_string(opset_) + "): " +
       std::to_string(g_.node.size()) + " nodes became " + std::to_string(m_.layers.size() - 1) +
       " layers; ONNX does not record in-place activations (nn.ReLU(inplace=True)), so every layer is modelled out of place");
  return std::move(m_);
}

}  // namespace

bool has_onnx_extension(std::string_view path) {
  if (path.size() < 5) return false;
  std::string ext(path.substr(path.size() - 5));
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext == ".onnx";
}

bool looks_like_onnx(std::string_view head) {
  // A ModelProto written by onnx/torch starts with ir_version (field 1, varint: tag 0x08) and a small
  // version; other writers may start with another field of ModelProto (tag bytes 0x12..0x42 for
  // fields 2..8 as length-delimited). Text and JSON models start with printable ASCII, '{' or '#'.
  if (head.size() < 2) return false;
  auto c0 = static_cast<unsigned char>(head[0]);
  if (c0 == 0x08) return static_cast<unsigned char>(head[1]) < 0x80 && head[1] != 0;
  return c0 == 0x3A;  // field 7 (graph), length-delimited
}

std::pair<std::string, i64> parse_dim_setting(std::string_view text) {
  auto eq = text.find('=');
  std::string name(text.substr(0, eq == std::string_view::npos ? 0 : eq));
  std::string value(eq == std::string_view::npos ? "" : text.substr(eq + 1));
  i64 v = 0;
  auto r = std::from_chars(value.data(), value.data() + value.size(), v);
  if (eq == std::string_view::npos || name.empty() || r.ec != std::errc() || r.ptr != value.data() + value.size() || v <= 0 || v > kMaxDim)
    throw Error({}, "", "the dimension setting '" + std::string(text) + "' is not NAME=SIZE with a size in 1..2^40",
                "write e.g. --dim seq=128 (in a request: \"dims\": {\"seq\": 128})");
  return {name, v};
}

Model import_onnx(ByteSource& src, std::string_view file, const DimValues& dims) {
  std::string f(file);
  onnx::ModelProto mp = onnx::read_model(src, f);
  return Importer(mp, f, dims).run();
}

}  // namespace memfit
