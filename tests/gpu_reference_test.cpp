// The estimate against recorded GPU runs of real PyTorch training (tools/gpu_reference.py writes
// tests/reference/gpu/*.json on a machine with a CUDA GPU). Tolerances start at 5% (the accuracy
// issue); where the estimate is off, fix the model, not the tolerance. With no recording committed
// the test says so (a warning) and checks nothing: see docs/accuracy.md for the status.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "memfit/api.hpp"
#include "memfit/estimate.hpp"
#include "memfit/report.hpp"

using namespace memfit;
namespace fs = std::filesystem;

namespace {

constexpr double kPeakTolerance = 0.05;      // allocated / reserved peaks
constexpr double kMaxBatchTolerance = 0.05;  // largest batch under a memory cap

std::optional<Model> model_named(const std::string& name, std::vector<std::string>& keep) {
  if (const auto* b = find_builtin_model(name)) {
    keep.push_back(b->text);
    return parse_model(keep.back(), name);
  }
  fs::path fixture = fs::path(MEMFIT_SOURCE_DIR) / "tests/reference/fixtures" / (name + ".json");
  if (!fs::exists(fixture)) return std::nullopt;
  std::ifstream in(fixture);
  keep.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return parse_model(keep.back(), fixture.string());
}

Options options_for(const nlohmann::json& run, const nlohmann::json& gpu) {
  Options o;
  // cuBLAS workspace size depends on the device (32 MiB on sm_90): use the recorded capability.
  if (gpu.is_object() && gpu.contains("capability")) {
    std::optional<Gpu> g = Gpu{};
    std::string cap = gpu["capability"].get<std::string>();
    g->cc_major = std::stoi(cap.substr(0, cap.find('.')));
    g->cc_minor = std::stoi(cap.substr(cap.find('.') + 1));
    o.workspaces = default_workspaces(g);
  }
  o.train.batch = run["batch"].get<i64>();
  o.train.optimizer = parse_optimizer(run["optimizer"].get<std::string>());
  std::string p = run["precision"].get<std::string>();
  o.train.precision = p == "fp32" ? DType::f32 : p == "amp-bf16" ? DType::bf16 : DType::f16;
  std::string impl = run.value("impl", std::string("default"));
  o.train.impl = impl == "default" ? OptimizerImpl::foreach : parse_optimizer_impl(impl);
  return o;
}

double rel_err(i64 estimated, i64 measured) {
  return std::fabs(static_cast<double>(estimated - measured)) / static_cast<double>(measured);
}

}  // namespace

TEST_CASE("estimates match recorded GPU training runs", "[reference][gpu]") {
  fs::path dir = fs::path(MEMFIT_SOURCE_DIR) / "tests/reference/gpu";
  std::vector<fs::path> files;
  if (fs::exists(dir))
    for (const auto& f : fs::directory_iterator(dir))
      if (f.path().extension() == ".json") files.push_back(f.path());
  if (files.empty()) {
    WARN("no GPU reference recorded yet (tests/reference/gpu/*.json): peaks are unchecked predictions");
    return;
  }
  std::vector<std::string> keep;
  for (const auto& file : files) {
    std::ifstream in(file);
    nlohmann::json doc = nlohmann::json::parse(in);
    if (doc.value("cpu_check", false)) continue;  // a --cpu-check rehearsal has no GPU numbers
    for (const auto& m : doc["models"]) {
      auto model = model_named(m["name"].get<std::string>(), keep);
      if (!model) continue;
      for (const auto& run : m["runs"]) {
        if (run.value("status", "") != "ok") continue;
        Options o = options_for(run, doc["gpu"]);
        Estimate e = estimate(*model, o);
        for (const auto& it : run["iterations"]) {
          if (it["max_allocated"].is_null()) continue;
          int k = it["iteration"].get<int>();
          if (k >= static_cast<int>(e.sim.iterations.size())) continue;
          INFO(file.filename().string() << " " << m["name"] << " batch " << o.train.batch << " "
                                        << run["optimizer"] << " " << run["precision"] << " iteration " << k);
          CHECK(rel_err(e.sim.iterations[static_cast<std::size_t>(k)].allocated_bytes,
                        it["max_allocated"].get<i64>()) <= kPeakTolerance);
          CHECK(rel_err(e.sim.iterations[static_cast<std::size_t>(k)].reserved_bytes,
                        it["max_reserved"].get<i64>()) <= kPeakTolerance);
        }
      }
      for (const auto& mb : m["max_batch"]) {
        if (mb.value("incomplete", true) || mb["max_batch"].is_null()) continue;
        Options o = options_for({{"batch", 1}, {"optimizer", mb["optimizer"]}, {"precision", mb["precision"]},
                                 {"impl", mb.value("impl", std::string("default"))}},
                                doc["gpu"]);
        // set_per_process_memory_fraction caps what the allocator may reserve: a GPU of that size
        // with nothing outside the allocator (the context is not counted against the fraction).
        o.gpu = parse_gpu(std::to_string(mb["cap_gib"].get<i64>()) + "GiB");
        o.context_bytes = 0;
        i64 measured = mb["max_batch"].get<i64>();
        INFO(m["name"] << " cap " << mb["cap_gib"] << " GiB " << mb["optimizer"] << " " << mb["precision"]);
        CHECK(rel_err(max_batch(*model, o).max_batch, measured) <= kMaxBatchTolerance);
      }
    }
  }
}
