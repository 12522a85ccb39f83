"""The numpy API against the CLI on the same files, and its errors."""
import json
import pathlib
import re

import numpy as np
import pytest

import pdenet
from conftest import REPO, cli, read_safetensors, rel_err, write_safetensors

SMALL = {"kind": "image", "in_channels": 2, "classes": 3, "widths": [4, 8], "steps": [3, 2],
         "layer": "hyperbolic", "h": 0.4}


@pytest.fixture
def files(tmp_path):
    cfg = tmp_path / "net.json"
    cfg.write_text(json.dumps(SMALL))
    w = tmp_path / "w.safetensors"
    cli("init", "--config", cfg, "--seed", 5, "--out", w)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    labels = np.array([0, 2, 1, 2], dtype=np.int64)
    b = tmp_path / "batch.safetensors"
    write_safetensors(b, {"x": x, "labels": labels})
    return cfg, w, b, x, labels


def test_version_is_the_crates():
    cargo = (REPO / "Cargo.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    assert pdenet.__version__ == version
    assert pdenet._pdenet.ENGINE_VERSION == version


def test_init_matches_cli(files, tmp_path):
    cfg, w, _, _, _ = files
    ours = pdenet.init(str(cfg), seed=5, out=str(tmp_path / "again.safetensors"))
    theirs = read_safetensors(w)
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    again = read_safetensors(tmp_path / "again.safetensors")
    np.testing.assert_array_equal(again["units.1.steps.0.K"], theirs["units.1.steps.0.K"])


@pytest.mark.parametrize("policy", ["store", "reversible", "exact"])
def test_grad_matches_cli(files, tmp_path, policy):
    cfg, w, b, x, labels = files
    out = tmp_path / f"g-{policy}.safetensors"
    cli("grad", "--config", cfg, "--weights", w, "--input", b, "--out", out, "--policy", policy, "--device", "cpu")
    theirs = read_safetensors(out)
    ours = pdenet.grad(str(cfg), str(w), x, labels, policy=policy)
    assert sorted(ours) == sorted(theirs)
    for name, ref in theirs.items():
        assert ours[name].shape == ref.shape, name
        assert rel_err(ours[name], ref) < 1e-5, name
    # Weights as a dict of arrays give the same.
    by_dict = pdenet.grad(str(cfg), pdenet.init(str(cfg), seed=5), x, labels, policy=policy)
    assert rel_err(by_dict["grad.x"], theirs["grad.x"]) < 1e-5


def test_network_backward_from_logits_is_grad(files):
    cfg, w, _, x, labels = files
    net = pdenet.Network(str(cfg), weights=str(w))
    g = pdenet.grad(str(cfg), str(w), x, labels)
    logits = net.forward(x)
    assert rel_err(logits, g["logits"]) < 1e-6
    # The cross-entropy's gradient of the logits: softmax - onehot, over the batch.
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    gx, grads = net.backward(x, (p / len(labels)).astype(np.float32), "reversible")
    assert rel_err(gx, g["grad.x"]) < 1e-5
    for name, v in grads:
        assert rel_err(v, g[f"grad.{name}"]) < 1e-5, name


def test_unit_gradients_against_finite_differences():
    u = pdenet.Unit("hamiltonian", width=4, steps=3, h=0.3, seed=2, precision="f64")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 3, 3))
    w = rng.standard_normal(x.shape)  # the loss is sum(w * y)
    gx, grads = u.backward(x, w, "store")
    names = [n for n, _ in grads]
    assert names[:2] == ["steps.0.K1", "steps.0.K2"]
    eps = 1e-6
    for idx in [(0, 0, 0, 0), (1, 3, 2, 1)]:
        d = np.zeros_like(x)
        d[idx] = eps
        num = ((u.forward(x + d) - u.forward(x - d)) * w).sum() / (2 * eps)
        assert abs(num - gx[idx]) < 1e-6 * max(1, abs(num))
    name, g = grads[0]
    k = dict(u.params())[name].astype(np.float64)
    for flat in [0, 17]:
        kp, km = k.copy(), k.copy()
        kp.flat[flat] += eps
        km.flat[flat] -= eps
        u.set_param(name, kp)
        fp = (u.forward(x) * w).sum()
        u.set_param(name, km)
        fm = (u.forward(x) * w).sum()
        u.set_param(name, k)
        assert abs((fp - fm) / (2 * eps) - g.flat[flat]) < 1e-6 * max(1, abs(g.flat[flat]))


@pytest.mark.parametrize("policy", ["reversible", "exact"])
def test_unit_policies_agree_with_store(policy):
    u = pdenet.Unit("hyperbolic", width=8, steps=6, h=0.5, seed=3)
    x = np.random.default_rng(2).standard_normal((2, 8, 5, 5)).astype(np.float32)
    g = np.ones_like(x)
    ref_x, ref = u.backward(x, g, "store")
    got_x, got = u.backward(x, g, policy)
    tol = 1e-4 if policy == "exact" else 1e-5
    assert rel_err(got_x, ref_x) < tol
    for (n, a), (_, b) in zip(got, ref):
        assert rel_err(a, b) < tol, n


def test_unit_f32_input_not_copied_when_contiguous_and_strided_works():
    u = pdenet.Unit("parabolic", width=4, steps=2, h=0.1)
    x = np.random.default_rng(3).standard_normal((2, 4, 4, 8)).astype(np.float32)
    strided = x[:, :, :, ::2]
    np.testing.assert_allclose(u.forward(strided), u.forward(np.ascontiguousarray(strided)), rtol=0, atol=0)


def test_errors_raise_with_the_engines_message(files):
    cfg, w, _, x, labels = files
    with pytest.raises(ValueError, match=r"input `x` has shape \[4, 3, 6, 6\], expected \[N, 2, H, W\]"):
        pdenet.grad(str(cfg), str(w), np.zeros((4, 3, 6, 6), np.float32), labels)
    with pytest.raises(ValueError, match="unknown policy `fast`"):
        pdenet.grad(str(cfg), str(w), x, labels, policy="fast")
    with pytest.raises(ValueError, match="label 7 is out of range for 3 classes"):
        pdenet.grad(str(cfg), str(w), x, np.array([0, 1, 7, 0]))
    with pytest.raises(ValueError, match="neither a config file nor a reference name"):
        pdenet.info("no-such-config.json")
    with pytest.raises(ValueError, match="unknown field `widht`"):
        pdenet.Unit("hyperbolic", widht=3)
    with pytest.raises(ValueError, match="hamiltonian layers need even widths, got 5"):
        pdenet.Unit("hamiltonian", width=5, steps=2, h=0.1)
    u = pdenet.Unit("hyperbolic", width=4, steps=2, h=0.1)
    with pytest.raises(ValueError, match="has 3 channels, unit 0 has width 4"):
        u.forward(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="must be NCHW"):
        u.forward(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="numpy array of f32"):
        u.forward(np.zeros((1, 4, 2, 2), np.int32))
    with pytest.raises(ValueError, match="missing tensor `steps.9.K`"):
        u.set_param("steps.9.K", np.zeros((4, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"`steps.0.K` has shape \[4, 4\]"):
        u.set_param("steps.0.K", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="weights error"):
        pdenet.Network(str(cfg), weights=str(pathlib.Path(w).with_name("batch.safetensors")))
    with pytest.raises(ValueError, match="unexpected argument '--epoch'"):
        pdenet.train("ref-2d", epoch=1)


def test_info_matches_cli():
    i = pdenet.info("ref-mnist", batch=16)
    text = cli("info", "--config", "ref-mnist", "--batch", 16).stdout
    assert f"parameters  {i['parameters']}" in text
    assert [m["policy"] for m in i["memory"]] == ["store", "reversible", "exact", "store bf16"]
    store = next(line for line in text.splitlines() if line.strip().startswith("store "))
    assert f"{i['memory'][0]['peak_bytes'] / 1e6:.2f}" in store


def test_train_calls_progress_and_stops_on_its_exception(tmp_path):
    seen = []
    report = pdenet.train("ref-2d", data="twoclass", epochs=2, batch=50, out=tmp_path / "run",
                          progress=lambda epoch, step, loss: seen.append((epoch, step, loss)))
    assert report["epochs"] == 2 and len(report["history"]) == 2
    assert {e for e, _, _ in seen} == {1, 2} and seen[0][1] == 1
    assert all(np.isfinite(loss) for _, _, loss in seen)
    assert (tmp_path / "run" / "model.safetensors").exists()

    def stop(epoch, step, loss):
        if step == 3:
            raise KeyboardInterrupt("enough")

    with pytest.raises(KeyboardInterrupt, match="enough"):
        pdenet.train("ref-2d", data="twoclass", epochs=1, out=tmp_path / "stopped", progress=stop)


@pytest.mark.parametrize("policy", ["store", "reversible", "exact"])
def test_unit_backward_from_the_kept_tape_equals_backward(policy):
    u = pdenet.Unit("hamiltonian", width=8, steps=5, h=0.3, seed=4)
    x = np.random.default_rng(5).standard_normal((2, 8, 4, 4)).astype(np.float32)
    g = np.random.default_rng(6).standard_normal(x.shape).astype(np.float32)
    y, tape = u.forward_kept(x, policy)
    np.testing.assert_array_equal(y, u.forward(x, policy))
    gx, grads = u.backward_kept(tape, g)
    ref_x, ref = u.backward(x, g, policy)
    np.testing.assert_allclose(gx, ref_x, rtol=1e-6, atol=1e-7)
    for (n, a), (_, b) in zip(grads, ref):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=n)
    assert tape.used
    with pytest.raises(ValueError, match="the tape was used"):
        u.backward_kept(tape, g)
    other = pdenet.Unit("hamiltonian", width=8, steps=5, h=0.3)
    _, t2 = u.forward_kept(x, policy)
    with pytest.raises(ValueError, match="the tape is another unit's"):
        other.backward_kept(t2, g)
