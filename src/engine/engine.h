// Engine: continuous batching of many requests over one model and one paged KV cache.
// Every step the Scheduler (engine/scheduler.h) plans which sequences run how many tokens:
// running sequences decode one token each, prompts still being prefilled take chunks of a
// token budget, waiting ones are admitted; when the KV pool runs out the most recently admitted
// sequences are preempted (their blocks freed) and recomputed later, so nothing fails because
// the pool was briefly full. The engine builds one Batch from the plan, runs it, samples and
// streams each choice's new text to its request's callback. Requests join and leave at every
// step.
// NOTE: callbacks run on the engine thread, between steps: they must be quick (queue the event
// and return) and must not call back into the Engine. The event they receive is the engine's
// reused scratch, valid only during the call: copy what is kept.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/thread_pool.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "kv/block_manager.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "ops/batch.h"
#include "ops/kv_cache.h"

namespace qilin {

using RequestId = uint64_t;

struct RequestParams {
  std::vector<int32_t> prompt;    // token ids, BOS included when the model wants one
  int32_t max_tokens = 16;        // generated tokens per choice at most
  int32_t n = 1;                  // choices: parallel samples sharing the prompt's KV blocks
  SamplingParams sampling;        // choice i samples with seed + i
  std::vector<std::string> stop;  // stop strings: the text is cut before them
  bool ignore_eos = false;
  bool logprobs = false;          // report each generated token's log-probability
  int32_t top_logprobs = 0;       // and this many most likely alternatives
                                  // (0..Sampler::kMaxTopLogprobs)
};

enum class FinishReason { None, Stop, Length, Cancelled, Error };
const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled", "error"

struct GeneratedToken {
  int32_t token = 0;
  float logprob = 0;
  std::vector<TokenLogprob> top;  // top_logprobs alternatives, most likely first
};

// One step's news for one choice of a request.
struct ChoiceEvent {
  RequestId id = 0;
  int32_t index = 0;                   // choice index in [0, n)
  std::string text;                    // new final text (held back while it may start a stop
                                       // string or ends in an incomplete UTF-8 sequence)
  std::vector<GeneratedToken> tokens;  // tokens generated since the last event
  FinishReason finish = FinishReason::None;  // set on the choice's last event
  std::string error;                   // FinishReason::Error: what went wrong
  int32_t n_prompt = 0;                // prompt tokens of the request
  int32_t n_generated = 0;             // tokens this choice generated so far
};

using EventFn = std::function<void(const ChoiceEvent&)>;

// Why submit() refused a request; the server maps these to HTTP statuses.
enum class SubmitError { None, Invalid, TooLong, QueueFull, ShuttingDown };

struct SubmitResult {
  RequestId id = 0;
  SubmitError error = SubmitError::None;
  std::string message;  // names the field and value at fault
  bool ok() const { return error == SubmitError::None; }
};

struct EngineConfig {
  int n_threads = 1;
  size_t kv_cache_bytes = size_t{512} << 20;  // KV pool size (ignored when kv_blocks > 0)
  int32_t kv_blocks = 0;
  int32_t block_size = 16;
  int32_t max_batch_tokens = 512;  // tokens per step (decode rows + prefill chunks)
  // Prompt tokens a step may carry while other sequences decode (stall-free batching, as in
  // Sarathi-Serve): a burst of new prompts is then spread over several steps instead of one
  // long step that delays every decode and every prompt in it to its end. With nothing
  // decoding, prompts fill max_batch_tokens. 0: no separate cap.
  int32_t max_prefill_tokens = 128;
  int32_t max_running = 64;        // sequences in flight (each choice counts)
  int32_t max_queue = 1024;        // waiting requests before QueueFull
  int32_t max_seq_len = 0;         // prompt + generated per sequence; 0: the model's context
  bool flash_attn = true;
  KvType kv_type = kDefaultKvType;  // the KV pool's element format (kv_cache_bytes holds more of
                                 // the smaller ones)
  bool prefix_cache = true;
};

// Cumulative counts and a histogram with fixed bounds (Prometheus-style, seconds).
struct Histogram {
  std::vector<double> bounds;      // upper bounds, ascending; +Inf implied
  std::vector<uint64_t> counts;    // [bounds.size() + 1], not cumulative
  double sum = 0;
  uint64_t count = 0;
  void observe(double v);
};

struct EngineMetrics {
  uint64_t requests_received = 0;
  uint64_t requests_finished = 0;   // every choice finished (any reason but cancelled)
  uint64_t requests_cancelled = 0;
  uint64_t requests_rejected = 0;
  uint64_t prompt_tokens = 0;       // of accepted requests
  uint64_t generated_tokens = 0;
  uint64_t prefix_hit_tokens = 0;
  uint64_t preemptions = 0;
  uint64_t steps = 0;
  int32_t waiting = 0;              // requests not yet admitted (or preempted)
  int32_t running = 0;              // sequences admitted
  BlockManagerStats kv;
  Histogram ttft;                   // submit -> first token, seconds
  Histogram itl;                    // between a choice's consecutive tokens, seconds
};

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> create(const LlamaModel& model, const Tokenizer& tok,
                                                const EngineConfig& config);
  ~Engine();  // stops the loop thread if started

  // Thread-safe. Queues the request; on_event receives every choice's events until each has
  // finished. Refuses at once what can never run (a prompt plus max_tokens longer than a
  // sequence may be, or than the whole pool holds) and what the full queue cannot take.
  SubmitResult submit(RequestParams params, EventFn on_event);
  // Thread-safe. The request's choices finish with FinishReason::Cancelled at the next step
  // and their blocks are freed. Unknown or finished ids are ignored.
  void cancel(RequestId id);
  EngineMetrics metrics() const;  // thread-safe snapshot

  // The loop on its own thread (start/stop), or driven by hand (step) in tests.
  void start();
  void stop();  // finishes nothing: pending requests are cancelled
  // One iteration: admits, schedules, runs one batch, samples, emits. Returns false when
  // there was nothing to do.
  bool step();
  // Blocks until no request is waiting or running (tests, shutdown).
  void wait_idle();

  const EngineConfig& config() const { return cfg_; }
  int32_t max_seq_len() const { return max_seq_len_; }

 private:
  struct Request;
  struct Seq;
  Engine(const LlamaModel& model, const Tokenizer& tok, const EngineConfig& config);
  void admit_new_requests();
  bool schedule_and_run();
  void finish_seq(Seq* s, FinishReason why, std::string_view error = {});
  // Samples s's next token on logits and, when its request asks, the token's logprobs.
  void sample(Seq* s, const float* logits);
  void emit(Seq* s);  // streams s's sampled token (s->picked)
  void fork_choices(Seq* s, const float* logits);
  void retire();      // drops finished sequences
  std::string_view piece(int32_t token) const {
    const uint32_t b = piece_off_[token], e = piece_off_[token + 1];
    return std::string_view(pieces_).substr(b, e - b);
  }

  const LlamaModel& model_;
  const Tokenizer& tok_;
  EngineConfig cfg_;
  int32_t max_seq_len_ = 0;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<KvCache> kv_;
  std::unique_ptr<BlockManager> blocks_;
  std::unique_ptr<Scheduler> sched_;
  Workspace ws_;
  Batch batch_;
  struct Sampled {  // a row of this step's logits and its sequence
    Seq* s;
    const float* logits;
  };
  std::vector<Sampled> sampled_;  // reused every step
  // Every token's text, concatenated at creation so that streaming a token allocates nothing.
  std::string pieces_;
  std::vector<uint32_t> piece_off_;  // [n_vocab + 1] token t is pieces_[off[t], off[t + 1])
  // Events are built here and handed to the callbacks by reference: reused, so emitting
  // allocates nothing once their strings have grown.
  ChoiceEvent token_ev_;  // one token (tokens.size() == 1, its top's capacity reserved)
  ChoiceEvent end_ev_;    // a choice's end (no tokens)

  // Shared with submitters (mu_).
  mutable std::mutex mu_;
  std::condition_variable cv_;       // work arrived / engine idle
  std::deque<std::shared_ptr<Request>> inbox_;
  std::vector<RequestId> cancels_;
  EngineMetrics metrics_;
  RequestId next_id_ = 1;
  bool stopping_ = false;
  bool idle_ = true;

  // Engine-thread only. The scheduler's queues point into seqs_, which owns every sequence.
  std::vector<std::unique_ptr<Seq>> seqs_;
  int32_t n_finished_ = 0;  // finished sequences not retired yet
  SeqId next_seq_ = 1;
  std::thread thread_;
  std::atomic<bool> started_{false};
};

}  // namespace qilin
