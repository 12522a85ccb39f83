//! PDE image restoration (SPEC section 13): the ROF solver's optimality (primal-dual gap), TV
//! and Perona-Malik on constant images and at zero time, noise and PSNR, and `pdenet denoise`
//! on a real photograph and on bad input.

use pdenet::restore::image::{read_png, write_png, Image};
use pdenet::restore::noise::{add_noise, mse, psnr};
use pdenet::restore::pm::{perona_malik, Diffusivity, PmOptions};
use pdenet::restore::tv::{rof, rof_gap, total_variation, TvOptions};
use std::path::PathBuf;
use std::process::Command;

fn photo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/images/camera.png")
}

/// A 64x64 crop of the held-out photograph and its noisy copy (sigma 25, seed 3).
fn crop() -> (Vec<f32>, Vec<f32>, usize, usize) {
    let img = read_png(&photo()).unwrap();
    let g = img.luminance();
    let (w, n) = (img.width, 64);
    let clean: Vec<f32> = (0..n * n)
        .map(|i| g[(100 + i / n) * w + 200 + i % n])
        .collect();
    let mut noisy = clean.clone();
    add_noise(&mut noisy, 25.0, 3);
    (clean, noisy, n, n)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pdenet-restore-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn rof_solution_meets_its_gap_and_lowers_tv() {
    let (clean, noisy, w, h) = crop();
    let opt = TvOptions::new(pdenet::restore::rule::tv_lambda(25.0));
    let r = rof(&noisy, w, h, &opt);
    assert!(r.gap <= opt.gap_tol, "gap {} > {}", r.gap, opt.gap_tol);
    // The returned gap is the gap of the returned pair.
    let g = rof_gap(&r.u, &r.px, &r.py, &noisy, w, h, opt.lambda);
    assert!((g - r.gap).abs() <= 1e-6 + 1e-3 * r.gap, "{g} vs {}", r.gap);
    assert!(total_variation(&r.u, w, h) < total_variation(&noisy, w, h));
    assert!(psnr(&r.u, &clean) > psnr(&noisy, &clean) + 3.0);
}

#[test]
fn constant_images_are_fixed_points() {
    let (w, h) = (17, 9);
    let f = vec![0.375f32; w * h];
    let r = rof(&f, w, h, &TvOptions::new(8.0));
    assert!(r.u.iter().all(|&v| (v - 0.375).abs() < 1e-6));
    for g in [Diffusivity::Exponential, Diffusivity::Rational] {
        let p = perona_malik(&f, w, h, &PmOptions::new(0.05, 3.0, g)).unwrap();
        assert!(p.steps > 0);
        assert!(p.u.iter().all(|&v| (v - 0.375).abs() < 1e-6));
    }
}

#[test]
fn perona_malik_at_zero_time_is_the_identity_and_smooths_otherwise() {
    let (clean, noisy, w, h) = crop();
    let opt = PmOptions::new(0.1, 0.0, Diffusivity::Rational);
    let p = perona_malik(&noisy, w, h, &opt).unwrap();
    assert_eq!(p.steps, 0);
    assert_eq!(p.u, noisy);
    let (k, t) = pdenet::restore::rule::pm_params(25.0, Diffusivity::Rational);
    let p = perona_malik(&noisy, w, h, &PmOptions::new(k, t, Diffusivity::Rational)).unwrap();
    assert!(psnr(&p.u, &clean) > psnr(&noisy, &clean));
    // An unstable step is refused.
    let bad = PmOptions {
        dt: 0.3,
        ..PmOptions::new(0.1, 1.0, Diffusivity::Exponential)
    };
    assert!(perona_malik(&noisy, w, h, &bad).is_err());
}

#[test]
fn noise_is_seeded_and_psnr_is_ten_log_one_over_mse() {
    let a = vec![0.5f32; 1000];
    let (mut b, mut c) = (a.clone(), a.clone());
    add_noise(&mut b, 25.0, 9);
    add_noise(&mut c, 25.0, 9);
    assert_eq!(b, c);
    // sigma / 255 standard deviation, not clipped.
    let sd = mse(&a, &b).sqrt();
    assert!((sd - 25.0 / 255.0).abs() < 0.01, "{sd}");
    let d: Vec<f32> = a.iter().map(|v| v + 0.1).collect();
    assert!((psnr(&a, &d) - 20.0).abs() < 1e-4);
}

#[test]
fn png_round_trip_keeps_the_values() {
    let data: Vec<f32> = (0..12).map(|i| i as f32 / 255.0).collect();
    let p = tmp("rt.png");
    write_png(&p, &Image::grey(4, 3, data.clone(), false)).unwrap();
    let back = read_png(&p).unwrap();
    assert_eq!((back.width, back.height), (4, 3));
    assert!(back
        .luminance()
        .iter()
        .zip(&data)
        .all(|(a, b)| (a - b).abs() < 1e-6));
}

fn denoise(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pdenet"))
        .arg("denoise")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn denoise_command_improves_psnr() {
    let (clean, _, w, h) = crop();
    let c = tmp("clean.png");
    write_png(&c, &Image::grey(w, h, clean, true)).unwrap();
    let (c, o) = (c.to_str().unwrap(), tmp("out.png"));
    for m in ["tv", "pm"] {
        let out = denoise(&[
            "--method",
            m,
            "--input",
            c,
            "--out",
            o.to_str().unwrap(),
            "--sigma",
            "25",
            "--add-noise",
            "--seed",
            "1",
            "--clean",
            c,
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{m}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let last: Vec<f64> = text
            .lines()
            .last()
            .unwrap()
            .strip_prefix("psnr ")
            .unwrap()
            .split(' ')
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(last[1] > last[0] + 1.0, "{m}: {text}");
        assert!(read_png(&o).is_ok());
    }
}

#[test]
fn bad_input_is_one_line_and_writes_nothing() {
    let o = tmp("never.png");
    let not_png = tmp("not.png");
    std::fs::write(&not_png, b"hello").unwrap();
    let truncated = tmp("trunc.png");
    let bytes = std::fs::read(photo()).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let one = tmp("one.png");
    write_png(&one, &Image::grey(1, 1, vec![0.5], false)).unwrap();
    let photo = photo();
    let cases: [(&PathBuf, &str); 5] = [
        (&not_png, "25"),
        (&truncated, "25"),
        (&one, "25"),
        (&photo, "0"),
        (&photo, "-3"),
    ];
    for (input, sigma) in cases {
        let out = denoise(&[
            "--method",
            "tv",
            "--input",
            input.to_str().unwrap(),
            "--out",
            o.to_str().unwrap(),
            "--sigma",
            sigma,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{input:?} sigma {sigma}: accepted");
        assert_eq!(err.lines().count(), 1, "{input:?} sigma {sigma}: {err}");
        assert!(!o.exists(), "{input:?}: wrote an output");
    }
}
