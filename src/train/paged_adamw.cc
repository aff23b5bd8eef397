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
  o->offset_.push_back(0);
  for (int64_t n : sizes) o->offset_.push_back(o->offset_.back() + n);
  const int64_t total = o->offset_.back();
  o->pages_.resize(static_cast<size_t>((total + page_params - 1) / page_params));
  o->stats_.state_bytes = static_cast<size_t>(total) * 2 * sizeof(float);
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

template <typename F>
Status PagedAdamW::for_slices(size_t i, F&& fn) {
  const int64_t begin = offset_[i], end = offset_[i + 1];
  for (int64_t k = begin / page_params_; k * page_params_ < end; ++k) {
    auto mem = acquire(k);
    QILIN_TRY(mem);
    const int64_t s0 = std::max(begin, k * page_params_), s1 = std::min(end, (k + 1) * page_params_);
    float* m = *mem + (s0 - k * page_params_);
    fn(m, m + page_params_, s0 - begin, s1 - s0);
  }
  return Status::ok();
}

Status PagedAdamW::update(size_t i, float* p, const float* g, int64_t step, const AdamWConfig& c, float lr) {
  return for_slices(i, [&](float* m, float* v, int64_t off, int64_t n) {
    adamw_step(p + off, g + off, n, m, v, step, c, lr);
  });
}

Status PagedAdamW::get(size_t i, std::vector<float>* m, std::vector<float>* v) {
  m->resize(offset_[i + 1] - offset_[i]);
  v->resize(offset_[i + 1] - offset_[i]);
  return for_slices(i, [&](float* pm, float* pv, int64_t off, int64_t n) {
    std::copy_n(pm, n, m->data() + off);
    std::copy_n(pv, n, v->data() + off);
  });
}

Status PagedAdamW::set(size_t i, const float* m, const float* v) {
  return for_slices(i, [&](float* pm, float* pv, int64_t off, int64_t n) {
    std::copy_n(m + off, n, pm);
    std::copy_n(v + off, n, pv);
  });
}

PagedAdamW::Stats PagedAdamW::stats() const { return stats_; }

}  // namespace qilin::train
