// The ONNX importer (docs/onnx.md): fixtures exported by torch.onnx (tools/make_onnx_fixtures.py),
// and protobuf written by hand here (a tiny encoder independent of core/src/model/onnx_wire.cpp, with
// the field numbers of onnx/onnx.proto) for the cases an exporter never writes: cycles, negative or
// huge dims, truncation, garbage, a 40 MB weight whose bytes must not be read.
#include <catch2/catch.hpp>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "memfit/api.hpp"
#include "memfit/estimate.hpp"
#include "memfit/onnx.hpp"
#include "memfit/ops.hpp"
#include "memfit/report.hpp"
#include "test_util.hpp"

using namespace memfit;

namespace {

std::string fixture_path(const std::string& name) { return std::string(MEMFIT_SOURCE_DIR) + "/tests/fixtures/onnx/" + name; }

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

const Model& keep(Model m) {
  static std::deque<Model> models;
  models.push_back(std::move(m));
  return models.back();
}

const Model& import_fixture(const std::string& name, const DimValues& dims = {}) {
  FileByteSource src(fixture_path(name));
  return keep(import_onnx(src, name, dims));
}

// The import's error message; "" if it imports. Anything but memfit::Error fails the test.
std::string import_error(const std::string& bytes, const DimValues& dims = {}) {
  try {
    MemoryByteSource src(bytes);
    import_onnx(src, "t.onnx", dims);
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("not a memfit::Error: " << e.what());
  }
  return "";
}

// ---- a protobuf encoder (https://protobuf.dev/programming-guides/encoding/)
struct Pb {
  std::string b;
  Pb& varint(std::uint64_t v) {
    do {
      unsigned char c = v & 0x7F;
      v >>= 7;
      b.push_back(static_cast<char>(c | (v ? 0x80 : 0)));
    } while (v);
    return *this;
  }
  Pb& tag(int field, int wire) { return varint(static_cast<std::uint64_t>(field) << 3 | static_cast<std::uint64_t>(wire)); }
  Pb& i(int field, i64 v) { return tag(field, 0).varint(static_cast<std::uint64_t>(v)); }
  Pb& s(int field, const std::string& v) {
    tag(field, 2).varint(v.size());
    b += v;
    return *this;
  }
  Pb& m(int field, const Pb& sub) { return s(field, sub.b); }
  Pb& f(int field, float v) {
    tag(field, 5);
    std::uint32_t bits;
    std::memcpy(&bits, &v, 4);
    for (int k = 0; k < 4; ++k) b.push_back(static_cast<char>(bits >> (8 * k)));
    return *this;
  }
};

// TensorProto: dims 1, data_type 2, name 8, raw_data 9, data_location 14
Pb tensor(const std::string& name, const std::vector<i64>& dims, const std::string& raw = "", bool external = false) {
  Pb t;
  for (i64 d : dims) t.i(1, d);
  t.i(2, 1).s(8, name);  // float
  if (!raw.empty()) t.s(9, raw);
  if (external) t.i(14, 1);
  return t;
}
// ValueInfoProto: name 1, type 2 -> TypeProto.tensor_type 1 -> elem_type 1, shape 2 -> dim 1 -> dim_value 1 / dim_param 2
Pb value_info(const std::string& name, const std::vector<std::string>& dims) {
  Pb shape;
  for (const auto& d : dims) {
    Pb dim;
    if (!d.empty() && std::isdigit(static_cast<unsigned char>(d[0])) ) dim.i(1, std::stoll(d));
    else if (!d.empty() && d[0] == '-') dim.i(1, std::stoll(d));
    else dim.s(2, d);
    shape.m(1, dim);
  }
  Pb tt;
  tt.i(1, 1).m(2, shape);
  Pb type;
  type.m(1, tt);
  Pb vi;
  vi.s(1, name).m(2, type);
  return vi;
}
// NodeProto: input 1, output 2, name 3, op_type 4, attribute 5 (AttributeProto: name 1, i 3, ints 8, type 20)
Pb node(const std::string& op, const std::string& name, const std::vector<std::string>& in, const std::vector<std::string>& out,
        const std::vector<std::pair<std::string, std::vector<i64>>>& ints = {}) {
  Pb n;
  for (const auto& x : in) n.s(1, x);
  for (const auto& x : out) n.s(2, x);
  n.s(3, name).s(4, op);
  for (const auto& [k, v] : ints) {
    Pb a;
    a.s(1, k);
    for (i64 x : v) a.i(8, x);
    a.i(20, 7);  // INTS
    n.m(5, a);
  }
  return n;
}
// ModelProto: ir_version 1, graph 7, opset_import 8; GraphProto: node 1, initializer 5, input 11, output 12
std::string model(const std::vector<Pb>& nodes, const std::vector<Pb>& inits, const Pb& input, const Pb& output) {
  Pb g;
  for (const auto& n : nodes) g.m(1, n);
  for (const auto& t : inits) g.m(5, t);
  g.m(11, input).m(12, output);
  Pb op;
  op.s(1, "").i(2, 14);
  Pb mp;
  mp.i(1, 7).m(7, g).m(8, op);
  return mp.b;
}

// An MLP: input [N, 16] -> Gemm(fc.weight [16, out], transB=0) -> Relu, with `raw_bytes` of weight data.
std::string gemm_model(i64 out, const std::string& raw, bool external = false, const std::string& node_name = "/fc/Gemm") {
  return model({node("Gemm", node_name, {"x", "fc.weight"}, {"h"}, {}), node("Relu", "/act/Relu", {"h"}, {"y"})},
               {[&] {
                 Pb t = tensor("fc.weight", {16, out}, raw, external);
                 return t;
               }()},
               value_info("x", {"batch", "16"}), value_info("y", {"batch", std::to_string(out)}));
}

Estimate est(const Model& m, i64 batch = 8) {
  Options o;
  o.train.batch = batch;
  return estimate(m, o);
}

}  // namespace

TEST_CASE("onnx: the tiny CNN exported by torch.onnx gives the estimate of its hand-written twin", "[onnx]") {
  const Model& onnx = import_fixture("tiny_cnn.onnx");
  const Model& twin = keep(parse_model(read_file(fixture_path("tiny_cnn.memfit")), "tiny_cnn.memfit"));
  // the layer list, as TinyCnn's forward() runs (tools/make_onnx_fixtures.py)
  std::vector<std::string> kinds;
  for (const auto& l : onnx.layers) kinds.push_back(l.kind);
  CHECK(kinds == std::vector<std::string>{"input", "conv2d", "batchnorm2d", "relu", "maxpool2d", "conv2d", "relu6", "add",
                                          "adaptive_avgpool2d", "flatten", "linear"});
  CHECK(onnx.layers[1].name == "conv1");  // "/conv1/Conv"
  for (i64 batch : {1, 8, 64}) {
    Estimate a = est(onnx, batch), b = est(twin, batch);
    // 289 parameters by hand: conv1 4*3*3*3 = 108, bn1 4 + 4, conv2 4*4*3*3 + 4 = 148, fc 4*5 + 5 = 25
    CHECK(a.total_params == 289);
    CHECK(a.total_params == b.total_params);
    CHECK(a.total_buffer_bytes == b.total_buffer_bytes);
    CHECK(a.total_saved_bytes == b.total_saved_bytes);
    CHECK(a.peak_allocated_bytes == b.peak_allocated_bytes);
    CHECK(a.peak_reserved_bytes == b.peak_reserved_bytes);
  }
  // what the graph cannot say is in the notes
  std::string notes;
  for (const auto& n : est(onnx).notes) notes += n + "\n";
  CHECK_THAT(notes, Catch::Contains("int64 indices"));
  CHECK_THAT(notes, Catch::Contains("nn.AdaptiveAvgPool2d"));
  CHECK_THAT(notes, Catch::Contains("train mode"));
}

TEST_CASE("onnx: external data is not needed (the weights file is not committed)", "[onnx]") {
  const Model& ext = import_fixture("tiny_cnn_external.onnx");
  const Model& inl = import_fixture("tiny_cnn.onnx");
  Estimate a = est(ext), b = est(inl);
  CHECK(a.total_params == 289);
  CHECK(a.peak_allocated_bytes == b.peak_allocated_bytes);
  CHECK(a.peak_reserved_bytes == b.peak_reserved_bytes);
  bool said = false;
  for (const auto& n : ext.notes) said = said || n.find("external data") != std::string::npos;
  CHECK(said);
}

TEST_CASE("onnx: a 40 MB weight is skipped, not read", "[onnx]") {
  // 625,000 x 16 float32 = 40,000,000 bytes of raw_data
  const i64 out = 625000;
  std::string bytes = gemm_model(out, std::string(static_cast<std::size_t>(out * 16 * 4), '\0'));
  REQUIRE(bytes.size() > 40'000'000);
  MemoryByteSource src(bytes);
  Model m = import_onnx(src, "big.onnx");
  CHECK(m.layers.size() == 3);  // input, fc, act
  CHECK(m.layers[1].kind == "linear");
  CHECK(m.layers[1].attrs.at("out_features").a == out);
  // The structure is ~150 bytes before the weight and ~60 after it; the reader pulls 4 KiB windows, one
  // at the start and one after the skipped raw_data: at most 2 x 4096 bytes.
  CHECK(src.bytes_read() <= 2 * 4096);
  Estimate e = est(m, 2);
  CHECK(e.total_params == out * 16);  // the weight only: the Gemm has no C input, so no bias
}

TEST_CASE("onnx: a symbolic dimension needs --dim, named in the error", "[onnx]") {
  std::string err;
  try {
    import_fixture("mlp_seq.onnx");
  } catch (const Error& e) {
    err = e.what();
  }
  CHECK_THAT(err, Catch::Contains("seq") && Catch::Contains("--dim seq="));
  const Model& m = import_fixture("mlp_seq.onnx", {{"seq", 6}});
  CHECK(m.layers[0].attrs.at("shape").text == "6x8");
  std::vector<std::string> kinds;
  for (const auto& l : m.layers) kinds.push_back(l.kind);
  // fc1 = MatMul + Add(bias) folded, GELU's Erf pattern, LayerNormalization, fc2 folded, flatten(1)
  CHECK(kinds == std::vector<std::string>{"input", "linear", "gelu", "layer_norm", "linear", "flatten"});
  CHECK(m.layers[1].attrs.at("bias").flag);
  CHECK(m.layers[1].name == "fc1");
  CHECK(m.layers[2].name == "act");
  // the hand-written twin: 244 parameters by hand (fc1 8*16 + 16, norm 16 + 16, fc2 16*4 + 4)
  const Model& twin = keep(parse_model(read_file(fixture_path("mlp_seq.memfit")), "mlp_seq.memfit"));
  for (i64 batch : {1, 4, 32}) {
    Estimate a = est(m, batch), b = est(twin, batch);
    CHECK(a.total_params == 244);
    CHECK(a.total_saved_bytes == b.total_saved_bytes);
    CHECK(a.peak_allocated_bytes == b.peak_allocated_bytes);
    CHECK(a.peak_reserved_bytes == b.peak_reserved_bytes);
  }
}

TEST_CASE("onnx: x.view(x.size(0), -1) (Shape, Gather, Unsqueeze, Concat, Reshape) is evaluated to a flatten", "[onnx]") {
  const Model& m = import_fixture("view_flatten.onnx");
  std::vector<std::string> kinds;
  for (const auto& l : m.layers) kinds.push_back(l.kind);
  CHECK(kinds == std::vector<std::string>{"input", "conv2d", "flatten", "linear"});
  // ViewFlatten by hand: conv 3->2 3x3 stride 2 on 16x16 gives 7x7; fc 98 -> 3
  const Model& twin = keep(parse_model("input 3x16x16 layout=chw\nconv: conv 2 3x3 stride=2\nflatten\nfc: fc 3\n", "twin.memfit"));
  for (i64 batch : {1, 16}) {
    Estimate a = est(m, batch), b = est(twin, batch);
    CHECK(a.total_params == 2 * 3 * 3 * 3 + 2 + 98 * 3 + 3);
    CHECK(a.total_saved_bytes == b.total_saved_bytes);
    CHECK(a.peak_reserved_bytes == b.peak_reserved_bytes);
  }
}

TEST_CASE("onnx: x.chunk(2, dim=1), exported as two Slices with computed bounds, is one chunk", "[onnx]") {
  const Model& m = import_fixture("channel_split.onnx");
  std::vector<std::string> kinds;
  for (const auto& l : m.layers) kinds.push_back(l.kind);
  CHECK(kinds == std::vector<std::string>{"input", "conv2d", "chunk", "conv2d", "concat", "flatten"});
  // ChannelSplit written by hand (tools/make_onnx_fixtures.py)
  const Model& twin = keep(parse_model("input 3x8x8 layout=chw\nconv: conv 4 1x1\nsplit: chunk 2\nbranch: conv 2 1x1 from=split:1\n"
                                       "cat: concat from=split,branch\nflatten\n", "twin.memfit"));
  for (i64 batch : {1, 16}) {
    Estimate a = est(m, batch), b = est(twin, batch);
    CHECK(a.total_params == 3 * 4 + 4 + 2 * 2 + 2);
    CHECK(a.total_saved_bytes == b.total_saved_bytes);
    CHECK(a.peak_allocated_bytes == b.peak_allocated_bytes);
    CHECK(a.peak_reserved_bytes == b.peak_reserved_bytes);
  }
}

TEST_CASE("onnx: every unsupported node is listed at once", "[onnx]") {
  std::string err;
  try {
    import_fixture("unsupported.onnx");
  } catch (const Error& e) {
    err = e.what();
  }
  CHECK_THAT(err, Catch::Contains("2 ONNX nodes") && Catch::Contains("'/Sin' (Sin)") && Catch::Contains("'/Cos' (Cos)"));
  try {
    import_fixture("layernorm_opset14.onnx", {{"seq", 6}});
    FAIL("imported");
  } catch (const Error& e) {
    // nn.LayerNorm decomposed below opset 17: Sub, Pow and Sqrt have no memfit layer (ReduceMean does)
    CHECK_THAT(std::string(e.what()), Catch::Contains("(Sub)") && Catch::Contains("(Pow)") && Catch::Contains("(Sqrt)"));
  }
}

TEST_CASE("onnx: torch.onnx's scoped node names become dotted module paths", "[onnx]") {
  std::string bytes = gemm_model(10, "", true, "/layer1/layer1.0/fc/Gemm");
  MemoryByteSource src(bytes);
  Model m = import_onnx(src, "t.onnx");
  CHECK(m.layers[1].name == "layer1.0.fc");
  CHECK(m.layers[2].name == "act");
}

TEST_CASE("onnx: an Identity of an initializer (torch.onnx shares equal weights so) is still a parameter", "[onnx]") {
  std::string b = model({node("Identity", "/Identity", {"fc.weight"}, {"w2"}), node("Gemm", "/fc/Gemm", {"x", "w2"}, {"y"})},
                        {tensor("fc.weight", {16, 10}, "", true)}, value_info("x", {"batch", "16"}), value_info("y", {"batch", "10"}));
  MemoryByteSource src(b);
  Model m = import_onnx(src, "t.onnx");
  REQUIRE(m.layers.size() == 2);
  CHECK(m.layers[1].kind == "linear");
  CHECK(est(m, 2).total_params == 16 * 10);
}

TEST_CASE("onnx: bad files are errors, never crashes", "[onnx]") {
  std::string good = read_file(fixture_path("tiny_cnn.onnx"));
  REQUIRE(import_error(good).empty());
  SECTION("every truncation") {
    for (std::size_t n = 0; n < good.size(); ++n) {
      std::string e = import_error(good.substr(0, n));
      CHECK_FALSE(e.empty());
    }
  }
  SECTION("garbage") {
    std::mt19937 rng(12345);
    for (int k = 0; k < 2000; ++k) {
      std::string g(static_cast<std::size_t>(1 + rng() % 300), '\0');
      for (char& c : g) c = static_cast<char>(rng());
      import_error(g);  // an Error or (very unlikely) a model; never anything else
    }
    // flipped bytes of a real file
    for (int k = 0; k < 2000; ++k) {
      std::string g = good;
      g[rng() % g.size()] = static_cast<char>(rng());
      import_error(g);
    }
  }
  SECTION("not ONNX") {
    CHECK_THAT(import_error("input 50x50x3 layout=hwc\nconv 32 3x3\n"), Catch::Contains("not a valid ONNX file"));
    CHECK_THAT(import_error(""), Catch::Contains("empty"));
    CHECK_FALSE(looks_like_onnx("input 50x50x3"));
    CHECK_FALSE(looks_like_onnx("{\"layers\": []}"));
    CHECK(looks_like_onnx(good.substr(0, 16)));
  }
  SECTION("a cycle") {
    std::string b = model({node("Relu", "a", {"x", "z"}, {"y"}), node("Add", "b", {"y", "x"}, {"z"})}, {},
                          value_info("x", {"batch", "4"}), value_info("z", {"batch", "4"}));
    CHECK_THAT(import_error(b), Catch::Contains("cycle"));
  }
  SECTION("negative and huge dims") {
    CHECK_THAT(import_error(gemm_model(-5, "", true)), Catch::Contains("negative dimension"));
    CHECK_THAT(import_error(gemm_model(i64{1} << 62, "", true)), Catch::Contains("2^40"));
    std::string neg_in = model({node("Relu", "r", {"x"}, {"y"})}, {}, value_info("x", {"batch", "-3"}), value_info("y", {"batch", "4"}));
    CHECK_THAT(import_error(neg_in), Catch::Contains("dimension 1 = -3"));
  }
  SECTION("a nested length that runs past its message") {
    Pb g;
    g.tag(1, 2).varint(1000).b += "xx";  // a node of 1000 bytes in a 3-byte graph
    Pb mp;
    mp.i(1, 7).m(7, g);
    CHECK_THAT(import_error(mp.b), Catch::Contains("runs past"));
  }
  SECTION("a deep subgraph attribute is skipped, not descended into") {
    Pb inner;
    for (int k = 0; k < 2000; ++k) {  // GraphProto in AttributeProto.g (field 6) in NodeProto in GraphProto ...
      Pb a;
      a.s(1, "body").m(6, inner).i(20, 5);
      Pb n;
      n.s(4, "If").m(5, a);
      Pb g;
      g.m(1, n);
      inner = g;
    }
    Pb relu = node("Relu", "r", {"x"}, {"y"});
    Pb a;
    a.s(1, "body").m(6, inner).i(20, 5);  // GRAPH
    relu.m(5, a);
    std::string b = model({relu}, {}, value_info("x", {"batch", "4"}), value_info("y", {"batch", "4"}));
    CHECK(import_error(b).empty());
  }
}

TEST_CASE("onnx: the request API takes dims", "[onnx]") {
  std::string bytes = read_file(fixture_path("tiny_cnn.onnx"));
  MemoryByteSource src(bytes);
  std::string out = handle_request(R"({"command": "estimate", "file": "tiny_cnn.onnx", "options": {"batch": "8"}})", &src);
  nlohmann::json j = nlohmann::json::parse(out);
  REQUIRE_FALSE(j.contains("error"));
  Estimate b = est(keep(parse_model(read_file(fixture_path("tiny_cnn.memfit")), "tiny_cnn.memfit")), 8);
  CHECK(j["peak"]["allocated_bytes"].get<i64>() == b.peak_allocated_bytes);
  std::string bad = handle_request(R"({"command": "model", "file": "x.onnx", "dims": {"seq": "x"}})", &src);
  CHECK_THAT(bad, Catch::Contains("dims"));
}
