// memfit's saved-activation bytes against what PyTorch autograd really saved on the CPU for every
// builtin model (tests/reference/cpu_saved_models.json, written by tools/cpu_reference.py with
// torch 1.13; see tests/reference/README.md). Exact byte equality, per layer and in total, after
// subtracting the differences that are known and named below; no tolerance.
#include <catch2/catch.hpp>

#include "test_util.hpp"

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "memfit/api.hpp"

namespace {

using nlohmann::json;
using memfit::i64;

// In-place hardtanh_ (nn.ReLU6(inplace=True), MobileNetV2) saves a clone of its input taken before
// the write (torch 1.13: HardtanhBackward0 holds _saved_self, a storage that is not the output's).
// core/src/ops.cpp clone_self_when_inplace_memory models that clone; this test found the difference first.

const json& cpu_reference() {
  static const json doc = memfit::test::load_reference("tests/reference/cpu_saved_models.json");
  return doc;
}

bool inplace(const memfit::Layer& l) {
  auto it = l.attrs.find("inplace");
  return it != l.attrs.end() && it->second.flag;
}

i64 numel(const std::vector<i64>& shape) {
  i64 n = 1;
  for (i64 d : shape) n *= d;
  return n;
}

struct Expected {
  std::map<std::string, i64> per_layer;  // memfit layer name -> bytes memfit should count there
  i64 total = 0;
};

// What memfit (which models CUDA) must report, derived from the CPU reference of one batch.
Expected expected_from_reference(const json& batch, const memfit::Estimate& e) {
  Expected x;
  std::set<i64> seen;  // storage ids, in save order
  std::map<std::string, const memfit::Layer*> layers;
  for (const auto& n : e.graph.nodes) layers[n.layer->name] = n.layer;
  for (const json& L : batch["layers"]) {
    std::string name = L["layer"].get<std::string>();
    INFO("reference layer " << name);
    REQUIRE(layers.count(name));  // every layer torch saved for is a memfit layer (the loss too)
    i64 bytes = L["first_seen_bytes"].get<i64>();
    for (const json& s : L["saved"]) {
      i64 sid = s["storage_id"].get<i64>();
      if (!seen.insert(sid).second) continue;
      // (1) The input batch x and the int64 target: held by the training loop whether or not
      //     autograd saves them (the first conv saves x; nll_loss saves the target).
      //     memfit lists them but does not count them in total_saved_bytes.
      if (s["is_input"].get<bool>() && !s["is_param"].get<bool>()) bytes -= s["bytes"].get<i64>();
    }
    const memfit::Layer& l = *layers[name];
    if (l.kind == "dropout" && !inplace(l)) {
      // (2) Dropout, CPU vs CUDA: torch 1.13 on the CPU runs _dropout_impl, `input * noise` with a
      //     float32 noise tensor that MulBackward0 saves (4 bytes/element); CUDA runs the fused
      //     native_dropout, which saves a bool mask (1 byte/element) -- what memfit models.
      //     Difference: 3 bytes per element of the dropout's input.
      REQUIRE(L["saved"].size() == 1);
      const json& noise = L["saved"][0];
      REQUIRE(noise["dtype"] == "float32");
      i64 n = numel(noise["shape"].get<std::vector<i64>>());
      bytes -= n * (4 - 1);
    }
    // (3) Batch norm, CPU vs CUDA: native_batch_norm saves input, weight, running_mean, running_var
    //     (parameters/buffers, not counted) and save_mean / save_invstd (float32 [C]) -- the same
    //     activation bytes memfit models for cudnn_batch_norm, whose extra reserve-space tensor is
    //     not modelled (cuDNN returns it empty for 2-d spatial batch norm in training). No term.
    x.per_layer[name] += bytes;
    x.total += bytes;
  }
  return x;
}

}  // namespace

TEST_CASE("saved activations match the CPU autograd reference for every builtin model", "[reference][models]") {
  const json& doc = cpu_reference();
  REQUIRE(doc["models"].size() >= 7);
  for (const json& m : doc["models"]) {
    const std::string name = m["name"].get<std::string>();
    SECTION(name) {
      const memfit::BuiltinModel* b = memfit::find_builtin_model(name);
      REQUIRE(b != nullptr);
      memfit::Model model = memfit::parse_model(b->text, name + ".memfit");
      for (const json& batch : m["batches"]) {
        const i64 n = batch["batch"].get<i64>();
        INFO(name << " batch " << n);
        memfit::Options opt;  // fp32, the default optimizer; saved bytes do not depend on it
        // The reference was recorded with torch 1.13: follow its rules where they differ from 2.x
        // (a global average pool's MeanBackward1 saves its input in 1.13, only sizes in 2.x).
        opt.train.rules = memfit::TorchRules::v1_13;
        opt.train.batch = n;
        memfit::Estimate e = memfit::estimate(model, opt);
        CHECK(e.total_params == m["params"].get<i64>());
        CHECK(e.total_buffer_bytes == m["buffer_bytes"].get<i64>());
        // the reference's totals and its per-layer numbers agree with each other
        REQUIRE(batch["saved_total_bytes"].get<i64>() - batch["saved_input_bytes"].get<i64>() ==
                [&] {
                  i64 t = 0;
                  std::set<i64> seen;
                  for (const json& L : batch["layers"])
                    for (const json& s : L["saved"])
                      if (!s["is_param"].get<bool>() && !s["is_input"].get<bool>() &&
                          seen.insert(s["storage_id"].get<i64>()).second)
                        t += s["bytes"].get<i64>();
                  return t;
                }());

        Expected x = expected_from_reference(batch, e);
        CHECK(e.total_saved_bytes == x.total);
        for (std::size_t i = 0; i < e.layers.size(); ++i) {
          const std::string& ln = e.graph.nodes[static_cast<std::size_t>(e.layers[i].node)].layer->name;
          INFO("layer " << ln);
          auto it = x.per_layer.find(ln);
          CHECK(e.layers[i].saved_bytes == (it == x.per_layer.end() ? 0 : it->second));
        }
      }
    }
  }
}

TEST_CASE("the CPU reference covers every builtin model", "[reference][models]") {
  std::set<std::string> in_reference;
  for (const json& m : cpu_reference()["models"]) in_reference.insert(m["name"].get<std::string>());
  for (const auto& b : memfit::builtin_models()) {
    INFO("builtin model " << b.name << " has no entry in tests/reference/cpu_saved_models.json");
    CHECK(in_reference.count(b.name));
  }
}
