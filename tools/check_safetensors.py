#!/usr/bin/env python3
"""Independent reader and validator for safetensors files (e.g. mtrec checkpoints).

    python3 tools/check_safetensors.py FILE [FILE ...]
    python3 tools/check_safetensors.py --no-torch model.safetensors

Why this exists: the official `safetensors` Python package is not packaged in
Debian 12 and this environment has no PyPI access, so mtrec's writer cannot be
checked against it directly. This script re-implements the reader from the
published format description (https://github.com/huggingface/safetensors,
README "Format") using only the Python standard library and numpy, plus torch
when it is importable (Debian: /usr/bin/python3 with python3-torch), and it
applies the same validation as the official Rust reader:

  * the file has at least 8 bytes; N (u64 little-endian) <= 100,000,000 and
    8 + N <= file size;
  * the header starts with '{', is UTF-8 JSON, and is an object;
  * "__metadata__" (optional) is an object of string -> string (null is
    accepted as "no metadata", as serde does);
  * every other entry has dtype (a known name), shape (non-negative integers)
    and data_offsets [begin, end] with begin <= end;
  * the element count does not overflow and end - begin == numel * dtype size;
  * sorted by offsets, the tensors tile the data buffer exactly (no overlap,
    no hole, no trailing bytes).

It is deliberately as strict as mtrec's own reader (include/mtrec/io/
safetensors.hpp) where that is stricter than the official one: duplicate
JSON keys, unknown fields in a tensor entry, NaN/Infinity literals, lone
surrogate escapes and booleans used as integers are all errors.

For every tensor it prints name, dtype, shape, byte range, the sum of its
values (exact for integers; correctly rounded with math.fsum for floats) and
the first 16 hex digits of the SHA-256 of its bytes. With torch it also loads
every tensor with torch.frombuffer and checks that torch decodes the same
values as numpy.

Exit status: 0 when every file is valid, 1 when any file is invalid or a check
fails, 2 on a usage or I/O error.
"""

import argparse
import hashlib
import json
import math
import struct
import sys

try:
    import numpy as np
except ImportError:  # pragma: no cover - depends on the interpreter
    print("check_safetensors.py needs numpy (Debian: apt-get install python3-numpy; "
          "run it with /usr/bin/python3)", file=sys.stderr)
    sys.exit(2)

try:
    import torch  # optional
except ImportError:  # pragma: no cover - depends on the interpreter
    torch = None

MAX_HEADER_SIZE = 100_000_000

# name -> (bytes per element, numpy dtype or None when numpy has no such type)
DTYPES = {
    "BOOL": (1, np.dtype("?")),
    "U8": (1, np.dtype("u1")),
    "I8": (1, np.dtype("i1")),
    "F8_E5M2": (1, None),
    "F8_E4M3": (1, None),
    "F8_E8M0": (1, None),
    "I16": (2, np.dtype("<i2")),
    "U16": (2, np.dtype("<u2")),
    "F16": (2, np.dtype("<f2")),
    "BF16": (2, None),  # decoded by hand below
    "I32": (4, np.dtype("<i4")),
    "U32": (4, np.dtype("<u4")),
    "F32": (4, np.dtype("<f4")),
    "F64": (8, np.dtype("<f8")),
    "I64": (8, np.dtype("<i8")),
    "U64": (8, np.dtype("<u8")),
}
SUB_BYTE_DTYPES = {"F4", "F6_E2M3", "F6_E3M2"}
TORCH_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
    "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32",
    "F32": "float32", "F64": "float64", "I64": "int64", "U64": "uint64",
    "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu",
}
ENTRY_FIELDS = ("dtype", "shape", "data_offsets")


class Invalid(Exception):
    """The file breaks the format; the message says how."""


def _no_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise Invalid(f"duplicate key {key!r} in the header JSON")
        obj[key] = value
    return obj


def _reject_constant(name):
    raise Invalid(f"the header contains {name}, which is not JSON")


def _is_uint(v):
    # bool is a subclass of int in Python; JSON true is not an integer.
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_strings(v, where="header"):
    """Lone surrogates (from \\ud800 escapes) are not Unicode text; serde rejects them."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise Invalid(f"{where}: string with a lone surrogate escape: {v!r}") from e
    elif isinstance(v, dict):
        for k, x in v.items():
            _check_strings(k, where)
            _check_strings(x, where)
    elif isinstance(v, list):
        for x in v:
            _check_strings(x, where)


def parse(data):
    """Validates the bytes of a safetensors file. Returns (n, metadata, tensors)
    with tensors as a list of dicts sorted by data offset."""
    size = len(data)
    if size < 8:
        raise Invalid(f"file is {size} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_SIZE:
        raise Invalid(f"header length {n} exceeds the limit of {MAX_HEADER_SIZE} bytes")
    if n > size - 8:
        raise Invalid(f"header length {n} exceeds the {size - 8} bytes after the length prefix")
    raw_header = data[8:8 + n]
    if not raw_header.startswith(b"{"):
        raise Invalid("the header does not start with '{'")
    try:
        text = raw_header.decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        raise Invalid(f"the header is not valid UTF-8: {e}") from e
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise Invalid(f"the header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise Invalid("the header is not a JSON object")
    _check_strings(header)

    buffer_size = size - 8 - n
    metadata = {}
    tensors = []
    for name, entry in header.items():
        if name == "__metadata__":
            if entry is None:
                continue
            if not isinstance(entry, dict):
                raise Invalid("__metadata__ is not an object")
            for k, v in entry.items():
                if not isinstance(v, str):
                    raise Invalid(f"__metadata__[{k!r}] is not a string: {v!r}")
            metadata = dict(entry)
            continue
        if not isinstance(entry, dict):
            raise Invalid(f"entry of tensor {name!r} is not an object")
        for field in entry:
            if field not in ENTRY_FIELDS:
                raise Invalid(f"tensor {name!r} has an unknown field {field!r}")
        for field in ENTRY_FIELDS:
            if field not in entry:
                raise Invalid(f"tensor {name!r} has no {field!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str):
            raise Invalid(f"dtype of tensor {name!r} is not a string: {dtype!r}")
        if dtype in SUB_BYTE_DTYPES:
            raise Invalid(f"tensor {name!r} has the sub-byte dtype {dtype}, not supported here")
        if dtype not in DTYPES:
            raise Invalid(f"tensor {name!r} has the unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise Invalid(f"shape of tensor {name!r} is not a list of non-negative integers: {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)):
            raise Invalid(f"data_offsets of tensor {name!r} is not [begin, end]: {offsets!r}")
        begin, end = offsets
        if begin > end:
            raise Invalid(f"data_offsets of tensor {name!r} are [{begin}, {end}]: begin > end")
        numel = math.prod(shape)
        nbytes = numel * DTYPES[dtype][0]
        if nbytes >= 2**64:
            raise Invalid(f"shape {shape} of tensor {name!r} overflows 64 bits")
        if end > buffer_size:
            raise Invalid(f"data_offsets [{begin}, {end}] of tensor {name!r} pass the end "
                          f"of the {buffer_size}-byte data buffer")
        if end - begin != nbytes:
            raise Invalid(f"tensor {name!r}: data_offsets span {end - begin} bytes but "
                          f"{dtype} {shape} needs {nbytes}")
        tensors.append({"name": name, "dtype": dtype, "shape": shape, "begin": begin,
                        "end": end, "numel": numel})

    tensors.sort(key=lambda t: (t["begin"], t["end"]))  # stable, like the C++ reader
    covered = 0
    for t in tensors:
        if t["begin"] < covered:
            raise Invalid(f"tensor {t['name']!r} at byte {t['begin']} overlaps the previous tensor "
                          f"(which ends at {covered})")
        if t["begin"] > covered:
            raise Invalid(f"hole of {t['begin'] - covered} bytes before tensor {t['name']!r}")
        covered = t["end"]
    if covered != buffer_size:
        raise Invalid(f"tensors cover {covered} bytes but the data buffer has {buffer_size}")
    return n, metadata, tensors


def decode(dtype, raw, shape):
    """numpy array of the values (BF16 widened exactly to float32), or None."""
    np_dtype = DTYPES[dtype][1]
    if dtype == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    if np_dtype is None:
        return None
    return np.frombuffer(raw, dtype=np_dtype).reshape(shape)


def value_sum(arr):
    if arr is None:
        return None
    if arr.dtype.kind == "f":
        return math.fsum(arr.astype(np.float64).ravel())
    if arr.dtype.kind == "u":
        return int(arr.sum(dtype=np.uint64))
    return int(arr.sum(dtype=np.int64))


def torch_check(dtype, raw, shape, arr):
    """Loads the bytes with torch.frombuffer. Returns (status, torch sum)."""
    tdt = getattr(torch, TORCH_DTYPES[dtype], None)
    if tdt is None:
        return f"torch {torch.__version__} has no {TORCH_DTYPES[dtype]}", None
    if len(raw) == 0:  # frombuffer refuses empty buffers
        t = torch.empty(shape, dtype=tdt)
    else:
        t = torch.frombuffer(bytearray(raw), dtype=tdt).reshape(shape)
    if list(t.shape) != list(shape):
        raise Invalid(f"torch shape {list(t.shape)} != {shape}")
    if dtype == "BOOL":
        tsum = int(t.sum())
    elif t.is_floating_point():
        tsum = math.fsum(t.to(torch.float64).reshape(-1).tolist())
    else:
        tsum = int(t.to(torch.int64).sum())
    if arr is not None:
        same = np.array_equal(t.to(torch.float64).numpy(), arr.astype(np.float64), equal_nan=True)
        if not same:
            raise Invalid("torch and numpy decode different values")
        return "torch ok", tsum
    return "torch only", tsum


def fmt_sum(s):
    if s is None:
        return "n/a"
    return repr(s) if isinstance(s, float) else str(s)


def check_file(path, use_torch):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        print(f"{path}: cannot read: {e}", file=sys.stderr)
        return 2
    try:
        n, metadata, tensors = parse(data)
        print(f"file: {path}")
        print(f"  size {len(data)} bytes, header {n} bytes, data buffer at offset {8 + n} "
              f"({'8-byte aligned' if (8 + n) % 8 == 0 else 'NOT 8-byte aligned'}), "
              f"{len(tensors)} tensors")
        print(f"  metadata ({len(metadata)} keys):")
        for k in sorted(metadata):
            v = metadata[k]
            shown = v if len(v) <= 200 else v[:200] + f"... ({len(v)} chars)"
            print(f"    {k} = {shown}")
        print("  tensors (data order):")
        for t in tensors:
            raw = data[8 + n + t["begin"]:8 + n + t["end"]]
            arr = decode(t["dtype"], raw, t["shape"])
            s = value_sum(arr)
            line = (f"    {t['name']}: {t['dtype']} shape={t['shape']} bytes=[{t['begin']}, {t['end']}) "
                    f"sum={fmt_sum(s)} sha256={hashlib.sha256(raw).hexdigest()[:16]}")
            if use_torch:
                status, tsum = torch_check(t["dtype"], raw, t["shape"], arr)
                line += f" [{status}"
                if tsum is not None and s is None:
                    line += f", torch sum={fmt_sum(tsum)}"
                elif tsum is not None and tsum != s and not (isinstance(s, float) and math.isnan(s)):
                    raise Invalid(f"tensor {t['name']!r}: torch sum {tsum} != numpy sum {s}")
                line += "]"
            print(line)
    except Invalid as e:
        print(f"{path}: INVALID: {e}", file=sys.stderr)
        return 1
    print("  OK")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", help="safetensors files to check")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch.frombuffer cross-check")
    args = ap.parse_args(argv)
    use_torch = torch is not None and not args.no_torch
    if torch is None and not args.no_torch:
        print("note: torch is not importable; checking with numpy only", file=sys.stderr)
    status = 0
    for path in args.files:
        status = max(status, check_file(path, use_torch))
    return status


if __name__ == "__main__":
    sys.exit(main())
