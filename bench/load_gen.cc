// load_gen: N concurrent clients streaming completions from an OpenAI-compatible server
// (`qilin serve`, llama.cpp's `llama-server`), back to back, for a count or a duration.
// Prompts (~P tokens of common English words) come from a fixed seed; every request asks for
// exactly M output tokens (ignore_eos, greedy). Reports requests/s, aggregate output tokens/s,
// time to first token and inter-token latency percentiles, as a table and as JSON.
//
//   build/load_gen --url http://127.0.0.1:8080 --clients 16 --requests 64 --json out.json
//
// Output tokens are the server's usage.completion_tokens when it sends usage (stream_options
// include_usage), else the number of content chunks. Inter-token latency is the gap between
// consecutive content chunks of one request (one token each on both servers).
#include <httplib.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  std::string url = "http://127.0.0.1:8080";
  std::string api_key;
  std::string model;
  int clients = 4;
  int requests = 0;     // total over all clients; 0: until --duration
  double duration = 0;  // seconds; 0: until --requests
  int prompt_tokens = 128;
  int max_tokens = 128;
  uint64_t seed = 42;
  bool chat = false;
  std::string json_out;
  double timeout = 600;
  std::string label;
};

struct Sample {
  bool ok = false;
  std::string error;
  double ttft_s = 0;
  double e2e_s = 0;
  int64_t output_tokens = 0;
  int64_t prompt_tokens = -1;  // from usage, when the server sent it
  std::vector<double> itl_s;
};

// ~1 token each for most BPE vocabularies (a leading space and a common word).
const char* kWords[] = {
    "the",    "of",        "and",     "to",        "in",       "is",        "was",
    "for",    "on",        "that",    "with",      "as",       "by",        "at",
    "from",   "his",       "her",     "they",      "this",     "which",     "an",
    "be",     "are",       "have",    "one",       "had",      "not",       "but",
    "what",   "all",       "were",    "when",      "we",       "there",     "can",
    "said",   "each",      "she",     "do",        "how",      "their",     "if",
    "will",   "up",        "other",   "about",     "out",      "many",      "then",
    "them",   "these",     "so",      "some",      "would",    "make",      "like",
    "him",    "into",      "time",    "has",       "look",     "two",       "more",
    "write",  "go",        "see",     "number",    "no",       "way",       "could",
    "people", "my",        "than",    "first",     "water",    "been",      "call",
    "who",    "oil",       "its",     "now",       "find",     "long",      "down",
    "day",    "did",       "get",     "come",      "made",     "may",       "part",
    "over",   "new",       "sound",   "take",      "only",     "little",    "work",
    "know",   "place",     "year",    "live",      "me",       "back",      "give",
    "most",   "very",      "after",   "thing",     "our",      "just",      "name",
    "good",   "sentence",  "man",     "think",     "say",      "great",     "where",
    "help",   "through",   "much",    "before",    "line",     "right",     "too",
    "mean",   "old",       "any",     "same",      "tell",     "boy",       "follow",
    "came",   "want",      "show",    "also",      "around",   "form",      "three",
    "small",  "set",       "put",     "end",       "does",     "another",   "well",
    "large",  "must",      "big",     "even",      "such",     "because",   "turn",
    "here",   "why",       "ask",     "went",      "men",      "read",      "need",
    "land",   "different", "home",    "us",        "move",     "try",       "kind",
    "hand",   "picture",   "again",   "change",    "off",      "play",      "spell",
    "air",    "away",      "animal",  "house",     "point",    "page",      "letter",
    "mother", "answer",    "found",   "study",     "still",    "learn",     "should",
    "world",  "high",      "every",   "near",      "add",      "food",      "between",
    "own",    "below",     "country", "plant",     "last",     "school",    "father",
    "keep",   "tree",      "never",   "start",     "city",     "earth",     "eye",
    "light",  "thought",   "head",    "under",     "story",    "saw",       "left",
    "few",    "while",     "along",   "might",     "close",    "something", "seem",
    "next",   "hard",      "open",    "example",   "begin",    "life",      "always",
    "those",  "both",      "paper",   "together",  "got",      "group",     "often",
    "run",    "important", "until",   "children",  "side",     "feet",      "car",
    "mile",   "night",     "walk",    "white",     "sea",      "began",     "grow",
    "took",   "river",     "four",    "carry",     "state",    "once",      "book",
    "hear",   "stop",      "without", "second",    "later",    "miss",      "idea",
    "enough", "eat",       "face",    "watch",     "far",      "really",    "almost",
    "let",    "above",     "girl",    "sometimes", "mountain", "cut",       "young",
    "talk",   "soon",      "list",    "song",      "being",    "leave",     "family"};

std::string make_prompt(std::mt19937_64& rng, int n_words) {
  constexpr size_t n = sizeof(kWords) / sizeof(kWords[0]);
  std::uniform_int_distribution<size_t> pick(0, n - 1);
  std::string s = "Continue the story:";
  for (int i = 0; i < n_words; ++i) {
    s += ' ';
    s += kWords[pick(rng)];
  }
  return s;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  // Nearest rank.
  const size_t k = static_cast<size_t>(std::ceil(p / 100.0 * v.size()));
  return v[std::min(v.size() - 1, k == 0 ? 0 : k - 1)];
}

json stats_ms(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) sum += x;
  return {{"p50", 1000 * percentile(v, 50)},
          {"p90", 1000 * percentile(v, 90)},
          {"p99", 1000 * percentile(v, 99)},
          {"mean", v.empty() ? 0.0 : 1000 * sum / v.size()},
          {"n", v.size()}};
}

struct Target {
  std::string scheme_host_port;
  std::string prefix;  // path prefix before /v1 (usually empty)
};

bool parse_url(const std::string& url, Target* t) {
  const std::string http = "http://";
  if (url.rfind(http, 0) != 0) return false;
  const size_t slash = url.find('/', http.size());
  t->scheme_host_port = slash == std::string::npos ? url : url.substr(0, slash);
  t->prefix = slash == std::string::npos ? "" : url.substr(slash);
  while (!t->prefix.empty() && t->prefix.back() == '/') t->prefix.pop_back();
  if (t->prefix.size() >= 3 && t->prefix.substr(t->prefix.size() - 3) == "/v1") {
    t->prefix.resize(t->prefix.size() - 3);
  }
  return true;
}

// One streamed request; the SSE parser is incremental over the received bytes.
Sample run_one(httplib::Client& cli, const Options& o, const Target& t, const std::string& prompt) {
  Sample s;
  json body = {{"max_tokens", o.max_tokens},
               {"temperature", 0},
               {"stream", true},
               {"ignore_eos", true},
               {"stream_options", {{"include_usage", true}}}};
  if (!o.model.empty()) body["model"] = o.model;
  std::string path = t.prefix;
  if (o.chat) {
    body["messages"] = json::array({{{"role", "user"}, {"content", prompt}}});
    path += "/v1/chat/completions";
  } else {
    body["prompt"] = prompt;
    path += "/v1/completions";
  }
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.set_header("Accept", "text/event-stream");
  if (!o.api_key.empty()) req.set_header("Authorization", "Bearer " + o.api_key);

  const auto t0 = Clock::now();
  Clock::time_point last{};
  int64_t chunks = 0;
  int64_t usage_tokens = -1;
  bool done = false;
  std::string buf, err_body;
  int status = 0;
  req.response_handler = [&](const httplib::Response& r) {
    status = r.status;
    return true;
  };
  auto on_event = [&](const std::string& data) {
    if (data == "[DONE]") {
      done = true;
      return;
    }
    json j = json::parse(data, nullptr, false);
    if (j.is_discarded()) return;
    if (j.contains("error")) {
      s.error = j["error"].dump();
      return;
    }
    if (j.contains("usage") && j["usage"].is_object()) {
      const json& u = j["usage"];
      if (u.contains("completion_tokens")) usage_tokens = u["completion_tokens"].get<int64_t>();
      if (u.contains("prompt_tokens")) s.prompt_tokens = u["prompt_tokens"].get<int64_t>();
    }
    if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].empty()) return;
    const json& c = j["choices"][0];
    std::string text;
    if (o.chat) {
      if (c.contains("delta") && c["delta"].contains("content") &&
          c["delta"]["content"].is_string())
        text = c["delta"]["content"].get<std::string>();
    } else if (c.contains("text") && c["text"].is_string()) {
      text = c["text"].get<std::string>();
    }
    if (text.empty()) return;
    const auto now = Clock::now();
    if (chunks == 0) {
      s.ttft_s = std::chrono::duration<double>(now - t0).count();
    } else {
      s.itl_s.push_back(std::chrono::duration<double>(now - last).count());
    }
    last = now;
    ++chunks;
  };
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    if (status != 200) {
      err_body.append(data, std::min<size_t>(len, 4096));
      return true;
    }
    buf.append(data, len);
    for (;;) {
      size_t end = buf.find("\n\n");
      size_t sep = 2;
      const size_t crlf = buf.find("\r\n\r\n");
      if (crlf != std::string::npos && (end == std::string::npos || crlf < end)) {
        end = crlf;
        sep = 4;
      }
      if (end == std::string::npos) break;
      const std::string event = buf.substr(0, end);
      buf.erase(0, end + sep);
      size_t pos = 0;
      while (pos < event.size()) {
        size_t nl = event.find('\n', pos);
        if (nl == std::string::npos) nl = event.size();
        std::string line = event.substr(pos, nl - pos);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.rfind("data:", 0) == 0) {
          std::string d = line.substr(5);
          if (!d.empty() && d[0] == ' ') d.erase(0, 1);
          on_event(d);
        }
        pos = nl + 1;
      }
    }
    return true;
  };
  httplib::Response res;
  httplib::Error error = httplib::Error::Success;
  const bool sent = cli.send(req, res, error);
  s.e2e_s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!sent) {
    s.error = "HTTP error: " + httplib::to_string(error);
    return s;
  }
  if (status != 200) {
    s.error = "HTTP " + std::to_string(status) + ": " + err_body;
    return s;
  }
  if (!s.error.empty()) return s;
  if (!done) {
    s.error = "the stream ended without [DONE]";
    return s;
  }
  s.output_tokens = usage_tokens >= 0 ? usage_tokens : chunks;
  s.ok = chunks > 0;
  if (!s.ok) s.error = "no content received";
  return s;
}

std::string first_model(const Target& t, const Options& o) {
  httplib::Client cli(t.scheme_host_port);
  cli.set_read_timeout(30, 0);
  httplib::Headers h;
  if (!o.api_key.empty()) h.emplace("Authorization", "Bearer " + o.api_key);
  auto r = cli.Get(t.prefix + "/v1/models", h);
  if (!r || r->status != 200) return "";
  json j = json::parse(r->body, nullptr, false);
  if (j.is_discarded() || !j.contains("data") || !j["data"].is_array() || j["data"].empty())
    return "";
  return j["data"][0].value("id", "");
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"load_gen: concurrent streaming clients for an OpenAI-compatible server"};
  app.add_option("--url", o.url, "server base URL (http://HOST:PORT)");
  app.add_option("--api-key", o.api_key, "Bearer key (default: $QILIN_API_KEY)");
  app.add_option("--model", o.model, "model name sent (default: the first of /v1/models)");
  app.add_option("-c,--clients", o.clients, "concurrent clients")->check(CLI::Range(1, 4096));
  app.add_option("-n,--requests", o.requests, "total requests (0: run for --duration)")
      ->check(CLI::Range(0, 1 << 24));
  app.add_option("-d,--duration", o.duration, "seconds to keep sending (0: until --requests)")
      ->check(CLI::Range(0.0, 86400.0));
  app.add_option("-p,--prompt-tokens", o.prompt_tokens, "approximate prompt length in tokens")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("-m,--max-tokens", o.max_tokens, "output tokens per request")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--seed", o.seed, "prompt seed");
  app.add_flag("--chat", o.chat, "use /v1/chat/completions instead of /v1/completions");
  app.add_option("--json", o.json_out, "write the JSON report here ('-': stdout)");
  app.add_option("--timeout", o.timeout, "per-request timeout in seconds");
  app.add_option("--label", o.label, "free text copied into the report");
  CLI11_PARSE(app, argc, argv);
  if (o.requests == 0 && o.duration == 0) o.requests = 4 * o.clients;
  if (o.api_key.empty()) {
    if (const char* k = std::getenv("QILIN_API_KEY")) o.api_key = k;
  }
  Target t;
  if (!parse_url(o.url, &t)) {
    std::fprintf(stderr, "load_gen: --url must start with http://, got %s\n", o.url.c_str());
    return 1;
  }
  if (o.model.empty()) o.model = first_model(t, o);

  // Every request's prompt is fixed by the seed and its sequence number, whichever client
  // sends it.
  const int n_words = std::max(1, o.prompt_tokens - 6);  // the instruction takes ~5 tokens
  std::atomic<int> next{0};
  std::mutex mu;
  std::vector<Sample> samples;
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(o.duration));
  std::vector<std::thread> threads;
  for (int c = 0; c < o.clients; ++c) {
    threads.emplace_back([&] {
      httplib::Client cli(t.scheme_host_port);
      const time_t sec = static_cast<time_t>(o.timeout);
      cli.set_read_timeout(sec, 0);
      cli.set_write_timeout(sec, 0);
      cli.set_connection_timeout(30, 0);
      // A new connection per request: a reused keep-alive connection that the server has
      // just closed fails the next request; a loopback connect costs well under a millisecond.
      cli.set_keep_alive(false);
      for (;;) {
        if (o.duration > 0 && Clock::now() >= deadline) break;
        const int k = next.fetch_add(1);
        if (o.requests > 0 && k >= o.requests) break;
        std::mt19937_64 rng(o.seed * 1000003u + static_cast<uint64_t>(k));
        Sample s = run_one(cli, o, t, make_prompt(rng, n_words));
        std::lock_guard<std::mutex> lock(mu);
        samples.push_back(std::move(s));
      }
    });
  }
  for (std::thread& th : threads) th.join();
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();

  std::vector<double> ttft, itl, e2e;
  int64_t out_tokens = 0, prompt_tokens = 0, n_prompt_known = 0;
  int ok = 0, failed = 0;
  std::string first_error;
  for (const Sample& s : samples) {
    if (!s.ok) {
      ++failed;
      if (first_error.empty()) first_error = s.error;
      continue;
    }
    ++ok;
    ttft.push_back(s.ttft_s);
    e2e.push_back(s.e2e_s);
    itl.insert(itl.end(), s.itl_s.begin(), s.itl_s.end());
    out_tokens += s.output_tokens;
    if (s.prompt_tokens >= 0) {
      prompt_tokens += s.prompt_tokens;
      ++n_prompt_known;
    }
  }
  json report = {{"url", o.url},
                 {"model", o.model},
                 {"label", o.label},
                 {"endpoint", o.chat ? "chat" : "completions"},
                 {"clients", o.clients},
                 {"prompt_tokens_target", o.prompt_tokens},
                 {"max_tokens", o.max_tokens},
                 {"seed", o.seed},
                 {"requests_ok", ok},
                 {"requests_failed", failed},
                 {"wall_s", wall},
                 {"requests_per_s", ok / wall},
                 {"output_tokens", out_tokens},
                 {"output_tokens_per_s", out_tokens / wall},
                 {"prompt_tokens_mean",
                  n_prompt_known ? json(double(prompt_tokens) / n_prompt_known) : json(nullptr)},
                 {"ttft_ms", stats_ms(ttft)},
                 {"itl_ms", stats_ms(itl)},
                 {"e2e_ms", stats_ms(e2e)}};
  if (!first_error.empty()) report["first_error"] = first_error;

  std::fprintf(stderr, "load_gen: %s, %d clients, %d ok, %d failed in %.1f s\n", o.url.c_str(),
               o.clients, ok, failed, wall);
  if (!first_error.empty()) std::fprintf(stderr, "first error: %s\n", first_error.c_str());
  std::fprintf(stderr,
               "| clients | req/s | output tok/s | TTFT p50 / p90 / p99 ms | "
               "ITL p50 / p90 / p99 ms |\n|---|---|---|---|---|\n");
  std::fprintf(stderr, "| %d | %.2f | %.1f | %.0f / %.0f / %.0f | %.1f / %.1f / %.1f |\n",
               o.clients, ok / wall, out_tokens / wall, report["ttft_ms"]["p50"].get<double>(),
               report["ttft_ms"]["p90"].get<double>(), report["ttft_ms"]["p99"].get<double>(),
               report["itl_ms"]["p50"].get<double>(), report["itl_ms"]["p90"].get<double>(),
               report["itl_ms"]["p99"].get<double>());
  if (o.json_out == "-") {
    std::printf("%s\n", report.dump(2).c_str());
  } else if (!o.json_out.empty()) {
    std::ofstream f(o.json_out);
    f << report.dump(2) << "\n";
  }
  return failed > 0 && ok == 0 ? 1 : 0;
}
