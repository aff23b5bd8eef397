// core/atomic_file.h: a file appears whole or not at all, replaces an existing one, and a
// failed or abandoned write leaves nothing in the directory (the kill tests are in
// test_quant_tool.cc, which kills `qilin quantize` mid-write).
#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/atomic_file.h"

namespace qilin {
namespace {

class AtomicFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char d[] = "/tmp/qilin-atomic-XXXXXX";
    ASSERT_NE(mkdtemp(d), nullptr);
    dir_ = d;
  }
  void TearDown() override {
    const std::string cmd = "rm -rf '" + dir_ + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0);
  }
  std::vector<std::string> names() const {
    std::vector<std::string> v;
    DIR* d = opendir(dir_.c_str());
    while (const dirent* e = d ? readdir(d) : nullptr) {
      if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") v.push_back(e->d_name);
    }
    if (d) closedir(d);
    return v;
  }
  static std::string read(const std::string& p) {
    std::ifstream in(p);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  std::string dir_;
};

TEST_F(AtomicFileTest, WritesAndReplacesLeavingOnlyTheTarget) {
  const std::string p = dir_ + "/a.bin";
  ASSERT_TRUE(write_file_atomically(p, "first").is_ok());
  EXPECT_EQ(read(p), "first");
  ASSERT_TRUE(write_file_atomically(p, "second, longer").is_ok());  // over an existing file
  EXPECT_EQ(read(p), "second, longer");
  EXPECT_EQ(names(), std::vector<std::string>{"a.bin"});
}

TEST_F(AtomicFileTest, NothingIsVisibleBeforeCommitAndAbandonedWritesLeaveNothing) {
  const std::string p = dir_ + "/b.bin";
  {
    AtomicFile f;
    ASSERT_TRUE(f.open(p).is_ok());
    std::fputs("partial", f.stream());
    std::fflush(f.stream());
    EXPECT_TRUE(names().empty());  // O_TMPFILE: unnamed until commit
  }                                // destroyed without commit
  EXPECT_TRUE(names().empty());
  {
    AtomicFile f;
    ASSERT_TRUE(f.open(p).is_ok());
    std::fputs("x", f.stream());
    const Status st = f.commit(/*write_ok=*/false);
    EXPECT_FALSE(st.is_ok());
    EXPECT_NE(st.message().find(p), std::string::npos) << st.message();
  }
  EXPECT_TRUE(names().empty());
}

TEST_F(AtomicFileTest, ErrorNamesThePath) {
  const std::string p = dir_ + "/no/such/dir/c.bin";
  const Status st = write_file_atomically(p, "x");
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find(p), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("No such file"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace qilin
