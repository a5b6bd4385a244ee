#!/usr/bin/env python3
"""Writes the PyTorch parity fixtures in tests/fixtures/ (float64 throughout).

    python3 tools/make_torch_fixtures.py            # (re)write tests/fixtures/*.txt
    python3 tools/make_torch_fixtures.py --out DIR  # write somewhere else

Needs torch (Debian: apt-get install python3-torch; on Debian the system
/usr/bin/python3 has it). CI never runs this script: the fixtures are committed
and tests/parity/test_torch_parity.cpp only reads them.

Each fixture holds the inputs, the parameters under the names mtrec gives them,
the output, a random cotangent R, and the gradients of the scalar loss
sum(out * R) with respect to every input and every parameter. Everything is
computed in torch.float64 and written exactly (Python's repr of a float
round-trips, at most 17 significant digits).

File format (text, whitespace separated, '#' starts a comment line):

    mtrec-fixture 1
    meta <key> <value>                        (any number)
    tensor <name> <rank> <d0> ... <d_rank-1>   followed by prod(d) float values
    itensor <name> <rank> <d0> ...             followed by prod(d) integers
    end

Tensor names: inputs and outputs by role ("x", "lengths", "y", "R", "dx", ...),
parameters as "param/<mtrec name>" and their gradients as "grad/<mtrec name>".
"""

import argparse
import os
import sys

import torch
import torch.nn as nn

SEED = 20240611
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "tests", "fixtures"))
PER_LINE = 4


class Writer:
    def __init__(self, what):
        self.lines = ["mtrec-fixture 1",
                      "# written by tools/make_torch_fixtures.py -- do not edit; regenerate instead",
                      f"# {what}"]
        self.meta("torch_version", torch.__version__)
        self.meta("seed", SEED)
        self.names = set()

    def meta(self, key, value):
        value = str(value)
        assert " " not in value and value, (key, value)
        self.lines.append(f"meta {key} {value}")

    def _header(self, kind, name, t):
        assert name not in self.names, name
        assert " " not in name, name
        self.names.add(name)
        dims = list(t.shape)
        assert 1 <= len(dims) <= 4, (name, dims)
        self.lines.append(f"{kind} {name} {len(dims)} " + " ".join(str(d) for d in dims))

    def tensor(self, name, t):
        t = t.detach()
        assert t.dtype == torch.float64, (name, t.dtype)
        assert torch.isfinite(t).all(), name
        self._header("tensor", name, t)
        vals = [repr(float(v)) for v in t.reshape(-1).tolist()]
        for i in range(0, len(vals), PER_LINE):
            self.lines.append(" ".join(vals[i:i + PER_LINE]))

    def itensor(self, name, t):
        t = torch.as_tensor(t)
        assert not t.is_floating_point(), name
        self._header("itensor", name, t)
        vals = [str(int(v)) for v in t.reshape(-1).tolist()]
        for i in range(0, len(vals), 16):
            self.lines.append(" ".join(vals[i:i + 16]))

    def save(self, path):
        self.lines.append("end")
        with open(path, "w") as f:
            f.write("\n".join(self.lines) + "\n")
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def padding_mask(lengths, T):
    """True at padded positions (t >= length), as torch's key_padding_mask."""
    return torch.arange(T)[None, :] >= lengths[:, None]


def randomise_(module, scale=0.2):
    """Replaces every parameter that torch initialises to a constant (biases,
    LayerNorm weights) by random values, so a mix-up of names cannot pass."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(scale * torch.randn_like(p))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + scale * torch.randn_like(p))


def write_params(w, module, mapping):
    """mapping: torch parameter name -> mtrec parameter name; must cover all."""
    params = dict(module.named_parameters())
    assert set(params) == set(mapping), (sorted(params), sorted(mapping))
    for tname, mname in mapping.items():
        w.tensor("param/" + mname, params[tname])
    for tname, mname in mapping.items():
        g = params[tname].grad
        assert g is not None, tname
        w.tensor("grad/" + mname, g)


def masked_loss_io(out, lengths, x):
    """Random cotangent R, zero at padded positions; loss = sum(out * R)."""
    B, T, D = out.shape
    valid = (~padding_mask(lengths, T)).to(torch.float64)[:, :, None]
    R = torch.randn(B, T, D, dtype=torch.float64) * valid
    (out * R).sum().backward()
    # With the loss masked, nothing flows into padded inputs: mtrec gives exact
    # zeros there too, so the whole dx is compared.
    assert (x.grad * (1 - valid)).abs().max().item() == 0.0
    return R


def transformer_fixture(out_dir):
    torch.manual_seed(SEED + 1)
    B, T, D, H, F = 3, 5, 8, 2, 16
    lengths = torch.tensor([T, 3, 1])
    layer = nn.TransformerEncoderLayer(D, H, dim_feedforward=F, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True).double()
    randomise_(layer)
    layer.train()  # with autograd on, this keeps PyTorch off its fused inference fast path
    x = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    y = layer(x, src_key_padding_mask=padding_mask(lengths, T))
    R = masked_loss_io(y, lengths, x)

    w = Writer("nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, "
               "activation='gelu', batch_first=True, norm_first=True), src_key_padding_mask from lengths")
    w.meta("layer", "TransformerEncoderLayer")
    w.meta("name", "enc")
    w.meta("d_model", D)
    w.meta("heads", H)
    w.meta("ffn", F)
    w.meta("activation", "gelu")
    w.meta("layer_norm_eps", repr(layer.norm1.eps))
    w.meta("loss", "sum(y*R),R=0_at_padded_positions")
    w.itensor("lengths", lengths)
    w.tensor("x", x)
    w.tensor("y", y)  # rows at padded positions are whatever PyTorch computes: compare valid rows only
    w.tensor("R", R)
    w.tensor("dx", x.grad)
    write_params(w, layer, {
        "self_attn.in_proj_weight": "enc.self_attn.in_proj.weight",
        "self_attn.in_proj_bias": "enc.self_attn.in_proj.bias",
        "self_attn.out_proj.weight": "enc.self_attn.out_proj.weight",
        "self_attn.out_proj.bias": "enc.self_attn.out_proj.bias",
        "linear1.weight": "enc.linear1.weight",
        "linear1.bias": "enc.linear1.bias",
        "linear2.weight": "enc.linear2.weight",
        "linear2.bias": "enc.linear2.bias",
        "norm1.weight": "enc.norm1.weight",
        "norm1.bias": "enc.norm1.bias",
        "norm2.weight": "enc.norm2.weight",
        "norm2.bias": "enc.norm2.bias",
    })
    w.save(os.path.join(out_dir, "transformer_encoder_layer.txt"))


def mha_fixture(out_dir):
    torch.manual_seed(SEED + 2)
    # head dim 2 (the encoder-layer fixture has 4) and lengths 6, 4, 1: softmax
    # rows that fill SIMD vectors and rows that need scalar tails
    B, T, D, H = 3, 6, 8, 4
    lengths = torch.tensor([T, 4, 1])
    mha = nn.MultiheadAttention(D, H, batch_first=True).double()
    randomise_(mha)
    mha.train()
    x = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    y, _ = mha(x, x, x, key_padding_mask=padding_mask(lengths, T), need_weights=False)
    R = masked_loss_io(y, lengths, x)

    w = Writer("nn.MultiheadAttention(embed_dim=8, num_heads=4, batch_first=True) as self-attention "
               "(query=key=value=x), key_padding_mask from lengths")
    w.meta("layer", "MultiHeadAttention")
    w.meta("name", "mha")
    w.meta("d_model", D)
    w.meta("heads", H)
    w.meta("loss", "sum(y*R),R=0_at_padded_positions")
    w.itensor("lengths", lengths)
    w.tensor("x", x)
    w.tensor("y", y)
    w.tensor("R", R)
    w.tensor("dx", x.grad)
    write_params(w, mha, {
        "in_proj_weight": "mha.in_proj.weight",
        "in_proj_bias": "mha.in_proj.bias",
        "out_proj.weight": "mha.out_proj.weight",
        "out_proj.bias": "mha.out_proj.bias",
    })
    w.save(os.path.join(out_dir, "multihead_attention.txt"))


def embedding_bag_fixture(out_dir, mode, weighted):
    torch.manual_seed(SEED + 3 + (mode == "mean") + 2 * weighted)
    rows, dim = 11, 5
    # bags: [3 ids], [] empty, [1 id], [5 ids with repeats], [2 ids], [] empty at the end
    ids = torch.tensor([4, 0, 7, 7, 2, 9, 4, 2, 2, 10, 4])
    offsets = torch.tensor([0, 3, 3, 4, 9, 11, 11])
    B = offsets.numel() - 1
    bag = nn.EmbeddingBag(rows, dim, mode=mode, include_last_offset=True).double()
    with torch.no_grad():
        bag.weight.copy_(torch.randn(rows, dim, dtype=torch.float64))
    psw = None
    if weighted:
        psw = torch.randn(ids.numel(), dtype=torch.float64, requires_grad=True)
    y = bag(ids, offsets, per_sample_weights=psw)
    assert y.shape == (B, dim)
    R = torch.randn(B, dim, dtype=torch.float64)
    (y * R).sum().backward()

    w = Writer(f"nn.EmbeddingBag({rows}, {dim}, mode='{mode}', include_last_offset=True)"
               + (" with per_sample_weights" if weighted else ""))
    w.meta("layer", "EmbeddingBag")
    w.meta("name", "emb")
    w.meta("mode", mode)
    w.meta("rows", rows)
    w.meta("dim", dim)
    w.meta("weighted", int(weighted))
    w.meta("loss", "sum(y*R)")
    w.itensor("ids", ids)
    w.itensor("offsets", offsets)
    if weighted:
        w.tensor("per_sample_weights", psw)
    w.tensor("y", y)
    w.tensor("R", R)
    if weighted:
        w.tensor("d_per_sample_weights", psw.grad)
    write_params(w, bag, {"weight": "emb"})
    suffix = mode + ("_weighted" if weighted else "")
    w.save(os.path.join(out_dir, f"embedding_bag_{suffix}.txt"))


def layernorm_fixture(out_dir):
    torch.manual_seed(SEED + 7)
    # dim 13 is no multiple of any SIMD width: vector bodies and scalar tails both run.
    shape, dim = (2, 3, 13), 13
    ln = nn.LayerNorm(dim).double()
    with torch.no_grad():
        ln.weight.copy_(1.0 + 0.5 * torch.randn(dim, dtype=torch.float64))
        ln.bias.copy_(0.5 * torch.randn(dim, dtype=torch.float64))
    # rows with an offset and different spreads (one nearly constant row)
    x = torch.randn(*shape, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.05])[None, :, None] + 2.0
    x.requires_grad_(True)
    y = ln(x)
    R = torch.randn(*shape, dtype=torch.float64)
    (y * R).sum().backward()

    w = Writer(f"nn.LayerNorm({dim}) with random weight and bias, eps default")
    w.meta("layer", "LayerNorm")
    w.meta("name", "ln")
    w.meta("dim", dim)
    w.meta("eps", repr(ln.eps))
    w.meta("loss", "sum(y*R)")
    w.tensor("x", x)
    w.tensor("y", y)
    w.tensor("R", R)
    w.tensor("dx", x.grad)
    write_params(w, ln, {"weight": "ln.weight", "bias": "ln.bias"})
    w.save(os.path.join(out_dir, "layernorm.txt"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformer_fixture(args.out)
    mha_fixture(args.out)
    embedding_bag_fixture(args.out, "sum", False)
    embedding_bag_fixture(args.out, "mean", False)
    embedding_bag_fixture(args.out, "sum", True)
    layernorm_fixture(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
