// AtomicFile: O_TMPFILE + linkat through /proc/self/fd, falling back to a named temp file +
// rename; named temp files are registered with a reaper process that removes them if the writer
// dies (see atomic_file.h).
#include "core/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
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

// ---- the temp-file reaper ----
// A process of its own that outlives the writer: it reads "+name" / "-name" records from a
// socket whose other end only the writer holds, and when it reaches end of file (the writer
// exited or was killed, SIGKILL included) it unlinks every name still registered. The writer
// registers a name before the file exists and unregisters it once the name is gone (renamed over
// the target or unlinked), so no moment leaves an unregistered temp file.
// NOTE: the reaper runs between fork() and _exit() of a possibly multithreaded parent, so it
// uses only async-signal-safe calls and static storage: no allocation, no locks, no stdio.
constexpr int kReaperSlots = 64;       // temp files alive at once in one process
constexpr size_t kReaperPath = 4096;   // PATH_MAX
char g_reaper_names[kReaperSlots][kReaperPath];
unsigned char g_reaper_buf[2 * (kReaperPath + 3)];

[[noreturn]] void reaper_main(int fd) {
  struct sigaction ign;
  std::memset(&ign, 0, sizeof ign);
  ign.sa_handler = SIG_IGN;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE}) sigaction(sig, &ign, nullptr);
  // Hold nothing of the parent's open: its sockets and files must close when it dies.
  if (fd != 0) {
    dup2(fd, 0);
    fd = 0;
  }
  if (close_range(1, ~0U, 0) != 0) {
    for (int k = 1; k < 1024; ++k) close(k);
  }
  size_t have = 0;
  for (;;) {
    const ssize_t n = read(fd, g_reaper_buf + have, sizeof g_reaper_buf - have);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    have += static_cast<size_t>(n);
    size_t at = 0;
    // A record: op byte, 2-byte length, the name (no terminating zero).
    while (have - at >= 3) {
      const size_t len = g_reaper_buf[at + 1] | (size_t{g_reaper_buf[at + 2]} << 8);
      if (have - at < 3 + len) break;
      const char op = static_cast<char>(g_reaper_buf[at]);
      const char* name = reinterpret_cast<const char*>(g_reaper_buf + at + 3);
      if (len > 0 && len < kReaperPath) {
        for (int k = 0; k < kReaperSlots; ++k) {
          char* slot = g_reaper_names[k];
          if (op == '+' && slot[0] == '\0') {
            std::memcpy(slot, name, len);
            slot[len] = '\0';
            break;
          }
          if (op == '-' && std::strncmp(slot, name, len) == 0 && slot[len] == '\0') {
            slot[0] = '\0';
            break;
          }
        }
      }
      at += 3 + len;
    }
    std::memmove(g_reaper_buf, g_reaper_buf + at, have - at);
    have -= at;
  }
  for (int k = 0; k < kReaperSlots; ++k) {
    if (g_reaper_names[k][0] != '\0') unlink(g_reaper_names[k]);
  }
  _exit(0);
}

class TempReaper {
 public:
  // Registers (op '+') or unregisters ('-') a temp name; false if no reaper could be started
  // (the caller then goes on without the guarantee). Started once per process, on first use.
  bool send(char op, const std::string& name) {
    if (name.size() >= kReaperPath) return false;
    std::lock_guard<std::mutex> lock(mu_);
    if (owner_ != getpid()) start();  // first use, or a forked child's own reaper
    if (fd_ < 0) return false;
    std::string rec(3 + name.size(), '\0');
    rec[0] = op;
    rec[1] = static_cast<char>(name.size() & 0xff);
    rec[2] = static_cast<char>(name.size() >> 8);
    std::memcpy(rec.data() + 3, name.data(), name.size());
    for (size_t done = 0; done < rec.size();) {
      // MSG_NOSIGNAL: a reaper that died makes this fail with EPIPE instead of killing us.
      const ssize_t n = ::send(fd_, rec.data() + done, rec.size() - done, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      done += static_cast<size_t>(n);
    }
    return true;
  }

 private:
  void start() {
    if (fd_ >= 0) close(fd_);  // a forked child's copy of its parent's pipe
    fd_ = -1;
    owner_ = getpid();
    // A socket pair rather than a pipe, for send()'s MSG_NOSIGNAL; end of file alike.
    int p[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) != 0) return;
    // Twice forked, so the reaper is not our child: a wait() for any child never sees it.
    const pid_t mid = fork();
    if (mid < 0) {
      close(p[0]);
      close(p[1]);
      return;
    }
    if (mid == 0) {
      if (fork() == 0) reaper_main(p[0]);
      _exit(0);
    }
    close(p[0]);
    int status = 0;
    while (waitpid(mid, &status, 0) < 0 && errno == EINTR) {
    }
    shutdown(p[1], SHUT_RD);
    fd_ = p[1];
  }

  std::mutex mu_;
  int fd_ = -1;
  pid_t owner_ = 0;
};

TempReaper& reaper() {
  static TempReaper* r = new TempReaper();  // never destroyed: used until the process ends
  return *r;
}

// Tests force the named fallback with QILIN_ATOMIC_NAMED_TEMP=1 (its kill safety is tested too).
bool named_temp_forced() {
  const char* v = std::getenv("QILIN_ATOMIC_NAMED_TEMP");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

std::string temp_name(const std::string& path) {
  thread_local std::random_device rd;
  char suffix[16];
  std::snprintf(suffix, sizeof suffix, ".tmp.%08x", static_cast<unsigned>(rd()));
  return path + suffix;
}

// Makes the rename or link of a name in `dir` durable (the file's own data is synced before).
Status sync_dir(const std::string& path) {
  const std::string dir = dir_of(path);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return sys_error(dir, "cannot open the directory to sync it", errno);
  // EINVAL: a file system that cannot sync directories (the rename is as durable as it gets).
  const bool ok = fsync(fd) == 0 || errno == EINVAL;
  const int err = errno;
  ::close(fd);
  if (!ok) return sys_error(dir, "cannot sync the directory after the rename", err);
  return Status::ok();
}

}  // namespace

AtomicFile::~AtomicFile() { discard(); }

void AtomicFile::discard() {
  if (file_ != nullptr) std::fclose(file_);
  file_ = nullptr;
  if (!tmp_.empty()) {
    ::unlink(tmp_.c_str());
    reaper().send('-', tmp_);
  }
  tmp_.clear();
}

Status AtomicFile::open(const std::string& path) {
  discard();
  path_ = path;
  int fd = -1;
#ifdef O_TMPFILE
  if (!named_temp_forced()) fd = ::open(dir_of(path).c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
  // Unsupported by the file system (or kernel): the named fallback below. Other errors (no such
  // directory, no permission) are the same for both, and reported from the fallback.
#endif
  for (int attempt = 0; fd < 0; ++attempt) {
    // Beside `path`, so that the final rename stays within one file system (and is atomic);
    // registered with the reaper before it exists.
    tmp_ = temp_name(path);
    reaper().send('+', tmp_);
    fd = ::open(tmp_.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) {
      const int err = errno;
      reaper().send('-', tmp_);
      tmp_.clear();
      if (err != EEXIST || attempt == 100) return sys_error(path, "cannot create a temp file", err);
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
      // The target exists: link under a temp name (registered with the reaper first, as the
      // window until the rename below is two system calls) and rename that over it.
      for (int attempt = 0;; ++attempt) {
        const std::string name = temp_name(path_);
        reaper().send('+', name);
        if (::linkat(AT_FDCWD, proc.c_str(), AT_FDCWD, name.c_str(), AT_SYMLINK_FOLLOW) == 0) {
          tmp_ = name;
          break;
        }
        const int e = errno;
        reaper().send('-', name);
        if (e != EEXIST || attempt == 100) {
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
  if (!tmp_.empty()) reaper().send('-', tmp_);  // renamed: the name is gone
  tmp_.clear();  // now the target: nothing to remove
  const bool closed = std::fclose(file_) == 0;
  const int e = errno;
  file_ = nullptr;
  // Data and metadata were synced above; a close error after that is still reported.
  if (!closed) return sys_error(path_, "close failed", e);
  // The new name itself survives a power loss only once the directory is synced.
  return sync_dir(path_);
}

Status write_file_atomically(const std::string& path, std::string_view bytes) {
  AtomicFile f;
  QILIN_TRY(f.open(path));
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f.stream()) == bytes.size();
  return f.commit(ok);
}

}  // namespace qilin
