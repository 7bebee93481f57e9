// The registry is the single source of truth: docs/ops.json (read by tools/memfit_torch.py and the
// web page) and the layer table of docs/model-format.md are generated from it and must not be stale.
// Regenerate with tools/update-docs.sh after changing a rule.
#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>

#include "memfit/ops.hpp"

using namespace memfit;

namespace {
std::string read_file(const std::string& relative) {
  std::ifstream f(std::string(MEMFIT_SOURCE_DIR) + "/" + relative, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
}  // namespace

TEST_CASE("docs/ops.json is the registry as `memfit ops --json` prints it", "[ops]") {
  INFO("run tools/update-docs.sh after changing a rule");
  CHECK(read_file("docs/ops.json") == ops_json());
}

TEST_CASE("docs/model-format.md's layer table is the registry's", "[ops]") {
  std::string doc = read_file("docs/model-format.md");
  auto begin = doc.find("<!-- ops-table:");
  auto end = doc.find("<!-- end ops-table -->");
  REQUIRE(begin != std::string::npos);
  REQUIRE(end != std::string::npos);
  begin = doc.find('\n', begin) + 1;
  INFO("run tools/update-docs.sh after changing a rule");
  CHECK(doc.substr(begin, end - begin) == ops_markdown_table());
}

TEST_CASE("registering a kind or an alias twice is an error; so is a rule without its docs", "[ops]") {
  OpRule dup{.kind = "relu", .pytorch = "x", .summary = "x", .source = "x",
             .shape = find_op("relu")->shape, .memory = find_op("relu")->memory};
  CHECK_THROWS_AS(register_op(dup), std::logic_error);
  OpRule alias = dup;
  alias.kind = "a_new_kind_for_the_test";
  alias.aliases = {"fc"};  // linear's alias
  CHECK_THROWS_AS(register_op(alias), std::logic_error);
  OpRule undocumented = dup;
  undocumented.kind = "another_new_kind_for_the_test";
  undocumented.summary = "";
  CHECK_THROWS_AS(register_op(undocumented), std::logic_error);
  CHECK(find_op("another_new_kind_for_the_test") == nullptr);
}

TEST_CASE("every kind has a family, a PyTorch name, a summary and a citation", "[ops]") {
  for (const OpRule* r : all_ops()) {
    INFO(r->kind);
    CHECK(std::string(r->pytorch).size() > 0);
    CHECK(std::string(r->summary).size() > 0);
    CHECK(std::string(r->source).size() > 0);
    CHECK(r->shape != nullptr);
    CHECK(r->memory != nullptr);
  }
}
