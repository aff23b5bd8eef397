// Strings from files and requests, made safe to print to a terminal or a log: a crafted
// architecture name or tensor name must not carry escape sequences (cursor moves, title
// changes, hidden text) to the user's terminal, nor forge log lines.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace qilin {

// Valid UTF-8 of printable code points passes unchanged; control code points (C0 but for
// `keep_newlines`' '\n', DEL, C1) and bytes that are not valid UTF-8 become "\xNN" for each
// byte. With max_bytes > 0, input past that many bytes is cut and "..." appended.
std::string printable(std::string_view s, size_t max_bytes = 0, bool keep_newlines = false);

}  // namespace qilin
