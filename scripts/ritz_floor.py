"""Where the Deep Ritz error on poisson-cube stops falling, measured in PyTorch (issue 16).

An independent check of `pdenet solve`: the same potential network (SPEC section 11, PyTorch
`Linear` initialisation), the same sampling, Adam with the same cosine decay, trained either by
the Ritz loss (as pdenet) or by plain regression on u* (the network's own floor at this budget).

    python scripts/ritz_floor.py --dim 10 --loss fit|ritz [--net potential|mlp] [--act ...]

Runs in a virtual environment with torch; not a dependency of pdenet.
"""

import argparse
import math
import time

import torch


def logcosh(z):
    a = z.abs()
    return a + torch.log1p(torch.exp(-2 * a)) - math.log(2)


ACTS = {
    "logcosh": logcosh,
    "tanh": torch.tanh,
    "sin": torch.sin,
    "relu3": lambda z: torch.relu(z) ** 3,
}


def linear(fan_in, fan_out):
    b = 1 / math.sqrt(fan_in)
    w = torch.nn.Parameter(torch.empty(fan_out, fan_in).uniform_(-b, b))
    return w, torch.nn.Parameter(torch.empty(fan_out).uniform_(-b, b))


def potential_net(d, m, layers, h):
    """Phi(s) = w^T u_M + 1/2 |A s|^2 + c^T s + c_0 with logcosh residual layers."""
    k0, b0 = linear(d, m)
    ks = [linear(m, m) for _ in range(layers)]
    w = torch.nn.Parameter(torch.empty(m).uniform_(-1 / math.sqrt(m), 1 / math.sqrt(m)))
    r = min(10, d)
    a = torch.nn.Parameter(torch.empty(r, d).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d)))
    c = torch.nn.Parameter(torch.zeros(d))
    c0 = torch.nn.Parameter(torch.zeros(()))

    def phi(x):
        u = logcosh(x @ k0.T + b0)
        for k, b in ks:
            u = u + h * logcosh(u @ k.T + b)
        return u @ w + 0.5 * ((x @ a.T) ** 2).sum(1) + x @ c + c0

    return phi, [k0, b0, w, a, c, c0] + [p for kb in ks for p in kb]


def residual_mlp(d, m, layers, act):
    """A plain residual MLP (the Deep Ritz paper's shape) with a linear read-out."""
    lin = [torch.nn.Linear(d, m)] + [torch.nn.Linear(m, m) for _ in range(layers)]
    out = torch.nn.Linear(m, 1)
    f = ACTS[act]

    def phi(x):
        u = f(lin[0](x))
        for layer in lin[1:]:
            u = u + f(layer(u))
        return out(u)[:, 0]

    return phi, [p for layer in lin + [out] for p in layer.parameters()]


def exact(x):
    return torch.sin(math.pi * x).mean(1)


def boundary(n, d):
    x = torch.rand(n, d)
    face = torch.randint(0, 2 * d, (n,))
    x[torch.arange(n), face // 2] = (face % 2).float()
    return x


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--loss", choices=["fit", "ritz"], default="ritz")
    p.add_argument("--net", choices=["potential", "mlp"], default="potential")
    p.add_argument("--act", choices=sorted(ACTS), default="logcosh")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--h", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--lr-floor", type=float, default=1e-2)
    p.add_argument("--penalty", type=float, default=250.0, help="weight of the boundary integral")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(1)
    d = a.dim
    if a.net == "potential":
        phi, params = potential_net(d, a.width, a.layers, a.h)
    else:
        phi, params = residual_mlp(d, a.width, a.layers, a.act)
    opt = torch.optim.Adam(params, lr=a.lr)
    last = max(a.steps - 1, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: a.lr_floor + (1 - a.lr_floor) * 0.5 * (1 + math.cos(math.pi * s / last)),
    )
    beta = a.penalty * 2 * d  # |boundary| / |domain| of the unit cube, as pdenet
    x_err = torch.rand(10_000, d)
    t0 = time.time()
    for step in range(a.steps):
        xi, xb = torch.rand(1024, d), boundary(512, d)
        if a.loss == "fit":
            loss = ((phi(xi) - exact(xi)) ** 2).mean() + ((phi(xb) - exact(xb)) ** 2).mean()
        else:
            xi.requires_grad_(True)
            u = phi(xi)
            (g,) = torch.autograd.grad(u.sum(), xi, create_graph=True)
            source = math.pi**2 * exact(xi.detach())
            loss = (0.5 * (g**2).sum(1) - source * u).mean()
            loss = loss + beta * ((phi(xb) - exact(xb)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        e = torch.linalg.norm(phi(x_err) - exact(x_err)) / torch.linalg.norm(exact(x_err))
    print(f"{a.net} {a.act if a.net == 'mlp' else 'logcosh'} loss {a.loss} d {d} "
          f"width {a.width} steps {a.steps} time {time.time() - t0:.1f}s")
    print(f"rel_l2 {e.item():.4e}")


if __name__ == "__main__":
    main()
