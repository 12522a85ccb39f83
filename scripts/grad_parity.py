#!/usr/bin/env python3
"""`pdenet grad` against the independent PyTorch implementation (scripts/torch_reference.py),
for all five layer types, image and dense networks, every policy.

    PDENET=target/release/pdenet python3 scripts/grad_parity.py [--device cpu|cuda]
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file

pdenet = os.environ.get("PDENET", "target/release/pdenet")
device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
here = os.path.dirname(os.path.abspath(__file__))
failures = 0
with tempfile.TemporaryDirectory() as d:
    for kind in ["image", "dense"]:
        for layer in ["resnet", "antisymmetric", "parabolic", "hyperbolic", "hamiltonian"]:
            if kind == "image":
                cfg = {"kind": "image", "in_channels": 3, "classes": 10, "widths": [8, 16], "steps": [3, 2],
                       "layer": layer, "h": 0.5}
                x = torch.randn(4, 3, 12, 12)
            else:
                cfg = {"kind": "dense", "dense_input": 2, "classes": 3, "widths": [8, 6], "steps": [4, 2],
                       "layer": layer, "h": 0.2, "activation": "tanh"}
                x = torch.randn(5, 2)
            cp, wp, bp = f"{d}/c.json", f"{d}/w.safetensors", f"{d}/b.safetensors"
            json.dump(cfg, open(cp, "w"))
            save_file({"x": x.contiguous(), "labels": torch.arange(x.shape[0]) % cfg["classes"]}, bp)
            subprocess.run([pdenet, "init", "--config", cp, "--seed", "3", "--out", wp], check=True,
                           capture_output=True)
            for policy in ["store", "reversible", "exact"]:
                gp = f"{d}/g.safetensors"
                r = subprocess.run([pdenet, "grad", "--config", cp, "--weights", wp, "--input", bp, "--out", gp,
                                    "--policy", policy, "--device", device], capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"{kind} {layer} {policy}: pdenet failed: {r.stderr.strip()}")
                    failures += 1
                    continue
                # exact runs in fixed point (2^-16 steps): a looser bound than float.
                tol = "1e-3" if policy == "exact" else "1e-4"
                c = subprocess.run([sys.executable, f"{here}/torch_reference.py", cp, wp, bp, gp, "--tol", tol],
                                   capture_output=True, text=True)
                worst = c.stdout.strip().splitlines()[-1] if c.stdout.strip() else c.stderr.strip()[-200:]
                print(f"{kind:5s} {layer:13s} {policy:10s} {device}: {worst} {'ok' if c.returncode == 0 else 'FAIL'}")
                failures += c.returncode != 0
print(f"grad parity vs PyTorch: {failures} failed")
sys.exit(1 if failures else 0)
