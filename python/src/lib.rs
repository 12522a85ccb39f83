//! The `pdenet._pdenet` extension module: [`pdenet::api`] on numpy arrays.
//!
//! Every call releases the GIL while the engine runs, turns the engine's errors into
//! `ValueError` (bad input) or `RuntimeError` with its one-line message, and a panic into a
//! `RuntimeError` rather than a crash of the interpreter.

use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pdenet::api::{self, Precision, TrainProgress, UnitOptions};
use pdenet::config::Config;
use pdenet::schedule::Policy;
use pdenet::train::TrainJob;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

fn to_py(e: pdenet::Error) -> PyErr {
    use pdenet::Error as E;
    let msg = e.to_string();
    match e {
        E::Config(_)
        | E::Shape(_)
        | E::Weights(_)
        | E::MissingTensor(_)
        | E::Input(_)
        | E::Data(_) => PyValueError::new_err(msg),
        _ => PyRuntimeError::new_err(msg),
    }
}

/// Runs `f` without the GIL, a panic becoming a `RuntimeError`.
fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> pdenet::Result<T> + Send) -> PyResult<T> {
    py.allow_threads(|| match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(to_py),
        Err(p) => {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown".into());
            Err(PyRuntimeError::new_err(format!(
                "pdenet internal error (a panic): {}",
                what.lines().next().unwrap_or("")
            )))
        }
    })
}

fn policy(name: &str) -> PyResult<Policy> {
    name.parse::<Policy>().map_err(to_py)
}

fn precision(name: &str) -> PyResult<Precision> {
    match name {
        "f32" | "float32" => Ok(Precision::F32),
        "f64" | "float64" => Ok(Precision::F64),
        _ => Err(PyValueError::new_err(format!(
            "unknown precision `{name}` (f32, f64)"
        ))),
    }
}

/// A numpy array's values, borrowed where it is C-contiguous and copied otherwise.
enum Data<'py, T: numpy::Element> {
    Borrowed(numpy::PyReadonlyArrayDyn<'py, T>),
    Copied(Vec<T>),
}

impl<T: numpy::Element + Copy> Data<'_, T> {
    fn slice(&self) -> &[T] {
        match self {
            Data::Borrowed(a) => a.as_slice().unwrap_or(&[]),
            Data::Copied(v) => v,
        }
    }
}

/// Values and shape of `obj`, a numpy array of element type `T`.
fn read<'py, T: numpy::Element + Copy>(
    obj: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<(Data<'py, T>, Vec<usize>)> {
    let arr = obj.downcast::<PyArrayDyn<T>>().map_err(|_| {
        let dtype = obj
            .getattr("dtype")
            .map(|d| d.to_string())
            .unwrap_or_else(|_| obj.get_type().to_string());
        PyValueError::new_err(format!(
            "`{what}` must be a numpy array of {}, got {dtype}",
            std::any::type_name::<T>()
        ))
    })?;
    let ro = arr.readonly();
    let shape = ro.shape().to_vec();
    if ro.is_c_contiguous() {
        Ok((Data::Borrowed(ro), shape))
    } else {
        let v = ro.as_array().iter().copied().collect();
        Ok((Data::Copied(v), shape))
    }
}

fn is_f64(obj: &Bound<'_, PyAny>) -> bool {
    obj.downcast::<PyArrayDyn<f64>>().is_ok()
}

fn shape4(shape: &[usize], what: &str) -> PyResult<[usize; 4]> {
    <[usize; 4]>::try_from(shape).map_err(|_| {
        PyValueError::new_err(format!(
            "`{what}` must be NCHW (4 dimensions), got shape {shape:?}"
        ))
    })
}

fn array<'py, T: numpy::Element>(
    py: Python<'py>,
    data: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let a = ArrayD::from_shape_vec(IxDyn(shape), data)
        .map_err(|e| PyRuntimeError::new_err(format!("result shape {shape:?}: {e}")))?;
    Ok(a.into_pyarray(py))
}

/// What a unit's forward pass kept for its backward pass (used once).
#[pyclass(module = "pdenet._pdenet")]
struct Tape {
    inner: Option<api::UnitTape>,
}

#[pymethods]
impl Tape {
    /// Whether a backward pass has consumed it.
    #[getter]
    fn used(&self) -> bool {
        self.inner.is_none()
    }
}

fn take_tape(tape: &Bound<'_, Tape>) -> PyResult<api::UnitTape> {
    tape.borrow_mut().inner.take().ok_or_else(|| {
        PyValueError::new_err("bad input: the tape was used by a backward pass already")
    })
}

/// One unit (`pdenet.torch.Unit` runs on it). `options` is the JSON of [`UnitOptions`].
#[pyclass(module = "pdenet._pdenet")]
struct Unit {
    inner: api::Unit,
    shapes: Vec<(String, Vec<usize>)>,
}

#[pymethods]
impl Unit {
    #[new]
    fn new(py: Python<'_>, options: &str) -> PyResult<Self> {
        let opts = UnitOptions::from_json(options).map_err(to_py)?;
        let inner = run(py, || api::Unit::new(&opts))?;
        let shapes = inner.param_shapes();
        Ok(Unit { inner, shapes })
    }

    #[getter]
    fn width(&self) -> usize {
        self.inner.width()
    }

    /// `[(name, shape)]`, unit-relative SPEC names in SPEC order.
    fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.shapes.clone()
    }

    /// The unit's last state for `x` (NCHW, float32 or float64).
    #[pyo3(signature = (x, policy = "reversible"))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        policy: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let p = self::policy(policy)?;
        let u = &self.inner;
        if is_f64(x) {
            let (xd, shape) = read::<f64>(x, "x")?;
            let s = shape4(&shape, "x")?;
            let xs = xd.slice();
            let y = run(py, || u.forward_f64(xs, s, p))?;
            Ok(array(py, y, &shape)?.into_any())
        } else {
            let (xd, shape) = read::<f32>(x, "x")?;
            let s = shape4(&shape, "x")?;
            let xs = xd.slice();
            let y = run(py, || u.forward(xs, s, p))?;
            Ok(array(py, y, &shape)?.into_any())
        }
    }

    /// `(grad_x, [(name, grad)])` for the output gradient `grad_out` (same dtype as `x`).
    #[pyo3(signature = (x, grad_out, policy = "reversible"))]
    fn backward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        grad_out: &Bound<'py, PyAny>,
        policy: &str,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyList>)> {
        let p = self::policy(policy)?;
        let u = &self.inner;
        let list = PyList::empty(py);
        if is_f64(x) {
            let (xd, shape) = read::<f64>(x, "x")?;
            let (gd, gshape) = read::<f64>(grad_out, "grad_out")?;
            check_same(&shape, &gshape)?;
            let s = shape4(&shape, "x")?;
            let (xs, gs) = (xd.slice(), gd.slice());
            let (gx, grads) = run(py, || u.backward_f64(xs, s, gs, p))?;
            for ((name, g), (_, ps)) in grads.into_iter().zip(&self.shapes) {
                list.append((name, array(py, g, ps)?))?;
            }
            Ok((array(py, gx, &shape)?.into_any(), list))
        } else {
            let (xd, shape) = read::<f32>(x, "x")?;
            let (gd, gshape) = read::<f32>(grad_out, "grad_out")?;
            check_same(&shape, &gshape)?;
            let s = shape4(&shape, "x")?;
            let (xs, gs) = (xd.slice(), gd.slice());
            let (gx, grads) = run(py, || u.backward(xs, s, gs, p))?;
            for ((name, g), (_, ps)) in grads.into_iter().zip(&self.shapes) {
                list.append((name, array(py, g, ps)?))?;
            }
            Ok((array(py, gx, &shape)?.into_any(), list))
        }
    }

    /// `(y, tape)`: the last state and what `policy` keeps for `backward_kept`.
    #[pyo3(signature = (x, policy = "reversible"))]
    fn forward_kept<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        policy: &str,
    ) -> PyResult<(Bound<'py, PyAny>, Tape)> {
        let p = self::policy(policy)?;
        let u = &self.inner;
        if is_f64(x) {
            let (xd, shape) = read::<f64>(x, "x")?;
            let s = shape4(&shape, "x")?;
            let xs = xd.slice();
            let (y, t) = run(py, || u.forward_kept_f64(xs, s, p))?;
            Ok((array(py, y, &shape)?.into_any(), Tape { inner: Some(t) }))
        } else {
            let (xd, shape) = read::<f32>(x, "x")?;
            let s = shape4(&shape, "x")?;
            let xs = xd.slice();
            let (y, t) = run(py, || u.forward_kept(xs, s, p))?;
            Ok((array(py, y, &shape)?.into_any(), Tape { inner: Some(t) }))
        }
    }

    /// `(grad_x, [(name, grad)])` from a `forward_kept` tape (consumed) and `grad_out`.
    fn backward_kept<'py>(
        &self,
        py: Python<'py>,
        tape: &Bound<'py, Tape>,
        grad_out: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyList>)> {
        let u = &self.inner;
        let list = PyList::empty(py);
        if is_f64(grad_out) {
            let (gd, shape) = read::<f64>(grad_out, "grad_out")?;
            let t = take_tape(tape)?;
            let gs = gd.slice();
            let (gx, grads) = run(py, || u.backward_kept_f64(t, gs))?;
            for ((name, g), (_, ps)) in grads.into_iter().zip(&self.shapes) {
                list.append((name, array(py, g, ps)?))?;
            }
            Ok((array(py, gx, &shape)?.into_any(), list))
        } else {
            let (gd, shape) = read::<f32>(grad_out, "grad_out")?;
            let t = take_tape(tape)?;
            let gs = gd.slice();
            let (gx, grads) = run(py, || u.backward_kept(t, gs))?;
            for ((name, g), (_, ps)) in grads.into_iter().zip(&self.shapes) {
                list.append((name, array(py, g, ps)?))?;
            }
            Ok((array(py, gx, &shape)?.into_any(), list))
        }
    }

    /// `[(name, array)]` (float32).
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let u = &self.inner;
        let ps = run(py, || u.params())?;
        let list = PyList::empty(py);
        for (name, shape, v) in ps {
            list.append((name, array(py, v, &shape)?))?;
        }
        Ok(list)
    }

    /// Replaces parameter `name` (float32 or float64 array of its shape).
    fn set_param(&mut self, py: Python<'_>, name: &str, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let want = self
            .shapes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| to_py(pdenet::Error::MissingTensor(name.to_string())))?;
        let u = &mut self.inner;
        if is_f64(data) {
            let (d, shape) = read::<f64>(data, name)?;
            check_param_shape(name, &shape, &want)?;
            let s = d.slice();
            run(py, || u.set_param_f64(name, s))
        } else {
            let (d, shape) = read::<f32>(data, name)?;
            check_param_shape(name, &shape, &want)?;
            let s = d.slice();
            run(py, || u.set_param(name, s))
        }
    }
}

fn check_same(x: &[usize], g: &[usize]) -> PyResult<()> {
    if x != g {
        return Err(PyValueError::new_err(format!(
            "shape error: the output gradient has shape {g:?}, the output {x:?}"
        )));
    }
    Ok(())
}

fn check_param_shape(name: &str, got: &[usize], want: &[usize]) -> PyResult<()> {
    if got != want {
        return Err(PyValueError::new_err(format!(
            "weights error: `{name}` has shape {got:?}, the unit needs {want:?}"
        )));
    }
    Ok(())
}

/// A config from a file, a reference name or JSON text.
fn load_config(config: &str) -> pdenet::Result<Config> {
    if config.trim_start().starts_with('{') {
        Config::parse(config, false)
    } else {
        Config::load(config)
    }
}

/// A whole network (`pdenet.torch.Network` runs on it).
#[pyclass(module = "pdenet._pdenet")]
struct Network {
    inner: api::Network,
}

#[pymethods]
impl Network {
    /// `config`: a file, a reference name or JSON text; `weights`: a safetensors file.
    #[new]
    #[pyo3(signature = (config, seed = 0, weights = None, precision = "f32"))]
    fn new(
        py: Python<'_>,
        config: &str,
        seed: u64,
        weights: Option<PathBuf>,
        precision: &str,
    ) -> PyResult<Self> {
        let prec = self::precision(precision)?;
        let inner = run(py, || {
            let mut n = api::Network::new(&load_config(config)?, seed, prec)?;
            if let Some(w) = &weights {
                n.load_weights(w)?;
            }
            Ok(n)
        })?;
        Ok(Network { inner })
    }

    /// The config as JSON text.
    fn config_json(&self) -> PyResult<String> {
        serde_json::to_string(self.inner.config())
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// `[(name, shape, role)]`, role `parameter` or `buffer`, SPEC order.
    fn param_shapes(&self) -> Vec<(String, Vec<usize>, String)> {
        self.inner
            .param_shapes()
            .into_iter()
            .map(|(n, s, r)| {
                let role = if r == pdenet::params::ParamRole::Buffer {
                    "buffer"
                } else {
                    "parameter"
                };
                (n, s, role.to_string())
            })
            .collect()
    }

    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let n = &self.inner;
        let ps = run(py, || n.params())?;
        let list = PyList::empty(py);
        for (name, shape, v) in ps {
            list.append((name, array(py, v, &shape)?))?;
        }
        Ok(list)
    }

    fn set_param(&mut self, py: Python<'_>, name: &str, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let want = self
            .inner
            .param_shapes()
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, s, _)| s)
            .ok_or_else(|| to_py(pdenet::Error::MissingTensor(name.to_string())))?;
        let (d, shape) = read::<f32>(data, name)?;
        check_param_shape(name, &shape, &want)?;
        let s = d.slice();
        let n = &mut self.inner;
        run(py, || n.set_param(name, s))
    }

    fn load_weights(&mut self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let n = &mut self.inner;
        run(py, || n.load_weights(&path))
    }

    fn save_weights(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let n = &self.inner;
        run(py, || n.save_weights(&path))
    }

    /// Training-mode logits (batch statistics) of `x` (float32).
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (xd, shape) = read::<f32>(x, "x")?;
        let (xs, n) = (xd.slice(), &self.inner);
        let y = run(py, || n.forward(xs, &shape))?;
        let classes = self.inner.config().classes;
        array(py, y, &[shape[0], classes])
    }

    /// Evaluation-mode logits (running statistics).
    fn eval<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (xd, shape) = read::<f32>(x, "x")?;
        let (xs, n) = (xd.slice(), &self.inner);
        let y = run(py, || n.eval(xs, &shape))?;
        let classes = self.inner.config().classes;
        array(py, y, &[shape[0], classes])
    }

    /// `(grad_x, [(name, grad)])` from the gradient of the logits.
    #[pyo3(signature = (x, grad_logits, policy = "store", update_running = false))]
    fn backward<'py>(
        &mut self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        grad_logits: &Bound<'py, PyAny>,
        policy: &str,
        update_running: bool,
    ) -> PyResult<(Bound<'py, PyArrayDyn<f32>>, Bound<'py, PyList>)> {
        let p = self::policy(policy)?;
        let (xd, shape) = read::<f32>(x, "x")?;
        let (gd, _) = read::<f32>(grad_logits, "grad_logits")?;
        let (xs, gs) = (xd.slice(), gd.slice());
        let shapes = self.inner.param_shapes();
        let n = &mut self.inner;
        let (gx, grads) = run(py, || n.backward(xs, &shape, gs, p, update_running))?;
        let list = PyList::empty(py);
        for (name, g) in grads {
            let s = shapes
                .iter()
                .find(|e| e.0 == name)
                .map(|e| e.1.clone())
                .unwrap_or_else(|| vec![g.len()]);
            list.append((name, array(py, g, &s)?))?;
        }
        Ok((array(py, gx, &shape)?, list))
    }
}

/// `pdenet init`: `{name: array}` of a fresh network, also written to `out` when given.
#[pyfunction]
#[pyo3(signature = (config, seed = 0, out = None))]
fn init<'py>(
    py: Python<'py>,
    config: &str,
    seed: u64,
    out: Option<PathBuf>,
) -> PyResult<Bound<'py, PyDict>> {
    let ps = run(py, || api::init(config, seed, out.as_deref()))?;
    let d = PyDict::new(py);
    for (name, shape, v) in ps {
        d.set_item(name, array(py, v, &shape)?)?;
    }
    Ok(d)
}

/// `pdenet grad` on arrays: `weights` is a safetensors path or `{name: array}`; returns
/// `{"loss", "logits", "grad.x", "grad.<name>"...}` as the CLI writes them.
#[pyfunction]
#[pyo3(signature = (config, weights, x, labels, policy = "store"))]
fn grad<'py>(
    py: Python<'py>,
    config: &str,
    weights: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    labels: &Bound<'py, PyAny>,
    policy: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let p = self::policy(policy)?;
    let cfg = run(py, || load_config(config))?;
    let mut net = run(py, || api::Network::new(&cfg, 0, Precision::F32))?;
    if let Ok(path) = weights.extract::<PathBuf>() {
        run(py, || net.load_weights(&path))?;
    } else {
        let dict = weights.downcast::<PyDict>().map_err(|_| {
            PyValueError::new_err("`weights` must be a safetensors path or a dict of arrays")
        })?;
        let names: Vec<String> = net.param_shapes().into_iter().map(|e| e.0).collect();
        for name in &names {
            let a = dict
                .get_item(name)?
                .ok_or_else(|| to_py(pdenet::Error::Weights(format!("missing tensor `{name}`"))))?;
            let (d, _) = read::<f32>(&a, name)?;
            let s = d.slice();
            run(py, || net.set_param(name, s))?;
        }
        for key in dict.keys() {
            let k: String = key.extract()?;
            if !names.contains(&k) {
                return Err(to_py(pdenet::Error::Weights(format!(
                    "unexpected tensor `{k}` (weights for another config?)"
                ))));
            }
        }
    }
    let (xd, shape) = read::<f32>(x, "x")?;
    let lab: Vec<i64> = labels
        .call_method0("tolist")
        .and_then(|l| l.extract())
        .or_else(|_| labels.extract())
        .map_err(|_| PyValueError::new_err("`labels` must be a sequence of integers"))?;
    let lab: Vec<usize> = lab
        .into_iter()
        .map(|l| usize::try_from(l).map_err(|_| format!("label {l} is negative")))
        .collect::<Result<_, _>>()
        .map_err(|m| to_py(pdenet::Error::Input(m)))?;
    let xs = xd.slice();
    let out = run(py, || net.grad(xs, &shape, &lab, p))?;
    let d = PyDict::new(py);
    d.set_item("loss", array(py, vec![out.loss as f32], &[1])?)?;
    d.set_item("logits", array(py, out.logits, &[lab.len(), cfg.classes])?)?;
    d.set_item("grad.x", array(py, out.grad_x, &shape)?)?;
    let shapes = net.param_shapes();
    for (name, g) in out.grads {
        let s = shapes
            .iter()
            .find(|e| e.0 == name)
            .map(|e| e.1.clone())
            .unwrap_or_else(|| vec![g.len()]);
        d.set_item(format!("grad.{name}"), array(py, g, &s)?)?;
    }
    Ok(d)
}

/// `pdenet info`: `{"parameters", "input", "flops_forward", "flops_train_step", "batch",
/// "memory": [{"policy", "peak_bytes", "param_bytes", "grad_bytes"}]}`.
#[pyfunction]
#[pyo3(signature = (config, batch = 32))]
fn info<'py>(py: Python<'py>, config: &str, batch: usize) -> PyResult<Bound<'py, PyDict>> {
    let i = run(py, || api::info(config, batch))?;
    let d = PyDict::new(py);
    d.set_item("parameters", i.parameters)?;
    d.set_item("input", i.input)?;
    d.set_item("flops_forward", i.flops_forward)?;
    d.set_item("flops_train_step", i.flops_train_step)?;
    d.set_item("batch", i.batch)?;
    let rows = PyList::empty(py);
    for m in i.memory {
        let r = PyDict::new(py);
        r.set_item("policy", m.policy)?;
        r.set_item("peak_bytes", m.peak_bytes)?;
        r.set_item("param_bytes", m.param_bytes)?;
        r.set_item("grad_bytes", m.grad_bytes)?;
        rows.append(r)?;
    }
    d.set_item("memory", rows)?;
    Ok(d)
}

/// A flag's value from Python: the value itself (`epochs=2`, `lr=0.1`) or its spelling on the
/// command line (`lr="0.1"`, `drift_tol="inf"`).
fn flag_value<T>(key: &str, value: &Bound<'_, PyAny>) -> PyResult<T>
where
    T: for<'a> FromPyObject<'a> + std::str::FromStr,
{
    if let Ok(v) = value.extract::<T>() {
        return Ok(v);
    }
    let text = value.str()?.to_string();
    text.parse::<T>().map_err(|_| {
        PyValueError::new_err(format!(
            "invalid value '{text}' for '--{}'",
            key.replace('_', "-")
        ))
    })
}

/// A flag whose value is a name (`policy="exact"`), parsed by the engine's own parser.
fn flag_name<T: std::str::FromStr<Err = pdenet::Error>>(value: &Bound<'_, PyAny>) -> PyResult<T> {
    value.str()?.to_string().parse::<T>().map_err(to_py)
}

/// The training job of `config` and the keyword arguments of `pdenet.train`, named as the
/// flags of `pdenet train` (`drift_tol` for `--drift-tol`); the others keep their defaults.
fn train_job(config: String, flags: &Bound<'_, PyDict>) -> PyResult<TrainJob> {
    let mut job = TrainJob {
        config,
        ..TrainJob::default()
    };
    for (key, value) in flags.iter() {
        let key: String = key.extract()?;
        let v = &value;
        match key.as_str() {
            "data" => job.data = v.str()?.to_string(),
            "epochs" => job.epochs = flag_value(&key, v)?,
            "seed" => job.seed = flag_value(&key, v)?,
            "out" => job.out = PathBuf::from(v.str()?.to_string()),
            "batch" => job.batch = Some(flag_value(&key, v)?),
            "lr" => job.lr = Some(flag_value(&key, v)?),
            "optimizer" => job.optimizer = flag_name(v)?,
            "policy" => job.policy = flag_name(v)?,
            "drift_tol" => job.drift_tol = Some(flag_value(&key, v)?),
            "strict" => job.strict = flag_value(&key, v)?,
            "storage" => job.storage = flag_name(v)?,
            "device" => job.device = flag_name(v)?,
            "precision" => job.precision = flag_name(v)?,
            "resume" => job.resume = flag_value(&key, v)?,
            "force" => job.force = flag_value(&key, v)?,
            "multilevel" => job.multilevel = flag_value(&key, v)?,
            "time_limit" => job.time_limit = Some(flag_value(&key, v)?),
            // The command line's wording, so that a misspelt keyword reads as a misspelt flag.
            _ => {
                return Err(PyValueError::new_err(format!(
                    "unexpected argument '--{}' found",
                    key.replace('_', "-")
                )))
            }
        }
    }
    Ok(job)
}

/// `pdenet train`: `flags` are its flags as keyword arguments (see [`train_job`]);
/// `progress(epoch, step, loss)` after every step (an exception in it stops the run and is
/// raised again).
#[pyfunction]
#[pyo3(signature = (config, flags, progress = None))]
fn train<'py>(
    py: Python<'py>,
    config: String,
    flags: &Bound<'py, PyDict>,
    progress: Option<PyObject>,
) -> PyResult<Bound<'py, PyDict>> {
    let job = train_job(config, flags)?;
    // The callback's exception, kept to raise as it was.
    let raised: std::sync::Arc<std::sync::Mutex<Option<PyErr>>> = Default::default();
    let cb = progress.map(|f| {
        let raised = raised.clone();
        Box::new(move |p: &TrainProgress| {
            Python::with_gil(|py| match f.call1(py, (p.epoch, p.step, p.loss)) {
                Ok(_) => Ok(()),
                Err(e) => {
                    let msg = e.to_string();
                    if let Ok(mut r) = raised.lock() {
                        *r = Some(e);
                    }
                    Err(pdenet::Error::Other(format!(
                        "stopped by the progress callback: {msg}"
                    )))
                }
            })
        }) as api::ProgressFn
    });
    let result = run(py, || api::train(&job, cb));
    if let Some(e) = raised.lock().ok().and_then(|mut r| r.take()) {
        return Err(e);
    }
    let report = result?;
    let d = PyDict::new(py);
    d.set_item("epochs", report.epochs)?;
    d.set_item("test_accuracy", report.test_accuracy)?;
    d.set_item("test_loss", report.test_loss)?;
    let hist = PyList::empty(py);
    for r in report.history {
        let row = PyDict::new(py);
        row.set_item("epoch", r.epoch)?;
        row.set_item("loss", r.loss)?;
        row.set_item("train_acc", r.train_acc)?;
        row.set_item("test_acc", r.test_acc)?;
        row.set_item("images_per_s", r.images_per_s)?;
        row.set_item("seconds", r.seconds)?;
        hist.append(row)?;
    }
    d.set_item("history", hist)?;
    Ok(d)
}

#[pymodule]
fn _pdenet(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("ENGINE_VERSION", pdenet_version())?;
    m.add_class::<Unit>()?;
    m.add_class::<Tape>()?;
    m.add_class::<Network>()?;
    m.add_function(wrap_pyfunction!(init, m)?)?;
    m.add_function(wrap_pyfunction!(grad, m)?)?;
    m.add_function(wrap_pyfunction!(info, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    Ok(())
}

/// The version of the pdenet crate this module was built with.
fn pdenet_version() -> &'static str {
    pdenet::VERSION
}
