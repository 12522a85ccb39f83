//! Grey (and colour, channel by channel) PNG images with values in [0, 1] (SPEC section 13).

use crate::{Error, Result};
use std::path::Path;

/// An image as planes of `width * height` values in [0, 1] (row major), one per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    /// Grey: 1 plane; grey + alpha: 2; RGB: 3; RGBA: 4.
    pub planes: Vec<Vec<f32>>,
    /// Whether the file held 16-bit samples (the output keeps the input's depth).
    pub sixteen_bit: bool,
}

impl Image {
    /// A one-plane image.
    pub fn grey(width: usize, height: usize, data: Vec<f32>, sixteen_bit: bool) -> Self {
        debug_assert_eq!(data.len(), width * height);
        Image {
            width,
            height,
            planes: vec![data],
            sixteen_bit,
        }
    }

    /// The planes that hold colour (alpha, the last plane of 2 or 4, is not restored).
    pub fn colour_planes(&self) -> usize {
        match self.planes.len() {
            2 => 1,
            4 => 3,
            n => n,
        }
    }

    /// Luminance (ITU-R BT.601 weights) of a colour image; the plane itself for grey.
    pub fn luminance(&self) -> Vec<f32> {
        if self.colour_planes() < 3 {
            return self.planes[0].clone();
        }
        let (r, g, b) = (&self.planes[0], &self.planes[1], &self.planes[2]);
        (0..r.len())
            .map(|i| 0.299 * r[i] + 0.587 * g[i] + 0.114 * b[i])
            .collect()
    }
}

/// Reads a PNG (any colour type and depth; palettes and low depths are expanded).
pub fn read_png(path: &Path) -> Result<Image> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let bad = |what: String| Error::Input(format!("{}: {what}", path.display()));
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder
        .read_info()
        .map_err(|e| bad(format!("not a readable PNG ({e})")))?;
    let (w, h) = {
        let info = reader.info();
        (info.width as usize, info.height as usize)
    };
    if w == 0 || h == 0 {
        return Err(bad(format!("empty image ({w}x{h})")));
    }
    crate::limits::checked_product(&[w, h, 8], "image")?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(format!("truncated or corrupt PNG data ({e})")))?;
    let channels = frame.color_type.samples();
    let sixteen_bit = frame.bit_depth == png::BitDepth::Sixteen;
    let bytes = &buf[..frame.buffer_size()];
    let n = w * h;
    let mut planes = vec![Vec::with_capacity(n); channels];
    if sixteen_bit {
        for (i, s) in bytes.chunks_exact(2).enumerate() {
            planes[i % channels].push(u16::from_be_bytes([s[0], s[1]]) as f32 / 65535.0);
        }
    } else {
        for (i, &s) in bytes.iter().enumerate() {
            planes[i % channels].push(s as f32 / 255.0);
        }
    }
    if planes.iter().any(|p| p.len() != n) {
        return Err(bad("truncated PNG data".into()));
    }
    Ok(Image {
        width: w,
        height: h,
        planes,
        sixteen_bit,
    })
}

/// Encodes the image as PNG bytes (values clipped to [0, 1] and rounded).
pub fn encode_png(img: &Image) -> Result<Vec<u8>> {
    let colour = match img.planes.len() {
        1 => png::ColorType::Grayscale,
        2 => png::ColorType::GrayscaleAlpha,
        3 => png::ColorType::Rgb,
        4 => png::ColorType::Rgba,
        n => return Err(Error::Shape(format!("an image has 1 to 4 planes, got {n}"))),
    };
    let n = img.width * img.height;
    if img.planes.iter().any(|p| p.len() != n) || n == 0 {
        return Err(Error::Shape(format!(
            "image planes do not match {}x{}",
            img.width, img.height
        )));
    }
    let c = img.planes.len();
    let mut data = Vec::with_capacity(n * c * if img.sixteen_bit { 2 } else { 1 });
    for i in 0..n {
        for p in &img.planes {
            let v = p[i].clamp(0.0, 1.0);
            if img.sixteen_bit {
                data.extend_from_slice(&((v * 65535.0).round() as u16).to_be_bytes());
            } else {
                data.push((v * 255.0).round() as u8);
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, img.width as u32, img.height as u32);
        enc.set_color(colour);
        enc.set_depth(if img.sixteen_bit {
            png::BitDepth::Sixteen
        } else {
            png::BitDepth::Eight
        });
        let err = |e: png::EncodingError| Error::Other(format!("PNG encoding failed: {e}"));
        let mut writer = enc.write_header().map_err(err)?;
        writer.write_image_data(&data).map_err(err)?;
        writer.finish().map_err(err)?;
    }
    Ok(out)
}

/// Writes the image as a PNG of the image's depth, atomically (temp file, fsync, rename).
pub fn write_png(path: &Path, img: &Image) -> Result<()> {
    let bytes = encode_png(img)?;
    crate::params::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip_8_and_16_bit() {
        let dir = std::env::temp_dir().join(format!("pdenet-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for sixteen in [false, true] {
            let data: Vec<f32> = (0..12).map(|i| i as f32 / 11.0).collect();
            let img = Image::grey(4, 3, data, sixteen);
            let p = dir.join(format!("t{sixteen}.png"));
            write_png(&p, &img).unwrap();
            let back = read_png(&p).unwrap();
            assert_eq!((back.width, back.height, back.sixteen_bit), (4, 3, sixteen));
            let q = if sixteen { 65535.0 } else { 255.0 };
            for (a, b) in img.planes[0].iter().zip(&back.planes[0]) {
                assert!((a - b).abs() <= 0.5 / q + 1e-6);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
