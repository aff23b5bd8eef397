// --tp, --pp, --device-map for the subcommands that run a model (run, bench, perplexity):
// start MPI, split the model, and either drive (world rank 0: the subcommand goes on as usual
// and prints) or follow (every other rank: serve the driver's forward calls, then exit).
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "common.h"
#include "model/llama.h"
#include "model/parallel_llama.h"
#include "qilin/status.h"

namespace qilin::cli {

struct ParallelCli {
  int32_t tp = 1, pp = 1;
  int32_t micro_batches = 0;
  bool tp_exact = false;
  std::string device_map;
  bool wanted() const { return tp * pp > 1 || !device_map.empty(); }
};
void add_parallel(CLI::App* app, ParallelCli& p);
// Under --tp/--pp every rank maps the file and copies only its own slices.
WeightPlacement placement_for(const Common& c, const ParallelCli& p);

class ParallelRun {
 public:
  // Collective over the MPI world. Null when no parallel option was given.
  static Result<std::unique_ptr<ParallelRun>> start(const ParallelCli& p, LlamaModel& model,
                                                    int n_threads);
  // The driver releases the followers (or, when a call failed half-way, aborts the job: the
  // others may be waiting inside it) and prints its statistics.
  ~ParallelRun();
  bool follower() const { return !par_->driver(); }
  // A follower's whole life: the driver's calls, then its statistics. Errors abort the job.
  int follow();

 private:
  ParallelRun() = default;
  void print_stats() const;
  std::unique_ptr<Communicator> world_;
  std::shared_ptr<ParallelLlama> par_;
  LlamaModel* model_ = nullptr;
  int n_threads_ = 1;
};

}  // namespace qilin::cli
