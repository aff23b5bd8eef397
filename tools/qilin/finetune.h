// `qilin finetune`: LoRA fine-tuning of a GGUF model on JSONL data (src/train/finetune.h).
#pragma once

#include <CLI/CLI.hpp>

namespace qilin::cli {

CLI::App* add_finetune(CLI::App& app);
int run_finetune();

}  // namespace qilin::cli
