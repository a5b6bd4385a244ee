// libFuzzer harness: the JSON parser (io/json.hpp). Any input either parses
// or throws mtrec::Error; a parsed value must dump and re-parse to the same
// value (dump is the format checkpoints are written in).
#include <mtrec/io/json.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const mtrec::json::Value v = mtrec::json::parse(text);
    const std::string compact = v.dump();
    const std::string pretty = v.dump(2);
    if (!(mtrec::json::parse(compact) == v) || !(mtrec::json::parse(pretty) == v)) std::abort();
  } catch (const mtrec::Error&) {
  }
  return 0;
}
