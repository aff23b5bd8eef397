// PagedAdamW: see paged_adamw.h.
#include "train/paged_adamw.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <fcntl.h>
#include <unistd.h>

#include "core/assert.h"

namespace qilin::train {

Result<std::unique_ptr<PagedAdamW>> PagedAdamW::create(const std::vector<int64_t>& sizes, size_t budget_bytes,
                                                       const std::string& dir, int64_t page_params) {
  QILIN_ASSERT(page_params > 0);
  std::unique_ptr<PagedAdamW> o(new PagedAdamW());
  o->page_params_ = page_params;
  for (size_t t = 0; t < sizes.size(); ++t) {
    o->first_page_.push_back(static_cast<int64_t>(o->pages_.size()));
    for (int64_t off = 0; off < sizes[t]; off += page_params) {
      Page p;
      p.tensor = t;
      p.offset = off;
      p.count = std::min(page_params, sizes[t] - off);
      o->pages_.push_back(p);
    }
    o->stats_.state_bytes += static_cast<size_t>(sizes[t]) * 2 * sizeof(float);
  }
  o->first_page_.push_back(static_cast<int64_t>(o->pages_.size()));
  const size_t page_bytes = static_cast<size_t>(page_params) * 2 * sizeof(float);
  int64_t n_slots = static_cast<int64_t>(o->pages_.size());
  if (budget_bytes > 0 && budget_bytes < n_slots * page_bytes) {
    n_slots = static_cast<int64_t>(budget_bytes / page_bytes);
    if (n_slots < 1) {
      return errorf("finetune: an optimizer memory budget of %zu bytes is below one page of states (%zu bytes)",
                    budget_bytes, page_bytes);
    }
    o->path_ = (dir.empty() ? std::string("/tmp") : dir) + "/qilin-adamw-XXXXXX";
    o->fd_ = mkstemp(o->path_.data());
    if (o->fd_ < 0) return errorf("finetune: cannot create the optimizer swap file %s: %s", o->path_.c_str(), std::strerror(errno));
    unlink(o->path_.c_str());  // gone when the process ends, however it ends
  }
  o->slots_.assign(static_cast<size_t>(n_slots) * page_params * 2, 0.0f);
  o->slot_page_.assign(n_slots, -1);
  o->stats_.pages = static_cast<int64_t>(o->pages_.size());
  o->stats_.resident_slots = n_slots;
  o->stats_.resident_bytes = o->slots_.size() * sizeof(float);
  return o;
}

PagedAdamW::~PagedAdamW() {
  if (fd_ >= 0) close(fd_);
}

Result<float*> PagedAdamW::acquire(int64_t page) {
  Page& pg = pages_[page];
  pg.last_use = ++clock_;
  const int64_t stride = page_params_ * 2;
  if (pg.slot >= 0) return slots_.data() + pg.slot * stride;
  // A free slot, else the least recently used page's, written out first.
  int64_t slot = -1;
  uint64_t oldest = UINT64_MAX;
  for (size_t s = 0; s < slot_page_.size(); ++s) {
    if (slot_page_[s] < 0) {
      slot = static_cast<int64_t>(s);
      break;
    }
    if (pages_[slot_page_[s]].last_use < oldest) {
      oldest = pages_[slot_page_[s]].last_use;
      slot = static_cast<int64_t>(s);
    }
  }
  float* mem = slots_.data() + slot * stride;
  const size_t bytes = static_cast<size_t>(stride) * sizeof(float);
  if (slot_page_[slot] >= 0) {
    Page& victim = pages_[slot_page_[slot]];
    const off_t at = static_cast<off_t>(slot_page_[slot]) * static_cast<off_t>(bytes);
    if (pwrite(fd_, mem, bytes, at) != static_cast<ssize_t>(bytes)) {
      return errorf("finetune: cannot write the optimizer swap file: %s", std::strerror(errno));
    }
    victim.on_disk = true;
    victim.slot = -1;
    ++stats_.page_outs;
  }
  if (pg.on_disk) {
    const off_t at = static_cast<off_t>(page) * static_cast<off_t>(bytes);
    if (pread(fd_, mem, bytes, at) != static_cast<ssize_t>(bytes)) {
      return errorf("finetune: cannot read the optimizer swap file: %s", std::strerror(errno));
    }
    ++stats_.page_ins;
  } else {
    std::fill_n(mem, stride, 0.0f);
  }
  slot_page_[slot] = page;
  pg.slot = static_cast<int32_t>(slot);
  return mem;
}

Status PagedAdamW::update(size_t i, float* p, const float* g, int64_t step, const AdamWConfig& c, float lr) {
  for (int64_t k = first_page_[i]; k < first_page_[i + 1]; ++k) {
    auto mem = acquire(k);
    QILIN_TRY(mem);
    const Page& pg = pages_[k];
    adamw_step(p + pg.offset, g + pg.offset, pg.count, *mem, *mem + page_params_, step, c, lr);
  }
  return Status::ok();
}

Status PagedAdamW::get(size_t i, std::vector<float>* m, std::vector<float>* v) {
  QILIN_ASSERT(first_page_[i + 1] > first_page_[i]);
  const int64_t n = pages_[first_page_[i + 1] - 1].offset + pages_[first_page_[i + 1] - 1].count;
  m->resize(n);
  v->resize(n);
  for (int64_t k = first_page_[i]; k < first_page_[i + 1]; ++k) {
    auto mem = acquire(k);
    QILIN_TRY(mem);
    const Page& pg = pages_[k];
    std::copy_n(*mem, pg.count, m->data() + pg.offset);
    std::copy_n(*mem + page_params_, pg.count, v->data() + pg.offset);
  }
  return Status::ok();
}

Status PagedAdamW::set(size_t i, const float* m, const float* v) {
  for (int64_t k = first_page_[i]; k < first_page_[i + 1]; ++k) {
    auto mem = acquire(k);
    QILIN_TRY(mem);
    const Page& pg = pages_[k];
    std::copy_n(m + pg.offset, pg.count, *mem);
    std::copy_n(v + pg.offset, pg.count, *mem + page_params_);
  }
  return Status::ok();
}

PagedAdamW::Stats PagedAdamW::stats() const { return stats_; }

}  // namespace qilin::train
