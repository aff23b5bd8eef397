// `qilin quantize IN OUT --type T`: round-to-nearest (Q8_0, Q4_0, Q4_1, INT4-gN, NF4, NF4+DQ)
// and AWQ (--awq, calibrated on a text file) from one GGUF to another (quant/quantize.h).
#pragma once

#include <CLI/CLI.hpp>

namespace qilin::cli {

// Registers the `quantize` subcommand and its options on app.
CLI::App* add_quantize(CLI::App& app);
// Runs it (after parsing, when the subcommand was given); returns the exit code.
int run_quantize();

}  // namespace qilin::cli
