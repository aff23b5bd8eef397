// core/atomic_file.h: a file appears whole or not at all, replaces an existing one, and a
// failed or abandoned write leaves nothing in the directory (the kill tests are in
// test_quant_tool.cc, which kills `qilin quantize` mid-write).
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
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

// Scoped QILIN_ATOMIC_NAMED_TEMP=1: the fallback for file systems without O_TMPFILE.
struct NamedTempFallback {
  NamedTempFallback() { setenv("QILIN_ATOMIC_NAMED_TEMP", "1", 1); }
  ~NamedTempFallback() { unsetenv("QILIN_ATOMIC_NAMED_TEMP"); }
};

TEST_F(AtomicFileTest, NamedFallbackWritesReplacesAndCleansUp) {
  NamedTempFallback fallback;
  const std::string p = dir_ + "/n.bin";
  ASSERT_TRUE(write_file_atomically(p, "first").is_ok());
  ASSERT_TRUE(write_file_atomically(p, "second").is_ok());
  EXPECT_EQ(read(p), "second");
  {
    AtomicFile f;
    ASSERT_TRUE(f.open(p).is_ok());
    std::fputs("partial", f.stream());
    std::fflush(f.stream());
    EXPECT_EQ(names().size(), 2u);  // the target and the named temp file
  }
  EXPECT_EQ(names(), std::vector<std::string>{"n.bin"});
}

// SIGKILL while a named temp file exists (the fallback's, or the moment between linking the
// finished file under a temp name and renaming it over an existing target): the reaper process
// removes it, so the directory ends with the old target only.
TEST_F(AtomicFileTest, KilledWriterLeavesNoNamedTempFile) {
  NamedTempFallback fallback;
  const std::string p = dir_ + "/k.bin";
  ASSERT_TRUE(write_file_atomically(p, "old").is_ok());
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  std::fflush(nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    AtomicFile f;
    if (!f.open(p).is_ok()) _exit(1);
    std::fputs("new, never committed", f.stream());
    std::fflush(f.stream());
    (void)!write(ready[1], "x", 1);
    pause();  // killed here, the temp file open and named
    _exit(2);
  }
  close(ready[1]);
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1) << "the writer failed before writing";
  close(ready[0]);
  EXPECT_EQ(names().size(), 2u) << "expected the named temp file beside the target";
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  // The reaper notices the writer's end and unlinks: wait for it (at most ~5 s).
  for (int i = 0; i < 500 && names().size() != 1; ++i) usleep(10000);
  EXPECT_EQ(names(), std::vector<std::string>{"k.bin"});
  EXPECT_EQ(read(p), "old");
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
