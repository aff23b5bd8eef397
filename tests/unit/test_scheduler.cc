// Scheduler without a model: exact plans, block ids, copies and preemption order on small
// hand-computed cases (block size 4, a few blocks). Each expected value is derived in the
// comment above it from the policy in scheduler.h and the BlockManager's rules: a fresh pool
// hands out the lowest free id first; free() releases a table's last block first, pushing
// unregistered blocks on the free stack (so the table's first block ends on top) and
// registered ones on the tail of the evictable (LRU) list; allocation takes the free stack
// before evicting the LRU head.
#include <gtest/gtest.h>

#include <deque>
#include <numeric>
#include <utility>
#include <vector>

#include "engine/scheduler.h"

namespace qilin {
namespace {

std::vector<int32_t> iota_tokens(int32_t n, int32_t start) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), start);
  return t;
}

using Planned = std::vector<std::pair<SeqId, int32_t>>;  // (sequence, tokens) in batch order

// The engine's side of a step, without a model: after the forward pass every planned
// sequence's computed count advances, and each whose last token was computed samples one more
// token (a made-up id), as Engine::emit appends it.
class Harness {
 public:
  Harness(int32_t n_blocks, bool prefix_caching, SchedulerConfig cfg)
      : blocks(n_blocks, 4, prefix_caching), sched(cfg, blocks) {}

  SchedSeq* add(SeqId id, std::vector<int32_t> prompt, int32_t pending_forks = 0) {
    SchedSeq& s = seqs_.emplace_back();
    s.id = id;
    s.tokens = std::move(prompt);
    s.pending_forks = pending_forks;
    sched.add_waiting(&s);
    return &s;
  }
  // Schedules one step and completes it; returns its plan as (id, n) pairs.
  Planned step() {
    const StepPlan& plan = sched.schedule();
    Planned out;
    std::vector<SchedSeq*> sampled;
    for (const PlannedSeq& q : plan.seqs) {
      out.emplace_back(q.seq->id, q.n);
      if (q.wants_logits()) sampled.push_back(q.seq);
    }
    last_copies = plan.copies;
    last_preempted.clear();
    for (SchedSeq* s : plan.preempted) last_preempted.push_back(s->id);
    last_prefix_hits = plan.prefix_hit_tokens;
    last_n_tokens = plan.n_tokens;
    for (const PlannedSeq& q : plan.seqs) {
      q.seq->n_computed += q.n;
      blocks.mark_computed(q.seq->id, q.seq->n_computed);
    }
    for (SchedSeq* s : sampled) s->tokens.push_back(next_token_++);
    blocks.check_invariants();
    return out;
  }
  // A sequence ends (the engine's finish_seq and retire).
  void finish(SchedSeq* s) {
    if (s->admitted) blocks.free(s->id);
    s->admitted = false;
    s->finished = true;
    sched.retire();
  }
  std::vector<SeqId> running_ids() const {
    std::vector<SeqId> r;
    for (SchedSeq* s : sched.running()) r.push_back(s->id);
    return r;
  }
  std::vector<SeqId> waiting_ids() const {
    std::vector<SeqId> r;
    for (SchedSeq* s : sched.waiting()) r.push_back(s->id);
    return r;
  }

  BlockManager blocks;
  Scheduler sched;
  std::vector<BlockCopy> last_copies;
  std::vector<SeqId> last_preempted;
  int64_t last_prefix_hits = 0;
  int32_t last_n_tokens = 0;

 private:
  std::deque<SchedSeq> seqs_;  // stable addresses
  int32_t next_token_ = 1000;
};

using Table = std::vector<int32_t>;

TEST(Scheduler, ChunkedPrefillWithinTheTokenBudget) {
  // Budget 8 tokens per step, 4 for prompts while anything decodes; 16 blocks, no prefix cache.
  Harness h(16, false, {/*max_batch_tokens=*/8, /*max_prefill_tokens=*/4, /*max_running=*/4});
  SchedSeq* a = h.add(1, iota_tokens(10, 100));
  SchedSeq* b = h.add(2, iota_tokens(6, 200));
  // Step 1: nothing runs, so no prefill cap. A is admitted: blocks_for(10) = 3 blocks, 0 1 2;
  // it takes min(10, 8) = 8 tokens and the budget is spent, so B waits.
  EXPECT_EQ(h.step(), (Planned{{1, 8}}));
  EXPECT_EQ(h.blocks.block_table(1), (Table{0, 1, 2}));
  EXPECT_EQ(h.waiting_ids(), (std::vector<SeqId>{2}));
  EXPECT_EQ(a->n_computed, 8);
  // Step 2: A has 2 tokens left (a prefill, not a decode), nothing decodes, so the budget
  // stays 8: A takes 2, then B is admitted (blocks 3 4) and takes the remaining 6 = all of it.
  // Both chunks end at their sequences' last tokens, so both sample: A 11 tokens, B 7.
  EXPECT_EQ(h.step(), (Planned{{1, 2}, {2, 6}}));
  EXPECT_EQ(h.blocks.block_table(2), (Table{3, 4}));
  EXPECT_EQ(a->n_tokens(), 11);
  EXPECT_EQ(b->n_tokens(), 7);
  // Step 3: A and B decode 1 each (token 11 fits A's 3 blocks, token 7 B's 2: no new block).
  // The budget left, 6, is capped at max_prefill_tokens = 4 while they decode: C (9 tokens,
  // blocks 5 6 7) is admitted with a chunk of 4.
  SchedSeq* c = h.add(3, iota_tokens(9, 300));
  EXPECT_EQ(h.step(), (Planned{{1, 1}, {2, 1}, {3, 4}}));
  EXPECT_EQ(h.last_n_tokens, 6);
  EXPECT_EQ(h.blocks.block_table(3), (Table{5, 6, 7}));
  // Step 4: A (12th token: still 3 blocks) and B (8th: still 2) decode; C has 5 left and
  // gets the capped 4 again.
  EXPECT_EQ(h.step(), (Planned{{1, 1}, {2, 1}, {3, 4}}));
  // Step 5: C has 1 left (its last prompt token), so it is a decode now, in running order after
  // A and B. A's 13th token needs a fourth block, the lowest free id 8; B's 9th a third, 9.
  // C's token 9 was given blocks at admission.
  EXPECT_EQ(h.step(), (Planned{{1, 1}, {2, 1}, {3, 1}}));
  EXPECT_EQ(h.blocks.block_table(1), (Table{0, 1, 2, 8}));
  EXPECT_EQ(h.blocks.block_table(2), (Table{3, 4, 9}));
  EXPECT_EQ(c->n_computed, 9);
  EXPECT_EQ(c->n_tokens(), 10);
  // Step 6: three decodes, no new block (A's 14th token in its 4 blocks, B's 10th and C's
  // 10th in their 3): 10 of the 16 blocks are in use.
  EXPECT_EQ(h.step(), (Planned{{1, 1}, {2, 1}, {3, 1}}));
  EXPECT_EQ(h.blocks.block_table(3), (Table{5, 6, 7}));
  EXPECT_EQ(h.blocks.n_available(), 6);
  EXPECT_TRUE(h.last_preempted.empty());
}

TEST(Scheduler, DecodeBudgetRunsOutBeforeTheLaterSequences) {
  // Budget 2: of three decoding sequences only the first two in running order run; the
  // third waits for the next step (and is not preempted).
  Harness h(16, false, {/*max_batch_tokens=*/2, /*max_prefill_tokens=*/0, /*max_running=*/4});
  h.add(1, {7});
  h.add(2, {8});
  h.add(3, {9});
  // Step 1: 1-token prompts: 1 and 2 admitted (1 token each), budget spent before 3.
  EXPECT_EQ(h.step(), (Planned{{1, 1}, {2, 1}}));
  // Step 2: 1 and 2 decode and spend the budget; 3 still waits.
  EXPECT_EQ(h.step(), (Planned{{1, 1}, {2, 1}}));
  EXPECT_EQ(h.waiting_ids(), (std::vector<SeqId>{3}));
}

TEST(Scheduler, PreemptsTheLastAdmittedInOrderAndRequeuesThemInFront) {
  // 4 blocks of 4 tokens, no prefix cache, budget 16, no prefill cap.
  Harness h(4, false, {16, 0, 4});
  SchedSeq* a = h.add(1, iota_tokens(4, 100));
  SchedSeq* b = h.add(2, iota_tokens(4, 200));
  SchedSeq* c = h.add(3, iota_tokens(3, 300));
  SchedSeq* d = h.add(4, iota_tokens(3, 400));
  // Step 1: all four admitted, one block each in order (0 1 2 3), 4+4+3+3 = 14 <= 16 tokens.
  // Each then samples: A 5 tokens, B 5, C 4, D 4.
  EXPECT_EQ(h.step(), (Planned{{1, 4}, {2, 4}, {3, 3}, {4, 3}}));
  EXPECT_EQ(h.blocks.n_available(), 0);
  // Step 2: A's 5th token needs a second block; none is free, so the last admitted, D, is
  // preempted (block 3 freed) and A takes block 3. B's 5th token needs one too: the last
  // running is now C, preempted (block 2 freed), and B takes block 2. C and D fit in their
  // blocks, but are no longer running. Each preempted sequence went to the front of the
  // queue: D first, then C in front of it, so the earlier admitted is first again. Admission
  // then finds no free block for C (4 tokens: 1 block).
  EXPECT_EQ(h.step(), (Planned{{1, 1}, {2, 1}}));
  EXPECT_EQ(h.last_preempted, (std::vector<SeqId>{4, 3}));
  EXPECT_EQ(h.waiting_ids(), (std::vector<SeqId>{3, 4}));
  EXPECT_EQ(h.running_ids(), (std::vector<SeqId>{1, 2}));
  EXPECT_EQ(h.blocks.block_table(1), (Table{0, 3}));
  EXPECT_EQ(h.blocks.block_table(2), (Table{1, 2}));
  EXPECT_FALSE(c->admitted);
  EXPECT_EQ(c->n_computed, 0);  // recomputed from the start
  EXPECT_EQ(d->n_computed, 0);
  EXPECT_EQ(c->n_tokens(), 4);  // its prompt and the token it generated
  // A finishes: its table 0 3 is released last block first, so the free stack gets 3 then 0
  // and block 0 is on top.
  h.finish(a);
  // Step 3: B's 7th token fits its 2 blocks. C is admitted again (4 tokens, block 0: the
  // top), recomputing all 4; then D (4 tokens, block 3).
  EXPECT_EQ(h.step(), (Planned{{2, 1}, {3, 4}, {4, 4}}));
  EXPECT_EQ(h.blocks.block_table(3), (Table{0}));
  EXPECT_EQ(h.blocks.block_table(4), (Table{3}));
  EXPECT_EQ(h.running_ids(), (std::vector<SeqId>{2, 3, 4}));
  EXPECT_EQ(b->n_tokens(), 7);
}

TEST(Scheduler, ADecodeThatIsLastPreemptsItself) {
  // 3 blocks. A (6 tokens) takes blocks 0 1, B (4 tokens) block 2; after sampling A has 7
  // tokens and B 5.
  Harness h(3, false, {16, 0, 4});
  h.add(1, iota_tokens(6, 100));
  SchedSeq* b = h.add(2, iota_tokens(4, 200));
  EXPECT_EQ(h.step(), (Planned{{1, 6}, {2, 4}}));
  // Step 2: A's 7th token fits block 1. B's 5th needs a block, none is free, and B itself is
  // the last running sequence: it is preempted (block 2 freed) and not planned. Admission
  // then needs 2 blocks for B's 5 tokens and finds 1.
  EXPECT_EQ(h.step(), (Planned{{1, 1}}));
  EXPECT_EQ(h.last_preempted, (std::vector<SeqId>{2}));
  EXPECT_EQ(h.waiting_ids(), (std::vector<SeqId>{2}));
  EXPECT_FALSE(b->admitted);
  EXPECT_EQ(h.blocks.n_available(), 1);
}

TEST(Scheduler, RecomputeHitsItsOwnCachedPrefixBlocks) {
  // 4 blocks with the prefix cache.
  Harness h(4, true, {16, 0, 4});
  SchedSeq* a = h.add(1, iota_tokens(8, 100));
  h.add(2, iota_tokens(5, 200));
  // Step 1: A gets blocks 0 1, B blocks 2 3 (nothing cached yet). After the pass the full
  // computed blocks become cache entries: A's 0 and 1, B's 2 (B's block 3 holds 1 token).
  // A samples its 9th token, B its 6th.
  EXPECT_EQ(h.step(), (Planned{{1, 8}, {2, 5}}));
  EXPECT_EQ(h.last_prefix_hits, 0);
  EXPECT_TRUE(h.blocks.is_cached_entry(2));
  EXPECT_FALSE(h.blocks.is_cached_entry(3));
  // Step 2: A's 9th token needs a third block; none is available, so B (last) is preempted:
  // block 3 (unregistered) goes to the free stack, block 2 (an entry) to the evictable list.
  // A takes the free block 3. Admission of B (6 tokens: 2 blocks) finds its first block
  // cached in block 2 but that one is evictable, so only 0 blocks remain for the other: wait.
  EXPECT_EQ(h.step(), (Planned{{1, 1}}));
  EXPECT_EQ(h.last_preempted, (std::vector<SeqId>{2}));
  EXPECT_EQ(h.blocks.block_table(1), (Table{0, 1, 3}));
  // A ends: releases 3 (free stack), then 1 and 0 (entries: to the evictable tail), so the
  // evictable list is 2 1 0, least recently used first.
  h.finish(a);
  // Step 3: B is admitted: its first block (tokens 200..203) is cached in block 2, its second
  // comes from the free stack (3); 4 tokens count as computed and 2 are left.
  // D, a new prompt equal to A's 8 tokens, finds A's first block in 0 (its last block is
  // never taken from the cache) and needs one more: the free stack is empty, so the least
  // recently used evictable block not hit, 1, is evicted and reused.
  h.add(4, iota_tokens(8, 100));
  EXPECT_EQ(h.step(), (Planned{{2, 2}, {4, 4}}));
  EXPECT_EQ(h.last_prefix_hits, 8);
  EXPECT_EQ(h.blocks.block_table(2), (Table{2, 3}));
  EXPECT_EQ(h.blocks.block_table(4), (Table{0, 1}));
  EXPECT_EQ(h.blocks.stats().evictions, 1);
}

TEST(Scheduler, AForkedChoiceCopiesTheSharedPartialBlockOnItsFirstDecode) {
  // No prefix cache, 4 blocks. A's 6-token prompt takes blocks 0 1 (block 1 holds 2 tokens).
  Harness h(4, false, {16, 0, 4});
  SchedSeq* a = h.add(1, iota_tokens(6, 100), /*pending_forks=*/1);
  EXPECT_EQ(h.step(), (Planned{{1, 6}}));
  // The engine forks choice 1 from A once the prompt's logits exist; both then hold 7 tokens
  // (A got its sample from the harness; the child takes a different one).
  SchedSeq child;
  child.id = 2;
  child.tokens.assign(a->tokens.begin(), a->tokens.end() - 1);
  child.tokens.push_back(555);
  child.n_computed = a->n_computed;
  child.admitted = true;
  a->pending_forks = 0;
  h.blocks.fork(1, 2);
  h.sched.add_running(&child);
  // Step 2: A's 7th token goes into block 1, shared by both (reference count 2) and partly
  // filled: copy-on-write to a new block, the lowest free id 2, copying its 2 slots. Then the
  // child's 7th token: block 1 is now its alone, written in place.
  EXPECT_EQ(h.step(), (Planned{{1, 1}, {2, 1}}));
  ASSERT_EQ(h.last_copies.size(), 1u);
  EXPECT_EQ(h.last_copies[0].src, 1);
  EXPECT_EQ(h.last_copies[0].dst, 2);
  EXPECT_EQ(h.last_copies[0].n_slots, 2);
  EXPECT_EQ(h.blocks.block_table(1), (Table{0, 2}));
  EXPECT_EQ(h.blocks.block_table(2), (Table{0, 1}));
  EXPECT_EQ(h.blocks.ref_count(0), 2);
}

TEST(Scheduler, AdmissionCountsUnbornChoicesAndKeepsQueueOrder) {
  // max_running 3. A runs alone; X at the front of the queue would start 1 + 2 choices:
  // 1 + 1 + 2 = 4 > 3, so X waits, and Y behind it waits too (admission is in queue order).
  Harness h(16, false, {16, 0, 3});
  h.add(1, {5, 6});
  EXPECT_EQ(h.step(), (Planned{{1, 2}}));
  h.add(2, {7, 8}, /*pending_forks=*/2);
  h.add(3, {9});
  EXPECT_EQ(h.step(), (Planned{{1, 1}}));
  EXPECT_EQ(h.waiting_ids(), (std::vector<SeqId>{2, 3}));
}

TEST(Scheduler, ARunningParentCountsItsUnbornChoices) {
  // max_running 4. X (3 choices) is admitted first: 0 + 1 + 2 = 3 <= 4. Y (3 choices) would
  // make X's 3 plus its own 3 = 6 > 4 once both fork, so it waits although X is one running
  // sequence for now; Z behind it waits too.
  Harness h(16, false, {16, 0, 4});
  h.add(1, {5, 6}, /*pending_forks=*/2);
  h.add(2, {7, 8}, /*pending_forks=*/2);
  h.add(3, {9});
  EXPECT_EQ(h.step(), (Planned{{1, 2}}));
  EXPECT_EQ(h.waiting_ids(), (std::vector<SeqId>{2, 3}));
}

TEST(Scheduler, NothingToDoIsAnEmptyPlan) {
  Harness h(2, false, {16, 0, 4});
  EXPECT_TRUE(h.step().empty());
  // A prompt needing more blocks than the pool holds just waits (the engine refuses those at
  // submit): the plan is empty, nothing changes.
  h.add(1, iota_tokens(12, 0));
  EXPECT_TRUE(h.step().empty());
  EXPECT_EQ(h.waiting_ids(), (std::vector<SeqId>{1}));
  EXPECT_EQ(h.blocks.n_available(), 2);
}

}  // namespace
}  // namespace qilin
