//! `pdenet bench --kernels` and `--cpu-kernels`: the roofline with the FMA ceilings, a row per
//! kernel set this CPU has, and one-line errors for unknown or missing kernel sets.

use pdenet::backend::cpu::kernels::Isa;
use std::process::{Command, Output};

fn pdenet(args: &[&str]) -> Output {
    let bin = std::env::var("PDENET").unwrap_or_else(|_| env!("CARGO_BIN_EXE_pdenet").to_string());
    Command::new(bin).args(args).output().expect("binary runs")
}

#[test]
fn kernels_table_has_the_fma_peak_and_every_kernel_set() {
    let o = pdenet(&["bench", "--kernels", "--batch", "1", "--repeats", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("FMA peak f32 AVX-512"), "{out}");
    for op in ["conv3x3 ", "conv3x3_t ", "conv3x3_wgrad "] {
        for isa in [Isa::Avx512, Isa::Avx2, Isa::Gemm] {
            let rows = out
                .lines()
                .filter(|l| l.starts_with(op) && l.contains(&format!(" {} ", isa.name())))
                .count();
            // One row per ref-cifar shape where the CPU has the instructions.
            assert_eq!(
                rows,
                if isa.available() { 3 } else { 0 },
                "{op} {isa:?}\n{out}"
            );
        }
    }
}

#[test]
fn unknown_or_missing_kernel_sets_are_one_line_errors() {
    let o = pdenet(&["bench", "--cpu-kernels", "avx9", "--steps", "1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("avx9"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for isa in [Isa::Avx512, Isa::Avx2] {
        if !isa.available() {
            let o = pdenet(&["bench", "--cpu-kernels", isa.name(), "--steps", "1"]);
            assert!(!o.status.success());
            assert!(String::from_utf8_lossy(&o.stderr).contains(isa.name()));
        }
    }
}
