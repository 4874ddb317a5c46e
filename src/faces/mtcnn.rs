//! The MTCNN cascade, step for step as facenet-pytorch 2.6.0's `detect_face` does it, so that the same
//! pixels give the same boxes: the scale pyramid, `imresample` (area interpolation, i.e.
//! `adaptive_avg_pool2d`), the normalization `(x - 127.5) * 0.0078125`, `generateBoundingBox`,
//! torchvision's `batched_nms` ('Union', IoU without the +1), `rerec`, `pad`, `bbreg`, the batched
//! R-Net and O-Net crops, and the final numpy NMS ('Min', areas with the +1).
//!
//! The networks run on the detector's device; the box bookkeeping (a few thousand boxes at most) runs
//! on the CPU in `f32`, operation for operation as the reference's `float32` tensors, with thresholds
//! compared the way PyTorch and numpy compare them.

use tch::{Device, Kind, Tensor};

use super::nets::{ONet, PNet, RNet};

/// A box `[x1, y1, x2, y2]` with its score, in the coordinates of the image the cascade ran on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Scored {
    pub b: [f32; 4],
    pub score: f32,
}

/// What the cascade returns per face: box, score, five landmarks `(x, y)`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RawFace {
    pub b: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
}

/// R-Net and O-Net see at most this many crops at once (facenet-pytorch's `fixed_batch_process`).
const BATCH: usize = 512;

/// The P-Net scales for an `h`×`w` image: `12 / min_size`, then ×`factor` while the shorter side,
/// scaled, is at least 12 px. Python floats, so `f64`.
pub(super) fn pyramid(h: i64, w: i64, min_size: f64, factor: f64) -> Vec<f64> {
    let m = 12.0 / min_size;
    let mut minl = h.min(w) as f64 * m;
    let mut scale = m;
    let mut scales = Vec::new();
    while minl >= 12.0 {
        scales.push(scale);
        scale *= factor;
        minl *= factor;
    }
    scales
}

/// Runs the cascade on `image`: [1,3,H,W] float in [0,255] (RGB) on the networks' device.
pub(super) fn detect(
    nets: (&PNet, &RNet, &ONet),
    image: &Tensor,
    min_size: f64,
    thresholds: [f32; 3],
    factor: f64,
) -> Result<Vec<RawFace>, tch::TchError> {
    let (pnet, rnet, onet) = nets;
    let _guard = tch::no_grad_guard();
    let size = image.size();
    let (h, w) = (size[2], size[3]);

    // Stage 1: P-Net over the pyramid, NMS 0.5 within each scale, 0.7 across scales.
    let mut candidates = Vec::new();
    for scale in pyramid(h, w, min_size, factor) {
        // Python's int(h * scale + 1) truncates.
        let (hs, ws) = ((h as f64 * scale + 1.0) as i64, (w as f64 * scale + 1.0) as i64);
        let scaled = normalize(&image.f_adaptive_avg_pool2d([hs, ws])?)?;
        let (reg, probs) = pnet.forward(&scaled)?;
        let found = generate_bounding_box(&reg, &probs, scale as f32, thresholds[0])?;
        let keep = nms_union(&found.iter().map(|(s, _)| *s).collect::<Vec<_>>(), 0.5);
        candidates.extend(keep.into_iter().map(|i| found[i]));
    }
    let keep = nms_union(&candidates.iter().map(|(s, _)| *s).collect::<Vec<_>>(), 0.7);
    let boxes: Vec<Scored> = keep
        .into_iter()
        .map(|i| {
            let (Scored { b, score }, r) = candidates[i];
            // P-Net's regression uses the width without the +1 (unlike `bbreg`).
            let (regw, regh) = (b[2] - b[0], b[3] - b[1]);
            rerec(Scored {
                b: [b[0] + r[0] * regw, b[1] + r[1] * regh, b[2] + r[2] * regw, b[3] + r[3] * regh],
                score,
            })
        })
        .collect();
    if boxes.is_empty() {
        return Ok(Vec::new());
    }

    // Stage 2: R-Net on 24×24 crops.
    let (boxes, crops) = crop_boxes(image, &boxes, 24)?;
    let mut reg = Vec::with_capacity(boxes.len());
    let mut score = Vec::with_capacity(boxes.len());
    for chunk in crops.chunks(BATCH) {
        let (r, p) = rnet.forward(&normalize(&Tensor::f_cat(chunk, 0)?)?)?;
        reg.extend(rows::<4>(&r)?);
        score.extend(rows::<2>(&p)?.into_iter().map(|p| p[1]));
    }
    let passed: Vec<(Scored, [f32; 4])> = (0..boxes.len())
        .filter(|&i| score[i] > thresholds[1])
        .map(|i| (Scored { b: boxes[i].b, score: score[i] }, reg[i]))
        .collect();
    let keep = nms_union(&passed.iter().map(|(s, _)| *s).collect::<Vec<_>>(), 0.7);
    let boxes: Vec<Scored> = keep.into_iter().map(|i| rerec(bbreg(passed[i].0, passed[i].1))).collect();
    if boxes.is_empty() {
        return Ok(Vec::new());
    }

    // Stage 3: O-Net on 48×48 crops, landmarks, final NMS 'Min'.
    let (boxes, crops) = crop_boxes(image, &boxes, 48)?;
    let mut faces = Vec::new();
    for (chunk, boxes) in crops.chunks(BATCH).zip(boxes.chunks(BATCH)) {
        let (r, l, p) = onet.forward(&normalize(&Tensor::f_cat(chunk, 0)?)?)?;
        let (r, l, p) = (rows::<4>(&r)?, rows::<10>(&l)?, rows::<2>(&p)?);
        for (i, b) in boxes.iter().enumerate() {
            let score = p[i][1];
            if score <= thresholds[2] {
                continue;
            }
            let b = b.b;
            let (wi, hi) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
            let landmarks =
                std::array::from_fn(|k| [wi * l[i][k] + b[0] - 1.0, hi * l[i][k + 5] + b[1] - 1.0]);
            let moved = bbreg(Scored { b, score }, r[i]);
            faces.push(RawFace { b: moved.b, score, landmarks });
        }
    }
    let keep = nms_min(&faces.iter().map(|f| Scored { b: f.b, score: f.score }).collect::<Vec<_>>(), 0.7);
    Ok(keep.into_iter().map(|i| faces[i].clone()).collect())
}

/// `(x - 127.5) * 0.0078125`: [0,255] → about [-1,1].
fn normalize(x: &Tensor) -> Result<Tensor, tch::TchError> {
    x.f_sub_scalar(127.5)?.f_mul_scalar(0.0078125)
}

/// A [N,K] float tensor as N rows of K values on the CPU.
fn rows<const K: usize>(t: &Tensor) -> Result<Vec<[f32; K]>, tch::TchError> {
    let flat = Vec::<f32>::try_from(t.f_to_device(Device::Cpu)?.f_contiguous()?.f_view([-1])?)?;
    Ok(flat.chunks_exact(K).map(|c| std::array::from_fn(|k| c[k])).collect())
}

/// facenet-pytorch's `generateBoundingBox` for one image: every P-Net cell with face probability
/// ≥ `threshold`, in row-major order, as its 12×12 window mapped back through `scale`, with its
/// regression. `reg`: [1,4,H',W'], `probs`: [1,2,H',W'].
fn generate_bounding_box(
    reg: &Tensor,
    probs: &Tensor,
    scale: f32,
    threshold: f32,
) -> Result<Vec<(Scored, [f32; 4])>, tch::TchError> {
    let size = probs.size();
    let (hp, wp) = (size[2] as usize, size[3] as usize);
    let p =
        Vec::<f32>::try_from(probs.f_select(1, 1)?.f_to_device(Device::Cpu)?.f_contiguous()?.f_view([-1])?)?;
    let r = Vec::<f32>::try_from(reg.f_to_device(Device::Cpu)?.f_contiguous()?.f_view([-1])?)?;
    let plane = hp * wp;
    let mut out = Vec::new();
    for y in 0..hp {
        for x in 0..wp {
            let score = p[y * wp + x];
            if score >= threshold {
                let (bx, by) = (x as f32, y as f32);
                let b = [
                    ((2.0 * bx + 1.0) / scale).floor(),
                    ((2.0 * by + 1.0) / scale).floor(),
                    ((2.0 * bx + 12.0) / scale).floor(),
                    ((2.0 * by + 12.0) / scale).floor(),
                ];
                let reg = std::array::from_fn(|c| r[c * plane + y * wp + x]);
                out.push((Scored { b, score }, reg));
            }
        }
    }
    Ok(out)
}

/// Crops every box from `image` ([1,3,H,W]) as facenet-pytorch does (`pad`: truncate, clamp to
/// 1..=W / 1..=H, take rows y-1..ey and columns x-1..ex) and resizes it to `side`×`side` with area
/// interpolation: ([1,3,side,side] in [0,255] each). A box that lies wholly outside the image is dropped
/// (facenet-pytorch would fail on it).
fn crop_boxes(
    image: &Tensor,
    boxes: &[Scored],
    side: i64,
) -> Result<(Vec<Scored>, Vec<Tensor>), tch::TchError> {
    let size = image.size();
    let (h, w) = (size[2], size[3]);
    let mut kept = Vec::with_capacity(boxes.len());
    let mut out = Vec::with_capacity(boxes.len());
    for b in boxes {
        let [x, y, ex, ey] = pad(b.b, w, h);
        if ey > y - 1 && ex > x - 1 {
            let crop = image.f_narrow(2, y - 1, ey - (y - 1))?.f_narrow(3, x - 1, ex - (x - 1))?;
            out.push(crop.f_adaptive_avg_pool2d([side, side])?);
            kept.push(*b);
        }
    }
    Ok((kept, out))
}

/// `pad`: the box truncated toward zero (`trunc().int()`), `x`, `y` raised to 1, `ex`, `ey` lowered
/// to the image's width and height. Returns `[x, y, ex, ey]`.
pub(super) fn pad(b: [f32; 4], w: i64, h: i64) -> [i64; 4] {
    // `as i32` truncates toward zero and saturates, like `.trunc().int()` on sane values.
    let t = b.map(|v| i64::from(v.trunc() as i32));
    [t[0].max(1), t[1].max(1), t[2].min(w), t[3].min(h)]
}

/// `rerec`: the box made square around its centre, side = the longer side (no +1).
pub(super) fn rerec(s: Scored) -> Scored {
    let b = s.b;
    let (h, w) = (b[3] - b[1], b[2] - b[0]);
    let l = w.max(h);
    let x1 = b[0] + w * 0.5 - l * 0.5;
    let y1 = b[1] + h * 0.5 - l * 0.5;
    Scored { b: [x1, y1, x1 + l, y1 + l], score: s.score }
}

/// `bbreg`: moves each side by its regression times the box's width or height (with the +1).
pub(super) fn bbreg(s: Scored, reg: [f32; 4]) -> Scored {
    let b = s.b;
    let (w, h) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
    Scored { b: [b[0] + reg[0] * w, b[1] + reg[1] * h, b[2] + reg[2] * w, b[3] + reg[3] * h], score: s.score }
}

/// torchvision's `nms` (what `batched_nms` does for one image): indices kept, best score first; a box
/// is dropped when its IoU with a kept, better box is > `threshold`. Areas without the +1.
pub(super) fn nms_union(boxes: &[Scored], threshold: f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    // Stable, descending, as torchvision's CPU kernel sorts.
    order.sort_by(|&a, &b| boxes[b].score.total_cmp(&boxes[a].score));
    let area = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (n, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = &boxes[i].b;
        let ai = area(bi);
        for &j in &order[n + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = &boxes[j].b;
            let iw = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let ih = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = iw * ih;
            let iou = inter / (ai + area(bj) - inter);
            // torchvision compares the float IoU with a double threshold.
            if f64::from(iou) > threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// facenet-pytorch's `nms_numpy` with method 'Min': overlap = intersection / the smaller area, areas
/// and sides with the +1; a box survives while its overlap with each kept, better box is ≤ `threshold`
/// (numpy compares in float32). Indices kept, best score first.
pub(super) fn nms_min(boxes: &[Scored], threshold: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    // Among exactly equal scores (O-Net's saturated softmax often gives several), numpy's order comes
    // from its SIMD argsort and differs with the CPU; the earlier box goes first here, as in `nms_union`.
    order.sort_by(|&a, &b| boxes[b].score.total_cmp(&boxes[a].score));
    let area = |b: &[f32; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let mut keep = Vec::new();
    while let Some((&i, rest)) = order.split_first() {
        keep.push(i);
        let bi = &boxes[i].b;
        order = rest
            .iter()
            .copied()
            .filter(|&j| {
                let bj = &boxes[j].b;
                let iw = (bi[2].min(bj[2]) - bi[0].max(bj[0]) + 1.0).max(0.0);
                let ih = (bi[3].min(bj[3]) - bi[1].max(bj[1]) + 1.0).max(0.0);
                let inter = iw * ih;
                inter / area(bi).min(area(bj)) <= threshold
            })
            .collect();
    }
    keep
}

/// The image as MTCNN takes it: `pixels` (H×W×3 RGB bytes, row-major) → [1,3,H,W] float in [0,255]
/// on `device`, with the channels-last strides facenet-pytorch's `permute(0, 3, 1, 2)` gives.
/// The bytes are read in place, not first copied into a tensor (36 MB at 12 MP).
pub(super) fn image_tensor(pixels: &[u8], h: i64, w: i64, device: Device) -> Result<Tensor, tch::TchError> {
    let len = usize::try_from(h * w * 3).unwrap_or(usize::MAX);
    if h <= 0 || w <= 0 || pixels.len() != len {
        return Err(tch::TchError::Shape(format!("{} bytes are not a {w}x{h} RGB image", pixels.len())));
    }
    // SAFETY: `pixels` holds exactly h·w·3 bytes (checked above) and outlives `bytes`, a view of them
    // that is only read and dropped when this function returns. What it returns holds none of that
    // memory: the conversion to float (after a copy to the device, synchronous from pageable memory)
    // writes a new tensor.
    let bytes = unsafe {
        Tensor::f_from_blob(
            pixels.as_ptr(),
            &[1, h, w, 3],
            &[h * w * 3, w * 3, 3, 1],
            Kind::Uint8,
            Device::Cpu,
        )?
    };
    bytes.f_to_device(device)?.f_permute([0, 3, 1, 2])?.f_to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: [f32; 4], score: f32) -> Scored {
        Scored { b, score }
    }

    #[test]
    fn pyramid_follows_facenet_pytorch() {
        // 218×178 at min 40: m = 0.3, minl = 53.4, ×0.709 until < 12: 53.4, 37.9, 26.8, 19.0, 13.5.
        let scales = pyramid(218, 178, 40.0, 0.709);
        assert_eq!(scales.len(), 5);
        assert!((scales[0] - 0.3).abs() < 1e-12);
        assert!((scales[4] - 0.3 * 0.709f64.powi(4)).abs() < 1e-12);
        // Too small for even one 12 px window at that size.
        assert!(pyramid(30, 30, 40.0, 0.709).is_empty());
    }

    #[test]
    fn nms_union_keeps_the_best_of_each_cluster_in_score_order() {
        let boxes = [
            s([0.0, 0.0, 10.0, 10.0], 0.8),
            s([1.0, 0.0, 11.0, 10.0], 0.9), // IoU with the first 90/110 = 0.82
            s([20.0, 20.0, 30.0, 30.0], 0.7),
            s([5.0, 0.0, 15.0, 10.0], 0.6), // IoU with the second 60/140 = 0.43
        ];
        assert_eq!(nms_union(&boxes, 0.7), [1, 2, 3]);
        assert_eq!(nms_union(&boxes, 0.4), [1, 2]);
        assert!(nms_union(&[], 0.5).is_empty());
    }

    #[test]
    fn nms_min_measures_overlap_against_the_smaller_box() {
        // A small box inside a big one: IoU is low but the 'Min' overlap is 1.
        let boxes = [s([0.0, 0.0, 99.0, 99.0], 0.99), s([10.0, 10.0, 29.0, 29.0], 0.95)];
        assert_eq!(nms_union(&boxes, 0.7), [0, 1]);
        assert_eq!(nms_min(&boxes, 0.7), [0]);
        // With the +1: [0,9] and [5,14] share 5 of 10 columns → overlap 0.5, kept at 0.7.
        let side = [s([0.0, 0.0, 9.0, 9.0], 0.9), s([5.0, 0.0, 14.0, 9.0], 0.95)];
        assert_eq!(nms_min(&side, 0.7), [1, 0]);
        assert_eq!(nms_min(&side, 0.5), [1, 0]);
        assert_eq!(nms_min(&side, 0.4), [1]);
        // Equal scores: the earlier box wins, in both.
        let tied = [s([0.0, 0.0, 9.0, 9.0], 1.0), s([1.0, 0.0, 10.0, 9.0], 1.0)];
        assert_eq!(nms_min(&tied, 0.7), [0]);
        assert_eq!(nms_union(&tied, 0.7), [0]);
    }

    #[test]
    fn rerec_squares_around_the_centre() {
        let r = rerec(s([10.0, 20.0, 30.0, 60.0], 0.5));
        assert_eq!(r.b, [0.0, 20.0, 40.0, 60.0]);
        assert_eq!(r.score, 0.5);
    }

    #[test]
    fn bbreg_moves_sides_by_the_width_plus_one() {
        let r = bbreg(s([0.0, 0.0, 9.0, 19.0], 0.5), [0.1, -0.1, 0.2, 0.0]);
        assert_eq!(r.b, [1.0, -2.0, 11.0, 19.0]);
    }

    #[test]
    fn pad_truncates_and_clamps_like_facenet_pytorch() {
        assert_eq!(pad([-3.7, 0.5, 120.9, 80.2], 100, 50), [1, 1, 100, 50]);
        assert_eq!(pad([10.9, 20.1, 30.5, 40.99], 100, 50), [10, 20, 30, 40]);
    }

    #[test]
    fn generate_bounding_box_maps_cells_through_the_scale() {
        // One 2×3 probability map with two cells over 0.6, at (x=2, y=0) and (x=0, y=1).
        let p1 = [0.1f32, 0.2, 0.7, 0.6, 0.3, 0.59];
        let p0 = p1.map(|v| 1.0 - v);
        let probs = Tensor::from_slice(&[p0, p1].concat()).view([1, 2, 2, 3]);
        let reg = Tensor::arange(24, (Kind::Float, Device::Cpu)).view([1, 4, 2, 3]);
        let found = generate_bounding_box(&reg, &probs, 0.5, 0.6).unwrap();
        assert_eq!(found.len(), 2);
        // x = 2: q1 = floor((4+1)/0.5) = 10, q2 = floor((4+12)/0.5) = 32; y = 0: 2 and 24.
        assert_eq!(found[0].0.b, [10.0, 2.0, 32.0, 24.0]);
        assert_eq!(found[0].1, [2.0, 8.0, 14.0, 20.0]);
        assert_eq!(found[1].0.b, [2.0, 6.0, 24.0, 28.0]);
        assert_eq!(found[1].1, [3.0, 9.0, 15.0, 21.0]);
        assert!((found[1].0.score - 0.6).abs() < 1e-7);
    }
}
