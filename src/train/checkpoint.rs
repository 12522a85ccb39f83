//! Checkpoints in `DIR/checkpoint/`, written so that a crash never leaves a half checkpoint as
//! the latest one.
//!
//! Layout: `epoch-NNNN/` folders holding `model.safetensors`, `optimizer.safetensors` and
//! `state.json`, and a file `LATEST` naming the current folder. A new folder is written
//! completely under a temporary name, renamed, and only then is `LATEST` replaced (atomically);
//! older folders are removed afterwards.

use super::data::RngState;
use super::log::LogRow;
use super::optim::{OptimScalars, Optimizer};
use crate::error::{Error, Result};
use crate::params::ParamSet;
use crate::params::{read_safetensors, save_params, write_atomic, write_safetensors, OutTensor};
use crate::tensor::HostTensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const CHECKPOINT_DIR: &str = "checkpoint";
const LATEST: &str = "LATEST";
const STATE_VERSION: u32 = 1;

/// Everything of a checkpoint except the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    pub version: u32,
    /// Number of completed epochs.
    pub epoch: usize,
    /// The shuffling/augmentation generator after `epoch` epochs.
    pub rng: RngState,
    pub optimizer: OptimScalars,
    /// The network configuration (SPEC section 4) the weights belong to.
    pub config: serde_json::Value,
    /// Run settings that must not change on resume (seed, batch, data, schedule, ...).
    pub run: serde_json::Value,
    /// The log rows of the completed epochs.
    pub history: Vec<LogRow>,
}

/// A loaded checkpoint.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub state: CheckpointState,
    pub params: HashMap<String, HostTensor>,
    pub optimizer: HashMap<String, HostTensor>,
    /// The folder it was read from (for messages).
    pub dir: PathBuf,
}

impl Checkpoint {
    /// The optimizer, checked against the parameters it will update.
    pub fn optimizer_for(&self, params: &ParamSet) -> Result<Optimizer> {
        Optimizer::restore(&self.state.optimizer, &self.optimizer, params).map_err(|e| match e {
            Error::Weights(m) => Error::Weights(format!(
                "{}: {m}",
                self.dir.join("optimizer.safetensors").display()
            )),
            other => other,
        })
    }
}

fn folder_name(epoch: usize) -> String {
    format!("epoch-{epoch:04}")
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Writes a checkpoint of `epoch` completed epochs under `out/checkpoint/`.
pub fn save(
    out: &Path,
    params: &ParamSet,
    optimizer: &Optimizer,
    state: &CheckpointState,
) -> Result<()> {
    let root = out.join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    let name = folder_name(state.epoch);
    let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let written = (|| {
        save_params(&tmp.join("model.safetensors"), params)?;
        let opt = optimizer.state_tensors(params);
        let list: Vec<(String, OutTensor<'_>)> = opt
            .iter()
            .map(|(n, t)| (n.clone(), OutTensor::F32(&t.shape, &t.data)))
            .collect();
        write_safetensors(&tmp.join("optimizer.safetensors"), &list)?;
        let json = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::Other(format!("serialising checkpoint state: {e}")))?;
        write_atomic(&tmp.join("state.json"), &json)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Every file is synced by its writer; the folder's entries now, before it becomes visible.
    sync_dir(&tmp).map_err(io(&tmp))?;
    let dst = root.join(&name);
    // A folder of the same epoch can only be left over from a run that died before pointing
    // `LATEST` at it, or be the latest itself (re-saving the same epoch); move it aside first.
    let aside = root.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = dst.exists();
    if had_old {
        std::fs::rename(&dst, &aside).map_err(io(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
    sync_dir(&root).map_err(io(&root))?;
    // `LATEST` moves only once the new folder is durable, and the previous checkpoint is
    // removed only once `LATEST` is: a power loss at any point leaves one complete checkpoint.
    write_atomic(&root.join(LATEST), name.as_bytes())?;
    sync_dir(&root).map_err(io(&root))?;
    // Best-effort cleanup: everything but the latest folder.
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n != name && n != LATEST && e.path().is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

/// Makes a folder's entries (its renames) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    crate::params::sync_dir(dir)
}

/// The folder of the latest checkpoint, or `None` when `out` holds none.
pub fn latest(out: &Path) -> Result<Option<PathBuf>> {
    let root = out.join(CHECKPOINT_DIR);
    let pointer = root.join(LATEST);
    if !pointer.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer).map_err(io(&pointer))?;
    let name = name.trim();
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Error::Data(format!(
            "{}: corrupt checkpoint pointer `{name}`",
            pointer.display()
        )));
    }
    let dir = root.join(name);
    if !dir.is_dir() {
        return Err(Error::Data(format!(
            "{}: names a missing checkpoint folder {}",
            pointer.display(),
            dir.display()
        )));
    }
    Ok(Some(dir))
}

/// Loads the latest checkpoint of `out`, or `None` when there is none.
pub fn load(out: &Path) -> Result<Option<Checkpoint>> {
    let Some(dir) = latest(out)? else {
        return Ok(None);
    };
    let state_path = dir.join("state.json");
    let bytes = std::fs::read(&state_path).map_err(io(&state_path))?;
    let state: CheckpointState = serde_json::from_slice(&bytes).map_err(|e| {
        Error::Data(format!(
            "{}: corrupt checkpoint state ({e})",
            state_path.display()
        ))
    })?;
    if state.version != STATE_VERSION {
        return Err(Error::Data(format!(
            "{}: checkpoint version {} (this pdenet reads {STATE_VERSION})",
            state_path.display(),
            state.version
        )));
    }
    Ok(Some(Checkpoint {
        params: read_safetensors(&dir.join("model.safetensors"))?,
        optimizer: read_safetensors(&dir.join("optimizer.safetensors"))?,
        state,
        dir,
    }))
}

/// The state version written by this build.
pub fn state_version() -> u32 {
    STATE_VERSION
}
