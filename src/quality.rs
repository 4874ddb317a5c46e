//! Image quality of a protected copy against its original: PSNR and SSIM on 8-bit RGB.
//!
//! SSIM follows Wang et al. (2004) on the luma channel (BT.601 weights) with an 11×11 Gaussian window
//! (σ 1.5), K1 0.01, K2 0.03, L 255; PSNR is over all three channels.

use image::RgbImage;
use tch::{Device, Kind, Tensor};

/// `[1,1,H,W]` luma in [0,255] of an RGB image.
fn luma(img: &RgbImage) -> Tensor {
    let (w, h) = img.dimensions();
    let t = Tensor::from_slice(img.as_raw()).view([i64::from(h), i64::from(w), 3]).to_kind(Kind::Float);
    let weights = Tensor::from_slice(&[0.299f32, 0.587, 0.114]);
    t.matmul(&weights).view([1, 1, i64::from(h), i64::from(w)])
}

/// Peak signal-to-noise ratio in dB; infinite for identical images. `None` when the sizes differ.
pub fn psnr(a: &RgbImage, b: &RgbImage) -> Option<f64> {
    if a.dimensions() != b.dimensions() || a.as_raw().is_empty() {
        return None;
    }
    let se: f64 =
        a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
    let mse = se / a.as_raw().len() as f64;
    Some(if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64.powi(2) / mse).log10() })
}

/// Mean structural similarity of the luma channels, in [-1,1] (1 = identical). `None` when the
/// sizes differ or the image is smaller than the 11×11 window.
pub fn ssim(a: &RgbImage, b: &RgbImage) -> Option<f64> {
    let (w, h) = a.dimensions();
    if a.dimensions() != b.dimensions() || w < 11 || h < 11 {
        return None;
    }
    let _guard = tch::no_grad_guard();
    let (x, y) = (luma(a), luma(b));
    let g: Vec<f32> =
        (0..11).map(|i| (-((i as f64 - 5.0).powi(2)) / (2.0 * 1.5 * 1.5)).exp() as f32).collect();
    let g = Tensor::from_slice(&g);
    let g = &g / g.sum(Kind::Float);
    // Separable Gaussian window, valid convolution.
    let blur = |t: &Tensor| {
        let t = t.conv2d(&g.view([1, 1, 1, 11]), None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
        t.conv2d(&g.view([1, 1, 11, 1]), None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)
    };
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let (mx, my) = (blur(&x), blur(&y));
    let sxx = blur(&(&x * &x)) - &mx * &mx;
    let syy = blur(&(&y * &y)) - &my * &my;
    let sxy = blur(&(&x * &y)) - &mx * &my;
    let num = (&mx * &my * 2.0 + c1) * (sxy * 2.0 + c2);
    let den = (&mx * &mx + &my * &my + c1) * (sxx + syy + c2);
    Some((num / den).mean(Kind::Double).to_device(Device::Cpu).double_value(&[]))
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
}
