// Native side of tests/web/bench-module.mjs: times memfit::handle_request on the same JSON requests the
// WebAssembly module gets (tests/web/bench-requests.json), so the two are measured the same way.
// Built and run by tools/bench-wasm.sh. Output: one JSON line per request {name, ms: [every call]}.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "memfit/api.hpp"

int main(int argc, char** argv) {
  if (argc < 2) { std::cerr << "usage: request_bench REQUESTS.json [runs]\n"; return 2; }
  std::ifstream f(argv[1]);
  nlohmann::json all = nlohmann::json::parse(f);
  const int runs = argc > 2 ? std::stoi(argv[2]) : 200;
  for (auto& item : all) {
    const std::string name = item["name"];
    const std::string req = item["request"].dump();
    std::size_t sink = 0;
    for (int i = 0; i < 5; ++i) sink += memfit::handle_request(req).size();  // warm-up (caches)
    std::vector<double> ms;
    for (int i = 0; i < runs; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      sink += memfit::handle_request(req).size();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::printf("{\"name\":\"%s\",\"bytes\":%zu,\"ms\":[", name.c_str(), sink / (runs + 5));
    for (std::size_t i = 0; i < ms.size(); ++i) std::printf("%s%.5f", i ? "," : "", ms[i]);
    std::printf("]}\n");
  }
}
