// libFuzzer harness: load_checkpoint<float> (train/checkpoint.hpp) on a file
// holding the input (the API reads paths only). Expected failure: mtrec::Error.
#include <mtrec/train/checkpoint.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <fcntl.h>
#include <unistd.h>

namespace {
const std::string& scratch_path() {
  static const std::string p = [] {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir && *dir ? dir : "/tmp") + "/mtrec_fuzz_checkpoint." + std::to_string(::getpid()) +
           ".safetensors";
  }();
  return p;
}
void write_all(const std::string& path, const std::uint8_t* data, std::size_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) std::abort();
  while (size > 0) {
    const ssize_t w = ::write(fd, data, size);
    if (w <= 0) std::abort();
    data += w;
    size -= std::size_t(w);
  }
  ::close(fd);
}
struct Cleanup {
  ~Cleanup() { (void)std::remove(scratch_path().c_str()); }
} cleanup;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  write_all(scratch_path(), data, size);
  try {
    auto model = mtrec::load_checkpoint<float>(scratch_path());
    (void)model->parameters().size();
  } catch (const mtrec::Error&) {
  }
  return 0;
}
