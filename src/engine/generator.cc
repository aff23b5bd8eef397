// Generator and generate(): see generator.h.
#include "engine/generator.h"

#include <algorithm>
#include <chrono>

#include "core/assert.h"
#include "engine/text_stream.h"

namespace qilin {
namespace {

constexpr SeqId kSeq = 0;  // the generator's one sequence

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Generator::Generator(const LlamaModel& model, const GeneratorConfig& config)
    : model_(model), cfg_(config) {}

Result<std::unique_ptr<Generator>> Generator::create(const LlamaModel& model,
                                                     const GeneratorConfig& config) {
  if (config.n_ctx < 1) return errorf("context size must be at least 1, got %d", config.n_ctx);
  if (config.n_batch < 1) return errorf("batch size must be at least 1, got %d", config.n_batch);
  if (config.n_threads < 1 || config.n_threads > 1024) {
    return errorf("thread count must be in [1, 1024], got %d", config.n_threads);
  }
  std::unique_ptr<Generator> g(new Generator(model, config));
  g->pool_ = std::make_unique<ThreadPool>(config.n_threads);
  auto kv = KvCache::create(model.kv_config(config.n_ctx, config.block_size, config.kv_type));
  QILIN_TRY(kv);
  g->kv_ = std::move(*kv);
  g->blocks_ = std::make_unique<BlockManager>(g->kv_->config().n_blocks, config.block_size,
                                              config.prefix_cache);
  g->tokens_.reserve(config.n_ctx);
  const int32_t n_batch = std::min(config.n_batch, config.n_ctx);
  g->ws_ = model.make_workspace(n_batch, 1, config.n_ctx, config.n_threads);
  g->ws_.flash_attn = config.flash_attn;
  g->batch_.token.reserve(n_batch);
  g->batch_.pos.reserve(n_batch);
  g->batch_.seq.reserve(n_batch);
  g->batch_.want_logits.reserve(n_batch);
  g->batch_.seqs.reserve(1);
  return g;
}

Status Generator::feed(const int32_t* tokens, int32_t n) {
  if (n <= 0) return Status::ok();
  if (static_cast<int64_t>(n_past_) + n > cfg_.n_ctx) {
    return errorf("%d tokens do not fit: the context holds %d and %d are used", n, cfg_.n_ctx,
                  n_past_);
  }
  for (int32_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= model_.hparams().n_vocab) {
      return errorf("token id %d is outside the vocabulary [0, %d)", tokens[i],
                    model_.hparams().n_vocab);
    }
  }
  // Slots for the new tokens. A fresh sequence may find its leading blocks in the prefix cache:
  // those tokens are not computed again.
  // NOTE: with one sequence and a pool sized for n_ctx this cannot run out; with shared pools
  // the caller (the scheduler) decides what to do when it does.
  int32_t done = 0;
  KvAllocResult r;
  if (blocks_->has(kSeq) && n_past_ == 0) blocks_->free(kSeq);  // start over: look up the cache
  if (!blocks_->has(kSeq)) {
    r = blocks_->add_sequence(kSeq, tokens, n, &done);
    if (r.ok()) blocks_->reserve(kSeq, cfg_.n_ctx);
  } else {
    copies_.clear();
    r = blocks_->append(kSeq, tokens, n, &copies_);
    model_.copy_kv_blocks(*kv_, copies_);
  }
  if (!r.ok()) {
    return errorf("KV cache is full: %d blocks needed, %d available", r.blocks_needed,
                  r.blocks_available);
  }
  tokens_.insert(tokens_.end(), tokens, tokens + done);
  n_past_ += done;
  const std::vector<int32_t>& table = blocks_->block_table(kSeq);
  while (done < n) {
    const int32_t chunk = std::min(n - done, ws_.max_tokens);
    batch_.clear();
    batch_.seqs.push_back({table.data(), static_cast<int32_t>(table.size())});
    for (int32_t i = 0; i < chunk; ++i) {
      batch_.add(tokens[done + i], n_past_ + i, 0, done + i == n - 1);
    }
    auto logits = model_.forward(batch_, *kv_, ws_, *pool_);
    if (!logits) {
      blocks_->truncate(kSeq, n_past_);  // forget the tokens that were not computed
      return logits.status();
    }
    last_logits_ = *logits;
    tokens_.insert(tokens_.end(), tokens + done, tokens + done + chunk);
    n_past_ += chunk;
    done += chunk;
    blocks_->mark_computed(kSeq, n_past_);
  }
  return Status::ok();
}

void Generator::truncate(int32_t n) {
  QILIN_ASSERT(n >= 0 && n <= n_past_);
  n_past_ = n;
  tokens_.resize(n);
  if (blocks_->has(kSeq)) blocks_->truncate(kSeq, n);
  last_logits_ = nullptr;
}

void Generator::reset() {
  if (blocks_->has(kSeq)) blocks_->free(kSeq);
  n_past_ = 0;
  tokens_.clear();
  last_logits_ = nullptr;
}

Result<GenerateStats> generate(Generator& gen, const Tokenizer& tok, Sampler& sampler,
                               const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                               const std::function<bool(std::string_view)>& on_text) {
  GenerateStats st;
  st.n_prompt = static_cast<int32_t>(prompt.size());
  if (prompt.empty() && gen.logits() == nullptr) return errorf("the prompt is empty");
  if (gen.n_past() + static_cast<int64_t>(prompt.size()) >= gen.n_ctx()) {
    return errorf("the prompt has %zu tokens but the context holds %d (%d already used); "
                  "raise -c or shorten the prompt", prompt.size(), gen.n_ctx(), gen.n_past());
  }
  const double t0 = now_ms();
  QILIN_TRY(gen.feed(prompt));
  st.prompt_ms = now_ms() - t0;
  for (int32_t t : prompt) sampler.accept(t);

  TextStream text(opt.stop);
  const double t1 = now_ms();
  st.stop_reason = "length";
  const int32_t limit = opt.max_tokens < 0 ? gen.n_ctx() : opt.max_tokens;
  for (int32_t i = 0; i < limit; ++i) {
    const int32_t id = sampler.sample(gen.logits());
    if (id == Sampler::kNoToken) return errorf("the model produced only NaN logits");
    sampler.accept(id);
    if (!opt.ignore_eos && tok.is_eog(id)) {
      st.stop_reason = "eos";
      break;
    }
    ++st.n_generated;
    const std::string_view emit = text.push(tok.token_to_piece(id));
    if (text.stopped()) st.stop_reason = "stop";
    if (!emit.empty() && !on_text(emit)) {
      st.stop_reason = "cancelled";
      break;
    }
    if (text.stopped()) break;
    if (i + 1 < limit) {
      if (gen.n_past() + 1 >= gen.n_ctx()) {
        st.stop_reason = "context";
        break;
      }
      QILIN_TRY(gen.feed(&id, 1));
    }
  }
  if (st.stop_reason != "stop" && st.stop_reason != "cancelled") {
    const std::string_view rest = text.flush();
    if (!rest.empty()) on_text(rest);
  }
  st.gen_ms = now_ms() - t1;
  return st;
}

}  // namespace qilin
