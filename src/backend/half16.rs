//! Kept states in 16 bits on the host ([`Storage::Bf16`], [`Storage::F16`]): the `half` crate's
//! round-to-nearest-even conversions, shared by the reference and CPU backends.

use super::Storage;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// A state rounded to a 16-bit format: the format and the raw bits.
#[derive(Clone, Debug)]
pub struct Packed16 {
    pub format: Storage,
    pub bits: Vec<u16>,
}

fn refuse_f32() -> Error {
    Error::Other("pack16 needs a 16-bit storage format (bf16 or f16)".into())
}

/// `x` rounded to `format`.
pub fn pack_f32(x: &[f32], format: Storage) -> Result<Packed16> {
    let bits = match format {
        Storage::Bf16 => x
            .par_iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect(),
        Storage::F16 => x
            .par_iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect(),
        Storage::F32 => return Err(refuse_f32()),
    };
    Ok(Packed16 { format, bits })
}

/// `x` rounded to f32, then to `format`: the reference backend's states are stored exactly as
/// an f32 backend's would be (the `half` crate's f64 conversions truncate before rounding).
pub fn pack_f64(x: &[f64], format: Storage) -> Result<Packed16> {
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    pack_f32(&x32, format)
}

impl Packed16 {
    /// The packed values (exact in f32).
    pub fn to_f32(&self) -> Vec<f32> {
        match self.format {
            Storage::F16 => self
                .bits
                .par_iter()
                .map(|&b| half::f16::from_bits(b).to_f32())
                .collect(),
            _ => self
                .bits
                .par_iter()
                .map(|&b| half::bf16::from_bits(b).to_f32())
                .collect(),
        }
    }
    pub fn to_f64(&self) -> Vec<f64> {
        self.to_f32().into_iter().map(f64::from).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even_and_keeps_specials() {
        // 1 + 2^-8 is halfway between two bf16 neighbours: ties go to the even one (1.0).
        let x = [
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            f32::NAN,
            1e5,
            -0.0,
        ];
        let b = pack_f32(&x, Storage::Bf16).unwrap().to_f32();
        assert_eq!(b[0], 1.0);
        assert_eq!(b[1], 1.0 + 4.0 * 2f32.powi(-8));
        assert!(b[2].is_nan());
        assert_eq!(b[4].to_bits(), (-0.0f32).to_bits());
        let h = pack_f32(&x, Storage::F16).unwrap().to_f32();
        assert_eq!(h[0], 1.0 + 2f32.powi(-8), "exact in f16's 11 bits");
        assert!(h[2].is_nan());
        assert_eq!(h[3], f32::INFINITY, "1e5 is beyond f16's 65504");
        assert!(pack_f32(&x, Storage::F32).is_err());
    }

    #[test]
    fn f64_goes_through_f32() {
        let x = [1.0 + 2f64.powi(-8) + 2f64.powi(-40), -3.3e-5, 7.0e4];
        for format in [Storage::Bf16, Storage::F16] {
            let via32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let a = pack_f64(&x, format).unwrap().bits;
            assert_eq!(a, pack_f32(&via32, format).unwrap().bits);
        }
    }
}
