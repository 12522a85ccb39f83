#!/usr/bin/env python3
"""PyTorch training-step throughput of a SPEC network (same equations as pdenet), for the GPU
and CPU comparisons: f32 eager (on CUDA: TF32 convolutions, PyTorch's default, and strict f32), f32
with torch.utils.checkpoint per unit, and bf16 autocast; forward + backward + SGD update.

    python3 scripts/torch_train_bench.py [CONFIG_JSON] [--batch 256] [--steps 8] [--device cuda|cpu]
        [--threads T] [--repeats R] [--rounds N]
"""
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from torch_reference import forward  # noqa: E402

REF_CIFAR = {"kind": "image", "in_channels": 3, "classes": 10, "widths": [32, 64, 112],
             "steps": [8, 8, 8], "layer": "hyperbolic", "h": 0.5}


def arg(name, default):
    return type(default)(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def params(cfg, dev):
    g = torch.Generator().manual_seed(0)
    W = {}
    cin = cfg["in_channels"]
    ws = cfg["widths"]
    W["open.conv.weight"] = torch.randn(ws[0], cin, 3, 3, generator=g) * (2 / (cin * 9)) ** 0.5
    W["open.bn.weight"], W["open.bn.bias"] = torch.ones(ws[0]), torch.zeros(ws[0])
    for k, (w, nt) in enumerate(zip(ws, cfg["steps"])):
        for j in range(nt):
            p = f"units.{k}.steps.{j}."
            W[p + "K"] = torch.randn(w, w, 3, 3, generator=g) * (2 / (w * 9)) ** 0.5
            W[p + "norm.weight"], W[p + "norm.bias"] = torch.ones(w), torch.zeros(w)
        wo = ws[k + 1] if k + 1 < len(ws) else w
        c = f"units.{k}.connect."
        W[c + "conv.weight"] = torch.randn(wo, w, 1, 1, generator=g) * (2 / w) ** 0.5
        W[c + "bn.weight"], W[c + "bn.bias"] = torch.ones(wo), torch.zeros(wo)
    W["classifier.weight"] = torch.randn(cfg["classes"], ws[-1], generator=g) * 0.1
    W["classifier.bias"] = torch.zeros(cfg["classes"])
    return {k: v.to(dev).requires_grad_(True) for k, v in W.items()}


def main():
    cfg = json.load(open(sys.argv[1])) if len(sys.argv) > 1 and sys.argv[1].endswith(".json") else dict(REF_CIFAR)
    cfg["steps"] = [arg("--steps", cfg["steps"][0])] * len(cfg["widths"])
    batch = arg("--batch", 256)
    dev = arg("--device", "cuda")
    reps = arg("--repeats", 10)
    cuda = dev == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        # "f32" is PyTorch's default (cuDNN convolutions in TF32); "f32-strict" turns TF32 off.
        modes = ["f32", "f32-strict", "bf16-autocast", "f32-checkpoint"]
    else:
        torch.set_num_threads(arg("--threads", torch.get_num_threads()))
        modes = ["f32", "f32-checkpoint", "bf16-autocast"]
    W = params(cfg, dev)
    x = torch.randn(batch, cfg["in_channels"], 32, 32, device=dev)
    y = torch.randint(0, cfg["classes"], (batch,), device=dev)
    opt = torch.optim.SGD(W.values(), lr=1e-3)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(arg("--rounds", 1)):
        for mode in modes:
            if cuda:
                torch.backends.cudnn.allow_tf32 = mode != "f32-strict"

            def step():
                opt.zero_grad(set_to_none=True)
                with torch.autocast(dev, dtype=torch.bfloat16, enabled=mode == "bf16-autocast"):
                    loss, _ = forward(cfg, W, x, y, checkpoint_units=mode == "f32-checkpoint")
                loss.backward()
                opt.step()

            for _ in range(2):
                step()
            sync()
            t = time.perf_counter()
            for _ in range(reps):
                step()
            sync()
            dt = (time.perf_counter() - t) / reps
            print(f"torch {dev} {cfg['layer']} steps {cfg['steps'][0]} batch {batch} {mode}: "
                  f"{dt * 1e3:.2f} ms/step, {batch / dt:.1f} images/s"
                  + (f" (tf32 conv {torch.backends.cudnn.allow_tf32})" if cuda else f" ({torch.get_num_threads()} threads)"),
                  flush=True)


if __name__ == "__main__":
    main()
