//! SPEC section 13: additive Gaussian noise of standard deviation sigma/255 (seeded, not
//! clipped) and `PSNR = 10 log10(1 / MSE)` for images in [0, 1].

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Adds N(0, (sigma/255)^2) to every value; the same seed gives the same noise.
pub fn add_noise(data: &mut [f32], sigma: f64, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f64, sigma / 255.0).expect("sigma checked finite by callers");
    for v in data.iter_mut() {
        *v += normal.sample(&mut rng) as f32;
    }
}

/// Mean squared error of two equally long images.
pub fn mse(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "mse of images of different sizes");
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum();
    s / a.len().max(1) as f64
}

/// `10 log10(1 / MSE)` (infinite for identical images).
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    10.0 * (1.0 / mse(a, b)).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_known_errors() {
        let a = vec![0.5f32; 100];
        let b = vec![0.6f32; 100];
        // MSE = 0.01 -> 20 dB.
        assert!((psnr(&a, &b) - 20.0).abs() < 1e-5);
        assert!(psnr(&a, &a).is_infinite());
    }

    #[test]
    fn noise_has_the_spec_level_and_is_seeded() {
        let mut x = vec![0.0f32; 200_000];
        add_noise(&mut x, 25.0, 7);
        let sd = (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
        assert!((sd * 255.0 - 25.0).abs() < 0.2, "sd {}", sd * 255.0);
        // Not clipped: negative values remain.
        assert!(x.iter().any(|&v| v < 0.0));
        let mut y = vec![0.0f32; 200_000];
        add_noise(&mut y, 25.0, 7);
        assert_eq!(x, y);
    }
}
