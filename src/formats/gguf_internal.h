// What the GGUF reader (gguf_reader.cc), writer (gguf_writer.cc) and metadata getters
// (gguf_metadata.cc) share: the format's constants and a few small helpers. Internal to
// src/formats; the API is gguf.h.
#pragma once

#include <bit>
#include <cstdint>
#include <sstream>
#include <string>

#include "formats/gguf.h"

namespace qilin {

// GGUF is little-endian on disk; the reader copies scalars straight from the file and the
// writer writes them as they lie in memory.
static_assert(std::endian::native == std::endian::little,
              "Qilin's GGUF code assumes little-endian");

namespace gguf_internal {

inline constexpr uint8_t kMagic[4] = {'G', 'G', 'U', 'F'};
inline constexpr uint64_t kDefaultAlignment = 32;
inline constexpr uint32_t kMaxDims = 4;
// Arrays may nest (the spec allows it; real models never do). The limit bounds recursion.
inline constexpr int kMaxArrayDepth = 8;

template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

inline uint64_t align_up(uint64_t x, uint64_t alignment) {
  return (x + alignment - 1) / alignment * alignment;
}

inline bool is_power_of_two(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

inline bool is_known_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::FLOAT64); }

}  // namespace gguf_internal
}  // namespace qilin
