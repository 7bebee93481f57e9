// Bad input never crashes, wraps or answers wrong (issue 10). Each case failed before its fix; the
// expected numbers are hand arithmetic written next to them, not outputs of the code under test.
#include <string>

#include "memfit/allocator.hpp"
#include "memfit/api.hpp"
#include "memfit/report.hpp"
#include "test_util.hpp"

using namespace memfit;

namespace {
constexpr i64 kI64Max = 9223372036854775807;

nlohmann::json request(const std::string& req) { return nlohmann::json::parse(handle_request(req)); }

// The error message of a request that must fail (FAILs the test when it does not fail).
std::string error_of(const std::string& req) {
  nlohmann::json r = request(req);
  if (!r.contains("error")) FAIL("request did not fail: " << req.substr(0, 200));
  std::string msg = r["error"]["message"].get<std::string>();
  CHECK(msg.find("internal error") == std::string::npos);
  return msg;
}
}  // namespace

TEST_CASE("F1/F7: allocator rounding never wraps near 2^63") {
  AllocatorConfig c;
  // 2^63 - 512 = 9,223,372,036,854,775,296 is a multiple of 512: rounds to itself.
  CHECK(round_request(c, 9223372036854775296) == 9223372036854775296);
  // one byte more needs 2^63: not representable. Before: (bytes + 511) wrapped to a negative size.
  CHECK_THROWS_AS(round_request(c, 9223372036854775297), Error);
  CHECK_THROWS_AS(round_request(c, kI64Max), Error);
  // 2^62 is a multiple of 2 MiB: the segment is the request.
  CHECK(segment_size_for(c, i64{1} << 62) == i64{1} << 62);
  // F1's tensor: 36,028,797,018,960,000 x 64 x 4 B = 9,223,372,036,853,760,000 B (a multiple of 512:
  // ...760,000 / 512 = 18,014,398,509,480,000); rounding it up to 2 MiB needs 2^63 + ... : refused.
  CHECK(round_request(c, 9223372036853760000) == 9223372036853760000);
  CHECK_THROWS_AS(segment_size_for(c, 9223372036853760000), Error);
}

TEST_CASE("F1: a plan with a near-2^63 tensor is an error, with and without a GPU capacity") {
  Plan p;
  p.tensors.push_back({9223372036853760000, Category::activation, -1});
  p.events.push_back({0, false, Phase::forward, 1, -1});
  AllocatorConfig c;
  CHECK_THROWS_AS(simulate(p, c), Error);
  c.capacity_bytes = 8 * GiB;
  CHECK_THROWS_AS(simulate(p, c), Error);
  // A large but representable request on a small GPU: out of memory, not a wrapped "fits".
  p.tensors[0].bytes = i64{1} << 62;
  SimResult r = simulate(p, c);
  CHECK(r.oom);
}

TEST_CASE("F1: the two-line model with a 2^55-element input is refused, text and JSON") {
  const Model& m = test::keep_model("input 36028797018960000\nrelu\n", "huge.memfit");
  CHECK_THROWS_AS(estimate(m, Options{}), Error);
  std::string r = handle_request(R"({"model": "input 36028797018960000\nrelu\n"})");
  CHECK(r.find("\"error\"") != std::string::npos);
  CHECK(r.find("internal error") == std::string::npos);
  std::string j = handle_request(
      R"({"model": "{\"format\": \"memfit-model/1\", \"layers\": [{\"kind\": \"input\", \"shape\": [36028797018960000]}, {\"kind\": \"relu\"}]}"})");
  CHECK(j.find("\"error\"") != std::string::npos);
  CHECK(j.find("internal error") == std::string::npos);
}

TEST_CASE("F7: user sizes above 1 PiB are refused; 1 PiB itself is accepted") {
  OptionStrings s;
  s.cublas_workspace = "9223372036854775807";
  CHECK_THROWS_WITH(make_options(s), Catch::Contains("1 PiB"));
  s.cublas_workspace.reset();
  s.cudnn_workspace = "9223372036854000000";
  CHECK_THROWS_WITH(make_options(s), Catch::Contains("1 PiB"));
  // 2^50 = 1,125,899,906,842,624 B: the bound itself
  CHECK(parse_size("1125899906842624", "x") == 1125899906842624);
  CHECK(parse_size("1024TiB", "x") == 1125899906842624);
  CHECK_THROWS_AS(parse_size("1125899906842625", "x"), Error);
  CHECK_THROWS_AS(parse_gpu("2048TiB"), Error);
  // workspaces: at most 1 TiB = 1,099,511,627,776 B
  s.cudnn_workspace = "1099511627776";
  CHECK(make_options(s).workspaces->cudnn_conv_bytes == 1099511627776);
  s.cudnn_workspace = "1099511627777";
  CHECK_THROWS_WITH(make_options(s), Catch::Contains("larger than 1 TiB"));
}

TEST_CASE("F15: a comma in a size is refused, not dropped") {
  CHECK_THROWS_WITH(parse_size("1,5GiB", "the GPU memory size"), Catch::Contains("comma"));
  CHECK_THROWS_WITH(parse_gpu("1,5GiB"), Catch::Contains("comma"));
  CHECK_THROWS_AS(parse_size("1,000MiB", "x"), Error);
  // 1.5 x 1,073,741,824 = 1,610,612,736; 1_500MiB = 1500 x 1,048,576 = 1,572,864,000
  CHECK(parse_size("1.5GiB", "x") == 1610612736);
  CHECK(parse_size("1_500MiB", "x") == 1572864000);
  // 19 decimals: 10^19 does not fit the divisor (it was multiplied unchecked)
  CHECK_THROWS_AS(parse_size("0.0000000000000000001GiB", "x"), Error);
}

TEST_CASE("W1: a request nested 20,000 deep is an error value, and the next request still works") {
  std::string deep = R"({"command": "estimate", "options": {"batch": )" + std::string(20000, '[') +
                     std::string(20000, ']') + "}}";
  CHECK_THAT(error_of(deep), Catch::Contains("nests"));
  // positioned: '{' is level 1 on line 1; on line 2 the 16th '[' reaches level 17, at column 16
  nlohmann::json pos = request("{\n" + std::string(40, '[') + std::string(40, ']') + "\n}");
  CHECK(pos["error"]["line"] == 2);
  CHECK(pos["error"]["column"] == 16);
  // brackets inside strings are not nesting
  std::string in_string = R"({"command": "model", "file": ")" + std::string(100, '[') + R"("})";
  CHECK_FALSE(request(in_string).contains("error"));
  CHECK_FALSE(request(R"({"command": "gpus"})").contains("error"));
}

TEST_CASE("W3: wrongly typed request fields are refused, never estimated with defaults") {
  CHECK_THAT(error_of(R"({"command": "estimate", "model": 123})"), Catch::Contains("\"model\" is an integer"));
  CHECK_THAT(error_of(R"({"command": "estimate", "model": {"layers": []}})"), Catch::Contains("\"model\" is an object"));
  CHECK_THAT(error_of(R"({"command": "estimate", "options": "batch=64"})"), Catch::Contains("\"options\" is a string"));
  CHECK_THAT(error_of(R"({"command": 7})"), Catch::Contains("\"command\""));
  CHECK_THAT(error_of(R"([1, 2])"), Catch::Contains("expected a JSON object"));
  CHECK_THAT(error_of(R"({"options": {"batch": [64]}})"), Catch::Contains("options.batch"));
  CHECK_THAT(error_of(R"({"options": {"timeline": "yes"}})"), Catch::Contains("options.timeline"));
  // Was a nlohmann type_error, reported as "internal error".
  CHECK_THAT(error_of(R"({"command": "sweep", "sweep_up_to": "12"})"), Catch::Contains("sweep_up_to"));
  CHECK_THAT(error_of(R"({"command": "sweep", "sweep_points": 2.5})"), Catch::Contains("sweep_points"));
  CHECK_THAT(error_of(R"({"command": "sweep", "sweep_up_to": 18446744073709551615})"), Catch::Contains("sweep_up_to"));
  // numbers as option values stay accepted (batch 2 as a number and as a string give the same bytes)
  CHECK(handle_request(R"({"options": {"batch": 2}})") == handle_request(R"({"options": {"batch": "2"}})"));
}

TEST_CASE("W2: the sweep with a 2^63-1 context is refused, never a negative device size") {
  CHECK_THAT(error_of(R"({"command": "sweep", "options": {"context": "9223372036854775807"}})"),
             Catch::Contains("1 PiB"));
  // The largest context allowed, 2^50 B: device = reserved + 2^50, positive and above 2^50.
  nlohmann::json r = request(R"({"command": "sweep", "sweep_up_to": 4, "sweep_points": 2,
                                 "options": {"context": "1125899906842624"}})");
  REQUIRE(r.contains("points"));
  for (const auto& p : r["points"]) CHECK(p["device_bytes"].get<i64>() > 1125899906842624);
}

TEST_CASE("F11: huge kernels and dilations are refused with the layer, no wrapped window") {
  // The parser allows sizes below 2^40: (2^40 - 1) x (2^40 - 2) overflows 64 bits.
  const Model& m = test::keep_model("input 8x8x3 layout=hwc\nc1: conv 4 1099511627775x1 dilation=1099511627775\n");
  CHECK_THROWS_WITH(estimate(m, Options{}), Catch::Contains("layer 'c1'") && Catch::Contains("overflows"));
  const Model& same = test::keep_model("input 8x8x3 layout=hwc\nc1: conv 4 1099511627775x1 pad=same dilation=1099511627775\n");
  CHECK_THROWS_WITH(estimate(same, Options{}), Catch::Contains("layer 'c1'") && Catch::Contains("overflows"));
  const Model& pool = test::keep_model("input 8x8x3 layout=hwc\nconv 4 3x3\np1: maxpool 1099511627775x1 dilation=1099511627775\n");
  CHECK_THROWS_WITH(estimate(pool, Options{}), Catch::Contains("layer 'p1'") && Catch::Contains("overflows"));
}

TEST_CASE("F5: long layer names are cut in the text table") {
  std::string name(4000, 'n');  // the parser refuses names over 4,096 bytes
  const Model& m = test::keep_model("input 8\n" + name + ": fc 4\n");
  std::string text = render_text(m, Options{}, true);
  std::size_t longest = 0, start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    // notes (pipeline) quote the name once; the table and per-layer lines are what repeat per layer
    if (text.compare(start, 5, "note:") != 0) longest = std::max(longest, end - start);
    start = end + 1;
  }
  // the widest table row: a 42-byte name column + 19 + 18 + 12 + 14 + 12 + 12 = 129 bytes
  CHECK(longest <= 140);
  CHECK(text.find(std::string(37, 'n') + "...") != std::string::npos);
  CHECK(text.substr(0, text.find("note:")).find(std::string(38, 'n')) == std::string::npos);
}

TEST_CASE("max-batch says when the result is the search's cap") {
  // input 1 -> fc 1: at batch 2^40 every activation is 2^40 x 4 B = 4 TiB; a handful of them stay far
  // below 1 PiB, so every batch up to the cap (2^40) fits.
  nlohmann::json r = request(R"({"command": "max-batch", "model": "input 1\nfc 1\n", "options": {"gpu": "1024TiB"}})");
  REQUIRE(r.contains("max_batch"));
  CHECK(r["max_batch"].get<i64>() == i64{1} << 40);
  CHECK(r["max_batch_capped"] == true);
  Options o;
  o.gpu = parse_gpu("1024TiB");
  const Model& m = test::keep_model("input 1\nfc 1\n");
  CHECK_THAT(render_max_batch_text(m, o), Catch::Contains("cap"));
  nlohmann::json small = request(R"({"command": "max-batch", "options": {"gpu": "8GiB"}})");
  CHECK(small["max_batch_capped"] == false);
}

TEST_CASE("fuzz find: bytes that are not UTF-8 in names and messages are written as U+FFFD") {
  // The parsers now refuse such names (model_text.cpp, model_json.cpp); a Model built by a program
  // can still carry them, and the JSON writer must not throw on it.
  static Model m = parse_model("input 8\nabcd: fc 2\n", "t.memfit");
  m.layers[1].name = "ab\xff" "cd";
  std::string j = estimate_json(m, Options{});  // threw nlohmann type_error 316 ("internal error")
  CHECK(j.find("\"ab\xEF\xBF\xBD" "cd\"") != std::string::npos);
  std::string e = error_json(Error({"f\xfe", 1, 1}, "l\xff", "bad \xc3", "fix"));
  CHECK(nlohmann::json::parse(e)["error"]["file"] == "f\xEF\xBF\xBD");
}

TEST_CASE("fuzz find: a number beyond a double in the request is invalid JSON, not an internal error") {
  CHECK_THAT(error_of(R"({"command": "sweep", "sweep_up_to": 444444e444})"), Catch::Contains("not valid JSON"));
}
