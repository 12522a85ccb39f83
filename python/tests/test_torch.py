"""pdenet.torch against plain PyTorch: gradients, gradcheck in float64, state_dict round trips."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the pdenet.torch tests need it")
import torch.nn.functional as F  # noqa: E402

import pdenet  # noqa: E402
import pdenet.torch as pt  # noqa: E402
from conftest import REPO, cli, rel_err  # noqa: E402
from reference_unit import plain_unit  # noqa: E402

LAYERS = ["hyperbolic", "hamiltonian", "parabolic", "resnet", "antisymmetric"]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("policy", ["store", "reversible", "exact"])
def test_unit_gradients_match_plain_pytorch(layer, policy):
    torch.manual_seed(0)
    unit = pt.Unit(layer, width=8, steps=5, h=0.3, policy=policy, seed=1)
    x = torch.randn(3, 8, 6, 5, requires_grad=True)
    w = torch.randn(3, 8, 6, 5)
    (unit(x) * w).sum().backward()

    W = {n: p.detach().double().requires_grad_(True) for n, p in unit.named_parameters()}
    x64 = x.detach().double().requires_grad_(True)
    (plain_unit(layer, W, x64, 0.3) * w.double()).sum().backward()
    tol = 1e-3 if policy == "exact" else 1e-4
    assert rel_err(x.grad, x64.grad) < tol
    for n, p in unit.named_parameters():
        assert rel_err(p.grad, W[n].grad) < tol, n


def test_unit_keys_are_spec_names():
    unit = pt.Unit("hamiltonian", width=4, steps=2, h=0.1)
    assert list(unit.state_dict()) == [
        f"steps.{j}.{n}" for j in range(2)
        for n in ["K1", "K2", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"]
    ]
    assert unit.steps[1].norm2.bias.shape == (2,)
    lean = pt.Unit("hyperbolic", width=8, steps=1, h=0.1, operator="lean")
    assert "steps.0.P" in lean.state_dict()


def test_gradcheck_in_float64():
    unit = pt.Unit("hyperbolic", width=2, steps=3, h=0.4, policy="reversible", precision="f64", seed=4).double()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in unit.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in unit.parameters())

    def f(x, *ps):
        return torch.func.functional_call(unit, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_unit_state_dict_round_trip():
    a = pt.Unit("hyperbolic", width=4, steps=3, h=0.5, seed=1)
    b = pt.Unit("hyperbolic", width=4, steps=3, h=0.5, seed=2)
    x = torch.randn(2, 4, 5, 5)
    assert not torch.equal(a(x), b(x))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))


def test_unit_in_a_model_trains():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), pt.Unit("hyperbolic", width=4, steps=4, h=0.5),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 2, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model[0].weight.grad is not None and losses[-1] < losses[0]


def test_errors():
    unit = pt.Unit("hyperbolic", width=4, steps=2, h=0.5)
    with pytest.raises(ValueError, match="has 3 channels, unit 0 has width 4"):
        unit(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="float32 or float64"):
        unit(torch.ones(1, 4, 4, 4, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="CUDA path of the Python package is not built yet"):
        unit(torch.randn(1, 4, 4, 4, device="meta"))
    with pytest.raises(ValueError, match="unknown policy `fastest`"):
        pt.Unit("hyperbolic", width=4, steps=2, h=0.5, policy="fastest")(torch.randn(1, 4, 4, 4))


SMALL = {"kind": "image", "in_channels": 2, "classes": 3, "widths": [4, 8], "steps": [3, 2],
         "layer": "hamiltonian", "h": 0.4}


@pytest.fixture
def weights(tmp_path):
    cfg = tmp_path / "net.json"
    cfg.write_text(json.dumps(SMALL))
    w = tmp_path / "w.safetensors"
    cli("init", "--config", cfg, "--seed", 3, "--out", w)
    return cfg, w


def test_network_matches_torch_reference(weights):
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    import torch_reference
    from safetensors.torch import load_file

    cfg, w = weights
    net = pt.Network(str(cfg), weights=w, policy="reversible")
    x = torch.randn(4, 2, 6, 6, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 1])
    F.cross_entropy(net(x), labels).backward()

    W = {k: v.double().requires_grad_(True) for k, v in load_file(str(w)).items()}
    x64 = x.detach().double().requires_grad_(True)
    loss, _ = torch_reference.forward(SMALL, W, x64, labels)
    loss.backward()
    assert rel_err(x.grad, x64.grad) < 1e-4
    for n, p in net.named_parameters():
        assert rel_err(p.grad, W[n].grad) < 1e-4, n


def test_network_state_dict_round_trips_with_pdenet_files(weights, tmp_path):
    from safetensors.torch import load_file, save_file

    cfg, w = weights
    file = load_file(str(w))
    net = pt.Network(str(cfg), seed=99)
    assert sorted(net.state_dict()) == sorted(file)
    net.load_state_dict(file)
    from_file = pt.Network(str(cfg), weights=w).eval()
    x = torch.randn(2, 2, 6, 6)
    assert torch.equal(net.eval()(x), from_file(x))
    out = tmp_path / "back.safetensors"
    net.save_safetensors(out)
    back = load_file(str(out))
    assert all(torch.equal(back[k], file[k]) for k in file)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "torch.safetensors"))
    g = pdenet.grad(str(cfg), str(tmp_path / "torch.safetensors"), np.zeros((2, 2, 6, 6), np.float32), [0, 1])
    assert np.isfinite(g["loss"]).all()


def test_network_running_statistics_move_in_backward(weights):
    cfg, w = weights
    net = pt.Network(str(cfg), weights=w)
    before = net.open.bn.running_mean.clone()
    net(torch.randn(4, 2, 6, 6)).sum().backward()
    assert not torch.equal(before, net.open.bn.running_mean)


def test_unit_second_backward_with_retain_graph():
    unit = pt.Unit("hyperbolic", width=4, steps=3, h=0.5)
    x = torch.randn(2, 4, 4, 4, requires_grad=True)
    y = unit(x).sum()
    y.backward(retain_graph=True)
    first = x.grad.clone()
    y.backward()
    assert torch.allclose(x.grad, 2 * first, rtol=1e-5, atol=1e-6)
