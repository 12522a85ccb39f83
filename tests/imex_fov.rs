//! Field of view of one step on a single-pixel input (SPEC sections 3 and 7): an explicit step
//! reaches 3x3 pixels, a symmetric layer 5x5, an IMEX step the whole 33x33 image.

use pdenet::studies::fov::{single_pixel_fov, FovSetup};
use pdenet::train::plot::{heatmaps_png, Heatmap};

#[test]
fn explicit_symmetric_and_imex_fields_of_view() {
    let s = FovSetup::default();
    assert_eq!((s.size, s.threshold), (33, 1e-6));
    let [explicit, symmetric, imex] = single_pixel_fov(&s).unwrap();
    assert_eq!(explicit.count, 9);
    assert_eq!(symmetric.count, 25);
    assert_eq!(imex.count, 33 * 33);
    // The supports are the centred squares, not just the right number of pixels.
    let c = s.size / 2;
    for (r, radius) in [(&explicit, 1), (&symmetric, 2)] {
        for (k, &v) in r.map.iter().enumerate() {
            let (i, j) = (k / s.size, k % s.size);
            let inside = i.abs_diff(c) <= radius && j.abs_diff(c) <= radius;
            assert_eq!(v > s.threshold, inside, "{} at ({i}, {j}): {v}", r.name);
        }
    }
    // The exact solve is dense: every pixel responds, also far below the threshold.
    let far = single_pixel_fov(&FovSetup {
        diffusion: 1.0,
        threshold: 0.0,
        ..s
    })
    .unwrap();
    assert_eq!(far[2].count, 33 * 33);
    assert_eq!(far[0].count, 9);
}

#[test]
fn bad_setups_are_errors() {
    let s = FovSetup::default();
    for bad in [
        FovSetup { size: 0, ..s },
        FovSetup { channels: 0, ..s },
        FovSetup { h: 0.0, ..s },
        FovSetup { h: f64::NAN, ..s },
        FovSetup {
            threshold: -1.0,
            ..s
        },
    ] {
        assert!(single_pixel_fov(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn heatmaps_png_writes_a_png_and_rejects_bad_panels() {
    let dir = std::env::temp_dir().join(format!("pdenet-heatmap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("h.png");
    let v: Vec<f64> = (0..12)
        .map(|k| if k == 5 { f64::NAN } else { k as f64 })
        .collect();
    let panel = |values| Heatmap {
        title: "t",
        rows: 3,
        cols: 4,
        values,
    };
    heatmaps_png(
        &path,
        "title",
        &[panel(&v), panel(&v)],
        (0.0, 11.0),
        "value",
    )
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(heatmaps_png(&path, "t", &[panel(&v[..11])], (0.0, 1.0), "v").is_err());
    assert!(heatmaps_png(&path, "t", &[panel(&v)], (1.0, 1.0), "v").is_err());
    assert!(heatmaps_png(&path, "t", &[panel(&v)], (0.0, f64::NAN), "v").is_err());
    assert!(heatmaps_png(&path, "t", &[], (0.0, 1.0), "v").is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
