// Scheduler: see scheduler.h for the policy.
// NOTE: in phase 1 the planned sequences are exactly the decodes found so far, all in front of
// the one being placed, so the running sequence admitted last is never planned: preemption
// pops the back of the running list instead of searching it against the plan.
#include "engine/scheduler.h"

#include <algorithm>

#include "core/assert.h"

namespace qilin {

Scheduler::Scheduler(const SchedulerConfig& config, BlockManager& blocks)
    : cfg_(config), blocks_(blocks) {
  running_.reserve(static_cast<size_t>(std::max(cfg_.max_running, 1)));
  plan_.seqs.reserve(static_cast<size_t>(std::max(cfg_.max_running, 1)));
}

void Scheduler::add_waiting(SchedSeq* s) {
  QILIN_ASSERT(!s->admitted);
  waiting_.push_back(s);
}

void Scheduler::add_running(SchedSeq* s) {
  QILIN_ASSERT(s->admitted);
  running_.push_back(s);
}

void Scheduler::preempt_last() {
  SchedSeq* v = running_.back();
  QILIN_ASSERT(v->admitted);
  blocks_.free(v->id);  // full computed blocks stay cached: recompute often hits them
  v->admitted = false;
  v->n_computed = 0;
  running_.pop_back();
  waiting_.push_front(v);
  plan_.preempted.push_back(v);
}

bool Scheduler::make_room(SchedSeq* s) {
  const int32_t have = blocks_.n_tokens(s->id);
  const int32_t missing = s->n_tokens() - have;
  if (missing <= 0) return true;
  for (;;) {
    if (blocks_.append(s->id, s->tokens.data() + have, missing, &plan_.copies).ok()) return true;
    const bool self = running_.back() == s;
    preempt_last();
    if (self) return false;
  }
}

const StepPlan& Scheduler::schedule() {
  plan_.seqs.clear();
  plan_.copies.clear();
  plan_.preempted.clear();
  plan_.n_tokens = 0;
  plan_.prefix_hit_tokens = 0;
  int32_t budget = cfg_.max_batch_tokens;

  // 1. Decodes.
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    SchedSeq* s = running_[i];
    if (s->n_tokens() - s->n_computed != 1) continue;
    if (!make_room(s)) break;  // s was the last running sequence: nothing follows it
    plan_.seqs.push_back({s, 1});
    plan_.n_tokens += 1;
    --budget;
  }
  // While anything decodes, prompts get at most max_prefill_tokens of what is left.
  if (!plan_.seqs.empty() && cfg_.max_prefill_tokens > 0) {
    budget = std::min(budget, cfg_.max_prefill_tokens);
  }
  // 2. Prefills in progress (their blocks were allocated on admission).
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    SchedSeq* s = running_[i];
    const int32_t left = s->n_tokens() - s->n_computed;
    if (left <= 1) continue;
    const int32_t n = std::min(left, budget);
    plan_.seqs.push_back({s, n});
    plan_.n_tokens += n;
    budget -= n;
  }
  // 3. Admissions, front of the queue first (preempted sequences before new ones). A request's
  // choices count against max_running from its admission on (they fork when its prompt is
  // done), so a running parent counts with its unborn choices too.
  int32_t slots = 0;
  for (const SchedSeq* s : running_) slots += 1 + s->pending_forks;
  while (budget > 0 && !waiting_.empty() &&
         slots + 1 + waiting_.front()->pending_forks <= cfg_.max_running) {
    SchedSeq* s = waiting_.front();
    int32_t cached = 0;
    if (!blocks_.add_sequence(s->id, s->tokens.data(), s->n_tokens(), &cached).ok()) break;
    s->admitted = true;
    s->n_computed = cached;
    slots += 1 + s->pending_forks;
    plan_.prefix_hit_tokens += cached;
    running_.push_back(s);
    waiting_.pop_front();
    const int32_t n = std::min(s->n_tokens() - cached, budget);
    plan_.seqs.push_back({s, n});
    plan_.n_tokens += n;
    budget -= n;
  }
  return plan_;
}

void Scheduler::retire() {
  auto done = [](const SchedSeq* s) { return s->finished; };
  running_.erase(std::remove_if(running_.begin(), running_.end(), done), running_.end());
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(), done), waiting_.end());
}

void Scheduler::clear() {
  running_.clear();
  waiting_.clear();
  plan_.seqs.clear();
  plan_.preempted.clear();
}

}  // namespace qilin
