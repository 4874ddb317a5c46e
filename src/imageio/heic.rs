//! HEIC/HEIF decoding through the system's libheif (cargo feature `heic`), and AVIF (AV1 in the
//! same container) where that libheif has an AV1 decoder (dav1d or libaom; Debian's has both).
//!
//! libheif applies the file's own transformations (`irot`, `imir`, crop), so the decoded pixels are
//! already upright; the carried EXIF's Orientation tag is therefore set to 1, or viewers would turn
//! the copy a second time. Writing HEIC needs an HEVC encoder, so a HEIC source is written as JPEG
//! (the configured quality and chroma) carrying its EXIF, XMP and ICC profile; an AVIF source too.

use std::path::Path;

use image::RgbImage;
use libheif_rs::{ColorSpace, HeifContext, ItemId, LibHeif, RgbChroma};

use super::{tiffmeta, Format, ImageError, Meta, Native, Photo, Settings};

pub(super) fn decode(
    path: &Path,
    bytes: Vec<u8>,
    source_id: super::fsio::FileId,
    s: &Settings,
) -> Result<Photo, ImageError> {
    let corrupt =
        |e: libheif_rs::HeifError| ImageError::Corrupt { path: path.into(), message: format!("HEIF: {e}") };
    let ctx = HeifContext::read_from_bytes(&bytes).map_err(corrupt)?;
    let handle = ctx.primary_image_handle().map_err(corrupt)?;
    let (w, h) = (handle.width(), handle.height());
    super::check_pixels(path, w, h, s)?;
    let image = LibHeif::new().decode(&handle, ColorSpace::Rgb(RgbChroma::Rgb), None).map_err(corrupt)?;
    let plane = image.planes().interleaved.ok_or_else(|| ImageError::Corrupt {
        path: path.into(),
        message: "HEIF: no interleaved RGB plane after decoding".into(),
    })?;
    let (pw, ph) = (plane.width, plane.height);
    let row = pw as usize * 3;
    let mut raw = Vec::with_capacity(row * ph as usize);
    for y in 0..ph as usize {
        let start = y * plane.stride;
        let line = plane.data.get(start..start + row).ok_or_else(|| ImageError::Corrupt {
            path: path.into(),
            message: "HEIF: decoded plane shorter than its size".into(),
        })?;
        raw.extend_from_slice(line);
    }
    let pixels = RgbImage::from_raw(pw, ph, raw).ok_or_else(|| ImageError::Corrupt {
        path: path.into(),
        message: "HEIF: decoded plane has the wrong size".into(),
    })?;

    let mut meta = Meta::default();
    let block = |kind: &[u8; 4]| {
        let mut ids: Vec<ItemId> = vec![0; 4];
        let n = handle.metadata_block_ids(&mut ids, kind);
        ids.truncate(n);
        ids.first().and_then(|id| handle.metadata(*id).ok())
    };
    // HEIF's Exif item starts with a 4-byte offset to the TIFF header.
    if let Some(exif) = block(b"Exif") {
        let skip = exif.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).unwrap_or(0);
        if let Some(tiff) = exif.get(4 + skip..) {
            let mut tiff = tiff.to_vec();
            tiffmeta::set_orientation(&mut tiff, 1);
            meta.exif = Some(tiff);
        }
    }
    meta.xmp = block(b"mime").filter(|x| x.windows(9).any(|w| w == b"x:xmpmeta" || w == b"<rdf:RDF"));
    meta.icc = handle.color_profile_raw().map(|p| p.data).filter(|d| !d.is_empty());
    meta.native = Native::None;
    Ok(Photo {
        size: pixels.dimensions(),
        source: path.into(),
        format: Format::Jpeg,
        orientation: 1,
        pixels,
        input_bytes: bytes.len() as u64,
        original: None,
        meta,
        alpha: None,
        deep: None,
        // libheif hands over RGB; a copy is written in colour.
        grey: false,
        source_id,
    })
}

/// The system's libheif version when it can decode HEVC-coded HEIF (what HEIC photos are), else why
/// not: libheif built without an HEVC decoder (libde265) opens the file and then fails on it. Whether
/// it reads AVIF too is said after the version.
pub(super) fn support() -> Result<String, String> {
    let lib = LibHeif::new();
    let [major, minor, patch] = lib.version();
    let version = format!("libheif {major}.{minor}.{patch}");
    if !has_decoder(libheif_sys::heif_compression_format_heif_compression_HEVC) {
        return Err(format!("{version} has no HEVC decoder (install libde265 or its plugin)"));
    }
    Ok(if reads_avif() {
        format!("{version}, with AVIF")
    } else {
        format!("{version}; AVIF refused: it has no AV1 decoder (dav1d or libaom)")
    })
}

/// Whether libheif decodes AV1, so that AVIF photos are read.
pub(super) fn reads_avif() -> bool {
    has_decoder(libheif_sys::heif_compression_format_heif_compression_AV1)
}

fn has_decoder(format: libheif_sys::heif_compression_format) -> bool {
    // Makes sure libheif is initialized (its plugins loaded) before its decoder table is asked.
    let _lib = LibHeif::new();
    // SAFETY: a plain query of libheif's decoder table, which `LibHeif::new` has initialized.
    unsafe { libheif_sys::heif_have_decoder_for_format(format) != 0 }
}
