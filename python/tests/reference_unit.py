"""One pdenet unit in plain PyTorch (autograd through every step), from the building blocks of
scripts/torch_reference.py (SPEC sections 2-3)."""
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch_reference as ref  # noqa: E402,F401  (tvnorm, act)


def plain_unit(layer, W, y, h, activation="relu", gamma=1e-4):
    """The unit of `layer` with parameters `W` (unit-relative SPEC names) on `y`."""
    nt = len({n.split(".")[1] for n in W})
    K = lambda name, z: F.conv2d(z, W[name], padding=1)  # noqa: E731
    KT = lambda name, z: F.conv_transpose2d(z, W[name], padding=1)  # noqa: E731

    def N(p, sfx, z):
        return ref.tvnorm(z, W[f"{p}norm{sfx}.weight"], W[f"{p}norm{sfx}.bias"])

    def f(p, k, sfx, z):
        return -KT(p + k, ref.act(activation, N(p, sfx, K(p + k, z))))

    prev = y
    w = y.shape[1]
    for j in range(nt):
        p = f"steps.{j}."
        if layer == "resnet":
            y = y + h * ref.act(activation, N(p, "", K(p + "K", y)))
        elif layer == "antisymmetric":
            y = y + h * ref.act(activation, N(p, "", K(p + "K", y) - KT(p + "K", y) - gamma * y))
        elif layer == "parabolic":
            y = y + h * f(p, "K", "", y)
        elif layer == "hyperbolic":
            y, prev = 2 * y - prev + h * h * f(p, "K", "", y), y
        elif layer == "hamiltonian":
            A, B = y[:, : w // 2], y[:, w // 2:]
            A = A + h * f(p, "K1", "1", B)
            B = B - h * f(p, "K2", "2", A)
            y = torch.cat([A, B], dim=1)
        else:
            raise ValueError(layer)
    return y
