// The builtin models (models/*.memfit) against the architectures they copy: parameter counts, buffer
// bytes and output shapes from torchvision (tests/reference/torchvision_params.json, written by
// tools/torchvision_params.py), and LeNet-5's count worked out by hand.
#include <catch2/catch.hpp>

#include "test_util.hpp"

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "memfit/api.hpp"

namespace {

using nlohmann::json;

const json& torchvision_reference() {
  static const json doc = memfit::test::load_reference("tests/reference/torchvision_params.json");
  return doc;
}

// Parsed once and kept: an Estimate's graph points into its Model's layers.
const memfit::Model& builtin(const std::string& name) {
  static std::map<std::string, memfit::Model> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    const memfit::BuiltinModel* b = memfit::find_builtin_model(name);
    REQUIRE(b != nullptr);
    it = cache.emplace(name, memfit::parse_model(b->text, name + ".memfit")).first;
  }
  return it->second;
}

memfit::Estimate estimate_builtin(const std::string& name, memfit::i64 batch) {
  memfit::Options opt;
  opt.train.batch = batch;
  return memfit::estimate(builtin(name), opt);
}

// The shape of `out` in the training loop: the model's last layer before the loss.
std::vector<memfit::i64> output_shape(const memfit::Estimate& e) {
  REQUIRE(e.graph.model_output >= 0);
  return e.layers[static_cast<std::size_t>(e.graph.model_output)].out.shape;
}

std::string layer_name(const memfit::Estimate& e, std::size_t i) {
  return e.graph.nodes[static_cast<std::size_t>(e.layers[i].node)].layer->name;
}

}  // namespace

TEST_CASE("builtin models match torchvision's parameter counts and buffers", "[models][torchvision]") {
  const json& ref = torchvision_reference()["models"];
  // The numbers torchvision documents for these models (weights' num_params), written out so a
  // regenerated reference file cannot silently change them.
  const std::map<std::string, memfit::i64> documented{{"alexnet", 61100840},
                                                      {"vgg16", 138357544},
                                                      {"resnet18", 11689512},
                                                      {"resnet50", 25557032},
                                                      {"mobilenet_v2", 3504872}};
  for (const auto& [name, count] : documented) {
    SECTION(name) {
      REQUIRE(ref.contains(name));
      CHECK(ref[name]["params"].get<memfit::i64>() == count);
      memfit::Estimate e = estimate_builtin(name, 1);
      CHECK(e.total_params == ref[name]["params"].get<memfit::i64>());
      // BatchNorm buffers: running_mean + running_var (float32 [C]) and num_batches_tracked (int64).
      CHECK(e.total_buffer_bytes == ref[name]["buffer_bytes"].get<memfit::i64>());
    }
  }
}

TEST_CASE("builtin models end in [N, 1000] class scores", "[models][torchvision]") {
  const json& ref = torchvision_reference()["models"];
  for (const char* name : {"alexnet", "vgg16", "resnet18", "resnet50", "mobilenet_v2"}) {
    SECTION(name) {
      for (memfit::i64 batch : {1, 8}) {
        memfit::Estimate e = estimate_builtin(name, batch);
        CHECK(output_shape(e) == std::vector<memfit::i64>{batch, 1000});
      }
      // torchvision's own output at batch 1
      CHECK(ref[name]["output_shape"].get<std::vector<memfit::i64>>() == std::vector<memfit::i64>{1, 1000});
    }
  }
}

TEST_CASE("builtin layers named like torchvision modules have their output shapes", "[models][torchvision]") {
  const json& ref = torchvision_reference()["models"];
  for (const char* name : {"lenet5", "alexnet", "vgg16", "resnet18", "resnet50", "mobilenet_v2"}) {
    SECTION(name) {
      const json& calls = ref[name]["module_output_shapes"];
      memfit::Estimate e = estimate_builtin(name, 1);
      int matched = 0;
      for (std::size_t i = 0; i < e.layers.size(); ++i) {
        std::string n = layer_name(e, i);
        if (!calls.contains(n)) continue;  // e.g. flatten, additions, ResNet's per-call relu names
        INFO("layer " << n);
        // first call of that module (ResNet's stem `relu` is the first call of the shared module)
        CHECK(e.layers[i].out.shape == calls[n][0].get<std::vector<memfit::i64>>());
        ++matched;
      }
      CHECK(matched > 0);
    }
  }
}

TEST_CASE("LeNet-5 parameters by hand", "[models]") {
  // models/lenet5.memfit: the PyTorch tutorial's LeNet-5, input 1x32x32.
  const memfit::i64 conv1 = 6 * 1 * 5 * 5 + 6;    // 156: 6 filters 5x5 over 1 channel, + bias
  const memfit::i64 conv2 = 16 * 6 * 5 * 5 + 16;  // 2,416
  const memfit::i64 fc1 = 16 * 5 * 5 * 120 + 120;  // 48,120: 32-4=28 -> pool 14 -> 14-4=10 -> pool 5
  const memfit::i64 fc2 = 120 * 84 + 84;           // 10,164
  const memfit::i64 fc3 = 84 * 10 + 10;            // 850
  const memfit::i64 total = conv1 + conv2 + fc1 + fc2 + fc3;
  REQUIRE(total == 61706);

  memfit::Estimate e = estimate_builtin("lenet5", 4);
  CHECK(e.total_params == total);
  CHECK(e.total_buffer_bytes == 0);
  CHECK(output_shape(e) == std::vector<memfit::i64>{4, 10});
  // and the PyTorch module tools/torchvision_params.py builds from the tutorial's code agrees
  CHECK(torchvision_reference()["models"]["lenet5"]["params"].get<memfit::i64>() == total);

  std::map<std::string, memfit::i64> per_layer;
  for (std::size_t i = 0; i < e.layers.size(); ++i) per_layer[layer_name(e, i)] = e.layers[i].params;
  CHECK(per_layer["conv1"] == conv1);
  CHECK(per_layer["conv2"] == conv2);
  CHECK(per_layer["fc1"] == fc1);
  CHECK(per_layer["fc2"] == fc2);
  CHECK(per_layer["fc3"] == fc3);
}

TEST_CASE("every builtin model parses and estimates", "[models]") {
  for (const auto& b : memfit::builtin_models()) {
    INFO("model " << b.name);
    memfit::Model m = memfit::parse_model(b.text, std::string(b.name) + ".memfit");
    CHECK(m.name == b.name);
    memfit::Options opt;
    opt.train.batch = 2;
    memfit::Estimate e = memfit::estimate(m, opt);
    CHECK(e.total_params > 0);
    CHECK(e.total_saved_bytes > 0);
  }
}
