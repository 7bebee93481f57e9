// Block features of the text format (docs/model-format.md#blocks): ${k} inside a word, block calls
// fed by from=, block calls and repeats as named outputs (Inception-style branches), and their errors.
// Expected names, inputs and shapes are worked out by hand in the comments.
#include <catch2/catch.hpp>
#include <fstream>
#include <iterator>

#include "memfit/estimate.hpp"
#include "memfit/report.hpp"
#include "test_util.hpp"

using namespace memfit;

namespace {

const Layer& layer(const Model& m, const std::string& name) {
  for (const auto& l : m.layers)
    if (l.name == name) return l;
  FAIL("no layer " << name);
  throw 0;
}

std::string parse_error(const std::string& src) {
  try {
    parse_model(src, "b.memfit");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("${k} substitutes a parameter inside a word", "[format][blocks]") {
  // $k3x3 would look for a parameter named "k3x3"; ${k}x${k} ends the name at '}'.
  const Model& m = test::keep_model(R"(
input 16x16x3 layout=hwc
block cbr out k
  conv${k}: conv $out ${k}x${k} pad=same bias=false
  bn: bn
end
block rect h w
  conv: conv 4 ${h}x${w}
end
a: cbr 8 3
b: cbr 8 5
r: rect 1 3
gap
flatten
fc 2
)");
  const Layer& a = layer(m, "a.conv3");  // the name is substituted too: conv${k} with k=3
  CHECK(a.attrs.at("kernel").a == 3);
  CHECK(a.attrs.at("kernel").b == 3);
  const Layer& b = layer(m, "b.conv5");
  CHECK(b.attrs.at("kernel").a == 5);
  CHECK(b.attrs.at("kernel").b == 5);
  CHECK(layer(m, "r.conv").attrs.at("kernel").a == 1);  // 1x3: height 1, width 3
  CHECK(layer(m, "r.conv").attrs.at("kernel").b == 3);
  // shapes: 16x16 with pad=same stays 16x16; the 1x3 conv without padding gives 16 x (16-3+1) = 16 x 14
  Options o;
  o.train.batch = 2;
  Estimate e = estimate(m, o);
  CHECK(test::row(e, "b.conv5").out.shape == std::vector<i64>{2, 8, 16, 16});
  CHECK(test::row(e, "r.conv").out.shape == std::vector<i64>{2, 4, 16, 14});
}

TEST_CASE("a block call with from= takes that layer as its input ('in')", "[format][blocks]") {
  const Model& m = test::keep_model(R"(
input 8x8x3 layout=hwc
block proj out
  conv: conv $out 1x1 from=in
end
stem: conv 16 3x3 pad=1
other: conv 4 3x3 pad=1
b2: proj 64 from=stem
)");
  // without from= the block would read 'other' (the previous layer); from=stem feeds it stem
  CHECK(layer(m, "b2.conv").inputs == std::vector<std::string>{"stem"});
  CHECK(layer(m, "other").inputs == std::vector<std::string>{"stem"});
}

TEST_CASE("block calls as parallel branches joined by concat (Inception)", "[format][blocks]") {
  const Model& m = test::keep_model(R"(
input 32x32x3 layout=hwc
block cbr out k
  conv: conv $out ${k}x${k} pad=same bias=false
  bn: bn
  relu: relu inplace
end
# torchvision's Inception A-style block: four branches from the block's input, concatenated
block inception c1 c3r c3 cp
  branch1: cbr $c1 1
  branch3.reduce: cbr $c3r 1 from=in
  branch3: cbr $c3 3
  pool: avgpool 3 stride=1 pad=1 from=in
  branch_pool: cbr $cp 1
  cat: concat from=branch1,branch3,branch_pool
end
stem: conv 16 3x3 pad=1
b1: cbr 8 1 from=stem
b2: cbr 16 3 from=stem
b3: cbr 4 5 from=stem
cat: concat from=b1,b2,b3
mixed: inception 8 4 12 2
gap
flatten
fc 10
)");
  // a block call's label stands for its last layer
  CHECK(layer(m, "cat").inputs == std::vector<std::string>{"b1.relu", "b2.relu", "b3.relu"});
  CHECK(layer(m, "b1.conv").inputs == std::vector<std::string>{"stem"});
  CHECK(layer(m, "b2.conv").inputs == std::vector<std::string>{"stem"});
  CHECK(layer(m, "b3.conv").inputs == std::vector<std::string>{"stem"});
  // inside the block: branch1 reads the block's input (the previous layer, cat), the others from=in
  CHECK(layer(m, "mixed.branch1.conv").inputs == std::vector<std::string>{"cat"});
  CHECK(layer(m, "mixed.branch3.reduce.conv").inputs == std::vector<std::string>{"cat"});
  CHECK(layer(m, "mixed.branch3.conv").inputs == std::vector<std::string>{"mixed.branch3.reduce.relu"});
  CHECK(layer(m, "mixed.pool").inputs == std::vector<std::string>{"cat"});
  CHECK(layer(m, "mixed.cat").inputs ==
        std::vector<std::string>{"mixed.branch1.relu", "mixed.branch3.relu", "mixed.branch_pool.relu"});
  CHECK(layer(m, "gap1").inputs == std::vector<std::string>{"mixed.cat"});
  Options o;
  o.train.batch = 2;
  Estimate e = estimate(m, o);
  // channels: cat = 8 + 16 + 4 = 28; mixed.cat = 8 + 12 + 2 = 22; every conv is pad=same, so 32x32
  CHECK(test::row(e, "cat").out.shape == std::vector<i64>{2, 28, 32, 32});
  CHECK(test::row(e, "mixed.branch3.reduce.conv").out.shape == std::vector<i64>{2, 4, 32, 32});
  CHECK(test::row(e, "mixed.cat").out.shape == std::vector<i64>{2, 22, 32, 32});
  // parameters of mixed.branch3.conv: 12 x 4 x 3 x 3 = 432 (bias=false)
  CHECK(test::row(e, "mixed.branch3.conv").params == 432);
  // the flat JSON form names the layers the labels stood for, and reads back to the same model
  std::string j = model_json(m);
  CHECK_THAT(j, !Catch::Contains("\"b1\""));
  const Model& back = test::keep_model(j, "inception.json");
  REQUIRE(back.layers.size() == m.layers.size());
  for (std::size_t i = 0; i < m.layers.size(); ++i) {
    CHECK(back.layers[i].name == m.layers[i].name);
    CHECK(back.layers[i].inputs == m.layers[i].inputs);
  }
  CHECK(estimate(back, o).total_params == e.total_params);
}

TEST_CASE("a repeat with from= starts there; its label names the last repetition", "[format][blocks]") {
  const Model& m = test::keep_model(R"(
input 8x8x3 layout=hwc
block unit c
  conv: conv $c 3x3 pad=1
end
stem: conv 4 1x1
side: conv 4 1x1
trunk: repeat 3 unit 4 from=stem
extra: repeat 2 from=side
  relu
end
join: add from=trunk,extra
)");
  CHECK(layer(m, "trunk.0.conv").inputs == std::vector<std::string>{"stem"});
  CHECK(layer(m, "trunk.1.conv").inputs == std::vector<std::string>{"trunk.0.conv"});
  CHECK(layer(m, "trunk.2.conv").inputs == std::vector<std::string>{"trunk.1.conv"});
  CHECK(layer(m, "extra.0.relu1").inputs == std::vector<std::string>{"side"});
  CHECK(layer(m, "extra.1.relu1").inputs == std::vector<std::string>{"extra.0.relu1"});
  CHECK(layer(m, "join").inputs == std::vector<std::string>{"trunk.2.conv", "extra.1.relu1"});
  // a single repetition can be named too: trunk.1 is its conv
  const Model& m2 = test::keep_model(R"(
input 8x8x3 layout=hwc
block unit c
  conv: conv $c 3x3 pad=1
end
trunk: repeat 3 unit 4
j: add from=trunk.1,trunk
)");
  CHECK(layer(m2, "j").inputs == std::vector<std::string>{"trunk.1.conv", "trunk.2.conv"});
}

TEST_CASE("block feature errors are positioned", "[format][blocks][input]") {
  const std::string head = "input 8x8x3 layout=hwc\nblock b c\n  conv $c 1x1\nend\n";
  struct Case {
    const char* name;
    std::string src;
    std::string must_contain;
  };
  const std::vector<Case> cases = {
      // line 5, column 6 is the token "k=${c"
      {"unclosed ${", head + "block d c\n  conv 4 k=${c\nend\nd 3\n", "b.memfit:6:10: '${' without a closing '}'"},
      {"bare $", head + "block d c\n  conv 4 $\nend\nd 3\n", "b.memfit:6:10: '$' must be followed by"},
      // from= on a call takes one name: 'x: b 4 from=input,input' (token 4 starts at column 8)
      {"two inputs for a block", head + "x: b 4 from=input,input\n", "b.memfit:5:8: layer 'x': a block call takes one input"},
      {"unknown from= on a call", head + "x: b 4 from=nope\n", "b.memfit:5:8: layer 'x': no earlier layer is named 'nope'"},
      {"label taken by a layer", head + "x: conv 4 1x1\nx: b 4\n", "b.memfit:6:1: layer 'x': a layer or block call with this name"},
      {"layer named like a call", head + "x: b 4\nx: conv 4 1x1\n", "b.memfit:6:1: layer 'x': a layer or block call with this name"},
      {"from as a parameter", "input 8x8x3 layout=hwc\nblock d from\n  relu\nend\n", "b.memfit:2:9: 'from' cannot be a block parameter"},
      {"keyword as a block name", "input 8x8x3 layout=hwc\nblock repeat c\n  relu\nend\n", "b.memfit:2:7: 'repeat' cannot be a block name"},
      {"parameter given twice", head + "b 4 c=5\n", "b.memfit:5:5: block parameter 'c' given twice"},
  };
  for (const auto& c : cases) {
    INFO(c.name << "\n" << c.src);
    std::string msg = parse_error(c.src);
    CHECK_THAT(msg, Catch::Contains(c.must_contain));
    CHECK_THAT(msg, Catch::Contains("Fix: "));
  }
}

TEST_CASE("the parallel-branch examples of docs/model-format.md parse as documented", "[format][blocks][docs]") {
  std::ifstream f(std::string(MEMFIT_SOURCE_DIR) + "/docs/model-format.md");
  REQUIRE(f);
  std::string doc((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto at = doc.find("### Example: parallel branches");
  REQUIRE(at != std::string::npos);
  std::vector<std::string> blocks;  // the first two ```text blocks of that section
  for (int k = 0; k < 2; ++k) {
    auto open = doc.find("```text\n", at);
    REQUIRE(open != std::string::npos);
    auto close = doc.find("```\n", open + 8);
    REQUIRE(close != std::string::npos);
    blocks.push_back(doc.substr(open + 8, close - open - 8));
    at = close + 4;
  }
  const Model& m = test::keep_model("input 32x32x3 layout=hwc\n" + blocks[0] + blocks[1] +
                                    "a: inception 64 48 64 32\ngap\nflatten\nfc 10\n");
  CHECK(layer(m, "mixed").inputs == std::vector<std::string>{"b1.relu", "b3.relu", "b5.relu"});
  CHECK(layer(m, "a.branch1.conv").inputs == std::vector<std::string>{"mixed"});
  Options o;
  o.train.batch = 1;
  Estimate e = estimate(m, o);
  // as the comment in the doc says: 64 + 96 + 32 = 192 channels; the block: 64 + 64 + 32 = 160
  CHECK(test::row(e, "mixed").out.shape == std::vector<i64>{1, 192, 32, 32});
  CHECK(test::row(e, "a.cat").out.shape == std::vector<i64>{1, 160, 32, 32});
}
