#!/usr/bin/env python3
"""pdenet's `ode` units against PyTorch + torchdiffeq on the same weights, batch and tolerances.

    python3 scripts/torchdiffeq_compare.py --pdenet target/release/pdenet --config C.json \
        --weights W.safetensors --data data/mnist-small [--batch 32] [--rtols 1e-2,1e-3,1e-4] \
        [--repeats 5] [--threads 2]

For each rtol (atol = rtol / 10) and gradient (discretize, adjoint) it prints one table row:
loss, the relative error of pdenet's f32 gradient against torchdiffeq's in float64, forward /
backward right-hand-side evaluations of both, the median time of one forward + backward pass in
float32 (pdenet: `pdenet grad --repeats`, in-process; torch: the same pass, autograd), and the
bytes autograd saves for the backward pass (torch) against the peak resident memory of the
`pdenet grad` process (GNU time's maxrss: binary and weights included). torch and torchdiffeq come from a virtual environment that is not a dependency of pdenet.
"""
import argparse
import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torchdiffeq._impl.misc as tdq_misc
import torchdiffeq._impl.rk_common as tdq_rk
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def mnist_batch(data, n):
    """The first n test digits, normalised as pdenet's loader does."""
    def read(name):
        path = os.path.join(data, name)
        raw = open(path, "rb").read()
        return gzip.decompress(raw) if path.endswith(".gz") else raw

    img = read("t10k-images-idx3-ubyte.gz")[16:]
    lab = read("t10k-labels-idx1-ubyte.gz")[8:]
    x = torch.tensor(list(img[: n * 784]), dtype=torch.float32).view(n, 1, 28, 28)
    x = (x / 255.0 - MNIST_MEAN) / MNIST_STD
    return x, torch.tensor(list(lab[:n]), dtype=torch.int64)


def torch_pass(cfg, W, x, labels, dtype):
    """One forward + backward; returns loss, grads, nfe forward/backward, saved bytes."""
    Wt = {k: v.detach().to(dtype).clone().requires_grad_(True) for k, v in W.items()}
    saved = {}

    def pack(t):
        saved[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = ref.forward(cfg, Wt, x.to(dtype), labels)
    nfe_f = [c[0] for c in ref.NFE]
    loss.backward()
    nfe_b = [c[0] - f for c, f in zip(ref.NFE, nfe_f)]
    grads = {k: t.grad for k, t in Wt.items() if t.grad is not None}
    return loss.item(), grads, nfe_f, nfe_b, sum(saved.values())


def rel(a, b):
    num = sum(((a[k].double() - b[k].double()) ** 2).sum().item() for k in a)
    den = sum((b[k].double() ** 2).sum().item() for k in a)
    return (num / max(den, 1e-300)) ** 0.5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pdenet", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rtols", default="1e-2,1e-3,1e-4")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="threads of both (torch's and pdenet's rayon pool)")
    ap.add_argument("--stock-first-step", action="store_true",
                    help="keep torchdiffeq's autograd through the first step's selection (by default it is "
                         "detached: pdenet, like the SPEC's discretize, treats step sizes as constants)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not a.stock_first_step:
        # torchdiffeq differentiates through `_select_initial_step` (not under no_grad, unlike
        # the controller), so its gradient also holds d(first dt)/d(theta).
        tdq_rk._select_initial_step = torch.no_grad()(tdq_misc._select_initial_step)
    base = json.load(open(a.config))
    W = load_file(a.weights)
    params = {k: v for k, v in W.items() if "running_" not in k}
    x, labels = mnist_batch(a.data, a.batch)
    tmp = tempfile.mkdtemp(prefix="odecmp-")
    batch_path = os.path.join(tmp, "batch.safetensors")
    save_file({"x": x.contiguous(), "labels": labels}, batch_path)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {a.batch}")
    print("| rtol | gradient | policy | loss | grad rel err pdenet f32 vs torch f64 | torch f32 vs torch f64 | nfe fwd pdenet / torch | nfe bwd pdenet / torch "
          "| s per pass pdenet | s per pass torch f32 | speed-up | torch saved MB | pdenet max RSS MB |")
    print("| --- " * 13 + "|")
    for rtol in [float(r) for r in a.rtols.split(",")]:
        for gradient, policy in [("discretize", "store"), ("discretize", "reversible"), ("adjoint", "reversible")]:
            cfg = dict(base, rtol=rtol, atol=rtol / 10, gradient=gradient)
            cpath = os.path.join(tmp, "c.json")
            json.dump(cfg, open(cpath, "w"))
            gpath = os.path.join(tmp, "g.safetensors")
            r = subprocess.run(["/usr/bin/time", "-f", "maxrss %M", a.pdenet, "grad", "--config", cpath, "--weights", a.weights, "--input", batch_path,
                                "--out", gpath, "--policy", policy, "--device", "cpu", "--repeats", str(a.repeats),
                                "--drift-tol", "inf"], capture_output=True, text=True,
                               env=dict(os.environ, RAYON_NUM_THREADS=str(a.threads)))
            if r.returncode != 0:
                sys.exit(f"pdenet grad failed: {r.stderr.strip()}")
            t_pd = float(re.search(r"median ([0-9.e-]+)", r.stderr).group(1))
            G = load_file(gpath)
            # Peak resident memory of that pdenet process (binary and weights included).
            rss = float(re.search(r"maxrss (\d+)", r.stderr).group(1)) / 1e3
            loss64, g64, nf64, nb64, _ = torch_pass(cfg, params, x, labels, torch.float64)
            pd = {k: G[f"grad.{k}"] for k in g64}
            err = rel(pd, g64)
            torch_pass(cfg, params, x, labels, torch.float32)  # warm-up, untimed
            times, saved = [], 0
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                _, g32, nf32, nb32, saved = torch_pass(cfg, params, x, labels, torch.float32)
                times.append(time.perf_counter() - t0)
            floor = rel(g32, g64)
            t_t = statistics.median(times)
            nfe = (G["nfe.forward"].sum().item(), G["nfe.backward"].sum().item())
            tb = sum(nb32) if gradient == "adjoint" else "autograd"
            print(f"| {rtol:.0e} | {gradient} | {policy} | {G['loss'].item():.5f} | {err:.2e} | {floor:.2e} | {nfe[0]} / {sum(nf32)} (f64 {sum(nf64)}) "
                  f"| {nfe[1]} / {tb} | {t_pd:.3f} | {t_t:.3f} | {t_t / t_pd:.2f}x | {saved / 1e6:.1f} | {rss:.1f} |", flush=True)


if __name__ == "__main__":
    main()
