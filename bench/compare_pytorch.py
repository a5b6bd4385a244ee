#!/usr/bin/python3
"""mtrec vs PyTorch eager on the three workloads of bench/workloads.hpp.

Builds the same models in PyTorch (nn.Embedding per field, nn.EmbeddingBag
mean, learned position nn.Embedding, nn.TransformerEncoderLayer(norm_first=True,
activation='gelu', dropout=0, batch_first=True) with src_key_padding_mask and a
final LayerNorm, masked mean pooling, MMoE with softmax gates, towers, BCE + MSE,
torch.optim.Adam lr 1e-3), times a training step at the workload's batch and
inference at batch 1, 16 and 256 (warm-up, then the median of --reps), runs
mtrec's benchmark binary for the same measures in the same invocation, and
prints a side-by-side table.

    OMP_WAIT_POLICY=passive /usr/bin/python3 bench/compare_pytorch.py \
        --bench build-bench/bench/mtrec_bench --threads 2

Both sides use --threads threads (torch.set_num_threads, OpenBLAS threads; the
mtrec binary gets MTREC_BENCH_THREADS) and OMP_WAIT_POLICY=passive unless it
is already set. Note: torch's Adam is dense (every embedding row is updated
every step, nn.Embedding's default dense gradients), mtrec's Adam is lazy
(only the rows touched by the batch).

--device cuda: the same three models in PyTorch eager on the GPU (model and
batches moved to the device, fp32, TF32 off, as mtrec's default), against
mtrec_bench_cuda (--bench-cuda, run with --json in the same invocation):

    /usr/bin/python3 bench/compare_pytorch.py --device cuda \
        --bench-cuda build-cuda/mtrec_bench_cuda

Torch is timed with torch.cuda.Event pairs on the current stream around each
call and torch.cuda.synchronize() after it (warm-up first, median of --reps);
mtrec_bench_cuda times its calls with CUDA events on its thread's stream. The
table compares the event times: training step at the workload's batch and
inference at batch 256 and 1 (torch's batches live on the GPU already, while
mtrec's train_step/predict take a host batch and upload it inside the timed
call; predict also copies its outputs back to the host). Then the kernel
lines from mtrec_bench_cuda: the embedding-bag forward and the fused
backward + Adam (and the unfused path) in GB/s and % of the measured
device-to-device copy bandwidth. Targets, each marked met/missed: ref and
large train step >= 3x torch, inference b256 >= 3x torch (every workload),
embedding-bag forward >= 60% of copy bandwidth, fused backward + Adam >= 25%.
Without a GPU (torch.cuda.is_available() false, or mtrec_bench_cuda reports
no device) it prints "no CUDA device" and exits with status 2.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WORKLOADS = {
    # name: batch, id fields, rows, dim, T, d_model, heads, ffn, layers, experts, expert hidden, tower, tasks
    "small": dict(batch=64, fields=8, rows=10000, dim=16, T=20, d_model=32, heads=2, ffn=64, layers=1,
                  experts=4, hidden=(128, 64), tower=32, tasks=2),
    "ref": dict(batch=512, fields=8, rows=50000, dim=32, T=50, d_model=64, heads=4, ffn=128, layers=2,
                experts=4, hidden=(256, 128), tower=64, tasks=2),
    "large": dict(batch=2048, fields=16, rows=100000, dim=32, T=100, d_model=64, heads=4, ffn=256, layers=2,
                  experts=8, hidden=(512, 256), tower=64, tasks=3),
}
BAG_VOCAB, BAG_LEN = 32, 4
INFER_BATCHES = (1, 16, 256)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default="build-bench/bench/mtrec_bench", help="mtrec_bench binary")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workloads", default="small,ref,large", help="comma list of small, ref, large")
    ap.add_argument("--reps", type=int, default=0, help="timed repetitions per torch measure (0: automatic)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions on both sides (a smoke run)")
    ap.add_argument("--min-time", type=float, default=0.0, help="mtrec --benchmark_min_time (0: automatic)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: also time mtrec with ModelConfig::precision = BF16 (BM_model_*_bf16) and torch "
                         "under torch.autocast('cpu', dtype=torch.bfloat16), in the same sitting")
    ap.add_argument("--json", default="", help="also write the results as JSON to this path")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu (default): mtrec_bench vs torch on the CPU; cuda: mtrec_bench_cuda vs torch on the GPU")
    ap.add_argument("--bench-cuda", default="build-cuda/mtrec_bench_cuda",
                    help="mtrec_bench_cuda binary (--device cuda)")
    return ap.parse_args()


ARGS = parse_args()
# Environment for torch's OpenMP and OpenBLAS pools: must be set before import.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.threads)

try:
    import torch  # noqa: E402
    import torch.nn as nn  # noqa: E402
    import torch.nn.functional as F  # noqa: E402
except ImportError as e:
    if ARGS.device != "cuda":
        raise
    sys.exit("compare_pytorch.py: no CUDA device: torch cannot be imported (%s)" % e)


def blas_libraries():
    """BLAS/LAPACK shared objects mapped into this process (after importing torch)."""
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                base = os.path.basename(path).lower()
                if any(k in base for k in ("blas", "lapack", "mkl", "blis")):
                    libs.add(os.path.realpath(path))
    except OSError:
        pass
    return sorted(libs)


def blas_summary():
    libs = blas_libraries()
    name = "unknown"
    joined = " ".join(libs).lower()
    if "openblas" in joined:
        name = "OpenBLAS" + (" (pthread)" if "pthread" in joined else " (openmp)" if "openmp" in joined else "")
    elif "mkl" in joined:
        name = "MKL"
    elif "blis" in joined:
        name = "BLIS"
    elif libs:
        name = "reference BLAS"
    cfg = torch.__config__.show()
    info = [l.strip() for l in cfg.splitlines() if "BLAS_INFO" in l or "MKL-DNN" in l or "CPU capability" in l]
    blas_info = ""
    for part in cfg.replace("\n", ",").split(","):
        if "BLAS_INFO" in part:
            blas_info = part.strip()
    return name, libs, blas_info, info


class Model(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = w
        self.fields = nn.ModuleList(nn.Embedding(w["rows"], w["dim"]) for _ in range(w["fields"]))
        self.bag = nn.EmbeddingBag(BAG_VOCAB, w["dim"], mode="mean")
        self.items = nn.Embedding(w["rows"], w["d_model"])
        self.pos = nn.Embedding(w["T"], w["d_model"])
        layer = nn.TransformerEncoderLayer(w["d_model"], w["heads"], w["ffn"], dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        try:
            self.encoder = nn.TransformerEncoder(layer, w["layers"], norm=nn.LayerNorm(w["d_model"]),
                                                 enable_nested_tensor=False)
        except TypeError:
            self.encoder = nn.TransformerEncoder(layer, w["layers"], norm=nn.LayerNorm(w["d_model"]))
        in_dim = w["fields"] * w["dim"] + w["dim"] + w["d_model"]
        h1, h2 = w["hidden"]
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(in_dim, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU()) for _ in range(w["experts"]))
        self.gates = nn.ModuleList(nn.Linear(in_dim, w["experts"]) for _ in range(w["tasks"]))
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(h2, w["tower"]), nn.ReLU(), nn.Linear(w["tower"], 1)) for _ in range(w["tasks"]))
        self.register_buffer("positions", torch.arange(w["T"]), persistent=False)

    def forward(self, b):
        parts = [emb(b["ids"][:, f]) for f, emb in enumerate(self.fields)]
        parts.append(self.bag(b["bag_ids"], b["bag_offsets"]))
        x = self.items(b["seq_ids"]) + self.pos(self.positions)
        h = self.encoder(x, src_key_padding_mask=b["pad_mask"])
        valid = (~b["pad_mask"]).unsqueeze(-1).to(h.dtype)
        parts.append((h * valid).sum(1) / b["lengths"].unsqueeze(-1).to(h.dtype))
        X = torch.cat(parts, 1)
        E = torch.stack([e(X) for e in self.experts], 1)  # (B, E, h2)
        outs = []
        for gate, tower in zip(self.gates, self.towers):
            g = torch.softmax(gate(X), -1).unsqueeze(-1)
            outs.append(tower((g * E).sum(1)).squeeze(-1))
        return outs


def make_batch(w, B, seed):
    g = torch.Generator().manual_seed(seed)
    T = w["T"]
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    pad_mask = torch.arange(T).unsqueeze(0) >= lengths.unsqueeze(1)
    seq_ids = torch.randint(0, w["rows"], (B, T), generator=g).masked_fill(pad_mask, 0)
    labels = [torch.randint(0, 2, (B,), generator=g).float() if k == 0 else torch.randn(B, generator=g)
              for k in range(w["tasks"])]
    return dict(ids=torch.randint(0, w["rows"], (B, w["fields"]), generator=g),
                bag_ids=torch.randint(0, BAG_VOCAB, (B * BAG_LEN,), generator=g),
                bag_offsets=torch.arange(0, B * BAG_LEN, BAG_LEN),
                seq_ids=seq_ids, lengths=lengths, pad_mask=pad_mask, labels=labels)


def loss_fn(outs, labels):
    loss = F.binary_cross_entropy_with_logits(outs[0], labels[0])
    for o, y in zip(outs[1:], labels[1:]):
        loss = loss + F.mse_loss(o, y)
    return loss


def timed(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def torch_measures(name, w, quick, reps_arg, autocast=False):
    """Median ms per measure; autocast: forward and loss under torch.autocast("cpu", bfloat16)."""
    import contextlib
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    torch.manual_seed(1)
    model = Model(w)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    res = {}
    train_batch = make_batch(w, w["batch"], 7)

    def step():
        opt.zero_grad(set_to_none=True)
        with ctx():
            loss = loss_fn(model(train_batch), train_batch["labels"])
        loss.backward()
        opt.step()

    model.train()
    reps = reps_arg or (3 if quick else (5 if name == "large" else 10))
    res["train step"] = timed(step, 2 if quick else 3, reps)
    model.eval()
    for B in INFER_BATCHES:
        b = make_batch(w, B, 100 + B)

        def infer():
            with torch.inference_mode(), ctx():
                outs = model(b)
                return torch.sigmoid(outs[0])

        r = reps_arg or (5 if quick else (50 if B <= 16 else 10))
        try:
            res["infer b%d" % B] = timed(infer, 2 if quick else 5, r)
        except RuntimeError as e:
            # torch 1.13's fused TransformerEncoder inference path refuses
            # autocast ("expected scalar type BFloat16 but found Float")
            if not autocast:
                raise
            print("# torch autocast inference b%d: n/a (%s)" % (B, str(e).splitlines()[0]), flush=True)
            break
    return res


def mtrec_measures(bench, threads, names, quick, min_time, bf16=False):
    kinds = "train|predict|train_bf16|predict_bf16" if bf16 else "train|predict"
    filt = "BM_model_(%s)/(%s)/.*omp:%d/" % (kinds, "|".join(names), threads)
    mt = min_time or (0.05 if quick else 0.3)
    cmd = [bench, "--benchmark_filter=" + filt, "--benchmark_format=json", "--benchmark_min_time=%g" % mt]
    if not quick:
        cmd += ["--benchmark_repetitions=3", "--benchmark_report_aggregates_only=true"]
    env = dict(os.environ)
    env["MTREC_BENCH_THREADS"] = str(threads)
    env["OMP_NUM_THREADS"] = str(threads)
    print("# running: MTREC_BENCH_THREADS=%d OMP_WAIT_POLICY=%s %s" % (threads, env["OMP_WAIT_POLICY"], " ".join(
        "'%s'" % c if "(" in c else c for c in cmd)), flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, env=env).stdout
    data = json.loads(out)
    res = {}
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        name = b.get("run_name", b["name"])
        scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ns")]
        ms = b["real_time"] * scale
        parts = name.split("/")
        wl = parts[1]
        suffix = " bf16" if parts[0].endswith("_bf16") else ""
        if parts[0].startswith("BM_model_train"):
            res[(wl, "train step" + suffix)] = ms
        else:
            B = int(parts[2].split(":")[1])
            res[(wl, "infer b%d" % B + suffix)] = ms
        if suffix and b.get("label"):
            res[(wl, "bf16 path")] = b["label"]
    return res, data.get("context", {})


# ---- --device cuda -------------------------------------------------------------------------

CUDA_MEASURES = ("train step", "infer b256", "infer b1")
# (workload or None for every workload, measure): the speed-up mtrec must reach
CUDA_SPEEDUP_TARGETS = {("ref", "train step"): 3.0, ("large", "train step"): 3.0, (None, "infer b256"): 3.0}
# mtrec_bench_cuda kernel measure: (label, minimum % of the copy bandwidth or None)
CUDA_KERNEL_LINES = (
    ("bag_forward", "embedding-bag forward (1M x 64, 2048 x 32, mean)", 60.0),
    ("bag_backward_adam_fused", "fused embedding-bag backward + Adam", 25.0),
    ("bag_backward_adam_unfused", "unfused: zero_rows + backward + adam_update_rows", None),
)


def speedup_target(workload, measure):
    return CUDA_SPEEDUP_TARGETS.get((workload, measure), CUDA_SPEEDUP_TARGETS.get((None, measure)))


def batch_to(b, dev):
    return {k: ([t.to(dev) for t in v] if isinstance(v, list) else v.to(dev)) for k, v in b.items()}


def timed_cuda(fn, warmup, reps):
    """Median event ms and median wall ms of fn() on the current CUDA stream."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    gpu, wall = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        wall.append((time.perf_counter() - t0) * 1e3)
        gpu.append(start.elapsed_time(end))
    return statistics.median(gpu), statistics.median(wall)


def torch_cuda_measures(name, w, quick, reps_arg):
    dev = torch.device("cuda")
    torch.manual_seed(1)
    model = Model(w).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    res = {}
    train_batch = batch_to(make_batch(w, w["batch"], 7), dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(train_batch), train_batch["labels"])
        loss.backward()
        opt.step()

    model.train()
    reps = reps_arg or (5 if quick else 20)
    res["train step"] = timed_cuda(step, 3 if quick else 10, reps)
    model.eval()
    for B in (256, 1):
        b = batch_to(make_batch(w, B, 100 + B), dev)

        def infer():
            with torch.inference_mode():
                outs = model(b)
                return torch.sigmoid(outs[0])

        r = reps_arg or (5 if quick else 50)
        res["infer b%d" % B] = timed_cuda(infer, 3 if quick else 10, r)
    del model, opt, train_batch
    torch.cuda.empty_cache()
    return res


def mtrec_cuda_measures(bench, names, quick, reps_arg):
    """Runs mtrec_bench_cuda --json; returns ({(workload, measure): row}, json) or exits."""
    if not os.path.isfile(bench) or not os.access(bench, os.X_OK):
        sys.exit("compare_pytorch.py: mtrec_bench_cuda not found at '%s' (build it with nvcc and "
                 "-DMTREC_WITH_CUDA=1, or pass --bench-cuda PATH)" % bench)
    import tempfile
    fd, path = tempfile.mkstemp(prefix="mtrec_bench_cuda_", suffix=".json")
    os.close(fd)
    cmd = [bench, "--workloads", ",".join(names), "--json", path]
    if reps_arg or quick:
        cmd += ["--reps", str(reps_arg or 5)]
    print("# running: %s" % " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, universal_newlines=True)
        sys.stdout.write(proc.stdout)
        sys.stdout.flush()
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, ValueError) as e:
            sys.exit("compare_pytorch.py: %s exited with status %d and wrote no readable JSON (%s)" % (
                bench, proc.returncode, e))
    finally:
        try:
            os.remove(path)
        except OSError:
            pass
    if "no_device" in data:
        print("compare_pytorch.py: no CUDA device (mtrec_bench_cuda: %s)" % data["no_device"], file=sys.stderr)
        sys.exit(2)
    if proc.returncode != 0:
        print("# WARNING: %s exited with status %d: %s" % (bench, proc.returncode,
                                                           "; ".join(data.get("errors", [])) or "see above"))
    return {(r["workload"], r["measure"]): r for r in data.get("results", [])}, data


def main_cuda(names):
    if not torch.cuda.is_available():
        print("compare_pytorch.py: no CUDA device (torch %s, built for CUDA %s: torch.cuda.is_available() is "
              "False)" % (torch.__version__, torch.version.cuda or "none"), file=sys.stderr)
        return 2
    torch.set_num_threads(ARGS.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    print("# torch %s (CUDA %s), device %s, %.1f GiB; fp32, TF32 off" % (
        torch.__version__, torch.version.cuda, props.name, props.total_memory / 2.0 ** 30))
    mt, mdata = mtrec_cuda_measures(ARGS.bench_cuda, names, ARGS.quick, ARGS.reps)
    md = mdata.get("device", {})
    if md:
        print("# mtrec_bench_cuda device: %s, sm_%s, L2 %s MiB" % (
            md.get("name", "?"), md.get("sm", "?"), (md.get("l2_bytes") or 0) >> 20))
    rows = []
    for n in names:
        w = WORKLOADS[n]
        print("# torch cuda: timing %s ..." % n, flush=True)
        tt = torch_cuda_measures(n, w, ARGS.quick, ARGS.reps)
        for measure in CUDA_MEASURES:
            r = mt.get((n, measure))
            m = r.get("ms") if r else None
            t, t_wall = tt.get(measure, (None, None))
            sp = (t / m) if (m and t) else None
            target = speedup_target(n, measure)
            status = None if target is None else ("n/a" if sp is None else "met" if sp >= target else "MISSED")
            label = measure + (" (b%d)" % w["batch"] if measure == "train step" else "")
            rows.append(dict(workload=n, measure=label, mtrec_ms=m, mtrec_wall_ms=r.get("wall_ms") if r else None,
                             torch_ms=t, torch_wall_ms=t_wall, speedup=sp, target=target, status=status))
    f = lambda v, d=3: ("%.*f" % (d, v)) if v is not None else "n/a"
    print()
    print("| workload | measure | mtrec ms | torch ms | speed-up (torch/mtrec) | target |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        tgt = ">= %gx: %s" % (r["target"], r["status"]) if r["target"] is not None else ""
        print("| %s | %s | %s | %s | %s | %s |" % (r["workload"], r["measure"], f(r["mtrec_ms"]), f(r["torch_ms"]),
                                                (f(r["speedup"], 2) + "x") if r["speedup"] else "n/a", tgt))
    copy = mt.get(("kernels", "copy"))
    kernel_rows = []
    print()
    if copy:
        print("copy bandwidth (cudaMemcpyAsync 1 GiB D2D, read + write): %.1f GB/s" % copy["gbs"])
    else:
        print("copy bandwidth: n/a (mtrec_bench_cuda reported no copy figure)")
    print("| kernel | ms | GB/s | % of copy | target |")
    print("|---|---:|---:|---:|---|")
    for key, label, target in CUDA_KERNEL_LINES:
        r = mt.get(("kernels", key))
        gbs = r.get("gbs") if r else None
        pct = r.get("pct_copy") if r else None
        status = None if target is None else ("n/a" if pct is None else "met" if pct >= target else "MISSED")
        kernel_rows.append(dict(kernel=key, label=label, ms=r.get("ms") if r else None, gbs=gbs, pct_copy=pct,
                                target_pct=target, status=status))
        print("| %s | %s | %s | %s | %s |" % (label, f(r.get("ms") if r else None, 4), f(gbs, 1),
                                            (f(pct, 1) + "%") if pct is not None else "n/a",
                                            ">= %g%%: %s" % (target, status) if target is not None else ""))
    checked = [r["status"] for r in rows + kernel_rows if r["status"] is not None]
    print()
    print("targets: %d of %d met" % (checked.count("met"), len(checked)))
    if ARGS.json:
        with open(ARGS.json, "w") as fh:
            json.dump(dict(device="cuda", torch=torch.__version__, torch_cuda=torch.version.cuda, gpu=props.name,
                           mtrec=mdata, rows=rows, kernels=kernel_rows,
                           copy_gbs=copy.get("gbs") if copy else None), fh, indent=1)
    return 0


def main():
    if ARGS.device == "cuda":
        names = [n.strip() for n in ARGS.workloads.split(",") if n.strip()]
        for n in names:
            if n not in WORKLOADS:
                sys.exit("unknown workload '%s' (expected small, ref, large)" % n)
        sys.exit(main_cuda(names))
    names = [n.strip() for n in ARGS.workloads.split(",") if n.strip()]
    for n in names:
        if n not in WORKLOADS:
            sys.exit("unknown workload '%s' (expected small, ref, large)" % n)
    torch.set_num_threads(ARGS.threads)
    blas, libs, blas_info, cfg_lines = blas_summary()
    print("# torch %s, threads %d (torch.get_num_threads() = %d), OMP_WAIT_POLICY=%s" % (
        torch.__version__, ARGS.threads, torch.get_num_threads(), os.environ.get("OMP_WAIT_POLICY")))
    print("# torch BLAS: %s  [%s]  (%s)" % (blas, ", ".join(libs) or "none mapped", blas_info or "no BLAS_INFO"))
    for l in cfg_lines:
        if "BLAS_INFO" not in l:
            print("#   " + l[:120])
    bf16 = ARGS.precision == "bf16"
    mt, ctx = mtrec_measures(ARGS.bench, ARGS.threads, names, ARGS.quick, ARGS.min_time, bf16)
    if ctx:
        print("# mtrec peak probe: %s GFLOP/s FMA (%s), %s GB/s triad, %s threads" % (
            ctx.get("mtrec_peak_fma_gflops", "?"), ctx.get("mtrec_peak_isa", "?"),
            ctx.get("mtrec_peak_triad_gbs", "?"), ctx.get("mtrec_peak_threads", "?")))
    rows = []
    for n in names:
        w = WORKLOADS[n]
        print("# torch: timing %s ..." % n, flush=True)
        tt = torch_measures(n, w, ARGS.quick, ARGS.reps)
        for measure in ["train step"] + ["infer b%d" % B for B in INFER_BATCHES]:
            m = mt.get((n, measure))
            t = tt.get(measure)
            label = measure + (" (b%d)" % w["batch"] if measure == "train step" else "")
            rows.append((n, label, m, t, (t / m) if (m and t) else None))
    print()
    print("| workload | measure | mtrec ms | torch ms | speed-up (torch/mtrec) |")
    print("|---|---|---:|---:|---:|")
    for n, label, m, t, r in rows:
        f = lambda v, d=3: ("%.*f" % (d, v)) if v is not None else "n/a"
        print("| %s | %s | %s | %s | %s |" % (n, label, f(m), f(t), (f(r, 2) + "x") if r else "n/a"))
    if bf16:
        rows16 = []
        for n in names:
            w = WORKLOADS[n]
            print("# torch: timing %s under bf16 autocast ..." % n, flush=True)
            ta = torch_measures(n, w, ARGS.quick, ARGS.reps, autocast=True)
            for measure in ["train step"] + ["infer b%d" % B for B in INFER_BATCHES]:
                rows16.append((n, measure, mt.get((n, measure)), mt.get((n, measure + " bf16")),
                               [r[3] for r in rows if r[0] == n and r[1].startswith(measure)][0], ta.get(measure)))
        print()
        print("mtrec bf16 path: %s" % ", ".join(sorted(set(str(mt.get((n, "bf16 path"), "?")) for n in names))))
        print("| workload | measure | mtrec fp32 ms | mtrec bf16 ms | torch fp32 ms | torch bf16 autocast ms "
              "| bf16 vs autocast | bf16 vs torch fp32 |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for n, measure, m32, m16, t32, t16 in rows16:
            f = lambda v, d=3: ("%.*f" % (d, v)) if v is not None else "n/a"
            r1 = (t16 / m16) if (m16 and t16) else None
            r2 = (t32 / m16) if (m16 and t32) else None
            print("| %s | %s | %s | %s | %s | %s | %s | %s |" % (n, measure, f(m32), f(m16), f(t32), f(t16),
                  (f(r1, 2) + "x") if r1 else "n/a", (f(r2, 2) + "x") if r2 else "n/a"))
    if ARGS.json:
        with open(ARGS.json, "w") as fh:
            json.dump(dict(threads=ARGS.threads, blas=blas, torch=torch.__version__, mtrec_context=ctx,
                           rows=[dict(workload=n, measure=l, mtrec_ms=m, torch_ms=t, speedup=r)
                                 for n, l, m, t, r in rows]), fh, indent=1)


if __name__ == "__main__":
    main()
