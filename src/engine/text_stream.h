// TextStream: turns a stream of token pieces into final text: cut at the first stop string,
// holding back a tail that could still start one, or that ends inside a UTF-8 sequence.
// NOTE: allocation-free per token once the buffers have grown to the longest stop string.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace qilin {

class TextStream {
 public:
  explicit TextStream(std::vector<std::string> stop = {});
  // Appends one token's text; returns the text that became final (valid until the next call).
  // After a stop string appears, stopped() is true and the text from it on is dropped.
  std::string_view push(std::string_view piece);
  bool stopped() const { return stopped_; }
  // The held-back rest, at the end of a stream that did not stop.
  std::string_view flush();

 private:
  std::vector<std::string> stop_;
  std::string text_;  // not yet final
  std::string out_;   // what push() or flush() returned last
  bool stopped_ = false;
};

// Length of the longest prefix of `text` that is complete UTF-8.
size_t complete_utf8_prefix(std::string_view text);

}  // namespace qilin
