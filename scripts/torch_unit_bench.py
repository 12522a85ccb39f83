#!/usr/bin/env python3
"""A PyTorch model with a reversible pdenet unit against the same model in plain PyTorch and with
torch.utils.checkpoint: training-step images/s, peak memory and equal gradients.

    RAYON_NUM_THREADS=1 python3 scripts/torch_unit_bench.py [--width 64] [--steps 32] [--batch 32]
        [--size 16] [--repeats 3] [--depths 8,32,64] [--threads 1]
        [--variants plain,checkpoint,pdenet,pdenet-store]

The model: conv3x3(3 -> width) + relu, one hyperbolic unit (`steps` steps, h 0.5, tvNorm, relu),
global mean, linear(width -> 10), cross-entropy; one step = forward + backward (no optimizer).
Variants:
  pdenet      pdenet.torch.Unit(policy="reversible"): the engine keeps the unit's input only
  plain       the same unit in PyTorch autograd (python/tests/reference_unit.py, built from
              scripts/torch_reference.py): every step's intermediates kept
  pdenet-store  the same module under policy "store" (every state kept by the engine)
  checkpoint  plain, each leapfrog step under torch.utils.checkpoint (keeps (Y_j, Y_j-1) per step)
Each variant and depth runs in a fresh process; peak memory is the rise of the process's peak
RSS (VmHWM, reset through /proc/self/clear_refs after a warm-up step) over one training step,
with glibc's mmap threshold fixed at 128 KiB so that freed buffers leave the RSS.
"""
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python", "tests"))


def arg(name, default):
    return type(default)(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def rss_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(key)


def build(variant, width, steps, seed=0):
    import torch
    import torch.nn.functional as F

    import pdenet.torch as pt
    from reference_unit import plain_unit

    torch.manual_seed(seed)
    policy = "store" if variant == "pdenet-store" else "reversible"
    unit = pt.Unit("hyperbolic", width=width, steps=steps, h=0.5, policy=policy, seed=seed)
    stem = torch.nn.Conv2d(3, width, 3, padding=1)
    head = torch.nn.Linear(width, 10)
    if variant.startswith("pdenet"):
        body = unit
    else:
        W = {n: p for n, p in unit.named_parameters()}

        def body(y):
            if variant == "plain":
                return plain_unit("hyperbolic", W, y, 0.5)
            from torch.utils.checkpoint import checkpoint

            prev = y
            for j in range(steps):
                Wj = {n: p for n, p in W.items() if n.startswith(f"steps.{j}.")}
                # One step as a one-step unit from (Y_j, Y_j-1): Y_j+1 = 2Y_j - Y_j-1 + h^2 f(Y_j).
                def step(y, prev, *ps, j=j, Wj=Wj):
                    one = {n.replace(f"steps.{j}.", "steps.0."): p for n, p in zip(Wj, ps)}
                    return plain_unit("hyperbolic", one, y, 0.5) + y - prev
                y, prev = checkpoint(step, y, prev, *Wj.values(), use_reentrant=False), y
            return y

    params = list(stem.parameters()) + list(unit.parameters()) + list(head.parameters())

    def loss_of(x, labels):
        z = body(F.relu(stem(x)))
        return F.cross_entropy(head(z.mean(dim=(2, 3))), labels)

    return loss_of, params


def one(variant, width, steps, batch, size, repeats):
    """Times `repeats` training steps after a warm-up and measures one step's peak memory."""
    import torch

    torch.set_num_threads(arg("--threads", 1))
    loss_of, params = build(variant, width, steps)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)

    def step():
        for p in params:
            p.grad = None
        loss_of(x, labels).backward()

    step()
    base = rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    peak_mb = (rss_kb("VmHWM") - base) / 1024
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"variant": variant, "steps": steps, "median_s": times[len(times) // 2], "min_s": times[0],
            "images_per_s": batch / times[len(times) // 2], "peak_mb": peak_mb}


def check_gradients(width, steps, batch, size):
    import torch

    torch.set_num_threads(arg("--threads", 1))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    grads = {}
    for variant in ["plain", "pdenet", "checkpoint"]:
        loss_of, params = build(variant, width, steps)
        loss_of(x, labels).backward()
        grads[variant] = [p.grad.double() for p in params]

    def rel(a, b):
        num = sum(((u - v) ** 2).sum() for u, v in zip(a, b)) ** 0.5
        return float(num / sum((v ** 2).sum() for v in b) ** 0.5)

    return {"pdenet_vs_plain": rel(grads["pdenet"], grads["plain"]),
            "checkpoint_vs_plain": rel(grads["checkpoint"], grads["plain"])}


def child(*extra):
    t = str(arg("--threads", 1))
    # A fixed mmap threshold: freed large buffers go back to the system, so RSS follows live memory.
    env = dict(os.environ, RAYON_NUM_THREADS=t, OMP_NUM_THREADS=t, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, __file__, *sys.argv[1:], *extra], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    width, steps, batch, size = arg("--width", 64), arg("--steps", 32), arg("--batch", 32), arg("--size", 16)
    repeats = arg("--repeats", 3)
    if "--one" in sys.argv:
        variant, nt = sys.argv[sys.argv.index("--one") + 1], int(sys.argv[sys.argv.index("--one") + 2])
        print(json.dumps(one(variant, width, nt, batch, size, repeats)))
        return
    if "--check" in sys.argv:
        print(json.dumps(check_gradients(width, steps, batch, size)))
        return
    print(f"width {width}, batch {batch}, {size}x{size}, threads {arg('--threads', 1)}, {repeats} timed steps")
    print(f"gradients (relative to plain): {child('--check')}")
    depths = [int(d) for d in arg("--depths", f"8,{steps}").split(",")]
    rows = []
    for nt in depths:
        for variant in arg("--variants", "plain,checkpoint,pdenet").split(","):
            r = child("--one", variant, str(nt))
            rows.append(r)
            print(f"steps {nt:4d} {variant:10s} {r['images_per_s']:8.1f} img/s  median {r['median_s']:.3f} s"
                  f"  min {r['min_s']:.3f} s  peak +{r['peak_mb']:.1f} MB", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
