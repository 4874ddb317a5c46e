//! Spread-spectrum transforms: each PGD step passes the adversarial image through one transform drawn
//! from a spread, so the perturbation survives what a deepfake tool or a messaging app does to a photo
//! first (blur, resize, JPEG). Every transform here is differentiable and keeps shape and range:
//! `[N,3,S,S] in [-1,1] -> [N,3,S,S] in [-1,1]`.
//!
//! The same code serves as the *defenses* in `veil eval` and the tests (Gaussian blur k11 σ1.5 is the
//! paper's defense).

use std::{
    collections::HashMap,
    fmt,
    sync::{Mutex, OnceLock},
};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// One transform, with its parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    Identity,
    /// Gaussian blur, kernel 11, standard deviation σ (pixels at the generator's input size).
    Gaussian {
        sigma: f64,
    },
    /// Box blur of side k (odd).
    Box {
        k: i64,
    },
    /// Downscale by `factor` (antialiased) and back up (bilinear).
    Resize {
        factor: f64,
    },
    /// A differentiable approximation of JPEG at `quality`: 8×8 DCT of YCbCr, quantization by the
    /// standard tables scaled to the quality, with a cubic rounding surrogate. `subsampled`: chroma at
    /// half resolution (4:2:0), as messaging apps, Pillow and libjpeg write by default; else 4:4:4.
    Jpeg {
        quality: u8,
        subsampled: bool,
    },
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transform::Identity => f.write_str("identity"),
            Transform::Gaussian { sigma } => write!(f, "gaussian σ{sigma}"),
            Transform::Box { k } => write!(f, "box {k}"),
            Transform::Resize { factor } => write!(f, "resize ×{factor}"),
            Transform::Jpeg { quality, subsampled } => {
                write!(f, "jpeg q{quality} {}", if *subsampled { "4:2:0" } else { "4:4:4" })
            }
        }
    }
}

/// The families a spread may draw from (the config's `protect.spread`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Identity,
    Gaussian,
    Box,
    Resize,
    Jpeg,
    /// JPEG with chroma at half resolution (4:2:0), as messaging apps, Pillow and libjpeg write.
    Jpeg420,
}

/// How wide a spread is: `Paper` is the paper's blurs plus modest resize and JPEG; `Wide` (the strong
/// preset) reaches further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    Paper,
    Wide,
}

/// Every concrete transform of the given families, at the given width.
pub fn spread(families: &[Family], width: Width) -> Vec<Transform> {
    let wide = width == Width::Wide;
    let mut out = Vec::new();
    for family in families {
        match family {
            Family::Identity => out.push(Transform::Identity),
            Family::Gaussian => {
                let sigmas: &[f64] =
                    if wide { &[1.0, 1.5, 2.0, 2.5, 3.0, 3.5] } else { &[1.0, 1.5, 2.0, 2.5, 3.0] };
                out.extend(sigmas.iter().map(|&sigma| Transform::Gaussian { sigma }));
            }
            Family::Box => {
                let ks: &[i64] = if wide { &[5, 7, 9, 11] } else { &[5, 7, 9] };
                out.extend(ks.iter().map(|&k| Transform::Box { k }));
            }
            Family::Resize => {
                let fs: &[f64] =
                    if wide { &[0.4, 0.5, 0.6, 0.7, 0.8, 0.9] } else { &[0.5, 0.6, 0.7, 0.8, 0.9] };
                out.extend(fs.iter().map(|&factor| Transform::Resize { factor }));
            }
            Family::Jpeg | Family::Jpeg420 => {
                let qs: &[u8] = if wide { &[50, 60, 70, 80, 90, 95] } else { &[60, 70, 80, 90, 95] };
                let subsampled = *family == Family::Jpeg420;
                out.extend(qs.iter().map(|&quality| Transform::Jpeg { quality, subsampled }));
            }
        }
    }
    out
}

/// One transform for a step: a family drawn uniformly among those in `spread`, then one of its
/// members, so a family's weight does not grow with how many parameters it lists (identity, alone in
/// its family, would otherwise come up once in 19 steps of `balanced`, and the undefended case, the
/// one that matters most, would barely be attacked). `Identity` for an empty spread.
pub fn draw(spread: &[Transform], rng: &mut super::Rng) -> Transform {
    let mut families: Vec<Family> = Vec::new();
    for t in spread {
        if !families.contains(&t.family()) {
            families.push(t.family());
        }
    }
    if families.is_empty() {
        return Transform::Identity;
    }
    let family = families[rng.below(families.len())];
    let members: Vec<&Transform> = spread.iter().filter(|t| t.family() == family).collect();
    *members[rng.below(members.len())]
}

impl Transform {
    pub fn family(&self) -> Family {
        match self {
            Transform::Identity => Family::Identity,
            Transform::Gaussian { .. } => Family::Gaussian,
            Transform::Box { .. } => Family::Box,
            Transform::Resize { .. } => Family::Resize,
            Transform::Jpeg { subsampled: false, .. } => Family::Jpeg,
            Transform::Jpeg { subsampled: true, .. } => Family::Jpeg420,
        }
    }

    /// Applies the transform to `x: [N,3,H,W] in [-1,1]` (differentiable).
    pub fn apply(&self, x: &Tensor) -> Tensor {
        match *self {
            Transform::Identity => x.shallow_clone(),
            Transform::Gaussian { sigma } => gaussian_blur(x, 11, sigma),
            Transform::Box { k } => box_blur(x, k),
            Transform::Resize { factor } => down_up(x, factor),
            Transform::Jpeg { quality, subsampled } => jpeg_approx(x, quality, subsampled),
        }
    }
}

/// The transforms' constant tensors, by what they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Constant {
    /// A Gaussian blur's depthwise weight `[3,1,k,k]` (σ's bits).
    Gaussian { k: i64, sigma: u64 },
    /// A box blur's depthwise weight `[3,1,k,k]`.
    Box { k: i64 },
    /// JPEG's RGB → YCbCr matrix `[3,3]`.
    RgbToYcc,
    /// Its inverse `[3,3]`.
    YccToRgb,
    /// The offset `[1,3,1,1]` that centres Y on 0.
    YccOffset,
    /// The orthonormal DCT matrix `[8,8]`.
    Dct,
    /// The quantization tables `[1,3,1,1,8,8]` (luma, chroma, chroma) for a quality.
    Quant { quality: u8 },
}

/// Constant tensors on `device` in `kind`, made by `make` (on the CPU, in fp32) the first time each is
/// asked for, then kept for the life of the process. A copy from host memory to a GPU waits for the
/// GPU's queue to drain, so made inside the attack's loop they would stop the host from running ahead
/// of the GPU at every transform.
fn constant(what: Constant, device: Device, kind: Kind, make: impl FnOnce() -> Tensor) -> Tensor {
    type Cache = Mutex<HashMap<(Constant, Device, Kind), Tensor>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut cache =
        CACHE.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    cache
        .entry((what, device, kind))
        .or_insert_with(|| make().to_kind(kind).to_device(device))
        .shallow_clone()
}

/// `x` through the depthwise weight `w: [3,1,k,k]`, with reflection padding (no dark border).
fn depthwise(x: &Tensor, w: &Tensor) -> Tensor {
    let p = w.size()[2] / 2;
    let padded = x.reflection_pad2d([p, p, p, p]);
    padded.conv2d(w, None::<Tensor>, [1, 1], [0, 0], [1, 1], 3)
}

/// A `[k,k]` kernel as a depthwise weight `[3,1,k,k]`.
fn per_channel(kernel: Tensor) -> Tensor {
    let k = kernel.size()[0];
    kernel.view([1, 1, k, k]).repeat([3, 1, 1, 1])
}

pub fn gaussian_blur(x: &Tensor, k: i64, sigma: f64) -> Tensor {
    let w = constant(Constant::Gaussian { k, sigma: sigma.to_bits() }, x.device(), x.kind(), || {
        let r = (k / 2) as f64;
        let g: Vec<f32> =
            (0..k).map(|i| (-((i as f64 - r).powi(2)) / (2.0 * sigma * sigma)).exp() as f32).collect();
        let g = Tensor::from_slice(&g);
        let g = &g / g.sum(Kind::Float);
        per_channel(g.unsqueeze(1).matmul(&g.unsqueeze(0)))
    });
    depthwise(x, &w)
}

pub fn box_blur(x: &Tensor, k: i64) -> Tensor {
    let w = constant(Constant::Box { k }, x.device(), x.kind(), || {
        per_channel(Tensor::ones([k, k], (Kind::Float, Device::Cpu)) / (k * k) as f64)
    });
    depthwise(x, &w)
}

/// Antialiased resize of `[N,3,H,W]` to `h`×`w` (differentiable).
pub fn resize(x: &Tensor, h: i64, w: i64) -> Tensor {
    let size = x.size();
    if size[2] == h && size[3] == w {
        return x.shallow_clone();
    }
    x.internal_upsample_bilinear2d_aa([h, w], false, None, None)
}

fn down_up(x: &Tensor, factor: f64) -> Tensor {
    let size = x.size();
    let (h, w) = (size[2], size[3]);
    let small =
        resize(x, ((h as f64 * factor).round() as i64).max(1), ((w as f64 * factor).round() as i64).max(1));
    small.upsample_bilinear2d([h, w], false, None, None)
}

/// The standard JPEG luminance and chrominance quantization tables (ITU T.81, Annex K).
const Q_LUMA: [f32; 64] = [
    16., 11., 10., 16., 24., 40., 51., 61., 12., 12., 14., 19., 26., 58., 60., 55., 14., 13., 16., 24., 40.,
    57., 69., 56., 14., 17., 22., 29., 51., 87., 80., 62., 18., 22., 37., 56., 68., 109., 103., 77., 24.,
    35., 55., 64., 81., 104., 113., 92., 49., 64., 78., 87., 103., 121., 120., 101., 72., 92., 95., 98.,
    112., 100., 103., 99.,
];
const Q_CHROMA: [f32; 64] = [
    17., 18., 24., 47., 99., 99., 99., 99., 18., 21., 26., 66., 99., 99., 99., 99., 24., 26., 56., 99., 99.,
    99., 99., 99., 47., 66., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99.,
    99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99., 99.,
    99.,
];

/// libjpeg's scaling of the base tables for a quality 1..=100.
fn quant_table(base: &[f32; 64], quality: u8) -> Vec<f32> {
    let q = f32::from(quality.clamp(1, 100));
    let scale = if q < 50.0 { 5000.0 / q } else { 200.0 - 2.0 * q };
    base.iter().map(|&b| ((b * scale + 50.0) / 100.0).floor().clamp(1.0, 255.0)).collect()
}

/// The orthonormal 8×8 DCT-II matrix `D` (`D·X·Dᵀ` is the 2-D DCT of a block `X`).
fn dct_matrix() -> Tensor {
    let mut m = [0f32; 64];
    for (k, row) in m.chunks_mut(8).enumerate() {
        let a = if k == 0 { (1.0f64 / 8.0).sqrt() } else { (2.0f64 / 8.0).sqrt() };
        for (n, v) in row.iter_mut().enumerate() {
            *v = (a * ((std::f64::consts::PI * (2 * n + 1) as f64 * k as f64) / 16.0).cos()) as f32;
        }
    }
    Tensor::from_slice(&m).view([8, 8])
}

/// Differentiable JPEG approximation (Shin & Song 2017): YCbCr, 8×8 DCT, quantize with
/// `round(x) + (x − round(x))³`, dequantize, inverse DCT, back to RGB. With `subsampled` (4:2:0) the two
/// chroma planes are averaged over 2×2 pixels before their DCT and enlarged again after it with
/// libjpeg's smooth ("fancy") upsampling, which is bilinear at half-pixel centres.
/// `x: [N,3,H,W] in [-1,1]`; H and W are padded to whole blocks (8, or 16 with subsampling) by
/// replication and cropped back.
pub fn jpeg_approx(x: &Tensor, quality: u8, subsampled: bool) -> Tensor {
    let (dev, kind, size) = (x.device(), x.kind(), x.size());
    let (h, w) = (size[2], size[3]);
    let unit = if subsampled { 16 } else { 8 };
    let (ph, pw) = ((unit - h % unit) % unit, (unit - w % unit) % unit);
    let x255 = (x + 1.0) * 127.5;
    let x255 = if ph + pw > 0 { x255.replication_pad2d([0, pw, 0, ph]) } else { x255 };
    let (hh, ww) = (h + ph, w + pw);
    let ycc = to_ycc(&x255);
    let q = constant(Constant::Quant { quality }, dev, kind, || {
        let ql = Tensor::from_slice(&quant_table(&Q_LUMA, quality)).view([8, 8]);
        let qc = Tensor::from_slice(&quant_table(&Q_CHROMA, quality)).view([8, 8]);
        Tensor::stack(&[&ql, &qc, &qc], 0).view([1, 3, 1, 1, 8, 8])
    });
    let ycc = if subsampled {
        let luma = quantized(&ycc.narrow(1, 0, 1), &q.narrow(1, 0, 1));
        // [N,2,H/2,W/2]: each chroma sample the mean of its 2×2 pixels.
        let chroma = ycc.narrow(1, 1, 2).avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
        let chroma = quantized(&chroma, &q.narrow(1, 1, 2)).upsample_bilinear2d([hh, ww], false, None, None);
        Tensor::cat(&[luma, chroma], 1)
    } else {
        quantized(&ycc, &q)
    };
    let rgb = to_rgb(&ycc).narrow(2, 0, h).narrow(3, 0, w);
    (rgb / 127.5 - 1.0).clamp(-1.0, 1.0)
}

/// JFIF's YCbCr of `x255: [N,3,H,W]` (RGB in 0..255), each plane centred on 0 (Y − 128, Cb, Cr).
fn to_ycc(x255: &Tensor) -> Tensor {
    let (dev, kind) = (x255.device(), x255.kind());
    let rgb2ycc = constant(Constant::RgbToYcc, dev, kind, || {
        Tensor::from_slice(&[
            0.299f32, 0.587, 0.114, -0.168_736, -0.331_264, 0.5, 0.5, -0.418_688, -0.081_312,
        ])
        .view([3, 3])
    });
    x255.permute([0, 2, 3, 1]).matmul(&rgb2ycc.tr()).permute([0, 3, 1, 2]) + ycc_offset(dev, kind)
}

/// The inverse of [`to_ycc`]: RGB in 0..255 (not clamped).
fn to_rgb(ycc: &Tensor) -> Tensor {
    let (dev, kind) = (ycc.device(), ycc.kind());
    let ycc2rgb = constant(Constant::YccToRgb, dev, kind, || {
        Tensor::from_slice(&[1.0f32, 0.0, 1.402, 1.0, -0.344_136, -0.714_136, 1.0, 1.772, 0.0]).view([3, 3])
    });
    (ycc - ycc_offset(dev, kind)).permute([0, 2, 3, 1]).matmul(&ycc2rgb.tr()).permute([0, 3, 1, 2])
}

/// `[1,3,1,1]`: what centres Y on 0.
fn ycc_offset(dev: Device, kind: Kind) -> Tensor {
    constant(Constant::YccOffset, dev, kind, || Tensor::from_slice(&[-128f32, 0.0, 0.0]).view([1, 3, 1, 1]))
}

/// JPEG's lossy core on planes `p: [N,C,H,W]` (H and W whole blocks of 8, values centred on 0): 8×8
/// DCT, quantization by `q: [1,C,1,1,8,8]` with the cubic rounding surrogate, dequantization, inverse
/// DCT.
fn quantized(p: &Tensor, q: &Tensor) -> Tensor {
    let size = p.size();
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    // [N,C,H,W] -> blocks [N,C,H/8,W/8,8,8]
    let blocks = p.reshape([n, c, h / 8, 8, w / 8, 8]).permute([0, 1, 2, 4, 3, 5]);
    let d = constant(Constant::Dct, p.device(), p.kind(), dct_matrix);
    let coef = d.matmul(&blocks).matmul(&d.tr());
    let scaled = &coef / q;
    let rounded = scaled.round().detach();
    let diff = &scaled - &rounded;
    let approx = &rounded + &diff * &diff * &diff;
    let blocks = d.tr().matmul(&(approx * q)).matmul(&d);
    blocks.permute([0, 1, 2, 4, 3, 5]).reshape([n, c, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn image() -> Tensor {
        crate::protect::with_torch_seed(1, || Tensor::rand([2, 3, 36, 36], (Kind::Float, Device::Cpu))) * 2.0
            - 1.0
    }

    #[test]
    fn each_family_is_drawn_as_often_whatever_its_size() {
        let spread = spread(&[Family::Identity, Family::Gaussian, Family::Jpeg], Width::Paper);
        let mut rng = super::super::Rng::new(3);
        let n = 30_000;
        let identity = (0..n).filter(|_| draw(&spread, &mut rng) == Transform::Identity).count();
        let share = identity as f64 / n as f64;
        assert!((share - 1.0 / 3.0).abs() < 0.02, "identity drawn {share} of the time");
        assert_eq!(draw(&[], &mut rng), Transform::Identity);
        // The two JPEG families are families of their own: half the draws each.
        let jpegs = super::spread(&[Family::Jpeg, Family::Jpeg420], Width::Paper);
        assert_eq!(jpegs.len(), 10);
        let subsampled = (0..n)
            .filter(|_| matches!(draw(&jpegs, &mut rng), Transform::Jpeg { subsampled: true, .. }))
            .count();
        let share = subsampled as f64 / n as f64;
        assert!((share - 0.5).abs() < 0.02, "4:2:0 drawn {share} of the time");
        let only = super::spread(&[Family::Jpeg420], Width::Paper);
        assert!(only.iter().all(|t| t.family() == Family::Jpeg420), "{only:?}");
    }

    #[test]
    fn transforms_keep_shape_and_range() {
        let x = image();
        for t in spread(
            &[Family::Identity, Family::Gaussian, Family::Box, Family::Resize, Family::Jpeg, Family::Jpeg420],
            Width::Wide,
        ) {
            let y = t.apply(&x);
            assert_eq!(y.size(), x.size(), "{t}");
            assert!(
                y.max().double_value(&[]) <= 1.0 + 1e-5 && y.min().double_value(&[]) >= -1.0 - 1e-5,
                "{t}"
            );
        }
    }

    #[test]
    fn constants_are_made_once_per_device_and_number_format() {
        let mut made = 0;
        let mut get = |kind: Kind| {
            constant(Constant::Box { k: 97 }, Device::Cpu, kind, || {
                made += 1;
                per_channel(Tensor::ones([97, 97], (Kind::Float, Device::Cpu)))
            })
        };
        let (a, b, half) = (get(Kind::Float), get(Kind::Float), get(Kind::Half));
        assert_eq!(made, 2, "one per number format");
        assert_eq!(a.data_ptr(), b.data_ptr(), "the second ask gets the same tensor");
        assert_eq!((a.kind(), half.kind()), (Kind::Float, Kind::Half));
        assert_eq!(a.size(), [3, 1, 97, 97]);
    }

    #[test]
    fn blurs_preserve_a_flat_image_and_smooth_noise() {
        let flat = Tensor::full([1, 3, 20, 20], 0.3, (Kind::Float, Device::Cpu));
        for t in
            [Transform::Gaussian { sigma: 2.0 }, Transform::Box { k: 5 }, Transform::Resize { factor: 0.5 }]
        {
            let d = (t.apply(&flat) - &flat).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{t}: {d}");
        }
        let x = image();
        let var = |t: &Tensor| t.var(true).double_value(&[]);
        assert!(var(&gaussian_blur(&x, 11, 1.5)) < 0.3 * var(&x));
    }

    fn real_jpeg(x: &Tensor, quality: u8, subsampled: bool) -> Tensor {
        crate::eval::real_jpeg(x, quality, subsampled).unwrap()
    }

    /// Photo-like content: smooth, with some texture, and colour that varies on its own.
    fn photo_like() -> Tensor {
        gaussian_blur(&image().narrow(0, 0, 1), 11, 1.0)
    }

    fn mean_abs(t: Tensor) -> f64 {
        t.abs().mean(Kind::Float).double_value(&[])
    }

    #[test]
    fn jpeg_approximation_follows_a_real_jpeg() {
        // The approximation must predict what a real encoder does much better than "JPEG changes
        // nothing" does.
        let x = photo_like();
        for q in [60u8, 75, 95] {
            let real = real_jpeg(&x, q, false);
            let approx_err = mean_abs(jpeg_approx(&x, q, false) - &real);
            let identity_err = mean_abs(&x - &real);
            println!("q{q}: approx {approx_err:.5}, identity {identity_err:.5}");
            assert!(approx_err < 0.6 * identity_err, "q{q}: approx {approx_err} vs identity {identity_err}");
        }
        let err = |q| mean_abs(jpeg_approx(&x, q, false) - &x);
        assert!(err(30) > err(95));
    }

    #[test]
    fn subsampled_jpeg_approximation_follows_a_real_4_2_0_jpeg() {
        // 34 px: the padding to whole 16 px blocks is cut off again.
        let x = photo_like().narrow(2, 0, 34).narrow(3, 1, 34);
        for q in [60u8, 75, 95] {
            let real = real_jpeg(&x, q, true);
            let approx = jpeg_approx(&x, q, true);
            assert_eq!(approx.size(), x.size());
            let (err, full_err, identity_err) = (
                mean_abs(&approx - &real),
                mean_abs(jpeg_approx(&x, q, false) - &real),
                mean_abs(&x - &real),
            );
            println!("q{q}: 4:2:0 approx {err:.5}, 4:4:4 approx {full_err:.5}, identity {identity_err:.5}");
            assert!(err < 0.6 * identity_err, "q{q}: approx {err} vs identity {identity_err}");
            assert!(err < 0.8 * full_err, "q{q}: 4:2:0 approx {err} vs 4:4:4 approx {full_err}");
        }
        // Grey stays grey: subsampling only touches colour.
        let grey = photo_like().narrow(1, 0, 1).repeat([1, 3, 1, 1]);
        let d = mean_abs(jpeg_approx(&grey, 95, true) - jpeg_approx(&grey, 95, false));
        assert!(d < 1e-4, "{d}");
    }

    #[test]
    fn jpeg_approximation_passes_gradients() {
        for subsampled in [false, true] {
            let x = image().set_requires_grad(true);
            jpeg_approx(&x, 75, subsampled).sum(Kind::Float).backward();
            let g = x.grad();
            assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        }
    }

    #[test]
    fn quant_tables_follow_libjpeg() {
        assert_eq!(quant_table(&Q_LUMA, 50)[0], 16.0);
        assert_eq!(quant_table(&Q_LUMA, 100)[0], 1.0);
        assert_eq!(quant_table(&Q_LUMA, 75)[0], 8.0);
    }
}
