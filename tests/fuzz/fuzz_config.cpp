// libFuzzer harness: the model configuration in checkpoint metadata:
// json::parse + config_from_json + validate_config, then a MultiTaskModel<float>
// built from it only if validation passed and its parameter plan (computed
// without allocating) stays within kMaxElements: validate_config accepts
// models far larger than the fuzzer's 2 GB RSS limit (up to 2^42 parameters),
// and a valid configuration that asks for 32 GB is not a bug. A
// configuration that reads back must also survive config_to_json ->
// config_from_json unchanged.
#include <mtrec/train/checkpoint.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace mtrec;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const ModelConfig c = config_from_json(json::parse(text));
    const json::Value once = config_to_json(c);
    if (!(config_to_json(config_from_json(once)) == once)) std::abort();
    (void)validate_config(c);
    constexpr index_t kMaxElements = index_t(1) << 24;  // 64 MB of float values (+ gradients)
    (void)MultiTaskModel<float>::parameter_plan(c, 1 << 20, kMaxElements, "the fuzz harness' memory budget");
    MultiTaskModel<float> model(c);
    (void)model.parameters().size();
  } catch (const mtrec::Error&) {
  }
  return 0;
}
