//! TNRD model files: safetensors with metadata `model = "tnrd"`, `stages`, `filters`, `size`,
//! `sigma`; tensors `stage{t}.filters [filters, size, size]`, `stage{t}.rbf [filters, 63]`,
//! `stage{t}.log_lambda [1]` (f32).

use super::{Model, Stage, CENTRES};
use crate::{Error, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// Serialises a model to safetensors bytes.
pub fn to_bytes(m: &Model) -> Result<Vec<u8>> {
    let mut data: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (t, st) in m.stages.iter().enumerate() {
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        data.push((
            format!("stage{t}.filters"),
            vec![m.filters, m.size, m.size],
            f32s(&st.w),
        ));
        data.push((
            format!("stage{t}.rbf"),
            vec![m.filters, CENTRES],
            f32s(&st.rbf),
        ));
        data.push((
            format!("stage{t}.log_lambda"),
            vec![1],
            vec![st.log_lambda as f32],
        ));
    }
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, shape, v)| {
            TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(v))
                .map(|t| (n.clone(), t))
                .map_err(|e| Error::Shape(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = [
        ("model", "tnrd".to_string()),
        ("stages", m.stages.len().to_string()),
        ("filters", m.filters.to_string()),
        ("size", m.size.to_string()),
        ("sigma", m.sigma.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Weights(format!("cannot serialise the TNRD model: {e}")))
}

/// Writes a model atomically (temp file, fsync, rename).
pub fn save(path: &Path, m: &Model) -> Result<()> {
    crate::params::write_atomic(path, &to_bytes(m)?)
}

/// Reads a model from a file.
pub fn load(path: &Path) -> Result<Model> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes, &path.display().to_string())
}

/// Parses a model; `name` names the source in errors.
pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Model> {
    let bad = |what: String| Error::Weights(format!("{name}: {what}"));
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    match meta.get("model").map(String::as_str) {
        Some("tnrd") => {}
        other => {
            return Err(bad(format!(
                "metadata `model` is {other:?}, not \"tnrd\" (not a TNRD model)"
            )))
        }
    }
    let num = |key: &str| -> Result<f64> {
        let v = meta
            .get(key)
            .ok_or_else(|| bad(format!("metadata `{key}` is missing")))?;
        v.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| bad(format!("metadata `{key}` = {v:?} is not a positive number")))
    };
    let int = |key: &str| -> Result<usize> {
        let v = num(key)?;
        if v.fract() != 0.0 || v > 4096.0 {
            return Err(bad(format!(
                "metadata `{key}` = {v} is not a small integer"
            )));
        }
        Ok(v as usize)
    };
    let (stages, filters, size, sigma) =
        (int("stages")?, int("filters")?, int("size")?, num("sigma")?);
    if size % 2 == 0 {
        return Err(bad(format!("metadata `size` = {size} is not odd")));
    }
    let tensor = |key: String, shape: &[usize]| -> Result<Vec<f64>> {
        let v = st
            .tensor(&key)
            .map_err(|_| bad(format!("tensor `{key}` is missing")))?;
        if v.dtype() != Dtype::F32 || v.shape() != shape {
            return Err(bad(format!(
                "tensor `{key}` is {:?} {:?}, the metadata asks for F32 {shape:?}",
                v.dtype(),
                v.shape()
            )));
        }
        let out: Vec<f64> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect();
        if out.iter().any(|x| !x.is_finite()) {
            return Err(bad(format!("tensor `{key}` holds non-finite values")));
        }
        Ok(out)
    };
    let mut out = Vec::with_capacity(stages);
    for t in 0..stages {
        out.push(Stage {
            w: tensor(format!("stage{t}.filters"), &[filters, size, size])?,
            rbf: tensor(format!("stage{t}.rbf"), &[filters, CENTRES])?,
            log_lambda: tensor(format!("stage{t}.log_lambda"), &[1])?[0],
        });
    }
    Ok(Model {
        sigma,
        filters,
        size,
        stages: out,
    })
}
