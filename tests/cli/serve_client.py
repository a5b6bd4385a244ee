#!/usr/bin/env python3
"""The checks of tests/cli/test_mtrec_serve.sh against a running mtrec-serve.

    python3 serve_client.py PORT SCRATCH_DIR

The references are mtrec-train's own outputs for the same rows
(--load --predict), written before the server started.
"""
import csv
import http.client
import json
import os
import sys
import threading
import time

PORT = int(sys.argv[1])
DIR = sys.argv[2]
checks = 0
failures = 0


def expect(name, ok, detail=""):
    global checks, failures
    checks += 1
    if ok:
        print("ok   " + name)
    else:
        failures += 1
        print("FAIL " + name + (": " + detail if detail else ""))


def request(method, path, body=None, raw=None):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    text = r.read().decode("utf-8", "replace")
    conn.close()
    try:
        return r.status, json.loads(text)
    except ValueError:
        return r.status, text


def close(a, b, tol=1e-5):
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


# ---- healthz -------------------------------------------------------------------------
st, h = request("GET", "/healthz")
expect("healthz is ok at version 1", st == 200 and h.get("status") == "ok" and h.get("version") == 1
       and h.get("model", "").endswith("m1.safetensors"), str(h))

# ---- rank against --predict -------------------------------------------------------------
rows = list(csv.DictReader(open(os.path.join(DIR, "rank.csv"))))
pred = list(csv.DictReader(open(os.path.join(DIR, "pred.csv"))))
user = {"user": 5, "history": ["3", "9"], "age": 53}
cands = [{"movie": int(r["movie"]), "genres": r["genres"].split("|")} for r in rows]
st, out = request("POST", "/v1/rank", {"user": user, "candidates": cands, "k": len(cands)})
ok = st == 200 and len(out.get("items", [])) == len(cands)
detail = str(out)[:400]
if ok:
    for it in out["items"]:
        p = pred[it["index"]]
        s = it["scores"]
        ok = ok and close(s["like"], float(p["like"])) and close(s["rating"], float(p["rating"]))
    likes = [it["scores"]["like"] for it in out["items"]]
    ok = ok and likes == sorted(likes, reverse=True)
    ok = ok and sorted(it["index"] for it in out["items"]) == list(range(len(cands)))
expect("rank: every candidate's scores equal mtrec-train --predict's (1e-5), best first by 'like'", ok, detail)
st, top2 = request("POST", "/v1/rank", {"user": user, "candidates": cands, "k": 2})
expect("rank: k keeps the best k", st == 200 and [i["index"] for i in top2["items"]] ==
       [i["index"] for i in out["items"][:2]], str(top2)[:300])

# ---- retrieve against --predict's exact top-1 --------------------------------------------
st, ret = request("POST", "/v1/retrieve", {"user": user, "task": "next", "k": 5})
ok = st == 200 and len(ret.get("items", [])) == 5
if ok:
    ok = ret["items"][0]["id"] == pred[0]["next"] and close(ret["items"][0]["score"], float(pred[0]["next:score"]))
    scores = [i["score"] for i in ret["items"]]
    ok = ok and scores == sorted(scores, reverse=True)
expect("retrieve: the best item and its score equal --predict's exact top-1", ok, str(ret)[:400] + " vs " + str(pred[0]))
if st == 200:
    first = ret["items"][0]["id"]
    st2, ret2 = request("POST", "/v1/retrieve", {"user": user, "task": "next", "k": 4, "exclude": [first, "no-such-item"]})
    expect("retrieve: exclude removes the seen items (unknown ones ignored)",
           st2 == 200 and [i["id"] for i in ret2["items"]] == [i["id"] for i in ret["items"][1:5]], str(ret2)[:300])

# ---- malformed requests: each a 400 naming the field --------------------------------------
good_c = [{"movie": 3, "genres": ["Action"]}]
bad = [
    ("rank", None, b"{not json", "body"),
    ("rank", [1, 2], None, "body"),
    ("rank", {"user": user}, None, "candidates"),
    ("rank", {"user": user, "candidates": []}, None, "candidates"),
    ("rank", {"user": user, "candidates": {"movie": 1}}, None, "candidates"),
    ("rank", {"user": user, "candidates": [5]}, None, "candidates[0]"),
    ("rank", {"user": {"colour": "red"}, "candidates": good_c}, None, "user.colour"),
    ("rank", {"user": user, "candidates": [{"movie": 3, "shoe": 1}]}, None, "candidates[0].shoe"),
    ("rank", {"user": {"age": "old"}, "candidates": good_c}, None, "user.age"),
    ("rank", {"user": user, "candidates": [{"movie": 3}, {"age": "x"}]}, None, "candidates[1].age"),
    ("rank", {"user": {"user": True}, "candidates": good_c}, None, "user.user"),
    ("rank", {"user": {"user": {"a": 1}}, "candidates": good_c}, None, "user.user"),
    ("rank", {"user": {"user": [1, 2]}, "candidates": good_c}, None, "user"),
    ("rank", {"user": user, "candidates": good_c, "k": 0}, None, "k"),
    ("rank", {"user": user, "candidates": good_c, "k": "ten"}, None, "k"),
    ("rank", {"user": user, "candidates": good_c * 51}, None, "candidates"),
    ("rank", {"user": user, "candidates": good_c, "extra": 1}, None, "extra"),
    ("retrieve", {"user": user, "task": "like"}, None, "task"),
    ("retrieve", {"user": user, "task": "nope"}, None, "task"),
    ("retrieve", {"user": user, "task": "next", "exclude": "3"}, None, "exclude"),
    ("retrieve", {"user": user, "task": "next", "k": -1}, None, "k"),
    ("reload", {"path": 5}, None, "path"),
]
for i, (ep, body, raw, field) in enumerate(bad):
    st, r = request("POST", "/v1/" + ep, body, raw)
    msg = r.get("error", "") if isinstance(r, dict) else ""
    expect(f"malformed #{i + 1} ({ep}, {field}): 400 naming the field", st == 400 and field in msg,
           f"status {st}: {r}")
st, r = request("POST", "/v1/rank", raw=b'{"user":{},"candidates":[' + b'{"movie":1},' * 25000 + b'{}]}')
expect("a body over --max-body is refused (413) with a JSON error",
       st == 413 and isinstance(r, dict) and "body" in r.get("error", ""),
       f"{st} {str(r)[:200]}")
st, h = request("GET", "/healthz")
expect("the server still serves after the malformed requests", st == 200 and h["version"] == 1, str(h))

# ---- reloads under load ---------------------------------------------------------------------
stop = threading.Event()
results = {"ok": 0, "failed": 0, "versions": set(), "errors": []}


def client():
    while not stop.is_set():
        try:
            s, o = request("POST", "/v1/rank", {"user": user, "candidates": cands, "k": 3})
            if s == 200 and len(o["items"]) == 3:
                results["ok"] += 1
                results["versions"].add(o["version"])
            else:
                results["failed"] += 1
                results["errors"].append((s, str(o)[:200]))
        except Exception as e:  # a dropped connection is a failed request
            results["failed"] += 1
            results["errors"].append(str(e))


threads = [threading.Thread(target=client) for _ in range(2)]
for t in threads:
    t.start()
time.sleep(0.3)
st1, r1 = request("POST", "/v1/reload", {"path": os.path.join(DIR, "m2.safetensors")})
time.sleep(0.3)
st2, r2 = request("POST", "/v1/reload", {"path": os.path.join(DIR, "broken.safetensors")})
time.sleep(0.2)
st3, r3 = request("POST", "/v1/reload", {})  # the live path again
time.sleep(0.3)
stop.set()
for t in threads:
    t.join()
expect("reload to m2 answers version 2", st1 == 200 and r1.get("version") == 2, str(r1))
expect("a broken checkpoint is a 400 and the live model keeps serving",
       st2 == 400 and "path" in r2.get("error", "") and "keeps serving" in r2.get("error", ""), str(r2)[:300])
expect("reload without a path reloads the live one (version 3)", st3 == 200 and r3.get("version") == 3, str(r3))
expect(f"{results['ok']} requests during reloads: none failed, and they saw more than one version",
       results["failed"] == 0 and results["ok"] > 10 and len(results["versions"]) >= 2,
       f"failed {results['failed']} {results['errors'][:3]} versions {results['versions']}")
st, h = request("GET", "/healthz")
expect("healthz reports version 3 and m2", st == 200 and h["version"] == 3 and h["model"].endswith("m2.safetensors"), str(h))

# ---- metrics ----------------------------------------------------------------------------------
st, m = request("GET", "/metrics")
ok = st == 200 and isinstance(m, str)
if ok:
    ok = ('mtrec_requests_total{endpoint="/v1/rank"}' in m and 'mtrec_errors_total{endpoint="/v1/rank"}' in m
          and 'mtrec_request_seconds_bucket{endpoint="/v1/rank",le="+Inf"}' in m and "mtrec_model_version 3" in m
          and "mtrec_reload_failures_total 1" in m)
expect("metrics: requests, errors, the latency histogram, the version and reload failures", ok, str(m)[:300])
st, r = request("GET", "/nowhere")
expect("an unknown path is a 404 with a JSON error", st == 404 and "nowhere" in r.get("error", ""), str(r))

print(f"{checks - failures}/{checks} checks passed")
sys.exit(1 if failures else 0)
