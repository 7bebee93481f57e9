// The text model format (docs/model-format.md): one layer per line, close to how people list a
// network. Blocks with parameters and repeats are expanded here, so everything after the parser sees
// a flat list of layers with unique names and explicit inputs.
#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "memfit/model.hpp"
#include "memfit/ops.hpp"
#include "model_parse.hpp"

namespace memfit {

namespace {

struct Token {
  std::string text;
  int column;  // 1-based
};

struct Line {
  std::vector<Token> tokens;
  int number;
};

struct BlockDef {
  std::string name;
  std::vector<std::string> params;             // in order
  std::map<std::string, std::string> defaults;  // param -> default text
  std::vector<Line> body;
  int line;
};

// Names of keys people write that mean an attribute (kept small and explicit).
const std::map<std::string, std::string>& key_aliases() {
  static const std::map<std::string, std::string> m{{"pad", "padding"}, {"k", "kernel"}, {"s", "stride"},
                                                    {"d", "dilation"},  {"ceil", "ceil_mode"}};
  return m;
}

class TextParser {
 public:
  TextParser(std::string_view src, std::string_view file) : file_(file) { split_lines(src); }

  Model parse() {
    Model m;
    m.file = file_;
    std::size_t i = 0;
    std::vector<Line> top;
    while (i < lines_.size()) {
      const Line& ln = lines_[i];
      const std::string& w = ln.tokens[0].text;
      if (w == "model") {
        if (ln.tokens.size() != 2) error(ln, 0, "", "'model' takes one name", "write: model my_net");
        m.name = ln.tokens[1].text;
        ++i;
      } else if (w == "block") {
        i = read_block(i);
      } else {
        top.push_back(ln);
        ++i;
      }
    }
    if (top.empty())
      throw Error({file_, lines_.empty() ? 1 : lines_.back().number, 1}, "", "the model has no layers",
                  "start with an input line, e.g. 'input 50x50x3 layout=hwc', then one layer per line");
    Scope root;
    emit_lines(top, 0, top.size(), root, 0);
    m.layers = std::move(out_);
    if (m.name.empty()) {
      std::string stem = file_;
      auto slash = stem.find_last_of("/\\");
      if (slash != std::string::npos) stem = stem.substr(slash + 1);
      auto dot = stem.find('.');
      m.name = dot == std::string::npos ? stem : stem.substr(0, dot);
    }
    return m;
  }

 private:
  struct Scope {
    std::string prefix;                    // "layer1.0." for a block instance
    Scope* parent = nullptr;
    std::map<std::string, int> counters;   // auto-naming: conv1, conv2 ...
    std::string block_input;               // full name of the layer feeding the block ('in')
    std::string last;                      // last layer emitted in this scope
    std::map<std::string, std::string> subst;  // $param -> text
    int depth = 0;
  };

  std::string file_;
  std::vector<Line> lines_;
  std::map<std::string, BlockDef> blocks_;
  std::vector<Layer> out_;
  std::map<std::string, std::size_t> index_;  // full name -> position in out_
  std::string previous_;                      // last layer emitted anywhere
  int n_repeat_ = 0;

  [[noreturn]] void error(const Line& ln, std::size_t tok, const std::string& layer, const std::string& problem,
                          const std::string& fix) const {
    int col = tok < ln.tokens.size() ? ln.tokens[tok].column : 1;
    throw Error({file_, ln.number, col}, layer, problem, fix);
  }

  void split_lines(std::string_view src) {
    int number = 0;
    std::size_t pos = 0;
    while (pos <= src.size()) {
      std::size_t end = src.find('\n', pos);
      if (end == std::string_view::npos) end = src.size();
      std::string_view raw = src.substr(pos, end - pos);
      ++number;
      Line ln{{}, number};
      for (std::size_t k = 0; k < raw.size(); ++k) {
        unsigned char c = static_cast<unsigned char>(raw[k]);
        if (c == 0 || c == 0x7f || (c < 0x20 && c != '\t' && c != '\r'))
          throw Error({file_, number, static_cast<int>(k) + 1}, "", "the file contains a control byte (is it binary?)",
                      "give a text model file (see docs/model-format.md) or JSON");
      }
      std::size_t i = 0;
      while (i < raw.size()) {
        unsigned char c = static_cast<unsigned char>(raw[i]);
        if (c == '#') break;
        if (std::isspace(c)) {
          ++i;
          continue;
        }
        std::size_t start = i;
        while (i < raw.size() && !std::isspace(static_cast<unsigned char>(raw[i])) && raw[i] != '#') ++i;
        ln.tokens.push_back({std::string(raw.substr(start, i - start)), static_cast<int>(start) + 1});
      }
      if (!ln.tokens.empty()) lines_.push_back(std::move(ln));
      if (end == src.size()) break;
      pos = end + 1;
    }
  }

  // `block NAME [p1 p2=default ...]` ... `end`
  std::size_t read_block(std::size_t i) {
    const Line& head = lines_[i];
    if (head.tokens.size() < 2) error(head, 0, "", "'block' needs a name", "write: block basic out stride=1");
    BlockDef b;
    b.name = head.tokens[1].text;
    if (b.name.back() == ':') b.name.pop_back();
    b.line = head.number;
    if (find_op(b.name)) error(head, 1, "", "block name '" + b.name + "' is a layer kind", "choose another name");
    if (blocks_.count(b.name)) error(head, 1, "", "block '" + b.name + "' is defined twice", "rename one of them");
    for (std::size_t t = 2; t < head.tokens.size(); ++t) {
      std::string p = head.tokens[t].text;
      auto eq = p.find('=');
      if (eq != std::string::npos) {
        b.defaults[p.substr(0, eq)] = p.substr(eq + 1);
        p = p.substr(0, eq);
      }
      b.params.push_back(p);
    }
    int depth = 1;
    std::size_t j = i + 1;
    for (; j < lines_.size(); ++j) {
      const std::string& w = lines_[j].tokens[0].text;
      if (w == "block") error(lines_[j], 0, "", "blocks cannot be defined inside blocks", "move it to the top level");
      if (is_repeat_open(lines_[j])) ++depth;
      if (w == "end" && --depth == 0) break;
      b.body.push_back(lines_[j]);
    }
    if (j == lines_.size()) error(head, 0, "", "block '" + b.name + "' has no 'end'", "add a line 'end' after its layers");
    if (b.body.empty()) error(head, 0, "", "block '" + b.name + "' is empty", "put layers between 'block' and 'end'");
    blocks_.emplace(b.name, std::move(b));
    return j + 1;
  }

  // A `repeat N` line without a block name opens an inline body closed by `end`.
  static bool is_repeat_open(const Line& ln) {
    std::size_t k = (ln.tokens[0].text.back() == ':') ? 1 : 0;
    return ln.tokens.size() == k + 2 && ln.tokens[k].text == "repeat";
  }

  std::string substitute(const std::string& text, const Scope& s, const Line& ln, std::size_t tok) const {
    if (text.find('$') == std::string::npos) return text;
    std::string out;
    for (std::size_t i = 0; i < text.size();) {
      if (text[i] != '$') {
        out += text[i++];
        continue;
      }
      std::size_t j = i + 1;
      while (j < text.size() && (std::isalnum(static_cast<unsigned char>(text[j])) || text[j] == '_')) ++j;
      std::string name = text.substr(i + 1, j - i - 1);
      const Scope* sc = &s;
      const std::string* found = nullptr;
      for (; sc && !found; sc = sc->parent) {
        auto it = sc->subst.find(name);
        if (it != sc->subst.end()) found = &it->second;
      }
      if (!found) error(ln, tok, "", "unknown block parameter '$" + name + "'", "declare it on the block line");
      out += *found;
      i = j;
    }
    return out;
  }

  void emit_lines(const std::vector<Line>& body, std::size_t from, std::size_t to, Scope& scope, int depth) {
    for (std::size_t i = from; i < to;) {
      const Line& ln = body[i];
      if (ln.tokens[0].text == "end") error(ln, 0, "", "'end' without a block or repeat", "remove it");
      if (is_repeat_open(ln)) {
        // inline repeat: find matching end
        int d = 1;
        std::size_t j = i + 1;
        for (; j < to; ++j) {
          if (is_repeat_open(body[j])) ++d;
          if (body[j].tokens[0].text == "end" && --d == 0) break;
        }
        if (j >= to) error(ln, 0, "", "'repeat' has no 'end'", "add a line 'end' after the repeated layers");
        BlockDef inline_block;
        inline_block.name = "repeat";
        inline_block.body.assign(body.begin() + static_cast<long>(i) + 1, body.begin() + static_cast<long>(j));
        if (inline_block.body.empty()) error(ln, 0, "", "'repeat' is empty", "put layers between 'repeat' and 'end'");
        std::size_t k = ln.tokens[0].text.back() == ':' ? 1 : 0;
        std::string label = k ? ln.tokens[0].text.substr(0, ln.tokens[0].text.size() - 1)
                              : "repeat" + std::to_string(++n_repeat_);
        i64 n = read_count(ln, k + 1, scope);
        run_repeat(ln, label, n, inline_block, {}, 0, scope, depth);
        i = j + 1;
        continue;
      }
      emit_statement(ln, scope, depth);
      ++i;
    }
  }

  i64 read_count(const Line& ln, std::size_t tok, const Scope& scope) {
    std::string t = substitute(ln.tokens[tok].text, scope, ln, tok);
    i64 n = 0;
    auto r = std::from_chars(t.data(), t.data() + t.size(), n);
    if (r.ec != std::errc() || r.ptr != t.data() + t.size() || n < 1)
      error(ln, tok, "", "repeat count '" + t + "' is not a positive whole number", "write e.g. repeat 3");
    if (n > kMaxLayers)
      error(ln, tok, "", "repeat count " + t + " exceeds memfit's limit of " + std::to_string(kMaxLayers) + " layers",
            "use a smaller count");
    return n;
  }

  void run_repeat(const Line& ln, const std::string& label, i64 n, const BlockDef& b,
                  const std::vector<Token>& args, std::size_t args_from, Scope& scope, int depth) {
    for (i64 r = 0; r < n; ++r) call_block(ln, label + "." + std::to_string(r), b, args, args_from, scope, depth);
  }

  void call_block(const Line& ln, const std::string& label, const BlockDef& b, const std::vector<Token>& args,
                  std::size_t args_from, Scope& scope, int depth) {
    if (depth + 1 > kMaxBlockNesting)
      error(ln, 0, "", "blocks nest deeper than " + std::to_string(kMaxBlockNesting) + " (does a block call itself?)",
            "remove the recursion");
    Scope inner;
    inner.prefix = scope.prefix + label + ".";
    inner.parent = &scope;
    inner.block_input = current_input(scope);
    inner.depth = depth + 1;
    // bind parameters
    std::size_t n_pos = 0;
    for (std::size_t t = args_from; t < args.size(); ++t) {
      std::string a = substitute(args[t].text, scope, ln, t);
      auto eq = a.find('=');
      if (eq != std::string::npos) {
        std::string key = a.substr(0, eq);
        if (std::find(b.params.begin(), b.params.end(), key) == b.params.end())
          error(ln, t, "", "block '" + b.name + "' has no parameter '" + key + "'", "its parameters are listed on its 'block' line");
        inner.subst[key] = a.substr(eq + 1);
      } else {
        if (n_pos >= b.params.size())
          error(ln, t, "", "too many arguments for block '" + b.name + "'", "it takes " + std::to_string(b.params.size()));
        inner.subst[b.params[n_pos++]] = a;
      }
    }
    for (const auto& p : b.params)
      if (!inner.subst.count(p)) {
        auto d = b.defaults.find(p);
        if (d == b.defaults.end())
          error(ln, 0, "", "block '" + b.name + "' needs a value for '" + p + "'", "pass it, e.g. " + p + "=...");
        inner.subst[p] = d->second;
      }
    emit_lines(b.body, 0, b.body.size(), inner, depth + 1);
    if (inner.last.empty()) error(ln, 0, "", "block '" + b.name + "' produced no layer", "put layers in it");
    scope.last = inner.last;
  }

  // conv1, conv2, ...: the word as typed plus a per-scope counter, skipping names already taken.
  std::string auto_name(Scope& scope, const std::string& word) const {
    while (true) {
      std::string n = word + std::to_string(++scope.counters[word]);
      if (!index_.count(scope.prefix + n)) return n;
    }
  }

  std::string current_input(const Scope& scope) const {
    if (!scope.last.empty()) return scope.last;
    if (!scope.block_input.empty()) return scope.block_input;
    return previous_;
  }

  std::string resolve(const std::string& ref, const Scope& scope, const Line& ln, std::size_t tok,
                      const std::string& layer) const {
    if (ref == "in") {
      if (scope.block_input.empty()) error(ln, tok, layer, "'in' is only defined inside a block", "name the layer instead");
      return scope.block_input;
    }
    for (const Scope* s = &scope; s; s = s->parent) {
      auto it = index_.find(s->prefix + ref);
      if (it != index_.end()) return s->prefix + ref;
    }
    if (index_.count(ref)) return ref;
    error(ln, tok, layer, "no earlier layer is named '" + ref + "'",
          "check the spelling; a layer can only take inputs defined above it");
  }

  void emit_statement(const Line& ln, Scope& scope, int depth) {
    std::size_t t = 0;
    std::string label;
    if (ln.tokens[0].text.back() == ':') {
      label = ln.tokens[0].text.substr(0, ln.tokens[0].text.size() - 1);
      label = substitute(label, scope, ln, 0);
      if (label.empty()) error(ln, 0, "", "empty layer name", "write e.g. conv1: conv 32 3x3");
      t = 1;
      if (ln.tokens.size() == 1) error(ln, 0, label, "a name with no layer after it", "write e.g. conv1: conv 32 3x3");
    }
    std::string word = substitute(ln.tokens[t].text, scope, ln, t);
    if (word == "repeat") {
      if (ln.tokens.size() < t + 3)
        error(ln, t, label, "'repeat N' needs a block name on the same line, or its layers on the lines below up to 'end'",
              "write: repeat 3 my_block, or repeat 3 / ... / end");
      i64 n = read_count(ln, t + 1, scope);
      std::string bname = ln.tokens[t + 2].text;
      auto it = blocks_.find(bname);
      if (it == blocks_.end()) error(ln, t + 2, label, "unknown block '" + bname + "'", "define it with 'block " + bname + " ...' / 'end' above");
      if (label.empty()) label = "repeat" + std::to_string(++n_repeat_);
      run_repeat(ln, label, n, it->second, ln.tokens, t + 3, scope, depth);
      return;
    }
    auto bit = blocks_.find(word);
    if (bit != blocks_.end()) {
      if (label.empty()) label = word + std::to_string(++scope.counters[word]);
      call_block(ln, label, bit->second, ln.tokens, t + 1, scope, depth);
      return;
    }
    const OpRule* rule = find_op(word);
    if (!rule) {
      std::string kinds = known_kinds();
      error(ln, t, scope.prefix + (label.empty() ? word + std::to_string(scope.counters[word] + 1) : label),
            "unknown layer kind '" + word + "'", "use one of: " + kinds + " (or a block defined above)");
    }
    Layer layer;
    layer.kind = rule->kind;
    std::string local = !label.empty()                           ? label
                        : rule->kind == std::string_view("input") ? std::string("input")
                                                                   : auto_name(scope, word);
    layer.name = scope.prefix + local;
    layer.pos = {file_, ln.number, ln.tokens[0].column};
    if (index_.count(layer.name))
      error(ln, 0, layer.name, "a layer with this name already exists", "give each layer a unique name");
    if (static_cast<i64>(out_.size()) >= kMaxLayers)
      error(ln, 0, layer.name, "the model has more than " + std::to_string(kMaxLayers) + " layers after expansion",
            "memfit refuses models this large; use fewer repeats");

    std::vector<std::pair<std::string, std::pair<std::string, std::size_t>>> given;  // key -> (text, token)
    std::vector<std::pair<std::string, std::size_t>> positional;
    std::vector<std::pair<std::string, std::size_t>> from;
    for (std::size_t k = t + 1; k < ln.tokens.size(); ++k) {
      std::string a = substitute(ln.tokens[k].text, scope, ln, k);
      auto eq = a.find('=');
      if (eq == std::string::npos) {
        positional.push_back({a, k});
        continue;
      }
      std::string key = a.substr(0, eq), val = a.substr(eq + 1);
      if (key == "from") {
        std::size_t s = 0;
        while (s <= val.size()) {
          auto c = val.find(',', s);
          std::string part = val.substr(s, c == std::string::npos ? std::string::npos : c - s);
          if (part.empty()) error(ln, k, layer.name, "empty name in from=", "write from=a,b");
          from.push_back({part, k});
          if (c == std::string::npos) break;
          s = c + 1;
        }
        continue;
      }
      auto al = key_aliases().find(key);
      if (al != key_aliases().end()) key = al->second;
      given.push_back({key, {val, k}});
    }

    if (rule->kind == std::string("input")) {
      if (!out_.empty()) error(ln, t, layer.name, "memfit models have one input, and it must come first", "remove this line");
      Value v;
      v.type = Value::Type::text;
      v.text = parse_input_shape(ln, layer.name, positional, given);
      v.pos = layer.pos;
      layer.attrs["shape"] = v;
    } else {
      if (out_.empty())
        error(ln, t, layer.name, "the first layer must be the input",
              "start with e.g. 'input 50x50x3 layout=hwc' (height x width x channels)");
      // positional arguments; a bare word naming a boolean attribute sets it (relu inplace)
      std::size_t next_pos = 0;
      for (auto& [text, k] : positional) {
        bool is_flag = false;
        for (const auto& spec : rule->attrs)
          if (spec.type == Value::Type::boolean && text == spec.key) is_flag = true;
        if (is_flag) {
          given.push_back({text, {"true", k}});
          continue;
        }
        if (next_pos >= rule->positional.size())
          error(ln, k, layer.name, "unexpected argument '" + text + "' for " + rule->kind,
                rule->positional.empty() ? std::string("this layer takes only key=value options")
                                         : "write options as key=value");
        given.push_back({rule->positional[next_pos++], {text, k}});
      }
      for (auto& [key, vt] : given) {
        const AttrSpec* spec = nullptr;
        for (const auto& s : rule->attrs)
          if (key == s.key) spec = &s;
        if (!spec) {
          std::string keys;
          for (const auto& s : rule->attrs) keys += (keys.empty() ? "" : ", ") + std::string(s.key);
          error(ln, vt.second, layer.name, std::string(rule->kind) + " has no option '" + key + "'",
                keys.empty() ? "it takes no options" : "its options are: " + keys);
        }
        if (layer.attrs.count(key)) error(ln, vt.second, layer.name, "option '" + key + "' given twice", "keep one");
        SourcePos p{file_, ln.number, ln.tokens[vt.second].column};
        layer.attrs[key] = parse_attr_text(*spec, vt.first, p, layer.name);
      }
      fill_defaults(*rule, layer);
      // inputs
      if (from.empty()) {
        layer.inputs.push_back(current_input(scope));
      } else {
        for (auto& [ref, k] : from) layer.inputs.push_back(resolve(ref, scope, ln, k, layer.name));
      }
      int n_in = static_cast<int>(layer.inputs.size());
      if (n_in < rule->min_inputs || (rule->max_inputs >= 0 && n_in > rule->max_inputs))
        error(ln, t, layer.name,
              std::string(rule->kind) + " takes " +
                  (rule->max_inputs < 0 ? "at least " + std::to_string(rule->min_inputs)
                                        : std::to_string(rule->min_inputs)) +
                  " input(s) but has " + std::to_string(n_in),
              rule->min_inputs >= 2 ? "name its inputs: from=a,b" : "give at most one from= name");
    }
    index_[layer.name] = out_.size();
    scope.last = layer.name;
    previous_ = layer.name;
    out_.push_back(std::move(layer));
  }

  // input H x W x C needs layout=hwc (or chw); c= h= w= keys; or one number (features).
  std::string parse_input_shape(const Line& ln, const std::string& name,
                                const std::vector<std::pair<std::string, std::size_t>>& positional,
                                const std::vector<std::pair<std::string, std::pair<std::string, std::size_t>>>& given) {
    const char* fix = "write 'input 50x50x3 layout=hwc' (height x width x channels), 'input 3x50x50 layout=chw', "
                      "'input c=3 h=50 w=50' or 'input 784' for flat features";
    std::map<std::string, std::pair<std::string, std::size_t>> kv(given.begin(), given.end());
    auto num = [&](const std::string& s, std::size_t tok) {
      i64 v = 0;
      auto r = std::from_chars(s.data(), s.data() + s.size(), v);
      if (r.ec != std::errc() || r.ptr != s.data() + s.size() || v <= 0)
        error(ln, tok, name, "'" + s + "' is not a positive whole number", fix);
      return v;
    };
    std::vector<i64> dims;
    std::string layout;
    if (kv.count("layout")) layout = kv["layout"].first;
    if (!positional.empty()) {
      if (positional.size() > 1) error(ln, positional[1].second, name, "unexpected '" + positional[1].first + "'", fix);
      const auto& [s, tok] = positional[0];
      std::size_t st = 0;
      while (true) {
        auto x = s.find('x', st);
        dims.push_back(num(s.substr(st, x == std::string::npos ? std::string::npos : x - st), tok));
        if (x == std::string::npos) break;
        st = x + 1;
      }
      for (auto& [k, v] : kv)
        if (k != "layout") error(ln, v.second, name, "unexpected option '" + k + "'", fix);
    } else if (kv.count("c") || kv.count("h") || kv.count("w")) {
      for (const char* k : {"c", "h", "w"})
        if (!kv.count(k)) error(ln, 0, name, std::string("missing ") + k + "=", fix);
      dims = {num(kv["c"].first, kv["c"].second), num(kv["h"].first, kv["h"].second), num(kv["w"].first, kv["w"].second)};
      layout = "chw";
    } else {
      error(ln, 0, name, "input needs a shape", fix);
    }
    std::size_t tok0 = positional.empty() ? 0 : positional[0].second;
    std::vector<i64> chw;
    if (dims.size() == 1) {
      chw = dims;
    } else if (dims.size() == 3) {
      if (layout.empty())
        error(ln, tok0, name, "a 3-number shape is ambiguous (is 50x50x3 height x width x channels?)",
              "add layout=hwc (height x width x channels) or layout=chw (PyTorch order)");
      std::transform(layout.begin(), layout.end(), layout.begin(), [](char c) { return static_cast<char>(std::tolower(c)); });
      if (layout.size() != 3 || std::set<char>(layout.begin(), layout.end()) != std::set<char>{'c', 'h', 'w'})
        error(ln, tok0, name, "layout '" + layout + "' must be an order of the letters c, h, w", "use layout=hwc or layout=chw");
      i64 c = dims[layout.find('c')], h = dims[layout.find('h')], w = dims[layout.find('w')];
      chw = {c, h, w};
    } else {
      error(ln, tok0, name, "input shapes have 1 (features) or 3 (image) numbers", fix);
    }
    std::string text;
    for (std::size_t i = 0; i < chw.size(); ++i) text += (i ? "x" : "") + std::to_string(chw[i]);
    return text;
  }
};

}  // namespace

Model parse_model_text(std::string_view source, std::string_view file) {
  if (source.size() > kMaxSourceBytes)
    throw Error({std::string(file), 0, 0}, "", "the model file is larger than 16 MiB", "use blocks and repeat");
  return TextParser(source, file).parse();
}

Model parse_model(std::string_view source, std::string_view file) {
  for (char c : source) {
    if (std::isspace(static_cast<unsigned char>(c))) continue;
    if (c == '{') return parse_model_json(source, file);
    break;
  }
  return parse_model_text(source, file);
}

}  // namespace memfit
