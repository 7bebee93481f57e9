// Bad input never crashes, hangs or gives a number: it is an Error naming file, line, column and
// layer, with what to do. Plus the format's features (blocks, repeats, references, JSON).
#include <catch2/catch.hpp>
#include <chrono>
#include <random>
#include <nlohmann/json.hpp>

#include "memfit/api.hpp"
#include "memfit/estimate.hpp"
#include "memfit/ops.hpp"

using namespace memfit;

namespace {

// Runs the whole pipeline and returns the error message ("" if none).
std::string error_of(const std::string& src, i64 batch = 8) {
  try {
    Model m = parse_model(src, "bad.memfit");
    Options o;
    o.train.batch = batch;
    estimate(m, o);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("bad models give positioned errors with a fix", "[input]") {
  struct Case {
    const char* name;
    std::string src;
    std::string must_contain;
  };
  const std::vector<Case> cases = {
      {"unknown layer", "input 8x8x3 layout=hwc\nconv 4 3x3\nfrobnicate 3\n", "bad.memfit:3:1: layer 'frobnicate1'"},
      {"bad number", "input 8x8x3 layout=hwc\nconv x4 3x3\n", "bad.memfit:2:6: layer 'conv1': option out_channels='x4'"},
      {"kernel larger than input", "input 4x4x3 layout=hwc\nc: conv 8 7x7\n", "bad.memfit:2:1: layer 'c': conv: kernel (7"},
      {"channel mismatch at add",
       "input 8x8x3 layout=hwc\na: conv 8 3x3 pad=1\nb: conv 16 3x3 pad=1\nsum: add from=a,b\n",
       "bad.memfit:4:1: layer 'sum': inputs do not broadcast: 'a' is 8x8x8x8 and 'b' is 8x16x8x8"},
      {"missing reference", "input 8x8x3 layout=hwc\na: conv 8 3x3\nadd from=a,zz\n", "bad.memfit:3:5: layer 'add1': no earlier layer is named 'zz'"},
      {"ambiguous input", "input 50x50x3\nconv 8 3x3\n", "bad.memfit:1:7: layer 'input': a 3-number shape is ambiguous"},
      {"empty file", "", "bad.memfit:1:1: the model has no layers"},
      {"only comments", "# nothing\n\n", "the model has no layers"},
      {"no input first", "conv 8 3x3\n", "bad.memfit:1:1: layer 'conv1': the first layer must be the input"},
      {"binary garbage", std::string("input 8x8x3\x01\x02\x00\xff", 15), "bad.memfit:1:12: the file contains a control byte"},
      {"overflow", "input 100000000x100000000x100 layout=hwc\nconv 8 1x1\n", "overflows 64 bits"},
      {"unknown option", "input 8x8x3 layout=hwc\nconv 8 3x3 strides=2\n", "bad.memfit:2:12: layer 'conv1': conv2d has no option 'strides'"},
      {"flat into conv", "input 784\nconv 8 3x3\n", "layer 'conv1': expects a 4-d input"},
      {"block without end", "input 8x8x3 layout=hwc\nblock b\nconv 8 1x1\n", "block 'b' has no 'end'"},
      {"recursive block", "input 8x8x3 layout=hwc\nblock b\nb\nend\nb\n", "blocks nest deeper than"},
      {"huge repeat", "input 8x8x3 layout=hwc\nrepeat 1000000000\nrelu\nend\n", "repeat count 1000000000 exceeds"},
      {"invalid JSON", "{\"layers\": [\n{\"kind\": \"input\",,}]}", "bad.memfit:2:18: invalid JSON"},
      {"JSON unknown kind",
       "{\"layers\": [\n {\"name\": \"input\", \"kind\": \"input\", \"shape\": [3, 8, 8]},\n {\"name\": \"x\", \"kind\": \"warp\"}]}",
       "bad.memfit:3:11: layer 'x': unknown layer kind 'warp'"},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    std::string msg = error_of(c.src);
    CHECK_THAT(msg, Catch::Contains(c.must_contain));
    CHECK_THAT(msg, Catch::Contains("Fix: "));
  }
}

TEST_CASE("a batch whose bytes overflow 64 bits is an error, not a number", "[input]") {
  std::string src = "input 224x224x3 layout=hwc\nconv 64 3x3\n";
  CHECK_THAT(error_of(src, i64{1} << 50), Catch::Contains("overflows 64 bits"));
}

TEST_CASE("a very deep model is answered in seconds", "[input][deep]") {
  // 30,000 layers: repeat 10,000 x (conv 8 3x3 pad=1, relu inplace, bn)
  std::string src = "input 16x16x8 layout=hwc\nrepeat 10000\nconv 8 3x3 pad=1 bias=false\nbn\nrelu inplace\nend\ngap\nflatten\nfc 10\n";
  auto t0 = std::chrono::steady_clock::now();
  Model m = parse_model(src, "deep.memfit");
  Options o;
  o.train.batch = 2;
  Estimate e = estimate(m, o);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(m.layers.size() == 30004);
  CHECK(e.total_params == 10000LL * (8 * 8 * 9 + 2 * 8) + 8 * 10 + 10);
  CHECK(s < 20.0);  // generous: a hang or quadratic blow-up would take minutes
}

TEST_CASE("blocks, repeats and references expand to named layers", "[input][format]") {
  std::string src = R"(
input 32x32x3 layout=hwc
block basic out
  conv1: conv $out 3x3 pad=1 bias=false
  bn1: bn
  relu1: relu inplace
  conv2: conv $out 3x3 pad=1 bias=false
  bn2: bn
  sum: add from=bn2,in
  relu
end
stem: conv 16 3x3 pad=1
layer1: repeat 2 basic 16
pool: adaptive_avgpool 1
flatten
fc: fc 10
)";
  Model m = parse_model(src, "res.memfit");
  std::vector<std::string> names;
  for (const auto& l : m.layers) names.push_back(l.name);
  CHECK(names[2] == "layer1.0.conv1");
  CHECK(names[8] == "layer1.0.relu2");  // unnamed: relu1 is taken in this block, so relu2
  // the add of the first block takes bn2 of the same block and the block's input (stem)
  const Layer* sum0 = nullptr;
  for (const auto& l : m.layers)
    if (l.name == "layer1.0.sum") sum0 = &l;
  REQUIRE(sum0);
  CHECK(sum0->inputs == std::vector<std::string>{"layer1.0.bn2", "stem"});
  Estimate e = estimate(m, Options{});
  CHECK(e.layers.back().out.shape.empty());  // the appended loss is a scalar
  // the JSON form (what `memfit model --json` prints) gives the same estimate
  nlohmann::json req = {{"command", "model"}, {"model", src}};
  std::string j = handle_request(req.dump());
  REQUIRE_THAT(j, !Catch::Contains("\"error\""));
  Estimate e2 = estimate(parse_model(j, "res.json"), Options{});
  CHECK(e2.total_params == e.total_params);
  CHECK(e2.total_saved_bytes == e.total_saved_bytes);
  CHECK(e2.peak_reserved_bytes == e.peak_reserved_bytes);
}

TEST_CASE("registering a layer kind twice is an error", "[registry]") {
  OpRule dup = *find_op("relu");
  CHECK_THROWS_AS(register_op(dup), std::logic_error);
  OpRule alias_clash = *find_op("relu");
  alias_clash.kind = "relu_again";
  alias_clash.aliases = {"fc"};  // already linear's alias
  CHECK_THROWS_AS(register_op(alias_clash), std::logic_error);
}

TEST_CASE("mutated models give a result or an Error, never anything else", "[input][fuzz]") {
  // Random edits of real models (characters replaced, inserted, deleted; lines duplicated): the
  // pipeline must either estimate or throw memfit::Error. Any other exception or a crash fails.
  std::mt19937_64 rng(2026);
  const std::string alphabet = "0123456789x=:,.-_ #\nabcdefghijklmnopqrstuvwxyz$\t{}[]\"\x01\xff";
  std::vector<std::string> seeds = {find_builtin_model("question_cnn")->text, find_builtin_model("resnet18")->text,
                                    handle_request(R"({"command":"model"})")};
  int n_ok = 0, n_error = 0;
  for (int trial = 0; trial < 1500; ++trial) {
    std::string src = seeds[static_cast<std::size_t>(trial) % seeds.size()];
    int n_edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < n_edits && !src.empty(); ++k) {
      std::size_t at = static_cast<std::size_t>(rng() % src.size());
      char c = alphabet[static_cast<std::size_t>(rng() % alphabet.size())];
      switch (rng() % 4) {
        case 0: src[at] = c; break;
        case 1: src.insert(src.begin() + static_cast<long>(at), c); break;
        case 2: src.erase(at, 1 + rng() % 8); break;
        default: {
          std::size_t eol = src.find('\n', at);
          std::size_t bol = src.rfind('\n', at);
          bol = bol == std::string::npos ? 0 : bol;
          if (eol != std::string::npos) src.insert(eol, src.substr(bol, eol - bol));
        }
      }
    }
    try {
      Model m = parse_model(src, "fuzz.memfit");
      Options o;
      o.train.batch = 2;
      estimate(m, o);
      ++n_ok;
    } catch (const Error&) {
      ++n_error;
    } catch (const std::exception& e) {
      FAIL("trial " << trial << ": " << e.what() << "\n--- model ---\n" << src);
    }
  }
  CHECK(n_ok + n_error == 1500);
  CHECK(n_error > 0);  // the mutations do break models
  CHECK(n_ok > 0);     // and some still parse (edits in comments, names, numbers)
}
