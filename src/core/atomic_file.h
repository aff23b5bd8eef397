// Files that appear whole or not at all, and leave nothing behind when the writer dies.
// NOTE: on Linux the data goes to an unnamed O_TMPFILE file in the target's directory, so a kill
// at any point before commit() leaves no trace; commit() links it in (directly when the target
// does not exist, else under a unique temp name renamed over it: a window of two system calls).
// Where the file system lacks O_TMPFILE, a named temp file `path.tmp.XXXXXXXX` beside the
// target is used instead. Every named temp file (the fallback's, and the replace window's) is
// registered beforehand with a reaper process (one per writing process, started on first need)
// that unlinks it if the writer dies before the rename, SIGKILL included. commit() syncs the
// file, then the directory after the name appears, so a power loss keeps old or new whole.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

#include "qilin/status.h"

namespace qilin {

class AtomicFile {
 public:
  AtomicFile() = default;
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();  // without commit(): closes and discards the data

  // Starts writing what will become `path`. Errors name the path and the system's reason.
  Status open(const std::string& path);
  FILE* stream() { return file_; }
  // Flushes, syncs to disk, sets mode 0644 and publishes the file under path (replacing it).
  // `write_ok` false (the caller's writes failed) discards it and reports the error.
  Status commit(bool write_ok = true);

 private:
  void discard();
  std::string path_, tmp_;  // tmp_: the named temp file of the fallback, empty with O_TMPFILE
  FILE* file_ = nullptr;
};

// The whole of `bytes` as `path`, through AtomicFile.
Status write_file_atomically(const std::string& path, std::string_view bytes);

}  // namespace qilin
