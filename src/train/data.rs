//! Data sets for training: the MNIST IDX reader, the three synthetic 2-D problems,
//! deterministic shuffling, minibatches and augmentation.

use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::Read;
use std::path::{Path, PathBuf};

/// MNIST pixel mean and standard deviation after scaling to [0, 1] (the usual constants).
pub const MNIST_MEAN: f32 = 0.1307;
pub const MNIST_STD: f32 = 0.3081;
/// IDX magic numbers (big-endian u32 at the start of each file).
pub const IDX_IMAGES_MAGIC: u32 = 2051;
pub const IDX_LABELS_MAGIC: u32 = 2049;
/// Names of the built-in synthetic sets.
pub const BUILTIN_SETS: [&str; 3] = ["twoclass", "peaks", "swissroll"];
/// Train and test sizes of the synthetic sets.
pub const SYNTHETIC_TRAIN: usize = 2000;
pub const SYNTHETIC_TEST: usize = 1000;

/// Samples stored contiguously: `x` is `[len, ...sample_dims]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub x: Vec<f32>,
    /// `[c, h, w]` for images, `[d]` for feature vectors.
    pub sample_dims: Vec<usize>,
    pub labels: Vec<usize>,
    pub classes: usize,
    /// The value of an empty (black) pixel after normalisation: what crop padding fills in.
    pub background: f32,
}

impl Dataset {
    /// Checks sizes and that every label is below `classes`.
    pub fn new(
        x: Vec<f32>,
        sample_dims: Vec<usize>,
        labels: Vec<usize>,
        classes: usize,
    ) -> Result<Self> {
        let per: usize = sample_dims.iter().product();
        if sample_dims.is_empty() || per == 0 {
            return Err(Error::Data(format!("empty sample shape {sample_dims:?}")));
        }
        if x.len() != per * labels.len() {
            return Err(Error::Data(format!(
                "{} values for {} samples of shape {sample_dims:?}",
                x.len(),
                labels.len()
            )));
        }
        if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l >= classes) {
            return Err(Error::Data(format!(
                "label {l} of sample {i} is outside the {classes} classes"
            )));
        }
        Ok(Dataset {
            x,
            sample_dims,
            labels,
            classes,
            background: 0.0,
        })
    }
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Values per sample.
    pub fn sample_len(&self) -> usize {
        self.sample_dims.iter().product()
    }
    /// Whether samples are points of the plane (decision regions can be drawn).
    pub fn is_2d(&self) -> bool {
        self.sample_dims == [2]
    }
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes];
        for &l in &self.labels {
            c[l] += 1;
        }
        c
    }
    /// The first `n` samples (or all).
    pub fn head(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset {
            x: self.x[..n * self.sample_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            ..self.clone()
        }
    }
    /// Gathers the samples `idx` into a batch tensor `[idx.len(), ...sample_dims]`.
    pub fn batch(&self, idx: &[usize]) -> Result<(HostTensor, Vec<usize>)> {
        let per = self.sample_len();
        let mut x = Vec::with_capacity(idx.len() * per);
        let mut labels = Vec::with_capacity(idx.len());
        for &i in idx {
            if i >= self.len() {
                return Err(Error::Data(format!(
                    "sample {i} out of range ({} samples)",
                    self.len()
                )));
            }
            x.extend_from_slice(&self.x[i * per..(i + 1) * per]);
            labels.push(self.labels[i]);
        }
        let mut shape = vec![idx.len()];
        shape.extend_from_slice(&self.sample_dims);
        Ok((HostTensor::new(shape, x)?, labels))
    }
}

/// A train/test pair and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    pub name: String,
    pub train: Dataset,
    pub test: Dataset,
}

/// Loads `spec`: a built-in set name (generated from `seed`) or a folder of MNIST IDX files.
pub fn load(spec: &str, seed: u64) -> Result<Split> {
    if let Some(kind) = synthetic_kind(spec) {
        return synthetic(kind, seed);
    }
    let dir = Path::new(spec);
    if !dir.is_dir() {
        return Err(Error::Data(format!(
            "`{spec}` is neither a folder of MNIST IDX files nor one of {}",
            BUILTIN_SETS.join(", ")
        )));
    }
    load_mnist_dir(dir)
}

// ---------------------------------------------------------------------------------------------
// IDX files

/// Reads a whole file, gunzipping it when it starts with the gzip magic bytes.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 5);
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::Data(format!("{}: corrupt gzip data ({e})", path.display())))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX header of `ndim` big-endian u32 sizes after `magic`; returns the sizes and the payload.
fn idx_payload<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: u32,
    ndim: usize,
) -> Result<(Vec<usize>, &'a [u8])> {
    let name = path.display();
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(Error::Data(format!(
            "{name}: truncated IDX header ({} bytes)",
            bytes.len()
        )));
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let found = word(0);
    if found != magic {
        return Err(Error::Data(format!(
            "{name}: bad IDX magic number {found} (expected {magic})"
        )));
    }
    let dims: Vec<usize> = (0..ndim).map(|k| word(4 + 4 * k) as usize).collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Data(format!("{name}: IDX sizes {dims:?} overflow")))?;
    let payload = &bytes[header..];
    if payload.len() < expected {
        return Err(Error::Data(format!(
            "{name}: truncated: sizes {dims:?} need {expected} bytes of data, found {}",
            payload.len()
        )));
    }
    if payload.len() > expected {
        return Err(Error::Data(format!(
            "{name}: {} unexpected bytes after the data of sizes {dims:?}",
            payload.len() - expected
        )));
    }
    Ok((dims, payload))
}

/// Raw u8 images of an IDX3 file: `(pixels, count, rows, cols)`.
pub fn read_idx_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    let bytes = read_maybe_gz(path)?;
    let (d, payload) = idx_payload(path, &bytes, IDX_IMAGES_MAGIC, 3)?;
    if d[1] == 0 || d[2] == 0 {
        return Err(Error::Data(format!(
            "{}: empty images {}x{}",
            path.display(),
            d[1],
            d[2]
        )));
    }
    Ok((payload.to_vec(), d[0], d[1], d[2]))
}

/// Labels of an IDX1 file, each checked to be below `classes`.
pub fn read_idx_labels(path: &Path, classes: usize) -> Result<Vec<usize>> {
    let bytes = read_maybe_gz(path)?;
    let (_, payload) = idx_payload(path, &bytes, IDX_LABELS_MAGIC, 1)?;
    if let Some((i, &l)) = payload
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(Error::Data(format!(
            "{}: label {l} of item {i} is outside the {classes} classes",
            path.display()
        )));
    }
    Ok(payload.iter().map(|&l| l as usize).collect())
}

/// Finds `stem.gz`, `stem`, or the raw name with `.idx` (a common unpacked spelling).
fn find_idx(dir: &Path, stem: &str) -> Result<PathBuf> {
    let candidates = [
        format!("{stem}.gz"),
        stem.to_string(),
        stem.replacen("-idx", ".idx", 1),
    ];
    candidates
        .iter()
        .map(|c| dir.join(c))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Data(format!(
                "{}: missing MNIST file {stem}(.gz)",
                dir.join(stem).display()
            ))
        })
}

/// Reads one MNIST split and normalises it.
fn mnist_part(dir: &Path, images: &str, labels: &str) -> Result<Dataset> {
    let ipath = find_idx(dir, images)?;
    let lpath = find_idx(dir, labels)?;
    let (pixels, n, rows, cols) = read_idx_images(&ipath)?;
    let labels = read_idx_labels(&lpath, 10)?;
    if labels.len() != n {
        return Err(Error::Data(format!(
            "{} holds {n} images but {} holds {} labels",
            ipath.display(),
            lpath.display(),
            labels.len()
        )));
    }
    let x = pixels
        .iter()
        .map(|&p| (p as f32 / 255.0 - MNIST_MEAN) / MNIST_STD)
        .collect();
    let mut ds = Dataset::new(x, vec![1, rows, cols], labels, 10)?;
    ds.background = -MNIST_MEAN / MNIST_STD;
    Ok(ds)
}

/// Loads the four MNIST IDX files (`.gz` or raw) of a folder.
pub fn load_mnist_dir(dir: &Path) -> Result<Split> {
    Ok(Split {
        name: dir.display().to_string(),
        train: mnist_part(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
        test: mnist_part(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
    })
}

/// Writes u8 images `[n, rows, cols]` as a gzip IDX3 file (atomically).
pub fn write_idx_images_gz(path: &Path, pixels: &[u8], rows: usize, cols: usize) -> Result<()> {
    let n = pixels.len() / (rows * cols).max(1);
    let mut bytes = Vec::with_capacity(16 + pixels.len());
    for v in [IDX_IMAGES_MAGIC, n as u32, rows as u32, cols as u32] {
        bytes.extend_from_slice(&v.to_be_bytes());
    }
    bytes.extend_from_slice(&pixels[..n * rows * cols]);
    write_gz(path, &bytes)
}

/// Writes u8 labels as a gzip IDX1 file (atomically).
pub fn write_idx_labels_gz(path: &Path, labels: &[u8]) -> Result<()> {
    let mut bytes = Vec::with_capacity(8 + labels.len());
    for v in [IDX_LABELS_MAGIC, labels.len() as u32] {
        bytes.extend_from_slice(&v.to_be_bytes());
    }
    bytes.extend_from_slice(labels);
    write_gz(path, &bytes)
}

fn write_gz(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).map_err(|e| Error::io(path, e))?;
    let gz = enc.finish().map_err(|e| Error::io(path, e))?;
    crate::params::write_atomic(path, &gz)
}

/// Copies the first `n_train` training and `n_test` test images of an MNIST folder into `dst`
/// (the small subset shipped in the repository for the default run).
pub fn write_mnist_subset(src: &Path, dst: &Path, n_train: usize, n_test: usize) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    for (images, labels, n) in [
        (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            n_train,
        ),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", n_test),
    ] {
        let (pixels, count, rows, cols) = read_idx_images(&find_idx(src, images)?)?;
        let lab = read_idx_labels(&find_idx(src, labels)?, 10)?;
        let n = n.min(count);
        write_idx_images_gz(
            &dst.join(format!("{images}.gz")),
            &pixels[..n * rows * cols],
            rows,
            cols,
        )?;
        let lab: Vec<u8> = lab[..n].iter().map(|&l| l as u8).collect();
        write_idx_labels_gz(&dst.join(format!("{labels}.gz")), &lab)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Synthetic 2-D sets

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synthetic {
    /// Inside/outside a disc of half the area of [-1, 1]^2.
    TwoClass,
    /// MATLAB's `peaks` on [-3, 3]^2 cut into 5 level sets of equal area.
    Peaks,
    /// Two interleaved spirals in [-1, 1]^2.
    SwissRoll,
}

impl Synthetic {
    pub fn classes(self) -> usize {
        match self {
            Synthetic::Peaks => 5,
            _ => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Synthetic::TwoClass => "twoclass",
            Synthetic::Peaks => "peaks",
            Synthetic::SwissRoll => "swissroll",
        }
    }
    /// The plotting window.
    pub fn bounds(self) -> [f32; 4] {
        match self {
            Synthetic::Peaks => [-3.0, 3.0, -3.0, 3.0],
            _ => [-1.2, 1.2, -1.2, 1.2],
        }
    }
}

/// MATLAB's `peaks(x, y)`.
pub fn peaks_fn(x: f64, y: f64) -> f64 {
    3.0 * (1.0 - x).powi(2) * (-x * x - (y + 1.0).powi(2)).exp()
        - 10.0 * (x / 5.0 - x.powi(3) - y.powi(5)) * (-x * x - y * y).exp()
        - (-(x + 1.0).powi(2) - y * y).exp() / 3.0
}

/// Level-set thresholds of `peaks` on [-3, 3]^2 splitting the square into 5 equal areas
/// (quantiles on a fine grid, so the classes are balanced).
fn peaks_thresholds() -> [f64; 4] {
    let m = 301;
    let mut z: Vec<f64> = Vec::with_capacity(m * m);
    for i in 0..m {
        for j in 0..m {
            let x = -3.0 + 6.0 * i as f64 / (m - 1) as f64;
            let y = -3.0 + 6.0 * j as f64 / (m - 1) as f64;
            z.push(peaks_fn(x, y));
        }
    }
    z.sort_by(f64::total_cmp);
    let q = |p: f64| z[((z.len() as f64 * p) as usize).min(z.len() - 1)];
    [q(0.2), q(0.4), q(0.6), q(0.8)]
}

fn draw_set(kind: Synthetic, n: usize, rng: &mut ChaCha8Rng) -> Result<Dataset> {
    let mut x = Vec::with_capacity(2 * n);
    let mut labels = Vec::with_capacity(n);
    let thresholds = if kind == Synthetic::Peaks {
        peaks_thresholds()
    } else {
        [0.0; 4]
    };
    for i in 0..n {
        let (p, l) = match kind {
            Synthetic::TwoClass => {
                let p = [
                    rng.random_range(-1.0..1.0f64),
                    rng.random_range(-1.0..1.0f64),
                ];
                let r2 = p[0] * p[0] + p[1] * p[1];
                (p, usize::from(r2 < 2.0 / std::f64::consts::PI))
            }
            Synthetic::Peaks => {
                let p = [
                    rng.random_range(-3.0..3.0f64),
                    rng.random_range(-3.0..3.0f64),
                ];
                let z = peaks_fn(p[0], p[1]);
                (p, thresholds.iter().filter(|&&t| z > t).count())
            }
            Synthetic::SwissRoll => {
                // Alternate classes so both spirals hold n/2 points.
                let l = i % 2;
                let t: f64 = rng.random_range(0.0..1.0f64).sqrt();
                let theta = 3.0 * std::f64::consts::PI * t + std::f64::consts::PI * l as f64;
                let r = 0.1 + 0.9 * t;
                let noise = 0.02;
                let p = [
                    r * theta.cos() + noise * rng.random_range(-1.0..1.0f64),
                    r * theta.sin() + noise * rng.random_range(-1.0..1.0f64),
                ];
                (p, l)
            }
        };
        x.extend([p[0] as f32, p[1] as f32]);
        labels.push(l);
    }
    Dataset::new(x, vec![2], labels, kind.classes())
}

/// A synthetic set from `seed`; train and test are drawn from separate ChaCha streams.
pub fn synthetic(kind: Synthetic, seed: u64) -> Result<Split> {
    let mut r_train = ChaCha8Rng::seed_from_u64(seed);
    r_train.set_stream(1);
    let mut r_test = ChaCha8Rng::seed_from_u64(seed);
    r_test.set_stream(2);
    Ok(Split {
        name: kind.name().to_string(),
        train: draw_set(kind, SYNTHETIC_TRAIN, &mut r_train)?,
        test: draw_set(kind, SYNTHETIC_TEST, &mut r_test)?,
    })
}

/// The synthetic kind of a data spec, if it names one.
pub fn synthetic_kind(spec: &str) -> Option<Synthetic> {
    match spec {
        "twoclass" => Some(Synthetic::TwoClass),
        "peaks" => Some(Synthetic::Peaks),
        "swissroll" => Some(Synthetic::SwissRoll),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Shuffling, batches, augmentation

/// A random permutation of `0..n` (Fisher-Yates driven by `rng`).
pub fn shuffled(n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        idx.swap(i, j);
    }
    idx
}

/// Minibatches of `order`; a trailing batch of a single sample is dropped (batch norm needs two).
pub fn batches(order: &[usize], batch: usize) -> Vec<&[usize]> {
    order
        .chunks(batch.max(1))
        .filter(|c| c.len() >= 2 || order.len() < 2)
        .collect()
}

/// Training-time augmentation of image batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Random crop after zero padding by this many pixels (0: off).
    pub crop_pad: usize,
    /// Random horizontal flips (off for digits: a flipped digit is another symbol).
    pub flip: bool,
}

impl Augment {
    pub fn is_off(&self) -> bool {
        self.crop_pad == 0 && !self.flip
    }
    /// Augments a batch `[n, c, h, w]` in place; feature vectors are left alone.
    pub fn apply(&self, x: &mut HostTensor, background: f32, rng: &mut ChaCha8Rng) {
        if self.is_off() || x.shape.len() != 4 {
            return;
        }
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let per = c * h * w;
        let pad = self.crop_pad as i64;
        let mut tmp = vec![0f32; per];
        for s in 0..n {
            let (dy, dx) = if pad > 0 {
                (rng.random_range(-pad..=pad), rng.random_range(-pad..=pad))
            } else {
                (0, 0)
            };
            let flip = self.flip && rng.random_bool(0.5);
            let img = &mut x.data[s * per..(s + 1) * per];
            for ch in 0..c {
                for i in 0..h {
                    for j in 0..w {
                        let si = i as i64 + dy;
                        let jj = if flip { w - 1 - j } else { j };
                        let sj = jj as i64 + dx;
                        tmp[(ch * h + i) * w + j] =
                            if si < 0 || sj < 0 || si >= h as i64 || sj >= w as i64 {
                                background
                            } else {
                                img[(ch * h + si as usize) * w + sj as usize]
                            };
                    }
                }
            }
            img.copy_from_slice(&tmp);
        }
    }
}

/// The state of a ChaCha8 generator, enough to rebuild it exactly (checkpoints).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RngState {
    /// The 32-byte key, hex.
    pub seed: String,
    /// Stream and word position as decimal strings (u64 / u128 do not fit JSON numbers).
    pub stream: String,
    pub word_pos: String,
}

impl RngState {
    pub fn of(rng: &ChaCha8Rng) -> Self {
        RngState {
            seed: rng.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
            stream: rng.get_stream().to_string(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }
    pub fn restore(&self) -> Result<ChaCha8Rng> {
        let bad = || Error::Data(format!("corrupt RNG state in checkpoint: {self:?}"));
        if self.seed.len() != 64 || !self.seed.is_ascii() {
            return Err(bad());
        }
        let mut seed = [0u8; 32];
        for (k, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&self.seed[2 * k..2 * k + 2], 16).map_err(|_| bad())?;
        }
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream.parse().map_err(|_| bad())?);
        rng.set_word_pos(self.word_pos.parse().map_err(|_| bad())?);
        Ok(rng)
    }
}
