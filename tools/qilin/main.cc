// qilin: the command-line program. Registers every subcommand (one file each, see command.h),
// parses the command line and runs the one given.
#include <CLI/CLI.hpp>

#include <memory>
#include <vector>

#include "command.h"

int main(int argc, char** argv) {
  using namespace qilin::cli;
  CLI::App app{"qilin: run, serve, compress and fine-tune LLMs"};
  app.require_subcommand(1);
  // The order here is the order `qilin --help` lists them in.
  std::vector<std::unique_ptr<Command>> commands;
  commands.push_back(make_run());
  commands.push_back(make_chat());
  commands.push_back(make_bench());
  commands.push_back(make_perplexity());
  commands.push_back(make_topology());
  commands.push_back(make_serve());
  commands.push_back(make_quantize());
  commands.push_back(make_finetune());
  commands.push_back(make_merge());
  for (const auto& c : commands) c->add(app);

  CLI11_PARSE(app, argc, argv);
  for (const auto& c : commands) {
    if (app.got_subcommand(c->name())) return c->run();
  }
  return 1;
}
