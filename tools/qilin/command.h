// One qilin subcommand: add() registers it on the program's CLI::App with its options bound to
// the command's own members (so the command must not move after add), run() executes it once the
// command line has been parsed and this subcommand was the one given; it returns the exit code.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>

namespace qilin::cli {

class Command {
 public:
  virtual ~Command() = default;
  // The subcommand's name on the command line (`qilin NAME ...`).
  virtual const char* name() const = 0;
  virtual void add(CLI::App& app) = 0;
  virtual int run() = 0;
};

// Each defined in the file named after it (run.cc, chat.cc, ...).
std::unique_ptr<Command> make_run();
std::unique_ptr<Command> make_chat();
std::unique_ptr<Command> make_bench();
std::unique_ptr<Command> make_perplexity();
std::unique_ptr<Command> make_topology();
std::unique_ptr<Command> make_serve();
std::unique_ptr<Command> make_quantize();
std::unique_ptr<Command> make_finetune();
std::unique_ptr<Command> make_merge();

}  // namespace qilin::cli
