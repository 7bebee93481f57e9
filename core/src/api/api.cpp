#include "memfit/api.hpp"

#include <charconv>
#include <cstdint>
#include <nlohmann/json.hpp>

#include "memfit/report.hpp"

namespace memfit {

const BuiltinModel* find_builtin_model(std::string_view name) {
  for (const auto& m : builtin_models())
    if (name == m.name) return &m;
  for (const auto& m : builtin_hf_configs())
    if (name == m.name) return &m;
  return nullptr;
}

Model load_model_source(std::string_view source, std::string_view file, const Options& options) {
  return parse_model(source, file, options.hf());
}

namespace {

using json = nlohmann::json;

// A request is at most two levels deep ({"options": {...}}); the model travels as a string. Deeper
// nesting is refused before nlohmann builds (and later dumps) it recursively: 20,000 levels overflowed
// the WebAssembly stack, which threw a RangeError into JS past every C++ destructor and leaked the heap.
constexpr int kMaxRequestDepth = 16;

void check_depth(std::string_view text) {
  int depth = 0, line = 1, column = 0;
  bool in_string = false, escaped = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\n') {
      if (line < (1 << 30)) ++line;
      column = 0;
    } else if (column < (1 << 30)) {
      ++column;
    }
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '{' || c == '[') {
      if (++depth > kMaxRequestDepth)
        throw Error({"request", line, column}, "",
                    "the request nests objects/arrays more than " + std::to_string(kMaxRequestDepth) + " deep",
                    "send a flat request: {\"command\": \"estimate\", \"model\": \"...\", \"options\": {\"batch\": \"64\"}}");
    } else if ((c == '}' || c == ']') && depth > 0) {  // stray closers cannot buy depth for later openers
      --depth;
    }
  }
}

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "an object";
    case json::value_t::array: return "an array";
    case json::value_t::string: return "a string";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number with a fraction";
    default: return "not a JSON value";
  }
}

[[noreturn]] void bad_field(const std::string& key, const json& v, const std::string& want, const std::string& fix) {
  throw Error({}, "", "request field \"" + key + "\" is " + type_name(v) + ", expected " + want, fix);
}

// A string field, or `fallback` when absent.
std::string string_field(const json& req, const std::string& key, const std::string& fallback, const std::string& fix) {
  auto it = req.find(key);
  if (it == req.end()) return fallback;
  if (!it->is_string()) bad_field(key, *it, "a string", fix);
  return it->get<std::string>();
}

// An integer field in [lo, hi], or `fallback` when absent. Fractions and huge unsigned values are refused
// (nlohmann's value() would truncate 3.5 to 3 and throw a type_error, an "internal error", for "12").
i64 int_field(const json& req, const std::string& key, i64 fallback, i64 lo, i64 hi) {
  auto it = req.find(key);
  if (it == req.end()) return fallback;
  std::string range = "an integer from " + std::to_string(lo) + " to " + std::to_string(hi);
  if (!it->is_number_integer()) bad_field(key, *it, range, "e.g. \"" + key + "\": " + std::to_string(fallback));
  bool in_range = it->is_number_unsigned() ? it->get<std::uint64_t>() <= static_cast<std::uint64_t>(hi)
                                           : it->get<i64>() <= hi;
  i64 v = in_range ? it->get<i64>() : hi;
  if (!in_range || v < lo)
    throw Error({}, "", "request field \"" + key + "\" is " + it->dump() + ", expected " + range,
                "use a number in that range");
  return v;
}

}  // namespace

std::string handle_request(std::string_view request_json) { return handle_request(request_json, nullptr); }

std::string handle_request(std::string_view request_json, ByteSource* onnx_file) {
  try {
    check_depth(request_json);
    json req;
    try {
      req = json::parse(request_json.begin(), request_json.end());
    } catch (const json::exception& e) {
      // parse_error, and out_of_range 406 for a number beyond a double (1e444: found by request_fuzzer)
      std::string why = e.what();
      if (auto k = why.find("] "); k != std::string::npos) why = why.substr(k + 2);  // drop "[json.exception...]"
      throw Error({"request", 0, 0}, "", "the request is not valid JSON (" + why + ")",
                  "send {\"command\": \"estimate\", \"model\": \"...\"}");
    }
    if (!req.is_object())
      throw Error({}, "", std::string("the request is ") + type_name(req) + ", expected a JSON object",
                  "send {\"command\": \"estimate\", \"model\": \"...\"}");
    std::string command = string_field(req, "command", "estimate", "use estimate, max-batch, max-seq, model, sweep, gpus, models or ops");
    if (command == "gpus") return gpus_json();
    if (command == "ops") return ops_json();
    if (command == "models") {
      json arr = json::array();
      // "hf_config": a Hugging Face config.json (models/hf/, built with options.seq/attention/head), so a
      // client can list the two kinds apart and offer the config's settings; "path" is the file name the
      // core's errors use for it (the CLI's, when the model is loaded by name).
      for (const auto& m : builtin_models())
        arr.push_back({{"name", m.name}, {"text", m.text}, {"path", m.path}, {"hf_config", false}});
      for (const auto& m : builtin_hf_configs())
        arr.push_back({{"name", m.name}, {"text", m.text}, {"path", m.path}, {"hf_config", true}});
      return json{{"models", arr}}.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
    }
    OptionStrings s;
    if (req.contains("options") && !req["options"].is_object())
      bad_field("options", req["options"], "an object", "send \"options\": {\"batch\": \"64\", \"gpu\": \"24GiB\"}");
    if (req.contains("options")) {
      for (const auto& [k, v] : req["options"].items()) {
        if (k == "timeline" || k == "events") {
          if (!v.is_boolean()) bad_field("options." + k, v, "true or false", "send \"" + k + "\": true");
          (k == "timeline" ? s.timeline : s.events) = v.get<bool>();
          continue;
        }
        if ((k == "qlora" || k == "grad_scaler") && v.is_boolean()) {
          (k == "qlora" ? s.qlora : s.grad_scaler) = v.get<bool>() ? "on" : "off";
          continue;
        }
        // Strings as typed on the command line; plain numbers are accepted as their decimal text (batch 64).
        if (!v.is_string() && !v.is_number())
          bad_field("options." + k, v, "a string or a number", "send e.g. \"" + k + "\": \"64\"");
        std::string text = v.is_string() ? v.get<std::string>() : v.dump();
        if (k == "batch") s.batch = text;
        else if (k == "dtype") s.dtype = text;
        else if (k == "optimizer") s.optimizer = text;
        else if (k == "optimizer_impl") s.optimizer_impl = text;
        else if (k == "zero_grad") s.zero_grad = text;
        else if (k == "gpu") s.gpu = text;
        else if (k == "context") s.context = text;
        else if (k == "cublas_workspace") s.cublas_workspace = text;
        else if (k == "cudnn_workspace") s.cudnn_workspace = text;
        else if (k == "iterations") s.iterations = text;
        else if (k == "pytorch") s.pytorch = text;
        else if (k == "grad_accumulation") s.grad_accumulation = text;
        else if (k == "freeze") s.freeze = text;
        else if (k == "train") s.train = text;
        else if (k == "lora") s.lora = text;
        else if (k == "lora_dtype") s.lora_dtype = text;
        else if (k == "qlora") s.qlora = text;
        else if (k == "grad_scaler") s.grad_scaler = text;
        else if (k == "seq") s.seq = text;
        else if (k == "attention") s.attention = text;
        else if (k == "head") s.head = text;
        else if (k == "checkpoint") s.checkpoint = text;
        else if (k == "checkpoint_impl") s.checkpoint_impl = text;
        else throw Error({}, "", "unknown option '" + k + "'", "see core/include/memfit/api.hpp");
      }
    }
    Options options = make_options(s);
    std::string file = string_field(req, "file", "model", "send \"file\": \"name used in error messages\"");
    DimValues dims;
    if (req.contains("dims")) {
      const json& d = req["dims"];
      if (!d.is_object()) bad_field("dims", d, "an object", "send \"dims\": {\"seq\": 128}");
      for (const auto& [k, v] : d.items()) {
        if (!v.is_number_integer() && !v.is_string()) bad_field("dims." + k, v, "an integer", "send \"dims\": {\"" + k + "\": 128}");
        std::string text = v.is_string() ? v.get<std::string>() : v.dump();
        dims.emplace(parse_dim_setting(k + "=" + text));
      }
      if (!onnx_file && !dims.empty())
        throw Error({}, "", "request field \"dims\" applies to ONNX models only", "remove it, or send an .onnx file");
    }
    std::string source;
    if (onnx_file) {
      if (req.contains("model"))
        throw Error({}, "", "the request has both an ONNX file and a \"model\"", "send one of them");
    } else if (req.contains("model")) {
      // The model's source text (the .memfit format or JSON, both as one string); an object or a number
      // used to fall through to question_cnn and answer a question nobody asked.
      if (!req["model"].is_string())
        bad_field("model", req["model"], "a string holding the model source (text format or JSON text)",
                  "send \"model\": \"input 50x50x3 layout=hwc\\nconv 32 3x3\\n...\" or JSON.stringify(modelObject); omit it for question_cnn");
      source = req["model"].get<std::string>();
    } else {
      source = find_builtin_model(kDefaultModel)->text;
      file = std::string("models/") + kDefaultModel + ".memfit";
    }
    if (command == "max-seq") {
      SeqModelFactory f = seq_model_factory(source, file, options.hf());
      limit_seq_search(f, int_field(req, "seq_limit", 0, 0, kSeqSearchLimit));
      return max_seq_json(f, options, max_seq(f, options));
    }
    Model model = onnx_file ? import_onnx(*onnx_file, file, dims) : load_model_source(source, file, options);
    if (onnx_file) refuse_hf_options(options.hf(), model);  // --seq/--attention/--head are a config.json's
    if (command == "estimate") return estimate_json(model, options);
    if (command == "max-batch") return max_batch_json(model, options);
    if (command == "model") return model_json(model);
    if (command == "sweep") {
      i64 up_to = int_field(req, "sweep_up_to", 256, 1, i64{1} << 30);
      int n = static_cast<int>(int_field(req, "sweep_points", 24, 2, 200));
      return batch_sweep_json(model, options, up_to, n);
    }
    throw Error({}, "", "unknown command '" + command + "'", "use estimate, max-batch, max-seq, model, sweep, gpus, models or ops");
  } catch (const Error& e) {
    return error_json(e);
  } catch (const std::exception& e) {
    return error_json(Error({}, "", std::string("internal error: ") + e.what(), "please report this model"));
  }
}

}  // namespace memfit
