//! Device selection: `--device auto|cpu|cuda` resolved to a concrete backend, and a macro that
//! runs one generic body on whichever backend was chosen.

use crate::backend::cuda::Cuda;
use crate::backend::{DeviceChoice, Precision};
use crate::error::{Error, Result};
use crate::network::Layout;
use crate::schedule::plan::{plan_step, plan_step_on, Planner};
use crate::schedule::MemoryPolicy;

/// A resolved backend.
pub enum Device {
    Cpu(crate::backend::cpu::Cpu),
    Cuda(Cuda),
}

impl Device {
    /// Resolves the user's choice. `auto` falls back to the CPU when no usable GPU is present;
    /// `cuda` without one is an error that says why.
    pub fn select(choice: DeviceChoice) -> Result<Device> {
        match choice {
            DeviceChoice::Cpu => Ok(Device::Cpu(crate::backend::cpu::Cpu::new())),
            DeviceChoice::Cuda => Ok(Device::Cuda(Cuda::try_new()?)),
            DeviceChoice::Auto => Ok(match Cuda::try_new() {
                Ok(c) => Device::Cuda(c),
                Err(e) => {
                    note_cpu_fallback(&e);
                    Device::Cpu(crate::backend::cpu::Cpu::new())
                }
            }),
        }
    }

    /// As [`Device::select`], with the convolution arithmetic; `tf32` and `f16` need CUDA,
    /// `bf16` runs on CUDA or on a CPU with `avx512_bf16`.
    pub fn select_with(choice: DeviceChoice, precision: Precision) -> Result<Device> {
        if precision == Precision::F32 {
            return Self::select(choice);
        }
        match choice {
            DeviceChoice::Cpu => Ok(Device::Cpu(crate::backend::cpu::Cpu::with_precision(
                precision,
            )?)),
            DeviceChoice::Cuda => Ok(Device::Cuda(Cuda::try_new_with(precision)?)),
            // bf16 falls back to the CPU as f32 does; tf32 and f16 have no CPU path.
            DeviceChoice::Auto => match Cuda::try_new_with(precision) {
                Ok(c) => Ok(Device::Cuda(c)),
                Err(e) if precision == Precision::Bf16 => {
                    note_cpu_fallback(&e);
                    Ok(Device::Cpu(crate::backend::cpu::Cpu::with_precision(
                        precision,
                    )?))
                }
                Err(e) => Err(e),
            },
        }
    }

    /// On CUDA, checks that a training step of `layout` on inputs shaped `shape` under
    /// `schedule` fits the device and reserves its planned peak ([`Cuda::reserve`]); nothing on
    /// the CPU.
    /// On the CPU, checks the planned peak (workspaces included) against the memory the
    /// machine has available, plus `host_copies` host copies of the parameters.
    pub fn reserve_for(
        &self,
        layout: &Layout,
        shape: &[usize],
        memory: MemoryPolicy,
    ) -> Result<()> {
        self.reserve_with_host(layout, shape, memory, 0)
    }

    /// As [`Device::reserve_for`], counting `host_copies` parameter-sized host buffers that
    /// live beside the run (the host parameters of a training loop, their gradients).
    pub fn reserve_with_host(
        &self,
        layout: &Layout,
        shape: &[usize],
        memory: MemoryPolicy,
        host_copies: usize,
    ) -> Result<()> {
        match self {
            Device::Cpu(b) => {
                let plan = plan_step_on(Planner::for_device(b), layout, shape, memory)?;
                let host = layout.param_bytes().saturating_mul(host_copies);
                crate::limits::check_host_memory(
                    plan.peak_bytes.saturating_add(host),
                    &format!(
                        "a CPU training step at batch {} (planned peak {} bytes, parameters and gradients included)",
                        shape.first().copied().unwrap_or(0),
                        plan.peak_bytes
                    ),
                    "shrink it with a smaller --batch, --policy reversible or --storage bf16",
                )
            }
            Device::Cuda(c) => c.reserve(plan_step(layout, shape, memory)?.peak_bytes),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Device::Cpu(_) => "cpu",
            Device::Cuda(_) => "cuda",
        }
    }
}

/// Runs `$body` with `$b` bound to the selected backend (by value).
#[macro_export]
macro_rules! with_device {
    ($dev:expr, |$b:ident| $body:expr) => {
        match $dev {
            $crate::device::Device::Cpu($b) => $body,
            $crate::device::Device::Cuda($b) => $body,
        }
    };
}

/// Says once per process, on stderr, that `--device auto` runs on the CPU and why (a missing
/// driver, no device, or a kernel that failed to compile).
fn note_cpu_fallback(why: &Error) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| eprintln!("pdenet: note: --device auto runs on the CPU ({why})"));
}
