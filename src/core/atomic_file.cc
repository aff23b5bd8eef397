// AtomicFile: O_TMPFILE + linkat through /proc/self/fd, falling back to mkstemp + rename.
#include "core/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

namespace qilin {

namespace {

std::string dir_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

Status sys_error(const std::string& path, const char* what, int err) {
  return errorf("%s: %s: %s", path.c_str(), what, std::strerror(err));
}

}  // namespace

AtomicFile::~AtomicFile() { discard(); }

void AtomicFile::discard() {
  if (file_ != nullptr) std::fclose(file_);
  file_ = nullptr;
  if (!tmp_.empty()) ::unlink(tmp_.c_str());
  tmp_.clear();
}

Status AtomicFile::open(const std::string& path) {
  discard();
  path_ = path;
  int fd = -1;
#ifdef O_TMPFILE
  fd = ::open(dir_of(path).c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
  // Unsupported by the file system (or kernel): the named fallback below. Other errors (no such
  // directory, no permission) are the same for both, and reported from the fallback.
#endif
  if (fd < 0) {
    // mkstemp needs exactly six trailing X's; the temp file sits beside `path` so that the
    // final rename stays within one file system (and is atomic).
    tmp_ = path + ".tmp.XXXXXX";
    fd = mkstemp(tmp_.data());
    if (fd < 0) {
      const int err = errno;
      tmp_.clear();
      return sys_error(path, "cannot create a temp file", err);
    }
  }
  file_ = fdopen(fd, "wb");
  if (file_ == nullptr) {
    const int err = errno;
    ::close(fd);
    discard();
    return sys_error(path, "fdopen failed", err);
  }
  return Status::ok();
}

Status AtomicFile::commit(bool write_ok) {
  if (file_ == nullptr) return errorf("%s: not open for writing", path_.c_str());
  int err = write_ok ? 0 : (errno != 0 ? errno : EIO);
  bool ok = write_ok;
  if (ok && std::fflush(file_) != 0) ok = false, err = errno;
  // Flush to disk before the file gets its name so a crash cannot leave a named empty file.
  if (ok && fsync(fileno(file_)) != 0) ok = false, err = errno;
  if (ok && fchmod(fileno(file_), 0644) != 0) ok = false, err = errno;
  if (!ok) {
    discard();
    return sys_error(path_, "write failed", err);
  }
  if (tmp_.empty()) {
    // Unnamed file: give it a name through /proc/self/fd (linkat with AT_EMPTY_PATH would need
    // CAP_DAC_READ_SEARCH). Straight to the target when it does not exist yet.
    const std::string proc = "/proc/self/fd/" + std::to_string(fileno(file_));
    if (::linkat(AT_FDCWD, proc.c_str(), AT_FDCWD, path_.c_str(), AT_SYMLINK_FOLLOW) != 0) {
      if (errno != EEXIST) {
        const int e = errno;
        discard();
        return sys_error(path_, "cannot link the new file", e);
      }
      std::random_device rd;
      for (int attempt = 0;; ++attempt) {
        char suffix[16];
        std::snprintf(suffix, sizeof suffix, ".tmp.%08x", static_cast<unsigned>(rd()));
        const std::string name = path_ + suffix;
        if (::linkat(AT_FDCWD, proc.c_str(), AT_FDCWD, name.c_str(), AT_SYMLINK_FOLLOW) == 0) {
          tmp_ = name;
          break;
        }
        if (errno != EEXIST || attempt == 100) {
          const int e = errno;
          discard();
          return sys_error(path_, "cannot link the new file", e);
        }
      }
    }
  }
  if (!tmp_.empty() && std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int e = errno;
    discard();
    return sys_error(path_, "rename failed", e);
  }
  tmp_.clear();  // now the target: nothing to remove
  const bool closed = std::fclose(file_) == 0;
  const int e = errno;
  file_ = nullptr;
  // Data and metadata were synced above; a close error after that is still reported.
  if (!closed) return sys_error(path_, "close failed", e);
  return Status::ok();
}

Status write_file_atomically(const std::string& path, std::string_view bytes) {
  AtomicFile f;
  QILIN_TRY(f.open(path));
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f.stream()) == bytes.size();
  return f.commit(ok);
}

}  // namespace qilin
