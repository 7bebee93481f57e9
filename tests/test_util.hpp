// Helpers shared by the Catch2 tests.
#pragma once

#include <catch2/catch.hpp>
#include <deque>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "memfit/estimate.hpp"

namespace memfit::test {

// The row of the layer named `name` (fails the test if there is none).
inline const LayerRow& row(const Estimate& e, const std::string& name) {
  for (const auto& r : e.layers)
    if (e.graph.nodes[static_cast<std::size_t>(r.node)].layer->name == name) return r;
  FAIL("no layer " << name);
  throw 0;
}

// Parses a model that stays alive for the whole test run: an Estimate points into its Model.
inline const Model& keep_model(const std::string& src, const std::string& file = "t.memfit") {
  static std::deque<Model> models;  // deque: earlier elements never move
  models.push_back(parse_model(src, file));
  return models.back();
}

// A committed model file, by its path below the repository root ("tests/fixtures/transformers/
// llama_tiny.memfit"), parsed and kept alive like keep_model (errors name the file's base name).
inline const Model& fixture_model(const std::string& relative) {
  std::ifstream in(std::string(MEMFIT_SOURCE_DIR) + "/" + relative);
  if (!in) throw std::runtime_error("cannot read " + relative);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return keep_model(text, relative.substr(relative.find_last_of('/') + 1));
}

// Options for a batch with no library workspaces (cuBLAS/cuDNN): the tests' sums are tensors only.
inline Options tensor_options(i64 batch) {
  Options o;
  o.train.batch = batch;
  o.workspaces = Workspaces{};
  return o;
}

// A committed reference document, by its path below the repository root ("tests/reference/...").
inline nlohmann::json load_reference(const std::string& relative) {
  std::string path = std::string(MEMFIT_SOURCE_DIR) + "/" + relative;
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot read " + path);
  return nlohmann::json::parse(f);
}

}  // namespace memfit::test
