// A job in which rank 1 fails, for the fault tests (tests/CMakeLists.txt runs it under mpiexec
// and matches what the job prints): rank 0 waits in an all-reduce that rank 1 never joins.
//   die:    rank 1 exits at once without finalizing (a crash); the launcher ends the job.
//   stall:  rank 1 stays alive but stops calling; rank 0's call times out and aborts the job.
//   return: rank 1 finalizes and exits 0 early; rank 0 times out as for stall.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "dist/comm.h"

int main(int argc, char** argv) {
  using namespace qilin;
  const char* mode = argc > 1 ? argv[1] : "";
  auto w = mpi_world();
  if (!w) {
    std::fprintf(stderr, "%s\n", w.status().message().c_str());
    return 1;
  }
  Communicator& c = **w;
  if (c.rank() == 1) {
    if (std::strcmp(mode, "die") == 0) _exit(3);
    if (std::strcmp(mode, "stall") == 0) std::this_thread::sleep_for(std::chrono::seconds(60));
    return 0;
  }
  float x = 1;
  const auto t0 = std::chrono::steady_clock::now();
  Status s = c.all_reduce(&x, 1);
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (s) {
    std::printf("rank %d: the all-reduce completed (%.1f s), which it must not\n", c.rank(), sec);
    return 0;
  }
  std::fprintf(stderr, "qilin: error: %s (after %.1f s)\n", s.message().c_str(), sec);
  c.abort(1);
}
