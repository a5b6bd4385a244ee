// data/movielens: reading the CSVs (through data::CsvTable), title words,
// the vocabularies (row 0 = unknown, insertion order), the per-user temporal
// split, the rows of make_datasets and the features' JSON round trip.
// Expected values are worked out by hand from the small files below.
#include "support/gradcheck.hpp"

// From include/ only: the single header does not contain movielens.hpp.
#if __has_include(<mtrec/data/movielens.hpp>)
#include <mtrec/data/movielens.hpp>
#endif

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

#if __has_include(<mtrec/data/movielens.hpp>)

namespace ml = mtrec::movielens;
using mtrec::index_t;
using Strings = std::vector<std::string>;
using Ids = std::vector<index_t>;

namespace {

// `text` in a fresh file under the temp dir, removed at the end of the scope.
struct CsvFile {
  std::string path;
  explicit CsvFile(const std::string& text) {
    path = (std::filesystem::temp_directory_path() / "mtrec_movielens_XXXXXX").string();
    const int fd = ::mkstemp(path.data());
    REQUIRE(fd >= 0);
    REQUIRE(::write(fd, text.data(), text.size()) == ssize_t(text.size()));
    ::close(fd);
  }
  ~CsvFile() { std::remove(path.c_str()); }
};

// Other column orders and an extra column; a quoted title with a comma,
// CRLF line ends.
const char* kMovies =
    "title,genres,movieId,extra\r\n"
    "Toy Story (1995),Adventure|Animation,10,x\r\n"
    "\"Heat, The (1995)\",Action|Crime,20,x\r\n"
    "L\xC3\xA9on (1994),(no genres listed),30,x\r\n"
    "NA,Drama,40,x\r\n";
// User 7: three ratings (train, valid, test by time); user 3: two at the
// same time (ordered by movieId), too few to split, so all train.
const char* kRatings =
    "timestamp,rating,movieId,userId\n"
    "300,3.5,20,7\n"
    "100,4.0,10,7\n"
    "50,2,40,3\n"
    "200,5,30,7\n"
    "50,1,10,3\n";

}  // namespace

TEST_CASE("movielens: title words", "[movielens]") {
  CHECK(ml::title_words("Toy Story (1995)") == Strings{"toy", "story", "1995"});
  CHECK(ml::title_words("L\xC3\xA9on: The Professional (a.k.a. Leon) (1994)") ==
        Strings{"l\xC3\xA9on", "the", "professional", "a", "k", "a", "leon", "1994"});
  CHECK(ml::title_words("NA").empty());  // dslabs' missing title
  CHECK(ml::title_words("").empty());
  CHECK(ml::title_words("Na") == Strings{"na"});
}

TEST_CASE("movielens: reading movies and ratings", "[movielens]") {
  const CsvFile mf(kMovies), rf(kRatings);
  const auto movies = ml::read_movies(mf.path);
  REQUIRE(movies.size() == 4);
  CHECK(movies[1].movie == 20);
  CHECK(movies[1].title == "Heat, The (1995)");
  CHECK(movies[1].genres == Strings{"Action", "Crime"});
  CHECK(movies[2].genres == Strings{"(no genres listed)"});
  CHECK(movies[3].title == "NA");
  const auto ratings = ml::read_ratings(rf.path);
  REQUIRE(ratings.size() == 5);
  CHECK(ratings[0].user == 7);
  CHECK(ratings[0].movie == 20);
  CHECK(ratings[0].rating == 3.5);
  CHECK(ratings[0].timestamp == 300);
  CHECK(ratings[0].line == 2);
  CHECK(ratings[4].line == 6);
}

TEST_CASE("movielens: malformed files name the file and the line", "[movielens]") {
  using testing::require_error;
  const std::string head = "userId,movieId,rating,timestamp\n";
  {
    const CsvFile f("userId,movieId,rating\n1,2,3\n");
    require_error([&] { ml::read_ratings(f.path); }, {f.path.c_str(), "line 1", "timestamp"});
  }
  {
    const CsvFile f(head + "1,2,3,4\n1,2,3\n");
    require_error([&] { ml::read_ratings(f.path); }, {f.path.c_str(), "line 3", "expected 4 fields"});
  }
  {
    const CsvFile f(head + "1,2,3.5abc,4\n");
    require_error([&] { ml::read_ratings(f.path); }, {f.path.c_str(), "line 2", "'rating'", "3.5abc"});
  }
  {
    const CsvFile f(head + "1,x2,3,4\n");
    require_error([&] { ml::read_ratings(f.path); }, {f.path.c_str(), "line 2", "'movieId'", "integer"});
  }
  {
    const CsvFile f(head + "1,2,6,4\n");
    require_error([&] { ml::read_ratings(f.path); }, {f.path.c_str(), "line 2", "[0, 5]"});
  }
  {
    const CsvFile f(head);
    require_error([&] { ml::read_ratings(f.path); }, {f.path.c_str(), "expected data rows"});
  }
  {
    const CsvFile f("movieId,title,genres\n1,\"Toy Story,Comedy\n");
    require_error([&] { ml::read_movies(f.path); }, {f.path.c_str(), "line 2", "quote"});
  }
  {
    // RFC 4180 would read the open quote on to line 4 and find a valid row:
    // MovieLens records never span lines, so it is line 3's error.
    const CsvFile f("movieId,title,genres\n1,a,b\n2,\"Toy Story,Comedy\n3,Heat\",Drama\n");
    require_error([&] { ml::read_movies(f.path); }, {f.path.c_str(), "line 3", "quote"});
  }
  {
    const CsvFile f("movieId,title,genres\n1,a,b\n1,c,d\n");
    require_error([&] { ml::read_movies(f.path); }, {f.path.c_str(), "line 3", "already on line 2"});
  }
}

TEST_CASE("movielens: vocabularies, split, rows and JSON", "[movielens]") {
  const CsvFile mf(kMovies), rf(kRatings);
  const auto movies = ml::read_movies(mf.path);
  const auto ratings = ml::read_ratings(rf.path);
  ml::FeatureOptions opt;
  opt.history_len = 2;
  opt.title_len = 2;
  opt.min_word_count = 1;
  const auto f = ml::MovieLensFeatures::build(movies, ratings, opt);

  // Movies and genres in file order, users ascending, words sorted; 0 = unknown.
  CHECK(f.movies().ids() == std::vector<std::int64_t>{10, 20, 30, 40});
  CHECK(f.movies().rows() == 5);
  CHECK(f.movies().find(30) == 3);
  CHECK(f.movies().find(77) == 0);
  CHECK(f.users().ids() == std::vector<std::int64_t>{3, 7});
  CHECK(f.users().find(-3) == 0);
  CHECK(f.genres().tokens() == Strings{"Adventure", "Animation", "Action", "Crime", "(no genres listed)", "Drama"});
  CHECK(f.words().tokens() == Strings{"1994", "1995", "heat", "l\xC3\xA9on", "story", "the", "toy"});
  CHECK(f.words().find("nope") == 0);
  const auto min2 = ml::MovieLensFeatures::build(movies, ratings, ml::FeatureOptions{});
  CHECK(min2.words().tokens() == Strings{"1995"});  // the only word in two titles

  const ml::Timeline t = ml::split_by_time(ratings);
  REQUIRE(t.ratings.size() == 5);
  CHECK(t.user_begin == std::vector<std::size_t>{0, 2, 5});
  std::vector<std::int64_t> order;
  for (const auto& r : t.ratings) order.push_back(r.movie);
  CHECK(order == std::vector<std::int64_t>{10, 40, 10, 30, 20});
  CHECK(t.part == std::vector<ml::Part>{ml::Part::Train, ml::Part::Train, ml::Part::Train, ml::Part::Valid,
                                        ml::Part::Test});

  const auto d = ml::make_datasets<float>(f, t);
  CHECK(d.rating_offset == Approx(7.0 / 3.0));
  const auto& tr = d.train;
  REQUIRE(tr.size == 3);
  CHECK(tr.ids[0] == Ids{1, 1, 2});
  CHECK(tr.ids[1] == Ids{1, 4, 1});
  CHECK(tr.bags[0].ids == Ids{1, 2, 6, 1, 2});
  CHECK(tr.bags[0].offsets == Ids{0, 2, 3, 5});
  CHECK(tr.sequences[0].ids == Ids{7, 5, 0, 0, 7, 5});  // "toy story", NA has no words
  CHECK(tr.sequences[0].lengths == Ids{2, 0, 2});
  CHECK(tr.sequences[1].ids == Ids{0, 0, 1, 0, 0, 0});  // user 3's second row saw movie 10
  CHECK(tr.sequences[1].lengths == Ids{0, 1, 0});
  CHECK(tr.labels[1] == std::vector<float>{0, 0, 1});
  CHECK(tr.groups == Ids{1, 1, 2});
  REQUIRE(d.test.size == 1);
  CHECK(d.test.ids[1] == Ids{2});
  CHECK(d.test.sequences[0].ids == Ids{3, 6});  // "heat", "the"
  CHECK(d.test.sequences[1].ids == Ids{3, 1});  // most recent first, over the validation row
  CHECK(d.test.labels[0][0] == Approx(3.5 - 7.0 / 3.0));

  // A request naming an unknown user and movie; the JSON copy builds the same row.
  const auto g = ml::MovieLensFeatures::from_json(mtrec::json::parse(f.to_json().dump()));
  CHECK(g.to_json().dump() == f.to_json().dump());
  const std::int64_t hist[] = {77, 20};
  mtrec::Batch<float> a, b;
  f.start(a, 0);
  g.start(b, 0);
  f.append(a, 99, 77, hist, 2);
  g.append(b, 99, 77, hist, 2);
  CHECK(a.ids[0] == Ids{0});
  CHECK(a.ids[1] == Ids{0});
  CHECK(a.bags[0].offsets == Ids{0, 0});
  CHECK(a.sequences[1].ids == Ids{0, 2});
  CHECK(a.sequences[1].lengths == Ids{2});
  CHECK(b.ids == a.ids);
  CHECK(b.sequences[1].ids == a.sequences[1].ids);
}

#endif
