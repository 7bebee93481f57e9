// The JSON model form (docs/model-format.md#json), for programs: a flat list of layers, attributes as
// JSON values, "from" naming earlier layers. Errors point at the offending value itself.
//
// nlohmann keeps no source positions, so the document is read through its SAX interface with an
// input iterator that records how many bytes the lexer has consumed: at each event the value just
// read ends there, and its first byte is found by a short step back (a string's opening quote, a
// number's first digit). Positions are therefore exact and cost O(size) for the whole file, where
// searching the text for a layer's name was quadratic and could find an earlier, identical string.
// The same reader refuses what the DOM parser would accept silently or turn into an exception later:
// nesting deeper than kMaxJsonDepth (nlohmann's dump() recurses per level), duplicate keys (the DOM
// keeps one of them), and numbers beyond a double (nlohmann's out_of_range 406).
#include <algorithm>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "memfit/hf_config.hpp"
#include "memfit/model.hpp"
#include "memfit/ops.hpp"
#include "model_parse.hpp"

namespace memfit {

namespace {

using json = nlohmann::json;

// Byte offset -> line:column by binary search over line starts, built once.
class LineIndex {
 public:
  LineIndex(std::string_view src, std::string file) : file_(std::move(file)) {
    starts_.push_back(0);
    for (std::size_t i = 0; i < src.size(); ++i)
      if (src[i] == '\n') starts_.push_back(i + 1);
  }
  SourcePos at(std::size_t offset) const {
    auto it = std::upper_bound(starts_.begin(), starts_.end(), offset);
    --it;  // starts_[0] == 0 <= offset
    return {file_, static_cast<int>(it - starts_.begin()) + 1, static_cast<int>(offset - *it) + 1};
  }
  const std::string& file() const { return file_; }

 private:
  std::string file_;
  std::vector<std::size_t> starts_;
};

// An input iterator over the source that publishes how far nlohmann's lexer has read.
struct TrackedIt {
  using iterator_category = std::input_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;
  const char* p = nullptr;
  const char* base = nullptr;
  std::size_t* consumed = nullptr;
  reference operator*() const { return *p; }
  TrackedIt& operator++() {
    ++p;
    *consumed = static_cast<std::size_t>(p - base);
    return *this;
  }
  TrackedIt operator++(int) {
    TrackedIt t = *this;
    ++*this;
    return t;
  }
  bool operator==(const TrackedIt& o) const { return p == o.p; }
  bool operator!=(const TrackedIt& o) const { return p != o.p; }
};

struct KeyPos {
  std::size_t key = 0, value = 0;  // offsets of the key's opening quote and of the value's first byte
};

// Where one element of "layers" and its parts are in the source.
struct LayerSrc {
  std::size_t begin = 0;
  std::map<std::string, KeyPos> keys;
  std::vector<std::size_t> from;  // each element of its "from" list
};

// Builds the document (as nlohmann's own DOM parser would) and records the positions memfit reports.
class Reader {
 public:
  Reader(std::string_view src, const LineIndex& lines) : src_(src), lines_(lines) {}

  json root;
  std::map<std::string, KeyPos> top_keys;
  std::vector<LayerSrc> layers;
  std::size_t consumed = 0;  // written by TrackedIt

  bool null() { return value(json(nullptr), consumed - 4); }
  bool boolean(bool b) { return value(json(b), consumed - (b ? 4 : 5)); }
  bool number_integer(json::number_integer_t v) { return value(json(v), number_begin()); }
  bool number_unsigned(json::number_unsigned_t v) { return value(json(v), number_begin()); }
  bool number_float(json::number_float_t v, const std::string&) { return value(json(v), number_begin()); }
  bool string(std::string& s) { return value(json(std::move(s)), string_begin()); }
  bool binary(json::binary_t&) { return true; }  // JSON text has no binary values
  bool start_object(std::size_t) { return open(json::object(), true); }
  bool start_array(std::size_t) { return open(json::array(), false); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }

  bool key(std::string& k) {
    std::size_t at = string_begin();
    Frame& f = stack_.back();
    if (f.node->contains(k))
      throw Error(lines_.at(at), current_layer(), "the key \"" + k + "\" appears twice in this object",
                  "keep one of them (JSON readers disagree about which one counts)");
    if (f.role == Role::top) top_keys[k].key = at;
    if (f.role == Role::layer) layers.back().keys[k].key = at;
    f.key = std::move(k);
    return true;
  }

  bool parse_error(std::size_t position, const std::string&, const json::exception& ex) {
    std::size_t at = std::min(position > 0 ? position - 1 : 0, src_.size());
    std::string what = ex.what();
    // nlohmann's message ends with the raw bytes it read ("; last read: '...'"), which may be the very
    // ill-formed UTF-8 it complains about: keep only its description, and only its ASCII.
    auto cut = what.find("; last read");
    if (cut != std::string::npos) what.resize(cut);
    auto dash = what.find(" - ");
    if (dash != std::string::npos) what = what.substr(dash + 3);
    else if (auto br = what.find("] "); br != std::string::npos) what = what.substr(br + 2);
    for (char& c : what)
      if (static_cast<unsigned char>(c) >= 0x80 || static_cast<unsigned char>(c) < 0x20) c = '?';
    if (ex.id == 406)  // out_of_range: number overflow
      throw Error(lines_.at(number_begin_at(at)), current_layer(), "a number beyond the range of a double",
                  "write a finite number");
    throw Error(lines_.at(at), current_layer(), "invalid JSON (" + what + ")",
                "check the syntax near here (a missing comma or quote? strings must be UTF-8)");
  }

 private:
  enum class Role { other, top, layers, layer, from };
  struct Frame {
    json* node;
    Role role;
    std::string key;  // the key whose value comes next (objects)
  };

  std::string_view src_;
  const LineIndex& lines_;
  std::vector<Frame> stack_;
  std::size_t n_values_ = 0;

  // The layer being read, for error messages: its name when the name came first.
  std::string current_layer() const {
    for (const Frame& f : stack_)
      if (f.role == Role::layer && f.node->contains("name") && (*f.node)["name"].is_string())
        return (*f.node)["name"].get<std::string>();
    return "";
  }

  static bool number_char(char c) { return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'; }

  // The lexer reads one byte past a number (the terminator, then "ungets" it) unless the input ends.
  std::size_t number_begin_at(std::size_t e) const {
    if (src_.empty()) return 0;
    e = std::min(e, src_.size() - 1);
    if (!number_char(src_[e]) && e > 0) --e;
    while (e > 0 && number_char(src_[e - 1])) --e;
    return e;
  }
  std::size_t number_begin() const { return number_begin_at(consumed > 0 ? consumed - 1 : 0); }

  // consumed - 1 is the closing quote; inside the string every quote is escaped by an odd number of
  // backslashes, so the first quote back with an even number before it is the opening one.
  std::size_t string_begin() const {
    std::size_t q = consumed >= 2 ? consumed - 2 : 0;
    while (q > 0) {
      if (src_[q] == '"') {
        std::size_t b = q;
        while (b > 0 && src_[b - 1] == '\\') --b;
        if ((q - b) % 2 == 0) return q;
      }
      --q;
    }
    return q;
  }

  // Records the position of a value by what contains it; returns the slot's role for a container.
  Role note(std::size_t begin, bool is_object) {
    Frame& f = stack_.back();
    switch (f.role) {
      case Role::top:
        top_keys[f.key].value = begin;
        return !is_object && f.key == "layers" ? Role::layers : Role::other;
      case Role::layers:
        if (layers.size() >= static_cast<std::size_t>(kMaxLayers))
          throw Error(lines_.at(begin), "", "more than " + std::to_string(kMaxLayers) + " layers",
                      "memfit refuses models this large");
        layers.push_back({begin, {}, {}});
        return is_object ? Role::layer : Role::other;
      case Role::layer:
        layers.back().keys[f.key].value = begin;
        return !is_object && f.key == "from" ? Role::from : Role::other;
      case Role::from:
        layers.back().from.push_back(begin);
        return Role::other;
      case Role::other:
        return Role::other;
    }
    return Role::other;
  }

  json* insert(json v) {
    Frame& f = stack_.back();
    if (f.node->is_array()) {
      f.node->push_back(std::move(v));
      return &f.node->back();  // stays valid: this array grows again only after the child closes
    }
    json& slot = (*f.node)[f.key];
    slot = std::move(v);
    return &slot;
  }

  // Before a value is stored: memory stays bounded by kMaxJsonValues, not by how small values can be written.
  void count(std::size_t begin) {
    if (++n_values_ > kMaxJsonValues)
      throw Error(lines_.at(begin), current_layer(), "the JSON has more than " + std::to_string(kMaxJsonValues) + " values",
                  "memfit refuses models this large");
  }

  bool value(json v, std::size_t begin) {
    count(begin);
    if (stack_.empty()) {
      root = std::move(v);
      return true;
    }
    note(begin, false);  // a scalar in "layers" gets its LayerSrc too, so indices stay aligned
    insert(std::move(v));
    return true;
  }

  bool open(json v, bool is_object) {
    std::size_t begin = consumed - 1;  // the '{' or '[' just read
    count(begin);
    if (static_cast<int>(stack_.size()) >= kMaxJsonDepth)
      throw Error(lines_.at(begin), current_layer(),
                  "the JSON nests deeper than " + std::to_string(kMaxJsonDepth) + " levels",
                  "a memfit model needs 4 (document, \"layers\", a layer, a list such as \"kernel\": [3, 3])");
    if (stack_.empty()) {
      root = std::move(v);
      stack_.push_back({&root, is_object ? Role::top : Role::other, {}});
      return true;
    }
    Role role = note(begin, is_object);
    json* node = insert(std::move(v));
    stack_.push_back({node, role, {}});
    return true;
  }

  bool close() {
    stack_.pop_back();
    return true;
  }
};

// An integer that fits int64 (nlohmann stores 2^63..2^64-1 as unsigned; get<i64> would wrap them).
bool json_i64(const json& v, i64& out) {
  if (v.is_number_unsigned()) {
    auto u = v.get<json::number_unsigned_t>();
    if (u > static_cast<json::number_unsigned_t>(INT64_MAX)) return false;
    out = static_cast<i64>(u);
    return true;
  }
  if (!v.is_number_integer()) return false;
  out = v.get<i64>();
  return true;
}

// The value as the text format would spell it, so both forms share parse_attr_text. Integers are
// written exactly (dump), so a value beyond int64 fails there as "not a whole number" instead of
// wrapping. Other values are only ever wrong: shown shortly and in ASCII (depth is already bounded).
std::string value_text(const json& v) {
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  if (v.is_number()) return v.dump();
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array() && v.size() == 2 && v[0].is_number_integer() && v[1].is_number_integer())
    return v[0].dump() + "x" + v[1].dump();
  std::string s = v.dump(-1, ' ', true);
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

}  // namespace

Model parse_model_json(std::string_view src, std::string_view file) { return parse_model_json_with(src, file, HfOptions{}); }

Model parse_model_json_with(std::string_view src, std::string_view file, const HfOptions& hf) {
  if (src.size() > kMaxSourceBytes)
    throw Error({std::string(file), 0, 0}, "", "the model file is larger than 16 MiB", "split it or use the text format");
  src = strip_bom(src);
  LineIndex lines(src, std::string(file));
  Reader r(src, lines);
  TrackedIt first{src.data(), src.data(), &r.consumed};
  TrackedIt last{src.data() + src.size(), src.data(), &r.consumed};
  json::sax_parse(first, last, &r);  // errors throw memfit::Error from the reader
  const json& doc = r.root;
  auto pos = [&](std::size_t offset) { return lines.at(offset); };

  Model m;
  m.file = file;
  SourcePos top = pos(0);
  if (!doc.is_object())
    throw Error(top, "", std::string("a JSON model is an object with a \"layers\" array, not ") +
                             (doc.is_array() ? "an array" : "a " + std::string(doc.type_name())),
                "see docs/model-format.md#json");
  // A Hugging Face config.json (docs/hf-config.md): the builder reads it with the same positions.
  if (doc.contains("model_type") && !doc.contains("layers")) {
    std::map<std::string, SourcePos> key_pos;
    for (const auto& [k, kp] : r.top_keys) key_pos[k] = pos(kp.value);
    return build_hf_model(doc, key_pos, file, hf);
  }
  if (!doc.contains("layers"))
    throw Error(top, "", "a JSON model is an object with a \"layers\" array", "see docs/model-format.md#json");
  const json& jlayers = doc["layers"];
  SourcePos layers_pos = pos(r.top_keys["layers"].value);
  if (!jlayers.is_array())
    throw Error(layers_pos, "", "\"layers\" must be an array of layer objects", "write \"layers\": [{...}, ...]");
  if (jlayers.size() > static_cast<std::size_t>(kMaxLayers))
    throw Error(layers_pos, "", "more than " + std::to_string(kMaxLayers) + " layers", "memfit refuses models this large");
  for (const auto& [key, value] : doc.items())
    if (key != "format" && key != "name" && key != "layers" && key != "freeze")
      throw Error(pos(r.top_keys[key].value), "", "unknown top-level key \"" + key + "\"",
                  "a JSON model has \"format\", \"name\", \"layers\" and \"freeze\" (docs/model-format.md#json)");
  if (doc.contains("format") && doc["format"] != "memfit-model/1")
    throw Error(pos(r.top_keys["format"].value), "", "\"format\" must be \"memfit-model/1\"",
                "this memfit reads memfit-model/1 (memfit model FILE --json writes it)");
  if (doc.contains("freeze")) {
    const json& f = doc["freeze"];
    m.frozen_pos = pos(r.top_keys["freeze"].value);
    if (!f.is_array())
      throw Error(m.frozen_pos, "", "\"freeze\" must be a list of \"layer.param\" names", "write \"freeze\": [\"conv1.weight\"]");
    for (const auto& name : f) {
      if (!name.is_string())
        throw Error(m.frozen_pos, "", "\"freeze\" must be a list of \"layer.param\" names", "write \"freeze\": [\"conv1.weight\"]");
      m.frozen.push_back(name.get<std::string>());
    }
  }
  m.name = utf8_or_question_marks(file);
  if (doc.contains("name")) {
    if (!doc["name"].is_string())
      throw Error(pos(r.top_keys["name"].value), "", "the model's \"name\" must be a string", "write \"name\": \"my_net\"");
    m.name = doc["name"].get<std::string>();
  }
  std::set<std::string> names;
  for (std::size_t index = 0; index < jlayers.size(); ++index) {
    const json& jl = jlayers[index];
    const LayerSrc& ls = r.layers[index];
    std::string where = "layers[" + std::to_string(index) + "]";
    if (!jl.is_object()) throw Error(pos(ls.begin), where, "each layer is a JSON object", "write {\"kind\": ..., \"name\": ...}");
    auto key_pos = [&](const std::string& k) {
      auto it = ls.keys.find(k);
      return it == ls.keys.end() ? pos(ls.begin) : pos(it->second.value);
    };
    Layer l;
    l.name = where;
    l.pos = pos(ls.begin);
    if (jl.contains("name")) {
      if (!jl["name"].is_string())
        throw Error(key_pos("name"), where, "a layer's \"name\" must be a string", "write \"name\": \"conv1\"");
      l.name = jl["name"].get<std::string>();
      l.pos = key_pos("name");
    }
    if (!jl.contains("kind")) throw Error(l.pos, l.name, "the layer has no \"kind\"", "add e.g. \"kind\": \"relu\"");
    if (!jl["kind"].is_string())
      throw Error(key_pos("kind"), l.name, "a layer's \"kind\" must be a string", "write e.g. \"kind\": \"conv2d\"");
    l.kind = jl["kind"].get<std::string>();
    const OpRule* rule = find_op(l.kind);
    if (!rule) {
      std::string kinds = known_kinds();
      throw Error(l.pos, l.name, "unknown layer kind '" + l.kind + "'", "use one of: " + kinds);
    }
    l.kind = rule->kind;
    if (!names.insert(l.name).second) throw Error(l.pos, l.name, "a layer with this name already exists", "rename it");
    for (const auto& [key, val] : jl.items()) {
      if (key == "kind" || key == "name") continue;
      SourcePos vpos = key_pos(key);
      if (key == "from") {
        if (l.kind == "input")
          throw Error(vpos, l.name, "the input layer takes no \"from\" (it is the batch)", "remove \"from\"");
        if (!val.is_array()) throw Error(vpos, l.name, "\"from\" must be a list of layer names", "write \"from\": [\"a\"]");
        for (std::size_t k = 0; k < val.size(); ++k) {
          const json& f = val[k];
          SourcePos fpos = k < ls.from.size() ? pos(ls.from[k]) : vpos;
          if (!f.is_string()) throw Error(fpos, l.name, "\"from\" must list names", "write \"from\": [\"a\"]");
          std::string ref = f.get<std::string>();
          auto colon = ref.rfind(':');  // `layer:K`: output K of an op with several outputs
          std::string base = colon != std::string::npos && colon > 0 && colon + 1 < ref.size() &&
                                     ref.find_first_not_of("0123456789", colon + 1) == std::string::npos &&
                                     !names.count(ref)
                                 ? ref.substr(0, colon)
                                 : ref;
          if (!names.count(base) || base == l.name)
            throw Error(fpos, l.name, "no earlier layer is named '" + ref + "'", "inputs must be defined above");
          l.inputs.push_back(ref);
        }
        continue;
      }
      if (l.kind == "input" && key == "shape") {
        bool ok = val.is_array() && !val.empty() && val.size() <= static_cast<std::size_t>(kMaxInputRank);
        std::string text;
        for (std::size_t i = 0; ok && i < val.size(); ++i) {
          i64 d = 0;
          ok = json_i64(val[i], d) && d > 0;
          if (ok) text += (i ? "x" : "") + std::to_string(d);
        }
        if (!ok)
          throw Error(vpos, l.name, "input shape must be the per-sample shape in PyTorch order ([C, H, W], [T, D], [features]), 1 to " +
                          std::to_string(kMaxInputRank) + " positive integers",
                      "write \"shape\": [3, 50, 50]");
        Value v;
        v.type = Value::Type::text;
        v.text = text;
        v.pos = vpos;
        l.attrs["shape"] = v;
        continue;
      }
      const AttrSpec* spec = find_attr(*rule, key);
      if (!spec) {
        const std::string keys = attr_keys(*rule);
        auto kp = ls.keys.find(key);
        throw Error(kp == ls.keys.end() ? vpos : pos(kp->second.key), l.name,
                    std::string(rule->kind) + " has no option '" + key + "'",
                    keys.empty() ? "remove it" : "its options are: " + keys);
      }
      l.attrs[key] = parse_attr_text(*spec, value_text(val), vpos, l.name);
    }
    if (l.kind == "input") {
      if (!m.layers.empty()) throw Error(l.pos, l.name, "the input must be the first and only input layer", "remove it");
      if (!l.attrs.count("shape")) throw Error(l.pos, l.name, "input needs \"shape\"", "write \"shape\": [3, 50, 50]");
    } else {
      if (m.layers.empty()) throw Error(l.pos, l.name, "the first layer must be the input", "add {\"kind\": \"input\", ...} first");
      if (l.inputs.empty() && rule->max_inputs != 0) l.inputs.push_back(m.layers.back().name);  // a parameter reads none
      fill_defaults(*rule, l);
      int n = static_cast<int>(l.inputs.size());
      if (n < rule->min_inputs || (rule->max_inputs >= 0 && n > rule->max_inputs))
        throw Error(l.pos, l.name, std::string(rule->kind) + " has the wrong number of inputs (" + std::to_string(n) + ")",
                    rule->max_inputs == 0   ? std::string("remove \"from\": a ") + rule->kind + " reads no layer"
                    : rule->min_inputs >= 2 ? std::string("list them: \"from\": [\"a\", \"b\"]")
                                            : std::string("give one name in \"from\""));
    }
    m.layers.push_back(std::move(l));
  }
  if (m.layers.empty()) throw Error(layers_pos, "", "the model has no layers", "add an input layer and at least one more");
  refuse_hf_options(hf, m);
  return m;
}

}  // namespace memfit
