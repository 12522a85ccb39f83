#!/usr/bin/env python3
"""An independent PyTorch implementation of the SPEC networks, to check `pdenet grad`.

    python3 scripts/torch_reference.py CONFIG WEIGHTS BATCH PDENET_GRADS [--device cuda]

Builds the network of CONFIG (SPEC sections 2-4) in plain PyTorch with autograd, loads the same
weights, computes loss, logits and every gradient of BATCH in float64, and prints the relative
error of each tensor in PDENET_GRADS (written by `pdenet grad`). Exits 1 if any exceeds 1e-4.
"""
import json
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

TV_EPS = 1e-4


def tvnorm(x, s, b):
    dims = (1,)
    r = torch.sqrt((x * x).sum(dim=dims, keepdim=True) + TV_EPS)
    shape = [1, -1] + [1] * (x.dim() - 2)
    return s.view(shape) * x / r + b.view(shape)


def act(name, x):
    if name == "relu":
        return F.relu(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "logcosh":
        return torch.logaddexp(x, -x)
    raise ValueError(name)


# Right-hand-side evaluations per `ode` unit of the last forward pass (SPEC section 10).
NFE = []


def ode_unit(cfg, rhs, y, nt, h):
    """An `ode` unit (SPEC section 10): interval j integrates dY/dt = rhs(j, Y) over [0, h].

    dopri5 is torchdiffeq's (its controller and initial step are the ones SPEC fixes), by
    `odeint` (autograd through the steps: discretize) or `odeint_adjoint` (`gradient: adjoint`);
    euler and rk4 (classical weights) are written out, since torchdiffeq's rk4 is the 3/8 rule.
    """
    solver = cfg.get("solver", "dopri5")
    count = [0]

    def F(j, z):
        count[0] += 1
        return rhs(j, z)

    for j in range(nt):
        if solver == "dopri5":
            import torchdiffeq

            rtol, atol = cfg.get("rtol", 1e-3), cfg.get("atol", 1e-4)
            t = torch.tensor([0.0, h], dtype=y.dtype)
            fn = lambda t, z, j=j: F(j, z)  # noqa: E731
            # `step_t` makes the last step end on the interval's end (pdenet clips; torchdiffeq's
            # default steps past it and interpolates, which SPEC also allows).
            opts = dict(step_t=t[1:])
            if cfg.get("gradient", "discretize") == "adjoint":
                params = tuple(rhs.params(j))
                y = torchdiffeq.odeint_adjoint(fn, y, t, rtol=rtol, atol=atol, method="dopri5", options=opts,
                                               adjoint_options=dict(step_t=t[:1]), adjoint_params=params)[-1]
            else:
                y = torchdiffeq.odeint(fn, y, t, rtol=rtol, atol=atol, method="dopri5", options=opts)[-1]
        else:
            m = cfg.get("substeps", 1)
            dt = h / m
            for _ in range(m):
                if solver == "euler":
                    y = y + dt * F(j, y)
                elif solver == "rk4":
                    k1 = F(j, y)
                    k2 = F(j, y + dt / 2 * k1)
                    k3 = F(j, y + dt / 2 * k2)
                    k4 = F(j, y + dt * k3)
                    y = y + dt * (k1 + 2 * k2 + 2 * k3 + k4) / 6
                else:
                    raise ValueError(f"solver {solver}")
    NFE.append(count)
    return y


def forward(cfg, W, x, labels, checkpoint_units=False):
    """Loss and logits of the SPEC network `cfg` with weights `W` (batch-norm in training mode)."""
    NFE.clear()
    image = cfg["kind"] == "image"
    h = cfg["h"]
    layer = cfg["layer"]
    a = cfg.get("activation", "relu")
    norm = cfg.get("norm", "tv" if image else "none")
    gamma = cfg.get("gamma", 1e-4)

    def K(name, y):
        k = W[name]
        return F.conv2d(y, k, padding=1) if image else F.linear(y, k)

    def KT(name, z):
        k = W[name]
        return F.conv_transpose2d(z, k, padding=1) if image else F.linear(z, k.t())

    def N(p, sfx, z):
        if norm == "tv":
            return tvnorm(z, W[f"{p}norm{sfx}.weight"], W[f"{p}norm{sfx}.bias"])
        shape = [1, -1] + [1] * (z.dim() - 2)
        return z + W[f"{p}b{sfx}"].view(shape)

    def f(p, kname, sfx, y):
        return -KT(p + kname, act(a, N(p, sfx, K(p + kname, y))))

    def bn(prefix, z):
        return F.batch_norm(z, None, None, W[prefix + ".weight"], W[prefix + ".bias"], training=True, eps=1e-5)

    if image:
        y = F.relu(bn("open.bn", F.conv2d(x, W["open.conv.weight"], padding=1)))
    else:
        y = torch.tanh(F.linear(x, W["open.weight"], W["open.bias"]))
    class Rhs:
        """F_j of an `ode` unit k: the right-hand side named by `rhs` with interval j's weights."""

        def __init__(self, k):
            self.k, self.kind = k, cfg.get("rhs", "parabolic")

        def params(self, j):
            p = f"units.{self.k}.steps.{j}."
            return [t for n, t in W.items() if n.startswith(p)]

        def __call__(self, j, z):
            p = f"units.{self.k}.steps.{j}."
            if self.kind == "parabolic":
                return f(p, "K", "", z)
            if self.kind == "resnet":
                return act(a, N(p, "", K(p + "K", z)))
            if self.kind == "antisymmetric":
                return act(a, N(p, "", K(p + "K", z) - KT(p + "K", z) - gamma * z))
            raise ValueError(f"rhs {self.kind}")

    widths, steps = cfg["widths"], cfg["steps"]
    def unit(k, w, nt, y, *unit_params):
        """The steps of unit k (`unit_params` only names the weights for checkpointing)."""
        prev = y
        if layer == "ode":
            return ode_unit(cfg, Rhs(k), y, nt, h)
        for j in range(nt):
            p = f"units.{k}.steps.{j}."
            if layer == "resnet":
                y = y + h * act(a, N(p, "", K(p + "K", y)))
            elif layer == "antisymmetric":
                z = K(p + "K", y) - KT(p + "K", y) - gamma * y
                y = y + h * act(a, N(p, "", z))
            elif layer == "parabolic":
                y = y + h * f(p, "K", "", y)
            elif layer == "hyperbolic":
                y, prev = 2 * y - prev + h * h * f(p, "K", "", y), y
            elif layer == "hamiltonian":
                A, Bh = y[:, : w // 2], y[:, w // 2:]
                A = A + h * f(p, "K1", "1", Bh)
                Bh = Bh - h * f(p, "K2", "2", A)
                y = torch.cat([A, Bh], dim=1)
        return y

    for k, (w, nt) in enumerate(zip(widths, steps)):
        if checkpoint_units:
            # torch.utils.checkpoint per unit: the unit's states are recomputed in backward.
            from torch.utils.checkpoint import checkpoint

            ps = [t for n, t in W.items() if n.startswith(f"units.{k}.steps.")]
            y = checkpoint(unit, k, w, nt, y, *ps, use_reentrant=False)
        else:
            y = unit(k, w, nt, y)
        last = k + 1 == len(widths)
        if image:
            c = f"units.{k}.connect."
            y = F.relu(bn(c + "bn", F.conv2d(y, W[c + "conv.weight"])))
            y = y.mean(dim=(2, 3)) if last else F.avg_pool2d(y, 2)
        elif not last and widths[k + 1] != w:
            c = f"units.{k}.connect."
            y = torch.tanh(F.linear(y, W[c + "weight"], W[c + "bias"]))
    logits = F.linear(y, W["classifier.weight"], W["classifier.bias"])
    return F.cross_entropy(logits, labels), logits


def main():
    cfg_path, w_path, b_path, g_path = sys.argv[1:5]
    device = "cuda" if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1] == "cuda" else "cpu"
    cfg = json.load(open(cfg_path))
    dt = torch.float64
    W = {k: v.to(device, dt).requires_grad_(True) for k, v in load_file(w_path).items()}
    B = load_file(b_path)
    x = B["x"].to(device, dt).requires_grad_(True)
    labels = B["labels"].to(device).long()
    loss, logits = forward(cfg, W, x, labels)
    loss.backward()

    G = load_file(g_path)
    worst = 0.0
    rows = [("loss", loss.detach(), G["loss"][0]), ("logits", logits.detach(), G["logits"]), ("grad.x", x.grad, G["grad.x"])]
    rows += [(f"grad.{n}", t.grad, G.get(f"grad.{n}")) for n, t in W.items() if t.grad is not None]
    for name, ref, got in rows:
        if got is None:
            print(f"{name}: missing in pdenet output")
            worst = float("inf")
            continue
        ref = ref.double().cpu()
        got = got.double()
        err = ((ref - got).norm() / max(ref.norm().item(), 1e-12)).item()
        worst = max(worst, err)
        print(f"{name:40s} rel err {err:.2e}")
    print(f"worst relative error {worst:.2e}")
    tol = float(sys.argv[sys.argv.index("--tol") + 1]) if "--tol" in sys.argv else 1e-4
    sys.exit(0 if worst <= tol else 1)


if __name__ == "__main__":
    main()
