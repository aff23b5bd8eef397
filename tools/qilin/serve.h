// `qilin serve`: the OpenAI-compatible HTTP server over the continuous-batching Engine.
#pragma once

#include <CLI/CLI.hpp>

namespace qilin::cli {

// Registers the `serve` subcommand and its options on app.
CLI::App* add_serve(CLI::App& app);
// Runs it (after parsing, when the subcommand was given); returns the exit code.
int run_serve();

}  // namespace qilin::cli
