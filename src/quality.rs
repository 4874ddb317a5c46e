//! Image quality of a protected copy against its original: PSNR and SSIM on 8-bit RGB.
//!
//! SSIM follows Wang et al. (2004) on the luma channel (BT.601 weights) with an 11×11 Gaussian window
//! (σ 1.5), K1 0.01, K2 0.03, L 255; PSNR is over all three channels. [`ssim_regions`] measures
//! only the rectangles a protection changed (on any device), since the blur-heavy SSIM of a whole
//! 12 MP photo costs seconds on a CPU.

use image::RgbImage;
use tch::{Device, Kind, Tensor};

/// `[1,1,h,w]` luma in [0,255] of the rectangle `(x, y, w, h)` of an RGB image, on `device`.
fn luma(img: &RgbImage, (x, y, w, h): (i64, i64, i64, i64), device: Device) -> Tensor {
    // Only the rectangle's bytes are copied, not the whole photo's.
    let cut = image::imageops::crop_imm(img, x as u32, y as u32, w as u32, h as u32).to_image();
    let t = Tensor::from_slice(cut.as_raw()).view([h, w, 3]).to_device(device).to_kind(Kind::Float);
    let weights = Tensor::from_slice(&[0.299f32, 0.587, 0.114]).to_device(device);
    t.matmul(&weights).view([1, 1, h, w])
}

/// Peak signal-to-noise ratio in dB; infinite for identical images. `None` when the sizes differ.
pub fn psnr(a: &RgbImage, b: &RgbImage) -> Option<f64> {
    if a.dimensions() != b.dimensions() || a.as_raw().is_empty() {
        return None;
    }
    // Integer squared differences: exact, and several times faster than floats over 36 MB.
    let se: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| {
            let d = u32::from(x.abs_diff(y));
            u64::from(d * d)
        })
        .sum();
    let mse = se as f64 / a.as_raw().len() as f64;
    Some(if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64.powi(2) / mse).log10() })
}

/// Mean structural similarity of the luma channels, in [-1,1] (1 = identical). `None` when the
/// sizes differ or the image is smaller than the 11×11 window.
pub fn ssim(a: &RgbImage, b: &RgbImage) -> Option<f64> {
    let (w, h) = a.dimensions();
    if a.dimensions() != b.dimensions() {
        return None;
    }
    ssim_rect(a, b, (0, 0, i64::from(w), i64::from(h)), Device::Cpu)
}

/// Mean SSIM over the rectangles `(x, y, w, h)` (clipped to the image), weighted by their areas,
/// computed on `device`. `None` when the sizes differ or no rectangle holds an 11×11 window.
pub fn ssim_regions(
    a: &RgbImage,
    b: &RgbImage,
    rects: &[(i64, i64, i64, i64)],
    device: Device,
) -> Option<f64> {
    if a.dimensions() != b.dimensions() {
        return None;
    }
    let (iw, ih) = (i64::from(a.width()), i64::from(a.height()));
    let (mut sum, mut area) = (0.0, 0.0);
    for &(x, y, w, h) in rects {
        let (x0, y0) = (x.max(0), y.max(0));
        let (x1, y1) = ((x + w).min(iw), (y + h).min(ih));
        if let Some(s) = ssim_rect(a, b, (x0, y0, x1 - x0, y1 - y0), device) {
            let n = ((x1 - x0) * (y1 - y0)) as f64;
            sum += s * n;
            area += n;
        }
    }
    (area > 0.0).then(|| sum / area)
}

/// Windows per side of one tile of [`ssim_rect`]: a tile's tensors stay near 100 MB however large
/// the rectangle (a whole 80 MP photo at once took 15 GB and minutes on a CPU).
const TILE: i64 = 1024;

/// Mean SSIM over every whole 11×11 window of `rect`, computed tile by tile: the tiles overlap by
/// 10 px, so their windows are exactly the rectangle's, each counted once.
fn ssim_rect(a: &RgbImage, b: &RgbImage, rect: (i64, i64, i64, i64), device: Device) -> Option<f64> {
    let (x, y, w, h) = rect;
    if w < 11 || h < 11 {
        return None;
    }
    let (ow, oh) = (w - 10, h - 10);
    let (mut sum, mut windows) = (0.0, 0i64);
    for ty in (0..oh).step_by(TILE as usize) {
        for tx in (0..ow).step_by(TILE as usize) {
            let (tw, th) = (TILE.min(ow - tx), TILE.min(oh - ty));
            sum += ssim_sum(a, b, (x + tx, y + ty, tw + 10, th + 10), device);
            windows += tw * th;
        }
    }
    Some(sum / windows as f64)
}

/// The sum of SSIM over every whole 11×11 window of `rect` (at least 11×11).
fn ssim_sum(a: &RgbImage, b: &RgbImage, rect: (i64, i64, i64, i64), device: Device) -> f64 {
    let _guard = tch::no_grad_guard();
    let (x, y) = (luma(a, rect, device), luma(b, rect, device));
    let g: Vec<f32> =
        (0..11).map(|i| (-((i as f64 - 5.0).powi(2)) / (2.0 * 1.5 * 1.5)).exp() as f32).collect();
    let g = Tensor::from_slice(&g).to_device(device);
    let g = &g / g.sum(Kind::Float);
    // Separable Gaussian window, valid convolution.
    // The five local means (x, y, x², y², xy) as the channels of one separable, grouped convolution.
    let stack = Tensor::cat(&[&x, &y, &(&x * &x), &(&y * &y), &(&x * &y)], 1);
    let row = g.view([1, 1, 1, 11]).expand([5, 1, 1, 11], false).contiguous();
    let col = g.view([1, 1, 11, 1]).expand([5, 1, 11, 1], false).contiguous();
    let means = stack.conv2d(&row, None::<Tensor>, [1, 1], [0, 0], [1, 1], 5).conv2d(
        &col,
        None::<Tensor>,
        [1, 1],
        [0, 0],
        [1, 1],
        5,
    );
    let m = |k: i64| means.narrow(1, k, 1);
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let (mx, my) = (m(0), m(1));
    let sxx = m(2) - &mx * &mx;
    let syy = m(3) - &my * &my;
    let sxy = m(4) - &mx * &my;
    let num = (&mx * &my * 2.0 + c1) * (sxy * 2.0 + c2);
    let den = (&mx * &mx + &my * &my + c1) * (sxx + syy + c2);
    (num / den).sum(Kind::Double).to_device(Device::Cpu).double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(w: u32, h: u32, shift: u8) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = ((x * 7 + y * 13) % 200) as u8;
            image::Rgb([v.saturating_add(shift), v / 2, 255 - v])
        })
    }

    #[test]
    fn region_ssim_sees_only_its_regions() {
        let a = pattern(60, 40, 0);
        let mut b = a.clone();
        // Damage the right half only.
        for y in 0..40 {
            for x in 30..60 {
                b.put_pixel(x, y, image::Rgb([0, 0, 0]));
            }
        }
        let left = ssim_regions(&a, &b, &[(0, 0, 30, 40)], Device::Cpu).unwrap();
        let right = ssim_regions(&a, &b, &[(30, 0, 30, 40)], Device::Cpu).unwrap();
        assert!((left - 1.0).abs() < 1e-6, "{left}");
        assert!(right < 0.5, "{right}");
        // Two regions average by area; a region off the image is clipped; one under 11×11 is skipped.
        let both = ssim_regions(&a, &b, &[(0, 0, 30, 40), (30, 0, 30, 40)], Device::Cpu).unwrap();
        assert!((both - (left + right) / 2.0).abs() < 1e-6);
        assert_eq!(ssim_regions(&a, &b, &[(-10, 0, 40, 40)], Device::Cpu), Some(left));
        assert_eq!(ssim_regions(&a, &b, &[(0, 0, 5, 5)], Device::Cpu), None);
    }

    #[test]
    fn identical_images() {
        let a = pattern(40, 30, 0);
        assert_eq!(psnr(&a, &a), Some(f64::INFINITY));
        assert!((ssim(&a, &a).unwrap() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn one_level_in_one_channel_is_about_53_db() {
        // Only the red channel moves by 1 level: MSE = 1/3, PSNR = 10·log10(255²·3) ≈ 52.9 dB.
        let (a, b) = (pattern(40, 30, 0), pattern(40, 30, 1));
        let p = psnr(&a, &b).unwrap();
        assert!((p - 52.9).abs() < 0.1, "{p}");
        let s = ssim(&a, &b).unwrap();
        assert!(s > 0.99 && s < 1.0, "{s}");
    }

    #[test]
    fn noise_lowers_ssim() {
        let a = pattern(64, 64, 0);
        let mut b = a.clone();
        for (i, p) in b.pixels_mut().enumerate() {
            let n = if i % 2 == 0 { 30 } else { 0 };
            p.0[1] = p.0[1].saturating_add(n);
        }
        assert!(ssim(&a, &b).unwrap() < 0.9);
        assert_eq!(ssim(&pattern(8, 8, 0), &pattern(8, 8, 0)), None);
        assert_eq!(psnr(&pattern(8, 8, 0), &pattern(9, 8, 0)), None);
    }

    #[test]
    fn tiles_count_every_window_once() {
        // 1100×1040: four tiles, the last ones narrow; the same mean as one convolution over all.
        let (w, h) = (TILE as u32 + 76, TILE as u32 + 16);
        let a = pattern(w, h, 0);
        let mut b = a.clone();
        for (i, p) in b.pixels_mut().enumerate() {
            p.0[i % 3] = p.0[i % 3].wrapping_add((i * 37 % 23) as u8);
        }
        let rect = (0, 0, i64::from(w), i64::from(h));
        let whole = ssim_sum(&a, &b, rect, Device::Cpu) / (f64::from(w - 10) * f64::from(h - 10));
        let tiled = ssim_rect(&a, &b, rect, Device::Cpu).unwrap();
        assert!((whole - tiled).abs() < 1e-9, "{whole} against {tiled}");
        assert!(tiled < 0.99, "{tiled}");
    }

    #[test]
    fn ssim_is_the_mean_over_every_whole_11_px_gaussian_window() {
        // Direct sums over each window (σ 1.5, no padding), in f64, against the convolutions.
        let (w, h) = (23u32, 19u32);
        let a = pattern(w, h, 0);
        let mut b = a.clone();
        for (i, p) in b.pixels_mut().enumerate() {
            p.0[i % 3] = p.0[i % 3].wrapping_add((i * 37 % 23) as u8);
        }
        let luma = |img: &RgbImage, x: u32, y: u32| {
            let p = img.get_pixel(x, y).0;
            0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2])
        };
        let g: Vec<f64> = (0..11).map(|i| (-((i as f64 - 5.0).powi(2)) / 4.5).exp()).collect();
        let norm: f64 = g.iter().sum::<f64>().powi(2);
        let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
        let mut total = 0.0;
        let (nx, ny) = (w - 10, h - 10);
        for y0 in 0..ny {
            for x0 in 0..nx {
                let [mut mx, mut my, mut xx, mut yy, mut xy] = [0.0; 5];
                for j in 0..11 {
                    for i in 0..11 {
                        let k = g[i as usize] * g[j as usize] / norm;
                        let (p, q) = (luma(&a, x0 + i, y0 + j), luma(&b, x0 + i, y0 + j));
                        mx += k * p;
                        my += k * q;
                        xx += k * p * p;
                        yy += k * q * q;
                        xy += k * p * q;
                    }
                }
                let (sxx, syy, sxy) = (xx - mx * mx, yy - my * my, xy - mx * my);
                total +=
                    (2.0 * mx * my + c1) * (2.0 * sxy + c2) / ((mx * mx + my * my + c1) * (sxx + syy + c2));
            }
        }
        let want = total / f64::from(nx * ny);
        let got = ssim(&a, &b).unwrap();
        assert!((got - want).abs() < 1e-4, "{got} against {want}");
        assert!(want < 0.99, "the images differ: {want}");
    }
}
