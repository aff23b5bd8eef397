// The MPI Communicator on real ranks (ctest runs this under mpiexec --oversubscribe with 2 and
// 4 ranks). Every collective against the value each rank can compute alone.
#include <gtest/gtest.h>

#include <numeric>

#include "dist/comm.h"
#include "dist/topology.h"

namespace qilin {
namespace {

std::unique_ptr<Communicator>& world() {
  static std::unique_ptr<Communicator> w = [] {
    auto c = mpi_world();
    EXPECT_TRUE(c.is_ok()) << c.status().message();
    return c.is_ok() ? std::move(*c) : nullptr;
  }();
  return w;
}

TEST(CommMpi, AllReduceSumAndMax) {
  Communicator& c = *world();
  const int n = c.size(), r = c.rank();
  std::vector<float> v = {1.0f * r, 2.0f, -1.0f * r};
  ASSERT_TRUE(c.all_reduce(v.data(), 3).is_ok());
  EXPECT_EQ(v[0], n * (n - 1) / 2.0f);
  EXPECT_EQ(v[1], 2.0f * n);
  std::vector<float> m = {static_cast<float>(r)};
  ASSERT_TRUE(c.all_reduce(m.data(), 1, ReduceOp::Max).is_ok());
  EXPECT_EQ(m[0], n - 1.0f);
  EXPECT_EQ(c.stats().all_reduce, 16u);
}

TEST(CommMpi, ReduceScatterAllGatherBroadcast) {
  Communicator& c = *world();
  const int n = c.size(), r = c.rank();
  const int64_t k = 5;
  std::vector<float> in(n * k);
  for (int64_t i = 0; i < n * k; ++i) in[i] = static_cast<float>(i + 100 * r);
  std::vector<float> out(k);
  ASSERT_TRUE(c.reduce_scatter(in.data(), out.data(), k).is_ok());
  for (int64_t i = 0; i < k; ++i) {
    // sum over ranks q of (r*k + i + 100 q)
    EXPECT_EQ(out[i], n * static_cast<float>(r * k + i) + 100.0f * n * (n - 1) / 2) << i;
  }
  std::vector<float> mine(k, static_cast<float>(r)), all(n * k);
  ASSERT_TRUE(c.all_gather(mine.data(), all.data(), k).is_ok());
  for (int q = 0; q < n; ++q) EXPECT_EQ(all[q * k + 2], static_cast<float>(q));
  std::vector<float> b = {r == 1 ? 42.0f : 0.0f};
  ASSERT_TRUE(c.broadcast(b.data(), 1, 1).is_ok());
  EXPECT_EQ(b[0], 42.0f);
}

TEST(CommMpi, SendRecvRing) {
  Communicator& c = *world();
  const int n = c.size(), r = c.rank();
  std::vector<float> msg(3, static_cast<float>(r)), got(3);
  const int next = (r + 1) % n, prev = (r + n - 1) % n;
  // Even ranks send first, odd ranks receive first: no deadlock with blocking calls.
  if (r % 2 == 0) {
    ASSERT_TRUE(c.send(msg.data(), 3, next, 7).is_ok());
    ASSERT_TRUE(c.recv(got.data(), 3, prev, 7).is_ok());
  } else {
    ASSERT_TRUE(c.recv(got.data(), 3, prev, 7).is_ok());
    ASSERT_TRUE(c.send(msg.data(), 3, next, 7).is_ok());
  }
  EXPECT_EQ(got[0], static_cast<float>(prev));
  // A wrong length is an error that names it, not silent truncation.
  if (n >= 2) {
    if (r == 0) ASSERT_TRUE(c.send(msg.data(), 2, 1, 9).is_ok());
    if (r == 1) {
      Status s = c.recv(got.data(), 3, 0, 9);
      EXPECT_FALSE(s.is_ok());
      EXPECT_NE(s.message().find("expected 3"), std::string::npos) << s.message();
    }
  }
  ASSERT_TRUE(c.barrier().is_ok());
}

TEST(CommMpi, TopologyGroupsAsSubcommunicators) {
  Communicator& c = *world();
  const int n = c.size();
  const int tp = n >= 2 ? 2 : 1;
  auto t = Topology::create(n, tp, 1);
  ASSERT_TRUE(t.is_ok());
  auto tg = c.subgroup(t->tensor_group(c.rank()));
  ASSERT_TRUE(tg.is_ok()) << tg.status().message();
  EXPECT_EQ((*tg)->size(), tp);
  EXPECT_EQ((*tg)->rank(), t->coord(c.rank()).tensor);
  std::vector<float> v = {static_cast<float>(c.rank())};
  ASSERT_TRUE((*tg)->all_reduce(v.data(), 1).is_ok());
  float want = 0;
  for (int32_t q : t->tensor_group(c.rank())) want += static_cast<float>(q);
  EXPECT_EQ(v[0], want);
}

}  // namespace
}  // namespace qilin
