// The text table folds repeated blocks: a block identical to the one before it (layer kinds, output
// shapes, parameter counts) is one line, so long models stay readable; --explain shows every layer.
#include <catch2/catch.hpp>

#include "memfit/api.hpp"
#include "memfit/report.hpp"
#include "test_util.hpp"

using namespace memfit;

TEST_CASE("resnet50's identical bottlenecks fold into one line per run", "[report]") {
  const BuiltinModel* b = find_builtin_model("resnet50");
  REQUIRE(b);
  const Model& m = test::keep_model(b->text, "resnet50.memfit");
  Options o;
  o.train.batch = 8;
  std::string text = render_text(m, o, false);
  // layer3.1 .. layer3.5 are identical bottlenecks (layer3.0 has the downsample): layer3.1 in full,
  // then one line for 4 blocks. Per block: conv1 1024x256 = 262,144; bn1 2x256 = 512;
  // conv2 256x256x3x3 = 589,824; bn2 512; conv3 256x1024 = 262,144; bn3 2x1024 = 2,048:
  // 1,117,184 parameters; x 4 = 4,468,736.
  CHECK_THAT(text, Catch::Contains("layer3.2 .. layer3.5   4 more like layer3.1"));
  CHECK_THAT(text, Catch::Contains("4,468,736"));
  CHECK_THAT(text, Catch::Contains("layer3.1.conv1 "));
  CHECK_THAT(text, !Catch::Contains("layer3.3.conv1 "));
  std::string explained = render_text(m, o, true);
  CHECK_THAT(explained, Catch::Contains("layer3.3.conv1 "));
  CHECK_THAT(explained, !Catch::Contains("more like"));
}

TEST_CASE("blocks that differ, or are not numbered siblings, are not folded", "[report]") {
  const char* src =
      "input 16\nblock.0.fc: fc 16\nblock.1.fc: fc 16\nblock.2.fc: fc 8\nother.fc: fc 8\n";
  const Model& m = test::keep_model(src);
  Options o;
  o.train.batch = 2;
  std::string text = render_text(m, o, false);
  CHECK_THAT(text, Catch::Contains("block.1         1 more like block.0"));
  CHECK_THAT(text, Catch::Contains("block.2.fc"));  // 8 outputs: different
  CHECK_THAT(text, Catch::Contains("other.fc"));
}
