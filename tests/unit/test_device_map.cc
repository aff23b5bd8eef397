// --device-map parsing and stage boundaries (every error quotes the entry at fault), and the
// tensor/pipeline shard plans for SmolLM2's shape (9 query heads, 3 KV heads, n_ff 1536).
#include <gtest/gtest.h>

#include "dist/device_map.h"
#include "model/parallel_llama.h"

namespace qilin {
namespace {

void expect_error(const std::string& spec, int32_t n_layer, const std::string& needle) {
  auto m = parse_device_map(spec, n_layer);
  ASSERT_FALSE(m.is_ok()) << spec;
  EXPECT_NE(m.status().message().find(needle), std::string::npos)
      << spec << ": " << m.status().message();
}

TEST(DeviceMap, ParsesRangesAndDevices) {
  auto m = parse_device_map("0-14:cpu,15-28:cuda:1,29:stage:2", 30);
  ASSERT_TRUE(m.is_ok()) << m.status().message();
  ASSERT_EQ(m->entries.size(), 3u);
  EXPECT_EQ(m->entries[0].first, 0);
  EXPECT_EQ(m->entries[0].last, 14);
  EXPECT_EQ(m->entries[0].kind, DeviceKind::Cpu);
  EXPECT_EQ(m->entries[1].kind, DeviceKind::Cuda);
  EXPECT_EQ(m->entries[1].index, 1);
  EXPECT_EQ(m->entries[2].first, 29);
  EXPECT_EQ(m->entries[2].last, 29);
  EXPECT_EQ(m->entries[2].kind, DeviceKind::Stage);
  EXPECT_EQ(m->entries[2].index, 2);
}

TEST(DeviceMap, ErrorsNameTheEntry) {
  expect_error("", 30, "empty");
  expect_error("0-14", 30, "entry '0-14' has no ':DEVICE'");
  expect_error("0-14:cpu,15-x:cpu", 30, "entry '15-x:cpu': '15-x' is not a layer");
  expect_error("0-14:cpu,15-30:cpu", 30, "entry '15-30:cpu': layer 30 does not exist");
  expect_error("0-14:cpu,14-29:cpu", 30, "entry '14-29:cpu': layer 14 is already assigned");
  expect_error("0-14:cpu,17-29:cpu", 30, "entry '17-29:cpu': layers 15-16 are not assigned");
  expect_error("0-14:cpu,15-20:cpu", 30, "leaves layers 21-29 unassigned");
  expect_error("9-3:cpu", 30, "entry '9-3:cpu': the range ends before it starts");
  expect_error("0-29:gpu", 30, "entry '0-29:gpu': unknown device 'gpu'");
  expect_error("0-29:cuda:", 30, "entry '0-29:cuda:': 'cuda:' needs a number");
  expect_error("0-29:stage:0", 30, "'stage:0' needs a number >= 1");
  expect_error("-1-29:cpu", 30, "is not a layer");
}

TEST(DeviceMap, StageBoundaries) {
  auto m = parse_device_map("0-9:stage:1,10-19:stage:2,20-29:stage:2", 30);
  ASSERT_TRUE(m.is_ok());
  auto b = stage_boundaries(*m, 2);
  ASSERT_TRUE(b.is_ok()) << b.status().message();
  EXPECT_EQ(*b, (std::vector<int32_t>{0, 10}));
  auto cpu = parse_device_map("0-14:cpu,15-29:cpu", 30);
  ASSERT_TRUE(cpu.is_ok());
  EXPECT_TRUE(stage_boundaries(*cpu, 1).is_ok());
  struct Case {
    const char* spec;
    int32_t pp;
    const char* needle;
  } cases[] = {
      {"0-14:cpu,15-29:cpu", 2, "with --pp 2 give each layer range a stage:N"},
      {"0-9:stage:1,10-29:stage:3", 2, "entry 10-29:stage:3: there are 2 pipeline stages"},
      {"0-9:stage:2,10-29:stage:1", 2, "entry 0-9:stage:2: stages must follow in layer order"},
      {"0-29:stage:1", 2, "names 1 pipeline stages, --pp is 2"},
      {"0-9:stage:1,10-29:cpu", 2, "mixes stage:N and device entries"},
      {"0-14:cpu,15-29:cuda:0", 1, "entry 15-29:cuda:0: this build runs layers on cpu only"},
  };
  for (const Case& c : cases) {
    auto map = parse_device_map(c.spec, 30);
    ASSERT_TRUE(map.is_ok()) << c.spec;
    auto r = stage_boundaries(*map, c.pp);
    ASSERT_FALSE(r.is_ok()) << c.spec;
    EXPECT_NE(r.status().message().find(c.needle), std::string::npos)
        << c.spec << ": " << r.status().message();
  }
}

LlamaHparams smollm2() {
  LlamaHparams hp;
  hp.n_vocab = 49152;
  hp.n_embd = 576;
  hp.n_layer = 30;
  hp.n_head = 9;
  hp.n_head_kv = 3;
  hp.head_dim = 64;
  hp.n_ff = 1536;
  return hp;
}

TEST(ShardPlan, WholeKvGroupsPerRankAndEvenStages) {
  const LlamaHparams hp = smollm2();
  ParallelOptions o;
  o.tp = 2;
  auto r0 = plan_shard(hp, o, 32, 0, 0), r1 = plan_shard(hp, o, 32, 0, 1);
  ASSERT_TRUE(r0.is_ok() && r1.is_ok());
  EXPECT_EQ(r0->n_head_kv, 2);  // 3 KV heads on 2 ranks: 2 + 1, with their 3 query heads each
  EXPECT_EQ(r0->n_head, 6);
  EXPECT_EQ(r1->head_kv0, 2);
  EXPECT_EQ(r1->head0, 6);
  EXPECT_EQ(r1->n_head, 3);
  EXPECT_EQ(r0->n_ff + r1->n_ff, 1536);
  EXPECT_EQ(r1->ff0, r0->n_ff);
  EXPECT_EQ(r1->vocab0, 24576);
  EXPECT_EQ(r0->n_vocab + r1->n_vocab, 49152);
  o.tp = 1;
  o.pp = 4;
  int32_t next = 0;
  for (int32_t s = 0; s < 4; ++s) {
    auto p = plan_shard(hp, o, 32, s, 0);
    ASSERT_TRUE(p.is_ok());
    EXPECT_EQ(p->layer0, next);
    EXPECT_GE(p->layer1 - p->layer0, 7);
    next = p->layer1;
  }
  EXPECT_EQ(next, 30);
  // ffn_down in blocks of 256 (K-quants): 1536 = 6 blocks, split 3 + 3 on 2 ranks.
  o.pp = 1;
  o.tp = 2;
  auto k = plan_shard(hp, o, 256, 0, 1);
  ASSERT_TRUE(k.is_ok());
  EXPECT_EQ(k->ff0, 768);
}

TEST(ShardPlan, RefusesWhatCannotBeSplit) {
  const LlamaHparams hp = smollm2();
  ParallelOptions o;
  o.tp = 4;
  auto a = plan_shard(hp, o, 32, 0, 0);
  ASSERT_FALSE(a.is_ok());
  EXPECT_NE(a.status().message().find("--tp 4 is more than the model's 3 KV heads"),
            std::string::npos)
      << a.status().message();
  o.tp = 1;
  o.pp = 31;
  auto b = plan_shard(hp, o, 32, 0, 0);
  ASSERT_FALSE(b.is_ok());
  EXPECT_NE(b.status().message().find("--pp 31 is more than the model's 30 layers"),
            std::string::npos);
  o.pp = 2;
  o.stage_first = {0, 30};
  auto c = plan_shard(hp, o, 32, 0, 0);
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("stage 2 would hold layers [30, 30)"), std::string::npos)
      << c.status().message();
  o.stage_first = {};
  o.tp = 2;
  auto d = plan_shard(hp, o, 1024, 0, 0);
  ASSERT_FALSE(d.is_ok());
  EXPECT_NE(d.status().message().find("n_ff 1536 cannot be split into 2 parts"), std::string::npos);
}

}  // namespace
}  // namespace qilin
