#!/usr/bin/env Rscript
# Exports MovieLens ml-latest-small from the R package dslabs as the two CSV
# files of the official GroupLens layout, which examples/movielens reads:
#
#   ratings.csv  userId,movieId,rating,timestamp   sorted by userId, then movieId
#   movies.csv   movieId,title,genres              sorted by movieId; the title
#                                                  carries its year, "Toy Story (1995)"
#
# Usage (Debian: apt-get install r-base-core r-cran-dslabs):
#
#   Rscript tools/export_movielens_dslabs.R OUT_DIR
#
# OUT_DIR is created if needed; existing ratings.csv / movies.csv in it are
# replaced. Keep the data out of the repository: the default location the
# example reads is ../shared/data/movielens.
#
# Why the conversion: dslabs ships one merged data frame, `movielens`
# (movieId, title, year, genres, userId, rating, timestamp; 100,004 ratings of
# 9,066 movies by 671 users), with the "(year)" cut out of the title into
# its own column. This script splits it back into the two files and restores
# the title. Only rated movies are in dslabs, so movies.csv has 9,066 rows
# (the GroupLens archive lists a few more, unrated, movies).
#
# Details that keep the files byte-compatible with the GroupLens ones:
#   - a field is quoted only when it holds a comma or a quote, and a quote
#     inside it is doubled (RFC 4180), as in the official files; base R's
#     write.csv would quote every title, so the lines are built by hand;
#   - ratings are written with one decimal ("3.0", "4.5"); timestamps as
#     whole seconds since 1970, never in scientific notation;
#   - text is written as UTF-8;
#   - a title dslabs could not split from its year (it holds NA there, for a
#     handful of TV series) is written as NA, as in the dslabs-derived copy
#     in shared/; mtrec's title tokenizer treats "NA" as "no title words".

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 1) {
  cat("usage: Rscript tools/export_movielens_dslabs.R OUT_DIR\n", file = stderr())
  quit(status = 2)
}
out_dir <- args[[1]]

suppressPackageStartupMessages(library(dslabs))
data(movielens)
ml <- movielens

need <- c("movieId", "title", "year", "genres", "userId", "rating", "timestamp")
missing <- setdiff(need, names(ml))
if (length(missing) > 0) {
  stop("dslabs movielens: expected columns ", paste(need, collapse = ","),
       " but these are missing: ", paste(missing, collapse = ","))
}

# Minimal CSV quoting: only fields containing a comma, a quote or a line break.
csv_field <- function(x) {
  x <- enc2utf8(as.character(x))
  x[is.na(x)] <- "NA"
  needs <- grepl("[\",\r\n]", x)
  x[needs] <- paste0("\"", gsub("\"", "\"\"", x[needs], fixed = TRUE), "\"")
  x
}

# The strings are already UTF-8 (enc2utf8): write their bytes unchanged, in
# binary mode so that lines end in "\n" on every platform, whatever the locale.
write_lines_utf8 <- function(lines, path) {
  con <- file(path, open = "wb")
  on.exit(close(con))
  writeLines(enc2utf8(lines), con, sep = "\n", useBytes = TRUE)
}

whole_seconds <- function(t) {
  # integer seconds in dslabs; accept POSIXct too, in case a release changes it
  if (inherits(t, "POSIXt")) t <- as.numeric(t)
  sprintf("%.0f", as.numeric(t))
}

dir.create(out_dir, showWarnings = FALSE, recursive = TRUE)

# ---- ratings.csv ----
r <- ml[order(ml$userId, ml$movieId), c("userId", "movieId", "rating", "timestamp")]
if (anyNA(r)) stop("dslabs movielens: a rating row has a missing value")
ratings_lines <- c(
  "userId,movieId,rating,timestamp",
  paste(sprintf("%d", as.integer(r$userId)),
        sprintf("%d", as.integer(r$movieId)),
        sprintf("%.1f", as.numeric(r$rating)),
        whole_seconds(r$timestamp),
        sep = ",")
)
write_lines_utf8(ratings_lines, file.path(out_dir, "ratings.csv"))

# ---- movies.csv ----
m <- unique(ml[, c("movieId", "title", "year", "genres")])
m <- m[order(m$movieId), ]
if (any(duplicated(m$movieId))) {
  stop("dslabs movielens: a movieId has more than one title/year/genres")
}
title <- as.character(m$title)
year <- m$year
# Put "(year)" back, unless there is no year or the title already ends with one.
has_year <- !is.na(title) & !is.na(year) & !grepl("\\(\\d{4}\\)\\s*$", title)
title[has_year] <- paste0(title[has_year], " (", sprintf("%d", as.integer(year[has_year])), ")")
movies_lines <- c(
  "movieId,title,genres",
  paste(sprintf("%d", as.integer(m$movieId)),
        csv_field(title),
        csv_field(as.character(m$genres)),
        sep = ",")
)
write_lines_utf8(movies_lines, file.path(out_dir, "movies.csv"))

cat(sprintf("wrote %s (%d ratings) and %s (%d movies)\n",
            file.path(out_dir, "ratings.csv"), nrow(r),
            file.path(out_dir, "movies.csv"), nrow(m)))
