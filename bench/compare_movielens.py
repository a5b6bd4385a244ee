#!/usr/bin/env python3
"""MovieLens MMoE: mtrec's examples/movielens against the same model in PyTorch.

    /usr/bin/python3 bench/compare_movielens.py --data ../shared/data/movielens \
        --seed 0 --threads 2 --mtrec build-ml2/examples/movielens

The PyTorch side re-implements, from the C++ sources, exactly what
`examples/movielens --models mmoe` trains with its default options
(include/mtrec/data/movielens.hpp for the data, include/mtrec/model/ and
include/mtrec/layers/ for the model, include/mtrec/train/ for training):

data      ratings.csv + movies.csv; each user's ratings sorted by (timestamp,
          movieId); last floor(n/10) (>= 1) test, the floor(n/10) (>= 1)
          before validation, the rest train (users with < 3 ratings: all train).
          Labels: rating - mean train rating (regression), rating >= 4 (binary).
features  user id (32), movie id (32, table shared with the history), genres
          (mean-pooled bag, 8), title words (lower-cased runs of ASCII letters,
          digits and non-ASCII bytes; words in < 2 titles are "unknown"; first
          12 words) and the user's previous <= 50 movies, most recent first.
          Every vocabulary has row 0 = unknown. Each sequence: embedding of the
          valid positions (padding is zero) + learned position (N(0, 0.02)),
          one pre-LN transformer layer (d 32, 2 heads, FFN 64, GELU (erf),
          dropout 0.1 on the residual branches and the FFN hidden, none on the
          attention weights), key-padding mask, final LayerNorm, mean over the
          valid positions (an empty sequence pools to 0).
model     MMoE: X (136) -> 4 experts [128, 64] (ReLU, dropout 0.2 after every
          activation) -> one softmax gate Linear(136, 4) per task -> towers
          [32] (ReLU, dropout 0.2) -> 1. Linear weights and biases
          U(+-1/sqrt(fan_in)) (the attention in_proj/out_proj too), embeddings
          N(0, 0.01), LayerNorm 1/0.
training  loss = MSE(rating) + BCE-with-logits(like); AdamW lr 2e-3, wd 0.01
          (every parameter), betas (0.9, 0.999), eps 1e-8; batch 512,
          shuffled every epoch, last batch partial; cosine decay from 2e-3 to 0
          over epochs * ceil(N / 512) updates, no warmup, no clipping; after
          every epoch the validation loss (MSE + BCE, eval mode) is computed;
          patience 2; the best epoch's weights are restored before testing.
metrics   test rating RMSE, test like AUC (tie-aware, on sigmoid probabilities).

Timings: "data" is CSV reading through model-ready tensors; "train+test" is
model construction, training with per-epoch validation and the test pass (what
mtrec reports as a run's seconds); "total" is the wall time of the whole side
(for mtrec the process, exec included; for PyTorch the import of torch, data
and train+test).
"""
import argparse
import csv
import json
import math
import os
import re
import subprocess
import sys
import time

T_START = time.perf_counter()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/movielens", help="folder with ratings.csv and movies.csv")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3, help="maximum epochs, also the cosine schedule's length (default 3, "
                   "as the example)")
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mtrec", default=None,
                   help="the built movielens example (default: build-ml/examples/movielens or "
                        "build/examples/movielens, whichever exists)")
    p.add_argument("--torch-only", action="store_true", help="run only the PyTorch side")
    p.add_argument("--mtrec-only", action="store_true", help="run only the mtrec side")
    p.add_argument("--optimizer", choices=["adamw", "sparse"], default="adamw",
                   help="adamw: torch.optim.AdamW over every parameter (dense: every embedding row decays and "
                        "moves every step); sparse: sparse embedding gradients with torch.optim.SparseAdam plus "
                        "decoupled weight decay on the touched rows only (mtrec's lazy AdamW), AdamW for the rest")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    a = p.parse_args()
    if a.epochs < 1:
        p.error("--epochs expected at least 1")
    if a.threads < 1:
        p.error("--threads expected at least 1")
    if a.torch_only and a.mtrec_only:
        p.error("--torch-only and --mtrec-only exclude each other")
    return a


ARGS = parse_args()
# Before torch (and its libgomp) loads: the thread count, and passive OpenMP
# waiting, as mtrec's example uses (the machine's cores are shared).
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(ARGS.threads))
os.environ.setdefault("MKL_NUM_THREADS", str(ARGS.threads))


def log(*a):
    if not ARGS.quiet:
        print(*a, file=sys.stderr, flush=True)


# ---- the example's configuration (examples/movielens.cpp defaults) -----------
CFG = dict(history_len=50, title_len=12, min_word_count=2, user_dim=32, genre_dim=8, d_model=32, heads=2, ffn=64,
           layers=1, attn_dropout=0.1, experts=4, expert=[128, 64], tower=[32], dropout=0.2, init_std=0.01,
           batch=512, lr=2e-3, weight_decay=0.01, rating_weight=1.0, like_weight=1.0)


# ---- mtrec ---------------------------------------------------------------------
def find_mtrec():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    for rel in ("build-ml/examples/movielens", "build/examples/movielens"):
        for base in (os.getcwd(), root):
            path = os.path.join(base, rel)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    return None


def run_mtrec(binary):
    cmd = [binary, "--data", ARGS.data, "--seeds", str(ARGS.seed), "--epochs", str(ARGS.epochs), "--patience",
           str(ARGS.patience), "--threads", str(ARGS.threads), "--models", "mmoe", "--quiet"]
    env = dict(os.environ)
    env["OMP_WAIT_POLICY"] = "passive"
    log("mtrec:", " ".join(cmd))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit("mtrec failed (exit %d):\n%s%s" % (r.returncode, r.stdout, r.stderr))
    j = None
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            j = json.loads(line)
    if j is None:
        sys.exit("mtrec printed no JSON line:\n" + r.stdout)
    m = re.search(r"\(data ([0-9.]+) s", r.stdout)
    runs = [x for x in j["runs"] if x["model"] == "mmoe"]
    run = runs[0]
    data_s = float(m.group(1)) if m else j["wall_seconds"] - sum(x["seconds"] for x in j["runs"])
    return dict(side="mtrec", data_s=data_s, run_s=run["seconds"], total_s=wall,
                epochs=run["epochs"], best_epoch=run["best_epoch"], rmse=run.get("rating_rmse"),
                auc=run.get("like_auc"), stdout=r.stdout)


# ---- data (include/mtrec/data/movielens.hpp) ----------------------------------
WORD = re.compile(rb"[0-9A-Za-z\x80-\xff]+")


def title_words(title):
    if title == b"NA":
        return []
    return [w.lower() for w in WORD.findall(title)]  # bytes.lower() lower-cases ASCII only


def read_csv(path):
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        rows = list(csv.reader(f))
    header = [h.strip() for h in rows[0]]
    return {name: i for i, name in enumerate(header)}, [r for r in rows[1:] if r]


def load_data():
    import numpy as np
    d = ARGS.data.rstrip("/") or "/"
    cols, rows = read_csv(os.path.join(d, "movies.csv"))
    cm, ct, cg = cols["movieId"], cols["title"], cols["genres"]
    movie_row, genres, word_titles = {}, {}, {}
    movies = []
    for r in rows:
        mid = int(r[cm])
        title = r[ct].encode("utf-8", "surrogateescape")
        gs = [g.strip() for g in r[cg].split("|") if g.strip()]
        movie_row[mid] = len(movie_row) + 1
        for g in gs:
            genres.setdefault(g, len(genres) + 1)
        for w in set(title_words(title)):
            word_titles[w] = word_titles.get(w, 0) + 1
        movies.append((mid, title, gs))
    words = {}
    for w in sorted(word_titles):  # bytewise, as std::map<std::string>
        if word_titles[w] >= CFG["min_word_count"]:
            words[w] = len(words) + 1
    M = len(movie_row) + 1
    L, G = CFG["title_len"], max(len(m[2]) for m in movies)
    title_ids = np.zeros((M, L), np.int64)
    title_len = np.zeros(M, np.int64)
    genre_ids = np.zeros((M, max(G, 1)), np.int64)
    genre_cnt = np.zeros(M, np.int64)
    for mid, title, gs in movies:
        i = movie_row[mid]
        ws = [words.get(w, 0) for w in title_words(title)][:L]
        title_ids[i, :len(ws)] = ws
        title_len[i] = len(ws)
        genre_ids[i, :len(gs)] = [genres[g] for g in gs]
        genre_cnt[i] = len(gs)

    cols, rows = read_csv(os.path.join(d, "ratings.csv"))
    cu, cmv, cr, cts = cols["userId"], cols["movieId"], cols["rating"], cols["timestamp"]
    user = np.array([int(r[cu]) for r in rows], np.int64)
    movie = np.array([int(r[cmv]) for r in rows], np.int64)
    rating = np.array([float(r[cr]) for r in rows], np.float64)
    ts = np.array([int(r[cts]) for r in rows], np.int64)
    users = np.unique(user)  # sorted: rows 1.. in ascending ID order
    # split_by_time: per user, by (timestamp, movieId)
    order = np.lexsort((movie, ts, user))
    user, movie, rating = user[order], movie[order], rating[order]
    n = len(user)
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    ends = np.r_[starts[1:], n]
    part = np.zeros(n, np.int8)  # 0 train, 1 valid, 2 test
    begin = np.zeros(n, np.int64)
    for b, e in zip(starts, ends):
        begin[b:e] = b
        cnt = e - b
        if cnt < 3:
            continue
        nt = max(1, int(math.floor(cnt * 0.1 + 1e-9)))
        nv = max(1, int(math.floor(cnt * 0.1 + 1e-9)))
        if nt + nv >= cnt:
            continue
        part[e - nt - nv:e - nt] = 1
        part[e - nt:e] = 2
    offset = float(rating[part == 0].mean())
    mrow = np.vectorize(movie_row.__getitem__, otypes=[np.int64])(movie)
    urow = np.searchsorted(users, user) + 1
    H = CFG["history_len"]
    idx = np.arange(n)
    hist = np.zeros((n, H), np.int64)
    for k in range(H):  # hist[:, k] = the movie k + 1 ratings earlier, most recent first
        j = idx - 1 - k
        ok = j >= begin
        hist[ok, k] = mrow[j[ok]]
    hist_len = np.minimum(idx - begin, H)
    y_rating = (rating - offset).astype(np.float32)
    y_like = (rating >= 4.0).astype(np.float32)
    parts = []
    for p in range(3):
        s = part == p
        parts.append(dict(user=urow[s], movie=mrow[s], hist=hist[s], hist_len=hist_len[s], y_rating=y_rating[s],
                          y_like=y_like[s]))
    catalog = dict(title_ids=title_ids, title_len=title_len, genre_ids=genre_ids, genre_cnt=genre_cnt)
    sizes = dict(users=len(users) + 1, movies=M, genres=len(genres) + 1, words=len(words) + 1)
    return parts, catalog, sizes, offset, n


# ---- PyTorch model --------------------------------------------------------------
def build_torch(torch, sizes, sparse):
    nn = torch.nn
    c = CFG
    D = c["d_model"]

    def linear_init(mod):
        b = 1.0 / math.sqrt(mod.in_features)
        nn.init.uniform_(mod.weight, -b, b)
        if mod.bias is not None:
            nn.init.uniform_(mod.bias, -b, b)

    class SeqEncoder(nn.Module):
        def __init__(self, max_len):
            super().__init__()
            self.pos = nn.Parameter(torch.randn(max_len, D) * 0.02)
            self.layers = nn.ModuleList()
            for _ in range(c["layers"]):
                layer = nn.TransformerEncoderLayer(D, c["heads"], c["ffn"], c["attn_dropout"], activation="gelu",
                                                   batch_first=True, norm_first=True)
                layer.self_attn.dropout = 0.0  # mtrec has no dropout on the attention weights
                b = 1.0 / math.sqrt(D)
                nn.init.uniform_(layer.self_attn.in_proj_weight, -b, b)
                nn.init.uniform_(layer.self_attn.in_proj_bias, -b, b)
                linear_init(layer.self_attn.out_proj)
                linear_init(layer.linear1)
                linear_init(layer.linear2)
                self.layers.append(layer)
            self.norm = nn.LayerNorm(D)

        def forward(self, table, ids, lengths):
            B, L = ids.shape
            valid = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)  # (B, L)
            x = torch.zeros(B, L, D)
            x[valid] = table(ids[valid])  # only valid positions are looked up; padding is 0
            x = x + self.pos[:L]
            mask = ~valid
            mask[lengths == 0, 0] = False  # an all-padding row would give NaN; it pools to 0 below anyway
            for layer in self.layers:
                x = layer(x, src_key_padding_mask=mask)
            x = self.norm(x)
            v = valid.unsqueeze(2).to(x.dtype)
            return (x * v).sum(1) / lengths.clamp(min=1).unsqueeze(1).to(x.dtype)

    def mlp(widths, in_dim, last_active):
        mods = []
        for i, w in enumerate(widths):
            lin = nn.Linear(in_dim, w)
            linear_init(lin)
            mods.append(lin)
            if i + 1 < len(widths) or last_active:
                mods += [nn.ReLU(), nn.Dropout(c["dropout"])]
            in_dim = w
        return nn.Sequential(*mods)

    class MMoE(nn.Module):
        def __init__(self):
            super().__init__()
            std = c["init_std"]
            self.user = nn.Embedding(sizes["users"], c["user_dim"], sparse=sparse)
            self.movie = nn.Embedding(sizes["movies"], D, sparse=sparse)  # shared by the history
            self.genre = nn.EmbeddingBag(sizes["genres"], c["genre_dim"], mode="mean", sparse=sparse)
            self.word = nn.Embedding(sizes["words"], D, sparse=sparse)
            for e in (self.user, self.movie, self.genre, self.word):
                nn.init.normal_(e.weight, 0.0, std)
            self.title_enc = SeqEncoder(c["title_len"])
            self.hist_enc = SeqEncoder(c["history_len"])
            width = c["user_dim"] + D + c["genre_dim"] + D + D
            self.experts = nn.ModuleList([mlp(c["expert"], width, True) for _ in range(c["experts"])])
            self.gates = nn.ModuleList([nn.Linear(width, c["experts"]) for _ in range(2)])
            for g in self.gates:
                linear_init(g)
            self.towers = nn.ModuleList([mlp(c["tower"] + [1], c["expert"][-1], False) for _ in range(2)])

        def forward(self, b):
            X = torch.cat([
                self.user(b["user"]),
                self.movie(b["movie"]),
                self.genre(b["genre_ids"], b["genre_offsets"]),
                self.title_enc(self.word, b["title_ids"], b["title_len"]),
                self.hist_enc(self.movie, b["hist"], b["hist_len"]),
            ], dim=1)
            E = torch.stack([e(X) for e in self.experts], dim=1)  # (B, M, De)
            outs = []
            for g, t in zip(self.gates, self.towers):
                p = torch.softmax(g(X), dim=1).unsqueeze(2)  # (B, M, 1)
                outs.append(t((p * E).sum(1)).squeeze(1))
            return outs  # rating - offset, like logit

    return MMoE()


def auc_numpy(scores, labels):
    import numpy as np
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels) >= 0.5
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s), np.float64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0  # average 1-based rank of each tie group
    ranks[order] = np.repeat(avg, ends - starts)
    P = labels.sum()
    N = len(labels) - P
    return float((ranks[labels].sum() - P * (P + 1) / 2.0) / (P * N))


def auc(scores, labels):
    try:
        from sklearn.metrics import roc_auc_score
        return float(roc_auc_score(labels, scores))
    except ImportError:
        return auc_numpy(scores, labels)


def run_torch():
    t_import = time.perf_counter()
    import numpy as np
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(ARGS.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    import_s = time.perf_counter() - t_import

    t0 = time.perf_counter()
    parts, catalog, sizes, offset, n_ratings = load_data()
    cat = {k: torch.from_numpy(v) for k, v in catalog.items()}
    data = [{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in p.items()} for p in parts]
    data_s = time.perf_counter() - t0
    log("torch data: %d ratings, %d users, %d movies, %d genres, %d title words; train %d, valid %d, test %d; "
        "train mean rating %.4f (%.1f s)" % (n_ratings, sizes["users"] - 1, sizes["movies"] - 1, sizes["genres"] - 1,
                                              sizes["words"] - 1, len(data[0]["user"]), len(data[1]["user"]),
                                              len(data[2]["user"]), offset, data_s))

    def batch(part, rows):
        m = part["movie"][rows]
        gi, gc = cat["genre_ids"][m], cat["genre_cnt"][m]
        gmask = torch.arange(gi.shape[1]).unsqueeze(0) < gc.unsqueeze(1)
        offsets = torch.zeros(len(rows), dtype=torch.int64)
        offsets[1:] = torch.cumsum(gc, 0)[:-1]
        return dict(user=part["user"][rows], movie=m, genre_ids=gi[gmask], genre_offsets=offsets,
                    title_ids=cat["title_ids"][m], title_len=cat["title_len"][m], hist=part["hist"][rows],
                    hist_len=part["hist_len"][rows])

    t1 = time.perf_counter()
    torch.manual_seed(ARGS.seed)
    sparse = ARGS.optimizer == "sparse"
    model = build_torch(torch, sizes, sparse)
    c = CFG
    if sparse:
        emb = [model.user.weight, model.movie.weight, model.genre.weight, model.word.weight]
        ids = {id(p) for p in emb}
        dense = [p for p in model.parameters() if id(p) not in ids]
        opt_d = torch.optim.AdamW(dense, lr=c["lr"], weight_decay=c["weight_decay"])
        opt_s = torch.optim.SparseAdam(emb, lr=c["lr"])
        opts = [opt_d, opt_s]
    else:
        opts = [torch.optim.AdamW(model.parameters(), lr=c["lr"], weight_decay=c["weight_decay"])]

    train, valid, test = data
    N = len(train["user"])
    B = min(c["batch"], N)
    steps = (N + B - 1) // B
    total = max(1, ARGS.epochs * steps)

    def lr_at(u):  # LRSchedule::warmup_cosine, no warmup, min_lr 0
        if u >= total:
            return 0.0
        return c["lr"] * 0.5 * (1.0 + math.cos(math.pi * u / total))

    def predict(part, bs):
        model.eval()
        out_r, out_l = [], []
        with torch.no_grad():
            n = len(part["user"])
            for s in range(0, n, bs):
                rows = torch.arange(s, min(n, s + bs))
                r, l = model(batch(part, rows))
                out_r.append(r)
                out_l.append(l)
        model.train()
        return torch.cat(out_r), torch.cat(out_l)

    def val_loss(part, bs):
        r, l = predict(part, bs)
        mse = F.mse_loss(r, part["y_rating"]).item()
        bce = F.binary_cross_entropy_with_logits(l, part["y_like"]).item()
        return c["rating_weight"] * mse + c["like_weight"] * bce

    g = torch.Generator()
    g.manual_seed(ARGS.seed)
    best, best_epoch, best_state, since, epochs_run, u = None, 0, None, 0, 0, 0
    model.train()
    for epoch in range(ARGS.epochs):
        e0 = time.perf_counter()
        perm = torch.randperm(N, generator=g)
        loss_sum = 0.0
        for s in range(steps):
            rows = perm[s * B:(s + 1) * B]
            b = batch(train, rows)
            lr = lr_at(u)
            for o in opts:
                for pg in o.param_groups:
                    pg["lr"] = lr
            r, l = model(b)
            loss = c["rating_weight"] * F.mse_loss(r, train["y_rating"][rows]) + \
                c["like_weight"] * F.binary_cross_entropy_with_logits(l, train["y_like"][rows])
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            if sparse:  # decoupled weight decay on the touched rows only, before the Adam step (as AdamW)
                with torch.no_grad():
                    for p in emb:
                        rows_touched = p.grad.coalesce().indices()[0]
                        p[rows_touched] *= (1.0 - lr * c["weight_decay"])
            for o in opts:
                o.step()
            u += 1
            loss_sum += loss.item() * len(rows)
        v = val_loss(valid, max(B, 256))
        epochs_run += 1
        improved = best is None or v < best
        if improved:
            best, best_epoch, since = v, epoch + 1, 0
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        else:
            since += 1
        log("torch epoch %d/%d  train loss %.4f  valid loss %.4f  (%.1f s)" %
            (epoch + 1, ARGS.epochs, loss_sum / N, v, time.perf_counter() - e0))
        if ARGS.patience > 0 and since >= ARGS.patience:
            break
    if ARGS.patience > 0 and best_state is not None:
        model.load_state_dict(best_state)
    r, l = predict(test, 1024)
    rmse = float(torch.sqrt(torch.mean((r.double() - test["y_rating"].double()) ** 2)))
    a = auc(torch.sigmoid(l).numpy(), test["y_like"].numpy())
    run_s = time.perf_counter() - t1
    blas = "?"
    try:
        cfg = torch.__config__.show()
        m = re.search(r"BLAS_INFO=([^,\s]+)", cfg)
        blas = m.group(1) if m else "?"
    except Exception:
        pass
    return dict(side="pytorch", import_s=import_s, data_s=data_s, run_s=run_s,
                total_s=import_s + data_s + run_s, epochs=epochs_run, best_epoch=best_epoch, rmse=rmse, auc=a,
                torch=torch.__version__, blas=blas, threads=torch.get_num_threads(), valid_loss=best)


def fmt(x, f):
    return "-" if x is None else f % x


def main():
    results = []
    if not ARGS.torch_only:
        binary = ARGS.mtrec or find_mtrec()
        if binary is None:
            print("no mtrec binary found (build-ml/examples/movielens, build/examples/movielens); "
                  "pass --mtrec or --torch-only", file=sys.stderr)
            if ARGS.mtrec_only:
                sys.exit(2)
        else:
            results.append(run_mtrec(binary))
    if not ARGS.mtrec_only:
        results.append(run_torch())

    print("MovieLens MMoE, seed %d, epochs <= %d, patience %d, %d threads, OMP_WAIT_POLICY=%s" %
          (ARGS.seed, ARGS.epochs, ARGS.patience, ARGS.threads, os.environ.get("OMP_WAIT_POLICY")))
    name = {"mtrec": "mtrec", "pytorch": "PyTorch (%s)" % ARGS.optimizer}
    print("%-18s %10s %12s %10s %12s %11s %10s" % ("", "data s", "train+test s", "total s", "best/ran ep",
                                                   "test RMSE", "test AUC"))
    for r in results:
        print("%-18s %10.1f %12.1f %10.1f %12s %11s %10s" % (
            name[r["side"]], r["data_s"], r["run_s"], r["total_s"], "%d/%d" % (r["best_epoch"], r["epochs"]),
            fmt(r["rmse"], "%.4f"), fmt(r["auc"], "%.4f")))
    if len(results) == 2:
        m, t = results
        print("speed-up (PyTorch / mtrec): data %.1fx, train+test %.1fx, total %.1fx" %
              (t["data_s"] / m["data_s"] if m["data_s"] > 0 else float("nan"), t["run_s"] / m["run_s"],
               t["total_s"] / m["total_s"]))
        print("quality difference (mtrec - PyTorch): RMSE %+.4f, AUC %+.4f" % (m["rmse"] - t["rmse"], m["auc"] - t["auc"]))
    for r in results:
        if r["side"] == "pytorch":
            print("PyTorch %s, BLAS %s, %d threads; import torch %.1f s (in total)" %
                  (r["torch"], r["blas"], r["threads"], r["import_s"]))
    out = {"seed": ARGS.seed, "epochs": ARGS.epochs, "threads": ARGS.threads, "optimizer": ARGS.optimizer,
           "results": [{k: v for k, v in r.items() if k != "stdout"} for r in results]}
    print(json.dumps(out))
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
