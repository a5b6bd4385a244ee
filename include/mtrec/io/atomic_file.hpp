// mtrec: all-or-nothing file writes and whole-file reads (POSIX / Linux).
//
//   io::AtomicFileWriter w(path);   // creates path + ".tmp.<pid>.<n>" beside it
//   w.write(bytes, n); ...
//   w.commit();                     // fsync, close, rename over `path`
//
// A reader of `path` sees either the old file or the complete new one, never
// a prefix: the data goes to a temporary file in the same directory (rename
// is only atomic within one file system) and is fsync'ed before the rename,
// so a crash right after commit() cannot leave a renamed-but-empty file.
// If anything fails, or the writer is destroyed without commit() (an
// exception unwinding through the caller), the temporary file is removed
// and the target is untouched.
//
// The new file gets mode 0666 & ~umask, like any newly created file; the
// mode of a file it replaces is not carried over.
//
// Stale temporary files. A writer that is killed (SIGKILL, OOM killer, power
// loss) cannot remove its temporary file, and a checkpoint-sized leftover per
// kill adds up. So the constructor and commit() first remove the leftovers of
// the SAME target: files in the target's directory named exactly
// `<basename>.tmp.<pid>.<n>` (decimal <pid> > 0 and <n>) whose <pid> is not a
// live process (kill(pid, 0) fails with ESRCH). Kept: every other name, the
// files of live processes (this one included; a process of another user
// answers EPERM and counts as live; so does a zombie that its parent has not
// reaped yet), and anything that cannot be checked. Cleanup is best effort and
// never throws; io::remove_stale_temp_files(path) runs it on demand and says
// how many files it removed. Limits: a pid reused by an unrelated process
// keeps its stale file until that process ends, and writers in another pid
// namespace (a container sharing the directory) look dead from here: do not
// point writers in different pid namespaces at the same target.
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mtrec/core/error.hpp"

namespace mtrec {
namespace io {

namespace detail {
inline std::string errno_text(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

// Distinguishes temporary files of several writers in one process.
inline std::atomic<std::uint64_t>& temp_counter() {
  static std::atomic<std::uint64_t> n{0};
  return n;
}

inline std::string parent_directory(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

inline std::string base_name(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// If `name` is exactly `<base>.tmp.<pid>.<n>` (both decimal, pid > 0 and
// within pid_t), stores the pid and returns true.
inline bool parse_temp_name(const std::string& name, const std::string& base, long long& pid) {
  const std::string prefix = base + ".tmp.";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return false;
  const std::size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos) return false;
  const std::size_t pid_len = dot - prefix.size(), n_len = name.size() - dot - 1;
  if (pid_len == 0 || pid_len > 10 || n_len == 0 || n_len > 20) return false;
  auto digits = [&](std::size_t from, std::size_t len) {
    for (std::size_t i = from; i < from + len; ++i)
      if (name[i] < '0' || name[i] > '9') return false;
    return true;
  };
  if (!digits(prefix.size(), pid_len) || !digits(dot + 1, n_len)) return false;
  long long v = 0;
  for (std::size_t i = prefix.size(); i < dot; ++i) v = v * 10 + (name[i] - '0');
  // kill(0, ...) and kill(-1, ...) address groups of processes: never valid here.
  if (v <= 0 || v > 0x7fffffffLL) return false;
  pid = v;
  return true;
}
}  // namespace detail

// Removes the temporary files that killed AtomicFileWriters of `path` left
// behind (see the header comment for exactly which). Best effort, never
// throws; returns how many files it removed.
inline std::size_t remove_stale_temp_files(const std::string& path) noexcept {
  try {
    const std::string base = detail::base_name(path);
    if (base.empty()) return 0;
    const std::string dir = detail::parent_directory(path);
    DIR* d = ::opendir(dir.c_str());
    if (!d) return 0;
    std::vector<std::string> stale;
    const long long self = ::getpid();
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      long long pid = 0;
      if (!detail::parse_temp_name(name, base, pid) || pid == self) continue;
      if (::kill(static_cast<pid_t>(pid), 0) == -1 && errno == ESRCH) stale.push_back(name);
    }
    (void)::closedir(d);
    std::size_t removed = 0;
    const std::string sep = dir == "/" ? "" : "/";
    for (const std::string& name : stale)
      if (::unlink((dir + sep + name).c_str()) == 0) ++removed;
    return removed;
  } catch (...) {  // std::bad_alloc: cleanup is optional
    return 0;
  }
}

class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path) : path_(std::move(path)) {
    check(!path_.empty(), "AtomicFileWriter", "empty path");
    (void)remove_stale_temp_files(path_);
    // O_EXCL: never write into a file someone else created under our name
    // (a stale temporary from a crashed process with the same pid, say).
    for (int attempt = 0; attempt < 100; ++attempt) {
      temp_ = path_ + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(detail::temp_counter()++);
      fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ >= 0) return;
      if (errno != EEXIST) break;
    }
    const int err = errno;
    fail("AtomicFileWriter", "cannot write '", path_, "': creating the temporary file '", temp_,
         "' failed: ", detail::errno_text(err));
  }
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  ~AtomicFileWriter() { abort(); }

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_; }

  // Writes all n bytes (looping over partial writes and EINTR).
  void write(const void* data, std::size_t n) {
    check(fd_ >= 0, "AtomicFileWriter::write", "the writer for '", path_, "' is already committed or aborted");
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      // Linux transfers at most 0x7ffff000 bytes per call; ask for no more.
      const std::size_t chunk = n < (std::size_t(1) << 30) ? n : (std::size_t(1) << 30);
      const ssize_t w = ::write(fd_, p, chunk);
      if (w < 0) {
        if (errno == EINTR) continue;
        fail_and_abort("AtomicFileWriter::write", "writing", errno);
      }
      if (w == 0) fail_and_abort("AtomicFileWriter::write", "writing (no progress)", EIO);
      p += w;
      n -= std::size_t(w);
      written_ += std::uint64_t(w);
    }
  }

  std::uint64_t bytes_written() const { return written_; }

  // fsync + close + rename over the target. After it returns, `path` holds
  // exactly the bytes written.
  void commit() {
    check(fd_ >= 0, "AtomicFileWriter::commit", "the writer for '", path_, "' is already committed or aborted");
    if (::fsync(fd_) != 0) fail_and_abort("AtomicFileWriter::commit", "fsync of the temporary file", errno);
    // close() can report a deferred write error (NFS, quota): it counts.
    const int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) fail_and_abort("AtomicFileWriter::commit", "closing the temporary file", errno);
    if (::rename(temp_.c_str(), path_.c_str()) != 0)
      fail_and_abort("AtomicFileWriter::commit", "renaming the temporary file over it", errno);
    temp_.clear();  // now the target: abort() must not remove it
    // Writers killed while this one wrote (the constructor cleaned up before).
    (void)remove_stale_temp_files(path_);
    // Make the rename itself durable. Best effort: the file is complete and
    // in place already, and a failure here cannot be rolled back.
    const int dfd = ::open(detail::parent_directory(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      (void)::fsync(dfd);
      (void)::close(dfd);
    }
  }

  // Closes and removes the temporary file; the target is untouched. Safe to
  // call more than once and after commit().
  void abort() noexcept {
    if (fd_ >= 0) {
      (void)::close(fd_);
      fd_ = -1;
    }
    if (!temp_.empty()) {
      (void)::unlink(temp_.c_str());
      temp_.clear();
    }
  }

 private:
  [[noreturn]] void fail_and_abort(const char* op, const char* step, int err) {
    const std::string temp = temp_;
    abort();
    fail(op, "cannot write '", path_, "': ", step, " ('", temp, "') failed: ", detail::errno_text(err));
  }

  std::string path_;
  std::string temp_;
  int fd_ = -1;
  std::uint64_t written_ = 0;
};

// Reads a whole regular file. Errors start with `op` and name the path and
// the errno text.
inline std::vector<std::uint8_t> read_file_bytes(const std::string& path, const char* op = "read_file_bytes") {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    fail(op, "cannot open '", path, "': ", detail::errno_text(err));
  }
  struct Closer {
    int fd;
    ~Closer() { (void)::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    fail(op, "cannot stat '", path, "': ", detail::errno_text(err));
  }
  check(S_ISREG(st.st_mode), op, "'", path, "' is not a regular file");
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(st.st_size));
  std::size_t got = 0;
  while (got < bytes.size()) {
    const std::size_t chunk = std::min<std::size_t>(bytes.size() - got, std::size_t(1) << 30);
    const ssize_t r = ::read(fd, bytes.data() + got, chunk);
    if (r < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      fail(op, "cannot read '", path, "': ", detail::errno_text(err));
    }
    // The file shrank while we read it: a concurrent writer not using AtomicFileWriter.
    if (r == 0)
      fail(op, "'", path, "' ended after ", got, " bytes but its size was ", bytes.size(),
           " (modified while reading?)");
    got += std::size_t(r);
  }
  return bytes;
}

}  // namespace io
}  // namespace mtrec
