// libFuzzer harness: the safetensors reader (io/safetensors.hpp), from memory.
// A file that validates must let every tensor be read (raw bytes, and as its
// own dtype when that is F32/F64/I64).
#include <mtrec/io/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace mtrec;
  try {
    const SafetensorsFile f = SafetensorsFile::from_bytes(std::vector<std::uint8_t>(data, data + size));
    (void)f.metadata().size();
    for (const auto& t : f.tensors()) {
      std::vector<std::uint8_t> raw(static_cast<std::size_t>(t.nbytes()));
      f.read_raw(t.name, raw.data(), raw.size());
      (void)f.raw(t.name);
      if (t.dtype == safetensors::Dtype::F32) (void)f.read_vector<float>(t.name);
      if (t.dtype == safetensors::Dtype::F64) (void)f.read_vector<double>(t.name);
      if (t.dtype == safetensors::Dtype::I64) (void)f.read_vector<std::int64_t>(t.name);
    }
  } catch (const mtrec::Error&) {
  }
  return 0;
}
