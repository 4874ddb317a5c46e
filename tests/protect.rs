//! The protection engine on the tiny generator fixtures (`make test` trains them) and real CelebA
//! faces: the ε bound after quantization, PGD against random noise, joint against single-condition
//! attacks on the conditions the single attack never saw, and spread-spectrum against the paper's blur
//! defense. Each comparison is averaged over several faces.

use std::{collections::BTreeMap, path::Path};

use tch::{Device, Kind, Tensor};
use veil::{
    config::FuseClean,
    models::Role,
    protect::{self, spread::Transform, Aligned, Ensemble, Framing, Params, Preset, Region, Rng, Target},
};

fn fixtures() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures/models");
    assert!(dir.join("manifest.toml").is_file(), "{} is missing: run `make fixtures`", dir.display());
    dir
}

fn ensemble() -> Ensemble {
    // One intra-op thread: the tiny models gain nothing from more, and several tests run at once.
    tch::set_num_threads(1);
    Ensemble::load(&fixtures(), &[Role::Ensemble], Device::Cpu, &BTreeMap::new()).unwrap()
}

/// Up to `n` CelebA val photos as `[3,218,178]` uint8, or none when the data is absent.
fn faces(n: usize) -> Vec<Tensor> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/celeba/val");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        println!("skipped: {} is not there", dir.display());
        return Vec::new();
    };
    let mut paths: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    paths.iter().take(n).map(|p| tch::vision::image::load(p).unwrap()).collect()
}

/// The aligned face of a CelebA photo: the central 178×178 square.
const FACE: Region = Region { x: 0, y: 20, w: 178, h: 178 };

fn protect(ens: &Ensemble, img: &Tensor, params: &Params, seed: u64) -> Tensor {
    protect::protect_pixels(ens, img, &[Target::face(FACE)], params, &mut Rng::new(seed)).unwrap().0
}

fn unit_face(img: &Tensor) -> Tensor {
    protect::to_unit(&img.narrow(1, FACE.y, FACE.h).narrow(2, FACE.x, FACE.w), Device::Cpu)
}

/// Mean over generators and conditions of the MSE an attacker applying `defense` sees.
fn disruption(
    ens: &Ensemble,
    img: &Tensor,
    prot: &Tensor,
    defense: Transform,
    conditions: std::ops::Range<usize>,
) -> f64 {
    let per = ens.mse_per_condition(&unit_face(img), &unit_face(prot), defense).unwrap();
    let vals: Vec<f64> = per
        .iter()
        .flat_map(|(_, v)| if v.len() > 1 { v[conditions.clone()].to_vec() } else { v.clone() })
        .collect();
    vals.iter().sum::<f64>() / vals.len() as f64
}

/// Uniform noise in [-1,1] of `size`, drawn from torch's generator under Veil's lock on it, so that
/// no attack running in another test at the same time draws from the wrong seed.
fn noise(size: &[i64], seed: i64) -> Tensor {
    protect::with_torch_seed(seed, || Tensor::rand(size, (Kind::Float, Device::Cpu))) * 2.0 - 1.0
}

fn params(spread: Vec<Transform>) -> Params {
    Params { spread, ..Params::preset(Preset::Balanced) }
}

#[test]
fn epsilon_bound_holds_exactly_after_quantization() {
    let ens = ensemble();
    for img in faces(3) {
        let p = Params::preset(Preset::Balanced);
        let prot = protect(&ens, &img, &p, 1);
        let diff = (prot.to_kind(Kind::Int64) - img.to_kind(Kind::Int64)).abs();
        let max = diff.max().int64_value(&[]);
        assert!(max <= protect::max_levels(p.epsilon), "a byte moved by {max}");
        assert!(max as f64 / 127.5 <= p.epsilon);
        // Outside the face region nothing changes; inside, most pixels do.
        assert_eq!(diff.narrow(1, 0, FACE.y).sum(Kind::Int64).int64_value(&[]), 0);
        let inside =
            diff.narrow(1, FACE.y, FACE.h).ne(0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        assert!(inside > 0.5, "only {inside} of the face pixels changed");
    }
}

#[test]
fn a_grey_photo_stays_grey_and_is_disrupted_as_much_as_noise_cannot() {
    let ens = ensemble();
    for img in faces(2) {
        // The photo in black and white: three equal channels (BT.601 luma).
        let luma = img
            .to_kind(Kind::Float)
            .permute([1, 2, 0])
            .matmul(&Tensor::from_slice(&[0.299f32, 0.587, 0.114]));
        let grey = luma.round().clamp(0.0, 255.0).to_kind(Kind::Uint8).unsqueeze(0).repeat([3, 1, 1]);
        // Each preset's parts: the plain attack and the coarse one.
        for preset in [Preset::Fast, Preset::Balanced] {
            let p = Params::preset(preset);
            let prot = protect(&ens, &grey, &p, 3);
            let c = |i: i64| prot.narrow(0, i, 1);
            assert!(c(0).equal(&c(1)) && c(1).equal(&c(2)), "{preset:?}: the copy gained colour");
            let moved = (prot.to_kind(Kind::Int64) - grey.to_kind(Kind::Int64)).abs();
            assert!(moved.max().int64_value(&[]) <= protect::max_levels(p.epsilon));
            // Grey noise of the same size does far less.
            let noisy = (grey.to_kind(Kind::Float)
                + (noise(&[1, 218, 178], 5) * (protect::max_levels(p.epsilon) as f64)).round())
            .clamp(0.0, 255.0)
            .to_kind(Kind::Uint8);
            let attacked = disruption(&ens, &grey, &prot, Transform::Identity, 0..5);
            let random = disruption(&ens, &grey, &noisy, Transform::Identity, 0..5);
            assert!(attacked > 3.0 * random, "{preset:?}: {attacked} against noise's {random}");
        }
    }
}

#[test]
fn an_aligned_crop_is_perturbed_too_and_the_bound_holds_there() {
    let ens = ensemble();
    let Some(img) = faces(1).pop() else { return };
    // Veil's crop lower in the photo than the aligned crop, as MTCNN's is on CelebA photos.
    let face = Region { x: 10, y: 60, w: 150, h: 150 };
    let aligned = Region { x: 0, y: 20, w: 178, h: 178 };
    let target = Target { face, aligned: vec![Aligned::upright(aligned)] };
    let p = Params::preset(Preset::Fast);
    let (prot, reports) = protect::protect_pixels(&ens, &img, &[target], &p, &mut Rng::new(2)).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].region, Region { x: 0, y: 20, w: 178, h: 190 });
    let diff = (prot.to_kind(Kind::Int64) - img.to_kind(Kind::Int64)).abs();
    assert!(diff.max().int64_value(&[]) <= protect::max_levels(p.epsilon));
    // Nothing moves above the extent; the rows of the aligned crop above Veil's crop do move.
    assert_eq!(diff.narrow(1, 0, 20).sum(Kind::Int64).int64_value(&[]), 0);
    let above_face = diff.narrow(1, 30, 30).narrow(2, 20, 138).ne(0).to_kind(Kind::Float).mean(Kind::Float);
    let above_face = above_face.double_value(&[]);
    assert!(above_face > 0.5, "only {above_face} of the aligned crop's pixels above the face changed");
    // Without the aligned crop they stay as they were.
    let (alone, _) =
        protect::protect_pixels(&ens, &img, &[Target::face(face)], &p, &mut Rng::new(2)).unwrap();
    let moved =
        (alone.to_kind(Kind::Int64) - img.to_kind(Kind::Int64)).narrow(1, 0, 60).abs().sum(Kind::Int64);
    assert_eq!(moved.int64_value(&[]), 0);
}

#[test]
fn a_turned_aligned_crop_is_perturbed_into_its_corners_and_the_bound_holds() {
    let ens = ensemble();
    let Some(img) = faces(1).pop() else { return };
    // A 120 px square turned by 30° about (90, 120): its left corner sits near (8, 98), well left of
    // the upright square (x ≥ 30) and of Veil's crop (x ≥ 40).
    let face = Region { x: 40, y: 70, w: 100, h: 100 };
    let turned = Aligned { square: Region { x: 30, y: 60, w: 120, h: 120 }, angle: 30.0 };
    let p = Params { framing: Framing { aligned: 1.0, ..Framing::DEFAULT }, ..Params::preset(Preset::Fast) };
    let target = Target { face, aligned: vec![turned] };
    let (prot, reports) = protect::protect_pixels(&ens, &img, &[target], &p, &mut Rng::new(4)).unwrap();
    // The extent is the box around the turned square.
    assert_eq!(reports[0].region, Region { x: 8, y: 38, w: 164, h: 164 });
    let diff = (prot.to_kind(Kind::Int64) - img.to_kind(Kind::Int64)).abs();
    assert!(diff.max().int64_value(&[]) <= protect::max_levels(p.epsilon));
    assert_eq!(diff.narrow(1, 0, 38).sum(Kind::Int64).int64_value(&[]), 0);
    assert_eq!(diff.narrow(1, 202, 16).sum(Kind::Int64).int64_value(&[]), 0);
    let corner = |d: &Tensor| {
        d.narrow(1, 95, 6).narrow(2, 16, 6).ne(0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[])
    };
    assert!(corner(&diff) > 0.5, "only {} of the turned corner's pixels changed", corner(&diff));
    // Veil's crop alone leaves that corner as it was.
    let (alone, _) =
        protect::protect_pixels(&ens, &img, &[Target::face(face)], &p, &mut Rng::new(4)).unwrap();
    assert_eq!(corner(&(alone.to_kind(Kind::Int64) - img.to_kind(Kind::Int64)).abs()), 0.0);
}

#[test]
fn attacking_only_the_area_the_attack_reads_gives_the_same_pixels() {
    let ens = ensemble();
    let imgs = faces(2);
    if imgs.len() < 2 {
        return;
    }
    // Two faces on a wider canvas, one with a turned aligned crop that reaches past the left edge,
    // framed with jitter, so contexts are clipped by the image and by nothing else.
    let canvas = Tensor::cat(&[&imgs[0], &imgs[1], &imgs[0]], 2);
    let turned = Aligned { square: Region { x: -10, y: 60, w: 120, h: 120 }, angle: 20.0 };
    let targets = [
        Target { face: Region { x: 10, y: 70, w: 100, h: 100 }, aligned: vec![turned] },
        Target::face(Region { x: 200, y: 40, w: 120, h: 120 }),
    ];
    let p = Params { framing: Framing { aligned: 1.0, ..Framing::DEFAULT }, ..Params::preset(Preset::Fast) };
    let (whole, _) = protect::protect_pixels(&ens, &canvas, &targets, &p, &mut Rng::new(9)).unwrap();
    let (area, merged) = protect::reach(&targets, &p, 534, 218).unwrap();
    assert!(area.w < 534, "the area read is {area:?}, not the whole canvas");
    let moved: Vec<Target> = merged.iter().map(|t| t.within(area.x, area.y)).collect();
    let crop = canvas.narrow(1, area.y, area.h).narrow(2, area.x, area.w).contiguous();
    let (part, _) = protect::protect_pixels(&ens, &crop, &moved, &p, &mut Rng::new(9)).unwrap();
    let pasted = canvas.copy();
    pasted.narrow(1, area.y, area.h).narrow(2, area.x, area.w).copy_(&part);
    assert!(whole.ne_tensor(&canvas).any().int64_value(&[]) == 1, "nothing was protected");
    assert_eq!(pasted.ne_tensor(&whole).sum(Kind::Int64).int64_value(&[]), 0);
}

#[test]
fn faces_attacked_together_each_stay_in_bound_and_are_each_disrupted() {
    let ens = ensemble();
    let imgs = faces(3);
    if imgs.len() < 3 {
        return;
    }
    // Three faces side by side in one picture: one batched attack (protect_pixels batches regions).
    let canvas = Tensor::cat(&imgs, 2);
    let regions: Vec<Target> = (0..3).map(|i| Target::face(Region { x: 178 * i, ..FACE })).collect();
    let p = Params::preset(Preset::Fast);
    let (prot, reports) = protect::protect_pixels(&ens, &canvas, &regions, &p, &mut Rng::new(3)).unwrap();
    assert_eq!(reports.len(), 3);
    let diff = (prot.to_kind(Kind::Int64) - canvas.to_kind(Kind::Int64)).abs();
    assert!(diff.max().int64_value(&[]) <= protect::max_levels(p.epsilon));
    for (i, img) in imgs.iter().enumerate() {
        let face = prot.narrow(2, 178 * i as i64, 178);
        let batched = disruption(&ens, img, &face, Transform::Identity, 0..5);
        let alone = disruption(&ens, img, &protect(&ens, img, &p, 3), Transform::Identity, 0..5);
        let noise = {
            let sign = protect::with_torch_seed(i as i64, || {
                Tensor::randint(2, img.size(), (Kind::Int64, Device::Cpu))
            }) * 2
                - 1;
            let noisy = (img.to_kind(Kind::Int64) + sign * protect::max_levels(p.epsilon)).clamp(0, 255);
            disruption(&ens, img, &noisy.to_kind(Kind::Uint8), Transform::Identity, 0..5)
        };
        println!("face {i}: batched {batched:.5}, alone {alone:.5}, noise {noise:.5}");
        // Batching changes only the random draws: each face is still attacked, far beyond noise,
        // and about as hard as alone.
        assert!(batched > 2.0 * noise, "face {i}: batched {batched} vs noise {noise}");
        assert!(batched > 0.5 * alone, "face {i}: batched {batched} vs alone {alone}");
    }
}

/// `img: [3,H,W]` uint8 enlarged `f` times (bicubic), as a camera photo's face is larger than
/// CelebA's.
fn enlarged(img: &Tensor, f: i64) -> Tensor {
    let (h, w) = (img.size()[1], img.size()[2]);
    img.to_kind(Kind::Float)
        .unsqueeze(0)
        .upsample_bicubic2d([h * f, w * f], false, None, None)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .squeeze_dim(0)
}

#[test]
fn a_large_face_attacked_at_a_capped_size_stays_in_bound_and_is_disrupted_as_at_full_size() {
    let ens = ensemble();
    // CelebA enlarged 3 times: a 534 px face, over 4 times the fixtures' 32 px input, so `detail`
    // 4 attacks it at 128 px and enlarges the perturbation.
    let face = Region { x: 0, y: 60, w: 534, h: 534 };
    let unit = |img: &Tensor| {
        protect::to_unit(&img.narrow(1, face.y, face.h).narrow(2, face.x, face.w), Device::Cpu)
    };
    let mean_mse = |clean: &Tensor, prot: &Tensor| {
        let per = ens.mse_per_condition(&unit(clean), &unit(prot), Transform::Identity).unwrap();
        let vals: Vec<f64> = per.iter().flat_map(|(_, v)| v.clone()).collect();
        vals.iter().sum::<f64>() / vals.len() as f64
    };
    let (mut capped, mut full, mut noise_sum) = (0.0, 0.0, 0.0);
    for (i, img) in faces(3).iter().enumerate() {
        let big = enlarged(img, 3);
        let p = Params::preset(Preset::Fast);
        assert_eq!(p.detail, 4.0);
        let run = |p: &Params| {
            protect::protect_pixels(&ens, &big, &[Target::face(face)], p, &mut Rng::new(i as u64)).unwrap().0
        };
        let prot = run(&p);
        let diff = (prot.to_kind(Kind::Int64) - big.to_kind(Kind::Int64)).abs();
        let max = diff.max().int64_value(&[]);
        assert!(max <= protect::max_levels(p.epsilon), "face {i}: a byte moved by {max}");
        assert_eq!(diff.narrow(1, 0, face.y).sum(Kind::Int64).int64_value(&[]), 0, "face {i}: moved above");
        let inside =
            diff.narrow(1, face.y, face.h).ne(0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        assert!(inside > 0.5, "face {i}: only {inside} of the face pixels changed");
        let sign =
            protect::with_torch_seed(i as i64, || Tensor::randint(2, big.size(), (Kind::Int64, Device::Cpu)));
        let noisy =
            (big.to_kind(Kind::Int64) + (sign * 2 - 1) * protect::max_levels(p.epsilon)).clamp(0, 255);
        let (c, f, n) = (
            mean_mse(&big, &prot),
            mean_mse(&big, &run(&Params { detail: 0.0, ..p })),
            mean_mse(&big, &noisy.to_kind(Kind::Uint8)),
        );
        println!("face {i}: capped {c:.5}, full size {f:.5}, noise {n:.5}");
        (capped, full, noise_sum) = (capped + c, full + f, noise_sum + n);
    }
    if full == 0.0 {
        return;
    }
    assert!(capped > 3.0 * noise_sum, "capped {capped} vs noise {noise_sum}");
    assert!(capped > 0.8 * full, "capped {capped} vs full size {full}");
}

#[test]
fn same_seed_same_protection() {
    let ens = ensemble();
    let Some(img) = faces(1).pop() else { return };
    let p = Params::preset(Preset::Fast);
    assert!(protect(&ens, &img, &p, 5).equal(&protect(&ens, &img, &p, 5)));
    assert!(!protect(&ens, &img, &p, 5).equal(&protect(&ens, &img, &p, 6)));
}

#[test]
fn pgd_beats_random_noise_by_a_wide_margin() {
    let ens = ensemble();
    let imgs = faces(6);
    let (mut pgd, mut noise) = (0.0, 0.0);
    let levels = protect::max_levels(0.05);
    for (i, img) in imgs.iter().enumerate() {
        let prot = protect(&ens, img, &params(vec![Transform::Identity]), i as u64);
        pgd += disruption(&ens, img, &prot, Transform::Identity, 0..5);
        // ±ε noise: every face pixel moved by the full bound, random sign.
        let sign = protect::with_torch_seed(i as i64, || {
            Tensor::randint(2, [3, FACE.h, FACE.w], (Kind::Int64, Device::Cpu))
        }) * 2
            - 1;
        let noisy = img.copy();
        let mut face = noisy.narrow(1, FACE.y, FACE.h).narrow(2, FACE.x, FACE.w);
        let moved = (face.to_kind(Kind::Int64) + sign * levels).clamp(0, 255).to_kind(Kind::Uint8);
        face.copy_(&moved);
        noise += disruption(&ens, img, &noisy, Transform::Identity, 0..5);
    }
    println!("mean MSE over {} faces: PGD {pgd:.5}, ±ε noise {noise:.5}", imgs.len());
    assert!(pgd > 3.0 * noise, "PGD {pgd} vs noise {noise}");
}

#[test]
fn joint_attack_beats_single_condition_attack_on_conditions_it_did_not_attack() {
    let joint = ensemble();
    let mut single = ensemble();
    single.restrict_conditions(0..1);
    // The tiny fixtures depend on their condition only weakly, so joint leads single by a few per
    // cent: 16 faces keep that lead above the spread of the random starts (seen with 3 seed sets).
    let imgs = faces(16);
    let (mut j, mut s) = (0.0, 0.0);
    for (i, img) in imgs.iter().enumerate() {
        let p = params(vec![Transform::Identity]);
        // Judged by the full ensemble on conditions 1..5, which the single attack never saw.
        j += disruption(&joint, img, &protect(&joint, img, &p, i as u64), Transform::Identity, 1..5);
        s += disruption(&joint, img, &protect(&single, img, &p, i as u64), Transform::Identity, 1..5);
    }
    println!("unattacked conditions, mean MSE: joint {j:.5}, single {s:.5}");
    assert!(j > s, "joint {j} vs single {s}");
}

#[test]
fn iterative_mode_also_disrupts_every_condition() {
    let ens = ensemble();
    let Some(img) = faces(1).pop() else { return };
    let p = Params { mode: protect::Mode::Iterative, ..params(vec![Transform::Identity]) };
    let prot = protect(&ens, &img, &p, 3);
    let per = ens.mse_per_condition(&unit_face(&img), &unit_face(&prot), Transform::Identity).unwrap();
    for (name, v) in per {
        assert!(v.iter().all(|m| *m > 0.0), "{name}: {v:?}");
    }
}

#[test]
fn spread_spectrum_beats_the_plain_attack_under_the_blur_defense() {
    let ens = ensemble();
    let imgs = faces(6);
    let blur = Transform::Gaussian { sigma: 1.5 };
    let (mut with, mut without) = (0.0, 0.0);
    for (i, img) in imgs.iter().enumerate() {
        let spread = Params::preset(Preset::Balanced).spread;
        with += disruption(&ens, img, &protect(&ens, img, &params(spread), i as u64), blur, 0..5);
        without += disruption(
            &ens,
            img,
            &protect(&ens, img, &params(vec![Transform::Identity]), i as u64),
            blur,
            0..5,
        );
    }
    println!("under Gaussian blur k11 σ1.5, mean MSE: spread {with:.5}, plain {without:.5}");
    assert!(with > without, "spread {with} vs plain {without}");
}

#[test]
fn each_condition_row_goes_through_its_own_transform() {
    let ens = ensemble();
    let g = ens.generators.iter().find(|g| g.condition_count() > 1).expect("a conditional fixture");
    let (k, s) = (g.condition_count() as i64, g.input_size);
    let faces = [noise(&[1, 3, 40, 36], 1), noise(&[1, 3, 57, 57], 2)];
    let ts = [Transform::Identity, Transform::Gaussian { sigma: 1.5 }];
    let mut shared = protect::ensemble::Inputs::default();
    let rows = g.rows_shared(&mut shared, &faces, &ts);
    assert_eq!(rows.size(), [2 * k, 3, s, s]);
    let out = tch::no_grad(|| g.forward_rows(&rows)).unwrap();
    for (j, t) in ts.iter().enumerate() {
        let through = g.resized(&faces, *t); // [2,3,S,S]
        for n in 0..2 {
            for c in (j as i64..k).step_by(ts.len()) {
                let row = n * k + c;
                let diff = (rows.get(row) - through.get(n)).abs().max().double_value(&[]);
                assert!(diff == 0.0, "face {n}, condition {c}: input differs by {diff} from {t}");
                let alone = tch::no_grad(|| g.forward_one_resized(&through, c as usize)).unwrap();
                let diff = (out.get(row) - alone.get(n)).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "face {n}, condition {c}: output differs by {diff} under {t}");
            }
        }
    }
    // One transform for all: every condition's rows are the same faces.
    let one = g.rows_shared(&mut shared, &faces, &ts[1..]);
    let blurred = g.resized(&faces, ts[1]);
    for row in 0..2 * k {
        let diff = (one.get(row) - blurred.get(row / k)).abs().max().double_value(&[]);
        assert!(diff == 0.0, "row {row}: {diff}");
    }
}

#[test]
fn a_coarse_part_leaves_more_of_the_perturbation_past_a_blur() {
    let ens = ensemble();
    let blur = Transform::Gaussian { sigma: 1.5 };
    // Energy of the perturbation on the face (δ in [-1,1] units): all of it, and what the blur leaves.
    let energy = |img: &Tensor, prot: &Tensor| {
        let d = unit_face(prot) - unit_face(img);
        (
            d.square().sum(Kind::Float).double_value(&[]),
            blur.apply(&d).square().sum(Kind::Float).double_value(&[]),
        )
    };
    // The tiny fixtures see the face at a few dozen pixels, so even the one-part perturbation is
    // smooth (about 3/4 of it passes the blur); the coarse part still adds to that on every face.
    let imgs = faces(6);
    if imgs.is_empty() {
        return;
    }
    let (mut two, mut one) = ((0.0, 0.0), (0.0, 0.0));
    for (i, img) in imgs.iter().enumerate() {
        // At the face's own resolution: with `detail` on, the 178 px face is attacked at 128 px (4
        // times the fixtures' input) and its perturbation enlarged, which already smooths both.
        let p = Params { detail: 0.0, ..Params::preset(Preset::Balanced) };
        let (a, b) = energy(img, &protect(&ens, img, &Params { coarse: 2, ..p.clone() }, i as u64));
        let (c, d) = energy(img, &protect(&ens, img, &Params { coarse: 1, ..p }, i as u64));
        two = (two.0 + a, two.1 + b);
        one = (one.0 + c, one.1 + d);
    }
    let (two, one) = (two.1 / two.0.max(1e-12), one.1 / one.0.max(1e-12));
    println!("share of the perturbation's energy past blur k11 σ1.5: coarse 2 {two:.3}, one part {one:.3}");
    assert!(two > 1.05 * one, "coarse 2 keeps {two:.3}, one part {one:.3}");
}

#[test]
fn channels_last_inputs_give_the_same_outputs() {
    let mut ens = ensemble();
    let x = noise(&[1, 3, 40, 40], 1);
    let plain: Vec<Tensor> =
        ens.generators.iter().map(|g| g.forward_all(&[x.shallow_clone()]).unwrap()).collect();
    let engine = veil::config::EngineConfig { channels_last: true, ..Default::default() };
    assert_eq!(ens.configure(&engine), Kind::Float);
    for (g, p) in ens.generators.iter().zip(&plain) {
        let y = g.forward_all(&[x.shallow_clone()]).unwrap();
        let diff = (&y - p).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{}: channels-last output differs by {diff}", g.name);
    }
}

/// Protects CelebA faces with the engine as it is and as `change` leaves it, in joint mode (fast) and
/// in iterative mode (cpu): the protection must be as strong. A batch of another size, or gradients
/// added up in another order, may round differently, which can flip the sign of a near-zero
/// gradient, so the bytes need not all match.
fn as_strong_with(change: impl Fn(&mut Ensemble), what: &str) {
    let mut base = ensemble();
    let mut changed = ensemble();
    change(&mut changed);
    base.fuse_clean = FuseClean::Off;
    base.parallel_generators = false;
    for (img, preset) in faces(2).iter().zip([Preset::Fast, Preset::Cpu]) {
        // Framing and a spread: each step computes its clean outputs.
        let p = Params::preset(preset);
        let before = protect(&base, img, &p, 3);
        let after = protect(&changed, img, &p, 3);
        assert!(before.ne_tensor(img).any().int64_value(&[]) == 1, "nothing was protected");
        let differ = after.ne_tensor(&before).sum(Kind::Int64).int64_value(&[]);
        let (d_before, d_after) = (
            disruption(&base, img, &before, Transform::Identity, 0..5),
            disruption(&base, img, &after, Transform::Identity, 0..5),
        );
        let msg = format!(
            "{what}, {preset}: {differ} of {} bytes differ; disruption {d_before} before, {d_after} after",
            img.numel()
        );
        println!("{msg}");
        assert!(differ * 10 <= img.numel() as i64, "{msg}");
        assert!((d_after / d_before - 1.0).abs() < 0.1, "{msg}");
    }
}

#[test]
fn clean_outputs_in_the_attacks_pass_give_as_strong_a_protection() {
    // On this CPU: the same bytes in joint mode, 4 % differ in iterative mode.
    as_strong_with(|e| e.fuse_clean = FuseClean::On, "fuse_clean");
}

#[test]
fn generators_on_threads_of_their_own_give_as_strong_a_protection() {
    as_strong_with(|e| e.parallel_generators = true, "parallel_generators");
    as_strong_with(
        |e| {
            e.parallel_generators = true;
            e.fuse_clean = FuseClean::On;
        },
        "both",
    );
}

#[test]
fn batched_disruption_matches_each_face_measured_alone() {
    let ens = ensemble();
    let faces = [noise(&[1, 3, 40, 36], 1), noise(&[1, 3, 57, 57], 2)];
    let prot: Vec<Tensor> =
        faces.iter().map(|x| (x + (x.rand_like() - 0.5) * 0.1).clamp(-1.0, 1.0)).collect();
    let targets: Vec<Tensor> = ens.generators.iter().map(|g| g.forward_all(&faces).unwrap()).collect();
    let batched = tch::no_grad(|| ens.disruption_batch(&prot, &targets)).unwrap();
    assert_eq!(batched.len(), 2);
    for (i, (x, p)) in faces.iter().zip(&prot).enumerate() {
        let alone = ens.mse_per_condition(x, p, Transform::Identity).unwrap();
        for ((name, v), (name2, per)) in batched[i].iter().zip(&alone) {
            let mean = per.iter().sum::<f64>() / per.len() as f64;
            assert_eq!(name, name2);
            assert!((v - mean).abs() <= 1e-6 * mean.max(1e-3), "face {i}, {name}: {v} batched, {mean} alone");
        }
    }
}
