//! Device selection: `--device auto|cpu|cuda` resolved to a concrete backend, and a macro that
//! runs one generic body on whichever backend was chosen.

use crate::backend::cuda::Cuda;
use crate::backend::{DeviceChoice, Precision};
use crate::error::{Error, Result};
use crate::network::Layout;
use crate::schedule::plan::plan_step;
use crate::schedule::Schedule;

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
                Err(_) => Device::Cpu(crate::backend::cpu::Cpu::new()),
            }),
        }
    }

    /// As [`Device::select`], with the convolution arithmetic; `tf32`, `bf16` and `f16` need
    /// CUDA.
    pub fn select_with(choice: DeviceChoice, precision: Precision) -> Result<Device> {
        if precision == Precision::F32 {
            return Self::select(choice);
        }
        match choice {
            DeviceChoice::Cpu => Err(Error::Input(format!(
                "precision `{}` runs on the CUDA tensor cores; the CPU backend computes in f32",
                precision.name()
            ))),
            DeviceChoice::Cuda | DeviceChoice::Auto => {
                Ok(Device::Cuda(Cuda::try_new_with(precision)?))
            }
        }
    }

    /// On CUDA, checks that a training step of `layout` on inputs shaped `shape` under
    /// `schedule` fits the device and reserves its planned peak ([`Cuda::reserve`]); nothing on
    /// the CPU.
    pub fn reserve_for(&self, layout: &Layout, shape: &[usize], schedule: Schedule) -> Result<()> {
        match self {
            Device::Cpu(_) => Ok(()),
            Device::Cuda(c) => c.reserve(plan_step(layout, shape, schedule)?.peak_bytes),
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
