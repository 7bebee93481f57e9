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

namespace {
i64 parse_positive(const std::string& s, const char* what, i64 max) {
  i64 v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size() || v < 1 || v > max)
    throw Error({}, "", std::string(what) + " '" + s + "' is not a whole number from 1 to " + std::to_string(max),
                std::string("give e.g. ") + (std::string(what) == "batch" ? "--batch 64" : "--iterations 3"));
  return v;
}
}  // namespace

Options make_options(const OptionStrings& s) {
  Options o;
  // Any batch whose bytes fit 64 bits is accepted; overflow is reported by the estimate itself.
  if (s.batch) o.train.batch = parse_positive(*s.batch, "batch", i64{1} << 50);
  if (s.dtype) o.train.precision = parse_precision(*s.dtype);
  if (s.optimizer) o.train.optimizer = parse_optimizer(*s.optimizer);
  if (s.optimizer_impl) o.train.impl = parse_optimizer_impl(*s.optimizer_impl);
  if (s.zero_grad) {
    if (*s.zero_grad == "set_to_none" || *s.zero_grad == "set-to-none" || *s.zero_grad == "none") o.train.set_to_none = true;
    else if (*s.zero_grad == "zero" || *s.zero_grad == "zeros") o.train.set_to_none = false;
    else throw Error({}, "", "unknown zero_grad mode '" + *s.zero_grad + "'", "use set-to-none (default) or zero");
  }
  if (s.pytorch) {
    if (*s.pytorch == "2" || *s.pytorch == "2.x") o.train.rules = TorchRules::v2;
    else if (*s.pytorch == "1.13") o.train.rules = TorchRules::v1_13;
    else throw Error({}, "", "unknown PyTorch rules '" + *s.pytorch + "'", "use 2 (default) or 1.13");
  }
  if (s.iterations) o.train.n_iterations = static_cast<int>(parse_positive(*s.iterations, "iterations", 250));
  if (s.gpu && !s.gpu->empty()) o.gpu = parse_gpu(*s.gpu);
  if (s.context) o.context_bytes = parse_size(*s.context, "the CUDA context size");
  if (s.cublas_workspace || s.cudnn_workspace) {
    Workspaces w = default_workspaces(o.gpu);
    if (s.cublas_workspace) w.cublas_bytes = parse_size(*s.cublas_workspace, "the cuBLAS workspace size");
    if (s.cudnn_workspace) w.cudnn_conv_bytes = parse_size(*s.cudnn_workspace, "the cuDNN workspace size");
    o.workspaces = w;
  }
  o.timeline = s.timeline;
  return o;
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
    if (command == "models") {
      json arr = json::array();
      for (const auto& m : builtin_models()) arr.push_back({{"name", m.name}, {"text", m.text}});
      return json{{"models", arr}}.dump(2) + "\n";
    }
    OptionStrings s;
    if (req.contains("options") && req["options"].is_object()) {
      for (const auto& [k, v] : req["options"].items()) {
        if (k == "timeline") {
          s.timeline = v.is_boolean() && v.get<bool>();
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
    throw Error({}, "", "unknown command '" + command + "'", "use estimate, max-batch, model, sweep, gpus or models");
  } catch (const Error& e) {
    return error_json(e);
  } catch (const std::exception& e) {
    return error_json(Error({}, "", std::string("internal error: ") + e.what(), "please report this model"));
  }
}

}  // namespace memfit
