// The text model format (docs/model-format.md): one layer per line, close to how people list a
// network. Blocks with parameters and repeats are expanded here, so everything after the parser sees
// a flat list of layers with unique names and explicit inputs.
#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <map>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "memfit/model.hpp"
#include "memfit/ops.hpp"
#include "memfit/hf_config.hpp"
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
    emit_lines(top, root, 0);
    m.layers = std::move(out_);
    if (m.name.empty()) {
      std::string stem = file_;
      auto slash = stem.find_last_of("/\\");
      if (slash != std::string::npos) stem = stem.substr(slash + 1);
      auto dot = stem.find('.');
      m.name = utf8_or_question_marks(dot == std::string::npos ? stem : stem.substr(0, dot));
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
    const std::map<std::string, std::string>* subst = nullptr;  // $param -> text (the call's, not copied)
    int depth = 0;
  };

  std::string file_;
  std::vector<Line> lines_;
  std::map<std::string, BlockDef> blocks_;
  std::vector<Layer> out_;
  std::map<std::string, std::size_t> index_;  // full name -> position in out_
  std::map<std::string, std::string> outputs_;  // full label of a block call or repeat -> its output layer
  std::string previous_;                      // last layer emitted anywhere
  int n_repeat_ = 0;
  std::size_t n_words_ = 0;                   // tokens stored, against kMaxWords
  std::size_t expanded_ = 0;                  // bytes charged against kMaxExpandedBytes
  std::vector<std::pair<std::string, int>> calls_;  // block calls being expanded: (block, line of the call)

  // Where an expansion limit was hit, named from the outermost call, which is what the user wrote
  // at the top level (the inner lines belong to block definitions and repeat for every call).
  std::string call_context() const {
    if (calls_.empty()) return "";
    return " (expanding '" + calls_.front().first + "' called at line " + std::to_string(calls_.front().second) + ")";
  }

  // Every byte the expansion reads or stores is charged here before the work is done, so a model
  // that multiplies text through blocks and repeats is refused at the line that crosses the limit.
  void charge(std::size_t bytes, const Line& ln, std::size_t tok) {
    if (bytes > kMaxExpandedBytes - expanded_)
      error(ln, tok, "",
            "the model expands to more than " + std::to_string(kMaxExpandedBytes >> 20) +
                " MiB of names, options and from= lists" + call_context(),
            "use fewer or shorter repeats and block parameters");
    expanded_ += bytes;
  }

  bool taken(const std::string& full) const { return index_.count(full) || outputs_.count(full); }

  static std::string hex_byte(unsigned char c) {
    const char* d = "0123456789ABCDEF";
    return {d[c >> 4], d[c & 15]};
  }

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
        std::string_view tok = raw.substr(start, i - start);
        // Tokens become names and values that are printed as JSON, which must be UTF-8 (comments may be anything).
        if (auto bad = invalid_utf8_at(tok); bad != std::string_view::npos)
          throw Error({file_, number, static_cast<int>(start + bad) + 1}, "",
                      "the file is not UTF-8 here (byte 0x" + hex_byte(static_cast<unsigned char>(tok[bad])) + ")",
                      "save the model as UTF-8");
        if (++n_words_ > kMaxWords)
          throw Error({file_, number, static_cast<int>(start) + 1}, "",
                      "the file has more than " + std::to_string(kMaxWords) + " words",
                      "memfit refuses models this large; use blocks and repeat");
        ln.tokens.push_back({std::string(tok), static_cast<int>(start) + 1});
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
    // a call is a line starting with the block's name: these words already start other lines
    for (const char* w : {"repeat", "end", "block", "model"})
      if (b.name == w) error(head, 1, "", "'" + b.name + "' cannot be a block name (it is a keyword)", "choose another name");
    if (blocks_.count(b.name)) error(head, 1, "", "block '" + b.name + "' is defined twice", "rename one of them");
    for (std::size_t t = 2; t < head.tokens.size(); ++t) {
      std::string p = head.tokens[t].text;
      auto eq = p.find('=');
      if (eq != std::string::npos) {
        b.defaults[p.substr(0, eq)] = p.substr(eq + 1);
        p = p.substr(0, eq);
      }
      // $name ends at the first other character, so a parameter spelt otherwise could never be used
      if (p.empty() || p.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != std::string::npos)
        error(head, t, "", "block parameter '" + p + "' is not a name (letters, digits, _)", "rename it, e.g. out");
      // from= on a call names the block's input (b2: myblock 64 from=stem), so it cannot be a parameter
      if (p == "from") error(head, t, "", "'from' cannot be a block parameter: from= on a call names the block's input", "rename it");
      if (std::find(b.params.begin(), b.params.end(), p) != b.params.end())
        error(head, t, "", "block parameter '" + p + "' is declared twice", "remove one");
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

  // A `repeat N [from=x]` line without a block name opens an inline body closed by `end`.
  static bool is_repeat_open(const Line& ln) {
    std::size_t k = (ln.tokens[0].text.back() == ':') ? 1 : 0;
    if (ln.tokens.size() <= k + 1 || ln.tokens[k].text != "repeat") return false;
    return ln.tokens.size() == k + 2 || (ln.tokens.size() == k + 3 && ln.tokens[k + 2].text.rfind("from=", 0) == 0);
  }

  // The parameter named at text[i] == '$' ($name, or ${name} to end it inside a word: ${k}x${k}),
  // looked up in the calling scopes from the innermost; `next` is set past the reference.
  const std::string& lookup_param(const std::string& text, std::size_t i, std::size_t& next, const Scope& s,
                                  const Line& ln, std::size_t tok) const {
    std::string name;
    if (i + 1 < text.size() && text[i + 1] == '{') {
      auto close = text.find('}', i + 2);
      if (close == std::string::npos) error(ln, tok, "", "'${' without a closing '}'", "write ${name}, e.g. ${k}x${k}");
      name = text.substr(i + 2, close - i - 2);
      next = close + 1;
    } else {
      std::size_t j = i + 1;
      while (j < text.size() && (std::isalnum(static_cast<unsigned char>(text[j])) || text[j] == '_')) ++j;
      name = text.substr(i + 1, j - i - 1);
      next = j;
    }
    if (name.empty())
      error(ln, tok, "", "'$' must be followed by a block parameter's name", "write $name, or ${name} inside a word (${k}x${k})");
    for (const Scope* sc = &s; sc; sc = sc->parent) {
      if (!sc->subst) continue;
      auto it = sc->subst->find(name);
      if (it != sc->subst->end()) return it->second;
    }
    error(ln, tok, "", "unknown block parameter '$" + name + "'", "declare it on the block line");
  }

  // Replaces $param and ${param} textually. The result's length is computed first, so a word that
  // would exceed kMaxTokenBytes is refused before it is built; every word read is charged.
  std::string substitute(const std::string& text, const Scope& s, const Line& ln, std::size_t tok) {
    std::size_t n = 0;
    bool any = false;
    for (std::size_t i = 0; i < text.size();) {
      if (text[i] != '$') {
        ++n;
        ++i;
        continue;
      }
      any = true;
      std::size_t next = i;
      n += lookup_param(text, i, next, s, ln, tok).size();
      i = next;
    }
    if (n > kMaxTokenBytes)
      error(ln, tok, "",
            (any ? "after substituting block parameters this word is " : "this word is ") + std::to_string(n) +
                " bytes, over memfit's limit of " + std::to_string(kMaxTokenBytes) + call_context(),
            any ? "parameters are copied as text: a block passing '$p$p' to the next doubles it at every level"
                : "shorten it");
    charge(n + 1, ln, tok);
    if (!any) return text;
    std::string out;
    out.reserve(n);
    for (std::size_t i = 0; i < text.size();) {
      if (text[i] != '$') {
        out += text[i++];
        continue;
      }
      std::size_t next = i;
      out += lookup_param(text, i, next, s, ln, tok);
      i = next;
    }
    return out;
  }

  // What a block call or a repeat expands: a defined block with its arguments bound, or the inline
  // body of a repeat (no parameters of its own).
  struct Call {
    std::string name;                          // the block's name, "repeat" for an inline body
    std::span<const Line> body;
    std::map<std::string, std::string> subst;  // parameter -> text, substituted in the caller's scope
    std::string from;                          // full name of the from= input; empty: the previous layer
  };

  void emit_lines(std::span<const Line> body, Scope& scope, int depth) {
    for (std::size_t i = 0; i < body.size();) {
      const Line& ln = body[i];
      if (ln.tokens[0].text == "end") error(ln, 0, "", "'end' without a block or repeat", "remove it");
      if (is_repeat_open(ln)) {
        // inline repeat: find matching end
        int d = 1;
        std::size_t j = i + 1;
        for (; j < body.size(); ++j) {
          if (is_repeat_open(body[j])) ++d;
          if (body[j].tokens[0].text == "end" && --d == 0) break;
        }
        if (j >= body.size()) error(ln, 0, "", "'repeat' has no 'end'", "add a line 'end' after the repeated layers");
        if (j == i + 1) error(ln, 0, "", "'repeat' is empty", "put layers between 'repeat' and 'end'");
        std::size_t k = ln.tokens[0].text.back() == ':' ? 1 : 0;
        std::string label = k ? substitute(ln.tokens[0].text.substr(0, ln.tokens[0].text.size() - 1), scope, ln, 0)
                              : "repeat" + std::to_string(++n_repeat_);
        if (label.empty()) error(ln, 0, "", "empty repeat name", "write e.g. features: repeat 3");
        i64 n = read_count(ln, k + 1, scope);
        Call c;
        c.name = "repeat";
        c.body = body.subspan(i + 1, j - i - 1);
        if (ln.tokens.size() == k + 3) c.from = call_input(ln, k + 2, scope, label);
        run_repeat(ln, label, n, c, scope, depth);
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

  // from=NAME on a block call or repeat: the one layer (or block call) that feeds it, in the caller's scope.
  std::string call_input(const Line& ln, std::size_t tok, const Scope& scope, const std::string& label) {
    std::string a = substitute(ln.tokens[tok].text, scope, ln, tok);
    std::string ref = a.substr(a.find('=') + 1);
    if (ref.empty()) error(ln, tok, scope.prefix + label, "empty name in from=", "write from=NAME");
    if (ref.find(',') != std::string::npos)
      error(ln, tok, scope.prefix + label, "a block call takes one input, from=" + ref + " names several",
            "give one name; inside the block, 'in' is that input");
    return resolve(ref, scope, ln, tok, scope.prefix + label);
  }

  // Binds a block call's arguments (positional in the order of the block line, or param=value) and its from=.
  Call bind_call(const Line& ln, const BlockDef& b, std::size_t args_from, Scope& scope, const std::string& label) {
    Call c;
    c.name = b.name;
    c.body = b.body;
    std::size_t n_pos = 0;
    for (std::size_t t = args_from; t < ln.tokens.size(); ++t) {
      if (ln.tokens[t].text.rfind("from=", 0) == 0) {
        if (!c.from.empty()) error(ln, t, scope.prefix + label, "from= given twice", "keep one");
        c.from = call_input(ln, t, scope, label);
        continue;
      }
      std::string a = substitute(ln.tokens[t].text, scope, ln, t);
      auto eq = a.find('=');
      std::string key;
      if (eq != std::string::npos) {
        key = a.substr(0, eq);
        if (std::find(b.params.begin(), b.params.end(), key) == b.params.end())
          error(ln, t, "", "block '" + b.name + "' has no parameter '" + key + "'", "its parameters are listed on its 'block' line");
        a = a.substr(eq + 1);
      } else {
        while (n_pos < b.params.size() && c.subst.count(b.params[n_pos])) ++n_pos;
        if (n_pos >= b.params.size())
          error(ln, t, "", "too many arguments for block '" + b.name + "'", "it takes " + std::to_string(b.params.size()));
        key = b.params[n_pos++];
      }
      if (c.subst.count(key)) error(ln, t, "", "block parameter '" + key + "' given twice", "keep one");
      c.subst[key] = std::move(a);
    }
    for (const auto& p : b.params)
      if (!c.subst.count(p)) {
        auto d = b.defaults.find(p);
        if (d == b.defaults.end())
          error(ln, 0, "", "block '" + b.name + "' needs a value for '" + p + "'", "pass it, e.g. " + p + "=...");
        c.subst[p] = d->second;
      }
    return c;
  }

  // A label names the call's output, so it must not clash with a layer or another call.
  void claim_label(const Line& ln, const std::string& full) {
    if (taken(full))
      error(ln, 0, full, "a layer or block call with this name already exists", "give each a unique name");
    if (full.size() + 1 > kMaxNameBytes)
      error(ln, 0, "", "a name longer than " + std::to_string(kMaxNameBytes) + " bytes" + call_context(),
            "use shorter labels (each block call adds its label to the names inside)");
  }

  // `label: repeat N ...`: the repetitions are label.0, label.1, ...; the first takes from= (or the
  // previous layer), each later one the output of the one before. `label` names the last output.
  void run_repeat(const Line& ln, const std::string& label, i64 n, const Call& c, Scope& scope, int depth) {
    claim_label(ln, scope.prefix + label);
    for (i64 r = 0; r < n; ++r) expand(ln, label + "." + std::to_string(r), c, r == 0 ? c.from : "", scope, depth);
    charge(scope.prefix.size() + label.size() + scope.last.size(), ln, 0);
    outputs_[scope.prefix + label] = scope.last;
  }

  void expand(const Line& ln, const std::string& label, const Call& c, const std::string& from, Scope& scope, int depth) {
    if (depth + 1 > kMaxBlockNesting)
      error(ln, 0, "", "blocks nest deeper than " + std::to_string(kMaxBlockNesting) + " (does a block call itself?)",
            "remove the recursion");
    std::string full = scope.prefix + label;
    claim_label(ln, full);
    charge(2 * full.size() + 1, ln, 0);
    Scope inner;
    inner.prefix = full + ".";
    inner.parent = &scope;
    inner.block_input = from.empty() ? current_input(scope) : from;
    inner.subst = &c.subst;  // empty for an inline repeat: its words see the caller's parameters
    inner.depth = depth + 1;
    calls_.push_back({c.name, ln.number});
    emit_lines(c.body, inner, depth + 1);
    calls_.pop_back();
    if (inner.last.empty()) error(ln, 0, "", "block '" + c.name + "' produced no layer", "put layers in it");
    scope.last = inner.last;
    charge(inner.last.size(), ln, 0);
    outputs_[full] = inner.last;
  }

  // conv1, conv2, ...: the word as typed plus a per-scope counter, skipping names already taken.
  std::string auto_name(Scope& scope, const std::string& word) const {
    while (true) {
      std::string n = word + std::to_string(++scope.counters[word]);
      if (!taken(scope.prefix + n)) return n;
    }
  }

  std::string current_input(const Scope& scope) const {
    if (!scope.last.empty()) return scope.last;
    if (!scope.block_input.empty()) return scope.block_input;
    return previous_;
  }

  // A from= name: `in` (the block's input), a layer or block call of this scope, then of the enclosing
  // scopes, then a full name (the root scope's prefix is empty). A block call stands for its output.
  std::string resolve(const std::string& ref, const Scope& scope, const Line& ln, std::size_t tok,
                      const std::string& layer) {
    if (ref == "in") {
      if (scope.block_input.empty()) error(ln, tok, layer, "'in' is only defined inside a block", "name the layer instead");
      return scope.block_input;
    }
    for (const Scope* s = &scope; s; s = s->parent) {
      std::string full = s->prefix + ref;
      charge(full.size(), ln, tok);
      if (index_.count(full)) return full;
      auto it = outputs_.find(full);
      if (it != outputs_.end()) return it->second;
    }
    // `layer:K`: output K of an op with several outputs (chunk); the graph checks K
    auto colon = ref.rfind(':');
    if (colon != std::string::npos && colon > 0 && colon + 1 < ref.size() &&
        ref.find_first_not_of("0123456789", colon + 1) == std::string::npos)
      return resolve(ref.substr(0, colon), scope, ln, tok, layer) + ref.substr(colon);
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
      std::string bname = substitute(ln.tokens[t + 2].text, scope, ln, t + 2);
      auto it = blocks_.find(bname);
      if (it == blocks_.end()) error(ln, t + 2, label, "unknown block '" + bname + "'", "define it with 'block " + bname + " ...' / 'end' above");
      if (label.empty()) label = "repeat" + std::to_string(++n_repeat_);
      Call c = bind_call(ln, it->second, t + 3, scope, label);
      run_repeat(ln, label, n, c, scope, depth);
      return;
    }
    auto bit = blocks_.find(word);
    if (bit != blocks_.end()) {
      if (label.empty()) {
        do label = word + std::to_string(++scope.counters[word]);
        while (taken(scope.prefix + label));
      }
      Call c = bind_call(ln, bit->second, t + 1, scope, label);
      expand(ln, label, c, c.from, scope, depth);
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
    if (taken(layer.name))
      error(ln, 0, layer.name, "a layer or block call with this name already exists", "give each layer a unique name");
    if (layer.name.size() > kMaxNameBytes)
      error(ln, 0, "", "a layer name longer than " + std::to_string(kMaxNameBytes) + " bytes" + call_context(),
            "use shorter names and labels (each block call adds its label to the names inside)");
    if (static_cast<i64>(out_.size()) >= kMaxLayers)
      error(ln, 0, layer.name, "the model has more than " + std::to_string(kMaxLayers) + " layers after expansion" + call_context(),
            "memfit refuses models this large; use fewer repeats");
    charge(2 * layer.name.size(), ln, 0);  // the layer and its index entry

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
      if (!from.empty())
        error(ln, from[0].second, layer.name, "the input takes no from= (it is the batch the loop feeds in)", "remove from=");
      // dtype= (token ids: dtype=int64) is read here; the shape options are parse_input_shape's
      for (auto it = given.begin(); it != given.end();) {
        if (it->first != "dtype") {
          ++it;
          continue;
        }
        if (layer.attrs.count("dtype")) error(ln, it->second.second, layer.name, "option 'dtype' given twice", "keep one");
        if (it->second.first != "int64" && it->second.first != "float32")
          error(ln, it->second.second, layer.name, "input dtype '" + it->second.first + "' is not float32 or int64",
                "write dtype=int64 for token ids (input 128 dtype=int64), or leave it out for float32 data");
        Value d;
        d.type = Value::Type::text;
        d.text = it->second.first;
        d.pos = {file_, ln.number, ln.tokens[it->second.second].column};
        layer.attrs["dtype"] = d;
        it = given.erase(it);
      }
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
        const AttrSpec* spec = find_attr(*rule, key);
        if (!spec) {
          const std::string keys = attr_keys(*rule);
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
        if (rule->max_inputs != 0) layer.inputs.push_back(current_input(scope));  // a parameter reads no layer
      } else {
        for (auto& [ref, k] : from) layer.inputs.push_back(resolve(ref, scope, ln, k, layer.name));
      }
      for (const auto& in : layer.inputs) charge(in.size() + 1, ln, 0);
      int n_in = static_cast<int>(layer.inputs.size());
      if (n_in < rule->min_inputs || (rule->max_inputs >= 0 && n_in > rule->max_inputs))
        error(ln, t, layer.name,
              std::string(rule->kind) + " takes " +
                  (rule->max_inputs < 0 ? "at least " + std::to_string(rule->min_inputs)
                                        : std::to_string(rule->min_inputs)) +
                  " input(s) but has " + std::to_string(n_in),
              rule->max_inputs == 0   ? std::string("remove from=: a ") + rule->kind + " reads no layer"
              : rule->min_inputs >= 2 ? std::string("name its inputs: from=a,b")
                                      : std::string("give at most one from= name"));
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
    std::map<std::string, std::pair<std::string, std::size_t>> kv;
    for (const auto& [k, v] : given)
      if (!kv.emplace(k, v).second) error(ln, v.second, name, "option '" + k + "' given twice", "keep one");
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
      for (auto& [k, v] : kv)
        if (k != "c" && k != "h" && k != "w")
          error(ln, v.second, name, "unexpected option '" + k + "' (c= h= w= already say which number is which)", fix);
      dims = {num(kv["c"].first, kv["c"].second), num(kv["h"].first, kv["h"].second), num(kv["w"].first, kv["w"].second)};
      layout = "chw";
    } else {
      error(ln, 0, name, "input needs a shape", fix);
    }
    std::size_t tok0 = positional.empty() ? 0 : positional[0].second;
    std::vector<i64> chw;
    if (dims.size() == 1) {
      // silently ignoring it would hide a shape typed with a missing 'x' (input 5050x3 layout=hwc)
      if (kv.count("layout"))
        error(ln, kv["layout"].second, name, "layout= is for a 3-number shape, but this input has one number (flat features)",
              "remove layout=, or write the image shape, e.g. 'input 50x50x3 layout=hwc'");
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
    } else if (dims.size() <= static_cast<std::size_t>(kMaxInputRank)) {
      // [T, D] sequences, 4-d volumes: PyTorch order, nothing to disambiguate
      if (kv.count("layout"))
        error(ln, kv["layout"].second, name, "layout= is only for a 3-number (image) shape",
              "remove layout=: other shapes are read in PyTorch order");
      chw = dims;
    } else {
      error(ln, tok0, name, "an input shape has at most " + std::to_string(kMaxInputRank) + " numbers per sample", fix);
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
  return TextParser(strip_bom(source), file).parse();
}

// JSON when the first non-blank character opens a JSON object or array (no text line starts with
// either), so `[1, 2]` is answered as a JSON model that is not an object, not as an unknown layer kind.
Model parse_model(std::string_view source, std::string_view file) { return parse_model(source, file, HfOptions{}); }

Model parse_model(std::string_view source, std::string_view file, const HfOptions& hf) {
  std::string_view s = strip_bom(source);
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) continue;
    if (c == '{' || c == '[') return parse_model_json_with(source, file, hf);
    break;
  }
  Model m = parse_model_text(source, file);
  refuse_hf_options(hf, m);
  return m;
}

}  // namespace memfit
