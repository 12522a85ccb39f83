//! The CUDA backend: hand-written kernels (`kernels/*.cu`) driven through cudarc.
//!
//! Kernels arrive as PTX compiled by `nvcc` at build time, or as sources compiled by NVRTC at
//! start-up when the build machine had no `nvcc` (see `build.rs`). [`Cuda::try_new`] returns
//! [`Error::CudaUnavailable`] when there is no driver, no device or the kernels do not load;
//! nothing here panics for lack of CUDA. All work goes to one stream, so every op is ordered
//! after the previous one and a buffer may be dropped as soon as the host is done with it.
//!
//! Reductions (weight gradients, channel sums, norm statistics, the loss) never use float
//! atomics: partial results go to a fixed layout and a second pass adds them in a fixed order,
//! so every op is bit-for-bit repeatable.

mod kernels;
mod ops;

pub use ops::PackedBuf;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cudarc::driver::sys::CUmemPool_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, ValidAsZeroBits,
};

use crate::backend::Precision;
use crate::error::{Error, Result};
use kernels::{Kernel, TensorCoreKernel};

mod embedded {
    /// How the kernels were embedded by `build.rs`.
    #[allow(dead_code)]
    pub enum KernelFormat {
        Ptx,
        Source,
    }
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Maps a driver / compiler error to [`Error::Cuda`].
pub(crate) fn cu<T, E: std::fmt::Debug>(r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| Error::Cuda(format!("{e:?}")))
}

/// Bytes currently allocated through the backend and their high-water mark.
#[derive(Default, Debug)]
struct MemCounter {
    current: AtomicUsize,
    peak: AtomicUsize,
}

impl MemCounter {
    fn add(&self, bytes: usize) {
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
    fn sub(&self, bytes: usize) {
        self.current.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A device buffer of `len` values. It wraps a [`CudaSlice`] so that dropping it updates the
/// backend's memory accounting ([`Cuda::peak_bytes`]). Empty buffers hold one unused element
/// (the driver does not allocate zero bytes).
pub struct DeviceBuf<T: DeviceRepr> {
    slice: CudaSlice<T>,
    len: usize,
    mem: Arc<MemCounter>,
}

impl<T: DeviceRepr> DeviceBuf<T> {
    /// The underlying device allocation (at least one element long).
    pub fn slice(&self) -> &CudaSlice<T> {
        &self.slice
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: DeviceRepr> Drop for DeviceBuf<T> {
    fn drop(&mut self) {
        self.mem.sub(self.slice.len() * std::mem::size_of::<T>());
    }
}

/// Whether a run planned at `needed` bytes fits the `available` bytes of a device (free memory
/// plus what its pool already holds), or the error that says what to change.
pub(crate) fn fits_on_device(
    needed: usize,
    available: usize,
    total: usize,
    device: &str,
) -> Result<()> {
    if needed <= available {
        return Ok(());
    }
    let gb = |b: usize| b as f64 / 1e9;
    Err(Error::Input(format!(
        "this run is planned at {:.2} GB of device memory, but {device} has {:.2} GB available \
         (of {:.2} GB): lower --batch, or keep less with --policy reversible or --storage bf16",
        gb(needed),
        gb(available),
        gb(total)
    )))
}

/// The CUDA device, its stream and its loaded kernels.
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// [`Kernel`]s by `k as usize`.
    kernels: Vec<CudaFunction>,
    /// [`TensorCoreKernel`] variants by [`TensorCoreKernel::variant_index`].
    tensor_core: Vec<CudaFunction>,
    mem: Arc<MemCounter>,
    device_name: String,
    precision: Precision,
    pipelined: bool,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("device", &self.device_name)
            .finish()
    }
}

impl Cuda {
    /// Opens device 0 and loads the kernels, or says why it cannot (f32 convolutions).
    pub fn try_new() -> Result<Cuda> {
        Self::try_new_with(Precision::F32)
    }

    /// As [`Cuda::try_new`], with the convolution GEMMs in `precision`.
    pub fn try_new_with(precision: Precision) -> Result<Cuda> {
        // cudarc panics when a library or symbol is missing: check first, and catch the rest.
        // SAFETY: only probes whether the shared library can be opened.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::CudaUnavailable(
                "the CUDA driver library (libcuda) was not found".into(),
            ));
        }
        match std::panic::catch_unwind(|| Self::open(precision)) {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(Error::CudaUnavailable(format!(
                    "CUDA initialisation failed: {msg}"
                )))
            }
        }
    }

    fn open(precision: Precision) -> Result<Cuda> {
        let unavailable =
            |what: &str, e: &dyn std::fmt::Debug| Error::CudaUnavailable(format!("{what}: {e:?}"));
        let count = CudaContext::device_count().map_err(|e| unavailable("no CUDA driver", &e))?;
        if count < 1 {
            return Err(Error::CudaUnavailable("no CUDA device".into()));
        }
        let ctx = CudaContext::new(0).map_err(|e| unavailable("cannot open device 0", &e))?;
        // One stream: ordering is implicit, per-buffer events would only cost time.
        // SAFETY: called before any buffer exists, and all work stays on one stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let device_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| unavailable("cannot query the device", &e))?;
        // Every module that the tables name, then every entry point of both tables: a table
        // entry the PTX lacks fails here, at start-up.
        let mut modules = HashMap::new();
        let names = Kernel::ALL.iter().map(|k| k.module());
        for module in names.chain(TensorCoreKernel::ALL.iter().map(|k| k.module())) {
            if modules.contains_key(module) {
                continue;
            }
            let text = embedded::MODULES
                .iter()
                .find(|(m, _)| *m == module)
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    Error::CudaUnavailable(format!("kernel module `{module}` was not embedded"))
                })?;
            let ptx = match embedded::FORMAT {
                embedded::KernelFormat::Ptx => cudarc::nvrtc::Ptx::from_src(text),
                embedded::KernelFormat::Source => compile_nvrtc(module, text, major, minor)?,
            };
            let m = ctx
                .load_module(ptx)
                .map_err(|e| unavailable(&format!("cannot load kernel module `{module}`"), &e))?;
            modules.insert(module, m);
        }
        let load = |module: &str, name: &str| -> Result<CudaFunction> {
            let m = modules.get(module).ok_or_else(|| {
                Error::CudaUnavailable(format!("kernel module `{module}` was not loaded"))
            })?;
            m.load_function(name)
                .map_err(|e| unavailable(&format!("kernel `{name}` missing"), &e))
        };
        let kernels = Kernel::ALL
            .iter()
            .map(|k| load(k.module(), k.name()))
            .collect::<Result<Vec<_>>>()?;
        let mut tensor_core = Vec::new();
        for &k in TensorCoreKernel::ALL {
            for p in Precision::ALL {
                for pipelined in [true, false] {
                    debug_assert_eq!(k.variant_index(p, pipelined), tensor_core.len());
                    tensor_core.push(load(k.module(), &k.variant_name(p, pipelined))?);
                }
            }
        }
        Ok(Cuda {
            ctx,
            stream,
            kernels,
            tensor_core,
            mem: Arc::new(MemCounter::default()),
            device_name,
            precision,
            // An A/B switch for measurements: PDENET_CONV_PIPELINE=0 selects the unpipelined tiles.
            pipelined: std::env::var("PDENET_CONV_PIPELINE").map_or(true, |v| v != "0"),
        })
    }

    /// The arithmetic of the convolution GEMMs.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether the convolution tiles are the software-pipelined ones (the default).
    pub fn pipelined(&self) -> bool {
        self.pipelined
    }

    /// This backend with the pipelined (`true`) or unpipelined convolution tiles, for A/B runs.
    pub fn with_pipelined(mut self, on: bool) -> Self {
        self.pipelined = on;
        self
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> &str {
        &self.device_name
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The stream every op runs on (for timing with events).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        cu(self.stream.synchronize())
    }
    /// Bytes currently held in buffers of this backend.
    pub fn current_bytes(&self) -> usize {
        self.mem.current.load(Ordering::Relaxed)
    }
    /// High-water mark of [`Cuda::current_bytes`] since creation or [`Cuda::reset_peak`].
    pub fn peak_bytes(&self) -> usize {
        self.mem.peak.load(Ordering::Relaxed)
    }
    pub fn reset_peak(&self) {
        self.mem
            .peak
            .store(self.mem.current.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// The driver's own high-water mark: bytes allocated from the device's default memory pool
    /// (cudarc allocates with `cuMemAllocAsync` from it) since creation or
    /// [`Cuda::reset_driver_peak`], after the stream drains. `None` where the device has no pool
    /// or the driver does not answer; [`Cuda::peak_bytes`] is the backend's own count.
    pub fn driver_peak_bytes(&self) -> Option<usize> {
        self.synchronize().ok()?;
        self.pool_attribute(CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
    }

    /// Prepares the device for a run whose memory plan peaks at `bytes`: a clear error when the
    /// device cannot hold it (instead of an out-of-memory failure mid-step), then the default
    /// pool is told to keep that much (its release threshold) and filled once, so that every
    /// step reuses the same memory instead of returning it to the driver at each synchronisation.
    pub fn reserve(&self, bytes: usize) -> Result<()> {
        cu(self.ctx.bind_to_thread())?;
        let (free, total) = cu(cudarc::driver::result::mem_get_info())?;
        let held = self
            .pool_attribute(CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)
            .unwrap_or(0);
        fits_on_device(bytes, free + held, total, &self.device_name)?;
        if let Some(pool) = self.default_pool() {
            let mut threshold = bytes as u64;
            // SAFETY: `pool` is this device's default pool; the driver reads a u64.
            unsafe {
                cudarc::driver::sys::cuMemPoolSetAttribute(
                    pool,
                    CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    (&mut threshold as *mut u64).cast(),
                )
            }
            .result()
            .map_err(|e| Error::Cuda(format!("setting the memory pool's threshold: {e:?}")))?;
            drop(self.alloc::<u8>(bytes)?);
        }
        self.synchronize()
    }

    /// A u64 attribute of the device's default memory pool (`None` without one).
    fn pool_attribute(&self, attr: CUmemPool_attribute) -> Option<usize> {
        let pool = self.default_pool()?;
        let mut v: u64 = 0;
        // SAFETY: `pool` is the device's default pool; the attribute is a u64 written by the driver.
        unsafe {
            cudarc::driver::sys::cuMemPoolGetAttribute(pool, attr, (&mut v as *mut u64).cast())
        }
        .result()
        .ok()?;
        usize::try_from(v).ok()
    }

    /// Resets [`Cuda::driver_peak_bytes`] to the bytes allocated now (0 is the only value the
    /// driver accepts, and it means "current").
    pub fn reset_driver_peak(&self) {
        let Some(pool) = self.default_pool() else {
            return;
        };
        if self.synchronize().is_err() {
            return;
        }
        let mut zero: u64 = 0;
        // SAFETY: as in driver_peak_bytes; the driver reads a u64.
        let _ = unsafe {
            cudarc::driver::sys::cuMemPoolSetAttribute(
                pool,
                CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut zero as *mut u64).cast(),
            )
        };
    }

    fn default_pool(&self) -> Option<cudarc::driver::sys::CUmemoryPool> {
        if !self.ctx.has_async_alloc() {
            return None;
        }
        self.ctx.bind_to_thread().ok()?;
        let mut pool = std::ptr::null_mut();
        // SAFETY: writes one pool handle for this context's device.
        unsafe { cudarc::driver::sys::cuDeviceGetDefaultMemPool(&mut pool, self.ctx.cu_device()) }
            .result()
            .ok()?;
        Some(pool)
    }

    /// The loaded function of a plain kernel.
    pub(crate) fn kernel(&self, k: Kernel) -> &CudaFunction {
        &self.kernels[k as usize]
    }

    /// The loaded variant of a tensor-core kernel in this backend's convolution precision, the
    /// unpipelined tile where `PDENET_CONV_PIPELINE=0` asks for it.
    pub(crate) fn tensor_core_kernel(&self, k: TensorCoreKernel) -> &CudaFunction {
        &self.tensor_core[k.variant_index(self.precision, self.pipelined)]
    }

    /// An uninitialised buffer (every kernel writes all of its output).
    pub(crate) fn alloc<T: DeviceRepr>(&self, len: usize) -> Result<DeviceBuf<T>> {
        // SAFETY: the contents are written by a kernel or a copy before they are read.
        let slice = cu(unsafe { self.stream.alloc::<T>(len.max(1)) })?;
        self.track(slice, len)
    }
    pub(crate) fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<DeviceBuf<T>> {
        let slice = cu(self.stream.alloc_zeros::<T>(len.max(1)))?;
        self.track(slice, len)
    }
    pub(crate) fn upload_slice<T: DeviceRepr + Default + Clone>(
        &self,
        data: &[T],
    ) -> Result<DeviceBuf<T>> {
        let slice = if data.is_empty() {
            cu(self.stream.clone_htod(&[T::default()][..]))?
        } else {
            cu(self.stream.clone_htod(data))?
        };
        self.track(slice, data.len())
    }
    pub(crate) fn download_slice<T: DeviceRepr + Default + Clone>(
        &self,
        buf: &DeviceBuf<T>,
    ) -> Result<Vec<T>> {
        let mut v = cu(self.stream.clone_dtoh(&buf.slice))?;
        cu(self.stream.synchronize())?;
        v.truncate(buf.len);
        Ok(v)
    }
    fn track<T: DeviceRepr>(&self, slice: CudaSlice<T>, len: usize) -> Result<DeviceBuf<T>> {
        self.mem.add(slice.len() * std::mem::size_of::<T>());
        Ok(DeviceBuf {
            slice,
            len,
            mem: self.mem.clone(),
        })
    }
}

fn compile_nvrtc(module: &str, src: &str, major: i32, minor: i32) -> Result<cudarc::nvrtc::Ptx> {
    compile_nvrtc_with(module, src, major, minor, Vec::new())
}

fn compile_nvrtc_with(
    module: &str,
    src: &str,
    major: i32,
    minor: i32,
    include_paths: Vec<String>,
) -> Result<cudarc::nvrtc::Ptx> {
    if !nvrtc_present() {
        return Err(Error::CudaUnavailable(
            "this build embeds CUDA sources (no nvcc at build time) and NVRTC (libnvrtc) was not \
             found at run time; rebuild with nvcc on PATH or install NVRTC"
                .into(),
        ));
    }
    let arch: &'static str = match (major, minor) {
        (9, _) => "compute_90",
        (8, 9) => "compute_89",
        (8, 6) => "compute_86",
        _ => "compute_80",
    };
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        options: vec!["-std=c++17".into()],
        include_paths,
        ..Default::default()
    };
    // A compile failure is a defect of the kernels, not a missing GPU: `Error::Cuda`, which
    // `--device auto` reports when it falls back and the NVRTC test fails on.
    cudarc::nvrtc::compile_ptx_with_opts(src, opts)
        .map_err(|e| Error::Cuda(format!("NVRTC failed on kernel module `{module}`: {e:?}")))
}

/// Whether the NVRTC shared library can be opened (a probe that never panics).
pub fn nvrtc_present() -> bool {
    // SAFETY: only probes whether the shared library can be opened.
    std::panic::catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false)
}

/// Compiles every `*.cu` of `dir` (the repository's `kernels/`) with NVRTC for compute_80,
/// resolving includes in `dir` and the generated `pdenet_constants.cuh` (written to a temporary
/// folder): the check of [`check_nvrtc_sources`] for builds that embed PTX.
pub fn check_nvrtc_dir(dir: &std::path::Path) -> Result<usize> {
    let generated = std::env::temp_dir().join(format!("pdenet-constants-{}", std::process::id()));
    std::fs::create_dir_all(&generated).map_err(|e| Error::io(&generated, e))?;
    let header = generated.join("pdenet_constants.cuh");
    std::fs::write(&header, crate::backend::kernel_constants::cuda_header())
        .map_err(|e| Error::io(&header, e))?;
    let compiled = compile_nvrtc_dir(dir, &generated);
    let _ = std::fs::remove_dir_all(&generated);
    compiled
}

fn compile_nvrtc_dir(dir: &std::path::Path, generated: &std::path::Path) -> Result<usize> {
    let mut n = 0;
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    files.sort();
    for f in files {
        let src = std::fs::read_to_string(&f).map_err(|e| Error::io(&f, e))?;
        let module = f.file_stem().map(|s| s.to_string_lossy().to_string());
        let inc = vec![
            dir.to_string_lossy().to_string(),
            generated.to_string_lossy().to_string(),
        ];
        compile_nvrtc_with(module.as_deref().unwrap_or("?"), &src, 8, 0, inc)?;
        n += 1;
    }
    Ok(n)
}

/// Whether this build embeds kernel sources (compiled by NVRTC at run time) rather than PTX.
pub fn embeds_sources() -> bool {
    matches!(embedded::FORMAT, embedded::KernelFormat::Source)
}

/// Reports a skipped GPU test where `cargo test` shows it without `--nocapture` (written to the
/// process's stderr, which the test harness does not capture), naming the test (its thread).
/// With `PDENET_REQUIRE_CUDA=1` (a GPU runner) a skip is a failure instead.
pub fn report_skip(reason: impl std::fmt::Display) {
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    if std::env::var("PDENET_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
        panic!("PDENET_REQUIRE_CUDA=1 but {test} would be skipped: {reason}");
    }
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
}

/// One 256-thread block per 256 elements, capped (the kernels loop over the rest).
pub(crate) fn grid_1d(len: usize) -> LaunchConfig {
    let blocks = len.div_ceil(256).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A size as the kernels' `int`, or a shape error when it does not fit.
pub(crate) fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::Shape(format!(
            "{what} = {v} exceeds the 32-bit index range of the CUDA kernels"
        ))
    })
}

/// Compiles every embedded kernel source with NVRTC for compute_80 (a build-time check that the
/// NVRTC fallback works; needs libnvrtc, not a GPU). Returns how many modules were compiled:
/// zero when this build embeds PTX instead.
#[doc(hidden)]
pub fn check_nvrtc_sources() -> Result<usize> {
    match embedded::FORMAT {
        embedded::KernelFormat::Ptx => Ok(0),
        embedded::KernelFormat::Source => {
            for (module, src) in embedded::MODULES {
                compile_nvrtc(module, src, 8, 0)?;
            }
            Ok(embedded::MODULES.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fits_on_device;
    use crate::backend::kernel_constants::{cuda_header, KERNEL_CONSTANTS};

    /// The kernels and this backend take the shared constants from Rust: no kernel file or
    /// CUDA-backend source defines one of them again, and the header is the one build.rs wrote.
    #[test]
    fn shared_constants_are_defined_only_in_rust() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<_> = ["kernels", "src/backend/cuda"]
            .iter()
            .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap().flatten())
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "cu" || x == "cuh" || x == "rs")
            })
            .collect();
        files.sort();
        assert!(
            files.len() > 10,
            "kernels not found under {}",
            root.display()
        );
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            for line in text.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                let defined = match words.as_slice() {
                    ["#define", name, ..] => Some(*name),
                    ["const", name, ..] | ["pub", "const", name, ..] => {
                        Some(name.trim_end_matches(':'))
                    }
                    _ => None,
                };
                if let Some(name) = defined {
                    assert!(
                        KERNEL_CONSTANTS.iter().all(|(n, _)| *n != name),
                        "{} defines {name}, which src/backend/kernel_constants.rs owns: `{line}`",
                        f.display()
                    );
                }
            }
        }
        let common = std::fs::read_to_string(root.join("kernels/common.cuh")).unwrap();
        assert!(common.contains("#include \"pdenet_constants.cuh\""));
        let built = include_str!(concat!(env!("OUT_DIR"), "/pdenet_constants.cuh"));
        assert_eq!(built, cuda_header());
    }

    #[test]
    fn a_plan_larger_than_the_device_is_a_clear_error() {
        assert!(fits_on_device(10, 10, 80, "GPU").is_ok());
        let e = fits_on_device(
            85_300_000_000,
            79_100_000_000,
            80_000_000_000,
            "NVIDIA H100",
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "85.30 GB",
            "NVIDIA H100 has 79.10 GB available",
            "--batch",
            "--storage",
        ] {
            assert!(e.contains(needle), "{e}");
        }
    }
}
