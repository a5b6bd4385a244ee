// libFuzzer harness: the CSV reader (data/csv.hpp) and the cell helpers
// mtrec-train uses on its cells. The first byte picks the delimiter: itself
// when it is one of , ; TAB |, else one of them by its value.
#include <mtrec/io/csv.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace mtrec;
  if (size == 0) return 0;
  static const char delims[] = {',', ';', '\t', '|'};
  const char first = char(data[0]);
  const char delim = (first == ',' || first == ';' || first == '\t' || first == '|') ? first : delims[data[0] % 4];
  try {
    const data::CsvTable t =
        data::CsvTable::parse(std::string(reinterpret_cast<const char*>(data) + 1, size - 1), "<fuzz>", delim);
    for (const auto& h : t.header()) (void)t.find_column(h);
    data::Vocabulary vocab;
    for (std::size_t r = 0; r < t.rows(); ++r) {
      (void)t.line(r);
      for (std::size_t c = 0; c < t.cols(); ++c) {
        const std::string_view cell = t.cell(r, c);
        double d;
        long long i;
        (void)data::parse_number(cell, d);
        (void)data::parse_integer(cell, i);
        (void)data::tokenize_words(cell, 8);
        (void)data::split_items(cell, '|');
        vocab.add(cell);
        std::string out;
        data::append_csv_field(out, cell, delim);
      }
    }
  } catch (const mtrec::Error&) {
  }
  return 0;
}
