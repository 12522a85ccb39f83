"""Issue 16's PyTorch side: the Laplacian of the SAME potential network (SPEC section 11) that
`examples/potential_laplacian.rs` wrote, by autograd, timed per sample on the CPU.

    python scripts/laplacian_compare.py DIR [--threads 1] [--repeats 5] [--dims 10,100,1000]
    python scripts/laplacian_compare.py --table LOG     # one table from RESULT lines

Methods (all batched over the N samples, which are independent, so sum-then-grad is exact):
  exact-loop  g = grad(Phi.sum(), s, create_graph); tr H = sum_i grad(g[:, i].sum(), s)[:, i]:
              d reverse-over-reverse passes over the batch.
  exact-func  torch.func: vmap over samples of the diagonal of jacfwd(jacrev(Phi)), i.e. the
              full d x d Hessian by forward-over-reverse with d tangents at once, then trace
              (d = 1000 in sample chunks so the [N, d, d] Hessian fits in memory; timed only
              up to --func-max-d, default 100: slower than exact-loop there, it is only checked
              at d = 1000).
  hutch-P     Hutchinson with P Rademacher probes v: mean_p v_p . (H v_p), one Hessian-vector
              product (reverse-over-reverse) per probe; an unbiased ESTIMATE, not the trace.
  grad        value and gradient only (one backward pass), for reference.
Prints `RESULT torch <method> <precision> <d> <N> <us per sample>` lines, and the largest
relative difference between the exact methods and pdenet's Laplacians in DIR/d{d}.ref.json.
Needs torch and safetensors (not dependencies of pdenet).
"""

import argparse
import json
import math
import os
import re
import statistics
import sys
import time

LN2 = math.log(2.0)


def load_net(path, dtype):
    import torch
    from safetensors.torch import load_file

    t = {k: v.to(dtype) for k, v in load_file(path).items()}
    return t


def make_phi(t, h):
    import torch
    import torch.nn.functional as F

    K0, b0 = t["open.weight"], t["open.bias"]
    steps = []
    i = 0
    while f"steps.{i}.weight" in t:
        steps.append((t[f"steps.{i}.weight"], t[f"steps.{i}.bias"]))
        i += 1
    w, A, cw, cb = t["w"], t["A"], t["c.weight"][0], t["c.bias"][0]

    def logcosh(x):
        # log cosh x = x + softplus(-2x) - log 2 (stable; its derivatives are tanh, sech^2)
        return x + F.softplus(-2.0 * x) - LN2

    def phi(s):
        # s: [..., d] -> [...]
        u = logcosh(s @ K0.T + b0)
        for K, b in steps:
            u = u + h * logcosh(u @ K.T + b)
        As = s @ A.T
        return u @ w + 0.5 * (As * As).sum(-1) + s @ cw + cb

    return phi


def lap_loop(phi, x):
    import torch

    s = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(phi(s).sum(), s, create_graph=True)
    lap = torch.zeros(x.shape[0], dtype=x.dtype)
    d = x.shape[1]
    for i in range(d):
        (hi,) = torch.autograd.grad(g[:, i].sum(), s, retain_graph=i < d - 1)
        lap = lap + hi[:, i]
    return lap.detach()


def lap_func(phi, x, chunk):
    import torch
    from torch.func import jacfwd, jacrev, vmap

    hess = vmap(jacfwd(jacrev(phi)))
    outs = []
    for c in range(0, x.shape[0], chunk):
        H = hess(x[c : c + chunk])
        outs.append(torch.diagonal(H, dim1=-2, dim2=-1).sum(-1))
    return torch.cat(outs)


def hutchinson(phi, x, probes, gen):
    import torch

    s = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(phi(s).sum(), s, create_graph=True)
    est = torch.zeros(x.shape[0], dtype=x.dtype)
    for p in range(probes):
        v = torch.randint(0, 2, x.shape, generator=gen, dtype=x.dtype).mul_(2).sub_(1)
        (hv,) = torch.autograd.grad((g * v).sum(), s, retain_graph=p < probes - 1)
        est = est + (hv * v).sum(-1)
    return (est / probes).detach()


def value_grad(phi, x):
    import torch

    s = x.detach().requires_grad_(True)
    y = phi(s)
    (g,) = torch.autograd.grad(y.sum(), s)
    return y.detach(), g


def timed(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def rel(a, b):
    return max(abs(float(x) - float(y)) / max(abs(float(y)), 1e-30) for x, y in zip(a, b))


def run(args):
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"median of {args.repeats} batches (d = 1000: {max(1, args.repeats // 2)})")
    gen = torch.Generator().manual_seed(0)
    for d in [int(v) for v in args.dims.split(",")]:
        cfg = json.load(open(os.path.join(args.dir, f"d{d}.config.json")))
        ref = json.load(open(os.path.join(args.dir, f"d{d}.ref.json")))
        x32 = load_file(os.path.join(args.dir, f"d{d}.x.safetensors"))["x"]
        n = x32.shape[0]
        reps = args.repeats if d < 1000 else max(1, args.repeats // 2)
        chunk = n if d < 1000 else 32
        for prec, dtype in [("f32", torch.float32), ("f64", torch.float64)]:
            t = load_net(os.path.join(args.dir, f"d{d}.weights.safetensors"), dtype)
            phi = make_phi(t, cfg["h"])
            x = x32.to(dtype)
            # Agreement on the reference samples, before timing.
            k = ref["rows"]
            want = ref[f"laplacian_{prec}"]
            want64 = ref["laplacian_f64"]
            lo = lap_loop(phi, x[:k])
            fu = lap_func(phi, x[:k], chunk)
            val, _ = value_grad(phi, x[:k])
            h10 = hutchinson(phi, x[:k], 10, gen)
            print(f"CHECK {prec} d={d}: max rel diff vs pdenet {prec} laplacian: "
                  f"loop {rel(lo, want):.2e}, func {rel(fu, want):.2e}; "
                  f"vs pdenet f64: loop {rel(lo, want64):.2e}; value {rel(val, ref['value_f64']):.2e}; "
                  f"hutch-10 (an estimate) {rel(h10, want64):.2e}")
            methods = [
                ("exact-loop", lambda: lap_loop(phi, x)),
                ("exact-func", lambda: lap_func(phi, x, chunk)) if d <= args.func_max_d else None,
                ("hutch-1", lambda: hutchinson(phi, x, 1, gen)),
                ("hutch-10", lambda: hutchinson(phi, x, 10, gen)),
                ("grad", lambda: value_grad(phi, x)),
            ]
            for name, fn in filter(None, methods):
                sec = timed(fn, reps)
                print(f"RESULT torch {name} {prec} {d} {n} {sec / n * 1e6:.4f}", flush=True)


def table(path):
    """One table from the RESULT lines of a log: median over rounds, ratios to pdenet."""
    rows = {}
    for line in open(path):
        m = re.match(r"RESULT (\S+) (\S+) (\S+) (\d+) (\d+) (\S+)", line)
        if m:
            side, method, prec, d, n, us = m.groups()
            rows.setdefault((int(d), prec, f"{side} {method}"), []).append(float(us))
    order = ["pdenet exact-lap", "pdenet grad", "torch exact-loop", "torch exact-func",
             "torch hutch-1", "torch hutch-10", "torch grad"]
    print("| d | precision | method | us/sample (median of rounds) | rounds | / pdenet exact-lap |")
    print("| ---: | --- | --- | ---: | --- | ---: |")
    for d in sorted({k[0] for k in rows}):
        for prec in ["f32", "f64"]:
            base = rows.get((d, prec, "pdenet exact-lap"))
            b = statistics.median(base) if base else None
            for meth in order:
                v = rows.get((d, prec, meth))
                if not v:
                    continue
                med = statistics.median(v)
                ratio = f"{med / b:.1f}x" if b else "-"
                each = " / ".join(f"{u:.2f}" for u in v)
                print(f"| {d} | {prec} | {meth} | {med:.2f} | {each} | {ratio} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dims", default="10,100,1000")
    ap.add_argument("--func-max-d", type=int, default=100,
                    help="time exact-func only up to this d (it is the slower exact variant)")
    ap.add_argument("--table")
    a = ap.parse_args()
    if a.table:
        table(a.table)
    elif a.dir:
        run(a)
    else:
        ap.error("DIR or --table LOG")


if __name__ == "__main__":
    sys.exit(main())
