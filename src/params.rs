//! Named parameters in SPEC order, and their safetensors files.

use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// What a named tensor is for: the optimizer decays `Weight`s only and never touches `Buffer`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamRole {
    /// Operator, convolution and linear weights (weight decay applies).
    Weight,
    /// Normalisation scales and shifts, biases, diffusion coefficients.
    Affine,
    /// Batch-norm running statistics: saved, never trained.
    Buffer,
}

/// An ordered set of named host tensors (parameters and buffers).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamSet {
    entries: Vec<(String, ParamRole, HostTensor)>,
    index: HashMap<String, usize>,
}

impl ParamSet {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, name: impl Into<String>, role: ParamRole, t: HostTensor) {
        let name = name.into();
        self.index.insert(name.clone(), self.entries.len());
        self.entries.push((name, role, t));
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.index.get(name).map(|&i| &self.entries[i].2)
    }
    pub fn get_mut(&mut self, name: &str) -> Option<&mut HostTensor> {
        self.index.get(name).map(|&i| &mut self.entries[i].2)
    }
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, ParamRole, &HostTensor)> {
        self.entries.iter().map(|(n, r, t)| (n.as_str(), *r, t))
    }
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, ParamRole, &mut HostTensor)> {
        self.entries.iter_mut().map(|(n, r, t)| (n.as_str(), *r, t))
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _, _)| n.as_str())
    }
    /// Number of trainable scalars (buffers excluded).
    pub fn trainable_count(&self) -> usize {
        // From the shapes: the layout's template holds no data. Saturating: a config's bounds
        // keep it far below `usize::MAX`, and a saturated count fails every memory check.
        self.iter()
            .filter(|(_, r, _)| *r != ParamRole::Buffer)
            .fold(0usize, |a, (_, _, t)| a.saturating_add(t.numel()))
    }

    /// Scalars of every tensor, buffers included (saturating, as [`ParamSet::trainable_count`]).
    pub fn total_count(&self) -> usize {
        self.iter()
            .fold(0usize, |a, (_, _, t)| a.saturating_add(t.numel()))
    }

    /// As [`ParamSet::load_from`], with every error naming the file the tensors came from.
    pub fn load_from_file(
        &mut self,
        tensors: HashMap<String, HostTensor>,
        file: &Path,
    ) -> Result<()> {
        self.load_from(tensors).map_err(|e| match e {
            Error::MissingTensor(n) => {
                Error::Weights(format!("{}: missing tensor `{n}`", file.display()))
            }
            Error::Weights(m) => Error::Weights(format!("{}: {m}", file.display())),
            other => other,
        })
    }

    /// Replaces every tensor by the one of the same name in `tensors`, checking shapes.
    /// Extra tensors in the file are an error too: they mean the file is for another network.
    pub fn load_from(&mut self, mut tensors: HashMap<String, HostTensor>) -> Result<()> {
        for (name, _, t) in self.entries.iter_mut() {
            let new = tensors
                .remove(name.as_str())
                .ok_or_else(|| Error::MissingTensor(name.clone()))?;
            if new.shape != t.shape {
                return Err(Error::Weights(format!(
                    "`{name}` has shape {:?}, the config needs {:?}",
                    new.shape, t.shape
                )));
            }
            *t = new;
        }
        if let Some(extra) = tensors.keys().min() {
            return Err(Error::Weights(format!(
                "unexpected tensor `{extra}` (weights for another config?)"
            )));
        }
        Ok(())
    }

    pub fn to_map(&self) -> Vec<(String, HostTensor)> {
        self.entries
            .iter()
            .map(|(n, _, t)| (n.clone(), t.clone()))
            .collect()
    }
}

/// Reads every f32 tensor of a safetensors file. Other dtypes are an error, except i64 which is
/// converted (labels); use [`read_labels`] for those.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::Weights(format!(
            "{}: not a valid safetensors file ({e})",
            path.display()
        ))
    })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(Error::Weights(format!(
                "{}: tensor `{name}` is {:?}; pdenet reads F32 weights (convert it to float32)",
                path.display(),
                view.dtype()
            )));
        }
        let t = f32_tensor(&view);
        check_finite(&t.data, &format!("{}: tensor `{name}`", path.display()))
            .map_err(Error::Weights)?;
        out.insert(name.clone(), t);
    }
    Ok(out)
}

/// `Err` with `what`, the first non-finite value and its flat index, unless every value is
/// finite.
pub fn check_finite(data: &[f32], what: &str) -> std::result::Result<(), String> {
    match data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what} holds {} at index {i} (non-finite values are refused)",
            data[i]
        )),
    }
}

fn f32_tensor(view: &TensorView<'_>) -> HostTensor {
    let data: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    HostTensor {
        shape: view.shape().to_vec(),
        data,
    }
}

/// A training or gradient batch: `x` (f32) and `labels` (i64), as SPEC section 9.
pub struct Batch {
    pub x: HostTensor,
    pub labels: Vec<usize>,
}

/// Reads `x` and `labels` from a safetensors file.
pub fn read_batch(path: &Path) -> Result<Batch> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::Input(format!(
            "{}: not a valid safetensors file ({e})",
            path.display()
        ))
    })?;
    let xv = st
        .tensor("x")
        .map_err(|_| Error::MissingTensor(format!("x in {}", path.display())))?;
    if xv.dtype() != Dtype::F32 {
        return Err(Error::Input(format!(
            "{}: `x` must be F32, found {:?}",
            path.display(),
            xv.dtype()
        )));
    }
    let lv = st
        .tensor("labels")
        .map_err(|_| Error::MissingTensor(format!("labels in {}", path.display())))?;
    let labels: Vec<i64> = match lv.dtype() {
        Dtype::I64 => lv
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        Dtype::I32 => lv
            .data()
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
            .collect(),
        other => {
            return Err(Error::Input(format!(
                "{}: `labels` must be I64, found {other:?}",
                path.display()
            )));
        }
    };
    if let Some(bad) = labels.iter().find(|&&l| l < 0) {
        return Err(Error::Input(format!(
            "{}: label {bad} is negative",
            path.display()
        )));
    }
    let x = f32_tensor(&xv);
    check_finite(&x.data, &format!("{}: input `x`", path.display())).map_err(Error::Input)?;
    Ok(Batch {
        x,
        labels: labels.into_iter().map(|l| l as usize).collect(),
    })
}

/// A tensor to write: f32 values or i64 labels.
pub enum OutTensor<'a> {
    F32(&'a [usize], &'a [f32]),
    I64(&'a [usize], &'a [i64]),
}

/// Writes tensors to `path` atomically: a temporary file beside it, then a rename, so that a
/// crash never leaves a truncated file where a good one was.
pub fn write_safetensors(path: &Path, tensors: &[(String, OutTensor<'_>)]) -> Result<()> {
    // Views borrow the callers' slices: no copy of the data is made before it is written.
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            let (dt, shape, bytes): (Dtype, &[usize], &[u8]) = match t {
                OutTensor::F32(shape, data) => (Dtype::F32, shape, bytemuck::cast_slice(data)),
                OutTensor::I64(shape, data) => (Dtype::I64, shape, bytemuck::cast_slice(data)),
            };
            TensorView::new(dt, shape.to_vec(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Shape(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<_>>()?;
    with_temp_file(path, |tmp| {
        safetensors::tensor::serialize_to_file(views, None, tmp)
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
}

/// Writes a parameter set (SPEC names) atomically.
pub fn save_params(path: &Path, params: &ParamSet) -> Result<()> {
    let list: Vec<(String, OutTensor<'_>)> = params
        .iter()
        .map(|(n, _, t)| (n.to_string(), OutTensor::F32(&t.shape, &t.data)))
        .collect();
    write_safetensors(path, &list)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    with_temp_file(path, |tmp| {
        use std::io::Write;
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })
}

/// Syncs a folder's entries to disk (a no-op where folders cannot be opened, as on Windows).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::File::open(dir) {
        Ok(f) => match f.sync_all() {
            // Some file systems refuse to sync a folder: nothing more can be done there.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
            other => other,
        },
        Err(_) if cfg!(windows) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the temporary files (`.NAME.PID.tmp`, `.NAME.PID.tmp.png`) that killed runs left in
/// `dir`; those of this process are kept. Best effort.
pub fn remove_stale_temps(dir: &Path) {
    let own = format!(".{}.tmp", std::process::id());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        let temp = n.starts_with('.') && (n.ends_with(".tmp") || n.ends_with(".tmp.png"));
        if temp && !n.contains(&own) && e.path().is_file() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Runs `write` on a temporary path beside `path`, then renames it over `path`; on failure the
/// temporary file is removed and `path` is untouched.
fn with_temp_file(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Input(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    // The data reach the disk before the name does, and the rename before we return.
    let result = write(&tmp)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .and_then(|()| sync_dir(dir));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
