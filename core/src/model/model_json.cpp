// The JSON model form (docs/model-format.md#json), for programs: a flat list of layers, attributes as
// JSON values, "from" naming earlier layers. Errors point at the line of the offending layer.
#include <nlohmann/json.hpp>
#include <set>

#include "memfit/model.hpp"
#include "memfit/ops.hpp"
#include "model_parse.hpp"

namespace memfit {

namespace {

using json = nlohmann::json;

// nlohmann does not keep positions; find the line/column where a string first appears after `from`.
SourcePos locate(std::string_view src, std::string_view file, const std::string& needle, std::size_t from = 0) {
  std::size_t at = needle.empty() ? std::string::npos : src.find(needle, from);
  SourcePos p{std::string(file), 0, 0};
  if (at == std::string::npos) return p;
  p.line = 1;
  std::size_t line_start = 0;
  for (std::size_t i = 0; i < at; ++i)
    if (src[i] == '\n') {
      ++p.line;
      line_start = i + 1;
    }
  p.column = static_cast<int>(at - line_start) + 1;
  return p;
}

std::string value_text(const json& v) {
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  if (v.is_number_integer()) return std::to_string(v.get<i64>());
  if (v.is_number()) return v.dump();
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array() && v.size() == 2 && v[0].is_number_integer() && v[1].is_number_integer())
    return std::to_string(v[0].get<i64>()) + "x" + std::to_string(v[1].get<i64>());
  return v.dump();
}

}  // namespace

Model parse_model_json(std::string_view src, std::string_view file) {
  if (src.size() > kMaxSourceBytes)
    throw Error({std::string(file), 0, 0}, "", "the model file is larger than 16 MiB", "split it or use the text format");
  json doc;
  try {
    doc = json::parse(src.begin(), src.end());
  } catch (const json::parse_error& e) {
    SourcePos p{std::string(file), 1, 1};
    std::size_t byte = std::min<std::size_t>(e.byte > 0 ? e.byte - 1 : 0, src.size());
    std::size_t line_start = 0;
    for (std::size_t i = 0; i < byte; ++i)
      if (src[i] == '\n') {
        ++p.line;
        line_start = i + 1;
      }
    p.column = static_cast<int>(byte - line_start) + 1;
    throw Error(p, "", "invalid JSON", "check the syntax near here (a missing comma or quote?)");
  }
  Model m;
  m.file = file;
  SourcePos top{std::string(file), 1, 1};
  if (!doc.is_object() || !doc.contains("layers") || !doc["layers"].is_array())
    throw Error(top, "", "a JSON model is an object with a \"layers\" array", "see docs/model-format.md#json");
  m.name = doc.value("name", std::string(file));
  std::set<std::string> names;
  std::size_t search_from = src.find("\"layers\"");
  int index = 0;
  for (const json& jl : doc["layers"]) {
    std::string where = "layers[" + std::to_string(index++) + "]";
    if (!jl.is_object()) throw Error(top, where, "each layer is a JSON object", "write {\"kind\": ..., \"name\": ...}");
    Layer l;
    l.kind = jl.value("kind", std::string());
    l.name = jl.contains("name") && jl["name"].is_string() ? jl["name"].get<std::string>() : where;
    l.pos = locate(src, file, "\"" + l.name + "\"", search_from);
    if (l.pos.line > 0) search_from = src.find("\"" + l.name + "\"", search_from);
    const OpRule* rule = find_op(l.kind);
    if (!rule) {
      std::string kinds = known_kinds();
      throw Error(l.pos, l.name, "unknown layer kind '" + l.kind + "'", "use one of: " + kinds);
    }
    l.kind = rule->kind;
    if (!names.insert(l.name).second) throw Error(l.pos, l.name, "a layer with this name already exists", "rename it");
    if (static_cast<i64>(m.layers.size()) >= kMaxLayers)
      throw Error(l.pos, l.name, "more than " + std::to_string(kMaxLayers) + " layers", "memfit refuses models this large");
    for (const auto& [key, val] : jl.items()) {
      if (key == "kind" || key == "name") continue;
      if (key == "from") {
        if (!val.is_array()) throw Error(l.pos, l.name, "\"from\" must be a list of layer names", "write \"from\": [\"a\"]");
        for (const json& f : val) {
          if (!f.is_string()) throw Error(l.pos, l.name, "\"from\" must list names", "write \"from\": [\"a\"]");
          std::string ref = f.get<std::string>();
          if (!names.count(ref) || ref == l.name)
            throw Error(l.pos, l.name, "no earlier layer is named '" + ref + "'", "inputs must be defined above");
          l.inputs.push_back(ref);
        }
        continue;
      }
      if (l.kind == "input" && key == "shape") {
        bool ok = val.is_array() && (val.size() == 1 || val.size() == 3);
        std::string text;
        for (std::size_t i = 0; ok && i < val.size(); ++i) {
          ok = val[i].is_number_integer() && val[i].get<i64>() > 0;
          if (ok) text += (i ? "x" : "") + std::to_string(val[i].get<i64>());
        }
        if (!ok)
          throw Error(l.pos, l.name, "input shape must be [C, H, W] (PyTorch order) or [features], positive integers",
                      "write \"shape\": [3, 50, 50]");
        Value v;
        v.type = Value::Type::text;
        v.text = text;
        v.pos = l.pos;
        l.attrs["shape"] = v;
        continue;
      }
      const AttrSpec* spec = nullptr;
      for (const auto& s : rule->attrs)
        if (key == s.key) spec = &s;
      if (!spec) {
        std::string keys;
        for (const auto& s : rule->attrs) keys += (keys.empty() ? "" : ", ") + std::string(s.key);
        throw Error(l.pos, l.name, std::string(rule->kind) + " has no option '" + key + "'",
                    keys.empty() ? "remove it" : "its options are: " + keys);
      }
      l.attrs[key] = parse_attr_text(*spec, value_text(val), l.pos, l.name);
    }
    if (l.kind == "input") {
      if (!m.layers.empty()) throw Error(l.pos, l.name, "the input must be the first and only input layer", "remove it");
      if (!l.attrs.count("shape")) throw Error(l.pos, l.name, "input needs \"shape\"", "write \"shape\": [3, 50, 50]");
    } else {
      if (m.layers.empty()) throw Error(l.pos, l.name, "the first layer must be the input", "add {\"kind\": \"input\", ...} first");
      if (l.inputs.empty()) l.inputs.push_back(m.layers.back().name);
      fill_defaults(*rule, l);
      int n = static_cast<int>(l.inputs.size());
      if (n < rule->min_inputs || (rule->max_inputs >= 0 && n > rule->max_inputs))
        throw Error(l.pos, l.name, std::string(rule->kind) + " has the wrong number of inputs (" + std::to_string(n) + ")",
                    rule->min_inputs >= 2 ? "list them: \"from\": [\"a\", \"b\"]" : "give one name in \"from\"");
    }
    m.layers.push_back(std::move(l));
  }
  if (m.layers.empty()) throw Error(top, "", "the model has no layers", "add an input layer and at least one more");
  return m;
}

}  // namespace memfit
