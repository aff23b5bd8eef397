// `qilin topology --world N --tp T --pp P`: prints the 3D rank grid (pipeline x data x tensor)
// that a job of N ranks gets (dist/topology.h); loads no model.
#include <cstdio>

#include "command.h"
#include "common.h"
#include "dist/topology.h"

namespace qilin::cli {
namespace {

class TopologyCommand final : public Command {
 public:
  const char* name() const override { return "topology"; }
  void add(CLI::App& app) override;
  int run() override;

 private:
  int32_t world_ = 1, tp_ = 1, pp_ = 1;
};

void TopologyCommand::add(CLI::App& app) {
  CLI::App* tp = app.add_subcommand(name(), "print the 3D rank grid (pipeline x data x tensor)");
  tp->add_option("--world", world_, "ranks in all")->required()->check(CLI::Range(1, 1 << 20));
  tp->add_option("--tp", tp_, "tensor-parallel degree")->check(CLI::Range(1, 1 << 20));
  tp->add_option("--pp", pp_, "pipeline-parallel degree")->check(CLI::Range(1, 1 << 20));
}

int TopologyCommand::run() {
  auto t = Topology::create(world_, tp_, pp_);
  if (!t) return fail(t.status().message());
  std::printf("%s", t->describe().c_str());
  return 0;
}

}  // namespace

std::unique_ptr<Command> make_topology() { return std::make_unique<TopologyCommand>(); }

}  // namespace qilin::cli
