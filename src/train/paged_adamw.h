// Paged optimizer states (QLoRA's paged optimizers, on the CPU): AdamW's FP32 moments of a list
// of tensors, laid end to end, live in fixed-size pages (page_params parameters: m then v; a
// page may hold the end of one tensor and the start of the next), of which at most a budget's
// worth stay resident; the others sit in a swap file (pread/pwrite, unlinked once
// opened) and are paged back, the least recently used resident page going out, for their
// update. The arithmetic is adamw_step's on each page's slice, so any budget gives results
// bit-identical to keeping every page resident.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "qilin/status.h"
#include "train/optimizer.h"

namespace qilin::train {

class PagedAdamW {
 public:
  // sizes: parameters per tensor. budget_bytes 0: every page resident, no file. dir: where the
  // swap file goes. Errors name the budget or the file.
  static Result<std::unique_ptr<PagedAdamW>> create(const std::vector<int64_t>& sizes, size_t budget_bytes,
                                                    const std::string& dir, int64_t page_params = 16384);
  ~PagedAdamW();
  // AdamW on tensor i: p and g hold its parameters and gradients.
  Status update(size_t i, float* p, const float* g, int64_t step, const AdamWConfig& c, float lr);
  // Tensor i's moments (checkpoints), read or written through the pages.
  Status get(size_t i, std::vector<float>* m, std::vector<float>* v);
  Status set(size_t i, const float* m, const float* v);

  struct Stats {
    int64_t pages = 0, resident_slots = 0;
    int64_t page_ins = 0, page_outs = 0;  // reads from / writes to the swap file
    size_t state_bytes = 0;               // all moments
    size_t resident_bytes = 0;            // the slots held in memory
  };
  Stats stats() const;

 private:
  PagedAdamW() = default;
  struct Page {
    int32_t slot = -1;              // resident slot, or -1
    bool on_disk = false;           // written out at least once (else: zeros)
    uint64_t last_use = 0;
  };
  Result<float*> acquire(int64_t page);  // [2 * page_params_]: m, then v
  int64_t page_params_ = 0;
  std::vector<Page> pages_;
  // Calls fn(page memory m, v at the slice, tensor offset, count) for tensor i's slices.
  template <typename F>
  Status for_slices(size_t i, F&& fn);
  std::vector<int64_t> offset_;      // [n_tensors + 1] first parameter of each tensor
  std::vector<float> slots_;         // [n_slots, 2 * page_params_]
  std::vector<int64_t> slot_page_;   // [n_slots] page held, -1 free
  int fd_ = -1;
  std::string path_;
  uint64_t clock_ = 0;
  Stats stats_;
};

}  // namespace qilin::train
