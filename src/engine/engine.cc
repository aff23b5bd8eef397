// Engine: continuous batching. See engine.h for the contract; the step is
//   1. take cancellations and new requests (under the lock, nothing else is),
//   2. schedule: every running sequence with one token left to compute (decode) gets it first,
//      then sequences still prefilling share the rest of the token budget (chunked prefill),
//      then waiting sequences are admitted while the budget, max_running and the pool allow,
//   3. one forward pass over all scheduled rows,
//   4. sample for every sequence whose last token was computed, emit events, retire finished.
// A sequence needing a block when none is free preempts the most recently admitted sequences
// that are not scheduled yet (their blocks are freed; they return to the front of the queue
// and are recomputed, usually hitting their own cached prefix blocks).
#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

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

struct Engine::Seq {
  Seq(std::shared_ptr<Request> r, int32_t choice_index, int32_t n_vocab)
      : req(std::move(r)),
        choice(choice_index),
        sampler(seeded(req->params.sampling, choice_index), n_vocab),
        text(req->params.stop) {}
  static SamplingParams seeded(SamplingParams p, int32_t i) {
    p.seed += static_cast<uint64_t>(i);
    return p;
  }
  SeqId id = 0;
  std::shared_ptr<Request> req;
  int32_t choice = 0;
  std::vector<int32_t> tokens;  // prompt + generated; the newest may not be computed yet
  int32_t n_prompt = 0;
  int32_t n_generated = 0;
  int32_t n_computed = 0;       // tokens whose K/V are in the cache
  bool admitted = false;        // holds blocks in the BlockManager
  int32_t pending_forks = 0;    // n - 1 until the prompt's logits exist, then 0
  Sampler sampler;
  TextStream text;
  double t_last = 0;
  bool finished = false;
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
  e->pool_ = std::make_unique<ThreadPool>(c.n_threads);
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
  if (p.top_logprobs < 0 || p.top_logprobs > 20) {
    return refuse(SubmitError::Invalid, "top_logprobs: must be in [0, 20], got " + std::to_string(p.top_logprobs));
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
    waiting_.push_back(std::move(s));
  }
  if (cancels.empty()) return;
  std::sort(cancels.begin(), cancels.end());
  auto cancelled = [&](const Seq& s) {
    return std::binary_search(cancels.begin(), cancels.end(), s.req->id);
  };
  for (auto& s : running_) {
    if (cancelled(*s)) finish_seq(s.get(), FinishReason::Cancelled);
  }
  for (auto& s : waiting_) {
    if (cancelled(*s)) finish_seq(s.get(), FinishReason::Cancelled);
  }
}

void Engine::finish_seq(Seq* s, FinishReason why, const std::string& error) {
  if (s->finished) return;
  s->finished = true;
  if (s->admitted) {
    blocks_->free(s->id);
    s->admitted = false;
  }
  Request& r = *s->req;
  // A parent that never forked takes its unborn choices with it.
  const int32_t closing = 1 + s->pending_forks;
  s->pending_forks = 0;
  ChoiceEvent ev;
  ev.id = r.id;
  ev.n_prompt = s->n_prompt;
  ev.n_generated = s->n_generated;
  ev.finish = why;
  ev.error = error;
  if (why != FinishReason::Cancelled && why != FinishReason::Error) ev.text = s->text.flush();
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

void Engine::preempt(Seq* s) {
  QILIN_ASSERT(s->admitted);
  blocks_->free(s->id);  // full computed blocks stay cached: recompute often hits them
  s->admitted = false;
  s->n_computed = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++metrics_.preemptions;
  }
  auto it = std::find_if(running_.begin(), running_.end(),
                         [&](const std::unique_ptr<Seq>& p) { return p.get() == s; });
  QILIN_ASSERT(it != running_.end());
  waiting_.push_front(std::move(*it));
  running_.erase(it);
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
    running_.push_back(std::move(c));
    sample_and_emit(raw, logits);
  }
}

void Engine::sample_and_emit(Seq* s, const float* logits) {
  emit(s, logits, s->sampler.sample(logits));
}

void Engine::emit(Seq* s, const float* logits, int32_t id) {
  Request& r = *s->req;
  const RequestParams& p = r.params;
  if (id == Sampler::kNoToken) {
    finish_seq(s, FinishReason::Error, "the model produced only NaN logits");
    return;
  }
  s->sampler.accept(id);
  const double t = now_s();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!r.first_token) metrics_.ttft.observe(t - r.t_submit);
    if (s->n_generated > 0) metrics_.itl.observe(t - s->t_last);
    ++metrics_.generated_tokens;
  }
  r.first_token = true;
  s->t_last = t;
  ChoiceEvent ev;
  ev.id = r.id;
  ev.index = s->choice;
  ev.n_prompt = s->n_prompt;
  GeneratedToken g;
  g.token = id;
  if (p.logprobs || p.top_logprobs > 0) {
    const int32_t n_vocab = model_.hparams().n_vocab;
    const float mx = *std::max_element(logits, logits + n_vocab);
    double sum = 0;
    for (int32_t i = 0; i < n_vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
    const double lse = mx + std::log(sum);
    g.logprob = static_cast<float>(logits[id] - lse);
    if (p.top_logprobs > 0) {
      std::vector<int32_t> order(n_vocab);
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + p.top_logprobs, order.end(),
                        [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
      for (int32_t i = 0; i < p.top_logprobs; ++i) {
        g.top.push_back({order[i], static_cast<float>(logits[order[i]] - lse)});
      }
    }
  }
  const bool eos = !p.ignore_eos && tok_.is_eog(id);
  if (eos) {
    // The end-of-generation token is not part of the text; its logprob is still reported.
    if (p.logprobs || p.top_logprobs > 0) ev.tokens.push_back(std::move(g));
    ev.n_generated = s->n_generated;
    if (!ev.tokens.empty() && r.on_event) r.on_event(ev);
    finish_seq(s, FinishReason::Stop);
    return;
  }
  s->tokens.push_back(id);
  ++s->n_generated;
  ev.n_generated = s->n_generated;
  ev.text = s->text.push(tok_.token_to_piece(id));
  ev.tokens.push_back(std::move(g));
  FinishReason fin = FinishReason::None;
  if (s->text.stopped()) {
    fin = FinishReason::Stop;
  } else if (s->n_generated >= p.max_tokens ||
             static_cast<int32_t>(s->tokens.size()) >= max_seq_len_) {
    fin = FinishReason::Length;
  }
  if (fin == FinishReason::None || !ev.text.empty() || !ev.tokens.empty()) {
    if (r.on_event) r.on_event(ev);
  }
  if (fin != FinishReason::None) finish_seq(s, fin);
}

bool Engine::schedule_and_run() {
  struct Planned {
    Seq* s;
    int32_t count;
  };
  std::vector<Planned> plan;
  int32_t budget = cfg_.max_batch_tokens;
  // Makes room for n more tokens of s, preempting unscheduled sequences admitted after it
  // (latest first). False if s itself had to go.
  auto make_room = [&](Seq* s) -> bool {
    const int32_t have = blocks_->n_tokens(s->id);
    const int32_t missing = static_cast<int32_t>(s->tokens.size()) - have;
    if (missing <= 0) return true;
    for (;;) {
      copies_.clear();
      const KvAllocResult a = blocks_->append(s->id, s->tokens.data() + have, missing, &copies_);
      if (a.ok()) {
        model_.copy_kv_blocks(*kv_, copies_);
        return true;
      }
      // Victim: the most recently admitted sequence not in the plan.
      Seq* victim = nullptr;
      for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
        Seq* v = it->get();
        const bool planned = std::any_of(plan.begin(), plan.end(), [&](const Planned& q) { return q.s == v; });
        if (!planned) {
          victim = v;
          break;
        }
      }
      QILIN_ASSERT(victim != nullptr);  // s itself is never planned here
      const bool self = victim == s;
      preempt(victim);
      if (self) return false;
    }
  };

  // 1. Decodes: every running sequence with one token left gets it.
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Seq* s = running_[i].get();
    if (static_cast<int32_t>(s->tokens.size()) - s->n_computed != 1) continue;
    if (!make_room(s)) {
      --i;  // s left running_; the next sequence moved into slot i
      continue;
    }
    plan.push_back({s, 1});
    --budget;
  }
  // While anything decodes, prompts get at most max_prefill_tokens of what is left.
  if (!plan.empty() && cfg_.max_prefill_tokens > 0) budget = std::min(budget, cfg_.max_prefill_tokens);
  // 2. Prefills in progress share what is left (their blocks were allocated on admission).
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Seq* s = running_[i].get();
    const int32_t left = static_cast<int32_t>(s->tokens.size()) - s->n_computed;
    if (left <= 1) continue;
    const int32_t n = std::min(left, budget);
    plan.push_back({s, n});
    budget -= n;
  }
  // 3. Admissions, front of the queue first (preempted sequences before new ones).
  // A request's choices all count against max_running from its admission on (they fork
  // when its prompt is done).
  while (budget > 0 && !waiting_.empty() &&
         static_cast<int32_t>(running_.size()) + 1 + waiting_.front()->pending_forks <=
             cfg_.max_running) {
    Seq* s = waiting_.front().get();
    int32_t cached = 0;
    const KvAllocResult a = blocks_->add_sequence(
        s->id, s->tokens.data(), static_cast<int32_t>(s->tokens.size()), &cached);
    if (!a.ok()) break;  // wait for blocks to free
    s->admitted = true;
    s->n_computed = cached;
    {
      std::lock_guard<std::mutex> lock(mu_);
      metrics_.prefix_hit_tokens += cached;
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    const int32_t n = std::min(static_cast<int32_t>(s->tokens.size()) - cached, budget);
    plan.push_back({s, n});
    budget -= n;
  }
  if (plan.empty()) return false;

  // One batch.
  batch_.clear();
  for (size_t k = 0; k < plan.size(); ++k) {
    Seq* s = plan[k].s;
    const std::vector<int32_t>& table = blocks_->block_table(s->id);
    batch_.seqs.push_back({table.data(), static_cast<int32_t>(table.size())});
    const int32_t end = s->n_computed + plan[k].count;
    const bool logits = end == static_cast<int32_t>(s->tokens.size());
    for (int32_t pos = s->n_computed; pos < end; ++pos) {
      batch_.add(s->tokens[pos], pos, static_cast<int32_t>(k), logits && pos == end - 1);
    }
  }
  auto out = model_.forward(batch_, *kv_, ws_, *pool_);
  if (!out) {
    for (const Planned& q : plan) finish_seq(q.s, FinishReason::Error, out.status().message());
  } else {
    const int32_t n_vocab = model_.hparams().n_vocab;
    // Sequences' samplers are independent: the rows are sampled on the pool (greedy is one
    // pass over n_vocab logits, top-k/top-p sort them), then emitted in order on this thread.
    // A prompt that forks its choices samples them in fork_choices, serially.
    sampled_.clear();
    const float* row = *out;
    for (const Planned& q : plan) {
      Seq* s = q.s;
      if (s->n_computed + q.count != static_cast<int32_t>(s->tokens.size())) continue;
      sampled_.push_back({s, row, Sampler::kNoToken});
      row += n_vocab;
    }
    std::atomic<size_t> next{0};
    pool_->run([&](int, int) {
      for (size_t i = next.fetch_add(1, std::memory_order_relaxed); i < sampled_.size();
           i = next.fetch_add(1, std::memory_order_relaxed)) {
        Sampled& j = sampled_[i];
        if (j.s->pending_forks == 0) j.id = j.s->sampler.sample(j.logits);
      }
    });
    for (const Planned& q : plan) {
      q.s->n_computed += q.count;
      blocks_->mark_computed(q.s->id, q.s->n_computed);
    }
    for (const Sampled& j : sampled_) {
      if (j.s->pending_forks > 0) {
        fork_choices(j.s, j.logits);
        sample_and_emit(j.s, j.logits);
      } else {
        emit(j.s, j.logits, j.id);
      }
    }
  }
  // Retire finished sequences.
  running_.erase(std::remove_if(running_.begin(), running_.end(),
                                [](const std::unique_ptr<Seq>& s) { return s->finished; }),
                 running_.end());
  return true;
}

bool Engine::step() {
  admit_new_requests();
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(),
                                [](const std::unique_ptr<Seq>& s) { return s->finished; }),
                 waiting_.end());
  running_.erase(std::remove_if(running_.begin(), running_.end(),
                                [](const std::unique_ptr<Seq>& s) { return s->finished; }),
                 running_.end());
  const bool worked = schedule_and_run();
  std::lock_guard<std::mutex> lock(mu_);
  if (worked) ++metrics_.steps;
  metrics_.waiting = static_cast<int32_t>(waiting_.size());
  metrics_.running = static_cast<int32_t>(running_.size());
  metrics_.kv = blocks_->stats();
  idle_ = inbox_.empty() && waiting_.empty() && running_.empty();
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
  for (auto& s : running_) finish_seq(s.get(), FinishReason::Cancelled);
  for (auto& s : waiting_) finish_seq(s.get(), FinishReason::Cancelled);
  running_.clear();
  waiting_.clear();
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
