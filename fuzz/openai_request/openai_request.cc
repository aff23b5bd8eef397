// Fuzz target: the OpenAI request parser and its validation, as the server runs them on a body.
// Byte 0 picks the endpoint (/v1/completions or /v1/chat/completions), the rest is the body.
// A rejected request must give a serialisable error body; an accepted one is tokenized (chat:
// rendered with a ChatML template first) against a tiny vocabulary, and every prompt token that
// validation let through must be inside the vocabulary, as the Engine assumes.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "fuzz_util.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"
#include "server/openai_api.h"

using namespace qilin;

namespace {
std::unique_ptr<Tokenizer> g_tok;
std::unique_ptr<ChatTemplate> g_tmpl;
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::TinyModel m;
  m.pre = "smollm";
  const std::vector<uint8_t> bytes = fuzz::tiny_llama_gguf(m);
  auto f = GgufFile::parse(bytes.data(), bytes.size());
  auto t = f ? Tokenizer::from_gguf(**f) : Result<std::unique_ptr<Tokenizer>>(f.status());
  auto c = ChatTemplate::from_string(fuzz::kChatmlTemplate, "", "<|im_end|>");
  if (!t || !c) {
    std::fprintf(stderr, "fuzz_openai_request: cannot build the tokenizer or template\n");
    std::abort();
  }
  g_tok = std::move(*t);
  g_tmpl = std::make_unique<ChatTemplate>(std::move(*c));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const server::Endpoint ep = data[0] & 1 ? server::Endpoint::Chat : server::Endpoint::Completions;
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  server::ApiLimits limits;
  server::GenerationRequest req;
  if (auto err = server::parse_request(ep, body, limits, &req)) {
    (void)server::error_body(*err);
    return 0;
  }
  std::vector<int32_t> ids;
  if (auto err = server::tokenize_prompt(req, *g_tok, g_tmpl.get(), &ids)) {
    (void)server::error_body(*err);
    return 0;
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= g_tok->n_vocab()) {
      std::fprintf(stderr, "accepted prompt holds token id %d outside [0, %d)\n", id,
                   g_tok->n_vocab());
      std::abort();
    }
  }
  if (req.n < 1 || req.n > limits.max_n || req.stop.size() > static_cast<size_t>(limits.max_stop)) {
    std::fprintf(stderr, "accepted request breaks the limits: n %d, %zu stop strings\n", req.n,
                 req.stop.size());
    std::abort();
  }
  return 0;
}
