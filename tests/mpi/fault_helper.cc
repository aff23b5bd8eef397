// A job in which rank 1 fails, for the fault tests (tests/CMakeLists.txt runs it under mpiexec
// and matches what the job prints): rank 0 waits in an all-reduce that rank 1 never joins.
//   die:    rank 1 exits at once without finalizing (a crash); the launcher ends the job.
//   stall:  rank 1 stays alive but stops calling; rank 0's call times out and aborts the job.
//   return: rank 1 finalizes and exits 0 early; rank 0 times out as for stall.
//   zero-stall: ZeRO stage 3 fine-tuning of a tiny model; after the first step rank 1 stops
//           calling. Rank 0's next parameter gather (inside forward) times out, the step fails
//           with that error, and the job is aborted.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "dist/comm.h"
#include "mpi/tiny_llama.h"
#include "train/finetune.h"

namespace {

int zero_stall(qilin::Communicator& c) {
  using namespace qilin::train;
  auto model = qilin::test::tiny_llama();
  if (!model) {
    std::fprintf(stderr, "%s\n", model.status().message().c_str());
    return 1;
  }
  FinetuneConfig cfg;
  cfg.lora.rank = 4;
  cfg.steps = 4;
  cfg.grad_accum = c.size();
  cfg.zero_stage = 3;
  cfg.comm = &c;
  std::vector<Example> data(8);
  for (size_t i = 0; i < data.size(); ++i) {
    data[i].tokens = {1, 2, 3, static_cast<int32_t>(i), 5};
    data[i].targets = {2, 3, static_cast<int32_t>(i), 5, -1};
  }
  auto f = Finetuner::create(**model, cfg, data, {});
  if (!f) {
    std::fprintf(stderr, "%s\n", f.status().message().c_str());
    return 1;
  }
  qilin::Status s = (*f)->run([&](const StepLog& log) {
    if (c.rank() == 1 && log.step == 1) std::this_thread::sleep_for(std::chrono::seconds(60));
  });
  if (s) {
    std::printf("rank %d: training completed, which it must not\n", c.rank());
    return 0;
  }
  std::fprintf(stderr, "qilin: error: %s\n", s.message().c_str());
  c.abort(1);
  return 1;  // not reached
}

}  // namespace

int main(int argc, char** argv) {
  using namespace qilin;
  const char* mode = argc > 1 ? argv[1] : "";
  auto w = mpi_world();
  if (!w) {
    std::fprintf(stderr, "%s\n", w.status().message().c_str());
    return 1;
  }
  Communicator& c = **w;
  if (std::strcmp(mode, "zero-stall") == 0) return zero_stall(c);
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
