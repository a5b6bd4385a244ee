// mtrec: MovieLens — reading the standard CSVs, the per-user temporal split,
// and turning (user, movie, history) into model rows.
//
//   ratings.csv  userId,movieId,rating,timestamp
//   movies.csv   movieId,title,genres          (genres separated by '|')
//
// The files are read with data::CsvTable (data/csv.hpp), and its number
// parsing, tokenizer and Vocabulary are reused here. Columns are found by
// name in the header row, so extra columns or another column order are
// accepted; a missing column, a short row, a bad number or an unterminated
// quote is an error naming the file and the line (and the column).
//
// Features (names as in the FeatureSpec; row 0 of every vocabulary is
// "unknown", so a request can name a user, movie, genre or word the model
// never saw):
//   user     ID      the user's index
//   movie    ID      the movie's index (table "movie")
//   genres   bag     the movie's genres, mean-pooled
//   title    seq     the movie's title as lower-cased words, transformer-encoded
//   history  seq     the user's previous <= history_len movies, most recent
//                    first, transformer-encoded over the movie table
//
// Everything a server needs to build the same rows (the vocabularies, each
// movie's genre and word indices, the lengths, the rating offset) is kept in
// MovieLensFeatures, which round-trips through JSON; save_movielens_checkpoint
// stores that JSON in the checkpoint's metadata under "movielens".
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mtrec/core/error.hpp"
#include "mtrec/io/csv.hpp"
#include "mtrec/train/checkpoint.hpp"
#include "mtrec/io/json.hpp"
#include "mtrec/io/safetensors.hpp"
#include "mtrec/model/config.hpp"
#include "mtrec/model/features.hpp"

namespace mtrec {
namespace movielens {

// ---- CSV ----------------------------------------------------------------------

namespace detail {
// data::CsvTable::read_file plus the two rules MovieLens adds: there must be
// data rows, and a record never spans lines. RFC 4180 lets a quoted field
// run on over line breaks, so a quote left open reads on into the next lines;
// when that does not already fail in CsvTable (it names the line where the
// runaway field stops), the cell holds a line break, and that is reported here
// on the row's own line, where the quote opened.
inline data::CsvTable read_table(const std::string& path) {
  data::CsvTable t = data::CsvTable::read_file(path);
  check(t.rows() > 0, "movielens::read_csv", "'", path, "' line ", t.header_line(),
        ": expected data rows after the header but found none");
  for (std::size_t r = 0; r < t.rows(); ++r)
    for (std::size_t c = 0; c < t.cols(); ++c)
      if (t.cell(r, c).find('\n') != std::string_view::npos)
        t.fail_cell("movielens::read_csv", r, c, "expected a closing quote on the line (MovieLens records never ",
                    "span lines) but the quote runs on into the next line");
  return t;
}

inline std::int64_t int_cell(const data::CsvTable& t, std::size_t r, std::size_t c, const char* op) {
  long long v = 0;
  if (!data::parse_integer(t.cell(r, c), v))
    t.fail_cell(op, r, c, "expected an integer but got ", data::detail::shown(t.cell(r, c)));
  return std::int64_t(v);
}
inline double number_cell(const data::CsvTable& t, std::size_t r, std::size_t c, const char* op) {
  double v = 0;
  if (!data::parse_number(t.cell(r, c), v))
    t.fail_cell(op, r, c, "expected a number but got ", data::detail::shown(t.cell(r, c)));
  return v;
}
}  // namespace detail

struct Rating {
  std::int64_t user = 0, movie = 0;  // raw MovieLens IDs
  double rating = 0;                 // 0.5 .. 5 in steps of 0.5
  std::int64_t timestamp = 0;        // seconds since 1970
  std::size_t line = 0;              // line in ratings.csv, for error messages
};

struct Movie {
  std::int64_t movie = 0;
  std::string title;                // "Toy Story (1995)"
  std::vector<std::string> genres;  // "(no genres listed)" is kept as a genre of its own
};

inline std::vector<Rating> read_ratings(const std::string& path) {
  const char* op = "movielens::read_ratings";
  const data::CsvTable t = detail::read_table(path);
  const std::size_t cu = t.require_column("userId", op), cm = t.require_column("movieId", op),
                    cr = t.require_column("rating", op), ct = t.require_column("timestamp", op);
  std::vector<Rating> out;
  out.reserve(t.rows());
  for (std::size_t r = 0; r < t.rows(); ++r) {
    Rating x;
    x.user = detail::int_cell(t, r, cu, op);
    x.movie = detail::int_cell(t, r, cm, op);
    x.rating = detail::number_cell(t, r, cr, op);
    x.timestamp = detail::int_cell(t, r, ct, op);
    x.line = t.line(r);
    if (!(x.rating >= 0 && x.rating <= 5)) t.fail_cell(op, r, cr, "expected a rating in [0, 5] but got ", x.rating);
    out.push_back(x);
  }
  return out;
}

inline std::vector<Movie> read_movies(const std::string& path) {
  const char* op = "movielens::read_movies";
  const data::CsvTable t = detail::read_table(path);
  const std::size_t cm = t.require_column("movieId", op), ct = t.require_column("title", op),
                    cg = t.require_column("genres", op);
  std::vector<Movie> out;
  out.reserve(t.rows());
  std::unordered_map<std::int64_t, std::size_t> seen;
  for (std::size_t r = 0; r < t.rows(); ++r) {
    Movie m;
    m.movie = detail::int_cell(t, r, cm, op);
    const auto ins = seen.emplace(m.movie, t.line(r));
    if (!ins.second)
      t.fail_cell(op, r, cm, "movieId ", m.movie, " expected once but was already on line ", ins.first->second);
    m.title = std::string(t.cell(r, ct));
    m.genres = data::split_items(t.cell(r, cg), '|');
    out.push_back(std::move(m));
  }
  return out;
}

// ---- text ---------------------------------------------------------------------

// The words of a title: data::tokenize_words (maximal runs of ASCII letters
// and digits, lower-cased, with every byte >= 0x80 counted as a letter so
// that UTF-8 words such as "léon" stay whole). The release year "(1995)"
// becomes the word "1995", which is how the model sees the year. The one
// MovieLens rule on top: dslabs writes a missing title as "NA", which, like
// an empty title, has no words.
inline std::vector<std::string> title_words(const std::string& title) {
  if (title == "NA") return {};
  return data::tokenize_words(title);
}

// ---- vocabularies ---------------------------------------------------------------

// Genres and title words use data::Vocabulary as it is (row 0 = unknown,
// rows 1..n in insertion order). Users and movies are integer IDs, which
// data::Vocabulary (strings) does not take: IdVocabulary keys it by the
// ID's decimal text (one text per ID, and a lookup allocates nothing), with
// the same interface and the IDs themselves kept for the JSON.
class IdVocabulary {
 public:
  index_t add(std::int64_t id) {
    char buf[24];
    const index_t r = vocab_.add(key(id, buf));
    if (std::size_t(r) > ids_.size()) ids_.push_back(id);
    return r;
  }
  // The row of `id`, or data::Vocabulary::kOov (0) when it is not in the vocabulary.
  index_t find(std::int64_t id) const {
    char buf[24];
    return vocab_.find(key(id, buf));
  }
  bool contains(std::int64_t id) const { return find(id) != data::Vocabulary::kOov; }
  std::size_t size() const { return ids_.size(); }   // distinct IDs
  index_t rows() const { return vocab_.rows(); }     // embedding rows, "unknown" included
  const std::vector<std::int64_t>& ids() const { return ids_; }  // ids()[r - 1] has row r

 private:
  static std::string_view key(std::int64_t id, char (&buf)[24]) {
    const auto res = std::to_chars(buf, buf + sizeof buf, id);
    return std::string_view(buf, std::size_t(res.ptr - buf));
  }
  data::Vocabulary vocab_;
  std::vector<std::int64_t> ids_;
};

// ---- features -------------------------------------------------------------------

struct FeatureOptions {
  index_t history_len = 50;   // previous movies per row
  index_t title_len = 12;     // title words kept (98% of titles have at most 12)
  index_t min_word_count = 2; // a word in fewer titles is "unknown": a one-title word is only a movie ID again
};

// Sizes of the model around the features.
struct ModelShape {
  index_t user_dim = 32;
  index_t genre_dim = 16;
  TransformerConfig title;    // its d_model is the word embedding dim
  int title_layers = 1;
  TransformerConfig history;  // its d_model is also the movie embedding dim (shared table)
  int history_layers = 1;
};

class MovieLensFeatures {
 public:
  // Vocabularies from the catalogue (every movie of movies.csv, so a movie
  // rated only in the test period still has its title and genres) and from
  // the users of ratings.csv. Ratings of a movie missing from movies.csv are
  // an error: the file pair is inconsistent.
  static MovieLensFeatures build(const std::vector<Movie>& movies, const std::vector<Rating>& ratings,
                                 const FeatureOptions& opt = {}) {
    const char* op = "MovieLensFeatures::build";
    check(opt.history_len >= 1 && opt.title_len >= 1, op, "expected history_len and title_len >= 1 but got ",
          opt.history_len, " and ", opt.title_len);
    MovieLensFeatures f;
    f.opt_ = opt;
    std::map<std::string, index_t> word_titles;  // sorted: the vocabulary does not depend on hash order
    for (const auto& m : movies) {
      f.movies_.add(m.movie);
      for (const auto& g : m.genres) f.genres_.add(g);
      auto w = title_words(m.title);
      std::sort(w.begin(), w.end());
      w.erase(std::unique(w.begin(), w.end()), w.end());
      for (const auto& x : w) ++word_titles[x];
    }
    for (const auto& kv : word_titles)
      if (kv.second >= opt.min_word_count) f.words_.add(kv.first);
    f.movie_genres_.assign(std::size_t(f.movies_.rows()), {});
    f.movie_words_.assign(std::size_t(f.movies_.rows()), {});
    for (const auto& m : movies) {
      const index_t i = f.movies_.find(m.movie);
      for (const auto& g : m.genres) f.movie_genres_[std::size_t(i)].push_back(f.genres_.find(g));
      auto& w = f.movie_words_[std::size_t(i)];
      for (const auto& x : title_words(m.title))
        if (index_t(w.size()) < opt.title_len) w.push_back(f.words_.find(x));
    }
    std::vector<std::int64_t> users;
    for (std::size_t r = 0; r < ratings.size(); ++r) {
      check(f.movies_.contains(ratings[r].movie), op, "ratings.csv line ", ratings[r].line, ": movieId ",
            ratings[r].movie, " expected in movies.csv but it is not listed there");
      users.push_back(ratings[r].user);
    }
    std::sort(users.begin(), users.end());
    for (auto u : users) f.users_.add(u);
    return f;
  }

  const FeatureOptions& options() const { return opt_; }
  // The vocabularies: rows() counts the table rows ("unknown" included),
  // size() the distinct keys.
  const IdVocabulary& users() const { return users_; }
  const IdVocabulary& movies() const { return movies_; }
  const data::Vocabulary& genres() const { return genres_; }
  const data::Vocabulary& words() const { return words_; }

  // The features in Batch order: ids {user, movie}, bags {genres},
  // sequences {title, history}. The movie field and the history share the
  // table "movie", so the movie embedding dim is the history's d_model.
  FeatureSpec spec(const ModelShape& s) const {
    FeatureSpec f;
    f.ids = {{"user", users_.rows(), 0, s.user_dim, ""}, {"movie", movies_.rows(), 0, s.history.d_model, "movie"}};
    f.bags = {{"genres", genres_.rows(), 0, s.genre_dim, "", BagPooling::Mean, false}};
    SequenceFeature title;
    title.name = "title";
    title.vocab = words_.rows();
    title.max_len = opt_.title_len;
    title.encoder = s.title;
    title.layers = s.title_layers;
    SequenceFeature hist;
    hist.name = "history";
    hist.vocab = movies_.rows();
    hist.table = "movie";
    hist.max_len = opt_.history_len;
    hist.encoder = s.history;
    hist.layers = s.history_layers;
    f.sequences = {title, hist};
    return f;
  }

  // Shapes an empty batch for these features and `tasks` tasks.
  template <class T>
  void start(Batch<T>& b, std::size_t tasks) const {
    b = Batch<T>();
    b.ids.resize(2);
    b.bags.resize(1);
    b.bags[0].offsets = {0};
    b.sequences.resize(2);
    b.labels.resize(tasks);
  }

  // Appends one row: a user, a movie, and the user's previous movies, most
  // recent first (history[0] is the movie rated just before; only the first
  // history_len are used). IDs are raw MovieLens IDs; unknown ones map to 0.
  template <class T>
  void append(Batch<T>& b, std::int64_t user, std::int64_t movie, const std::int64_t* history,
              std::size_t history_size) const {
    check(b.ids.size() == 2 && b.bags.size() == 1 && b.sequences.size() == 2 && !b.bags[0].offsets.empty(),
          "MovieLensFeatures::append", "expected a batch shaped by start() (2 ID, 1 bag, 2 sequence fields)");
    const index_t m = movies_.find(movie);
    b.ids[0].push_back(users_.find(user));
    b.ids[1].push_back(m);
    auto& bag = b.bags[0];
    for (index_t g : movie_genres_[std::size_t(m)]) bag.ids.push_back(g);
    bag.offsets.push_back(index_t(bag.ids.size()));
    auto put = [](typename Batch<T>::Sequence& s, index_t L, const auto& get, index_t n) {
      n = std::min(n, L);
      for (index_t t = 0; t < L; ++t) s.ids.push_back(t < n ? get(t) : 0);
      s.lengths.push_back(n);
    };
    const auto& words = movie_words_[std::size_t(m)];
    put(b.sequences[0], opt_.title_len, [&](index_t t) { return words[std::size_t(t)]; }, index_t(words.size()));
    put(b.sequences[1], opt_.history_len, [&](index_t t) { return movies_.find(history[t]); }, index_t(history_size));
    ++b.size;
  }

  // Everything above as JSON (for the checkpoint metadata), and back.
  json::Value to_json() const {
    using json::Value;
    Value j = Value::object();
    j.set("format", "mtrec.movielens.features");
    j.set("version", 1);
    j.set("history_len", opt_.history_len);
    j.set("title_len", opt_.title_len);
    j.set("min_word_count", opt_.min_word_count);
    auto arr = [](const auto& keys) {
      Value a = Value::array();
      for (const auto& k : keys) a.push_back(k);
      return a;
    };
    j.set("users", arr(users_.ids()));
    j.set("movies", arr(movies_.ids()));
    j.set("genres", arr(genres_.tokens()));
    j.set("words", arr(words_.tokens()));
    Value mg = Value::array(), mw = Value::array();
    for (index_t i = 1; i < movies_.rows(); ++i) {
      mg.push_back(arr(movie_genres_[std::size_t(i)]));
      mw.push_back(arr(movie_words_[std::size_t(i)]));
    }
    j.set("movie_genres", mg);
    j.set("movie_words", mw);
    return j;
  }

  static MovieLensFeatures from_json(const json::Value& j) {
    const char* op = "MovieLensFeatures::from_json";
    check(j.is_object() && j.contains("format") && j.at("format").is_string() &&
              j.at("format").as_string() == "mtrec.movielens.features",
          op, "expected format 'mtrec.movielens.features'");
    check(j.at("version").as_int() == 1, op, "expected version 1 but got ", j.at("version").as_int());
    MovieLensFeatures f;
    f.opt_.history_len = index_t(j.at("history_len").as_int());
    f.opt_.title_len = index_t(j.at("title_len").as_int());
    f.opt_.min_word_count = index_t(j.at("min_word_count").as_int());
    f.users_ = id_vocabulary(j.at("users"), "users");
    f.movies_ = id_vocabulary(j.at("movies"), "movies");
    f.genres_ = data::Vocabulary::from_tokens(strings(j.at("genres")));
    f.words_ = data::Vocabulary::from_tokens(strings(j.at("words")));
    const auto& mg = j.at("movie_genres").as_array();
    const auto& mw = j.at("movie_words").as_array();
    check(mg.size() == f.movies_.size() && mw.size() == f.movies_.size(), op, "expected ", f.movies_.size(),
          " movie_genres and movie_words entries but got ", mg.size(), " and ", mw.size());
    f.movie_genres_.assign(std::size_t(f.movies_.rows()), {});
    f.movie_words_.assign(std::size_t(f.movies_.rows()), {});
    auto ids = [&](const json::Value& a, index_t limit, const char* what) {
      std::vector<index_t> v;
      for (const auto& x : a.as_array()) {
        const index_t i = index_t(x.as_int());
        check(i >= 0 && i < limit, op, what, " index expected in [0, ", limit, ") but got ", i);
        v.push_back(i);
      }
      return v;
    };
    for (std::size_t i = 0; i < mg.size(); ++i) {
      f.movie_genres_[i + 1] = ids(mg[i], f.genres_.rows(), "genre");
      f.movie_words_[i + 1] = ids(mw[i], f.words_.rows(), "word");
      check(index_t(f.movie_words_[i + 1].size()) <= f.opt_.title_len, op, "movie ", f.movies_.ids()[i],
            " has more than title_len = ", f.opt_.title_len, " words");
    }
    return f;
  }

 private:
  // from_json: the vocabularies as saved (keys of rows 1, 2, ...; distinct).
  static IdVocabulary id_vocabulary(const json::Value& a, const char* what) {
    IdVocabulary v;
    for (const auto& x : a.as_array()) {
      const std::int64_t id = x.as_int();
      const index_t row = v.rows();
      check(v.add(id) == row, "MovieLensFeatures::from_json", "expected distinct ", what, " but ", id, " appears twice");
    }
    return v;
  }
  static std::vector<std::string> strings(const json::Value& a) {
    std::vector<std::string> v;
    for (const auto& x : a.as_array()) v.push_back(x.as_string());
    return v;
  }

  FeatureOptions opt_;
  IdVocabulary users_, movies_;
  data::Vocabulary genres_, words_;
  std::vector<std::vector<index_t>> movie_genres_, movie_words_;  // by movie index; [0] (unknown) is empty
};

// ---- split ----------------------------------------------------------------------

enum class Part : std::uint8_t { Train, Valid, Test };

// Each user's ratings in timeline order (timestamp, then movieId), with the
// part each one falls in. The last 10% (at least 1) of a user's timeline is
// test, the 10% before (at least 1) validation, the rest train; 10% of n is
// floor(n / 10). A user with fewer than 3 ratings cannot give one to each part
// and is kept whole in train (ml-latest-small has at least 20 per user).
struct Timeline {
  std::vector<Rating> ratings;  // grouped by user (ascending ID), each user in timeline order
  std::vector<Part> part;       // per rating
  std::vector<std::size_t> user_begin;  // ratings of user u: [user_begin[u], user_begin[u + 1])
};

inline Timeline split_by_time(std::vector<Rating> ratings, double valid_fraction = 0.1, double test_fraction = 0.1) {
  check(valid_fraction >= 0 && test_fraction >= 0 && valid_fraction + test_fraction < 1, "movielens::split_by_time",
        "expected fractions >= 0 with a sum below 1 but got valid=", valid_fraction, " test=", test_fraction);
  std::sort(ratings.begin(), ratings.end(), [](const Rating& a, const Rating& b) {
    if (a.user != b.user) return a.user < b.user;
    if (a.timestamp != b.timestamp) return a.timestamp < b.timestamp;
    return a.movie < b.movie;
  });
  Timeline t;
  t.ratings = std::move(ratings);
  t.part.assign(t.ratings.size(), Part::Train);
  for (std::size_t i = 0; i < t.ratings.size(); ++i)
    if (i == 0 || t.ratings[i].user != t.ratings[i - 1].user) t.user_begin.push_back(i);
  t.user_begin.push_back(t.ratings.size());
  for (std::size_t u = 0; u + 1 < t.user_begin.size(); ++u) {
    const std::size_t b = t.user_begin[u], n = t.user_begin[u + 1] - b;
    if (n < 3) continue;
    const std::size_t n_test = std::max<std::size_t>(1, std::size_t(std::floor(double(n) * test_fraction + 1e-9)));
    const std::size_t n_valid = std::max<std::size_t>(1, std::size_t(std::floor(double(n) * valid_fraction + 1e-9)));
    if (n_test + n_valid >= n) continue;  // unreachable for fractions of 0.1; keeps every part non-empty otherwise
    for (std::size_t i = n - n_test - n_valid; i < n - n_test; ++i) t.part[b + i] = Part::Valid;
    for (std::size_t i = n - n_test; i < n; ++i) t.part[b + i] = Part::Test;
  }
  return t;
}

// The three parts as batches with two labels: [0] rating - rating_offset
// (regression), [1] like = rating >= 4 (binary). Each row's history is the
// user's previous movies in the timeline, whichever part they are in (a test
// row sees the train and validation movies before it), never the row's own
// movie or a later one. rating_offset is the mean train rating: the model
// regresses the deviation from it, and adding it back gives the rating; the
// RMSE is the same either way.
template <class T>
struct Datasets {
  Batch<T> train, valid, test;
  double rating_offset = 0;
};

template <class T>
inline Datasets<T> make_datasets(const MovieLensFeatures& f, const Timeline& t) {
  Datasets<T> d;
  double sum = 0;
  std::size_t n = 0;
  for (std::size_t i = 0; i < t.ratings.size(); ++i)
    if (t.part[i] == Part::Train) {
      sum += t.ratings[i].rating;
      ++n;
    }
  check(n > 0, "movielens::make_datasets", "expected some training ratings but the split has none");
  d.rating_offset = sum / double(n);
  Batch<T>* out[3] = {&d.train, &d.valid, &d.test};
  for (auto* b : out) f.start(*b, 2);
  const index_t H = f.options().history_len;
  std::vector<std::int64_t> hist;
  for (std::size_t u = 0; u + 1 < t.user_begin.size(); ++u) {
    const std::size_t b = t.user_begin[u], e = t.user_begin[u + 1];
    for (std::size_t i = b; i < e; ++i) {
      hist.clear();
      for (std::size_t j = i; j > b && index_t(hist.size()) < H; --j) hist.push_back(t.ratings[j - 1].movie);
      Batch<T>& dst = *out[int(t.part[i])];
      const Rating& r = t.ratings[i];
      f.append(dst, r.user, r.movie, hist.data(), hist.size());
      dst.labels[0].push_back(T(r.rating - d.rating_offset));
      dst.labels[1].push_back(T(r.rating >= 4.0 ? 1 : 0));
      dst.groups.push_back(f.users().find(r.user));
    }
  }
  return d;
}

// A copy of `b` carrying only the labels of the listed tasks (for the
// single-task baselines, which train on one label of the same rows).
template <class T>
inline Batch<T> select_tasks(const Batch<T>& b, const std::vector<std::size_t>& tasks) {
  Batch<T> out = b;
  out.labels.clear();
  out.label_mask.clear();
  for (std::size_t k : tasks) {
    check(k < b.labels.size(), "movielens::select_tasks", "task ", k, " expected below ", b.labels.size());
    out.labels.push_back(b.labels[k]);
    if (!b.label_mask.empty()) out.label_mask.push_back(b.label_mask[k]);
  }
  return out;
}

// ---- checkpoints ----------------------------------------------------------------

// save_checkpoint, plus metadata "movielens" = the features' JSON with
// "rating_offset" added: one file holds all a server needs, and
// load_checkpoint reads it as any checkpoint. save_checkpoint takes no extra
// metadata, so its output goes to a scratch file beside `path`, is read back,
// and is written to `path` (atomically) with the metadata added: `path` is
// never left holding a checkpoint without it.
template <class T>
inline void save_movielens_checkpoint(const std::string& path, const MultiTaskModel<T>& model,
                                      const MovieLensFeatures& f, double rating_offset) {
  const std::string scratch = path + ".without-movielens";
  save_checkpoint(scratch, model);
  const SafetensorsFile file = [&] {
    try {
      SafetensorsFile loaded = SafetensorsFile::load(scratch);
      std::remove(scratch.c_str());
      return loaded;
    } catch (...) {
      std::remove(scratch.c_str());
      throw;
    }
  }();
  std::vector<TensorRecord> records;
  std::vector<std::vector<std::uint8_t>> data;
  const auto names = file.names();
  data.reserve(names.size());
  for (const auto& name : names) {
    const auto& info = file.info(name);
    data.emplace_back(std::size_t(info.nbytes()));
    file.read_raw(name, data.back().data(), data.back().size());
    TensorRecord r;
    r.name = name;
    r.dtype = info.dtype;
    r.shape = info.shape;
    r.data = data.back().data();
    r.nbytes = data.back().size();
    records.push_back(std::move(r));
  }
  auto meta = file.metadata();
  json::Value j = f.to_json();
  j.set("rating_offset", rating_offset);
  meta["movielens"] = j.dump();
  save_safetensors(path, records, meta);
}

// The features and rating offset stored by save_movielens_checkpoint.
inline MovieLensFeatures load_movielens_features(const std::string& path, double* rating_offset = nullptr) {
  const SafetensorsFile file = SafetensorsFile::load(path);
  auto it = file.metadata().find("movielens");
  check(it != file.metadata().end(), "load_movielens_features", "'", path,
        "' has no 'movielens' metadata (expected a file written by save_movielens_checkpoint)");
  const json::Value j = json::parse(it->second);
  if (rating_offset) *rating_offset = j.at("rating_offset").as_double();
  return MovieLensFeatures::from_json(j);
}

}  // namespace movielens
}  // namespace mtrec
