// `qilin merge`: a base GGUF and a GGUF LoRA adapter in, a merged model GGUF out (train/merge.h).
#pragma once

#include <CLI/CLI.hpp>

namespace qilin::cli {

CLI::App* add_merge(CLI::App& app);
int run_merge();

}  // namespace qilin::cli
