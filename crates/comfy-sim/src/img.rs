//! Pixels: ComfyUI's IMAGE tensors (`[B, H, W, C]` floats in 0..1) and the few image operations
//! the model-free nodes perform, computed in f32 like torch. A uniform image is kept as one colour
//! (`Plane::Solid`) so that large solid images (2048² × 2 in the traces) cost nothing until saved.

use std::sync::Arc;

/// One image of a batch.
#[derive(Clone, Debug)]
pub(crate) struct Image {
    pub w: usize,
    pub h: usize,
    /// Channels: 3 for IMAGE, 1 for MASK.
    pub c: usize,
    pub plane: Plane,
}

#[derive(Clone, Debug)]
pub(crate) enum Plane {
    /// Every pixel has this value per channel.
    Solid(Vec<f32>),
    /// Row-major `h * w * c`.
    Dense(Arc<Vec<f32>>),
}

/// A batch of same-sized images.
pub(crate) type Batch = Arc<Vec<Image>>;

impl Image {
    pub fn solid(w: usize, h: usize, values: Vec<f32>) -> Image {
        Image {
            w,
            h,
            c: values.len(),
            plane: Plane::Solid(values),
        }
    }

    pub fn dense(w: usize, h: usize, c: usize, data: Vec<f32>) -> Image {
        Image {
            w,
            h,
            c,
            plane: Plane::Dense(Arc::new(data)),
        }
    }

    pub fn at(&self, x: usize, y: usize, ch: usize) -> f32 {
        match &self.plane {
            Plane::Solid(v) => v.get(ch).copied().unwrap_or(0.0),
            Plane::Dense(d) => d
                .get((y * self.w + x) * self.c + ch)
                .copied()
                .unwrap_or(0.0),
        }
    }

    pub fn to_dense(&self) -> Vec<f32> {
        match &self.plane {
            Plane::Dense(d) => d.as_ref().clone(),
            Plane::Solid(v) => {
                let mut out = Vec::with_capacity(self.w * self.h * self.c);
                for _ in 0..self.w * self.h {
                    out.extend_from_slice(v);
                }
                out
            }
        }
    }

    /// `1.0 - x`
    pub fn invert(&self) -> Image {
        let plane = match &self.plane {
            Plane::Solid(v) => Plane::Solid(v.iter().map(|x| 1.0 - x).collect()),
            Plane::Dense(d) => Plane::Dense(Arc::new(d.iter().map(|x| 1.0 - x).collect())),
        };
        Image {
            plane,
            ..self.clone()
        }
    }

    /// ComfyUI's ImageBlur: a (2r+1)² gaussian over `linspace(-1, 1)`, reflect padding.
    pub fn blur(&self, radius: usize, sigma: f32) -> Result<Image, String> {
        if radius == 0 {
            return Ok(self.clone());
        }
        if radius >= self.w || radius >= self.h {
            return Err(format!(
                "Argument #4: Padding size should be less than the corresponding input dimension, but got: padding ({radius}, {radius}) at dimension 3 of input [1, {}, {}, {}]",
                self.c, self.h, self.w
            ));
        }
        let d = match &self.plane {
            // A blurred uniform image is the same image.
            Plane::Solid(_) => return Ok(self.clone()),
            Plane::Dense(d) => d,
        };
        let k = radius * 2 + 1;
        let mut g: Vec<f32> = (0..k)
            .map(|i| {
                let t = -1.0 + 2.0 * i as f32 / (k - 1) as f32;
                (-(t * t) / (2.0 * sigma * sigma)).exp()
            })
            .collect();
        let sum: f32 = g.iter().sum();
        g.iter_mut().for_each(|x| *x /= sum);
        let (w, h, c) = (self.w, self.h, self.c);
        let reflect = |i: isize, n: usize| -> usize {
            let n = n as isize;
            let r = if i < 0 {
                -i
            } else if i >= n {
                2 * (n - 1) - i
            } else {
                i
            };
            r.clamp(0, n - 1) as usize
        };
        let r = radius as isize;
        let mut tmp = vec![0f32; w * h * c];
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    let mut acc = 0f32;
                    for (j, gj) in g.iter().enumerate() {
                        let sx = reflect(x as isize + j as isize - r, w);
                        acc += gj * d[(y * w + sx) * c + ch];
                    }
                    tmp[(y * w + x) * c + ch] = acc;
                }
            }
        }
        let mut out = vec![0f32; w * h * c];
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    let mut acc = 0f32;
                    for (j, gj) in g.iter().enumerate() {
                        let sy = reflect(y as isize + j as isize - r, h);
                        acc += gj * tmp[(sy * w + x) * c + ch];
                    }
                    out[(y * w + x) * c + ch] = acc;
                }
            }
        }
        Ok(Image::dense(w, h, c, out))
    }

    /// A sub-rectangle.
    pub fn crop(&self, x0: usize, y0: usize, w: usize, h: usize) -> Image {
        match &self.plane {
            Plane::Solid(v) => Image::solid(w, h, v.clone()),
            Plane::Dense(d) => {
                let mut out = Vec::with_capacity(w * h * self.c);
                for y in y0..y0 + h {
                    let start = (y * self.w + x0) * self.c;
                    out.extend_from_slice(&d[start..start + w * self.c]);
                }
                Image::dense(w, h, self.c, out)
            }
        }
    }

    /// `comfy.utils.common_upscale` for one image.
    pub fn scale(&self, width: usize, height: usize, method: &str, crop: &str) -> Image {
        let mut src = self.clone();
        if crop == "center" && src.w > 0 && src.h > 0 && height > 0 {
            let old_aspect = src.w as f64 / src.h as f64;
            let new_aspect = width as f64 / height as f64;
            let (mut x, mut y) = (0usize, 0usize);
            if old_aspect > new_aspect {
                x = py_round((src.w as f64 - src.w as f64 * (new_aspect / old_aspect)) / 2.0);
            } else if old_aspect < new_aspect {
                y = py_round((src.h as f64 - src.h as f64 * (old_aspect / new_aspect)) / 2.0);
            }
            let (cw, ch) = (
                src.w.saturating_sub(2 * x).max(1),
                src.h.saturating_sub(2 * y).max(1),
            );
            src = src.crop(x.min(src.w - 1), y.min(src.h - 1), cw, ch);
        }
        if let Plane::Solid(v) = &src.plane {
            return Image::solid(width, height, v.clone());
        }
        if method == "lanczos" {
            return src.lanczos(width, height);
        }
        let wx = axis_weights(src.w, width, method);
        let wy = axis_weights(src.h, height, method);
        separable(&src, width, height, &wx, &wy)
    }

    /// PIL's LANCZOS resize of the image as 8-bit (as comfy.utils.lanczos does).
    fn lanczos(&self, width: usize, height: usize) -> Image {
        let q: Vec<f32> = self
            .to_dense()
            .iter()
            .map(|v| (255.0 * v).clamp(0.0, 255.0).trunc())
            .collect();
        let src = Image::dense(self.w, self.h, self.c, q);
        let wx = pil_weights(self.w, width);
        let wy = pil_weights(self.h, height);
        let out = separable(&src, width, height, &wx, &wy);
        let d: Vec<f32> = out
            .to_dense()
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) / 255.0)
            .collect();
        Image::dense(width, height, self.c, d)
    }

    /// 8-bit pixels as ComfyUI saves them: `clip(255 * x, 0, 255).astype(uint8)` (truncating).
    pub fn to_u8(&self) -> Vec<u8> {
        let conv = |v: f32| (255.0f32 * v).clamp(0.0, 255.0) as u8;
        match &self.plane {
            Plane::Solid(v) => {
                let px: Vec<u8> = v.iter().map(|x| conv(*x)).collect();
                let mut out = Vec::with_capacity(self.w * self.h * self.c);
                for _ in 0..self.w * self.h {
                    out.extend_from_slice(&px);
                }
                out
            }
            Plane::Dense(d) => d.iter().map(|x| conv(*x)).collect(),
        }
    }

    /// Decodes a file's first frame as ComfyUI's LoadImage does: (RGB image, mask).
    pub fn load(bytes: &[u8]) -> Result<(Image, Image), String> {
        let dynimg = image::load_from_memory(bytes)
            .map_err(|e| format!("cannot identify image file: {e}"))?;
        let (w, h) = (dynimg.width() as usize, dynimg.height() as usize);
        let has_alpha = dynimg.color().has_alpha();
        let rgba = dynimg.to_rgba8();
        let mut rgb = Vec::with_capacity(w * h * 3);
        let mut mask = Vec::with_capacity(w * h);
        for p in rgba.pixels() {
            rgb.push(p[0] as f32 / 255.0);
            rgb.push(p[1] as f32 / 255.0);
            rgb.push(p[2] as f32 / 255.0);
            mask.push(1.0 - p[3] as f32 / 255.0);
        }
        let mask = if has_alpha {
            Image::dense(w, h, 1, mask)
        } else {
            Image::solid(64, 64, vec![0.0])
        };
        Ok((Image::dense(w, h, 3, rgb), mask))
    }
}

/// Python's `round()` (banker's rounding) for non-negative values.
fn py_round(x: f64) -> usize {
    let r = x.round();
    let r = if (x - x.trunc() - 0.5).abs() < f64::EPSILON && r % 2.0 != 0.0 {
        r - 1.0
    } else {
        r
    };
    r.max(0.0) as usize
}

/// For each output coordinate: the source indices and weights.
type AxisWeights = Vec<Vec<(usize, f32)>>;

fn axis_weights(n_in: usize, n_out: usize, method: &str) -> AxisWeights {
    let scale = n_in as f32 / n_out.max(1) as f32;
    let last = n_in.saturating_sub(1);
    (0..n_out)
        .map(|o| match method {
            "nearest-exact" | "nearest" => {
                let s = if method == "nearest" {
                    (o as f32 * scale).floor()
                } else {
                    ((o as f32 + 0.5) * scale).floor()
                };
                vec![((s as usize).min(last), 1.0)]
            }
            "area" => {
                let start = (o * n_in) / n_out;
                let end = ((o + 1) * n_in).div_ceil(n_out);
                let n = (end - start).max(1) as f32;
                (start..end.max(start + 1))
                    .map(|i| (i.min(last), 1.0 / n))
                    .collect()
            }
            "bicubic" => {
                let s = (o as f32 + 0.5) * scale - 0.5;
                let i = s.floor();
                let t = s - i;
                let a = -0.75f32;
                let cc1 = |x: f32| ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
                let cc2 = |x: f32| ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
                let ws = [cc2(t + 1.0), cc1(t), cc1(1.0 - t), cc2(2.0 - t)];
                (0..4)
                    .map(|k| {
                        let idx = (i as isize + k as isize - 1).clamp(0, last as isize) as usize;
                        (idx, ws[k])
                    })
                    .collect()
            }
            // bilinear (and anything unknown)
            _ => {
                let s = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(last);
                let i1 = (i0 + 1).min(last);
                let l = s - i0 as f32;
                vec![(i0, 1.0 - l), (i1, l)]
            }
        })
        .collect()
}

/// PIL's Lanczos (a = 3) weights, with its support widened when downscaling.
fn pil_weights(n_in: usize, n_out: usize) -> AxisWeights {
    let scale = n_in as f64 / n_out.max(1) as f64;
    let filterscale = scale.max(1.0);
    let support = 3.0 * filterscale;
    let sinc = |x: f64| {
        if x == 0.0 {
            1.0
        } else {
            let px = std::f64::consts::PI * x;
            px.sin() / px
        }
    };
    let lanczos = |x: f64| {
        if x.abs() < 3.0 {
            sinc(x) * sinc(x / 3.0)
        } else {
            0.0
        }
    };
    (0..n_out)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5).floor().max(0.0)) as usize;
            let xmax = ((center + support + 0.5).floor() as usize).min(n_in);
            let mut ws: Vec<(usize, f64)> = (xmin..xmax)
                .map(|x| (x, lanczos((x as f64 - center + 0.5) / filterscale)))
                .collect();
            let total: f64 = ws.iter().map(|(_, w)| w).sum();
            if total != 0.0 {
                ws.iter_mut().for_each(|(_, w)| *w /= total);
            }
            ws.into_iter().map(|(i, w)| (i, w as f32)).collect()
        })
        .collect()
}

fn separable(
    src: &Image,
    width: usize,
    height: usize,
    wx: &AxisWeights,
    wy: &AxisWeights,
) -> Image {
    let c = src.c;
    let d = src.to_dense();
    let mut tmp = vec![0f32; width * src.h * c];
    for y in 0..src.h {
        for (x, ws) in wx.iter().enumerate() {
            for ch in 0..c {
                let mut acc = 0f32;
                for (i, w) in ws {
                    acc += w * d[(y * src.w + i) * c + ch];
                }
                tmp[(y * width + x) * c + ch] = acc;
            }
        }
    }
    let mut out = vec![0f32; width * height * c];
    for (y, ws) in wy.iter().enumerate() {
        for x in 0..width {
            for ch in 0..c {
                let mut acc = 0f32;
                for (i, w) in ws {
                    acc += w * tmp[(i * width + x) * c + ch];
                }
                out[(y * width + x) * c + ch] = acc;
            }
        }
    }
    Image::dense(width, height, c, out)
}

/// A PNG of 8-bit pixels with ComfyUI's text chunks (`prompt`, `workflow`, ...).
pub(crate) fn encode_png(
    w: usize,
    h: usize,
    c: usize,
    pixels: &[u8],
    texts: &[(String, String)],
    fast: bool,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(match c {
            1 => png::ColorType::Grayscale,
            4 => png::ColorType::Rgba,
            _ => png::ColorType::Rgb,
        });
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(if fast {
            png::Compression::Fast
        } else {
            png::Compression::Balanced
        });
        for (k, v) in texts {
            enc.add_text_chunk(k.clone(), v.clone())
                .map_err(|e| e.to_string())?;
        }
        let mut writer = enc.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(pixels).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// A JPEG (quality 95, like ComfyUI's previews) of 8-bit RGB pixels.
pub(crate) fn encode_jpeg(w: usize, h: usize, rgb: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
    image::ImageEncoder::write_image(enc, rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> Image {
        let mut d = Vec::new();
        for y in 0..h {
            for x in 0..w {
                d.extend_from_slice(&[x as f32 / w as f32, y as f32 / h as f32, 0.5]);
            }
        }
        Image::dense(w, h, 3, d)
    }

    #[test]
    fn solid_stays_solid() {
        let s = Image::solid(2048, 2048, vec![0.5, 0.25, 1.0]);
        assert!(matches!(
            s.blur(15, 3.0).map(|b| b.plane),
            Ok(Plane::Solid(_))
        ));
        assert!(matches!(
            s.scale(10, 20, "bicubic", "center").plane,
            Plane::Solid(_)
        ));
        assert_eq!(s.invert().at(5, 5, 1), 0.75);
    }

    #[test]
    fn blur_keeps_mean_and_smooths() {
        let g = gradient(16, 16);
        let b = g.blur(3, 1.5).expect("blur");
        assert_eq!((b.w, b.h), (16, 16));
        // Interior of a linear ramp is unchanged by a symmetric kernel.
        assert!((b.at(8, 8, 0) - g.at(8, 8, 0)).abs() < 1e-5);
        assert!(g.blur(20, 1.0).is_err());
    }

    #[test]
    fn scale_methods_keep_range() {
        let g = gradient(64, 64);
        for m in ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"] {
            let s = g.scale(128, 96, m, "disabled");
            assert_eq!((s.w, s.h), (128, 96), "{m}");
            let v = s.at(64, 48, 2);
            assert!((v - 0.5).abs() < 0.01, "{m}: {v}");
        }
        let c = g.scale(32, 64, "bilinear", "center");
        assert_eq!((c.w, c.h), (32, 64));
    }
}
