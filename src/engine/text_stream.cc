// TextStream: see text_stream.h.
#include "engine/text_stream.h"

#include <algorithm>

namespace qilin {

size_t complete_utf8_prefix(std::string_view text) {
  const size_t n = text.size();
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    const unsigned char c = static_cast<unsigned char>(text[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
    size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
    return len > back ? n - back : n;
  }
  return n;
}

TextStream::TextStream(std::vector<std::string> stop) : stop_(std::move(stop)) {
  size_t max_stop = 0;
  for (const std::string& s : stop_) max_stop = std::max(max_stop, s.size());
  text_.reserve(256 + max_stop);
  out_.reserve(256 + max_stop);
}

std::string_view TextStream::push(std::string_view piece) {
  out_.clear();
  if (stopped_) return out_;
  text_ += piece;
  // Stop strings: cut at the first match; otherwise hold back a tail that could start one.
  size_t emit = text_.size();
  for (const std::string& s : stop_) {
    if (s.empty()) continue;
    const size_t at = text_.find(s);
    if (at != std::string::npos) {
      emit = std::min(emit, at);
      stopped_ = true;
    }
  }
  if (!stopped_) {
    for (const std::string& s : stop_) {
      if (s.empty()) continue;
      for (size_t k = std::min(s.size() - 1, text_.size()); k > 0; --k) {
        if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
          emit = std::min(emit, text_.size() - k);
          break;
        }
      }
    }
    emit = std::min(emit, complete_utf8_prefix(text_));
  }
  out_.append(text_, 0, emit);
  text_.erase(0, stopped_ ? text_.size() : emit);
  return out_;
}

std::string_view TextStream::flush() {
  out_.clear();
  if (!stopped_) out_.swap(text_);
  text_.clear();
  return out_;
}

}  // namespace qilin
