#include "memfit/api.hpp"

#include <charconv>
#include <nlohmann/json.hpp>

#include "memfit/report.hpp"

namespace memfit {

const BuiltinModel* find_builtin_model(std::string_view name) {
  for (const auto& m : builtin_models())
    if (name == m.name) return &m;
  return nullptr;
}

std::string handle_request(std::string_view request_json) {
  using json = nlohmann::json;
  try {
    json req;
    try {
      req = json::parse(request_json.begin(), request_json.end());
    } catch (const json::parse_error&) {
      throw Error({}, "", "the request is not valid JSON", "send {\"command\": \"estimate\", \"model\": \"...\"}");
    }
    std::string command = req.value("command", std::string("estimate"));
    if (command == "gpus") return gpus_json();
    if (command == "ops") return ops_json();
    if (command == "models") {
      json arr = json::array();
      for (const auto& m : builtin_models()) arr.push_back({{"name", m.name}, {"text", m.text}});
      return json{{"models", arr}}.dump(2) + "\n";
    }
    OptionStrings s;
    if (req.contains("options") && req["options"].is_object()) {
      for (const auto& [k, v] : req["options"].items()) {
        if (k == "timeline" || k == "events") {
          (k == "timeline" ? s.timeline : s.events) = v.is_boolean() && v.get<bool>();
          continue;
        }
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
        else throw Error({}, "", "unknown option '" + k + "'", "see core/include/memfit/api.hpp");
      }
    }
    Options options = make_options(s);
    std::string file = req.value("file", std::string("model"));
    std::string source;
    if (req.contains("model") && req["model"].is_string()) {
      source = req["model"].get<std::string>();
    } else {
      source = find_builtin_model(kDefaultModel)->text;
      file = std::string("models/") + kDefaultModel + ".memfit";
    }
    Model model = parse_model(source, file);
    if (command == "estimate") return estimate_json(model, options);
    if (command == "max-batch") return max_batch_json(model, options);
    if (command == "model") return model_json(model);
    if (command == "sweep") {
      i64 up_to = req.value("sweep_up_to", i64{256});
      int n = req.value("sweep_points", 24);
      if (up_to < 1 || up_to > (i64{1} << 30) || n < 2 || n > 200)
        throw Error({}, "", "sweep_up_to must be 1..2^30 and sweep_points 2..200", "use smaller numbers");
      return batch_sweep_json(model, options, up_to, n);
    }
    throw Error({}, "", "unknown command '" + command + "'", "use estimate, max-batch, model, sweep, gpus, models or ops");
  } catch (const Error& e) {
    return error_json(e);
  } catch (const std::exception& e) {
    return error_json(Error({}, "", std::string("internal error: ") + e.what(), "please report this model"));
  }
}

}  // namespace memfit
