// AtomicFileWriter: stale temporary files of killed writers are cleaned up,
// and nothing else is touched.
#include <catch2/catch.hpp>

#include <mtrec/io/atomic_file.hpp>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include <dirent.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

// A pid that certainly belongs to no process: a child that has exited and
// been reaped (pids are recycled only after a full wrap of pid_max).
pid_t dead_pid() {
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) ::_exit(0);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  return child;
}

struct TempDir {
  std::string path;
  TempDir() {
    path = "/tmp/mtrec_atomic_file_test_" + std::to_string(::getpid()) + "_" +
           std::to_string(reinterpret_cast<std::uintptr_t>(this) % 100000);
    REQUIRE(::mkdir(path.c_str(), 0700) == 0);
  }
  ~TempDir() {
    for (const std::string& n : names()) (void)::unlink((path + "/" + n).c_str());
    (void)::rmdir(path.c_str());
  }
  std::set<std::string> names() const {
    std::set<std::string> out;
    if (DIR* d = ::opendir(path.c_str())) {
      while (const dirent* e = ::readdir(d)) {
        const std::string n = e->d_name;
        if (n != "." && n != "..") out.insert(n);
      }
      ::closedir(d);
    }
    return out;
  }
  void touch(const std::string& name, const std::string& content = "x") const {
    std::ofstream f(path + "/" + name, std::ios::binary);
    f << content;
    REQUIRE(f.good());
  }
  std::string read(const std::string& name) const {
    std::ifstream f(path + "/" + name, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
};

}  // namespace

TEST_CASE("AtomicFileWriter removes the temporary files of dead writers of the same target only", "[io][atomic_file]") {
  TempDir dir;
  const std::string dead = std::to_string(dead_pid());
  const std::string self = std::to_string(::getpid());
  const std::string parent = std::to_string(::getppid());  // alive: it is waiting for us
  const std::string base = "model.safetensors";
  dir.touch(base, "old");

  const std::vector<std::string> stale = {base + ".tmp." + dead + ".0", base + ".tmp." + dead + ".17"};
  const std::vector<std::string> kept = {
      base + ".tmp." + self + ".999",       // this (live) process
      base + ".tmp." + parent + ".3",       // another live process
      "other.safetensors.tmp." + dead + ".0",  // another target
      "x" + base + ".tmp." + dead + ".0",   // a longer name that ends like ours
      base + ".tmp." + dead,                // no counter
      base + ".tmp." + dead + ".",          // empty counter
      base + ".tmp." + dead + ".0.bak",     // a suffix
      base + ".tmp." + dead + ".x",         // not a number
      base + ".tmp.+" + dead + ".0",        // a sign
      base + ".tmp.0.0",                    // pid 0: a process group, never probed
      base + ".tmp.99999999999.0",          // beyond pid_t
      base + ".tmpx",
      base + ".tmp",
  };
  for (const auto& n : stale) dir.touch(n);
  for (const auto& n : kept) dir.touch(n);

  {
    mtrec::io::AtomicFileWriter w(dir.path + "/" + base);
    // The constructor already cleaned up.
    const std::set<std::string> now = dir.names();
    for (const auto& n : stale) CHECK(now.count(n) == 0);
    for (const auto& n : kept) CHECK(now.count(n) == 1);
    CHECK(dir.read(base) == "old");
    w.write("new", 3);
    w.commit();
  }
  std::set<std::string> expected(kept.begin(), kept.end());
  expected.insert(base);
  CHECK(dir.names() == expected);
  CHECK(dir.read(base) == "new");
  for (const auto& n : kept) CHECK(dir.read(n) == "x");
}

TEST_CASE("AtomicFileWriter::commit removes temporary files that dead writers left while it wrote", "[io][atomic_file]") {
  TempDir dir;
  const std::string base = "ckpt.bin";
  mtrec::io::AtomicFileWriter w(dir.path + "/" + base);
  // A writer of the same target that started after us and was killed.
  const std::string late = base + ".tmp." + std::to_string(dead_pid()) + ".4";
  dir.touch(late);
  const std::string live = base + ".tmp." + std::to_string(::getppid()) + ".4";
  dir.touch(live);
  w.write("abc", 3);
  w.commit();
  CHECK(dir.names() == std::set<std::string>{base, live});
  CHECK(dir.read(base) == "abc");
}

TEST_CASE("AtomicFileWriter cleanup works for a target in the current directory", "[io][atomic_file]") {
  TempDir dir;
  char cwd[4096];
  REQUIRE(::getcwd(cwd, sizeof cwd) != nullptr);
  REQUIRE(::chdir(dir.path.c_str()) == 0);
  const std::string stale = "plain.bin.tmp." + std::to_string(dead_pid()) + ".0";
  dir.touch(stale);
  {
    mtrec::io::AtomicFileWriter w("plain.bin");  // no directory part: "."
    w.write("1", 1);
    w.commit();
  }
  REQUIRE(::chdir(cwd) == 0);
  CHECK(dir.names() == std::set<std::string>{"plain.bin"});
}
