//! Unit tests on synthetic files (the real camera files are walked in `tests/imageio.rs`).

use super::*;
use tiffmeta::{OutEntry, OutValue};

fn gradient(w: u32, h: u32) -> RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, ((x + y) % 256) as u8]))
}

/// An EXIF blob (little-endian): Orientation, Make, a GPS IFD, and IFD1 with a JPEG thumbnail.
fn exif_blob_with(orientation: u16, thumb: &[u8]) -> Vec<u8> {
    let le = true;
    let mut b = tiffmeta::header(le);
    let gps = vec![
        OutEntry { tag: 1, typ: 2, count: 2, value: OutValue::Bytes(b"N\0".to_vec()) },
        OutEntry {
            tag: 2,
            typ: 5,
            count: 3,
            value: OutValue::Bytes(
                [48u32, 1, 51, 1, 2921, 100].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        },
    ];
    let ifd0 = vec![
        OutEntry { tag: 0x010f, typ: 2, count: 8, value: OutValue::Bytes(b"VeilCam\0".to_vec()) },
        OutEntry {
            tag: 0x0112,
            typ: 3,
            count: 1,
            value: OutValue::Bytes(orientation.to_le_bytes().to_vec()),
        },
        OutEntry { tag: 0x8825, typ: 4, count: 1, value: OutValue::Ifd(gps) },
    ];
    let p0 = tiffmeta::write_ifd(&mut b, &ifd0, le, &mut Vec::new());
    tiffmeta::set_ifd0(&mut b, p0, le);
    let ifd1 = vec![
        OutEntry { tag: 0x0201, typ: 4, count: 1, value: OutValue::Bytes(0u32.to_le_bytes().to_vec()) },
        OutEntry {
            tag: 0x0202,
            typ: 4,
            count: 1,
            value: OutValue::Bytes((thumb.len() as u32).to_le_bytes().to_vec()),
        },
    ];
    let p1 = tiffmeta::write_ifd(&mut b, &ifd1, le, &mut Vec::new());
    let next = Tiff::new(&b).unwrap().ifd(p0).unwrap().next_ptr_pos;
    tiffmeta::set_u32(&mut b, next, p1 as u32, le);
    let at = b.len() as u32;
    let e = Tiff::new(&b).unwrap().ifd(p1).unwrap().entries[0].pos;
    tiffmeta::set_u32(&mut b, e + 8, at, le);
    b.extend_from_slice(thumb);
    b
}

/// A JPEG whose stored pixels are `stored`, with EXIF (orientation), XMP, ICC, IPTC and a comment.
fn camera_jpeg(stored: &RgbImage, orientation: u16) -> Vec<u8> {
    let thumb = encode_jpeg(&image::imageops::thumbnail(stored, 16, 12), 80, Chroma::Half, false).unwrap();
    let enc = encode_jpeg(stored, 92, Chroma::Half, false).unwrap();
    let carried = vec![
        (jpeg::APP1, [jpeg::EXIF_ID, &exif_blob_with(orientation, &thumb)].concat()),
        (jpeg::APP1, [jpeg::XMP_ID, b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"].concat()),
        (jpeg::APP2, [jpeg::ICC_ID, &[1, 1], &[0x42; 600]].concat()),
        (0xED, b"Photoshop 3.0\08BIM\x04\x04\0\0\0\0\0\x05\x1c\x02\x05\0\x01x".to_vec()),
        (jpeg::COM, b"a comment".to_vec()),
    ];
    jpeg::splice(&enc, &carried).unwrap()
}

fn header_segments(data: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let l = jpeg::parse(data).unwrap();
    l.header()
        .filter(|s| (0xE0..=0xEF).contains(&s.marker) || s.marker == jpeg::COM)
        .map(|s| (s.marker, data[s.payload.clone()].to_vec()))
        .collect()
}

fn exif_fields(tiff: &[u8]) -> Vec<String> {
    let exif = exif::Reader::new().read_raw(tiff.to_vec()).unwrap();
    exif.fields()
        .filter(|f| f.ifd_num == exif::In::PRIMARY)
        .map(|f| format!("{} {} {:?}", f.tag, f.ifd_num, f.value))
        .collect()
}

#[test]
fn jpeg_round_trip_keeps_every_segment_and_orientation() {
    let d = tempfile::tempdir().unwrap();
    let stored = gradient(64, 48);
    let src = d.path().join("cam.jpg");
    std::fs::write(&src, camera_jpeg(&stored, 6)).unwrap();
    let s = Settings::default();
    let mut photo = read(&src, &s).unwrap();
    assert_eq!((photo.format, photo.orientation), (Format::Jpeg, 6));
    // Orientation 6: stored 64×48 is shown 48×64.
    assert_eq!(photo.pixels.dimensions(), (48, 64));
    for p in photo.pixels.pixels_mut() {
        p[0] = p[0].saturating_add(3);
    }
    let out = tempfile::tempdir().unwrap();
    let w = write(&photo, out.path(), "cam.jpg", None, &s).unwrap();
    assert_eq!(w.path, out.path().join("cam.jpg"));
    assert_eq!(w.input_bytes, std::fs::metadata(&src).unwrap().len());
    let written = std::fs::read(&w.path).unwrap();
    assert_eq!(w.bytes, written.len() as u64);

    let (before, after) = (header_segments(&std::fs::read(&src).unwrap()), header_segments(&written));
    assert_eq!(before.len(), after.len());
    for ((m0, p0), (m1, p1)) in before.iter().zip(&after) {
        assert_eq!(m0, m1);
        if p0.starts_with(jpeg::EXIF_ID) {
            // Every tag as it was; the thumbnail regenerated (so different bytes), still a JPEG.
            assert_eq!(exif_fields(&p0[6..]), exif_fields(&p1[6..]));
            let th = tiffmeta::thumbnail(&p1[6..]).1.unwrap();
            assert_eq!(jpeg::dimensions(&p1[6 + th.offset..6 + th.offset + th.len]), Some((16, 12)));
            assert_ne!(p0, p1);
        } else {
            assert_eq!(p0, p1, "segment {m0:#x} changed");
        }
    }
    // Stored orientation unchanged: the output is 64×48 stored, shown upright as the new pixels.
    let again = read(&w.path, &s).unwrap();
    assert_eq!(again.orientation, 6);
    assert_eq!(again.pixels.dimensions(), (48, 64));
    let diff = again
        .pixels
        .pixels()
        .zip(photo.pixels.pixels())
        .map(|(a, b)| (a[0] as i32 - b[0] as i32).abs())
        .max();
    assert!(diff.unwrap() <= 12, "{diff:?}");
}

#[test]
fn keep_no_gps_removes_only_gps_and_strip_removes_all_but_colour() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("cam.jpg");
    std::fs::write(&src, camera_jpeg(&gradient(32, 32), 3)).unwrap();
    let photo = read(&src, &Settings::default()).unwrap();
    let s = Settings { metadata: MetadataPolicy::KeepNoGps, ..Settings::default() };
    let w = write(&photo, d.path(), "cam.jpg", None, &s).unwrap();
    assert_eq!(w.path, d.path().join("cam (1).jpg"));
    let segs = header_segments(&std::fs::read(&w.path).unwrap());
    let exif = segs.iter().find(|(_, p)| p.starts_with(jpeg::EXIF_ID)).unwrap();
    let fields = exif_fields(&exif.1[6..]);
    assert!(fields.iter().any(|f| f.starts_with("Make")), "{fields:?}");
    assert!(fields.iter().any(|f| f.starts_with("Orientation")), "{fields:?}");
    assert!(!fields.iter().any(|f| f.starts_with("GPS")), "{fields:?}");
    assert_eq!(segs.len(), header_segments(&std::fs::read(&src).unwrap()).len());

    let s = Settings { metadata: MetadataPolicy::Strip, ..Settings::default() };
    let w = write(&photo, d.path(), "cam.jpg", None, &s).unwrap();
    let segs = header_segments(&std::fs::read(&w.path).unwrap());
    assert!(segs.iter().all(|(m, p)| *m == jpeg::APP0 || p.starts_with(jpeg::ICC_ID)), "{segs:?}");
    assert!(segs.iter().any(|(_, p)| p.starts_with(jpeg::ICC_ID)));
    // Without the Orientation tag the pixels are written upright.
    let again = read(&w.path, &Settings::default()).unwrap();
    assert_eq!(again.orientation, 1);
    assert_eq!(again.pixels.dimensions(), photo.pixels.dimensions());
}

#[test]
fn jpeg_settings_quality_and_chroma_are_applied() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("cam.jpg");
    std::fs::write(&src, camera_jpeg(&gradient(64, 64), 1)).unwrap();
    let photo = read(&src, &Settings::default()).unwrap();
    let sampling = |p: &Path| {
        let data = std::fs::read(p).unwrap();
        let l = jpeg::parse(&data).unwrap();
        let sof = l.segments.iter().find(|s| s.marker == 0xC0 || s.marker == 0xC1).unwrap();
        data[sof.payload.start + 7]
    };
    let full = write(&photo, d.path(), "a.jpg", None, &Settings::default()).unwrap();
    assert_eq!(sampling(&full.path), 0x11);
    let s = Settings { jpeg_chroma: Chroma::Half, jpeg_quality: JpegQuality(60), ..Settings::default() };
    let half = write(&photo, d.path(), "b.jpg", None, &s).unwrap();
    assert_eq!(sampling(&half.path), 0x22);
    assert!(half.bytes < full.bytes);
    // Both copies read back, by `image`'s decoder too, as the photo (a 4:2:0 copy in one scan
    // per component would come back as garbage there).
    for (copy, tolerance) in [(&full.path, 2.0), (&half.path, 4.0)] {
        let back = image::open(copy).unwrap().to_rgb8();
        let err = mean_abs_diff(&photo.pixels, &back);
        assert!(err < tolerance, "{}: mean |error| {err:.2} levels", copy.display());
    }
}

#[test]
fn cmyk_jpeg_decodes_and_drops_its_cmyk_profile() {
    let d = tempfile::tempdir().unwrap();
    let mut enc_out = Vec::new();
    let cmyk: Vec<u8> = (0..16 * 16).flat_map(|i| [(i % 255) as u8, 30, 60, 10]).collect();
    jpeg_encoder::Encoder::new(&mut enc_out, 90)
        .encode(&cmyk, 16, 16, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    let data = {
        let l = jpeg::parse(&enc_out).unwrap();
        let mut carried: Vec<(u8, Vec<u8>)> = l
            .header()
            .filter(|s| s.marker == jpeg::APP14)
            .map(|s| (s.marker, enc_out[s.payload.clone()].to_vec()))
            .collect();
        carried.push((jpeg::APP2, [jpeg::ICC_ID, &[1, 1], &[7; 100]].concat()));
        jpeg::splice(&enc_out, &carried).unwrap()
    };
    let src = d.path().join("cmyk.jpg");
    std::fs::write(&src, data).unwrap();
    let photo = read(&src, &Settings::default()).unwrap();
    assert_eq!(photo.pixels.dimensions(), (16, 16));
    let w = write(&photo, d.path(), "cmyk.jpg", None, &Settings::default()).unwrap();
    let segs = header_segments(&std::fs::read(&w.path).unwrap());
    assert!(!segs.iter().any(|(m, p)| *m == jpeg::APP14 || p.starts_with(jpeg::ICC_ID)), "{segs:?}");
}

#[test]
fn a_thumbnail_of_another_shape_is_regenerated_in_the_photos_shape() {
    // A 40×64 photo whose EXIF thumbnail is 16×12 (a spliced file): the new one is 10×16, not the
    // photo squashed into 16×12; one of the same shape keeps its size (the camera test above).
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("tall.jpg");
    std::fs::write(&src, camera_jpeg(&gradient(40, 64), 1)).unwrap();
    let photo = read(&src, &Settings::default()).unwrap();
    let w = write(&photo, d.path(), "tall.jpg", None, &Settings::default()).unwrap();
    let segs = header_segments(&std::fs::read(&w.path).unwrap());
    let (_, exif) = segs.iter().find(|(_, p)| p.starts_with(jpeg::EXIF_ID)).unwrap();
    let th = tiffmeta::thumbnail(&exif[6..]).1.unwrap();
    assert_eq!(jpeg::dimensions(&exif[6 + th.offset..6 + th.offset + th.len]), Some((10, 16)));
}

#[test]
fn truncated_jpeg_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let data = camera_jpeg(&gradient(64, 64), 1);
    let src = d.path().join("cut.jpg");
    std::fs::write(&src, &data[..data.len() * 2 / 3]).unwrap();
    let err = read(&src, &Settings::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cut.jpg") && msg.contains("truncated JPEG"), "{msg}");
    // What a file still being written looks like (veild tries it again), unlike a broken one.
    assert!(err.may_be_incomplete());
    let png = png_file(&DynamicImage::ImageRgb8(gradient(12, 8)), &[]);
    let cut = decode_bytes(Path::new("cut.png"), png[..png.len() - 20].to_vec(), &Settings::default());
    assert!(cut.unwrap_err().may_be_incomplete());
    assert!(decode_bytes(Path::new("empty.jpg"), Vec::new(), &Settings::default())
        .unwrap_err()
        .may_be_incomplete());
    let text = decode_bytes(Path::new("text.jpg"), b"not a photo".to_vec(), &Settings::default());
    assert!(!text.unwrap_err().may_be_incomplete());
}

#[test]
fn progressive_jpeg_and_grey_png_read_and_write() {
    let d = tempfile::tempdir().unwrap();
    let img = gradient(40, 24);
    let mut prog = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut prog, 90);
    enc.set_progressive(true);
    enc.encode(img.as_raw(), 40, 24, jpeg_encoder::ColorType::Rgb).unwrap();
    assert!(jpeg::parse(&prog).unwrap().frame.unwrap().progressive);
    let photo = decode_bytes(Path::new("p.jpg"), prog, &Settings::default()).unwrap();
    assert_eq!(photo.pixels.dimensions(), (40, 24));
    let w = write(&photo, d.path(), "p.jpg", None, &Settings::default()).unwrap();
    assert_eq!(image::image_dimensions(&w.path).unwrap(), (40, 24));

    let grey = DynamicImage::ImageLuma8(ImageBuffer::from_fn(20, 10, |x, y| Luma([(x * 10 + y) as u8])));
    let photo = decode_bytes(Path::new("g.png"), png_file(&grey, &[]), &Settings::default()).unwrap();
    let w = write(&photo, d.path(), "g.png", None, &Settings::default()).unwrap();
    // Lossless: the grey values come back exactly (as RGB).
    assert_eq!(image::open(&w.path).unwrap().to_luma8(), grey.to_luma8());
}

/// The layout a written file holds (channels, bits), read back by the `image` crate.
fn written_color(path: &Path) -> image::ColorType {
    image::open(path).unwrap().color()
}

#[test]
fn a_grey_photo_is_written_with_one_channel() {
    let d = tempfile::tempdir().unwrap();
    let luma = ImageBuffer::from_fn(40, 24, |x, y| Luma([(x * 6 + y) as u8]));
    let grey = DynamicImage::ImageLuma8(luma.clone());
    let mut grey_jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut grey_jpeg, 90)
        .encode(luma.as_raw(), 40, 24, jpeg_encoder::ColorType::Luma)
        .unwrap();
    let deep =
        DynamicImage::ImageLuma16(ImageBuffer::from_fn(40, 24, |x, y| Luma([(x * 1500 + y * 7) as u16])));
    let with_alpha = DynamicImage::ImageLumaA8(ImageBuffer::from_fn(40, 24, |x, y| {
        image::LumaA([(x * 6) as u8, (y * 10) as u8])
    }));
    let cases = [
        ("g.jpg", grey_jpeg, image::ColorType::L8),
        ("g.png", png_file(&grey, &[]), image::ColorType::L8),
        ("d.png", png_file(&deep, &[]), image::ColorType::L16),
        ("a.png", png_file(&with_alpha, &[]), image::ColorType::La8),
        ("g.tiff", encode_tiff(&grey, true, Vec::new()).unwrap(), image::ColorType::L8),
        ("d.tiff", encode_tiff(&deep, false, Vec::new()).unwrap(), image::ColorType::L16),
    ];
    for (name, data, color) in cases {
        let mut photo = decode_bytes(Path::new(name), data, &Settings::default()).unwrap();
        // A grey change (what the protection makes of a grey face) keeps it grey.
        for p in photo.pixels.pixels_mut() {
            let v = p[0].saturating_add(3);
            *p = Rgb([v; 3]);
        }
        let w = write(&photo, d.path(), name, None, &Settings::default()).unwrap();
        assert_eq!(written_color(&w.path), color, "{name}");
        let back = read(&w.path, &Settings::default()).unwrap();
        let err = back.pixels.pixels().zip(photo.pixels.pixels()).map(|(a, b)| a[0].abs_diff(b[0])).max();
        let tolerance = if name.ends_with(".jpg") { 4 } else { 0 };
        assert!(err.unwrap() <= tolerance, "{name}: pixels changed by up to {err:?}");
        // WebP has no grey layout; a copy in colour is written in colour.
        let webp = write(&photo, d.path(), name, Some(Format::Webp), &Settings::default()).unwrap();
        assert!(written_color(&webp.path).has_color(), "{name} as WebP");
        photo.pixels.put_pixel(3, 3, Rgb([200, 10, 10]));
        let colour = write(&photo, d.path(), name, None, &Settings::default()).unwrap();
        assert!(written_color(&colour.path).has_color(), "{name} with a coloured pixel");
    }
    // A grey ICC profile stays with a one-channel copy, and is not put into an RGB WebP.
    let mut profile = vec![0u8; 128];
    profile[16..20].copy_from_slice(b"GRAY");
    let src = png_file(&grey, &[(b"iCCP", png::iccp_data(&profile))]);
    let photo = decode_bytes(Path::new("icc.png"), src, &Settings::default()).unwrap();
    let png_copy = write(&photo, d.path(), "icc.png", None, &Settings::default()).unwrap();
    let data = std::fs::read(&png_copy.path).unwrap();
    assert!(png::parse(&data).unwrap().iter().any(|c| &c.kind == b"iCCP"));
    let webp_copy = write(&photo, d.path(), "icc.png", Some(Format::Webp), &Settings::default()).unwrap();
    let data = std::fs::read(&webp_copy.path).unwrap();
    assert!(!webp::parse(&data).unwrap().iter().any(|c| &c.kind == b"ICCP"));
}

#[test]
fn a_tiff_with_premultiplied_alpha_is_read_with_straight_colours() {
    // (200,160,120) at alpha 180, stored premultiplied: (141,113,85).
    let img = DynamicImage::ImageRgba8(ImageBuffer::from_pixel(6, 4, Rgba([141, 113, 85, 180])));
    let mut data = encode_tiff(&img, true, Vec::new()).unwrap();
    let t = Tiff::new(&data).unwrap();
    let extra = t.find(&t.ifd(t.ifd0_offset().unwrap()).unwrap(), 338).unwrap().value_pos;
    data[extra..extra + 2].copy_from_slice(&1u16.to_le_bytes());
    let photo = decode_bytes(Path::new("a.tiff"), data, &Settings::default()).unwrap();
    assert_eq!(photo.pixels.get_pixel(2, 2).0, [200, 160, 120]);
    // Written with straight alpha (ExtraSamples 2), the same colours.
    let d = tempfile::tempdir().unwrap();
    let w = write(&photo, d.path(), "a.tiff", None, &Settings::default()).unwrap();
    assert_eq!(image::open(&w.path).unwrap().to_rgba8().get_pixel(2, 2).0, [200, 160, 120, 180]);
}

#[test]
fn an_animated_png_is_refused_by_name() {
    let still = png_file(&DynamicImage::ImageRgb8(gradient(12, 8)), &[]);
    // acTL: 2 frames, played once (an APNG's other frames follow as fcTL/fdAT chunks).
    let actl = [2u32.to_be_bytes(), 0u32.to_be_bytes()].concat();
    let apng = png_file(&DynamicImage::ImageRgb8(gradient(12, 8)), &[(b"acTL", actl)]);
    assert!(decode_bytes(Path::new("still.png"), still, &Settings::default()).is_ok());
    let e = decode_bytes(Path::new("moving.png"), apng, &Settings::default()).unwrap_err();
    assert!(matches!(e, ImageError::Unsupported { .. }), "{e}");
    assert!(e.to_string().starts_with("moving.png: unsupported format: animated PNG"), "{e}");
}

#[test]
fn twelve_bit_jpeg_is_a_clear_error() {
    let mut data = camera_jpeg(&gradient(16, 16), 1);
    let l = jpeg::parse(&data).unwrap();
    let sof = l.segments.iter().find(|s| s.marker == 0xC0).unwrap().payload.start;
    data[sof] = 12;
    let err = decode_bytes(Path::new("deep.jpg"), data, &Settings::default()).unwrap_err();
    assert!(matches!(err, ImageError::Unsupported { .. }), "{err}");
    assert!(err.to_string().starts_with("deep.jpg: unsupported format: 12-bit JPEG"), "{err}");
}

#[test]
fn limits_are_checked_from_the_header() {
    // A 100000×100000 PNG in a few dozen bytes: rejected before any pixel buffer exists.
    let mut bomb = png::SIGNATURE.to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png::put_chunk(&mut bomb, b"IHDR", &ihdr);
    png::put_chunk(&mut bomb, b"IDAT", &[0x78, 0x9c, 0x03, 0, 0, 0, 0, 1]);
    png::put_chunk(&mut bomb, b"IEND", &[]);
    let err = decode_bytes(Path::new("bomb.png"), bomb, &Settings::default()).unwrap_err();
    assert!(matches!(err, ImageError::TooManyPixels { width: 100_000, height: 100_000, .. }), "{err}");
    assert!(err.to_string().contains("imageio.max_pixels"), "{err}");

    let data = camera_jpeg(&gradient(64, 64), 1);
    let s = Settings { max_pixels: 64 * 63, ..Settings::default() };
    assert!(matches!(
        decode_bytes(Path::new("a.jpg"), data.clone(), &s),
        Err(ImageError::TooManyPixels { .. })
    ));
    let s = Settings { max_file_bytes: data.len() as u64 - 1, ..Settings::default() };
    assert!(matches!(decode_bytes(Path::new("a.jpg"), data, &s), Err(ImageError::FileTooLarge { .. })));
}

#[test]
fn a_video_too_large_to_read_is_no_photo_and_a_photo_too_large_is_refused_as_such() {
    let d = tempfile::tempdir().unwrap();
    let settings = Settings { max_file_bytes: 1000, ..Settings::default() };
    let mut video = b"\0\0\0\x20ftypmp42\0\0\0\0mp42isom".to_vec();
    video.resize(5000, 7);
    std::fs::write(d.path().join("clip.mp4"), &video).unwrap();
    let e = read(&d.path().join("clip.mp4"), &settings).unwrap_err();
    assert!(matches!(e, ImageError::NotAPhoto { .. }), "{e}");
    assert!(e
        .to_string()
        .ends_with("clip.mp4: a video (MP4/QuickTime), not a photo (Veil protects photos only)"));
    let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0];
    jpeg.resize(5000, 0);
    std::fs::write(d.path().join("big.jpg"), &jpeg).unwrap();
    let e = read_in_folder(d.path(), &d.path().join("big.jpg"), &settings).unwrap_err();
    assert!(matches!(e, ImageError::FileTooLarge { size: 5000, max: 1000, .. }), "{e}");
}

#[test]
fn heic_and_unknown_formats_are_clear_errors() {
    let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic".to_vec();
    let err = decode_bytes(Path::new("x.heic"), heic, &Settings::default()).unwrap_err();
    if cfg!(feature = "heic") {
        // libheif reads the header and finds the file truncated.
        assert!(
            matches!(err, ImageError::Corrupt { .. }) && err.to_string().starts_with("x.heic: "),
            "{err}"
        );
    } else {
        assert!(
            err.to_string().starts_with("x.heic: HEIC/HEIF is not supported by this build (export")
                && err.to_string().contains("install libheif-dev"),
            "{err}"
        );
    }
    let avif = b"\0\0\0\x18ftypavif\0\0\0\0mif1avif".to_vec();
    let err = decode_bytes(Path::new("x.avif"), avif, &Settings::default()).unwrap_err();
    if cfg!(feature = "heic") {
        assert!(err.to_string().starts_with("x.avif: "), "{err}");
    } else {
        assert!(err.to_string().contains("AVIF (this build cannot read it: it has no libheif"), "{err}");
    }
    let err = decode_bytes(Path::new("x.gif"), b"GIF89a....".to_vec(), &Settings::default()).unwrap_err();
    assert!(err.to_string().contains("unsupported format: GIF"), "{err}");
    let err = decode_bytes(Path::new("e.jpg"), Vec::new(), &Settings::default()).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}

fn png_file(img: &DynamicImage, extra: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut enc = Vec::new();
    img.write_with_encoder(image::codecs::png::PngEncoder::new(&mut enc)).unwrap();
    let carried: Vec<png::Carried> = extra.iter().map(|(k, d)| png::Carried::New(**k, d.clone())).collect();
    png::splice(&enc, &carried).unwrap()
}

#[test]
fn png_16_bit_alpha_round_trip_keeps_chunks_and_untouched_pixels() {
    let (w, h) = (40u32, 30u32);
    let img = DynamicImage::ImageRgba16(ImageBuffer::from_fn(w, h, |x, y| {
        Rgba([(x * 1637) as u16, (y * 2111) as u16, 40_000 + x as u16, (x * y * 50) as u16])
    }));
    let thumb = encode_jpeg(&gradient(8, 6), 80, Chroma::Half, false).unwrap();
    let extra = [
        (b"iCCP", png::iccp_data(&[5; 400])),
        (b"eXIf", exif_blob_with(1, &thumb)),
        (b"tEXt", b"Author\0Ann".to_vec()),
        (b"iTXt", png::xmp_data(b"<x:xmpmeta/>")),
        (b"pHYs", vec![0, 0, 11, 19, 0, 0, 11, 19, 1]),
    ];
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("deep.png");
    std::fs::write(&src, png_file(&img, &extra)).unwrap();
    let mut photo = read(&src, &Settings::default()).unwrap();
    assert_eq!(photo.format, Format::Png);
    photo.pixels.put_pixel(0, 0, Rgb([1, 2, 3]));
    let w_ = write(&photo, d.path(), "deep.png", None, &Settings::default()).unwrap();
    let out = std::fs::read(&w_.path).unwrap();
    let chunks = png::parse(&out).unwrap();
    let orig = std::fs::read(&src).unwrap();
    let orig_chunks = png::parse(&orig).unwrap();
    for (k, _) in &extra {
        let a = orig_chunks.iter().find(|c| &c.kind == *k).unwrap();
        let b = chunks.iter().find(|c| &c.kind == *k).unwrap();
        if *k == b"eXIf" {
            assert_eq!(exif_fields(&orig[a.data.clone()]), exif_fields(&out[b.data.clone()]));
        } else {
            assert_eq!(orig[a.raw.clone()], out[b.raw.clone()], "{}", String::from_utf8_lossy(*k));
        }
    }
    let back = image::load_from_memory(&out).unwrap();
    let (orig16, back16) = (img.to_rgba16(), back.to_rgba16());
    assert!(matches!(back, DynamicImage::ImageRgba16(_)));
    assert_eq!(back16.get_pixel(0, 0).0, [257, 514, 771, 0]);
    for (x, y, p) in orig16.enumerate_pixels().skip(1) {
        assert_eq!(back16.get_pixel(x, y), p, "({x},{y})");
    }
}

#[test]
fn webp_round_trip_keeps_exif_icc_xmp() {
    let img = DynamicImage::ImageRgb8(gradient(30, 20));
    let mut enc = Vec::new();
    img.write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut enc)).unwrap();
    let exif = exif_blob_with(8, &encode_jpeg(&gradient(8, 6), 80, Chroma::Half, false).unwrap());
    let carried = vec![(*b"ICCP", vec![9; 300]), (*b"EXIF", exif.clone()), (*b"XMP ", b"<x/>".to_vec())];
    let data = webp::splice(&enc, &carried, 30, 20, false).unwrap();
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("a.webp");
    std::fs::write(&src, &data).unwrap();
    let photo = read(&src, &Settings::default()).unwrap();
    assert_eq!((photo.orientation, photo.pixels.dimensions()), (8, (20, 30)));
    let w = write(&photo, d.path(), "a.webp", None, &Settings::default()).unwrap();
    let out = std::fs::read(&w.path).unwrap();
    let chunks = webp::parse(&out).unwrap();
    let get = |k: &[u8; 4]| chunks.iter().find(|c| &c.kind == k).map(|c| out[c.data.clone()].to_vec());
    assert_eq!(get(b"ICCP"), Some(vec![9; 300]));
    assert_eq!(get(b"XMP "), Some(b"<x/>".to_vec()));
    assert_eq!(exif_fields(&get(b"EXIF").unwrap()), exif_fields(&exif));
    // Lossless: the stored pixels come back exactly.
    assert_eq!(image::load_from_memory(&out).unwrap().to_rgb8(), img.to_rgb8());
}

#[test]
fn tiff_round_trip_keeps_tags() {
    let img = DynamicImage::ImageRgb8(gradient(30, 20));
    let blob = exif_blob_with(1, &[]);
    let t = Tiff::new(&blob).unwrap();
    let mut entries = tiffmeta::copy_ifd(&t, t.ifd0_offset().unwrap(), &|_| false, 0);
    entries.push(OutEntry { tag: TIFF_ICC, typ: 7, count: 50, value: OutValue::Bytes(vec![3; 50]) });
    let data = encode_tiff(&img, true, entries).unwrap();
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("a.tiff");
    std::fs::write(&src, &data).unwrap();
    let photo = read(&src, &Settings::default()).unwrap();
    assert_eq!(photo.pixels, img.to_rgb8());
    assert_eq!(photo.meta.icc.as_deref(), Some(&[3u8; 50][..]));
    let w = write(&photo, d.path(), "a.tiff", None, &Settings::default()).unwrap();
    let fields = |p: &Path| {
        let mut r = std::io::BufReader::new(std::fs::File::open(p).unwrap());
        let e = exif::Reader::new().read_from_container(&mut r).unwrap();
        let mut v: Vec<String> = e
            .fields()
            .filter(|f| !structural_tiff_tag(f.tag.number()))
            .map(|f| format!("{} {:?}", f.tag, f.value))
            .collect();
        v.sort();
        v
    };
    let (a, b) = (fields(&src), fields(&w.path));
    assert!(
        a.iter().any(|f| f.starts_with("Make")) && a.iter().any(|f| f.starts_with("GPSLatitude")),
        "{a:?}"
    );
    assert_eq!(a, b);
    assert_eq!(image::open(&w.path).unwrap().to_rgb8(), img.to_rgb8());
}

#[test]
fn other_output_format_carries_exif_icc_xmp() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("cam.jpg");
    std::fs::write(&src, camera_jpeg(&gradient(32, 24), 6)).unwrap();
    let photo = read(&src, &Settings::default()).unwrap();
    let original_exif = photo.meta.exif.clone().unwrap();
    for format in [Format::Png, Format::Webp, Format::Tiff] {
        let w = write(&photo, d.path(), "cam.jpg", Some(format), &Settings::default()).unwrap();
        assert_eq!(w.path.extension().unwrap(), format.extension());
        let again = read(&w.path, &Settings::default()).unwrap();
        assert_eq!(again.format, format);
        assert_eq!(again.orientation, 6, "{format}");
        assert_eq!(again.pixels.dimensions(), (24, 32), "{format}");
        assert_eq!(again.meta.icc.as_deref(), Some(&[0x42; 600][..]), "{format}");
        assert!(again.meta.xmp.is_some(), "{format}");
        let keep: Vec<String> = exif_fields(&original_exif);
        let got = exif_fields(again.meta.exif.as_deref().unwrap());
        for f in &keep {
            assert!(got.contains(f), "{format}: {f} missing from {got:?}");
        }
    }
}

#[test]
fn a_transparent_png_written_as_jpeg_is_flattened_onto_white() {
    let d = tempfile::tempdir().unwrap();
    // Left third opaque red, middle half-transparent red, right third transparent with black under it.
    let img = image::RgbaImage::from_fn(48, 16, |x, _| match x {
        0..16 => image::Rgba([200, 0, 0, 255]),
        16..32 => image::Rgba([200, 0, 0, 128]),
        _ => image::Rgba([0, 0, 0, 0]),
    });
    let path = d.path().join("logo.png");
    std::fs::write(&path, png_file(&DynamicImage::ImageRgba8(img), &[])).unwrap();
    let photo = read(&path, &Settings::default()).unwrap();
    let w = write(&photo, d.path(), "logo.png", Some(Format::Jpeg), &Settings::default()).unwrap();
    // Read back by Veil's reader: a small JPEG is written one scan per component, which `image`
    // alone misreads.
    let out = read(&w.path, &Settings::default()).unwrap().pixels;
    let at = |x: u32| out.get_pixel(x, 8).0.map(i32::from);
    let near = |got: [i32; 3], want: [i32; 3]| got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 6);
    assert!(near(at(8), [200, 0, 0]), "opaque: {:?}", at(8));
    assert!(near(at(24), [227, 127, 127]), "half: {:?}", at(24));
    assert!(near(at(40), [255, 255, 255]), "transparent: {:?}", at(40));
    // A grey one stays one grey channel.
    let grey = image::GrayAlphaImage::from_fn(16, 16, |x, _| image::LumaA([60, if x < 8 { 255 } else { 0 }]));
    std::fs::write(d.path().join("g.png"), png_file(&DynamicImage::ImageLumaA8(grey), &[])).unwrap();
    let photo = read(&d.path().join("g.png"), &Settings::default()).unwrap();
    let w = write(&photo, d.path(), "g.png", Some(Format::Jpeg), &Settings::default()).unwrap();
    assert_eq!(written_color(&w.path), image::ColorType::L8);
    let out = read(&w.path, &Settings::default()).unwrap().pixels;
    let (left, right) = (out.get_pixel(2, 8)[0], out.get_pixel(13, 8)[0]);
    assert!(left.abs_diff(60) <= 4 && right >= 250, "{left} {right}");
}

#[test]
fn a_comment_crosses_between_jpeg_and_png() {
    let d = tempfile::tempdir().unwrap();
    // The camera JPEG's COM segment becomes a PNG `Comment` text chunk, and back.
    let src = d.path().join("cam.jpg");
    std::fs::write(&src, camera_jpeg(&gradient(32, 24), 1)).unwrap();
    let photo = read(&src, &Settings::default()).unwrap();
    let w = write(&photo, d.path(), "cam.jpg", Some(Format::Png), &Settings::default()).unwrap();
    let out = std::fs::read(&w.path).unwrap();
    let texts: Vec<(&[u8], &[u8])> = png::parse(&out)
        .unwrap()
        .into_iter()
        .filter(|c| !matches!(&c.kind, b"IHDR" | b"IDAT" | b"IEND" | b"iCCP" | b"eXIf"))
        .map(|c| (&out[c.raw.start + 4..c.raw.start + 8], &out[c.data.clone()]))
        .collect();
    assert!(texts.contains(&(&b"tEXt"[..], &b"Comment\0a comment"[..])), "{texts:?}");
    let png_photo = read(&w.path, &Settings::default()).unwrap();
    let back = write(&png_photo, d.path(), "again.png", Some(Format::Jpeg), &Settings::default()).unwrap();
    let segs = header_segments(&std::fs::read(&back.path).unwrap());
    assert!(segs.contains(&(jpeg::COM, b"a comment".to_vec())), "{segs:?}");
    // A comment Latin-1 cannot hold goes into iTXt (UTF-8); zTXt and compressed iTXt are read too;
    // an old camera's Latin-1 COM is read as Latin-1.
    let zlib = |t: &[u8]| {
        use std::io::Write;
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(t).unwrap();
        e.finish().unwrap()
    };
    let cases: [(&[u8; 4], Vec<u8>, &str); 4] = [
        (b"iTXt", [&b"Comment\0\0\0\0\0"[..], "東京の海".as_bytes()].concat(), "東京の海"),
        (b"zTXt", [&b"Comment\0\0"[..], &zlib(b"caf\xe9")].concat(), "café"),
        (b"iTXt", [&b"Comment\0\x01\0en\0\0"[..], &zlib("Zürich".as_bytes())].concat(), "Zürich"),
        (b"tEXt", b"Title\0not a comment".to_vec(), ""),
    ];
    for (i, (kind, data, want)) in cases.into_iter().enumerate() {
        let src = png_file(&DynamicImage::ImageRgb8(gradient(12, 8)), &[(kind, data)]);
        let path = d.path().join(format!("t{i}.png"));
        std::fs::write(&path, src).unwrap();
        let photo = read(&path, &Settings::default()).unwrap();
        let w =
            write(&photo, d.path(), format!("t{i}.png"), Some(Format::Jpeg), &Settings::default()).unwrap();
        let coms: Vec<Vec<u8>> = header_segments(&std::fs::read(&w.path).unwrap())
            .into_iter()
            .filter(|(m, _)| *m == jpeg::COM)
            .map(|(_, p)| p)
            .collect();
        let expect: Vec<Vec<u8>> = if want.is_empty() { vec![] } else { vec![want.as_bytes().to_vec()] };
        assert_eq!(coms, expect, "case {i}");
        if i == 0 {
            // And back into PNG, still UTF-8.
            let again = read(&w.path, &Settings::default()).unwrap();
            let w = write(&again, d.path(), "t0b.png", Some(Format::Png), &Settings::default()).unwrap();
            let out = std::fs::read(&w.path).unwrap();
            let c = png::parse(&out).unwrap().into_iter().find(|c| &c.kind == b"iTXt").unwrap();
            assert_eq!(png::comment(b"iTXt", &out[c.data.clone()]).as_deref(), Some("東京の海"));
        }
    }
    let latin = jpeg::splice(
        &encode_jpeg(&gradient(16, 16), 90, Chroma::Half, false).unwrap(),
        &[(jpeg::COM, b"Kamera \xa9 2004".to_vec())],
    )
    .unwrap();
    std::fs::write(d.path().join("old.jpg"), latin).unwrap();
    let photo = read(&d.path().join("old.jpg"), &Settings::default()).unwrap();
    assert_eq!(photo.meta.comment.as_deref(), Some("Kamera © 2004"));
    // `strip` drops it, as every other description of the photo.
    let strip = Settings { metadata: MetadataPolicy::Strip, ..Settings::default() };
    let w = write(&photo, d.path(), "old.jpg", Some(Format::Png), &strip).unwrap();
    let out = std::fs::read(&w.path).unwrap();
    assert!(!png::parse(&out).unwrap().iter().any(|c| matches!(&c.kind, b"tEXt" | b"iTXt")));
}

#[test]
fn an_unchanged_jpeg_copy_is_the_original_up_to_its_end_and_other_copies_are_written_afresh() {
    let d = tempfile::tempdir().unwrap();
    let camera = camera_jpeg(&gradient(64, 48), 6);
    // A multi-picture index and a second image after EOI, as phones write them.
    let mut carried = header_segments(&camera);
    carried.insert(1, (jpeg::APP2, [jpeg::MPF_ID, b"MM\0*index"].concat()));
    let mut source = jpeg::splice(&camera, &carried).unwrap();
    source.extend_from_slice(&camera);
    let src = d.path().join("cam.jpg");
    std::fs::write(&src, &source).unwrap();
    let s = Settings::default();
    let photo = read(&src, &s).unwrap();

    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let w = write_unchanged(&photo, &out, "cam.jpg", None, &s).unwrap();
    let written = std::fs::read(&w.path).unwrap();
    assert_eq!((w.bytes, w.input_bytes), (written.len() as u64, source.len() as u64));
    // Every segment and the scan byte for byte, orientation and thumbnail included; no MPF index,
    // nothing after EOI.
    let no_mpf: Vec<(u8, Vec<u8>)> =
        header_segments(&source).into_iter().filter(|(_, p)| !p.starts_with(jpeg::MPF_ID)).collect();
    assert_eq!(header_segments(&written), no_mpf);
    assert_eq!(written, jpeg::unchanged(&source, &jpeg::parse(&source).unwrap()));
    assert!(written.len() < source.len() && source.starts_with(&written[..2]));
    assert_eq!(read(&w.path, &s).unwrap().pixels, photo.pixels);
    // The name rules and the never-clobber rule hold as for a protected copy.
    let again = write_unchanged(&photo, &out, "cam.jpg", None, &s).unwrap();
    assert_eq!(again.path, out.join("cam (1).jpg"));
    assert!(matches!(write_unchanged(&photo, &out, "../x.jpg", None, &s), Err(ImageError::BadName { .. })));

    // Stripped, in another format, or once the bytes are released: encoded afresh.
    let strip = Settings { metadata: MetadataPolicy::Strip, ..Settings::default() };
    let w = write_unchanged(&photo, &out, "strip.jpg", None, &strip).unwrap();
    assert_eq!(read(&w.path, &s).unwrap().orientation, 1, "strip writes upright pixels afresh");
    let w = write_unchanged(&photo, &out, "png.jpg", Some(Format::Png), &s).unwrap();
    assert_eq!(
        (read(&w.path, &s).unwrap().format, w.path.extension().unwrap()),
        (Format::Png, "png".as_ref())
    );
    let mut released = photo.clone();
    released.release_original();
    let w = write_unchanged(&released, &out, "released.jpg", None, &s).unwrap();
    assert_ne!(std::fs::read(&w.path).unwrap(), written);
    assert_eq!(read(&w.path, &s).unwrap().orientation, 6);
}

#[test]
fn an_unchanged_jpeg_copy_without_gps_keeps_the_scans_and_loses_every_coordinate() {
    let d = tempfile::tempdir().unwrap();
    // A camera file (EXIF with a GPS IFD, ICC, IPTC, a comment) with a GPS XMP packet, an extended
    // XMP part that mentions GPS, a multi-picture index and a second image after EOI.
    let camera = camera_jpeg(&gradient(64, 48), 6);
    let ext = [jpeg::XMP_EXT_ID, &[b'0'; 32], &[0, 0, 0, 12, 0, 0, 0, 0], b"exif:GPSDest"].concat();
    let mut carried: Vec<(u8, Vec<u8>)> =
        header_segments(&camera).into_iter().filter(|(_, p)| !p.starts_with(jpeg::XMP_ID)).collect();
    carried.insert(1, (jpeg::APP1, [jpeg::XMP_ID, GPS_XMP].concat()));
    carried.insert(2, (jpeg::APP1, ext));
    carried.insert(3, (jpeg::APP2, [jpeg::MPF_ID, b"MM\0*index"].concat()));
    let mut source = jpeg::splice(&camera, &carried).unwrap();
    source.extend_from_slice(&camera);
    let src = d.path().join("gps.jpg");
    std::fs::write(&src, &source).unwrap();
    let photo = read(&src, &Settings::default()).unwrap();
    let has_gps_ifd = |blob: &[u8]| {
        let t = Tiff::new(blob).unwrap();
        let ifd0 = t.ifd(t.ifd0_offset().unwrap()).unwrap();
        t.find(&ifd0, tiffmeta::GPS_IFD).is_some()
    };
    assert!(has_gps_ifd(photo.meta.exif.as_deref().unwrap()));
    assert!(exif_fields(photo.meta.exif.as_deref().unwrap()).iter().any(|f| f.contains("GPS")));

    let no_gps = Settings { metadata: MetadataPolicy::KeepNoGps, ..Settings::default() };
    let w = write_unchanged(&photo, d.path(), "out.jpg", None, &no_gps).unwrap();
    let written = std::fs::read(&w.path).unwrap();
    // The scans byte for byte (so the same pixels), nothing after EOI.
    let scans = |data: &[u8]| {
        let l = jpeg::parse(data).unwrap();
        let sos = l.segments.iter().find(|s| s.marker == jpeg::SOS).unwrap().marker_pos;
        data[sos..l.trailer].to_vec()
    };
    assert_eq!(scans(&written), scans(&source));
    assert_eq!(jpeg::parse(&written).unwrap().trailer, written.len());
    assert_eq!(read(&w.path, &Settings::default()).unwrap().pixels, photo.pixels);
    // No coordinates: no GPS IFD, an XMP packet without GPS, no extended XMP; no MPF index.
    let segs = header_segments(&written);
    let exif = &segs.iter().find(|(_, p)| p.starts_with(jpeg::EXIF_ID)).unwrap().1;
    assert!(!has_gps_ifd(&exif[jpeg::EXIF_ID.len()..]));
    assert!(!exif_fields(&exif[jpeg::EXIF_ID.len()..]).iter().any(|f| f.contains("GPS")));
    let xmp = &segs.iter().find(|(_, p)| p.starts_with(jpeg::XMP_ID)).unwrap().1;
    assert_no_gps_but_make(&xmp[jpeg::XMP_ID.len()..], "unchanged jpeg");
    assert!(!segs.iter().any(|(_, p)| p.starts_with(jpeg::XMP_EXT_ID) || p.starts_with(jpeg::MPF_ID)));
    // Every other segment as it was, in order; the same metadata as a copy written afresh has,
    // but for the regenerated thumbnail.
    let others = |segs: &[(u8, Vec<u8>)]| -> Vec<(u8, Vec<u8>)> {
        segs.iter()
            .filter(|(_, p)| !p.starts_with(jpeg::EXIF_ID) && !p.starts_with(jpeg::XMP_ID))
            .filter(|(_, p)| !p.starts_with(jpeg::XMP_EXT_ID) && !p.starts_with(jpeg::MPF_ID))
            .cloned()
            .collect()
    };
    assert_eq!(others(&segs), others(&header_segments(&source)));
    let afresh = write(&photo, d.path(), "afresh.jpg", None, &no_gps).unwrap();
    let fresh = header_segments(&std::fs::read(&afresh.path).unwrap());
    assert_eq!(others(&segs), others(&fresh));
    assert_eq!(xmp, &fresh.iter().find(|(_, p)| p.starts_with(jpeg::XMP_ID)).unwrap().1);
    let fresh_exif = &fresh.iter().find(|(_, p)| p.starts_with(jpeg::EXIF_ID)).unwrap().1;
    assert_eq!(exif_fields(&exif[6..]), exif_fields(&fresh_exif[6..]));

    // An EXIF thumbnail with metadata of its own (which could hold coordinates too): written afresh,
    // the thumbnail regenerated.
    let stored = gradient(64, 48);
    let small = encode_jpeg(&image::imageops::thumbnail(&stored, 16, 12), 80, Chroma::Half, false).unwrap();
    let thumb = jpeg::splice(&small, &[(jpeg::APP1, [jpeg::EXIF_ID, b"II*\0GPS"].concat())]).unwrap();
    let body = encode_jpeg(&stored, 92, Chroma::Half, false).unwrap();
    let nested =
        jpeg::splice(&body, &[(jpeg::APP1, [jpeg::EXIF_ID, &exif_blob_with(1, &thumb)].concat())]).unwrap();
    let src = d.path().join("nested.jpg");
    std::fs::write(&src, &nested).unwrap();
    let photo = read(&src, &Settings::default()).unwrap();
    let w = write_unchanged(&photo, d.path(), "nested.jpg", None, &no_gps).unwrap();
    let written = std::fs::read(&w.path).unwrap();
    assert_ne!(scans(&written), scans(&nested), "not written afresh");
    let exif = &header_segments(&written).into_iter().find(|(_, p)| p.starts_with(jpeg::EXIF_ID)).unwrap().1;
    assert!(!exif.windows(8).skip(6).any(|w| w == b"II*\0GPS"), "the thumbnail's own EXIF is still there");
}

#[test]
fn pixels_of_the_wrong_size_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("cam.jpg");
    std::fs::write(&src, camera_jpeg(&gradient(32, 24), 1)).unwrap();
    let mut photo = read(&src, &Settings::default()).unwrap();
    photo.pixels = gradient(10, 10);
    let err = write(&photo, d.path(), "out.jpg", None, &Settings::default()).unwrap_err();
    assert!(matches!(err, ImageError::PixelSize { .. }), "{err}");
    for bad in ["../out.jpg", "a/b.jpg", "", ".hidden.jpg", ".."] {
        let err = write(&photo, d.path(), bad, None, &Settings::default()).unwrap_err();
        assert!(matches!(err, ImageError::BadName { .. }), "{bad}: {err}");
    }
}

#[test]
fn settings_defaults() {
    let s = Settings::default();
    assert_eq!((s.max_pixels, s.max_file_bytes, s.jpeg_quality.get()), (100_000_000, 200_000_000, 95));
    assert_eq!((s.metadata, s.jpeg_chroma, s.replace_existing), (MetadataPolicy::Keep, Chroma::Full, false));
    assert!(JpegQuality::try_from(0).is_err() && JpegQuality::try_from(101).is_err());
    assert_eq!(output_name(OsStr::new("a.JPEG"), Format::Jpeg).unwrap(), "a.JPEG");
    assert_eq!(output_name(OsStr::new("a.png"), Format::Jpeg).unwrap(), "a.jpg");
    assert!(matches!(output_name(OsStr::new(".hidden.jpg"), Format::Jpeg), Err(ImageError::BadName { .. })));
    assert_eq!((inverse(6), inverse(8), inverse(5)), (8, 6, 5));
}

#[test]
fn damaged_files_never_panic() {
    // Every format, cut short at many lengths and with bytes flipped (headers and metadata
    // included): reading returns a result, and what reads also writes.
    let jpeg = camera_jpeg(&gradient(24, 16), 6);
    let png = png_file(
        &DynamicImage::ImageRgba8(ImageBuffer::from_pixel(12, 8, Rgba([1, 2, 3, 4]))),
        &[(b"eXIf", exif_blob_with(3, &[]))],
    );
    let mut webp = Vec::new();
    DynamicImage::ImageRgb8(gradient(12, 8))
        .write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut webp))
        .unwrap();
    let tiff = encode_tiff(&DynamicImage::ImageRgb8(gradient(12, 8)), true, Vec::new()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut seed = 7u32;
    for (name, data) in [("a.jpg", jpeg), ("a.png", png), ("a.webp", webp), ("a.tiff", tiff)] {
        let mut variants: Vec<Vec<u8>> = (0..data.len()).step_by(7).map(|n| data[..n].to_vec()).collect();
        variants.push(data.clone());
        for _ in 0..200 {
            let mut v = data.clone();
            for _ in 0..3 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let at = (seed >> 8) as usize % v.len();
                v[at] ^= (seed >> 24) as u8 | 1;
            }
            variants.push(v);
        }
        let (mut read_ok, mut refused) = (0, 0);
        for v in variants {
            match decode_bytes(Path::new(name), v, &Settings::default()) {
                Ok(photo) => {
                    read_ok += 1;
                    if let Err(e) = write(&photo, out.path(), name, None, &Settings::default()) {
                        assert!(e.to_string().contains(name), "{e}");
                    }
                }
                Err(e) => {
                    refused += 1;
                    assert!(e.to_string().starts_with(name), "{e}");
                }
            }
        }
        assert!(read_ok > 0 && refused > 0, "{name}: {read_ok} read, {refused} refused");
    }
}

/// An XMP packet with GPS properties as attributes and as an element, and a property to keep.
const GPS_XMP: &[u8] = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF><rdf:Description \
    xmlns:exif='http://ns.adobe.com/exif/1.0/' exif:GPSLatitude='51,30.1N' exif:Make='Jolla' \
    exif:GPSLongitude='0,7.5W'><exif:GPSAltitude>12/1</exif:GPSAltitude></rdf:Description></rdf:RDF></x:xmpmeta>";

fn assert_no_gps_but_make(xmp: &[u8], what: &str) {
    let text = String::from_utf8_lossy(xmp);
    assert!(!text.contains("GPS"), "{what}: {text}");
    assert!(text.contains("exif:Make='Jolla'"), "{what}: {text}");
}

/// A Photoshop image resource block (APP13 payload) holding `resources` (id, data).
fn irb_block(resources: &[(u16, &[u8])]) -> Vec<u8> {
    let mut out = irb::ID.to_vec();
    for (id, data) in resources {
        out.extend_from_slice(b"8BIM");
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(0);
        }
    }
    out
}

/// The second EXIF segment, Photoshop's EXIF and XMP copies (APP13), a PNG's plain-text XMP and
/// ImageMagick's raw EXIF profile: places GPS travelled through `keep-no-gps` untouched.
#[test]
fn keep_no_gps_reaches_the_less_common_places_gps_hides() {
    let d = tempfile::tempdir().unwrap();
    let no_gps = Settings { metadata: MetadataPolicy::KeepNoGps, ..Settings::default() };
    // The GPS latitude 48/1 51/1 2921/100 as `exif_blob_with` stores it.
    let latitude: Vec<u8> = [48u32, 1, 51, 1, 2921, 100].iter().flat_map(|v| v.to_le_bytes()).collect();
    let has_latitude = |b: &[u8]| b.windows(latitude.len()).any(|w| w == latitude.as_slice());
    let exif = [jpeg::EXIF_ID, &exif_blob_with(1, &[])].concat();
    let iptc: &[u8] = b"\x1c\x02\x78\x00\x07Caption";
    let irb = irb_block(&[(0x0404, iptc), (0x0422, &exif_blob_with(1, &[])), (0x0424, GPS_XMP)]);
    let enc = encode_jpeg(&gradient(32, 24), 90, Chroma::Full, false).unwrap();
    let carried = vec![(jpeg::APP1, exif.clone()), (jpeg::APP1, exif), (0xED, irb)];
    let src = d.path().join("two.jpg");
    std::fs::write(&src, jpeg::splice(&enc, &carried).unwrap()).unwrap();
    let photo = read(&src, &Settings::default()).unwrap();
    let written = write(&photo, d.path(), "two.jpg", None, &no_gps).unwrap();
    let unchanged = write_unchanged(&photo, d.path(), "same.jpg", None, &no_gps).unwrap();
    for w in [written, unchanged] {
        let data = std::fs::read(&w.path).unwrap();
        assert!(!has_latitude(&data), "{}: GPS left", w.path.display());
        let segs = header_segments(&data);
        assert_eq!(segs.iter().filter(|(_, p)| p.starts_with(jpeg::EXIF_ID)).count(), 2);
        let (_, block) = segs.iter().find(|(m, _)| *m == 0xED).unwrap();
        assert!(block.windows(iptc.len()).any(|w| w == iptc), "IPTC lost");
        let r = irb::parse(block).unwrap();
        let x = r.iter().find(|r| r.id == 0x0424).unwrap();
        assert_no_gps_but_make(&block[x.data.clone()], "Photoshop's XMP");
    }
    // Kept as they were under `keep`.
    let kept = write(&photo, d.path(), "two.jpg", None, &Settings::default()).unwrap();
    assert!(has_latitude(&std::fs::read(&kept.path).unwrap()));

    // PNG: XMP in a plain tEXt chunk is edited; ImageMagick's hex EXIF profile is dropped.
    let hex: String = exif_blob_with(1, &[]).iter().map(|b| format!("{b:02x}")).collect();
    let profile = format!("\nexif\n{}\n{hex}\n", hex.len() / 2);
    let text = |key: &str, value: &[u8]| (b"tEXt", [key.as_bytes(), &[0], value].concat());
    let (xk, xv) = text("XML:com.adobe.xmp", GPS_XMP);
    let (pk, pv) = text("Raw profile type exif", profile.as_bytes());
    let (ck, cv) = text("Comment", b"beach");
    let src = png_file(&DynamicImage::ImageRgb8(gradient(12, 8)), &[(xk, xv), (pk, pv), (ck, cv)]);
    std::fs::write(d.path().join("m.png"), src).unwrap();
    let photo = read(&d.path().join("m.png"), &Settings::default()).unwrap();
    let w = write(&photo, d.path(), "m.png", None, &no_gps).unwrap();
    let out = std::fs::read(&w.path).unwrap();
    let chunks = png::parse(&out).unwrap();
    let texts: Vec<&[u8]> =
        chunks.iter().filter(|c| &c.kind == b"tEXt").map(|c| &out[c.data.clone()]).collect();
    assert_eq!(texts.len(), 2, "the XMP and the comment stay, the raw profile goes");
    assert_no_gps_but_make(texts[0], "PNG tEXt XMP");
    assert_eq!(texts[1], b"Comment\0beach");
    // A malformed text chunk (no NUL after the keyword) is dropped, not a panic.
    let src =
        png_file(&DynamicImage::ImageRgb8(gradient(12, 8)), &[(b"tEXt", b"XML:com.adobe.xmp".to_vec())]);
    std::fs::write(d.path().join("bad.png"), src).unwrap();
    let photo = read(&d.path().join("bad.png"), &Settings::default()).unwrap();
    let w = write(&photo, d.path(), "bad.png", None, &no_gps).unwrap();
    let out = std::fs::read(&w.path).unwrap();
    assert!(!png::parse(&out).unwrap().iter().any(|c| &c.kind == b"tEXt"));
}

#[test]
fn keep_no_gps_removes_the_xmp_coordinates_in_every_container() {
    let d = tempfile::tempdir().unwrap();
    let no_gps = Settings { metadata: MetadataPolicy::KeepNoGps, ..Settings::default() };
    // JPEG: the XMP segment is edited, an extended-XMP part that mentions GPS is dropped, and with
    // `keep` both stay as they were.
    let enc = encode_jpeg(&gradient(32, 24), 90, Chroma::Half, false).unwrap();
    let ext = [jpeg::XMP_EXT_ID, &[b'0'; 32], &[0, 0, 0, 12, 0, 0, 0, 0], b"exif:GPSDest"].concat();
    let carried = vec![(jpeg::APP1, [jpeg::XMP_ID, GPS_XMP].concat()), (jpeg::APP1, ext.clone())];
    let src = d.path().join("gps.jpg");
    std::fs::write(&src, jpeg::splice(&enc, &carried).unwrap()).unwrap();
    let photo = read(&src, &Settings::default()).unwrap();
    let w = write(&photo, d.path(), "gps.jpg", None, &no_gps).unwrap();
    let segs = header_segments(&std::fs::read(&w.path).unwrap());
    let xmp = segs.iter().find(|(_, p)| p.starts_with(jpeg::XMP_ID)).unwrap();
    assert_no_gps_but_make(&xmp.1[jpeg::XMP_ID.len()..], "jpeg");
    assert!(!segs.iter().any(|(_, p)| p.starts_with(jpeg::XMP_EXT_ID)), "extended XMP kept");
    let kept = write(&photo, d.path(), "gps.jpg", None, &Settings::default()).unwrap();
    let segs = header_segments(&std::fs::read(&kept.path).unwrap());
    assert!(segs.contains(&(jpeg::APP1, [jpeg::XMP_ID, GPS_XMP].concat())));
    assert!(segs.contains(&(jpeg::APP1, ext)));
    // Into other formats, from the decoded packet.
    for format in [Format::Png, Format::Webp, Format::Tiff] {
        let w = write(&photo, d.path(), "gps.jpg", Some(format), &no_gps).unwrap();
        let again = read(&w.path, &Settings::default()).unwrap();
        assert_no_gps_but_make(again.meta.xmp.as_deref().unwrap(), &format.to_string());
    }
    // Each format into itself, from its own chunk or tag.
    for format in [Format::Png, Format::Webp, Format::Tiff] {
        let again =
            read(&d.path().join(format!("gps.{}", format.extension())), &Settings::default()).unwrap();
        // Put the GPS packet back into the file's own container, as a camera would have it.
        let mut with_gps = again.clone();
        match &mut with_gps.meta.native {
            Native::Png { chunks } => {
                let (_, raw) = chunks.iter_mut().find(|(k, _)| k == b"iTXt").unwrap();
                raw.clear();
                png::put_chunk(raw, b"iTXt", &png::xmp_data(GPS_XMP));
            }
            Native::Webp { chunks } => {
                chunks.iter_mut().find(|(k, _)| k == b"XMP ").unwrap().1 = GPS_XMP.to_vec()
            }
            Native::Tiff { entries, .. } => {
                let e = entries.iter_mut().find(|e| e.tag == TIFF_XMP).unwrap();
                e.count = GPS_XMP.len() as u32;
                e.value = OutValue::Bytes(GPS_XMP.to_vec());
            }
            other => panic!("{format}: {other:?}"),
        }
        let out = tempfile::tempdir().unwrap();
        let name = format!("gps.{}", format.extension());
        let w = write(&with_gps, out.path(), &name, None, &no_gps).unwrap();
        let back = read(&w.path, &Settings::default()).unwrap();
        assert_no_gps_but_make(back.meta.xmp.as_deref().unwrap(), &format!("{format} native"));
        let w = write(&with_gps, out.path(), &name, None, &Settings::default()).unwrap();
        let back = read(&w.path, &Settings::default()).unwrap();
        assert_eq!(back.meta.xmp.as_deref(), Some(GPS_XMP), "{format} keep");
    }
}

/// A textured picture (noise on a gradient), so every strip's entropy-coded data differs.
fn textured(w: u32, h: u32) -> RgbImage {
    let mut state = 12345u32;
    ImageBuffer::from_fn(w, h, |x, y| {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let n = (state >> 24) as u8 / 4;
        Rgb([(x * 200 / w) as u8 + n, (y * 200 / h) as u8 + n, ((x ^ y) % 200) as u8 + n])
    })
}

#[test]
fn jpeg_strips_decode_to_the_pixels_of_one_piece() {
    // Sides that are not whole MCUs; 9 strips of 3 MCU rows at 4:4:4, so restart markers wrap past RST7.
    let img = textured(203, 213);
    for (chroma, threads) in [(Chroma::Full, 9), (Chroma::Half, 4), (Chroma::Full, 2)] {
        // The same encoder settings in one piece: the standard tables, as the strips use.
        let whole = encode_jpeg_piece(img.as_raw(), 203, 213, 90, chroma, false).unwrap();
        let plan = StripPlan::new(203, 213, chroma, threads);
        let joined = encode_jpeg_strips(&img, 90, chroma, threads, plan, &[]).unwrap();
        assert_ne!(whole, joined, "{chroma:?}: the strips were not split");
        let layout = jpeg::parse(&joined).unwrap();
        assert!(layout.segments.iter().any(|s| s.marker == 0xDD), "{chroma:?}: no restart interval");
        let a = image::load_from_memory(&whole).unwrap().to_rgb8();
        let b = image::load_from_memory(&joined).unwrap().to_rgb8();
        assert_eq!(b.dimensions(), (203, 213));
        assert!(a == b, "{chroma:?} with {threads} strips decodes to other pixels than one piece");
    }
}

#[test]
fn a_photo_too_wide_for_one_restart_interval_per_thread_is_cut_into_more_strips() {
    // 65535 px wide: 8192 MCUs a row, so an interval holds at most 7 MCU rows; 120 rows (15 MCU
    // rows) on 2 threads need 3 strips.
    let img = gradient(65535, 120);
    let plan = StripPlan::new(65535, 120, Chroma::Full, 2);
    let joined = encode_jpeg_strips(&img, 90, Chroma::Full, 2, plan, &[]).unwrap();
    let layout = jpeg::parse(&joined).unwrap();
    let restarts = joined.windows(2).filter(|w| w[0] == 0xFF && (0xD0..=0xD7).contains(&w[1])).count();
    assert_eq!(restarts, 2, "3 strips, 2 restart markers");
    let dri = layout.segments.iter().find(|s| s.marker == 0xDD).unwrap();
    assert_eq!(joined[dri.payload.clone()], 57344u16.to_be_bytes(), "7 MCU rows of 8192");
    let whole = encode_jpeg_piece(img.as_raw(), 65535, 120, 90, Chroma::Full, false).unwrap();
    let a = image::load_from_memory(&whole).unwrap().to_rgb8();
    let b = image::load_from_memory(&joined).unwrap().to_rgb8();
    assert!(a == b, "3 strips decode to other pixels than one piece");
}

#[test]
fn jpeg_strips_from_other_settings_are_refused() {
    let img = textured(64, 64);
    let piece = |y: u32, quality: u8| {
        let rows = image::imageops::crop_imm(&img, 0, y, 64, 32).to_image();
        encode_jpeg_piece(rows.as_raw(), 64, 32, quality, Chroma::Full, false).unwrap()
    };
    let err = jpeg::join_strips(&[piece(0, 90), piece(32, 60)], 64, 32).unwrap_err();
    assert!(err.contains("strip 1 was encoded with other tables"), "{err}");
    assert!(jpeg::join_strips::<Vec<u8>>(&[], 64, 32).unwrap_err().contains("no strips"));
}

#[test]
fn strips_encoded_ahead_are_taken_where_the_pixels_stayed_and_only_for_the_same_settings() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("big.jpg");
    // 1.3 MP: encoded in strips (32 px high at the default 4:4:4 on a machine with 2+ cores).
    std::fs::write(&src, encode_jpeg(&textured(1280, 1024), 90, Chroma::Half, false).unwrap()).unwrap();
    let s = Settings::default();
    let mut photo = read(&src, &s).unwrap();
    let before = photo.clone();
    // A face from row 300 to 499: the strips across it are left for later.
    let pre = preencode(&photo, &[(400, 300, 200, 200)], None, &s, 2);
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        assert!(pre.is_none(), "one core encodes in one piece: nothing to do ahead");
        return;
    }
    let pre = pre.expect("a large JPEG in strips");
    let (done, of) = pre.done();
    assert_eq!(of, 32);
    assert!(done > 20 && done < of, "{done} of {of}");
    // The protection changes pixels inside the rectangle only.
    for y in 300..500 {
        for x in 400..600 {
            let p = photo.pixels.get_pixel_mut(x, y);
            p[0] = 255 - p[0];
        }
    }
    let bytes = |w: Written| std::fs::read(w.path).unwrap();
    let out = |name: &str| {
        let dir = d.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        dir
    };
    let plain = bytes(write(&photo, &out("plain"), "big.jpg", None, &s).unwrap());
    let ahead = bytes(write_with(&photo, &out("ahead"), "big.jpg", None, &s, Some(&pre)).unwrap());
    assert!(plain == ahead, "strips encoded ahead give other bytes");
    // They are really taken: strips made from the pixels before the change, all of them, show.
    let stale = preencode(&before, &[], None, &s, 2).unwrap();
    assert_eq!(stale.done(), (32, 32));
    let wrong = bytes(write_with(&photo, &out("stale"), "big.jpg", None, &s, Some(&stale)).unwrap());
    assert!(wrong != plain);
    // With other settings they are not.
    let q60 = Settings { jpeg_quality: JpegQuality(60), ..Settings::default() };
    let plain60 = bytes(write(&photo, &out("q60"), "big.jpg", None, &q60).unwrap());
    let ahead60 = bytes(write_with(&photo, &out("q60-ahead"), "big.jpg", None, &q60, Some(&stale)).unwrap());
    assert!(plain60 == ahead60, "strips of quality 95 were taken at quality 60");
    // Nothing is done ahead for a PNG copy.
    assert!(preencode(&before, &[], Some(Format::Png), &s, 2).is_none());
}

#[test]
fn strips_encoded_ahead_of_a_photo_stored_turned_follow_the_turn() {
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("big.jpg");
    std::fs::write(&src, encode_jpeg(&textured(1280, 1024), 90, Chroma::Half, false).unwrap()).unwrap();
    let s = Settings::default();
    let read_back = read(&src, &s).unwrap();
    // A face near a corner, so that every turn puts it somewhere else in the stored image.
    let (x, y, w, h) = (100u32, 150u32, 180u32, 140u32);
    for orientation in 1..=8u8 {
        // The upright pixels of a photo stored with this orientation (as `read` would make them).
        let mut upright = DynamicImage::ImageRgb8(read_back.pixels.clone());
        if let Some(o) = image::metadata::Orientation::from_exif(orientation) {
            upright.apply_orientation(o);
        }
        let pixels = upright.into_rgb8();
        let mut photo = Photo { size: pixels.dimensions(), pixels, orientation, ..read_back.clone() };
        let pre = preencode(&photo, &[(i64::from(x), i64::from(y), i64::from(w), i64::from(h))], None, &s, 2)
            .unwrap_or_else(|| panic!("orientation {orientation}: nothing done ahead"));
        assert!(pre.done().0 < pre.done().1, "orientation {orientation}: no strip left for later");
        for py in y..y + h {
            for px in x..x + w {
                let p = photo.pixels.get_pixel_mut(px, py);
                p[1] = 255 - p[1];
            }
        }
        let dir = |name: String| {
            let dir = d.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            dir
        };
        let plain = write(&photo, &dir(format!("{orientation}")), "big.jpg", None, &s).unwrap();
        let ahead =
            write_with(&photo, &dir(format!("{orientation}a")), "big.jpg", None, &s, Some(&pre)).unwrap();
        assert!(
            std::fs::read(plain.path).unwrap() == std::fs::read(ahead.path).unwrap(),
            "orientation {orientation}: strips encoded ahead give other bytes"
        );
    }
}

/// Mean |a − b| over every channel of two same-sized images, in 8-bit levels.
fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    let sum: u64 = a.as_raw().iter().zip(b.as_raw()).map(|(&p, &q)| u64::from(p.abs_diff(q))).sum();
    sum as f64 / a.as_raw().len() as f64
}

/// Mean of each channel, in 8-bit levels.
fn mean_colour(img: &RgbImage) -> [f64; 3] {
    let mut sum = [0u64; 3];
    for p in img.pixels() {
        for c in 0..3 {
            sum[c] += u64::from(p[c]);
        }
    }
    sum.map(|s| s as f64 / (u64::from(img.width()) * u64::from(img.height())) as f64)
}

#[test]
fn a_420_jpeg_keeps_the_mean_colour_of_fine_colour_detail() {
    // One-pixel red and green columns: at 4:2:0 each 2×2 block holds one of each, so its colour
    // must come out as their mean (olive) on both, as libjpeg writes it. Keeping the top-left
    // pixel's colour instead (`jpeg-encoder` given plain RGB) turns the whole image red-tinted.
    let (w, h) = (64u32, 48u32);
    let img: RgbImage =
        ImageBuffer::from_fn(w, h, |x, _| if x % 2 == 0 { Rgb([200, 40, 40]) } else { Rgb([40, 160, 40]) });
    // Asked for optimized tables, it writes the standard ones at 4:2:0 (interleaved, which
    // `image`'s decoder reads right; it misreads one scan per component at 4:2:0).
    let ours = encode_jpeg_piece(img.as_raw(), w as u16, h as u16, 95, Chroma::Half, true).unwrap();
    let scans = jpeg::parse(&ours).unwrap().segments.iter().filter(|s| s.marker == jpeg::SOS).count();
    assert_eq!(scans, 1, "a 4:2:0 JPEG must be written in one interleaved scan");
    let ours = image::load_from_memory(&ours).unwrap().to_rgb8();
    let decimating = image::load_from_memory(&plain_jpeg_encoder_420(&img, false, false)).unwrap().to_rgb8();
    let (want, got, off) = (mean_colour(&img), mean_colour(&ours), mean_colour(&decimating));
    println!("mean colour: source {want:?}, averaged {got:?}, decimated {off:?}");
    for c in 0..3 {
        assert!((got[c] - want[c]).abs() < 3.0, "channel {c}: {} against {}", got[c], want[c]);
    }
    assert!((off[0] - want[0]).abs() > 20.0, "the decimating encoder was expected to shift red: {off:?}");
    // On colour noise over a gradient, the mean keeps each pixel closer than one pixel of four does.
    let mut state = 7u32;
    let noisy: RgbImage = ImageBuffer::from_fn(w, h, |x, y| {
        let mut n = || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 26) as u8
        };
        Rgb([(x * 3) as u8 + n(), (y * 4) as u8 + n(), 100 + n()])
    });
    let ours = encode_jpeg_piece(noisy.as_raw(), w as u16, h as u16, 95, Chroma::Half, false).unwrap();
    let decimating = plain_jpeg_encoder_420(&noisy, false, false);
    let back = |b: &[u8]| image::load_from_memory(b).unwrap().to_rgb8();
    let (e_ours, e_off) = (mean_abs_diff(&noisy, &back(&ours)), mean_abs_diff(&noisy, &back(&decimating)));
    println!("colour noise, mean |error|: averaged {e_ours:.2}, decimated {e_off:.2} levels");
    assert!(e_ours < 0.9 * e_off, "averaged {e_ours} against decimated {e_off}");
}

#[test]
fn averaged_420_input_keeps_luma_and_gives_each_block_its_mean_chroma() {
    // 5×3: an odd last column and row, whose blocks repeat the edge pixel as libjpeg pads.
    let img = textured(5, 3);
    let input = jpeg::Averaged420::new(img.as_raw(), 5, 3).unwrap();
    let ycc = |x: u32, y: u32| {
        let p = img.get_pixel(x, y);
        jpeg_encoder::rgb_to_ycbcr(p[0], p[1], p[2])
    };
    for y in 0..3u32 {
        let mut rows: [Vec<u8>; 4] = Default::default();
        jpeg_encoder::ImageBuffer::fill_buffers(&input, y as u16, &mut rows);
        assert_eq!(rows[0].len(), 5);
        for x in 0..5u32 {
            assert_eq!(rows[0][x as usize], ycc(x, y).0, "luma at {x},{y}");
            let (x0, y0) = (x & !1, y & !1);
            let block =
                [(x0, y0), ((x0 + 1).min(4), y0), (x0, (y0 + 1).min(2)), ((x0 + 1).min(4), (y0 + 1).min(2))];
            let mean = |pick: fn((u8, u8, u8)) -> u8| {
                block.iter().map(|&(bx, by)| f64::from(pick(ycc(bx, by)))).sum::<f64>() / 4.0
            };
            let (cb, cr) = (f64::from(rows[1][x as usize]), f64::from(rows[2][x as usize]));
            assert!((cb - mean(|p| p.1)).abs() <= 0.75, "Cb at {x},{y}: {cb} against {}", mean(|p| p.1));
            assert!((cr - mean(|p| p.2)).abs() <= 0.75, "Cr at {x},{y}: {cr} against {}", mean(|p| p.2));
        }
    }
    assert!(jpeg::Averaged420::new(img.as_raw(), 5, 4).is_none(), "too few bytes for 5x4 must be refused");
    assert!(jpeg::Averaged420::new(&[], 0, 0).is_none());
}

/// `img` as `jpeg-encoder` alone writes it at q95 4:2:0 (each block's top-left colour), with
/// optimized tables (then one scan per component) or progressive when asked.
fn plain_jpeg_encoder_420(img: &RgbImage, optimize: bool, progressive: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 95);
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
    enc.set_optimized_huffman_tables(optimize);
    enc.set_progressive(progressive);
    enc.encode(img.as_raw(), img.width() as u16, img.height() as u16, jpeg_encoder::ColorType::Rgb).unwrap();
    out
}

#[test]
fn only_sequential_colour_jpegs_in_one_scan_per_component_are_flagged() {
    let img = textured(67, 45);
    let flagged = |b: &[u8]| jpeg::is_non_interleaved(b, &jpeg::parse(b).unwrap());
    assert!(flagged(&plain_jpeg_encoder_420(&img, true, false)), "non-interleaved 4:2:0");
    assert!(!flagged(&plain_jpeg_encoder_420(&img, false, false)), "interleaved 4:2:0");
    assert!(!flagged(&plain_jpeg_encoder_420(&img, false, true)), "progressive 4:2:0");
    let full = encode_jpeg_piece(img.as_raw(), 67, 45, 95, Chroma::Full, true).unwrap();
    let scans = jpeg::parse(&full).unwrap().segments.iter().filter(|s| s.marker == jpeg::SOS).count();
    assert_eq!(scans, 3, "optimized 4:4:4 is written one scan per component");
    assert!(flagged(&full), "non-interleaved 4:4:4");
    let interleaved = encode_jpeg_piece(img.as_raw(), 67, 45, 95, Chroma::Full, false).unwrap();
    assert!(!flagged(&interleaved), "interleaved 4:4:4");
    let grey = image::DynamicImage::ImageRgb8(img).to_luma8();
    let mut one = Vec::new();
    jpeg_encoder::Encoder::new(&mut one, 90)
        .encode(grey.as_raw(), 67, 45, jpeg_encoder::ColorType::Luma)
        .unwrap();
    assert!(!flagged(&one), "one component");
}

#[test]
fn a_non_interleaved_420_jpeg_decodes_to_its_colours() {
    // `image`'s decoder turns this layout into garbage (red and blue near 0); Veil reads it with
    // `jpeg-decoder` instead, so a protected copy of such a photo is not a broken picture.
    let img = textured(67, 45);
    let bytes = plain_jpeg_encoder_420(&img, true, false);
    let misread = image::load_from_memory(&bytes).unwrap().to_rgb8();
    let photo = decode_bytes(Path::new("one-scan-per-colour.jpg"), bytes, &Settings::default()).unwrap();
    assert_eq!(photo.size, (67, 45));
    let (ours, theirs) = (mean_abs_diff(&img, &photo.pixels), mean_abs_diff(&img, &misread));
    println!("mean |error|: Veil {ours:.2}, image crate {theirs:.2} levels");
    assert!(ours < 6.0, "{ours}");
    assert!(theirs > 20.0, "the image crate now reads this layout right ({theirs}): the fallback may go");
}

#[test]
fn sizes_read_as_a_person_reads_them() {
    assert_eq!(bytes(0), "0 bytes");
    assert_eq!(bytes(999), "999 bytes");
    assert_eq!(bytes(57_980), "58.0 KB");
    assert_eq!(bytes(4_200_000), "4.2 MB");
    assert_eq!(bytes(1_300_000_000), "1.3 GB");
}

#[test]
fn a_file_name_that_is_not_utf8_is_kept_byte_for_byte() {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let d = tempfile::tempdir().unwrap();
    // "café.jpg" in Latin-1, as old cameras, archives and some network shares write it.
    let name = OsStr::from_bytes(b"caf\xe9.jpg");
    let src = d.path().join("in").join(name);
    std::fs::create_dir(d.path().join("in")).unwrap();
    std::fs::write(&src, camera_jpeg(&gradient(32, 24), 1)).unwrap();
    let photo = read(&src, &Settings::default()).unwrap();
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let first = write(&photo, &out, name, None, &Settings::default()).unwrap();
    let second = write(&photo, &out, name, None, &Settings::default()).unwrap();
    assert_eq!(first.path, out.join(name));
    assert_eq!(second.path.file_name().unwrap().as_bytes(), b"caf\xe9 (1).jpg");
    let png = write(&photo, &out, name, Some(Format::Png), &Settings::default()).unwrap();
    assert_eq!(png.path.file_name().unwrap().as_bytes(), b"caf\xe9.png");
    assert_eq!(read(&first.path, &Settings::default()).unwrap().size, (32, 24));
    let renamed = output_name(&OsString::from_vec(b"x\xff.png".to_vec()), Format::Jpeg).unwrap();
    assert_eq!(renamed.as_bytes(), b"x\xff.jpg");
}

/// With `--features heic` and a libheif that decodes AV1: an AVIF photo is read like a HEIC one,
/// upright, its EXIF carried, and written as a JPEG.
#[cfg(feature = "heic")]
#[test]
fn avif_photos_are_read_through_libheif_and_written_as_jpeg_with_their_exif() {
    use libheif_rs::{
        Channel, ColorSpace, CompressionFormat, EncoderQuality, HeifContext, Image, LibHeif, RgbChroma,
    };
    if !heic::reads_avif() {
        let e = decode_bytes(
            Path::new("x.avif"),
            b"\0\0\0\x18ftypavif\0\0\0\0mif1avif".to_vec(),
            &Settings::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("AVIF (this build cannot read it: its libheif has no AV1 decoder"),
            "{e}"
        );
        return;
    }
    let (w, h) = (96u32, 64u32);
    let mut img = Image::new(w, h, ColorSpace::Rgb(RgbChroma::Rgb)).unwrap();
    img.create_plane(Channel::Interleaved, w, h, 8).unwrap();
    let expected = |x: usize, y: usize| [(x * 2) as u8, (y * 3) as u8, 128];
    {
        let plane = img.planes_mut().interleaved.unwrap();
        for y in 0..h as usize {
            for x in 0..w as usize {
                let i = y * plane.stride + x * 3;
                plane.data[i..i + 3].copy_from_slice(&expected(x, y));
            }
        }
    }
    let lib = LibHeif::new();
    let mut ctx = HeifContext::new().unwrap();
    let mut encoder = lib.encoder_for_format(CompressionFormat::Av1).unwrap();
    encoder.set_quality(EncoderQuality::Lossy(95)).unwrap();
    let handle = ctx.encode_image(&img, &mut encoder, None).unwrap();
    let make = b"VeilCam\0".to_vec();
    let mut exif = tiffmeta::header(true);
    let pos = tiffmeta::write_ifd(
        &mut exif,
        &[OutEntry { tag: 271, typ: 2, count: make.len() as u32, value: OutValue::Bytes(make) }],
        true,
        &mut Vec::new(),
    );
    tiffmeta::set_ifd0(&mut exif, pos, true);
    ctx.add_exif_metadata(&handle, &exif).unwrap();
    let bytes = ctx.write_to_bytes().unwrap();
    assert_eq!(sniff::heif_brand(&bytes), Some(&b"avif"[..]));

    let settings = Settings::default();
    let photo = decode_bytes(Path::new("x.avif"), bytes, &settings).unwrap();
    assert_eq!((photo.format, photo.pixels.dimensions()), (Format::Jpeg, (w, h)));
    let err: u32 = photo
        .pixels
        .enumerate_pixels()
        .map(|(x, y, p)| {
            let e = expected(x as usize, y as usize);
            (0..3).map(|c| u32::from(p[c].abs_diff(e[c]))).sum::<u32>()
        })
        .sum();
    assert!(
        f64::from(err) / f64::from(w * h * 3) < 4.0,
        "mean error {}",
        f64::from(err) / f64::from(w * h * 3)
    );
    assert!(photo.meta.exif.as_deref().is_some_and(|e| e.windows(7).any(|w| w == b"VeilCam")));
    let out = tempfile::tempdir().unwrap();
    let written = write(&photo, out.path(), "x.avif", None, &settings).unwrap();
    assert_eq!(written.path, out.path().join("x.jpg"));
    let back = read(&written.path, &settings).unwrap();
    assert!(back.meta.exif.as_deref().is_some_and(|e| e.windows(7).any(|w| w == b"VeilCam")));
}
