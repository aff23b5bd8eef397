// Scheduler: which sequences run this step and how many of their tokens (vLLM v1's rule: each
// sequence's computed-token count catches up with its token count, which covers prefill,
// chunked prefill, prefix-cache hits and recompute alike). It owns the waiting queue and the
// running list, asks the BlockManager for blocks and preempts by recompute when they run out.
// It touches no tensors: the block copies it causes are returned in the plan, to perform on the
// KvCache before the forward pass, and it can be tested without a model.
// NOTE: the sequences are the caller's (the engine's derive from SchedSeq); the scheduler only
// points at them, and sets n_computed and admitted when it admits or preempts.
#pragma once

#include <cstdint>
#include <deque>
#include <span>
#include <vector>

#include "kv/block_manager.h"

namespace qilin {

// One sequence as the scheduler sees it.
struct SchedSeq {
  SeqId id = 0;                 // its name in the BlockManager
  std::vector<int32_t> tokens;  // prompt + generated; the newest may not be computed yet
  int32_t n_computed = 0;       // tokens whose K/V are in the cache
  // Choices of its request not forked yet: they start from it when its prompt is done, and
  // admission counts them against max_running.
  int32_t pending_forks = 0;
  bool admitted = false;  // holds blocks in the BlockManager
  bool finished = false;  // leaves the queues at the next retire()

  int32_t n_tokens() const { return static_cast<int32_t>(tokens.size()); }
};

struct SchedulerConfig {
  int32_t max_batch_tokens = 512;    // tokens per step (decode rows + prefill chunks)
  int32_t max_prefill_tokens = 128;  // prompt tokens per step while anything decodes; 0: no cap
  int32_t max_running = 64;          // sequences in flight
};

// One sequence's part of a step: tokens [n_computed, n_computed + n) of it.
struct PlannedSeq {
  SchedSeq* seq = nullptr;
  int32_t n = 0;
  // The chunk ends at the sequence's last token: its logits are wanted.
  bool wants_logits() const { return seq->n_computed + n == seq->n_tokens(); }
};

// What one step runs. Reused from step to step: its vectors keep their capacity.
struct StepPlan {
  std::vector<PlannedSeq> seqs;      // batch order: decodes, then prefills, then admissions
  std::vector<BlockCopy> copies;     // copy-on-write, in order, before the forward pass
  std::vector<SchedSeq*> preempted;  // in the order they were preempted
  int32_t n_tokens = 0;              // rows of the batch
  int64_t prefix_hit_tokens = 0;     // tokens this step's admissions found in the prefix cache
  bool empty() const { return seqs.empty(); }
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, BlockManager& blocks);

  // A new sequence: the back of the waiting queue.
  void add_waiting(SchedSeq* s);
  // A sequence already holding blocks (a forked choice): the back of the running list.
  void add_running(SchedSeq* s);

  // Plans one step, in three phases:
  //   1. every running sequence with exactly one token left to compute (a decode) gets it, in
  //      running order, while the budget of max_batch_tokens lasts;
  //   2. if anything decodes, the rest of the budget is capped at max_prefill_tokens; running
  //      sequences with more than one token left (prefills) take chunks of it in running order;
  //   3. waiting sequences are admitted from the front (their blocks allocated, prefix hits
  //      counted as computed) while the budget lasts, the BlockManager has room and the
  //      running sequences plus their unborn choices, plus 1 + pending_forks, stay within
  //      max_running; each takes a chunk of the budget.
  // A decode that needs a block when none is free preempts the running sequence admitted last
  // (always one not planned yet: plans fill the running list from its front), itself included
  // when it is the last: its blocks are freed, n_computed becomes 0 and it goes to the front
  // of the waiting queue, to be recomputed. Each preemption is O(1) plus the freeing.
  // The plan stays valid until the next call; admitted sequences have n_computed set, and the
  // caller advances n_computed by each PlannedSeq's n after the forward pass.
  const StepPlan& schedule();

  // Drops finished sequences from both queues, keeping the order of the rest.
  void retire();
  // Empties both queues (the caller has finished and freed every sequence).
  void clear();

  std::span<SchedSeq* const> running() const { return running_; }
  const std::deque<SchedSeq*>& waiting() const { return waiting_; }
  const SchedulerConfig& config() const { return cfg_; }

 private:
  // Allocates the blocks s's new tokens need, preempting from the back of running_ until they
  // fit. False if s itself was preempted.
  bool make_room(SchedSeq* s);
  void preempt_last();

  SchedulerConfig cfg_;
  BlockManager& blocks_;
  std::vector<SchedSeq*> running_;  // admission order
  std::deque<SchedSeq*> waiting_;   // new and preempted, front first
  StepPlan plan_;
};

}  // namespace qilin
