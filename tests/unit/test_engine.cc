// Engine (continuous batching) on the real model, driven step by step: concurrent greedy
// requests give the tokens each gives alone (Generator), chunked prefill never stalls a decode,
// preemption under a tiny KV pool recomputes and still gives the same tokens, cancellation
// frees blocks, n > 1 choices fork, and bad requests are refused by name.
#include <gtest/gtest.h>

#include <map>
#include <mutex>

#include "engine/engine.h"
#include "engine/generator.h"
#include "test_util.h"

namespace qilin {
namespace {

struct Collected {
  std::map<int32_t, std::vector<int32_t>> tokens;  // per choice
  std::map<int32_t, std::string> text;
  std::map<int32_t, FinishReason> finish;
  std::map<int32_t, std::vector<int32_t>> steps_with_token;  // engine step index per token
  int events = 0;
};

class EngineTest : public ::testing::Test {
 protected:
  // F32 weights: batched and single-sequence steps then agree to float rounding, so greedy
  // tokens can be compared exactly (with the 8-bit formats, activation re-quantization turns
  // last-bit differences between the batched and one-row kernels into ~1 logit, and greedy
  // paths part after a few tokens: LlamaBatch.DecodeStepsAfterPrefillMatchOneShotPrefill).
  void SetUp() override {
    const std::string path = test::f32_model_path();
    ASSERT_FALSE(path.empty());
    auto m = LlamaModel::load(path);
    ASSERT_TRUE(m.is_ok()) << m.status().message();
    model_ = std::move(*m);
    auto t = Tokenizer::from_gguf(model_->gguf());
    ASSERT_TRUE(t.is_ok()) << t.status().message();
    tok_ = std::move(*t);
  }

  std::unique_ptr<Engine> make(EngineConfig c) {
    c.n_threads = 2;
    auto e = Engine::create(*model_, *tok_, c);
    EXPECT_TRUE(e.is_ok()) << e.status().message();
    return std::move(*e);
  }
  RequestParams greedy(const std::string& prompt, int32_t max_tokens) {
    RequestParams p;
    p.prompt = tok_->encode(prompt, true, true);
    p.max_tokens = max_tokens;
    p.sampling.temperature = 0;
    p.ignore_eos = true;
    return p;
  }
  // What the prompt gives alone: the Generator's greedy tokens.
  std::vector<int32_t> alone(const std::vector<int32_t>& prompt, int32_t n) {
    GeneratorConfig gc;
    gc.n_ctx = 1024;
    gc.n_threads = 2;
    auto g = Generator::create(*model_, gc);
    EXPECT_TRUE(g.is_ok());
    EXPECT_TRUE((*g)->feed(prompt).is_ok());
    std::vector<int32_t> out;
    for (int32_t i = 0; i < n; ++i) {
      const float* l = (*g)->logits();
      const int32_t t = static_cast<int32_t>(std::max_element(l, l + model_->hparams().n_vocab) - l);
      out.push_back(t);
      if (i + 1 < n) {
        EXPECT_TRUE((*g)->feed(&t, 1).is_ok());
      }
    }
    return out;
  }
  EventFn collect(Collected* c, const int* step) {
    return [c, step](const ChoiceEvent& ev) {
      ++c->events;
      for (const GeneratedToken& g : ev.tokens) {
        c->tokens[ev.index].push_back(g.token);
        c->steps_with_token[ev.index].push_back(*step);
      }
      c->text[ev.index] += ev.text;
      if (ev.finish != FinishReason::None) c->finish[ev.index] = ev.finish;
    };
  }
  void run_until_idle(Engine& e, int* step, int max_steps = 10000) {
    while (e.step()) {
      ++*step;
      ASSERT_LT(*step, max_steps);
    }
  }
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<Tokenizer> tok_;
};

const char* kPrompts[] = {
    "The capital of France is",
    "Write a haiku about autumn leaves:",
    "List three prime numbers:",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "def fibonacci(n):",
    "Translate to French: good morning",
};

TEST_F(EngineTest, ConcurrentGreedyRequestsEqualTheSamePromptsAlone) {
  EngineConfig c;
  c.max_batch_tokens = 64;  // the long prompts prefill in chunks beside the decodes
  auto e = make(c);
  int step = 0;
  std::vector<Collected> got(6);
  std::vector<RequestParams> reqs;
  for (int i = 0; i < 6; ++i) {
    reqs.push_back(greedy(kPrompts[i], 8 + 3 * i));
    ASSERT_TRUE(e->submit(reqs.back(), collect(&got[i], &step)).ok());
  }
  run_until_idle(*e, &step);
  for (int i = 0; i < 6; ++i) {
    SCOPED_TRACE(kPrompts[i]);
    EXPECT_EQ(got[i].finish[0], FinishReason::Length);
    EXPECT_EQ(got[i].tokens[0], alone(reqs[i].prompt, reqs[i].max_tokens));
    std::string text;
    for (int32_t t : got[i].tokens[0]) text += tok_->token_to_piece(t);
    EXPECT_EQ(got[i].text[0], text);
  }
  const EngineMetrics m = e->metrics();
  EXPECT_EQ(m.requests_finished, 6u);
  EXPECT_EQ(m.kv.used, 0);
  EXPECT_EQ(m.running, 0);
  EXPECT_EQ(m.waiting, 0);
  // Batched: far fewer steps than the tokens generated one request at a time.
  EXPECT_LT(m.steps, m.generated_tokens);
}

TEST_F(EngineTest, ChunkedPrefillNeverStallsADecode) {
  EngineConfig c;
  c.max_batch_tokens = 32;
  auto e = make(c);
  int step = 0;
  Collected a, b;
  ASSERT_TRUE(e->submit(greedy("Count slowly:", 40), collect(&a, &step)).ok());
  for (int i = 0; i < 3; ++i) {  // a decodes for a few steps
    ASSERT_TRUE(e->step());
    ++step;
  }
  std::string long_prompt;
  for (int i = 0; i < 40; ++i) long_prompt += "the river runs to the sea and ";
  RequestParams lp = greedy(long_prompt, 4);
  ASSERT_GT(lp.prompt.size(), 200u);  // 7+ chunks of 32
  ASSERT_TRUE(e->submit(lp, collect(&b, &step)).ok());
  run_until_idle(*e, &step);
  // a got a token at every step while it ran: no gaps while b was prefilled.
  const std::vector<int32_t>& s = a.steps_with_token[0];
  ASSERT_EQ(s.size(), 40u);
  for (size_t i = 1; i < s.size(); ++i) EXPECT_EQ(s[i], s[i - 1] + 1) << "token " << i;
  EXPECT_EQ(b.tokens[0], alone(lp.prompt, 4));
}

// Stall-free batching: while a sequence decodes, a burst of prompts that would fit one step's
// budget together is spread over several steps (max_prefill_tokens each); with nothing
// decoding, the same burst goes into one step.
TEST_F(EngineTest, PromptBurstSpreadsOverStepsOnlyWhileOthersDecode) {
  std::string words;
  for (int i = 0; i < 8; ++i) words += "the river runs to the sea ";
  std::vector<RequestParams> burst;
  for (int i = 0; i < 3; ++i) burst.push_back(greedy(std::string(kPrompts[i]) + " " + words, 3));
  for (const RequestParams& p : burst) ASSERT_LE(p.prompt.size(), 60u);
  for (bool decoding : {false, true}) {
    SCOPED_TRACE(decoding ? "beside a decode" : "alone");
    EngineConfig c;
    c.max_batch_tokens = 512;  // room for the whole burst in one step
    c.max_prefill_tokens = 64;  // one prompt of the burst per step while decoding
    auto e = make(c);
    int step = 0;
    Collected d;
    if (decoding) {
      ASSERT_TRUE(e->submit(greedy("Count slowly:", 30), collect(&d, &step)).ok());
      for (int i = 0; i < 2; ++i) {
        ASSERT_TRUE(e->step());
        ++step;
      }
    }
    std::vector<Collected> got(3);
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(e->submit(burst[i], collect(&got[i], &step)).ok());
    run_until_idle(*e, &step);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(got[i].tokens[0], alone(burst[i].prompt, 3)) << i;
      const int first = got[i].steps_with_token[0].front();
      const int first0 = got[0].steps_with_token[0].front();
      EXPECT_EQ(first, decoding ? first0 + i : first0) << i;
    }
    if (decoding) {  // the decode got a token at every step throughout
      const std::vector<int32_t>& s = d.steps_with_token[0];
      for (size_t i = 1; i < s.size(); ++i) EXPECT_EQ(s[i], s[i - 1] + 1) << "token " << i;
    }
  }
}

TEST_F(EngineTest, PreemptionUnderATinyPoolRecomputesAndFinishesEverything) {
  EngineConfig c;
  c.kv_blocks = 14;  // 224 slots; four requests of ~80 tokens need ~20 blocks together
  c.block_size = 16;
  c.max_batch_tokens = 128;
  auto e = make(c);
  int step = 0;
  std::vector<Collected> got(4);
  std::vector<RequestParams> reqs;
  for (int i = 0; i < 4; ++i) {
    reqs.push_back(greedy(std::string(kPrompts[3]) + " " + kPrompts[i], 48));
    ASSERT_TRUE(e->submit(reqs.back(), collect(&got[i], &step)).ok());
  }
  run_until_idle(*e, &step);
  const EngineMetrics m = e->metrics();
  EXPECT_GT(m.preemptions, 0u);
  EXPECT_EQ(m.requests_finished, 4u);
  EXPECT_EQ(m.kv.used, 0);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(got[i].finish[0], FinishReason::Length);
    EXPECT_EQ(got[i].tokens[0], alone(reqs[i].prompt, 48)) << i;
  }
}

TEST_F(EngineTest, CancelFreesBlocksAndEndsEveryChoice) {
  EngineConfig c;
  c.prefix_cache = false;  // freed blocks become free, not cached
  auto e = make(c);
  int step = 0;
  Collected a, b;
  RequestParams pa = greedy(kPrompts[0], 200);
  pa.n = 2;
  const SubmitResult ra = e->submit(pa, collect(&a, &step));
  ASSERT_TRUE(ra.ok());
  ASSERT_TRUE(e->submit(greedy(kPrompts[1], 10), collect(&b, &step)).ok());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(e->step());
  EXPECT_GT(e->metrics().kv.used, 0);
  e->cancel(ra.id);
  run_until_idle(*e, &step);
  EXPECT_EQ(a.finish[0], FinishReason::Cancelled);
  EXPECT_EQ(a.finish[1], FinishReason::Cancelled);
  EXPECT_EQ(b.finish[0], FinishReason::Length);
  const EngineMetrics m = e->metrics();
  EXPECT_EQ(m.requests_cancelled, 1u);
  EXPECT_EQ(m.requests_finished, 1u);
  EXPECT_EQ(m.kv.used, 0);
  EXPECT_EQ(m.kv.free, m.kv.total);
}

TEST_F(EngineTest, ChoicesForkFromThePromptAndSampleWithTheirOwnSeeds) {
  auto e = make({});
  int step = 0;
  Collected g, s;
  RequestParams pg = greedy(kPrompts[2], 12);
  pg.n = 3;
  ASSERT_TRUE(e->submit(pg, collect(&g, &step)).ok());
  RequestParams ps = greedy(kPrompts[2], 12);
  ps.n = 4;
  ps.sampling.temperature = 1.5f;
  ps.sampling.top_k = 0;
  ps.sampling.top_p = 1;
  ps.sampling.min_p = 0;
  ps.sampling.seed = 11;
  ASSERT_TRUE(e->submit(ps, collect(&s, &step)).ok());
  run_until_idle(*e, &step);
  const std::vector<int32_t> want = alone(pg.prompt, 12);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(g.tokens[i], want) << "greedy choice " << i;
  ASSERT_EQ(s.tokens.size(), 4u);
  int distinct = 0;
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(s.tokens[i].size(), 12u);
    for (int j = 0; j < i; ++j) distinct += s.tokens[i] != s.tokens[j];
  }
  EXPECT_GE(distinct, 5);  // hot sampling with different seeds: (nearly) all pairs differ
  EXPECT_EQ(e->metrics().kv.used, 0);
}

TEST_F(EngineTest, ForkedChoicesNeverExceedMaxRunning) {
  // Two requests of 3 choices under max_running 4: the second may start only when the first's
  // choices are done. Admitting both (counting the running parent as one sequence, not three)
  // gave 6 sequences after the forks, more logit rows than the step holds, and every choice
  // ended in an error.
  EngineConfig c;
  c.max_running = 4;
  auto e = make(c);
  int step = 0;
  Collected a, b;
  RequestParams p = greedy(kPrompts[0], 4);
  p.n = 3;
  ASSERT_TRUE(e->submit(p, collect(&a, &step)).ok());
  ASSERT_TRUE(e->submit(p, collect(&b, &step)).ok());
  int32_t most = 0;
  while (e->step()) {
    most = std::max(most, e->metrics().running);
    ASSERT_LT(++step, 1000);
  }
  EXPECT_LE(most, 4);
  const std::vector<int32_t> want = alone(p.prompt, 4);
  for (const Collected* r : {&a, &b}) {
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(r->finish.at(i), FinishReason::Length) << "choice " << i;
      EXPECT_EQ(r->tokens.at(i), want) << "choice " << i;
    }
  }
}

TEST_F(EngineTest, StopStringsAndLogprobs) {
  auto e = make({});
  int step = 0;
  Collected a;
  RequestParams p = greedy(kPrompts[2], 40);
  p.top_logprobs = 3;
  p.logprobs = true;
  const std::vector<int32_t> ref = alone(p.prompt, 40);
  std::string full;
  for (int32_t t : ref) full += tok_->token_to_piece(t);
  ASSERT_GE(full.size(), 12u);
  p.stop = {full.substr(8, 4)};  // a stop string inside the greedy text
  std::vector<ChoiceEvent> evs;
  ASSERT_TRUE(e->submit(p, [&](const ChoiceEvent& ev) { evs.push_back(ev); }).ok());
  run_until_idle(*e, &step);
  ASSERT_FALSE(evs.empty());
  EXPECT_EQ(evs.back().finish, FinishReason::Stop);
  std::string text;
  for (const ChoiceEvent& ev : evs) {
    text += ev.text;
    for (const GeneratedToken& g : ev.tokens) {
      ASSERT_EQ(g.top.size(), 3u);
      EXPECT_EQ(g.top[0].token, g.token);  // greedy picks the most likely
      EXPECT_FLOAT_EQ(g.top[0].logprob, g.logprob);
      EXPECT_LE(g.logprob, 0.0f);
      EXPECT_GE(g.top[0].logprob, g.top[1].logprob);
    }
  }
  EXPECT_EQ(text, full.substr(0, full.find(p.stop[0])));
}

TEST_F(EngineTest, BadRequestsAreRefusedByName) {
  EngineConfig c;
  c.kv_blocks = 12;
  c.max_queue = 2;
  auto e = make(c);
  RequestParams p = greedy(kPrompts[0], 8);
  RequestParams bad = p;
  bad.max_tokens = 0;
  SubmitResult r = e->submit(bad, {});
  EXPECT_EQ(r.error, SubmitError::Invalid);
  EXPECT_NE(r.message.find("max_tokens"), std::string::npos);
  bad = p;
  bad.prompt.push_back(1 << 30);
  r = e->submit(bad, {});
  EXPECT_EQ(r.error, SubmitError::Invalid);
  EXPECT_NE(r.message.find("1073741824"), std::string::npos);
  bad = p;
  bad.sampling.top_p = 2;
  r = e->submit(bad, {});
  EXPECT_EQ(r.error, SubmitError::Invalid);
  EXPECT_NE(r.message.find("top_p"), std::string::npos);
  bad = p;
  bad.max_tokens = 1000000;
  r = e->submit(bad, {});
  EXPECT_EQ(r.error, SubmitError::TooLong);
  EXPECT_NE(r.message.find("max_tokens"), std::string::npos) << r.message;
  bad = p;
  bad.max_tokens = 12 * 16 - 8;  // fits a sequence (the pool's 192 tokens), not with n = 2
  bad.n = 2;
  r = e->submit(bad, {});
  EXPECT_EQ(r.error, SubmitError::TooLong);
  EXPECT_NE(r.message.find("KV blocks"), std::string::npos) << r.message;
  EXPECT_TRUE(e->submit(p, {}).ok());
  EXPECT_TRUE(e->submit(p, {}).ok());
  r = e->submit(p, {});
  EXPECT_EQ(r.error, SubmitError::QueueFull);
  EXPECT_EQ(e->metrics().requests_rejected, 6u);
}

TEST_F(EngineTest, ThreadedLoopServesConcurrentSubmitters) {
  auto e = make({});
  e->start();
  std::mutex mu;
  std::vector<Collected> got(4);
  int dummy = 0;
  std::vector<std::thread> clients;
  for (int i = 0; i < 4; ++i) {
    clients.emplace_back([&, i] {
      auto inner = collect(&got[i], &dummy);
      ASSERT_TRUE(e->submit(greedy(kPrompts[i], 6), [&, inner](const ChoiceEvent& ev) {
                     std::lock_guard<std::mutex> lock(mu);
                     inner(ev);
                   }).ok());
    });
  }
  for (auto& t : clients) t.join();
  e->wait_idle();
  e->stop();
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(got[i].finish[0], FinishReason::Length);
    EXPECT_EQ(got[i].tokens[0].size(), 6u);
  }
  EXPECT_EQ(e->metrics().requests_finished, 4u);
}

}  // namespace
}  // namespace qilin
