#!/usr/bin/env python3
"""MovieLens ratings as one CSV for mtrec-train, for the serving load test.

    python3 bench/serve/make_movielens_csv.py ../shared/data/movielens OUT_DIR

Writes OUT_DIR/ratings_serving.csv (never commit it: the MovieLens licence
forbids redistribution) with one row per rating, in time order per user:
  user, movie, genres (|-separated), title, history (the user's previous 10
  movies, |-separated), like (rating >= 4), rating, next (the movie the user
  rated next; empty for the last one)
and OUT_DIR/rank_body.json and OUT_DIR/retrieve_body.json: a /v1/rank
request (one user, 200 candidate movies) and a /v1/retrieve request, for wrk.
"""
import csv
import json
import os
import random
import sys

src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
movies = {}
with open(os.path.join(src, "movies.csv"), newline="", encoding="utf-8") as f:
    for r in csv.DictReader(f):
        movies[r["movieId"]] = (r["title"], r["genres"])
by_user = {}
with open(os.path.join(src, "ratings.csv"), newline="") as f:
    for r in csv.DictReader(f):
        by_user.setdefault(r["userId"], []).append((int(r["timestamp"]), r["movieId"], float(r["rating"])))
rows = []
for u, rs in by_user.items():
    rs.sort()
    for i, (_, m, rating) in enumerate(rs):
        hist = "|".join(x[1] for x in rs[max(0, i - 10):i])
        nxt = rs[i + 1][1] if i + 1 < len(rs) else ""
        title, genres = movies.get(m, ("", ""))
        rows.append([u, m, genres, title, hist, int(rating >= 4), rating, nxt])
with open(os.path.join(out, "ratings_serving.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["user", "movie", "genres", "title", "history", "like", "rating", "next"])
    w.writerows(rows)
rng = random.Random(0)
ids = sorted(movies)
cands = [{"movie": m, "genres": movies[m][1].split("|"), "title": movies[m][0]} for m in rng.sample(ids, 200)]
user_rs = sorted(by_user["1"])
user = {"user": "1", "history": [x[1] for x in user_rs[-10:]]}
with open(os.path.join(out, "rank_body.json"), "w") as f:
    json.dump({"user": user, "candidates": cands, "k": 10}, f)
with open(os.path.join(out, "retrieve_body.json"), "w") as f:
    json.dump({"user": user, "task": "next", "k": 100, "exclude": [x[1] for x in user_rs]}, f)
print(f"{len(rows)} rows, {len(movies)} movies -> {out}")
