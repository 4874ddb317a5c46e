//! End-to-end tests of `veil::imageio` on real camera files (`../shared/data/exif-samples`, skipped
//! with a printed reason when absent), a full file system, and the 12 MP benchmark (ignored; run
//! with `cargo test --release --test imageio -- --ignored --nocapture bench`; 4:4:4 and 4:2:0, each
//! with the copy's PSNR).

use std::path::{Path, PathBuf};
use std::time::Instant;

use veil::imageio::{self, Chroma, Format, ImageError, MetadataPolicy, Settings};

fn samples() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/exif-samples");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("SKIPPED: {} is absent, so the real-file checks did not run", dir.display());
        None
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if !p.file_name().unwrap().to_string_lossy().starts_with("README") {
            out.push(p);
        }
    }
}

/// JPEG metadata segments (APPn, COM) before the first scan: (marker, payload).
fn jpeg_segments(data: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 2;
    while i + 4 <= data.len() && data[i] == 0xFF {
        let m = data[i + 1];
        if m == 0xFF {
            i += 1;
            continue;
        }
        let len = u16::from_be_bytes([data[i + 2], data[i + 3]]) as usize;
        if m == 0xDA || i + 2 + len > data.len() {
            break;
        }
        if (0xE0..=0xEF).contains(&m) || m == 0xFE {
            out.push((m, data[i + 4..i + 2 + len].to_vec()));
        }
        i += 2 + len;
    }
    out
}

/// Segments Veil drops on purpose: Adobe's colour-transform segment, the multi-picture index,
/// JFIF thumbnails, and ICC profiles of CMYK sources.
fn dropped_on_purpose(m: u8, p: &[u8]) -> bool {
    m == 0xEE
        || m == 0xE2 && p.starts_with(b"MPF\0")
        || m == 0xE0
            && (p.starts_with(b"JFXX\0") || p.starts_with(b"JFIF\0") && p.len() >= 14 && (p[12] | p[13]) != 0)
}

/// EXIF fields (tag, IFD, value) as kamadak-exif reads them, without IFD1's thumbnail pointers.
fn exif_fields(exif: &exif::Exif) -> Vec<String> {
    let mut v: Vec<String> = exif
        .fields()
        .filter(|f| !(f.ifd_num == exif::In::THUMBNAIL && matches!(f.tag.number(), 0x0201 | 0x0202)))
        .map(|f| format!("{} {} {:?}", f.tag, f.ifd_num, f.value))
        .collect();
    v.sort();
    v
}

/// The byte range of the old thumbnail (to the end of the blob for a JPEG one, which may grow or
/// shrink there), read from IFD1 without kamadak-exif, which refuses some of these files.
fn thumb_range(t: &[u8]) -> Option<std::ops::Range<usize>> {
    let le = t.starts_with(b"II");
    let u16_at = |o: usize| {
        t.get(o..o + 2).map(|b| {
            if le {
                u16::from_le_bytes([b[0], b[1]])
            } else {
                u16::from_be_bytes([b[0], b[1]])
            }
        })
    };
    let u32_at = |o: usize| {
        t.get(o..o + 4).map(|b| {
            let b = [b[0], b[1], b[2], b[3]];
            (if le { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) }) as usize
        })
    };
    let ifd1 = (|| {
        let ifd0 = u32_at(4)?;
        let next = u32_at(ifd0 + 2 + 12 * u16_at(ifd0)? as usize)?;
        let n = u16_at(next)? as usize;
        let value = |tag: u16| {
            (0..n).map(|k| next + 2 + 12 * k).find(|&e| u16_at(e) == Some(tag)).and_then(|e| {
                match u16_at(e + 2)? {
                    3 => u16_at(e + 8).map(usize::from),
                    _ => u32_at(e + 8),
                }
            })
        };
        Some((value(0x0201), value(0x0202), value(273), value(279)))
    })();
    match ifd1 {
        Some((Some(o), Some(l), _, _)) => Some(o..t.len().max(o + l)),
        // An uncompressed thumbnail is rewritten in place.
        Some((_, _, Some(o), Some(l))) => Some(o..o + l),
        _ => None,
    }
}

/// The resources of a Photoshop APP13 block: (id, whole resource).
fn photoshop_resources(p: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let Some(mut i) = p.starts_with(b"Photoshop 3.0\0").then_some(14) else { return out };
    while p.get(i..i + 4) == Some(b"8BIM") {
        let Some(&name_len) = p.get(i + 6) else { break };
        let size_at = i + 6 + ((name_len as usize + 2) & !1);
        let Some(size) =
            p.get(size_at..size_at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        else {
            break;
        };
        let end = (size_at + 4 + size + (size & 1)).min(p.len());
        out.push((u16::from_be_bytes([p[i + 4], p[i + 5]]), p[i..end].to_vec()));
        i = end;
    }
    out
}

fn mean_abs_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 =
        a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| (*x as i64 - *y as i64).unsigned_abs()).sum();
    sum as f64 / a.as_raw().len() as f64
}

/// Checks that `out` carries `src`'s metadata: JPEG segments byte for byte (EXIF: every field,
/// and every byte outside the thumbnail), TIFF tags field by field.
fn check_metadata(src: &Path, out: &Path, format: Format) {
    let (a, b) = (std::fs::read(src).unwrap(), std::fs::read(out).unwrap());
    match format {
        Format::Jpeg => {
            let is_icc = |m: &u8, p: &Vec<u8>| *m == 0xE2 && p.starts_with(b"ICC_PROFILE\0");
            let mut want: Vec<_> =
                jpeg_segments(&a).into_iter().filter(|(m, p)| !dropped_on_purpose(*m, p)).collect();
            let mut got = jpeg_segments(&b);
            let first = |v: &Vec<(u8, Vec<u8>)>| {
                v.iter().any(|(m, p)| *m == 0xE0 || *m == 0xE1 && p.starts_with(b"Exif\0\0"))
            };
            if !first(&want) {
                // Veil's own JFIF header stands first when the source had none.
                got.retain(|(m, _)| *m != 0xE0);
            }
            if !got.iter().any(|(m, p)| is_icc(m, p)) && want.iter().any(|(m, p)| is_icc(m, p)) {
                // A CMYK source: its profile does not describe the RGB copy.
                let cmyk = image::ImageReader::open(src).unwrap().into_decoder().is_ok()
                    && a.windows(2).any(|w| w == [0xFF, 0xEE]);
                println!("{}: ICC profile dropped (CMYK source: {cmyk})", src.display());
                want.retain(|(m, p)| !is_icc(m, p));
            }
            assert_eq!(want.len(), got.len(), "{}: segment count", src.display());
            let mut got = got.iter();
            for (m, p) in &want {
                let (gm, gp) = got.next().unwrap();
                assert_eq!(m, gm, "{}", src.display());
                if *m == 0xE1 && p.starts_with(b"Exif\0\0") {
                    let (t0, t1) = (&p[6..], &gp[6..]);
                    if let (Ok(e0), Ok(e1)) =
                        (exif::Reader::new().read_raw(t0.to_vec()), exif::Reader::new().read_raw(t1.to_vec()))
                    {
                        assert_eq!(
                            exif_fields(&e0),
                            exif_fields(&e1),
                            "{}: EXIF fields differ",
                            src.display()
                        );
                    }
                    let skip = thumb_range(t0);
                    let differs = (0..t0.len().min(t1.len()))
                        .filter(|i| !skip.iter().any(|r| r.contains(i)))
                        .filter(|&i| t0[i] != t1[i])
                        .count();
                    // Only the thumbnail's length value (4 bytes) may differ outside the thumbnail.
                    assert!(
                        differs <= 4,
                        "{}: {differs} EXIF bytes changed outside the thumbnail",
                        src.display()
                    );
                } else if *m == 0xED
                    && photoshop_resources(p).iter().any(|(id, _)| matches!(id, 0x0409 | 0x040C))
                {
                    // Photoshop thumbnails are regenerated; every other resource is as it was.
                    let others = |p: &[u8]| {
                        photoshop_resources(p)
                            .into_iter()
                            .filter(|(id, _)| !matches!(id, 0x0409 | 0x040C))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(others(p), others(gp), "{}: Photoshop resources changed", src.display());
                    assert_ne!(p, gp, "{}: the Photoshop thumbnail was not regenerated", src.display());
                } else {
                    assert!(p == gp, "{}: segment {m:#x} changed", src.display());
                }
            }
        }
        Format::Tiff => {
            let fields = |p: &Path| {
                let mut r = std::io::BufReader::new(std::fs::File::open(p).unwrap());
                exif::Reader::new().read_from_container(&mut r).ok().map(|e| {
                    let mut v: Vec<String> = e
                        .fields()
                        .filter(|f| f.ifd_num == exif::In::PRIMARY && !structural(f.tag.number()))
                        .map(|f| match &f.value {
                            // The offset of a value moves when a TIFF is rewritten; its bytes do not.
                            exif::Value::Undefined(bytes, _) => format!("{} {bytes:?}", f.tag),
                            v => format!("{} {v:?}", f.tag),
                        })
                        .collect();
                    v.sort();
                    v
                })
            };
            if let Some(want) = fields(src) {
                assert_eq!(Some(want), fields(out), "{}: TIFF tags differ", src.display());
            }
        }
        _ => {}
    }
}

fn structural(tag: u16) -> bool {
    matches!(
        tag,
        254 | 255
            | 256
            | 257
            | 258
            | 259
            | 262
            | 263
            | 266
            | 273
            | 277
            | 278
            | 279
            | 280
            | 281
            | 284
            | 292
            | 293
            | 317
            | 320
            | 322
            | 323
            | 324
            | 325
            | 330
            | 338
            | 339
            | 340
            | 341
            | 347
            | 512..=521 | 529 | 530 | 532
    )
}

#[test]
fn every_exif_sample_round_trips_or_fails_clearly() {
    let Some(dir) = samples() else { return };
    let mut files = Vec::new();
    walk(&dir, &mut files);
    assert!(files.len() > 90, "only {} files under {}", files.len(), dir.display());
    let out = tempfile::tempdir().unwrap();
    let settings = Settings::default();
    let (mut ok, mut failed) = (0, Vec::new());
    for (k, src) in files.iter().enumerate() {
        let photo = match imageio::read(src, &settings) {
            Ok(p) => p,
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(&*src.to_string_lossy()), "error does not name the file: {msg}");
                assert!(
                    matches!(
                        e,
                        ImageError::HeicNotSupported { .. }
                            | ImageError::Corrupt { .. }
                            | ImageError::Decode { .. }
                            | ImageError::Unsupported { .. }
                    ),
                    "{msg}"
                );
                failed.push(msg);
                continue;
            }
        };
        let name = format!("{k}-{}", src.file_name().unwrap().to_string_lossy());
        let written = imageio::write(&photo, out.path(), &name, None, &settings)
            .unwrap_or_else(|e| panic!("{}: write failed: {e}", src.display()));
        let heif =
            src.extension().is_some_and(|e| e.eq_ignore_ascii_case("heic") || e.eq_ignore_ascii_case("heif"));
        if heif {
            // A HEIC source (the `heic` feature) becomes a JPEG: checked by
            // heic_samples_decode_and_keep_their_exif.
            ok += 1;
            continue;
        }
        assert_eq!(written.format, photo.format);
        check_metadata(src, &written.path, photo.format);
        let again = imageio::read(&written.path, &settings).unwrap();
        assert_eq!(again.orientation, photo.orientation, "{}", src.display());
        let d = mean_abs_diff(&photo.pixels, &again.pixels);
        // q95 re-encoding moves a detailed photo by 1–3 levels on average; a wrong turn or colour
        // conversion moves it by tens.
        assert!(d < 4.0, "{}: upright pixels differ by {d:.2} on average", src.display());
        ok += 1;
    }
    println!("exif-samples: {ok} round-tripped, {} failed with a clear error:", failed.len());
    for m in &failed {
        println!("  {m}");
    }
    assert!(ok >= 80, "only {ok} files round-tripped");
}

#[test]
fn orientation_samples_display_identically() {
    let Some(dir) = samples() else { return };
    let dir = dir.join("jpg/orientation");
    let settings = Settings::default();
    let out = tempfile::tempdir().unwrap();
    for kind in ["landscape", "portrait"] {
        let reference = imageio::read(&dir.join(format!("{kind}_1.jpg")), &settings).unwrap();
        for o in 1..=8u8 {
            let src = dir.join(format!("{kind}_{o}.jpg"));
            let photo = imageio::read(&src, &settings).unwrap();
            assert_eq!(photo.orientation, o, "{}", src.display());
            // Upright, every sample shows the same scene (each with its own digit drawn in): of the
            // eight ways to turn the stored pixels, the one the tag names is the closest to the
            // reference, and it is what `read` returned.
            let stored = image::open(&src).unwrap();
            let turned: Vec<(u8, f64)> = (1..=8u8)
                .filter_map(|k| {
                    let mut t = stored.clone();
                    t.apply_orientation(image::metadata::Orientation::from_exif(k)?);
                    let t = t.into_rgb8();
                    (t.dimensions() == reference.pixels.dimensions())
                        .then(|| (k, mean_abs_diff(&reference.pixels, &t)))
                })
                .collect();
            let best = turned.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
            assert_eq!(best.0, o, "{}: {turned:?}", src.display());
            let second = turned.iter().filter(|t| t.0 != o).map(|t| t.1).fold(f64::MAX, f64::min);
            assert!(best.1 * 2.0 < second, "{}: {turned:?}", src.display());
            let mut expected = stored.clone();
            expected.apply_orientation(image::metadata::Orientation::from_exif(o).unwrap());
            assert_eq!(photo.pixels, expected.into_rgb8(), "{}", src.display());
            let w = imageio::write(&photo, out.path(), format!("{kind}_{o}.jpg"), None, &settings).unwrap();
            let again = imageio::read(&w.path, &settings).unwrap();
            assert_eq!(again.orientation, o);
            // Stored pixels keep the original's layout: the same stored size as the source.
            let stored = |p: &Path| image::image_dimensions(p).unwrap();
            assert_eq!(stored(&w.path), stored(&src), "{}", src.display());
            let d = mean_abs_diff(&photo.pixels, &again.pixels);
            assert!(d < 1.5, "{}: shown differently after the round trip ({d:.2})", src.display());
        }
    }
}

#[test]
fn keep_no_gps_on_a_real_gps_photo() {
    let Some(dir) = samples() else { return };
    let src = dir.join("jpg/gps/DSCN0010.jpg");
    let settings = Settings { metadata: MetadataPolicy::KeepNoGps, ..Settings::default() };
    let photo = imageio::read(&src, &settings).unwrap();
    let out = tempfile::tempdir().unwrap();
    let w = imageio::write(&photo, out.path(), "DSCN0010.jpg", None, &settings).unwrap();
    let read = |p: &Path| {
        let mut r = std::io::BufReader::new(std::fs::File::open(p).unwrap());
        exif::Reader::new().read_from_container(&mut r).unwrap()
    };
    let (a, b) = (read(&src), read(&w.path));
    assert!(a.get_field(exif::Tag::GPSLatitude, exif::In::PRIMARY).is_some());
    assert!(b.get_field(exif::Tag::GPSLatitude, exif::In::PRIMARY).is_none());
    let non_gps =
        |e: &exif::Exif| exif_fields(e).into_iter().filter(|f| !f.starts_with("GPS")).collect::<Vec<_>>();
    assert_eq!(non_gps(&a), non_gps(&b));
}

#[test]
fn symlink_out_of_the_watched_folder_is_refused() {
    let watched = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]));
    let target = outside.path().join("private.png");
    img.save(&target).unwrap();
    let link = watched.path().join("shared.png");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let settings = Settings::default();
    let err = imageio::read_in_folder(watched.path(), &link, &settings).unwrap_err();
    assert!(matches!(err, ImageError::OutsideFolder { .. }), "{err}");
    assert!(err.to_string().contains("shared.png"), "{err}");
    let err = imageio::read(&link, &settings).unwrap_err();
    assert!(matches!(err, ImageError::Symlink { .. }), "{err}");
    // The real file, named directly, reads.
    assert_eq!(imageio::read(&target, &settings).unwrap().pixels, img);
}

/// Mounts a tmpfs with `options` on a fresh folder; `Err` (with the reason) where that is impossible.
fn small_fs(options: &str) -> Result<(tempfile::TempDir, Unmount), String> {
    if unsafe_geteuid() != 0 {
        return Err("not running as root, so no tmpfs can be mounted".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(dir.path())
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !st.status.success() {
        return Err(format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&st.stderr).trim()));
    }
    let u = Unmount(dir.path().to_path_buf());
    Ok((dir, u))
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

#[test]
fn disk_full_leaves_no_partial_file() {
    let (dir, _unmount) = match small_fs("size=64k") {
        Ok(v) => v,
        Err(reason) => {
            println!("SKIPPED disk_full_leaves_no_partial_file: {reason}");
            return;
        }
    };
    // Noise does not compress: a 200×200 PNG of it is ~120 KB, more than the file system holds.
    let mut seed = 12345u32;
    let img = image::RgbImage::from_fn(200, 200, |_, _| {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let b = seed.to_be_bytes();
        image::Rgb([b[0], b[1], b[2]])
    });
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("noise.png");
    img.save(&src).unwrap();
    let photo = imageio::read(&src, &Settings::default()).unwrap();
    let err = imageio::write(&photo, dir.path(), "noise.png", None, &Settings::default()).unwrap_err();
    assert!(matches!(err, ImageError::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains("noise.png") && err.to_string().contains("disk full"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // A small photo still fits afterwards: the failed write freed its space.
    let small = image::RgbImage::from_pixel(16, 16, image::Rgb([1, 2, 3]));
    let small_src = src_dir.path().join("small.png");
    small.save(&small_src).unwrap();
    let photo = imageio::read(&small_src, &Settings::default()).unwrap();
    imageio::write(&photo, dir.path(), "small.png", None, &Settings::default()).unwrap();
}

#[test]
fn read_only_output_directory_is_a_clear_error() {
    let (dir, _unmount) = match small_fs("ro,size=64k") {
        Ok(v) => v,
        Err(reason) => {
            println!("SKIPPED read_only_output_directory_is_a_clear_error: {reason}");
            return;
        }
    };
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("a.png");
    image::RgbImage::from_pixel(4, 4, image::Rgb([9, 9, 9])).save(&src).unwrap();
    let photo = imageio::read(&src, &Settings::default()).unwrap();
    let err = imageio::write(&photo, dir.path(), "a.png", None, &Settings::default()).unwrap_err();
    assert!(matches!(err, ImageError::OutputDirNotWritable { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&*dir.path().to_string_lossy()) && msg.contains("not writable"), "{msg}");
    assert!(msg.to_lowercase().contains("read-only"), "{msg}");
}

#[test]
fn output_directory_errors_leave_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("a.png");
    image::RgbImage::from_pixel(4, 4, image::Rgb([9, 9, 9])).save(&src).unwrap();
    let photo = imageio::read(&src, &Settings::default()).unwrap();
    let missing = d.path().join("missing");
    let err = imageio::write(&photo, &missing, "a.png", None, &Settings::default()).unwrap_err();
    assert!(matches!(err, ImageError::OutputDirMissing { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    // A file where the directory should be.
    let err = imageio::write(&photo, &src, "a.png", None, &Settings::default()).unwrap_err();
    assert!(matches!(err, ImageError::OutputDirNotWritable { .. }), "{err}");
    // Writing next to the source never touches it, even with replace_existing.
    let before = std::fs::read(&src).unwrap();
    let s = Settings { replace_existing: true, ..Settings::default() };
    let w = imageio::write(&photo, d.path(), "a.png", None, &s).unwrap();
    assert_eq!(w.path, d.path().join("a (1).png"));
    assert_eq!(std::fs::read(&src).unwrap(), before);
}

/// A JPEG coded one scan per component at full colour resolution, as Veil writes its own small
/// copies, on which the `image` crate's decoder (zune-jpeg 0.5.15, zune-image issue 448) loses the
/// last row of 8×8 blocks: a CelebA face cropped to 171×203, re-encoded at q90 with optimized tables.
/// Veil decodes it with `jpeg-decoder`, as libjpeg does.
#[test]
fn a_jpeg_in_one_scan_per_component_keeps_its_last_rows() {
    let face = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/celeba/val/163984.jpg");
    if !face.is_file() {
        println!("SKIPPED: {} is absent", face.display());
        return;
    }
    let crop = image::imageops::crop_imm(&image::open(&face).unwrap().to_rgb8(), 2, 3, 171, 203).to_image();
    let mut data = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut data, 90);
    enc.set_optimized_huffman_tables(true);
    enc.encode(crop.as_raw(), 171, 203, jpeg_encoder::ColorType::Rgb).unwrap();
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("one-scan-per-component.jpg");
    std::fs::write(&file, &data).unwrap();
    let ours = imageio::read(&file, &Settings::default()).unwrap().pixels;
    let theirs = image::load_from_memory(&data).unwrap().to_rgb8();
    // The worst pixel in the bottom block row (rows 200..203) against the source.
    let worst = |img: &image::RgbImage| {
        (200..203)
            .flat_map(|y| (0..171).map(move |x| (x, y)))
            .flat_map(|(x, y)| (0..3).map(move |c| (x, y, c)))
            .map(|(x, y, c)| crop.get_pixel(x, y)[c].abs_diff(img.get_pixel(x, y)[c]))
            .max()
            .unwrap()
    };
    let (ours, theirs) = (worst(&ours), worst(&theirs));
    println!("bottom rows, worst |error|: Veil {ours}, image crate {theirs} levels");
    assert!(ours < 40, "{ours}");
    assert!(theirs > 100, "the image crate now reads this file right ({theirs}): the fallback may go");
}

/// The 12 MP round trip (decode + metadata + encode + atomic write); prints the median of 5.
#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn bench_round_trip_12mp() {
    let Some(dir) = samples() else { return };
    // A 4000×3000 JPEG with real photo content (a phone photo resized) carrying a real camera's
    // EXIF (with GPS and maker notes) at quality 92, 4:2:0, like a phone's.
    let phone = dir.join("jpg/mobile/HMD_Nokia_8.3_5G.jpg");
    let camera = std::fs::read(dir.join("jpg/gps/DSCN0010.jpg")).unwrap();
    let exif =
        jpeg_segments(&camera).into_iter().find(|(m, p)| *m == 0xE1 && p.starts_with(b"Exif\0\0")).unwrap();
    let img = image::open(&phone)
        .unwrap()
        .resize_exact(4000, 3000, image::imageops::FilterType::Triangle)
        .into_rgb8();
    let mut enc = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut enc, 92).encode_image(&img).unwrap();
    let mut data = vec![0xFF, 0xD8, 0xFF, 0xE1];
    data.extend_from_slice(&((exif.1.len() + 2) as u16).to_be_bytes());
    data.extend_from_slice(&exif.1);
    data.extend_from_slice(&enc[2..]);
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("12mp.jpg");
    std::fs::write(&src, &data).unwrap();
    let cases = [("12 MP (4000×3000) JPEG", src.as_path()), ("phone JPEG as shot", phone.as_path())];
    let runs = cases
        .iter()
        .flat_map(|c| [(*c, true), (*c, false)])
        .flat_map(|r| [(r, Chroma::Full), (r, Chroma::Half)]);
    for (((label, file), parallel), chroma) in runs {
        let out = tempfile::tempdir().unwrap();
        let settings = Settings { jpeg_parallel: parallel, jpeg_chroma: chroma, ..Settings::default() };
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..5 {
            let t = Instant::now();
            let photo = imageio::read(file, &settings).unwrap();
            let w = imageio::write(&photo, out.path(), "out.jpg", None, &settings).unwrap();
            times.push(t.elapsed().as_secs_f64());
            last = Some((w, photo.pixels.dimensions()));
        }
        times.sort_by(f64::total_cmp);
        let (w, (pw, ph)) = last.unwrap();
        // How close the copy decodes to the pixels it was written from (no protection here).
        let (a, b) = (imageio::read(file, &settings).unwrap(), imageio::read(&w.path, &settings).unwrap());
        let psnr = veil::quality::psnr(&a.pixels, &b.pixels).unwrap();
        println!(
            "{label} {pw}×{ph} round trip (read + write, q95 {chroma:?}, jpeg_parallel {parallel}): median {:.3} s (min {:.3}, max {:.3}); {} -> {} bytes, PSNR {psnr:.2} dB",
            times[2], times[0], times[4], w.input_bytes, w.bytes
        );
    }
}

/// With `--features heic` (system libheif): every HEIC sample decodes upright and is written as a JPEG
/// that keeps its EXIF, field for field, with Orientation 1 (libheif already applied the rotation).
#[cfg(feature = "heic")]
#[test]
fn heic_samples_decode_and_keep_their_exif() {
    let Some(dir) = samples() else { return };
    let out = tempfile::tempdir().unwrap();
    let settings = Settings::default();
    let mut n = 0;
    let mut files = Vec::new();
    walk(&dir.join("heic"), &mut files);
    for src in files {
        let photo = imageio::read(&src, &settings).unwrap_or_else(|e| panic!("{e}"));
        let (w, h) = photo.pixels.dimensions();
        assert!(w > 0 && h > 0);
        let name = src.file_name().unwrap().to_str().unwrap();
        let written = imageio::write(&photo, out.path(), name, None, &settings).unwrap();
        assert_eq!(written.path.extension().unwrap(), "jpg", "{}", written.path.display());
        let back = imageio::read(&written.path, &settings).unwrap();
        assert_eq!(back.pixels.dimensions(), (w, h));
        let fields = |p: &Path| -> Vec<(String, String)> {
            let Ok(exif) = exif::Reader::new()
                .read_from_container(&mut std::io::BufReader::new(std::fs::File::open(p).unwrap()))
            else {
                return Vec::new();
            };
            let mut v: Vec<(String, String)> = exif
                .fields()
                .filter(|f| f.ifd_num == exif::In::PRIMARY && f.tag != exif::Tag::Orientation)
                .map(|f| (f.tag.to_string(), f.display_value().to_string()))
                .collect();
            v.sort();
            v
        };
        let (before, after) = (fields(&src), fields(&written.path));
        assert_eq!(before, after, "{}", src.display());
        if let Some(o) = exif::Reader::new()
            .read_from_container(&mut std::io::BufReader::new(std::fs::File::open(&written.path).unwrap()))
            .ok()
            .and_then(|e| {
                e.get_field(exif::Tag::Orientation, exif::In::PRIMARY).and_then(|f| f.value.get_uint(0))
            })
        {
            assert_eq!(o, 1, "{}", written.path.display());
        }
        n += 1;
    }
    assert!(n >= 5, "only {n} HEIC samples");
}
