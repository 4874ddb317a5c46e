//! What a file is, from its first bytes (and its name where the bytes leave it open): a photo in a
//! format Veil reads, a photo in one it does not (GIF, AVIF, a camera's RAW file, …), or no photo
//! at all (a video, a document, a text such as an editor's sidecar), which `veild` leaves alone
//! instead of calling it failed.

use std::path::Path;

use super::{tiffmeta::Tiff, Format, ImageError};

/// The formats this build reads, as the errors name them.
pub const READABLE: &str =
    if cfg!(feature = "heic") { "JPEG, PNG, WebP, TIFF or HEIC/HEIF" } else { "JPEG, PNG, WebP or TIFF" };

pub(super) const EMPTY: &str = "the file is empty (nothing has been written in it yet)";

/// Extensions of camera RAW files (sensor data before development).
const RAW_EXTENSIONS: &[&str] = &[
    "3fr", "ari", "arw", "bay", "cr2", "cr3", "crw", "dcr", "dng", "erf", "fff", "iiq", "k25", "kdc", "mef",
    "mos", "mrw", "nef", "nrw", "orf", "pef", "raf", "raw", "rw2", "rwl", "sr2", "srf", "srw", "x3f",
];

/// The major brand of an ISO-BMFF file when it is a HEIF (or AVIF) image.
pub(super) fn heif_brand(b: &[u8]) -> Option<&[u8]> {
    let brand = ftyp_brand(b)?;
    [&b"heic"[..], b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif"]
        .contains(&brand)
        .then_some(brand)
}

/// The major brand of an ISO-BMFF file (MP4, QuickTime, HEIF, CR3, …).
fn ftyp_brand(b: &[u8]) -> Option<&[u8]> {
    b.get(8..12).filter(|_| b.get(4..8) == Some(&b"ftyp"[..]))
}

/// The photo format of `b`, or why Veil does not protect it. HEIF is told apart by [`heif_brand`]
/// before this is asked (it is refused here, in a build without libheif).
pub(super) fn format(path: &Path, b: &[u8]) -> Result<Format, ImageError> {
    let readable = readable(b);
    // Before the TIFF is taken: most RAW files are TIFF structures around sensor data, whose first
    // picture is a thumbnail; protected as a TIFF, the copy would be that thumbnail.
    if let Some(kind) = camera_raw(path, b, readable) {
        return Err(ImageError::CameraRaw { path: path.into(), kind });
    }
    if let Some(format) = readable {
        return Ok(format);
    }
    if let Some(brand) = heif_brand(b) {
        if brand == b"avif" {
            let why = if cfg!(feature = "heic") {
                "its libheif has no AV1 decoder (dav1d or libaom)"
            } else {
                "it has no libheif (install libheif-dev and pkg-config, then `make build` again)"
            };
            let what = format!("AVIF (this build cannot read it: {why})");
            return Err(ImageError::Unsupported { path: path.into(), what });
        }
        return Err(ImageError::HeicNotSupported { path: path.into() });
    }
    let unsupported = |what: String| Err(ImageError::Unsupported { path: path.into(), what });
    if b.is_empty() {
        // No format at all: a download's placeholder, or a copy not begun.
        return Err(ImageError::Corrupt { path: path.into(), message: EMPTY.into() });
    }
    if let Some(image) = other_image(b) {
        return unsupported(image.into());
    }
    no_photo(path, b).map_or_else(|| unsupported(format!("not a {READABLE} file")), Err)
}

/// The format Veil reads that `b` starts as (by its signature; a TIFF may still be a RAW file).
fn readable(b: &[u8]) -> Option<Format> {
    if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Format::Jpeg)
    } else if b.starts_with(super::png::SIGNATURE) {
        Some(Format::Png)
    } else if b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Some(Format::Webp)
    } else if Tiff::new(b).is_some() {
        Some(Format::Tiff)
    } else {
        None
    }
}

/// How much of a file [`no_photo`] looks at.
pub(super) const HEAD: usize = 4096;

/// Why `b` (a file's first [`HEAD`] bytes or more) is not protected when it is no photo at all:
/// [`ImageError::NotAPhoto`] under a name that is not a photo's, else unsupported.
pub(super) fn no_photo(path: &Path, b: &[u8]) -> Option<ImageError> {
    let unsupported = |what: String| ImageError::Unsupported { path: path.into(), what };
    match not_a_photo(b) {
        // A name that says photo: a broken photo, or one misnamed; either way the user wants to know.
        Some(kind) if has_photo_extension(path) => {
            Some(unsupported(format!("{kind} under a photo's name, not a {READABLE} file")))
        }
        Some(kind) => Some(ImageError::NotAPhoto { path: path.into(), what: kind.into() }),
        None => None,
    }
}

fn extension(path: &Path) -> Option<String> {
    path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase)
}

fn has_photo_extension(path: &Path) -> bool {
    extension(path).is_some_and(|e| Format::is_photo_extension(&e) || is_raw_extension(&e))
}

/// Picture formats Veil does not read, by extension: what a folder walk passes over and counts.
const OTHER_IMAGE_EXTENSIONS: &[&str] = &[
    "gif", "bmp", "dib", "jxl", "jp2", "j2k", "jpx", "psd", "psb", "svg", "ico", "tga", "xcf", "exr", "qoi",
];

/// Whether a file named `*.ext` is a picture in a format Veil does not read (`gif`, `bmp`, `psd`, …).
pub fn is_other_image_extension(ext: &str) -> bool {
    OTHER_IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str())
}

/// Whether a file named `*.ext` is a camera RAW file (`nef`, `dng`, `cr2`, …), which Veil refuses.
pub fn is_raw_extension(ext: &str) -> bool {
    RAW_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str())
}

/// A camera RAW file: its kind as told to the user (`NEF`, `DNG`, `Canon CR3`, …). `readable` is
/// what [`readable`] makes of `b`.
fn camera_raw(path: &Path, b: &[u8], readable: Option<Format>) -> Option<String> {
    let named = extension(path).filter(|e| is_raw_extension(e)).map(|e| e.to_uppercase());
    let magic = [
        (&b"IIRO"[..], "Olympus ORF"),
        (b"IIRS", "Olympus ORF"),
        (b"MMOR", "Olympus ORF"),
        (b"IIU\0", "Panasonic RW2"),
        (b"FUJIFILMCCD-RAW", "Fujifilm RAF"),
        (b"FOVb", "Sigma X3F"),
        (b"\0MRM", "Minolta MRW"),
    ];
    if let Some((_, kind)) = magic.iter().find(|(m, _)| b.starts_with(m)) {
        return Some(kind.to_string());
    }
    if ftyp_brand(b) == Some(b"crx ") {
        return Some("Canon CR3".into());
    }
    let Some(tiff) = Tiff::new(b) else {
        // Under a RAW file's name, whatever is not a photo Veil reads (a misnamed JPEG is one).
        return named.filter(|_| readable.is_none());
    };
    if b.get(8..10) == Some(b"CR") {
        return Some(named.unwrap_or_else(|| "Canon CR2".into()));
    }
    let ifd0 = tiff.ifd(tiff.ifd0_offset()?);
    // DNGVersion.
    if ifd0.as_ref().is_some_and(|i| tiff.find(i, 50706).is_some()) {
        return Some("DNG".into());
    }
    if holds_sensor_data(&tiff) {
        return Some(named.unwrap_or_else(|| "a TIFF holding the camera's sensor data".into()));
    }
    // A TIFF structure under a RAW file's name: its first picture is most likely a thumbnail.
    named
}

/// Whether a TIFF structure has an image of raw sensor data (PhotometricInterpretation CFA or
/// LinearRaw) among its IFDs or their SubIFDs, as RAW files do (looked at: 8 IFDs and 8 SubIFDs each).
fn holds_sensor_data(t: &Tiff) -> bool {
    let raw = |pos: usize| {
        t.ifd(pos)
            .and_then(|i| t.find(&i, 262))
            .and_then(|e| t.scalar(&e))
            .is_some_and(|p| p == 32803 || p == 34892)
    };
    let mut pos = t.ifd0_offset();
    for _ in 0..8 {
        let Some(ifd) = pos.and_then(|p| t.ifd(p)) else { break };
        if raw(ifd.pos) {
            return true;
        }
        // SubIFDs: LONG or IFD offsets.
        if let Some(e) = t.find(&ifd, 330).filter(|e| matches!(e.typ, 4 | 13)) {
            let subs = (0..e.count.min(8) as usize).filter_map(|k| t.u32_at(e.value_pos + 4 * k));
            if subs.map(|o| o as usize).any(raw) {
                return true;
            }
        }
        pos = t.u32_at(ifd.next_ptr_pos).map(|o| o as usize).filter(|&o| o != 0);
    }
    false
}

/// A picture format Veil does not read (the file is refused as unsupported).
fn other_image(b: &[u8]) -> Option<&'static str> {
    const JXL: &[u8] = b"\0\0\0\x0cJXL \r\n\x87\n";
    const JP2: &[u8] = b"\0\0\0\x0cjP  \r\n\x87\n";
    Some(if b.starts_with(b"GIF8") {
        "GIF"
    } else if b.starts_with(b"BM") {
        "BMP"
    } else if b.starts_with(&[0xFF, 0x0A]) || b.starts_with(JXL) {
        "JPEG XL"
    } else if b.starts_with(JP2) || b.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]) {
        "JPEG 2000"
    } else if b.starts_with(b"8BPS") {
        "Photoshop PSD"
    } else if ftyp_brand(b) == Some(b"avis") {
        "animated AVIF (an image sequence, whose other frames could not be protected)"
    } else if is_text(b) && contains(&b[..b.len().min(HEAD)], b"<svg") {
        "SVG (a drawing, not a photo)"
    } else {
        return None;
    })
}

/// What a file is when it is no photo at all: a video, a sound, a document, an archive or a text.
fn not_a_photo(b: &[u8]) -> Option<&'static str> {
    let at = |pos: usize, m: &[u8]| b.get(pos..pos + m.len()) == Some(m);
    Some(match ftyp_brand(b) {
        Some(b"M4A " | b"M4B " | b"M4P ") => "a sound file (MPEG-4 audio)",
        Some(_) => "a video (MP4/QuickTime)",
        None if at(4, b"moov") || at(4, b"mdat") || at(4, b"wide") => "a video (QuickTime)",
        None if at(0, b"RIFF") && at(8, b"AVI ") => "a video (AVI)",
        None if at(0, b"RIFF") && at(8, b"WAVE") => "a sound file (WAV)",
        None if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) => "a video (Matroska/WebM)",
        None if at(0, &[0, 0, 1, 0xBA]) => "a video (MPEG)",
        None if at(0, b"OggS") => "a sound or video file (Ogg)",
        None if at(0, b"ID3") || at(0, &[0xFF, 0xFB]) => "a sound file (MP3)",
        None if at(0, b"fLaC") => "a sound file (FLAC)",
        None if at(0, b"%PDF-") => "a PDF document",
        None if at(0, b"PK\x03\x04") => "a ZIP archive (or an office document)",
        None if at(0, &[0x1F, 0x8B]) || at(0, b"7z\xBC\xAF\x27\x1C") || at(0, b"Rar!") => "an archive",
        None if at(0, b"SQLite format 3\0") => "a database (SQLite)",
        None if is_text(b) || is_utf16_text(b) => "a text file",
        None => return None,
    })
}

/// Whether the file starts as UTF-8 text (no control characters but tabs, line and page breaks).
fn is_text(b: &[u8]) -> bool {
    let head = &b[..b.len().min(HEAD)];
    let utf8 = match std::str::from_utf8(head) {
        Ok(_) => true,
        // A character cut by the bytes looked at (the head of a longer file).
        Err(e) => e.error_len().is_none() && head.len() == HEAD,
    };
    !head.is_empty()
        && utf8
        && head.iter().all(|&c| c >= 0x20 && c != 0x7F || matches!(c, b'\t' | b'\n' | b'\r' | 0x0C))
}

/// Whether the file starts as UTF-16 text with its byte-order mark (as Windows' Notepad saves
/// "Unicode" text), with the same characters as [`is_text`] allows.
fn is_utf16_text(b: &[u8]) -> bool {
    let le = match b.get(..2) {
        Some([0xFF, 0xFE]) => true,
        Some([0xFE, 0xFF]) => false,
        _ => return false,
    };
    let head = &b[2..b.len().min(HEAD)];
    let units = head.chunks_exact(2).map(|u| {
        if le {
            u16::from_le_bytes([u[0], u[1]])
        } else {
            u16::from_be_bytes([u[0], u[1]])
        }
    });
    let chars: Vec<_> = char::decode_utf16(units).collect();
    // A character cut by the bytes looked at (the head of a longer file) is allowed at the end.
    let (last, rest) = match chars.split_last() {
        Some((last, rest)) => (last, rest),
        None => return false,
    };
    let ok = |c: &Result<char, _>| {
        c.as_ref().is_ok_and(|&c| !c.is_control() || matches!(c, '\t' | '\n' | '\r' | '\x0C'))
    };
    rest.iter().all(ok) && (ok(last) || (last.is_err() && b.len() >= HEAD))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::super::tiffmeta::{self, OutEntry, OutValue};
    use super::*;

    fn short(tag: u16, v: u16) -> OutEntry {
        OutEntry { tag, typ: 3, count: 1, value: OutValue::Bytes(v.to_le_bytes().to_vec()) }
    }

    /// A little-endian TIFF structure with IFD0 `ifd0`.
    fn tiff(ifd0: &[OutEntry]) -> Vec<u8> {
        let mut buf = tiffmeta::header(true);
        let pos = tiffmeta::write_ifd(&mut buf, ifd0, true, &mut Vec::new());
        tiffmeta::set_ifd0(&mut buf, pos, true);
        buf
    }

    fn what(name: &str, b: &[u8]) -> String {
        match format(Path::new(name), b) {
            Ok(f) => format!("ok {f}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn camera_raw_files_are_named_not_taken_for_tiffs() {
        // A NEF-like file: IFD0 a thumbnail (NewSubfileType 1, RGB), the sensor data in a SubIFD.
        let thumb =
            [OutEntry { tag: 254, typ: 4, count: 1, value: OutValue::Bytes(1u32.to_le_bytes().to_vec()) }];
        let mut ifd0 = thumb.to_vec();
        ifd0.push(short(262, 2));
        ifd0.push(OutEntry { tag: 330, typ: 4, count: 1, value: OutValue::Ifd(vec![short(262, 32803)]) });
        let nef = tiff(&ifd0);
        let e = format(Path::new("DSC_0001.nef"), &nef).unwrap_err();
        assert!(matches!(e, ImageError::CameraRaw { .. }), "{e}");
        assert!(e.to_string().starts_with("DSC_0001.nef: a camera RAW file (NEF): Veil protects"), "{e}");
        // Whatever its name, by its content.
        assert!(what("x.tif", &nef).contains("camera RAW file (a TIFF holding the camera's sensor data)"));
        // Linear raw in IFD0 itself.
        assert!(what("x.tif", &tiff(&[short(262, 34892)])).contains("camera RAW"));
        // DNG by its DNGVersion tag, CR2 by its header.
        let dng = tiff(&[
            short(262, 2),
            OutEntry { tag: 50706, typ: 1, count: 4, value: OutValue::Bytes(vec![1, 4, 0, 0]) },
        ]);
        assert!(what("IMG.tif", &dng).contains("camera RAW file (DNG)"));
        let mut cr2 = tiff(&[short(262, 2)]);
        cr2[8..10].copy_from_slice(b"CR");
        assert!(what("a.cr2", &cr2).contains("(CR2)") && what("a", &cr2).contains("(Canon CR2)"));
        // By its header where it is no TIFF; a CR3 by its MP4 brand.
        assert!(what("p", b"IIRO\x08\0\0\0").contains("(Olympus ORF)"));
        assert!(what("p", b"FUJIFILMCCD-RAW 0201").contains("(Fujifilm RAF)"));
        assert!(what("p", b"\0\0\0\x18ftypcrx \0\0\0\x01crx isom").contains("(Canon CR3)"));
        // A TIFF of RGB pixels is a photo; under a RAW name it is taken for one of its thumbnails.
        let rgb = tiff(&[short(262, 2)]);
        assert_eq!(what("scan.tiff", &rgb), "ok TIFF");
        assert!(what("scan.ARW", &rgb).contains("camera RAW file (ARW)"));
        // A RAW name on other bytes (Canon's older CRW is no TIFF) is a RAW file; on a JPEG, a photo.
        assert!(what("IMG_0001.CRW", b"II\x1a\0\0\0HEAPCCDR").contains("camera RAW file (CRW)"));
        assert_eq!(what("IMG_0001.CRW", &[0xFF, 0xD8, 0xFF, 0xE0]), "ok JPEG");
    }

    #[test]
    fn files_that_are_no_photo_are_told_apart_from_broken_photos() {
        let not_a_photo = |name: &str, b: &[u8]| match format(Path::new(name), b) {
            Err(ImageError::NotAPhoto { what, .. }) => what,
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(not_a_photo("README", b"Read me\n\tfirst\r\n"), "a text file");
        assert_eq!(not_a_photo("DSC_0001.xmp", "<x:xmpmeta> Åsa </x:xmpmeta>".as_bytes()), "a text file");
        assert_eq!(
            not_a_photo("clip.mp4", b"\0\0\0\x20ftypisom\0\0\x02\0isomiso2"),
            "a video (MP4/QuickTime)"
        );
        assert_eq!(not_a_photo("IMG_0001.MOV", b"\0\0\0\x14ftypqt  \0\0\0\0qt  "), "a video (MP4/QuickTime)");
        assert_eq!(not_a_photo("v.mkv", &[0x1A, 0x45, 0xDF, 0xA3, 1]), "a video (Matroska/WebM)");
        assert_eq!(not_a_photo("a.pdf", b"%PDF-1.7\n%\xE2\xE3"), "a PDF document");
        assert_eq!(not_a_photo("song", b"ID3\x04\0"), "a sound file (MP3)");
        assert_eq!(not_a_photo("Photos.db", b"SQLite format 3\0\x10\0"), "a database (SQLite)");
        // Windows' "Unicode" text, either byte order.
        let utf16 = |le: bool, text: &str| -> Vec<u8> {
            let bom: &[u8] = if le { &[0xFF, 0xFE] } else { &[0xFE, 0xFF] };
            let units = text.encode_utf16().flat_map(|u| if le { u.to_le_bytes() } else { u.to_be_bytes() });
            bom.iter().copied().chain(units).collect()
        };
        assert_eq!(not_a_photo("notes.txt", &utf16(true, "Åsa's trip\r\n")), "a text file");
        assert_eq!(not_a_photo("notes.txt", &utf16(false, "Åsa's trip\r\n")), "a text file");
        assert!(
            !is_utf16_text(&utf16(true, "a\0b"))
                && !is_utf16_text(&[0xFF, 0xFE])
                && !is_utf16_text(&[0xFF, 0xFE, 0x00])
        );
        // Under a photo's name, the same content is a failure the user must hear of.
        let e = format(Path::new("broken.jpg"), b"not a photo at all").unwrap_err();
        assert!(matches!(e, ImageError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("a text file under a photo's name, not a JPEG, PNG"), "{e}");
        // Unknown bytes may be a picture format Veil does not know: unsupported, not passed over.
        let e = format(Path::new("x.bin"), &[0, 1, 2, 3, 200, 201]).unwrap_err();
        assert_eq!(e.to_string(), format!("x.bin: unsupported format: not a {READABLE} file"));
        // Binary with a control byte is no text; a long text cut inside a character still is.
        assert!(!is_text(b"abc\0def") && !is_text(b"\x1b[0m") && !is_text(b""));
        let long = format!("a{}", "é".repeat(3000)).into_bytes();
        assert!(std::str::from_utf8(&long[..HEAD]).is_err() && is_text(&long));
        assert!(!is_text(&long[..HEAD - 2]), "cut inside a character before its end: not text");
    }

    #[test]
    fn pictures_in_other_formats_are_named() {
        for (b, name) in [
            (&b"GIF89a"[..], "GIF"),
            (b"BM\0\0", "BMP"),
            (b"\xFF\x0A\xFA", "JPEG XL"),
            (b"\0\0\0\x0cjP  \r\n\x87\n", "JPEG 2000"),
            (b"8BPS\0\x01", "Photoshop PSD"),
            (b"<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"/>", "SVG"),
            (b"\0\0\0\x1cftypavis\0\0\0\0avifavis", "animated AVIF"),
        ] {
            let e = format(Path::new("p"), b).unwrap_err();
            assert!(matches!(e, ImageError::Unsupported { .. }), "{name}: {e}");
            assert!(e.to_string().starts_with(&format!("p: unsupported format: {name}")), "{e}");
        }
    }
}
