//! Size bounds and memory checks: every shape is bounded and every count is computed with
//! checked arithmetic before anything is allocated, and a run's planned peak is compared with
//! the memory the machine has before it starts.

use crate::error::{Error, Result};

/// Largest width (channels or features) of a unit, and largest `in_channels`.
pub const MAX_WIDTH: usize = 1 << 16;
/// Largest `dense_input`.
pub const MAX_DENSE_INPUT: usize = 1 << 24;
/// Largest number of classes.
pub const MAX_CLASSES: usize = 1 << 20;
/// Largest number of steps over all units (each step is a few named tensors in the layout).
pub const MAX_TOTAL_STEPS: usize = 100_000;
/// Solver steps (accepted and rejected) of one `ode` weight interval, and its substeps: a solve
/// that needs more stops with an error naming the unit and the time reached, instead of hanging.
pub const MAX_ODE_STEPS: usize = 10_000;

/// Largest number of values of one activation (`N * C * H * W`): 2^40 f32 are 4 TiB, beyond
/// any machine, and keep every flop count of a pass within 64 bits.
pub const MAX_ELEMENTS: usize = 1 << 40;

/// The product of `dims`, or an error naming `what` when it overflows or exceeds
/// [`MAX_ELEMENTS`].
pub fn checked_product(dims: &[usize], what: &str) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| {
            Error::Shape(format!(
                "{what} of shape {dims:?} holds more than 2^40 values"
            ))
        })
}

/// `a * b` in bytes, or an error naming `what`.
pub fn checked_bytes(count: usize, elem_bytes: usize, what: &str) -> Result<usize> {
    count
        .checked_mul(elem_bytes)
        .ok_or_else(|| Error::Shape(format!("{what}: {count} values overflow a byte count")))
}

/// Bytes of memory this process may still allocate: `MemAvailable` of `/proc/meminfo`, capped
/// by the cgroup's limit (`memory.max - memory.current`) where one is set. `None` where neither
/// can be read (then nothing is checked). `PDENET_HOST_MEMORY` (bytes) overrides both, for
/// tests and for machines whose accounting the kernel does not show.
pub fn available_memory() -> Option<usize> {
    if let Ok(v) = std::env::var("PDENET_HOST_MEMORY") {
        return v.trim().parse().ok();
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .map(|kb| kb.saturating_mul(1024))
    });
    let read = |p: &str| -> Option<usize> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let cgroup = match (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        (Some(max), Some(cur)) => Some(max.saturating_sub(cur)),
        _ => None,
    };
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Checks that `bytes` of host memory are available; the error names what needs them, the
/// bytes needed and available, and how to need less (`shrink`).
pub fn check_host_memory(bytes: usize, what: &str, shrink: &str) -> Result<()> {
    match available_memory() {
        Some(avail) if bytes > avail => Err(Error::Input(format!(
            "{what} needs {bytes} bytes ({:.2} GB) of memory but the machine has {avail} bytes ({:.2} GB) available; {shrink}",
            bytes as f64 / 1e9,
            avail as f64 / 1e9
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_are_checked() {
        assert_eq!(checked_product(&[2, 3, 4], "x").unwrap(), 24);
        assert!(checked_product(&[1 << 62, 4], "x").is_err());
        assert!(checked_product(&[1 << 21, 1 << 20], "x").is_err());
        assert_eq!(checked_product(&[], "x").unwrap(), 1);
        assert!(checked_bytes(usize::MAX / 2, 4, "x").is_err());
    }
}
