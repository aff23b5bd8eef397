// Engine: continuous batching. See engine.h for the contract; the step is
//   1. take cancellations and new requests (under the lock, nothing else is),
//   2. the Scheduler plans it (decodes, prefill chunks, admissions, preemptions; scheduler.h),
//   3. perform the plan's block copies, build one batch from the plan, one forward pass,
//   4. sample for every sequence whose last token was computed (in parallel, logprobs too),
//      emit events in plan order, retire finished sequences.
// NOTE: per token nothing allocates and the lock is held only to count metrics: events are
// built in reused scratch and every token's text is precomputed at creation.
#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <array>
#include <cmath>

#include "core/assert.h"
#include "engine/text_stream.h"

namespace qilin {
namespace {

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

Histogram make_histogram(std::vector<double> bounds) {
  Histogram h;
  h.bounds = std::move(bounds);
  h.counts.assign(h.bounds.size() + 1, 0);
  return h;
}

}  // namespace

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::None: return "";
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
  }
  return "";
}

void Histogram::observe(double v) {
  size_t i = std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin();
  ++counts[i];
  sum += v;
  ++count;
}

struct Engine::Request {
  RequestId id = 0;
  RequestParams params;
  EventFn on_event;
  double t_submit = 0;
  int32_t open_choices = 0;  // choices not finished yet
  bool cancelled = false;
  bool first_token = false;
};

struct Engine::Seq : SchedSeq {
  Seq(std::shared_ptr<Request> r, int32_t choice_index, int32_t n_vocab)
      : req(std::move(r)),
        choice(choice_index),
        sampler(seeded(req->params.sampling, choice_index), n_vocab),
        text(req->params.stop) {}
  static SamplingParams seeded(SamplingParams p, int32_t i) {
    p.seed += static_cast<uint64_t>(i);
    return p;
  }
  std::shared_ptr<Request> req;
  int32_t choice = 0;
  int32_t n_prompt = 0;
  int32_t n_generated = 0;
  Sampler sampler;
  TextStream text;
  double t_last = 0;
  // This step's pick (Sampler::kNoToken: none possible) and, when asked, its logprobs.
  int32_t picked = Sampler::kNoToken;
  float logprob = 0;
  std::array<TokenLogprob, Sampler::kMaxTopLogprobs> top;
  int32_t n_top = 0;
};

Engine::Engine(const LlamaModel& model, const Tokenizer& tok, const EngineConfig& config)
    : model_(model), tok_(tok), cfg_(config) {}

Engine::~Engine() { stop(); }

Result<std::unique_ptr<Engine>> Engine::create(const LlamaModel& model, const Tokenizer& tok,
                                               const EngineConfig& c) {
  if (c.n_threads < 1 || c.n_threads > 1024) return errorf("engine: n_threads must be in [1, 1024], got %d", c.n_threads);
  if (c.block_size < 1 || c.block_size > 1024) return errorf("engine: block_size must be in [1, 1024], got %d", c.block_size);
  if (c.max_batch_tokens < 1) return errorf("engine: max_batch_tokens must be >= 1, got %d", c.max_batch_tokens);
  if (c.max_prefill_tokens < 0)
    return errorf("engine: max_prefill_tokens must be >= 0, got %d", c.max_prefill_tokens);
  if (c.max_running < 1) return errorf("engine: max_running must be >= 1, got %d", c.max_running);
  if (c.max_queue < 1) return errorf("engine: max_queue must be >= 1, got %d", c.max_queue);
  std::unique_ptr<Engine> e(new Engine(model, tok, c));
  const LlamaHparams& hp = model.hparams();
  // Bytes of one block, all layers, K and V.
  const KvCacheConfig kc = model.kv_config(c.block_size, c.block_size, c.kv_type);
  const size_t block_bytes = KvCache::bytes_per_token(kc) * static_cast<size_t>(c.block_size);
  if (block_bytes == 0) {
    return errorf("engine: KV type %s cannot hold head_dim %d", kv_type_name(c.kv_type),
                  hp.head_dim);
  }
  const int64_t n_blocks = c.kv_blocks > 0 ? c.kv_blocks
                                           : static_cast<int64_t>(c.kv_cache_bytes / block_bytes);
  if (n_blocks < 1 || n_blocks > (int64_t{1} << 24)) {
    return errorf("engine: the KV pool must hold 1 to 2^24 blocks of %d tokens, got %lld "
                  "(kv_cache_bytes %zu, %zu bytes per block)", c.block_size,
                  static_cast<long long>(n_blocks), c.kv_cache_bytes, block_bytes);
  }
  const int32_t pool_tokens = static_cast<int32_t>(n_blocks) * c.block_size;
  int32_t max_len = c.max_seq_len > 0 ? c.max_seq_len : hp.n_ctx_train > 0 ? hp.n_ctx_train : 4096;
  e->max_seq_len_ = std::min(max_len, pool_tokens);
  auto kv = KvCache::create(model.kv_config(pool_tokens, c.block_size, c.kv_type));
  QILIN_TRY(kv);
  e->kv_ = std::move(*kv);
  e->blocks_ = std::make_unique<BlockManager>(e->kv_->config().n_blocks, c.block_size, c.prefix_cache);
  e->sched_ = std::make_unique<Scheduler>(
      SchedulerConfig{c.max_batch_tokens, c.max_prefill_tokens, c.max_running}, *e->blocks_);
  e->pool_ = std::make_unique<ThreadPool>(c.n_threads);
  e->piece_off_.reserve(static_cast<size_t>(hp.n_vocab) + 1);
  e->piece_off_.push_back(0);
  for (int32_t t = 0; t < hp.n_vocab; ++t) {
    e->pieces_ += tok.token_to_piece(t);
    e->piece_off_.push_back(static_cast<uint32_t>(e->pieces_.size()));
  }
  e->token_ev_.tokens.resize(1);
  e->token_ev_.tokens[0].top.reserve(Sampler::kMaxTopLogprobs);
  e->token_ev_.text.reserve(256);
  e->end_ev_.text.reserve(256);
  // Logit rows per step: one per sequence whose last token is computed, at most max_running
  // (admission counts a request's future choices too).
  e->ws_ = model.make_workspace(c.max_batch_tokens, std::min(c.max_running, c.max_batch_tokens),
                                e->max_seq_len_, c.n_threads);
  e->ws_.flash_attn = c.flash_attn;
  e->metrics_.ttft = make_histogram({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60});
  e->metrics_.itl = make_histogram({0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2.5});
  e->metrics_.kv = e->blocks_->stats();
  return e;
}

SubmitResult Engine::submit(RequestParams p, EventFn on_event) {
  SubmitResult r;
  auto refuse = [&](SubmitError e, std::string msg) {
    r.error = e;
    r.message = std::move(msg);
    std::lock_guard<std::mutex> lock(mu_);
    ++metrics_.requests_rejected;
    return r;
  };
  const int32_t n_vocab = model_.hparams().n_vocab;
  if (p.prompt.empty()) return refuse(SubmitError::Invalid, "prompt: empty");
  for (int32_t t : p.prompt) {
    if (t < 0 || t >= n_vocab) {
      return refuse(SubmitError::Invalid, "prompt: token id " + std::to_string(t) +
                                              " is outside the vocabulary [0, " +
                                              std::to_string(n_vocab) + ")");
    }
  }
  if (p.max_tokens < 1) {
    return refuse(SubmitError::Invalid, "max_tokens: must be at least 1, got " + std::to_string(p.max_tokens));
  }
  if (p.n < 1 || p.n > std::min(64, cfg_.max_running)) {
    return refuse(SubmitError::Invalid, "n: must be in [1, " + std::to_string(std::min(64, cfg_.max_running)) +
                                            "], got " + std::to_string(p.n));
  }
  if (p.top_logprobs < 0 || p.top_logprobs > Sampler::kMaxTopLogprobs) {
    return refuse(SubmitError::Invalid, "top_logprobs: must be in [0, " +
                                            std::to_string(Sampler::kMaxTopLogprobs) + "], got " +
                                            std::to_string(p.top_logprobs));
  }
  if (Status s = p.sampling.validate(); !s) return refuse(SubmitError::Invalid, s.message());
  const int64_t len = static_cast<int64_t>(p.prompt.size()) + p.max_tokens;
  if (len > max_seq_len_) {
    return refuse(SubmitError::TooLong,
                  "prompt (" + std::to_string(p.prompt.size()) + " tokens) + max_tokens (" +
                      std::to_string(p.max_tokens) + ") exceeds the maximum sequence length " +
                      std::to_string(max_seq_len_));
  }
  // The whole request at full length, choices sharing the prompt's full blocks.
  const int64_t bs = cfg_.block_size;
  const int64_t need = (len + bs - 1) / bs + (p.n - 1) * ((p.max_tokens + bs - 1) / bs + 1);
  if (need > blocks_->n_blocks()) {
    return refuse(SubmitError::TooLong, "the request needs " + std::to_string(need) +
                                            " KV blocks at full length; the pool has " +
                                            std::to_string(blocks_->n_blocks()));
  }
  auto req = std::make_shared<Request>();
  req->params = std::move(p);
  req->on_event = std::move(on_event);
  req->t_submit = now_s();
  req->open_choices = req->params.n;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      ++metrics_.requests_rejected;
      r.error = SubmitError::ShuttingDown;
      r.message = "the server is shutting down";
      return r;
    }
    if (static_cast<int32_t>(inbox_.size()) + metrics_.waiting >= cfg_.max_queue) {
      ++metrics_.requests_rejected;
      r.error = SubmitError::QueueFull;
      r.message = "the request queue is full (" + std::to_string(cfg_.max_queue) + " waiting)";
      return r;
    }
    req->id = next_id_++;
    r.id = req->id;
    ++metrics_.requests_received;
    metrics_.prompt_tokens += req->params.prompt.size();
    inbox_.push_back(std::move(req));
    idle_ = false;
  }
  cv_.notify_all();
  return r;
}

void Engine::cancel(RequestId id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancels_.push_back(id);
  }
  cv_.notify_all();
}

EngineMetrics Engine::metrics() const {
  std::lock_guard<std::mutex> lock(mu_);
  return metrics_;
}

// ---- the step ----

void Engine::admit_new_requests() {
  std::deque<std::shared_ptr<Request>> fresh;
  std::vector<RequestId> cancels;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fresh.swap(inbox_);
    cancels.swap(cancels_);
  }
  for (std::shared_ptr<Request>& r : fresh) {
    auto s = std::make_unique<Seq>(r, 0, model_.hparams().n_vocab);
    s->id = next_seq_++;
    s->tokens = r->params.prompt;
    s->tokens.reserve(r->params.prompt.size() + r->params.max_tokens);
    s->n_prompt = static_cast<int32_t>(r->params.prompt.size());
    s->pending_forks = r->params.n - 1;
    for (int32_t t : r->params.prompt) s->sampler.accept(t);
    sched_->add_waiting(s.get());
    seqs_.push_back(std::move(s));
  }
  if (cancels.empty()) return;
  std::sort(cancels.begin(), cancels.end());
  auto cancel = [&](SchedSeq* q) {
    Seq* s = static_cast<Seq*>(q);
    if (std::binary_search(cancels.begin(), cancels.end(), s->req->id)) {
      finish_seq(s, FinishReason::Cancelled);
    }
  };
  for (SchedSeq* q : sched_->running()) cancel(q);
  for (SchedSeq* q : sched_->waiting()) cancel(q);
}

void Engine::finish_seq(Seq* s, FinishReason why, std::string_view error) {
  if (s->finished) return;
  s->finished = true;
  ++n_finished_;
  if (s->admitted) {
    blocks_->free(s->id);
    s->admitted = false;
  }
  Request& r = *s->req;
  // A parent that never forked takes its unborn choices with it.
  const int32_t closing = 1 + s->pending_forks;
  s->pending_forks = 0;
  ChoiceEvent& ev = end_ev_;
  ev.id = r.id;
  ev.n_prompt = s->n_prompt;
  ev.n_generated = s->n_generated;
  ev.finish = why;
  ev.error.assign(error);
  ev.text.clear();
  if (why != FinishReason::Cancelled && why != FinishReason::Error) ev.text.assign(s->text.flush());
  for (int32_t k = 0; k < closing; ++k) {
    ev.index = s->choice + k;  // unborn choices are numbered after the parent's
    if (r.on_event) r.on_event(ev);
  }
  r.open_choices -= closing;
  if (why == FinishReason::Cancelled) r.cancelled = true;
  if (r.open_choices == 0) {
    std::lock_guard<std::mutex> lock(mu_);
    if (r.cancelled) {
      ++metrics_.requests_cancelled;
    } else {
      ++metrics_.requests_finished;
    }
  }
}

void Engine::fork_choices(Seq* s, const float* logits) {
  // The prompt's logits exist: the other choices start here, sharing every block.
  const int32_t n_vocab = model_.hparams().n_vocab;
  const int32_t forks = s->pending_forks;
  s->pending_forks = 0;
  for (int32_t k = 1; k <= forks; ++k) {
    auto c = std::make_unique<Seq>(s->req, s->choice + k, n_vocab);
    c->id = next_seq_++;
    c->tokens = s->tokens;
    c->tokens.reserve(s->tokens.capacity());
    c->n_prompt = s->n_prompt;
    c->n_computed = s->n_computed;
    for (int32_t t : c->tokens) c->sampler.accept(t);
    blocks_->fork(s->id, c->id);
    c->admitted = true;
    Seq* raw = c.get();
    sched_->add_running(raw);
    seqs_.push_back(std::move(c));
    sample(raw, logits);
    emit(raw);
  }
}

void Engine::sample(Seq* s, const float* logits) {
  s->picked = s->sampler.sample(logits);
  const RequestParams& p = s->req->params;
  if (s->picked == Sampler::kNoToken || !(p.logprobs || p.top_logprobs > 0)) return;
  s->logprob = s->sampler.logprobs(logits, s->picked, std::span(s->top.data(), p.top_logprobs),
                                   &s->n_top);
}

void Engine::emit(Seq* s) {
  Request& r = *s->req;
  const RequestParams& p = r.params;
  const int32_t id = s->picked;
  if (id == Sampler::kNoToken) {
    finish_seq(s, FinishReason::Error, "the model produced only NaN logits");
    return;
  }
  s->sampler.accept(id);
  const double t = now_s();
  const bool first = !r.first_token;
  const bool has_prev = s->n_generated > 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (first) metrics_.ttft.observe(t - r.t_submit);
    if (has_prev) metrics_.itl.observe(t - s->t_last);
    ++metrics_.generated_tokens;
  }
  r.first_token = true;
  s->t_last = t;
  ChoiceEvent& ev = token_ev_;
  ev.id = r.id;
  ev.index = s->choice;
  ev.n_prompt = s->n_prompt;
  ev.finish = FinishReason::None;
  ev.text.clear();
  GeneratedToken& g = ev.tokens[0];
  g.token = id;
  g.logprob = 0;
  g.top.clear();
  const bool logprobs = p.logprobs || p.top_logprobs > 0;
  if (logprobs) {
    g.logprob = s->logprob;
    g.top.assign(s->top.begin(), s->top.begin() + s->n_top);  // within the reserved capacity
  }
  const bool eos = !p.ignore_eos && tok_.is_eog(id);
  if (eos) {
    // The end-of-generation token is not part of the text; its logprob is still reported.
    ev.n_generated = s->n_generated;
    if (logprobs && r.on_event) r.on_event(ev);
    finish_seq(s, FinishReason::Stop);
    return;
  }
  s->tokens.push_back(id);  // within the capacity reserved for prompt + max_tokens
  ++s->n_generated;
  ev.n_generated = s->n_generated;
  ev.text.assign(s->text.push(piece(id)));
  FinishReason fin = FinishReason::None;
  if (s->text.stopped()) {
    fin = FinishReason::Stop;
  } else if (s->n_generated >= p.max_tokens ||
             static_cast<int32_t>(s->tokens.size()) >= max_seq_len_) {
    fin = FinishReason::Length;
  }
  if (r.on_event) r.on_event(ev);  // it always carries the token
  if (fin != FinishReason::None) finish_seq(s, fin);
}

bool Engine::schedule_and_run() {
  const StepPlan& plan = sched_->schedule();
  if (!plan.preempted.empty() || plan.prefix_hit_tokens > 0) {
    std::lock_guard<std::mutex> lock(mu_);
    metrics_.preemptions += plan.preempted.size();
    metrics_.prefix_hit_tokens += plan.prefix_hit_tokens;
  }
  if (!plan.copies.empty()) model_.copy_kv_blocks(*kv_, plan.copies);
  if (plan.empty()) return false;

  // One batch.
  batch_.clear();
  for (size_t k = 0; k < plan.seqs.size(); ++k) {
    const PlannedSeq& q = plan.seqs[k];
    const std::vector<int32_t>& table = blocks_->block_table(q.seq->id);
    batch_.seqs.push_back({table.data(), static_cast<int32_t>(table.size())});
    const int32_t end = q.seq->n_computed + q.n;
    const bool logits = q.wants_logits();
    for (int32_t pos = q.seq->n_computed; pos < end; ++pos) {
      batch_.add(q.seq->tokens[pos], pos, static_cast<int32_t>(k), logits && pos == end - 1);
    }
  }
  auto out = model_.forward(batch_, *kv_, ws_, *pool_);
  if (!out) {
    for (const PlannedSeq& q : plan.seqs) {
      finish_seq(static_cast<Seq*>(q.seq), FinishReason::Error, out.status().message());
    }
  } else {
    const int32_t n_vocab = model_.hparams().n_vocab;
    // Sequences' samplers are independent: the rows are sampled on the pool (greedy is one
    // pass over n_vocab logits, top-k/top-p sort them, logprobs take two passes), then emitted
    // in order on this thread. A prompt that forks its choices samples them in fork_choices,
    // serially.
    sampled_.clear();
    const float* row = *out;
    for (const PlannedSeq& q : plan.seqs) {
      if (!q.wants_logits()) continue;
      sampled_.push_back({static_cast<Seq*>(q.seq), row});
      row += n_vocab;
    }
    std::atomic<size_t> next{0};
    pool_->run([&](int, int) {
      for (size_t i = next.fetch_add(1, std::memory_order_relaxed); i < sampled_.size();
           i = next.fetch_add(1, std::memory_order_relaxed)) {
        const Sampled& j = sampled_[i];
        if (j.s->pending_forks == 0) sample(j.s, j.logits);
      }
    });
    for (const PlannedSeq& q : plan.seqs) {
      q.seq->n_computed += q.n;
      blocks_->mark_computed(q.seq->id, q.seq->n_computed);
    }
    for (const Sampled& j : sampled_) {
      if (j.s->pending_forks > 0) {
        fork_choices(j.s, j.logits);
        sample(j.s, j.logits);
      }
      emit(j.s);
    }
  }
  retire();
  return true;
}

void Engine::retire() {
  if (n_finished_ == 0) return;
  sched_->retire();
  seqs_.erase(std::remove_if(seqs_.begin(), seqs_.end(),
                             [](const std::unique_ptr<Seq>& s) { return s->finished; }),
              seqs_.end());
  n_finished_ = 0;
}

bool Engine::step() {
  admit_new_requests();
  retire();
  const bool worked = schedule_and_run();
  const BlockManagerStats kv = blocks_->stats();  // O(blocks): outside the lock
  std::lock_guard<std::mutex> lock(mu_);
  if (worked) ++metrics_.steps;
  metrics_.waiting = static_cast<int32_t>(sched_->waiting().size());
  metrics_.running = static_cast<int32_t>(sched_->running().size());
  metrics_.kv = kv;
  idle_ = inbox_.empty() && seqs_.empty();
  if (idle_) cv_.notify_all();
  return worked;
}

void Engine::start() {
  if (started_.exchange(true)) return;
  thread_ = std::thread([this] {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !inbox_.empty() || !cancels_.empty() || !idle_; });
        if (stopping_) return;
      }
      step();
    }
  });
}

void Engine::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  // Whatever was pending ends as cancelled, so nobody waits on it forever.
  admit_new_requests();
  for (SchedSeq* s : sched_->running()) finish_seq(static_cast<Seq*>(s), FinishReason::Cancelled);
  for (SchedSeq* s : sched_->waiting()) finish_seq(static_cast<Seq*>(s), FinishReason::Cancelled);
  sched_->clear();
  seqs_.clear();
  n_finished_ = 0;
  std::lock_guard<std::mutex> lock(mu_);
  metrics_.waiting = metrics_.running = 0;
  metrics_.kv = blocks_->stats();
  idle_ = true;
  cv_.notify_all();
}

void Engine::wait_idle() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return idle_ && inbox_.empty(); });
}

}  // namespace qilin
