"""pdenet units and networks as ``torch.nn.Module``\\ s.

A unit's forward pass keeps what the module's memory policy allows (``reversible``: the input and
an invertible unit's last states, which its backward pass rebuilds the others from, so memory
stays flat in depth); a network's forward pass keeps only the input. Parameters are registered under SPEC names: a :class:`Unit`'s
``state_dict()`` keys are ``steps.{j}.K``, ``steps.{j}.norm.weight``, ...; a :class:`Network`'s
are SPEC section 8's, so they round-trip with pdenet's safetensors files.

CPU tensors of float32 (or float64 with ``precision="f64"``) in NCHW; contiguous tensors are
passed to the engine without a copy.
"""
import json

import numpy as np
import torch
from torch import nn

from . import _pdenet

__all__ = ["Unit", "Network"]

_CUDA_NOT_BUILT = (
    "pdenet.torch runs on CPU tensors, got `{what}` on {device}: the CUDA path of the Python "
    "package is not built yet; move the input and the module to the CPU"
)


def _check(t, what):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"pdenet.torch: `{what}` must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise RuntimeError(_CUDA_NOT_BUILT.format(what=what, device=t.device))
    if t.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"pdenet.torch: `{what}` must be float32 or float64, got {t.dtype}")


def _np(t, dtype=None):
    """A numpy view of `t` (a copy only when it is not contiguous or of another dtype)."""
    t = t.detach()
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t.contiguous().numpy()


def _attach(root, dotted, value, buffer=False):
    """Registers `value` under the dotted name, creating the modules on the way."""
    parts = dotted.split(".")
    m = root
    for i, p in enumerate(parts[:-1]):
        child = m._modules.get(p)
        if child is None:
            # `steps.0`, `units.1`: lists, so that `unit.steps[0].K` reads as it does in PyTorch.
            child = nn.ModuleList() if parts[i + 1].isdigit() else nn.Module()
            m.add_module(p, child)
        m = child
    if buffer:
        m.register_buffer(parts[-1], value)
    else:
        m.register_parameter(parts[-1], value)


def _lookup(root, dotted):
    """The tensor under a dotted name (also one that `torch.func.functional_call` put there)."""
    m = root
    for p in dotted.split("."):
        m = getattr(m, p)
    return m


class _UnitFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, module, *params):
        module._sync(params)
        # The engine keeps what the policy allows (under `reversible`: the input and an
        # invertible unit's last states), so that the backward pass starts from it.
        y, ctx.tape = module._core.forward_kept(_np(x), module.policy)
        ctx.module = module
        ctx.save_for_backward(x, *params)
        return torch.from_numpy(y)

    @staticmethod
    def backward(ctx, gy):
        x, *params = ctx.saved_tensors
        module = ctx.module
        module._sync(params)
        if ctx.tape.used:
            # A second backward pass (retain_graph): recompute from the input.
            gx, grads = module._core.backward(_np(x), _np(gy, x.dtype), module.policy)
        else:
            gx, grads = module._core.backward_kept(ctx.tape, _np(gy, x.dtype))
        out = [torch.from_numpy(g).to(p.dtype) for (_, g), p in zip(grads, params)]
        return (torch.from_numpy(gx), None, *out)


class Unit(nn.Module):
    """One pdenet unit: ``steps`` steps of ``layer`` at ``width`` channels, step size ``h``.

    ``forward(x)`` takes ``[N, width, H, W]`` and returns the unit's last state (same shape).
    ``options`` are the unit's config keys (``operator``, ``norm``, ``activation``, ``gamma``,
    the ``ode`` keys), ``seed`` (initial parameters as ``pdenet init``) and ``precision``
    (``"f32"``, or ``"f64"`` for the f64 reference backend: slow, for ``gradcheck``).
    """

    def __init__(self, layer="hyperbolic", width=64, steps=32, h=0.5, policy="reversible", **options):
        super().__init__()
        opts = dict(layer=layer, width=int(width), steps=int(steps), h=float(h))
        opts.update(options)
        self.options = opts
        self.policy = policy
        self._core = _pdenet.Unit(json.dumps(opts))
        dtype = torch.float64 if opts.get("precision") in ("f64", "float64") else torch.float32
        self._names = [n for n, _ in self._core.param_shapes()]
        for name, value in self._core.params():
            _attach(self, name, nn.Parameter(torch.from_numpy(value).to(dtype)))

    @property
    def width(self):
        return self._core.width

    def extra_repr(self):
        o = self.options
        return f"layer={o['layer']}, width={o['width']}, steps={o['steps']}, h={o['h']}, policy={self.policy}"

    def _sync(self, params):
        for name, p in zip(self._names, params):
            _check(p, name)
            self._core.set_param(name, _np(p))

    def forward(self, x):
        _check(x, "x")
        params = [_lookup(self, n) for n in self._names]
        return _UnitFunction.apply(x, self, *params)


class _NetworkFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, module, *params):
        module._sync()
        y = module._core.forward(_np(x, torch.float32))
        ctx.module = module
        ctx.save_for_backward(x, *params)
        return torch.from_numpy(y)

    @staticmethod
    def backward(ctx, gy):
        x, *params = ctx.saved_tensors
        module = ctx.module
        module._sync()
        gx, grads = module._core.backward(
            _np(x, torch.float32), _np(gy, torch.float32), module.policy, module.track_running_stats
        )
        by_name = dict(grads)
        out = [torch.from_numpy(by_name[n]).to(p.dtype) for n, p in zip(module._trainable, params)]
        if module.track_running_stats:
            module._pull_buffers()
        return (torch.from_numpy(gx).to(x.dtype), None, *out)


class Network(nn.Module):
    """A whole pdenet network (SPEC section 4): ``config`` is a file, a reference name
    (``ref-cifar``, ...) or JSON text; ``weights`` a safetensors file of SPEC names.

    In training mode, ``forward`` returns the logits with batch statistics and the backward
    pass runs the engine's (the running statistics move then, as ``pdenet train`` moves them);
    in evaluation mode, the logits with running statistics (no autograd through them).
    """

    def __init__(self, config, seed=0, weights=None, policy="store", track_running_stats=True):
        super().__init__()
        self.policy = policy
        self.track_running_stats = track_running_stats
        self._core = _pdenet.Network(config, seed, None if weights is None else str(weights))
        self.config = json.loads(self._core.config_json())
        shapes = self._core.param_shapes()
        roles = {n: r for n, _, r in shapes}
        self._names = [n for n, _, _ in shapes]
        self._trainable = [n for n in self._names if roles[n] == "parameter"]
        for name, value in self._core.params():
            t = torch.from_numpy(value)
            if roles[name] == "buffer":
                _attach(self, name, t, buffer=True)
            else:
                _attach(self, name, nn.Parameter(t))

    def _tensor(self, name):
        return _lookup(self, name)

    def _sync(self):
        for name in self._names:
            t = self._tensor(name)
            _check(t, name)
            self._core.set_param(name, _np(t, torch.float32))

    def _pull_buffers(self):
        trainable = set(self._trainable)
        with torch.no_grad():
            for name, value in self._core.params():
                if name not in trainable:
                    self.get_buffer(name).copy_(torch.from_numpy(value))

    def load_safetensors(self, path):
        """Loads a pdenet weights file (SPEC names) into the module."""
        self._core.load_weights(str(path))
        with torch.no_grad():
            for name, value in self._core.params():
                self._tensor(name).copy_(torch.from_numpy(value))

    def save_safetensors(self, path):
        """Writes the module's parameters and buffers as a pdenet weights file."""
        self._sync()
        self._core.save_weights(str(path))

    def forward(self, x):
        _check(x, "x")
        if not self.training:
            self._sync()
            return torch.from_numpy(self._core.eval(_np(x, torch.float32))).to(x.dtype)
        params = [_lookup(self, n) for n in self._trainable]
        return _NetworkFunction.apply(x, self, *params)
