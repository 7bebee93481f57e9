// Golden estimates: regression pins, not accuracy references (those are tests/reference/).
//
// For every builtin model (models/*.memfit) and every fixture (tests/reference/fixtures/*.json),
// tests/golden/NAME.json pins what memfit computes today at a few fixed settings: the allocator
// model's peak of every iteration (allocated and reserved), the overall peak (phase, layer,
// iteration, breakdown by category), the totals, and the plan's size (tensors, events, cudaMallocs).
// Any change to the planner, the op rules or the allocator model that moves one of these numbers
// fails here with a diff that names the model, the settings and the field.
//
// A changed golden is not wrong by itself: regenerate with tools/update-golden.sh (or
// MEMFIT_UPDATE_GOLDEN=1 build/tests/memfit_tests "[golden]") and explain the change in the commit
// message. A refactor that does not mean to change behaviour must leave every golden identical.
// tests/golden/README.md has the rules.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "memfit/api.hpp"
#include "memfit/estimate.hpp"

using namespace memfit;
using nlohmann::json;

namespace {

const std::string kRoot = MEMFIT_SOURCE_DIR;
const std::string kGoldenDir = kRoot + "/tests/golden";
const std::string kFixtureDir = kRoot + "/tests/reference/fixtures";

struct GoldenModel {
  std::string name, source, text;  // source: path below the repository root
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

std::vector<GoldenModel> golden_models() {
  std::vector<GoldenModel> out;
  for (const auto& b : builtin_models())
    out.push_back({b.name, std::string("models/") + b.name + ".memfit", b.text});
  std::vector<std::string> fixtures;
  for (const auto& entry : std::filesystem::directory_iterator(kFixtureDir))
    if (entry.path().extension() == ".json") fixtures.push_back(entry.path().filename().string());
  std::sort(fixtures.begin(), fixtures.end());
  for (const auto& f : fixtures) {
    std::string stem = f.substr(0, f.size() - 5);
    // a fixture named like a builtin model (question_cnn) gets its own file
    out.push_back({"fixture_" + stem, "tests/reference/fixtures/" + f, read_file(kFixtureDir + "/" + f)});
  }
  return out;
}

// The fixed settings: fp32 SGD at a small and a larger batch, and mixed precision with Adam.
// Everything else is memfit's default (foreach, set_to_none, 3 iterations, PyTorch 2 rules, no GPU
// given: the non-sm_90 cuBLAS workspace of CublasHandlePool.cpp).
struct Setting {
  i64 batch;
  const char* dtype;
  const char* optimizer;
};
constexpr Setting kSettings[] = {{8, "fp32", "sgd"}, {64, "fp32", "sgd"}, {8, "bf16", "adam"}};

json run_json(const Model& model, const Setting& s) {
  Options o;
  o.train.batch = s.batch;
  o.train.precision = parse_precision(s.dtype);
  o.train.optimizer = parse_optimizer(s.optimizer);
  Estimate e = estimate(model, o);
  json r;
  r["settings"] = {{"batch", s.batch},
                   {"dtype", s.dtype},
                   {"optimizer", s.optimizer},
                   {"optimizer_impl", optimizer_impl_name(o.train.impl)},
                   {"zero_grad", o.train.set_to_none ? "set_to_none" : "zero"},
                   {"iterations", o.train.n_iterations},
                   {"pytorch", torch_rules_name(o.train.rules)},
                   {"gpu", "none"}};
  json its = json::array();
  for (const auto& ip : e.sim.iterations)
    its.push_back({{"iteration", ip.iteration}, {"allocated", ip.allocated_bytes}, {"reserved", ip.reserved_bytes}});
  r["iterations"] = its;
  json breakdown = json::object();
  for (int c = 0; c < n_categories; ++c)
    if (e.sim.peak_breakdown[static_cast<std::size_t>(c)] != 0)
      breakdown[category_name(static_cast<Category>(c))] = e.sim.peak_breakdown[static_cast<std::size_t>(c)];
  std::string layer =
      e.peak_node >= 0 ? e.graph.nodes[static_cast<std::size_t>(e.peak_node)].layer->name : std::string("-");
  r["peak"] = {{"allocated", e.peak_allocated_bytes},
               {"reserved", e.peak_reserved_bytes},
               {"phase", phase_name(e.peak_phase)},
               {"layer", layer},
               {"iteration", e.peak_iteration},
               {"breakdown", breakdown}};
  r["totals"] = {{"params", e.total_params},           {"param_bytes", e.total_param_bytes},
                 {"buffer_bytes", e.total_buffer_bytes}, {"grad_bytes", e.total_grad_bytes},
                 {"optimizer_bytes", e.total_optimizer_bytes}, {"saved_bytes", e.total_saved_bytes},
                 {"input_bytes", e.input_bytes},         {"workspace_bytes", e.workspace_bytes}};
  r["plan"] = {{"tensors", e.plan.tensors.size()},
               {"events", e.plan.events.size()},
               {"cuda_mallocs", e.sim.n_cuda_malloc}};
  return r;
}

json golden_json(const GoldenModel& gm) {
  Model model = parse_model(gm.text, gm.source);
  json doc;
  doc["format"] = "memfit-golden/1";
  doc["note"] = "regression pin, not an accuracy reference; regenerate with tools/update-golden.sh and explain the "
                "change in the commit message (tests/golden/README.md)";
  doc["model"] = gm.name;
  doc["source"] = gm.source;
  json runs = json::array();
  for (const auto& s : kSettings) runs.push_back(run_json(model, s));
  doc["runs"] = runs;
  return doc;
}

// Leaves of a JSON document by path ("runs[1].peak.layer" -> "\"pool2\"").
void flatten(const json& j, const std::string& path, std::map<std::string, std::string>& out) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) flatten(it.value(), path.empty() ? it.key() : path + "." + it.key(), out);
  } else if (j.is_array()) {
    for (std::size_t i = 0; i < j.size(); ++i) flatten(j[i], path + "[" + std::to_string(i) + "]", out);
  } else {
    out[path] = j.dump();
  }
}

// Readable differences, one line per field, with the run's settings spelled out.
std::string diff(const json& golden, const json& now) {
  std::map<std::string, std::string> a, b;
  flatten(golden, "", a);
  flatten(now, "", b);
  auto settings_of = [&](const std::string& path) -> std::string {
    // "runs[2].peak.layer" -> " (batch 8 bf16 adam)"
    if (path.rfind("runs[", 0) != 0) return "";
    std::size_t close = path.find(']');
    std::size_t k = std::stoul(path.substr(5, close - 5));
    if (!now.contains("runs") || k >= now["runs"].size()) return "";
    const json& s = now["runs"][k]["settings"];
    return " (batch " + s["batch"].dump() + " " + s["dtype"].get<std::string>() + " " +
           s["optimizer"].get<std::string>() + ")";
  };
  std::ostringstream os;
  for (const auto& [k, v] : a) {
    auto it = b.find(k);
    if (it == b.end()) os << "  " << k << settings_of(k) << ": golden " << v << ", now missing\n";
    else if (it->second != v) {
      os << "  " << k << settings_of(k) << ": golden " << v << ", now " << it->second;
      if (v.find_first_not_of("-0123456789") == std::string::npos &&
          it->second.find_first_not_of("-0123456789") == std::string::npos)
        os << " (" << (std::stoll(it->second) - std::stoll(v) >= 0 ? "+" : "") << std::stoll(it->second) - std::stoll(v)
           << ")";
      os << "\n";
    }
  }
  for (const auto& [k, v] : b)
    if (!a.count(k)) os << "  " << k << settings_of(k) << ": not in the golden, now " << v << "\n";
  return os.str();
}

// Pretty to `depth` levels, compact below: one line per run field, so a changed number is one line
// of a git diff. (The test compares parsed JSON; the layout is only for people.)
std::string layout(const json& j, int depth, const std::string& indent = "") {
  if (depth == 0 || !(j.is_object() || j.is_array()) || j.empty()) return j.dump();
  const std::string in = indent + " ";
  std::string s = j.is_object() ? "{\n" : "[\n";
  bool first = true;
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) {
      s += (first ? "" : ",\n") + in + json(it.key()).dump() + ": " + layout(it.value(), depth - 1, in);
      first = false;
    }
  } else {
    for (const auto& v : j) {
      s += (first ? "" : ",\n") + in + layout(v, depth - 1, in);
      first = false;
    }
  }
  return s + "\n" + indent + (j.is_object() ? "}" : "]");
}

bool update_requested() {
  const char* v = std::getenv("MEMFIT_UPDATE_GOLDEN");
  return v != nullptr && std::string(v) == "1";
}

}  // namespace

TEST_CASE("golden estimates: every builtin model and fixture", "[golden]") {
  const bool update = update_requested();
  int n_checked = 0;
  for (const auto& gm : golden_models()) {
    const std::string path = kGoldenDir + "/" + gm.name + ".json";
    json now = golden_json(gm);
    std::string text = layout(now, 3) + "\n";
    if (update) {
      std::string old;
      try {
        old = read_file(path);
      } catch (const std::exception&) {
      }
      if (old != text) {
        std::ofstream(path, std::ios::binary) << text;
        WARN("updated " << path);
      }
      continue;
    }
    INFO("golden " << path << " (regenerate only on purpose: tools/update-golden.sh, and explain the change)");
    std::string stored;
    try {
      stored = read_file(path);
    } catch (const std::exception&) {
      FAIL_CHECK("no golden file for " << gm.name << ": run tools/update-golden.sh");
      continue;
    }
    json golden = json::parse(stored);
    std::string d = diff(golden, now);
    INFO(gm.name << " differs from its golden:\n" << d);
    CHECK(d.empty());
    ++n_checked;
  }
  if (!update) CHECK(n_checked == static_cast<int>(golden_models().size()));
}

TEST_CASE("golden files: one per model, none stale", "[golden]") {
  std::set<std::string> expected, present;
  for (const auto& gm : golden_models()) expected.insert(gm.name + ".json");
  for (const auto& entry : std::filesystem::directory_iterator(kGoldenDir))
    if (entry.path().extension() == ".json") present.insert(entry.path().filename().string());
  for (const auto& f : present) {
    INFO("tests/golden/" << f << " belongs to no builtin model or fixture: delete it");
    CHECK(expected.count(f) == 1);
  }
  // the pins cover the models the brief names: 7 builtin models + 3 fixtures today; a new model
  // or fixture without a golden fails the test above
  CHECK(expected.size() >= 10);
}

TEST_CASE("golden diff names the changed field", "[golden]") {
  // The comparison itself must be able to fail: a changed number and a missing field are reported.
  json a = {{"runs", {{{"settings", {{"batch", 8}, {"dtype", "fp32"}, {"optimizer", "sgd"}}}, {"peak", {{"allocated", 100}}}}}}};
  json b = a;
  b["runs"][0]["peak"]["allocated"] = 612;
  std::string d = diff(a, b);
  CHECK(d.find("runs[0].peak.allocated (batch 8 fp32 sgd): golden 100, now 612 (+512)") != std::string::npos);
  json c = a;
  c["runs"][0]["peak"].erase("allocated");
  CHECK(diff(a, c).find("now missing") != std::string::npos);
  CHECK(diff(a, a).empty());
}
