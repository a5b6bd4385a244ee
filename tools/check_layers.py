#!/usr/bin/env python3
"""Checks that no folder of include/mtrec includes a folder above it.

The folders, lowest first. A header may include its own folder and any
folder in its `may_include` set; anything else is an upward (or sideways)
include and makes folder-level cycles possible. It also checks that no
header outside kernels/ includes Eigen. Exit status 1 lists every offence.
"""
import os
import re
import sys

MAY_INCLUDE = {
    "core": set(),
    "io": {"core"},
    "kernels": {"core"},
    "layers": {"core", "kernels"},
    "model": {"core", "io", "kernels", "layers"},
    "train": {"core", "io", "kernels", "layers", "model"},
    "serve": {"core", "io", "kernels", "layers", "model", "train"},
    "data": {"core", "io", "kernels", "layers", "model", "train"},
}

def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "include", "mtrec")
    bad = []
    for folder in sorted(os.listdir(root)):
        path = os.path.join(root, folder)
        if not os.path.isdir(path):
            continue
        if folder not in MAY_INCLUDE:
            bad.append(f"{folder}/: a folder tools/check_layers.py does not know; add it to MAY_INCLUDE")
            continue
        for dirpath, _, files in os.walk(path):
            for name in sorted(files):
                f = os.path.join(dirpath, name)
                rel = os.path.relpath(f, root)
                for n, line in enumerate(open(f, encoding="utf-8"), 1):
                    m = re.match(r'\s*#\s*include\s*["<]mtrec/([^/">]+)/', line)
                    if m and m.group(1) != folder and m.group(1) not in MAY_INCLUDE[folder]:
                        bad.append(f"{rel}:{n}: {folder}/ includes {m.group(1)}/, which is not below it")
                    if re.match(r'\s*#\s*include\s*[<"]Eigen/', line) and folder != "kernels":
                        bad.append(f"{rel}:{n}: Eigen is included outside kernels/")
    for b in bad:
        print(b)
    print(f"check_layers: {len(bad)} offence(s)")
    return 1 if bad else 0

if __name__ == "__main__":
    sys.exit(main())
