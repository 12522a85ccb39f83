"""pdenet from Python: the engine of deep networks from PDEs on numpy arrays.

Functions mirror the command line (SPEC section 9): :func:`init`, :func:`grad`, :func:`train`
and :func:`info`. :class:`Unit` and :class:`Network` run one unit or a whole network on numpy
arrays; ``pdenet.torch`` wraps them as ``torch.nn.Module``\\ s. Errors are ``ValueError`` (bad
input) or ``RuntimeError`` with the engine's one-line message.
"""
import json as _json

from . import _pdenet
from ._pdenet import Network, info, init, grad  # noqa: F401

__version__ = _pdenet.__version__
__all__ = ["Unit", "Network", "init", "grad", "train", "info", "__version__"]


def Unit(layer="hyperbolic", width=64, steps=32, h=0.5, **options):
    """One unit of ``steps`` steps of ``layer`` at ``width`` channels and step size ``h``.

    ``options``: the config keys of a unit (``operator``, ``norm``, ``activation``, ``gamma``;
    for ``layer="ode"`` also ``rhs``, ``solver``, ``substeps``, ``rtol``, ``atol``, ``gradient``,
    ``max_steps``), ``seed`` (initial parameters, as ``pdenet init``) and ``precision``
    (``"f32"``: the CPU backend; ``"f64"``: the f64 reference backend, for gradient checks).
    Methods: ``forward(x, policy)``, ``backward(x, grad_out, policy)``, ``params()``,
    ``set_param(name, array)``, ``param_shapes()``; ``x`` is NCHW float32 (or float64).
    """
    opts = dict(layer=layer, width=int(width), steps=int(steps), h=float(h))
    opts.update(options)
    return _pdenet.Unit(_json.dumps(opts))


def train(config="ref-mnist", *, progress=None, **flags):
    """``pdenet train``: the keyword arguments are its flags (``data``, ``epochs``, ``out``,
    ``batch``, ``lr``, ``optimizer``, ``policy``, ``seed``, ``force=True``, ...), with the same
    defaults and checks. ``progress(epoch, step, loss)`` is called after every step; an
    exception in it stops the run and is raised again. Returns ``{"epochs", "test_accuracy",
    "test_loss", "history": [...]}``.
    """
    # None leaves a flag at its default, as leaving it out on the command line does.
    flags = {key: value for key, value in flags.items() if value is not None}
    return _pdenet.train(str(config), flags, progress)
