#!/usr/bin/env python3
"""Generate single_include/mtrec/mtrec.hpp from include/mtrec/.

Starting at include/mtrec/mtrec.hpp, every `#include "mtrec/..."` is replaced
by the text of that header, recursively and depth-first, each header once, so
a header's dependencies always come before it. `#pragma once` lines of the
inlined headers are dropped. System includes (`#include <...>`) stay where
they are; a repeat of one already emitted is dropped, which is order-safe
because the first copy comes earlier in the file. The output is deterministic
(no dates, no absolute paths).

    python3 tools/amalgamate.py            # (re)write single_include/mtrec/mtrec.hpp
    python3 tools/amalgamate.py --check    # exit 1 if the committed file is stale
    python3 tools/amalgamate.py --stdout   # print the result instead of writing it

Requires Python 3.6+ and nothing else.
"""

import argparse
import difflib
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE_DIR = os.path.join(ROOT, "include")
ENTRY = "mtrec/mtrec.hpp"
OUTPUT = os.path.join(ROOT, "single_include", "mtrec", "mtrec.hpp")
CONFIG = os.path.join(INCLUDE_DIR, "mtrec", "core", "config.hpp")

LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')
SYSTEM_INCLUDE = re.compile(r"^\s*#\s*include\s*<([^>]+)>")
PRAGMA_ONCE = re.compile(r"^\s*#\s*pragma\s+once\b")
COND_OPEN = re.compile(r"^\s*#\s*if(n?def)?\b")
COND_CLOSE = re.compile(r"^\s*#\s*endif\b")
# The CUDA kernels (kernels/cuda/*.cuh) are the one part of the library
# included inside a conditional (kernels/cuda.hpp: nvcc and MTREC_WITH_CUDA
# only). They are inlined in place, inside that #if; whatever else they
# include must already be in the output.
CONDITIONAL_PREFIX = "mtrec/kernels/cuda/"


class AmalgamateError(Exception):
    pass


def read_version():
    parts = {}
    with open(CONFIG, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\s*#\s*define\s+MTREC_VERSION_(MAJOR|MINOR|PATCH)\s+(\d+)", line)
            if m:
                parts[m.group(1)] = m.group(2)
    if set(parts) != {"MAJOR", "MINOR", "PATCH"}:
        raise AmalgamateError("could not read MTREC_VERSION_MAJOR/MINOR/PATCH from %s" % CONFIG)
    return "%s.%s.%s" % (parts["MAJOR"], parts["MINOR"], parts["PATCH"])


def generate():
    version = read_version()
    out = []
    done = set()        # headers already inlined
    active = []         # include stack, to report cycles
    seen_system = set()

    def inline(rel, from_where, conditional=False):
        if rel in done:
            return
        if conditional and not rel.startswith(CONDITIONAL_PREFIX):
            raise AmalgamateError('%s includes "%s" inside a conditional block; include it unconditionally before '
                                  "the #if" % (from_where, rel))
        if rel in active:
            raise AmalgamateError("include cycle: %s" % " -> ".join(active + [rel]))
        path = os.path.join(INCLUDE_DIR, rel)
        if not os.path.isfile(path):
            raise AmalgamateError('%s includes "%s", which is not a file under include/' % (from_where, rel))
        active.append(rel)
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        out.append("")
        out.append("// ==== begin %s " % rel + "=" * max(0, 66 - len(rel)))
        depth = 0  # preprocessor conditional nesting inside this header
        for line in lines:
            if PRAGMA_ONCE.match(line):
                continue
            if COND_OPEN.match(line):
                depth += 1
            elif COND_CLOSE.match(line):
                depth -= 1
            m = LOCAL_INCLUDE.match(line)
            if m:
                target = m.group(1)
                if not target.startswith("mtrec/"):
                    raise AmalgamateError('%s: quoted include "%s" must be spelled "mtrec/..."' % (rel, target))
                inside = conditional or depth != 0
                if inside and not target.startswith(CONDITIONAL_PREFIX) and target not in done:
                    # Inlined once, it would be missing wherever the condition is false.
                    raise AmalgamateError('%s: "%s" is included inside #if; mtrec headers must be included '
                                          "unconditionally" % (rel, target))
                inline(target, rel, inside)
                continue
            m = SYSTEM_INCLUDE.match(line)
            if m:
                key = m.group(1).strip()
                if key in seen_system:
                    continue
                # Only an unconditional include makes later copies redundant.
                if depth == 0 and not conditional:
                    seen_system.add(key)
            out.append(line.rstrip())
        out.append("// ==== end %s " % rel + "=" * max(0, 68 - len(rel)))
        active.pop()
        done.add(rel)

    inline(ENTRY, "tools/amalgamate.py")

    header = [
        "// mtrec %s: single-header distribution." % version,
        "//",
        "// GENERATED by tools/amalgamate.py from include/mtrec/ -- DO NOT EDIT BY HAND.",
        "// Edit the headers under include/mtrec/ and run `python3 tools/amalgamate.py`;",
        "// CI fails when this file differs from what the script generates.",
        "//",
        "// Needs Eigen 3.4 and xsimd 8 on the include path and -std=c++17; add -fopenmp",
        "// for parallel kernels and -march=native (or -mavx2 -mfma) for wide SIMD.",
        "// Compiled by nvcc with -DMTREC_WITH_CUDA=1 it also holds the CUDA backend",
        "// (the Cuda device; link cudart and cublas).",
        "#pragma once",
        "",
        "#define MTREC_SINGLE_HEADER 1",
    ]
    # Collapse runs of blank lines left where includes were removed.
    body = []
    for line in out:
        if line == "" and body and body[-1] == "":
            continue
        body.append(line)
    text = "\n".join(header + body).rstrip("\n") + "\n"
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description="Generate single_include/mtrec/mtrec.hpp from include/mtrec/.")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="do not write; exit 1 if single_include/mtrec/mtrec.hpp is missing or stale")
    mode.add_argument("--stdout", action="store_true", help="print the generated header instead of writing it")
    args = ap.parse_args(argv)

    try:
        text = generate()
    except AmalgamateError as e:
        print("amalgamate.py: error: %s" % e, file=sys.stderr)
        return 2

    rel_out = os.path.relpath(OUTPUT, ROOT)
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        if not os.path.isfile(OUTPUT):
            print("amalgamate.py --check: %s does not exist.\n"
                  "Run `python3 tools/amalgamate.py` and commit the result." % rel_out, file=sys.stderr)
            return 1
        with open(OUTPUT, encoding="utf-8", newline="") as f:
            current = f.read()
        if current == text:
            print("amalgamate.py --check: %s is up to date." % rel_out)
            return 0
        diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(),
                                         "%s (committed)" % rel_out, "%s (generated)" % rel_out, lineterm="", n=1))
        shown = diff[:40]
        print("amalgamate.py --check: %s is STALE: it differs from what include/ generates "
              "(%d diff lines; first ones below).\n"
              "Do not edit it by hand: run `python3 tools/amalgamate.py` and commit the result.\n" %
              (rel_out, len(diff)), file=sys.stderr)
        print("\n".join(shown), file=sys.stderr)
        if len(diff) > len(shown):
            print("... (%d more lines)" % (len(diff) - len(shown)), file=sys.stderr)
        return 1

    os.makedirs(os.path.dirname(OUTPUT), exist_ok=True)
    old = None
    if os.path.isfile(OUTPUT):
        with open(OUTPUT, encoding="utf-8", newline="") as f:
            old = f.read()
    if old == text:
        print("%s is already up to date." % rel_out)
        return 0
    with open(OUTPUT, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print("wrote %s (%d lines)" % (rel_out, text.count("\n")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
