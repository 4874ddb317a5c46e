//! Image input and output that keeps the photo's metadata and never risks the original.
//!
//! [`read`] (or [`read_in_folder`] for a file found in a watched folder) opens a source read-only
//! without following symbolic links, checks the file size and the pixel count from the header before
//! anything is decoded, rejects decompression bombs, decodes JPEG, PNG, WebP and TIFF, and returns a
//! [`Photo`]: the upright RGB pixels (EXIF orientation applied) that faces are found and protected
//! on, plus everything needed to write the copy back as the same photo.
//!
//! [`write`] takes the photo with its new upright pixels, turns them back into the original's stored
//! orientation (the Orientation tag is unchanged, so viewers show the copy as they showed the
//! original), re-encodes in the input's format (or another, per folder), re-inserts the metadata
//! segments byte for byte (EXIF with maker notes and GPS, XMP, ICC, IPTC, comments; PNG and WebP
//! chunks; TIFF tags; a comment between JPEG and PNG, as a COM segment or `Comment` text), regenerates the EXIF thumbnail from the protected pixels, and writes the file
//! atomically: hidden temporary name, `fsync`, rename that never clobbers (`photo (1).jpg`) unless
//! `replace_existing` says so, `fsync` of the directory. No partial file is ever left behind.
//!
//! [`write_unchanged`] is the copy of a photo with no face (`protect.no_face = "copy"`): a JPEG written
//! in JPEG under `keep` goes out as the original's own bytes, not re-encoded, less what follows its
//! end (multi-picture images, vendor trailers such as a motion photo's video, which no face search
//! looked at) and the multi-picture index that pointed there.
//!
//! The policy for metadata is [`MetadataPolicy`]: `keep` (default), `keep-no-gps` (the GPS IFD is
//! removed and its bytes zeroed, and the XMP packet's GPS properties are removed) or `strip` (only the colour profile stays; pixels are written
//! upright).

mod fsio;
#[cfg(feature = "heic")]
mod heic;
mod irb;
mod jpeg;
mod png;
mod sniff;
mod tiffmeta;
mod webp;
mod xmp;

pub use sniff::{is_other_image_extension, is_raw_extension};

use std::{
    ffi::{OsStr, OsString},
    fmt,
    io::Cursor,
    path::{Path, PathBuf},
    sync::Arc,
};

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, RgbImage, Rgba};
use serde::{Deserialize, Serialize};

use tiffmeta::{OutEntry, OutValue, Tiff};

/// The `[imageio]` configuration section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Largest image accepted, in pixels (width × height), checked from the header.
    #[serde(deserialize_with = "at_least_one")]
    pub max_pixels: u64,
    /// Largest source file accepted, in bytes, checked before it is read.
    #[serde(deserialize_with = "at_least_one")]
    pub max_file_bytes: u64,
    /// What happens to the metadata of the protected copy.
    pub metadata: MetadataPolicy,
    /// JPEG quality (1–100) of protected copies.
    pub jpeg_quality: JpegQuality,
    /// JPEG chroma subsampling of protected copies: "444" (full colour resolution) or "420".
    pub jpeg_chroma: Chroma,
    /// Encode JPEGs of 1 MP and more in strips on every core (with the standard Huffman tables:
    /// files 2–18 % larger than with optimized tables, measured on camera photos); false: on one
    /// core with optimized tables.
    pub jpeg_parallel: bool,
    /// Replace an existing file of the same name in the output folder instead of picking
    /// `name (1).ext`. A source file is never replaced.
    pub replace_existing: bool,
    /// Not configuration: the earlier copy of this photo that its new copy replaces, set by
    /// `veild` per job.
    #[serde(skip)]
    pub earlier: Option<Earlier>,
}

/// An earlier copy of a photo, which its new copy replaces instead of taking `name (1).ext`.
#[derive(Debug, Clone, PartialEq)]
pub enum Earlier {
    /// The copy of an older content of the photo (it was edited), or the copy `veil retry`
    /// makes again: replaced when it lies in the output folder under one of the name's forms.
    Copy(PathBuf),
    /// Whatever copy an attempt begun at this time wrote before it was interrupted (it could not
    /// record which): a file under one of the name's forms no older than that.
    Since(std::time::SystemTime),
}

impl Settings {
    fn overwrite(&self) -> fsio::Overwrite<'_> {
        match (&self.earlier, self.replace_existing) {
            (Some(Earlier::Copy(old)), _) => fsio::Overwrite::Copy(old),
            (Some(Earlier::Since(t)), false) => fsio::Overwrite::Since(*t),
            (_, true) => fsio::Overwrite::SameName,
            (None, false) => fsio::Overwrite::Nothing,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_pixels: 100_000_000,
            max_file_bytes: 200_000_000,
            metadata: MetadataPolicy::Keep,
            jpeg_quality: JpegQuality(95),
            jpeg_chroma: Chroma::Full,
            jpeg_parallel: true,
            replace_existing: false,
            earlier: None,
        }
    }
}

/// `imageio.metadata`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetadataPolicy {
    /// Every segment, chunk and tag as it was (the EXIF thumbnail regenerated).
    Keep,
    /// As `keep`, without the GPS IFD and the XMP packet's GPS properties.
    KeepNoGps,
    /// Only the colour profile; the pixels are written upright.
    Strip,
}

/// `imageio.jpeg_chroma`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Chroma {
    #[serde(rename = "444")]
    Full,
    #[serde(rename = "420")]
    Half,
}

/// A JPEG quality, 1–100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct JpegQuality(u8);

impl JpegQuality {
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<i64> for JpegQuality {
    type Error = String;
    fn try_from(q: i64) -> Result<Self, String> {
        u8::try_from(q)
            .ok()
            .filter(|q| (1..=100).contains(q))
            .map(JpegQuality)
            .ok_or_else(|| format!("invalid JPEG quality {q}: expected 1 to 100"))
    }
}

impl From<JpegQuality> for i64 {
    fn from(q: JpegQuality) -> i64 {
        q.0.into()
    }
}

/// A limit of 0 would refuse every photo: the configuration says so instead.
fn at_least_one<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v == 0 {
        return Err(serde::de::Error::custom("0 would refuse every photo; give a limit of at least 1"));
    }
    Ok(v)
}

/// An image format Veil reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jpeg,
    Png,
    Webp,
    Tiff,
}

impl Format {
    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
            Format::Webp => "webp",
            Format::Tiff => "tiff",
        }
    }

    fn accepts_extension(self, ext: &str) -> bool {
        let ext = ext.to_ascii_lowercase();
        match self {
            Format::Jpeg => matches!(ext.as_str(), "jpg" | "jpeg" | "jpe" | "jfif"),
            Format::Png => ext == "png",
            Format::Webp => ext == "webp",
            Format::Tiff => matches!(ext.as_str(), "tif" | "tiff"),
        }
    }

    /// Whether a file named `*.ext` is taken for a photo when a folder is walked: the extensions
    /// of the formats above, and HEIC/HEIF's and AVIF's (refused by name in a build without them).
    pub fn is_photo_extension(ext: &str) -> bool {
        [Format::Jpeg, Format::Png, Format::Webp, Format::Tiff].iter().any(|f| f.accepts_extension(ext))
            || matches!(ext.to_ascii_lowercase().as_str(), "heic" | "heif" | "avif")
    }

    fn image_format(self) -> ImageFormat {
        match self {
            Format::Jpeg => ImageFormat::Jpeg,
            Format::Png => ImageFormat::Png,
            Format::Webp => ImageFormat::WebP,
            Format::Tiff => ImageFormat::Tiff,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
            Format::Webp => "WebP",
            Format::Tiff => "TIFF",
        })
    }
}

/// Everything that can go wrong; each variant names the file (or folder) it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}: cannot open: {source}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{}: is a symbolic link, which Veil does not follow here", path.display())]
    Symlink { path: PathBuf },
    #[error("{}: leads to {}, outside the watched folder {}; refused", path.display(), target.display(), folder.display())]
    OutsideFolder { path: PathBuf, target: PathBuf, folder: PathBuf },
    #[error("{}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{}: the file is {size} bytes, more than imageio.max_file_bytes ({max})", path.display())]
    FileTooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{}: the image is {width}×{height} pixels, more than imageio.max_pixels ({max})", path.display())]
    TooManyPixels { path: PathBuf, width: u64, height: u64, max: u64 },
    #[error(
        "{}: HEIC/HEIF is not supported by this build (export the photo as JPEG, or install libheif-dev and pkg-config and build Veil again: `make build` then reads HEIC)",
        path.display()
    )]
    HeicNotSupported { path: PathBuf },
    #[error("{}: unsupported format: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },
    /// No photo at all (a video, a document, a text): `veild` leaves it alone.
    #[error("{}: {what}, not a photo (Veil protects photos only)", path.display())]
    NotAPhoto { path: PathBuf, what: String },
    #[error(
        "{}: a camera RAW file ({kind}): Veil protects developed photos ({}); export it as JPEG or TIFF from your photo editor and protect that",
        path.display(),
        sniff::READABLE
    )]
    CameraRaw { path: PathBuf, kind: String },
    #[error("{}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error("{}: cannot decode the {format} image: {message}", path.display())]
    Decode { path: PathBuf, format: Format, message: String },
    #[error("{}: the new pixels are {got_w}×{got_h}, the photo is {want_w}×{want_h}", path.display())]
    PixelSize { path: PathBuf, got_w: u32, got_h: u32, want_w: u32, want_h: u32 },
    #[error("{}: cannot encode {format}: {message}", path.display())]
    Encode { path: PathBuf, format: Format, message: String },
    #[error("{name:?} is not a plain file name for an output file")]
    BadName { name: String },
    #[error("output directory {} does not exist", dir.display())]
    OutputDirMissing { dir: PathBuf },
    #[error("output directory {} is not writable: {source}", dir.display())]
    OutputDirNotWritable { dir: PathBuf, source: std::io::Error },
    #[error("{}: disk full; nothing was written", path.display())]
    DiskFull { path: PathBuf },
    #[error("{}: output directory {} is full ({} free, the photo alone is {}); nothing was written", path.display(), dir.display(), bytes(*free), bytes(*need))]
    NoSpace { path: PathBuf, dir: PathBuf, free: u64, need: u64 },
    #[error("{}: cannot write: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

impl ImageError {
    /// What a file still being written reads as: empty (a download's placeholder) or cut short (a
    /// slow copy). `veild` tries such a file again before calling it failed.
    pub fn may_be_incomplete(&self) -> bool {
        match self {
            ImageError::Corrupt { message, .. } => {
                message.starts_with("truncated") || message == sniff::EMPTY
            }
            _ => false,
        }
    }
}

/// A decoded photo: upright pixels to protect, and what it takes to write it back.
#[derive(Debug, Clone)]
pub struct Photo {
    /// The file it was read from.
    pub source: PathBuf,
    /// Its format (the default output format).
    pub format: Format,
    /// Its EXIF orientation (1–8; 1 when it has none).
    pub orientation: u8,
    /// The upright pixels: replace them with the protected ones before [`write`].
    pub pixels: RgbImage,
    /// Size of the source file in bytes.
    pub input_bytes: u64,
    /// A JPEG source's bytes, for [`write_unchanged`] (dropped by [`Photo::release_original`]).
    original: Option<Arc<Vec<u8>>>,
    meta: Meta,
    /// Alpha channel and 16-bit colour of the original, upright, for formats that keep them.
    alpha: Option<DynamicImage>,
    deep: Option<ImageBuffer<Rgb<u16>, Vec<u16>>>,
    /// The source stores one grey channel (with or without alpha): a copy whose pixels are still
    /// grey is written with one channel too, in the formats that have one (JPEG, PNG, TIFF).
    grey: bool,
    /// The upright size, which the new pixels must keep.
    size: (u32, u32),
    source_id: fsio::FileId,
}

/// Metadata pulled out of the source.
#[derive(Debug, Clone, Default)]
struct Meta {
    /// The EXIF TIFF structure (without JPEG's `Exif\0\0`).
    exif: Option<Vec<u8>>,
    icc: Option<Vec<u8>>,
    xmp: Option<Vec<u8>>,
    /// The photo's comment (JPEG's first COM segment, PNG's `Comment` text), carried when the copy
    /// is written in the other of the two formats; within one format it travels with the rest.
    comment: Option<String>,
    native: Native,
}

#[derive(Debug, Clone, Default)]
enum Native {
    #[default]
    None,
    /// Metadata segments in file order (marker, payload); `cmyk` when the source was CMYK, whose
    /// ICC profile does not describe RGB output.
    Jpeg { segments: Vec<(u8, Vec<u8>)>, cmyk: bool },
    /// Carried chunks in file order (type, whole raw chunk).
    Png { chunks: Vec<([u8; 4], Vec<u8>)> },
    /// Carried chunks in file order (type, data).
    Webp { chunks: Vec<([u8; 4], Vec<u8>)> },
    /// IFD0's descriptive tags (values byte for byte) and the byte order they are in.
    Tiff { le: bool, entries: Vec<OutEntry> },
}

/// What [`write`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub path: PathBuf,
    pub format: Format,
    /// Size of the written file.
    pub bytes: u64,
    /// Size of the source file.
    pub input_bytes: u64,
}

impl fmt::Display for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {} bytes; the original had {} bytes)",
            self.path.display(),
            self.format,
            self.bytes,
            self.input_bytes
        )
    }
}

/// Checks that the folder `dir` can take a protected copy of `photo` now, before any work is spent
/// on it: it exists, is writable, and has at least `need` bytes free (0: no space check). See
/// [`fsio::check_output_dir`].
pub fn check_output_dir(photo: &Path, dir: &Path, need: u64) -> Result<(), ImageError> {
    fsio::check_output_dir(photo, dir, need)
}

/// Whether this user may write into `path` (permissions, and a read-only mount).
pub fn writable(path: &Path) -> std::io::Result<()> {
    fsio::writable(path)
}

/// Renames the copy of a photo renamed from `old` to `new` into `dir`: see [`fsio::rename_copy`].
pub fn rename_copy(copy: &Path, old: &OsStr, new: &OsStr, dir: &Path) -> std::io::Result<Option<PathBuf>> {
    fsio::rename_copy(copy, old, new, dir)
}

/// Writes the file `path` all at once, over an existing one only when `replace`: see
/// [`fsio::write_whole`].
pub fn write_whole(path: &Path, bytes: &[u8], replace: bool) -> std::io::Result<()> {
    fsio::write_whole(path, bytes, replace)
}

/// The bytes this user may still write in the folder `dir`, when its file system says.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    fsio::free_bytes(dir)
}

/// A size as a person reads it: `812 bytes`, `57.9 KB`, `4.2 MB`, `1.3 GB` (powers of 1000).
pub fn bytes(n: u64) -> String {
    match n {
        0..=999 => format!("{n} bytes"),
        1_000..=999_999 => format!("{:.1} KB", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.1} GB", n as f64 / 1e9),
    }
}

/// Whether this build reads HEIC/HEIF photos: `Ok` with the libheif that decodes them, or why not
/// (built without the `heic` feature, or a libheif without an HEVC decoder).
pub fn heic_support() -> Result<String, String> {
    #[cfg(feature = "heic")]
    return heic::support();
    #[cfg(not(feature = "heic"))]
    Err("this build has no libheif (install libheif-dev and pkg-config, then `make build` again)".into())
}

/// Reads a photo. The file itself must not be a symbolic link.
pub fn read(path: &Path, settings: &Settings) -> Result<Photo, ImageError> {
    let (bytes, id) = read_source(path, path, settings)?;
    decode(path, bytes, id, settings)
}

/// [`fsio::read_source`], where a file too large to read is first looked at: a video beside the
/// photos (most are larger than `max_file_bytes`) is no photo, not a photo too large.
fn read_source(path: &Path, file: &Path, settings: &Settings) -> Result<(Vec<u8>, fsio::FileId), ImageError> {
    fsio::read_source(path, file, settings.max_file_bytes).map_err(|e| match e {
        ImageError::FileTooLarge { .. } => fsio::read_head(file, sniff::HEAD as u64)
            .and_then(|head| sniff::no_photo(path, &head))
            .unwrap_or(e),
        e => e,
    })
}

/// Reads a photo found in a watched folder: a symbolic link is followed only when it (and every
/// folder on the way) stays inside `folder`.
pub fn read_in_folder(folder: &Path, path: &Path, settings: &Settings) -> Result<Photo, ImageError> {
    let target = fsio::resolve_in_folder(folder, path)?;
    let (bytes, id) = read_source(path, &target, settings)?;
    decode(path, bytes, id, settings)
}

/// Decodes a photo held in memory (`path` names it in errors).
pub fn decode_bytes(path: &Path, bytes: Vec<u8>, settings: &Settings) -> Result<Photo, ImageError> {
    if bytes.len() as u64 > settings.max_file_bytes {
        return Err(ImageError::FileTooLarge {
            path: path.into(),
            size: bytes.len() as u64,
            max: settings.max_file_bytes,
        });
    }
    decode(path, bytes, fsio::FileId::default(), settings)
}

fn decode(path: &Path, bytes: Vec<u8>, source_id: fsio::FileId, s: &Settings) -> Result<Photo, ImageError> {
    let corrupt = |message: String| ImageError::Corrupt { path: path.into(), message };
    #[cfg(feature = "heic")]
    if sniff::heif_brand(&bytes).is_some_and(|b| b != b"avif" || heic::reads_avif()) {
        return heic::decode(path, bytes, source_id, s);
    }
    let format = sniff::format(path, &bytes)?;
    // A JPEG that `image`'s decoder misreads; `jpeg-decoder` reads it.
    let mut misread_by_image = false;
    let meta = match format {
        Format::Jpeg => {
            let layout = jpeg::parse(&bytes).map_err(corrupt)?;
            misread_by_image = jpeg::is_non_interleaved(&bytes, &layout);
            if let Some(f) = layout.frame {
                if f.precision != 8 {
                    return Err(ImageError::Unsupported {
                        path: path.into(),
                        what: format!("{}-bit JPEG (this build decodes 8-bit JPEGs only)", f.precision),
                    });
                }
            }
            jpeg_meta(&bytes, &layout)
        }
        Format::Png => {
            let chunks = png::parse(&bytes).map_err(corrupt)?;
            png::check_bombs(&bytes, &chunks).map_err(corrupt)?;
            // An APNG's other frames would be dropped without a word, their faces unprotected.
            if chunks.iter().any(|c| &c.kind == b"acTL") {
                return Err(ImageError::Unsupported {
                    path: path.into(),
                    what: "animated PNG (APNG)".into(),
                });
            }
            png_meta(&bytes, &chunks)
        }
        Format::Webp => {
            let chunks = webp::parse(&bytes).map_err(corrupt)?;
            if webp::is_animated(&chunks) {
                return Err(ImageError::Unsupported { path: path.into(), what: "animated WebP".into() });
            }
            webp_meta(&bytes, &chunks)
        }
        Format::Tiff => {
            tiff_meta(path, &bytes).ok_or_else(|| corrupt("corrupt TIFF (unreadable first IFD)".into()))?
        }
    };

    let decode_err = |e: image::ImageError| match e {
        image::ImageError::Unsupported(u) => {
            ImageError::Unsupported { path: path.into(), what: u.to_string() }
        }
        other => ImageError::Decode { path: path.into(), format, message: other.to_string() },
    };
    // The header first: nothing is allocated for pixels before the size is known to be acceptable.
    let reader = || image::ImageReader::with_format(Cursor::new(&bytes[..]), format.image_format());
    let (w, h) = reader().into_dimensions().map_err(decode_err)?;
    check_pixels(path, w, h, s)?;
    // 16-bit RGBA is the widest layout the decoders produce, plus room for their own buffers.
    let max_alloc = s.max_pixels.saturating_mul(8).saturating_add(64 << 20);
    let mut img = if misread_by_image {
        decode_non_interleaved(&bytes, max_alloc).map_err(|message| ImageError::Decode {
            path: path.into(),
            format,
            message,
        })?
    } else {
        let mut r = reader();
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(max_alloc);
        r.limits(limits);
        r.decode().map_err(decode_err)?
    };

    if format == Format::Tiff && tiff_associated_alpha(&bytes) {
        unpremultiply(&mut img);
    }
    let orientation = meta.exif.as_deref().and_then(tiffmeta::orientation).unwrap_or(1);
    if let Some(o) = image::metadata::Orientation::from_exif(orientation) {
        img.apply_orientation(o);
    }
    let color = img.color();
    let alpha = color.has_alpha().then(|| alpha_of(&img));
    let deep = (color.bytes_per_pixel() / color.channel_count() == 2).then(|| img.to_rgb16());
    let grey = !color.has_color();
    let pixels = img.into_rgb8();
    let input_bytes = bytes.len() as u64;
    Ok(Photo {
        size: pixels.dimensions(),
        source: path.into(),
        format,
        orientation,
        pixels,
        input_bytes,
        original: (format == Format::Jpeg).then(|| Arc::new(bytes)),
        meta,
        alpha,
        deep,
        grey,
        source_id,
    })
}

/// Decodes a JPEG with `jpeg-decoder` instead of `image`'s decoder, for the layout the latter
/// misreads ([`jpeg::is_non_interleaved`]); grey or colour, at most `max_alloc` bytes.
fn decode_non_interleaved(bytes: &[u8], max_alloc: u64) -> Result<DynamicImage, String> {
    let mut d = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    d.set_max_decoding_buffer_size(usize::try_from(max_alloc).unwrap_or(usize::MAX));
    let pixels = d.decode().map_err(|e| e.to_string())?;
    let info = d.info().ok_or("the JPEG decoder returned no header")?;
    let (w, h, n) = (u32::from(info.width), u32::from(info.height), pixels.len());
    let wrong = || format!("the JPEG decoder returned {n} bytes for {w}x{h} pixels");
    match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8).ok_or_else(wrong)
        }
        jpeg_decoder::PixelFormat::L8 => {
            image::GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8).ok_or_else(wrong)
        }
        other => Err(format!("a non-interleaved JPEG in {other:?} is not supported")),
    }
}

/// The pixel limit, checked from the header before anything is decoded.
fn check_pixels(path: &Path, w: u32, h: u32, s: &Settings) -> Result<(), ImageError> {
    if u64::from(w) * u64::from(h) > s.max_pixels {
        return Err(ImageError::TooManyPixels {
            path: path.into(),
            width: w.into(),
            height: h.into(),
            max: s.max_pixels,
        });
    }
    Ok(())
}

fn alpha_of(img: &DynamicImage) -> DynamicImage {
    let (w, h) = (img.width(), img.height());
    if img.color().bytes_per_pixel() / img.color().channel_count() == 2 {
        let rgba = img.to_rgba16();
        DynamicImage::ImageLuma16(ImageBuffer::from_fn(w, h, |x, y| Luma([rgba.get_pixel(x, y)[3]])))
    } else {
        let rgba = img.to_rgba8();
        DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, y| Luma([rgba.get_pixel(x, y)[3]])))
    }
}

fn jpeg_meta(data: &[u8], layout: &jpeg::Layout) -> Meta {
    let mut meta = Meta::default();
    let mut segments = Vec::new();
    let cmyk = layout.frame.is_some_and(|f| f.components == 4);
    for s in layout.header() {
        let p = &data[s.payload.clone()];
        let keep = match s.marker {
            jpeg::APP0 => {
                // A JFIF thumbnail (or a JFXX one) is a copy of the unprotected photo.
                let thumb = p.starts_with(b"JFIF\0") && p.len() >= 14 && (p[12] != 0 || p[13] != 0)
                    || p.starts_with(b"JFXX\0");
                if thumb {
                    tracing::info!("dropping a JFIF thumbnail (a copy of the unprotected photo)");
                }
                !thumb
            }
            jpeg::APP1 if p.starts_with(jpeg::EXIF_ID) && meta.exif.is_none() => {
                meta.exif = Some(p[jpeg::EXIF_ID.len()..].to_vec());
                true
            }
            jpeg::APP1 if p.starts_with(jpeg::XMP_ID) && meta.xmp.is_none() => {
                meta.xmp = Some(p[jpeg::XMP_ID.len()..].to_vec());
                true
            }
            // Multi-picture (MPF) index: it points at images after EOI, which are not carried.
            jpeg::APP2 if p.starts_with(jpeg::MPF_ID) => false,
            // Adobe's segment describes the colour transform of the old encoding.
            jpeg::APP14 => false,
            jpeg::COM => {
                if meta.comment.is_none() {
                    // UTF-8 as most writers now use; otherwise Latin-1, as older cameras wrote it.
                    meta.comment = Some(String::from_utf8(p.to_vec()).unwrap_or_else(|_| latin1(p)));
                }
                true
            }
            m => (0xE0..=0xEF).contains(&m),
        };
        if keep {
            segments.push((s.marker, p.to_vec()));
        }
    }
    if layout.trailer < data.len() && data[layout.trailer..].iter().any(|&b| b != 0) {
        tracing::info!(
            bytes = data.len() - layout.trailer,
            "dropping data after the JPEG's end (multi-picture images, vendor trailers)"
        );
    }
    meta.icc = jpeg::icc_profile(data, layout);
    meta.native = Native::Jpeg { segments, cmyk };
    meta
}

/// Latin-1 bytes as text (each byte its own code point).
fn latin1(b: &[u8]) -> String {
    b.iter().map(|&c| char::from(c)).collect()
}

fn png_meta(data: &[u8], chunks: &[png::Chunk]) -> Meta {
    let mut meta = Meta::default();
    let mut carried = Vec::new();
    for c in chunks {
        let d = &data[c.data.clone()];
        match &c.kind {
            b"eXIf" if meta.exif.is_none() => meta.exif = Some(d.to_vec()),
            b"iCCP" if meta.icc.is_none() => meta.icc = png::icc(d),
            b"iTXt" if meta.xmp.is_none() && png::xmp(d).is_some() => {
                meta.xmp = png::xmp(d).map(<[u8]>::to_vec)
            }
            b"tEXt" | b"zTXt" | b"iTXt" if meta.comment.is_none() => meta.comment = png::comment(&c.kind, d),
            _ => {}
        }
        if png::carry(&c.kind, false) {
            carried.push((c.kind, data[c.raw.clone()].to_vec()));
        }
    }
    meta.native = Native::Png { chunks: carried };
    meta
}

fn webp_meta(data: &[u8], chunks: &[webp::Chunk]) -> Meta {
    let mut meta = Meta::default();
    let mut carried = Vec::new();
    for c in chunks {
        let d = &data[c.data.clone()];
        match &c.kind {
            // Some writers put JPEG's "Exif\0\0" in front of the TIFF structure.
            b"EXIF" if meta.exif.is_none() => {
                meta.exif = Some(d.strip_prefix(jpeg::EXIF_ID).unwrap_or(d).to_vec())
            }
            b"ICCP" if meta.icc.is_none() => meta.icc = Some(d.to_vec()),
            b"XMP " if meta.xmp.is_none() => meta.xmp = Some(d.to_vec()),
            _ => {}
        }
        if webp::carry(&c.kind, false) {
            carried.push((c.kind, d.to_vec()));
        }
    }
    meta.native = Native::Webp { chunks: carried };
    meta
}

/// TIFF tags that describe the pixel encoding (rewritten by the encoder) rather than the photo.
fn structural_tiff_tag(tag: u16) -> bool {
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

const TIFF_ICC: u16 = 34675;
const TIFF_XMP: u16 = 700;

fn tiff_meta(path: &Path, data: &[u8]) -> Option<Meta> {
    let t = Tiff::new(data)?;
    let ifd0 = t.ifd(t.ifd0_offset()?)?;
    let entries = tiffmeta::copy_ifd(&t, ifd0.pos, &structural_tiff_tag, 0);
    let raw = |tag: u16| match entries.iter().find(|e| e.tag == tag).map(|e| &e.value) {
        Some(OutValue::Bytes(b)) => Some(b.clone()),
        _ => None,
    };
    let mut meta = Meta { icc: raw(TIFF_ICC), xmp: raw(TIFF_XMP), ..Meta::default() };
    // The descriptive tags as an EXIF structure, for orientation and for other output formats.
    let exif_entries: Vec<OutEntry> =
        entries.iter().filter(|e| !matches!(e.tag, TIFF_ICC | TIFF_XMP)).cloned().collect();
    if !exif_entries.is_empty() {
        meta.exif = Some(exif_blob(&exif_entries, t.le));
    }
    if t.u32_at(ifd0.next_ptr_pos).unwrap_or(0) != 0 {
        // A warning: `veil protect` shows it, and the copy lacks the other pages.
        tracing::warn!(
            "{}: the TIFF has more than one page; only the first is protected and written",
            path.display()
        );
    }
    meta.native = Native::Tiff { le: t.le, entries };
    Some(meta)
}

/// Whether a TIFF's first image stores associated (premultiplied) alpha: ExtraSamples = 1.
fn tiff_associated_alpha(data: &[u8]) -> bool {
    let Some(t) = Tiff::new(data) else { return false };
    let Some(ifd0) = t.ifd0_offset().and_then(|o| t.ifd(o)) else { return false };
    t.find(&ifd0, 338).and_then(|e| t.scalar(&e)) == Some(1)
}

/// Premultiplied colour made straight (`c·max/α`, rounded), as the copy is written with
/// unassociated alpha (ExtraSamples = 2) and protected on the colours a viewer shows.
fn unpremultiply(img: &mut DynamicImage) {
    fn straight<const N: usize, T: Copy + Into<u32> + TryFrom<u32>>(px: &mut [T; N], max: u32) {
        let a: u32 = px[N - 1].into();
        if a == 0 || a == max {
            return;
        }
        for c in &mut px[..N - 1] {
            let v = ((*c).into() * max + a / 2) / a;
            if let Ok(v) = T::try_from(v.min(max)) {
                *c = v;
            }
        }
    }
    match img {
        DynamicImage::ImageRgba8(i) => i.pixels_mut().for_each(|p| straight(&mut p.0, 255)),
        DynamicImage::ImageRgba16(i) => i.pixels_mut().for_each(|p| straight(&mut p.0, 65535)),
        DynamicImage::ImageLumaA8(i) => i.pixels_mut().for_each(|p| straight(&mut p.0, 255)),
        DynamicImage::ImageLumaA16(i) => i.pixels_mut().for_each(|p| straight(&mut p.0, 65535)),
        _ => {}
    }
}

fn exif_blob(entries: &[OutEntry], le: bool) -> Vec<u8> {
    let mut b = tiffmeta::header(le);
    let at = tiffmeta::write_ifd(&mut b, entries, le, &mut Vec::new());
    tiffmeta::set_ifd0(&mut b, at, le);
    b
}

impl Photo {
    /// Drops the source's bytes kept for [`write_unchanged`], once the photo is known to change.
    pub fn release_original(&mut self) {
        self.original = None;
    }
}

/// Writes `photo` (its `pixels` now the protected ones, upright) into `out_dir` under `file_name`
/// (any bytes a file name may hold, not only UTF-8), in `format` (default: the source's). When the
/// format changes, the extension follows it.
pub fn write(
    photo: &Photo,
    out_dir: &Path,
    file_name: impl AsRef<OsStr>,
    format: Option<Format>,
    settings: &Settings,
) -> Result<Written, ImageError> {
    write_with(photo, out_dir, file_name, format, settings, None)
}

/// [`write`], taking the JPEG strips [`preencode`] made before the pixels changed (only where they
/// match this image and these settings; the pixels of those strips must be the same).
pub fn write_with(
    photo: &Photo,
    out_dir: &Path,
    file_name: impl AsRef<OsStr>,
    format: Option<Format>,
    settings: &Settings,
    pre: Option<&Preencoded>,
) -> Result<Written, ImageError> {
    let format = format.unwrap_or(photo.format);
    let name = output_name(file_name.as_ref(), format)?;
    let target = out_dir.join(&name);
    let (w, h) = photo.pixels.dimensions();
    let want = photo.size;
    if want != (w, h) {
        return Err(ImageError::PixelSize {
            path: target,
            got_w: w,
            got_h: h,
            want_w: want.0,
            want_h: want.1,
        });
    }
    let stored = stored_image(photo, format, stored_orientation(photo, settings));
    let bytes = encode(photo, &stored, format, settings, pre).map_err(|message| ImageError::Encode {
        path: target.clone(),
        format,
        message,
    })?;
    let path = fsio::write_atomic(out_dir, &name, &bytes, settings.overwrite(), photo.source_id)?;
    let written = Written { path, format, bytes: bytes.len() as u64, input_bytes: photo.input_bytes };
    tracing::info!(output = %written.path.display(), bytes = written.bytes, input_bytes = written.input_bytes, "wrote protected copy");
    Ok(written)
}

/// Writes the copy of a photo whose pixels do not change (no face, `protect.no_face = "copy"`). A
/// JPEG source written as JPEG under [`MetadataPolicy::Keep`] goes out as its own bytes
/// ([`jpeg::unchanged`]): no second generation of JPEG loss, no larger file, every segment as it
/// was; under [`MetadataPolicy::KeepNoGps`] as its own segments and scans with the GPS removed
/// from its EXIF and XMP as [`write`] removes it. Otherwise (`strip`, another format), or once
/// [`Photo::release_original`] has dropped the bytes, it is [`write`].
pub fn write_unchanged(
    photo: &Photo,
    out_dir: &Path,
    file_name: impl AsRef<OsStr>,
    format: Option<Format>,
    settings: &Settings,
) -> Result<Written, ImageError> {
    let file_name = file_name.as_ref();
    let format = format.unwrap_or(photo.format);
    let kept = matches!(settings.metadata, MetadataPolicy::Keep | MetadataPolicy::KeepNoGps);
    // Only a JPEG source holds its bytes.
    let original = photo.original.as_deref().filter(|_| format == Format::Jpeg && kept);
    let Some(data) = original else {
        return write(photo, out_dir, file_name, Some(format), settings);
    };
    let name = output_name(file_name, format)?;
    // The bytes were parsed when the photo was read; a failure here would be a bug, not the file's.
    let layout =
        jpeg::parse(data).map_err(|message| ImageError::Corrupt { path: photo.source.clone(), message })?;
    let bytes = if settings.metadata == MetadataPolicy::KeepNoGps {
        match unchanged_without_gps(data, &layout) {
            Some(bytes) => bytes,
            None => return write(photo, out_dir, file_name, Some(format), settings),
        }
    } else {
        jpeg::unchanged(data, &layout)
    };
    let path = fsio::write_atomic(out_dir, &name, &bytes, settings.overwrite(), photo.source_id)?;
    let written = Written { path, format, bytes: bytes.len() as u64, input_bytes: photo.input_bytes };
    tracing::info!(output = %written.path.display(), bytes = written.bytes, "wrote the original's bytes (nothing to protect)");
    Ok(written)
}

/// The output file's name: `file_name` (a plain name, not hidden), its extension made to fit `format`.
fn output_name(file_name: &OsStr, format: Format) -> Result<OsString, ImageError> {
    use std::os::unix::ffi::OsStrExt;
    let p = Path::new(file_name);
    let plain = p.file_name().is_some_and(|n| n == file_name) && !file_name.as_bytes().starts_with(b".");
    if !plain {
        return Err(ImageError::BadName { name: file_name.to_string_lossy().into_owned() });
    }
    Ok(match p.extension().and_then(|e| e.to_str()) {
        Some(ext) if format.accepts_extension(ext) => file_name.to_os_string(),
        _ => {
            let mut name = p.file_stem().unwrap_or(file_name).to_os_string();
            name.push(".");
            name.push(format.extension());
            name
        }
    })
}

/// The EXIF orientation the copy of `photo` is stored in: the source's, or 1 when the metadata
/// (orientation included) is stripped.
fn stored_orientation(photo: &Photo, settings: &Settings) -> u8 {
    if settings.metadata == MetadataPolicy::Strip {
        1
    } else {
        photo.orientation
    }
}

/// The orientation that undoes `o` (6 and 8 are each other's inverse; the rest undo themselves).
fn inverse(o: u8) -> u8 {
    match o {
        6 => 8,
        8 => 6,
        o => o,
    }
}

/// The image to encode, in stored orientation: the photo's own pixels when nothing changes them
/// (upright RGB8 without alpha or 16-bit values to bring back: no copy of a 12 MP photo), else a new
/// image.
enum Stored<'a> {
    Pixels(&'a RgbImage),
    Image(DynamicImage),
}

impl Stored<'_> {
    fn dimensions(&self) -> (u32, u32) {
        match self {
            Stored::Pixels(p) => p.dimensions(),
            Stored::Image(i) => (i.width(), i.height()),
        }
    }

    /// A `w`×`h` RGB thumbnail (the `image` crate's area-averaging thumbnail, as for a `DynamicImage`).
    fn thumbnail(&self, w: u32, h: u32) -> RgbImage {
        match self {
            Stored::Pixels(p) => image::imageops::thumbnail(*p, w, h),
            Stored::Image(i) => i.thumbnail_exact(w, h).into_rgb8(),
        }
    }

    /// As 8-bit RGB (alpha dropped, 16-bit values rounded), borrowed when it is that already.
    fn rgb8(&self) -> std::borrow::Cow<'_, RgbImage> {
        match self {
            Stored::Pixels(p) => std::borrow::Cow::Borrowed(*p),
            Stored::Image(DynamicImage::ImageRgb8(i)) => std::borrow::Cow::Borrowed(i),
            Stored::Image(other) => std::borrow::Cow::Owned(other.to_rgb8()),
        }
    }

    /// As an `image` crate image, for the encoders that take one (a copy of borrowed pixels).
    fn image(&self) -> std::borrow::Cow<'_, DynamicImage> {
        match self {
            Stored::Pixels(p) => std::borrow::Cow::Owned(DynamicImage::ImageRgb8((*p).clone())),
            Stored::Image(i) => std::borrow::Cow::Borrowed(i),
        }
    }
}

/// The image to encode, in stored orientation: the new pixels, with the original's alpha and, where
/// a pixel was left as it was, its 16-bit value (formats that hold them).
fn stored_image(photo: &Photo, format: Format, orientation: u8) -> Stored<'_> {
    let keep_alpha = photo.alpha.is_some() && format != Format::Jpeg;
    let keep_deep = photo.deep.is_some() && matches!(format, Format::Png | Format::Tiff);
    let turn = image::metadata::Orientation::from_exif(inverse(orientation))
        .filter(|o| *o != image::metadata::Orientation::NoTransforms);
    let grey = photo.grey && format != Format::Webp && is_grey(&photo.pixels);
    // JPEG has no alpha: the copy shows the transparent areas over white, as exporters flatten them,
    // not whatever colour happens to be stored under them. The flattened pixels go on as the new
    // ones (a grey photo stays grey: white keeps three channels equal).
    let flat = photo.alpha.as_ref().filter(|_| format == Format::Jpeg).map(|alpha| {
        tracing::info!("flattening the transparent areas onto white: a JPEG copy has no alpha");
        let a = alpha.to_luma8();
        let mut flat = photo.pixels.clone();
        for (p, al) in flat.pixels_mut().zip(a.pixels()) {
            let al = u32::from(al[0]);
            for c in p.0.iter_mut() {
                *c = ((u32::from(*c) * al + 255 * (255 - al) + 127) / 255) as u8;
            }
        }
        flat
    });
    let px = flat.as_ref().unwrap_or(&photo.pixels);
    if !keep_alpha && !keep_deep && !grey && turn.is_none() {
        return match flat {
            Some(flat) => Stored::Image(DynamicImage::ImageRgb8(flat)),
            None => Stored::Pixels(&photo.pixels),
        };
    }
    let mut img = if grey {
        grey_image(photo, px, keep_alpha, keep_deep)
    } else if keep_deep {
        let deep = photo.deep.as_ref().map(|d| merge_deep(px, d));
        let rgb = deep.unwrap_or_else(|| DynamicImage::ImageRgb8(px.clone()).into_rgb16());
        if keep_alpha {
            let a = photo.alpha.as_ref().map(|a| a.to_luma16());
            DynamicImage::ImageRgba16(ImageBuffer::from_fn(rgb.width(), rgb.height(), |x, y| {
                let p = rgb.get_pixel(x, y);
                let al = a.as_ref().map_or(u16::MAX, |a| a.get_pixel(x, y)[0]);
                Rgba([p[0], p[1], p[2], al])
            }))
        } else {
            DynamicImage::ImageRgb16(rgb)
        }
    } else if keep_alpha {
        let a = photo.alpha.as_ref().map(|a| a.to_luma8());
        DynamicImage::ImageRgba8(ImageBuffer::from_fn(px.width(), px.height(), |x, y| {
            let p = px.get_pixel(x, y);
            let al = a.as_ref().map_or(u8::MAX, |a| a.get_pixel(x, y)[0]);
            Rgba([p[0], p[1], p[2], al])
        }))
    } else {
        DynamicImage::ImageRgb8(flat.unwrap_or_else(|| photo.pixels.clone()))
    };
    if let Some(o) = turn {
        img.apply_orientation(o);
    }
    Stored::Image(img)
}

/// Whether every pixel has three equal channels.
fn is_grey(pixels: &RgbImage) -> bool {
    pixels.as_raw().chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2])
}

/// A grey photo's pixels `px` (every pixel's channels equal: its new ones, or those flattened onto
/// white) as one channel, with the original's alpha and 16-bit values as `stored_image` keeps them.
fn grey_image(photo: &Photo, px: &RgbImage, keep_alpha: bool, keep_deep: bool) -> DynamicImage {
    let (w, h) = px.dimensions();
    if keep_deep {
        let deep = photo.deep.as_ref().map(|d| merge_deep(px, d));
        let value =
            |x, y| deep.as_ref().map_or(u16::from(px.get_pixel(x, y)[0]) * 257, |d| d.get_pixel(x, y)[0]);
        match photo.alpha.as_ref().filter(|_| keep_alpha).map(|a| a.to_luma16()) {
            Some(a) => DynamicImage::ImageLumaA16(ImageBuffer::from_fn(w, h, |x, y| {
                image::LumaA([value(x, y), a.get_pixel(x, y)[0]])
            })),
            None => DynamicImage::ImageLuma16(ImageBuffer::from_fn(w, h, |x, y| Luma([value(x, y)]))),
        }
    } else {
        match photo.alpha.as_ref().filter(|_| keep_alpha).map(|a| a.to_luma8()) {
            Some(a) => DynamicImage::ImageLumaA8(ImageBuffer::from_fn(w, h, |x, y| {
                image::LumaA([px.get_pixel(x, y)[0], a.get_pixel(x, y)[0]])
            })),
            None => {
                DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, y| Luma([px.get_pixel(x, y)[0]])))
            }
        }
    }
}

/// 16-bit output: a pixel the protection left unchanged keeps its original 16-bit value.
fn merge_deep(new: &RgbImage, deep: &ImageBuffer<Rgb<u16>, Vec<u16>>) -> ImageBuffer<Rgb<u16>, Vec<u16>> {
    let to8 = |v: u16| ((u32::from(v) * 255 + 32767) / 65535) as u8;
    ImageBuffer::from_fn(new.width(), new.height(), |x, y| {
        let n = new.get_pixel(x, y);
        let o = deep.get_pixel(x, y);
        Rgb(std::array::from_fn(|c| if to8(o[c]) == n[c] { o[c] } else { u16::from(n[c]) * 257 }))
    })
}

/// Whether two sizes have the same shape, to 5 % (a small thumbnail's rounding stays within it).
fn same_shape(a: (u32, u32), b: (u32, u32)) -> bool {
    let ratio = |(w, h): (u32, u32)| f64::from(w.max(1)) / f64::from(h.max(1));
    (ratio(a) / ratio(b) - 1.0).abs() <= 0.05
}

/// The EXIF structure to write: GPS removed when asked, thumbnail regenerated from `stored`.
fn prepare_exif(blob: &[u8], s: &Settings, stored: &Stored<'_>, max_len: usize) -> Option<Vec<u8>> {
    if s.metadata == MetadataPolicy::Strip {
        return None;
    }
    let mut blob = blob.to_vec();
    if s.metadata == MetadataPolicy::KeepNoGps && tiffmeta::remove_gps(&mut blob) {
        tracing::info!("removed the GPS IFD (imageio.metadata = \"keep-no-gps\")");
    }
    match tiffmeta::thumbnail(&blob) {
        (_, Some(th)) if !blob[th.offset..th.offset + th.len].starts_with(&[0xFF, 0xD8]) => {
            // Empty or not a JPEG: no viewer shows it, and it holds no picture to replace.
            tracing::debug!(len = th.len, "the EXIF thumbnail pointer leads to no JPEG; kept as it is");
        }
        (_, Some(th)) => {
            let old = &blob[th.offset..th.offset + th.len];
            // The old thumbnail's size, unless its shape is not the photo's (a spliced file): then
            // the photo's shape within the old thumbnail's longer side.
            let (w, h) = stored.dimensions();
            let (tw, th_h) = match jpeg::dimensions(old) {
                Some((ow, oh)) if same_shape((ow, oh), (w, h)) => (ow, oh),
                Some((ow, oh)) => fit(w, h, ow.max(oh)),
                None => fit(w, h, 160),
            };
            let small = stored.thumbnail(tw.max(1), th_h.max(1));
            let replaced = [90u8, 75, 60, 40].iter().any(|&q| {
                encode_jpeg(&small, q, Chroma::Half, false)
                    .is_ok_and(|j| tiffmeta::replace_thumbnail(&mut blob, &th, &j, max_len))
            });
            if !replaced {
                tracing::info!("dropped the EXIF thumbnail: a regenerated one does not fit");
                tiffmeta::drop_thumbnail(&mut blob);
            }
        }
        (true, None) => match tiffmeta::raw_thumbnail(&blob) {
            Some(raw) => {
                let small = stored.thumbnail(raw.width, raw.height);
                let len = small.as_raw().len();
                blob[raw.offset..raw.offset + len].copy_from_slice(small.as_raw());
            }
            None => {
                tracing::info!("dropped the EXIF IFD1 (a thumbnail Veil cannot regenerate)");
                tiffmeta::drop_thumbnail(&mut blob);
            }
        },
        (false, None) => {}
    }
    if blob.len() > max_len {
        tracing::warn!(bytes = blob.len(), "dropped the EXIF block: too large for the output format");
        return None;
    }
    Some(blob)
}

/// The APP13 block with its Photoshop thumbnails regenerated from `stored` (at a lower quality
/// when needed to fit the segment), or dropped where they cannot fit.
fn photoshop_thumbnails(block: &[u8], stored: &Stored<'_>) -> Vec<u8> {
    for q in [90u8, 75, 60, 40] {
        let rebuilt = irb::replace_thumbnails(block, &mut |w, h, bgr| {
            let mut small = stored.thumbnail(w, h);
            if bgr {
                small.pixels_mut().for_each(|p| p.0.swap(0, 2));
            }
            encode_jpeg(&small, q, Chroma::Half, false).ok()
        });
        if let Some(b) = rebuilt.filter(|b| b.len() <= jpeg::MAX_PAYLOAD) {
            return b;
        }
    }
    irb::replace_thumbnails(block, &mut |_, _, _| None).unwrap_or_else(|| block.to_vec())
}

fn fit(w: u32, h: u32, max: u32) -> (u32, u32) {
    if w >= h {
        (max, (h * max / w.max(1)).max(1))
    } else {
        ((w * max / h.max(1)).max(1), max)
    }
}

/// Pixels below which a JPEG is encoded in one piece: splitting pays only on large photos.
const STRIPS_FROM_PIXELS: u64 = 1 << 20;

/// Encodes RGB pixels as a baseline JPEG. In one piece with optimized Huffman tables (at 4:4:4; see
/// [`encode_jpeg_piece`]), or, with
/// `parallel` and from [`STRIPS_FROM_PIXELS`] up, cut into horizontal strips of whole MCU rows, one
/// per core, encoded at once with the standard tables (which every strip must share) and joined with
/// restart markers ([`jpeg::join_strips`]). Encoding and writing a 12 MP photo took 0.28 s in one
/// piece and 0.12 s in two strips on a 2-core CPU, and 0.34 s in one piece on the 16-core H200 host
/// (bench/results/jpeg-encode-cpu-2026-11-27.md).
fn encode_jpeg(img: &RgbImage, quality: u8, chroma: Chroma, parallel: bool) -> Result<Vec<u8>, String> {
    encode_jpeg_reusing(img, quality, chroma, parallel, None)
}

/// Threads a `w`×`h` JPEG is encoded on: every core from [`STRIPS_FROM_PIXELS`] up with `parallel`,
/// else one.
fn jpeg_threads(w: u32, h: u32, parallel: bool) -> usize {
    if parallel && u64::from(w) * u64::from(h) >= STRIPS_FROM_PIXELS {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        1
    }
}

/// Strips a JPEG encoded on several threads is cut into, at least: thin enough that a face crosses
/// few of them, so that [`preencode`] can encode the others before the protection is done.
const MIN_STRIPS: usize = 32;

/// How a JPEG encoded in strips is cut: `per_strip` MCU rows a strip (the last may have fewer),
/// MCUs of `mcu` pixels square, `mcu_cols` of them a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StripPlan {
    per_strip: u32,
    mcu: u32,
    mcu_cols: u32,
}

impl StripPlan {
    /// About `strips` strips of a `w`×`h` image (more for a very wide one: a restart interval counts at
    /// most 65535 MCUs); `None` when that leaves one piece.
    fn new(w: u32, h: u32, chroma: Chroma, strips: usize) -> Option<StripPlan> {
        // MCU: 8x8 pixels at 4:4:4, 16x16 at 4:2:0.
        let mcu = match chroma {
            Chroma::Full => 8,
            Chroma::Half => 16,
        };
        let (mcu_cols, mcu_rows) = (w.div_ceil(mcu), h.div_ceil(mcu));
        let max_rows = (u32::from(u16::MAX) / mcu_cols.max(1)).max(1);
        let per_strip = mcu_rows.div_ceil(strips.max(1) as u32).clamp(1, max_rows);
        (strips > 1 && per_strip < mcu_rows).then_some(StripPlan { per_strip, mcu, mcu_cols })
    }

    /// Pixel rows of a strip.
    fn rows(&self) -> u32 {
        self.per_strip * self.mcu
    }
}

/// The plan [`encode_jpeg`] cuts a `w`×`h` JPEG by (`None`: one piece, optimized tables), and the
/// threads it encodes on.
fn jpeg_plan(w: u32, h: u32, chroma: Chroma, parallel: bool) -> (Option<StripPlan>, usize) {
    let threads = jpeg_threads(w, h, parallel);
    let plan = if threads > 1 { StripPlan::new(w, h, chroma, threads.max(MIN_STRIPS)) } else { None };
    (plan, threads)
}

/// [`encode_jpeg`], taking the strips `pre` encoded ahead where it was made for this image's size
/// and settings.
fn encode_jpeg_reusing(
    img: &RgbImage,
    quality: u8,
    chroma: Chroma,
    parallel: bool,
    pre: Option<&Preencoded>,
) -> Result<Vec<u8>, String> {
    let (w, h) = img.dimensions();
    let (plan, threads) = jpeg_plan(w, h, chroma, parallel);
    let done = pre
        .filter(|p| p.size == (w, h) && p.quality == quality && p.chroma == chroma && Some(p.plan) == plan)
        .map_or(&[][..], |p| p.strips.as_slice());
    encode_jpeg_strips(img, quality, chroma, threads, plan, done)
}

/// A one-component JPEG, with optimized Huffman tables (one core: a third of an RGB photo's work).
fn encode_jpeg_grey(img: &image::GrayImage, quality: u8) -> Result<Vec<u8>, String> {
    let (w, h) = img.dimensions();
    let too_large = || format!("{w}x{h} pixels is larger than a JPEG can hold (65,535 a side)");
    let (w16, h16) = (u16::try_from(w).map_err(|_| too_large())?, u16::try_from(h).map_err(|_| too_large())?);
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, quality);
    enc.set_optimized_huffman_tables(true);
    enc.encode(img.as_raw(), w16, h16, jpeg_encoder::ColorType::Luma).map_err(|e| e.to_string())?;
    Ok(out)
}

/// RGB rows (`raw`, `width` pixels wide) as one baseline JPEG, with optimized (`optimize`, 4:4:4 only)
/// or standard Huffman tables; at 4:2:0 with each 2×2 block's colour averaged
/// ([`jpeg::Averaged420`]), as libjpeg writes it. `veil eval`'s JPEG defenses use it too.
///
/// A 4:2:0 JPEG always gets the standard tables: `jpeg-encoder` writes optimized tables only in
/// one scan per component (non-interleaved), which `image` 0.25's decoder (zune-jpeg 0.5.15) turns
/// into garbage at 4:2:0 (zune-image issue 422; Veil itself reads such files with `jpeg-decoder`,
/// see [`jpeg::is_non_interleaved`], but other programs built on `image` would not). Interleaved,
/// as libjpeg writes it by default, every decoder reads it.
pub(crate) fn encode_jpeg_piece(
    raw: &[u8],
    width: u16,
    rows: u16,
    quality: u8,
    chroma: Chroma,
    optimize: bool,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, quality);
    enc.set_sampling_factor(match chroma {
        Chroma::Full => jpeg_encoder::SamplingFactor::R_4_4_4,
        Chroma::Half => jpeg_encoder::SamplingFactor::R_4_2_0,
    });
    enc.set_optimized_huffman_tables(optimize && chroma == Chroma::Full);
    match chroma {
        Chroma::Full => enc.encode(raw, width, rows, jpeg_encoder::ColorType::Rgb),
        Chroma::Half => {
            let input = jpeg::Averaged420::new(raw, width, rows)
                .ok_or_else(|| format!("{} bytes are not {width}x{rows} RGB pixels", raw.len()))?;
            enc.encode_image(input)
        }
    }
    .map_err(|e| e.to_string())?;
    Ok(out)
}

/// [`encode_jpeg`] on `threads` threads: in one piece with optimized tables without a `plan`, else in
/// the plan's strips with the standard tables, `threads` at a time, each strip that `done` holds
/// (by index) taken from it instead of encoded.
fn encode_jpeg_strips(
    img: &RgbImage,
    quality: u8,
    chroma: Chroma,
    threads: usize,
    plan: Option<StripPlan>,
    done: &[Option<Vec<u8>>],
) -> Result<Vec<u8>, String> {
    let (w, h) = img.dimensions();
    let (w16, h16) = (
        u16::try_from(w).map_err(|_| format!("{w} pixels is too wide for JPEG (at most 65535)"))?,
        u16::try_from(h).map_err(|_| format!("{h} pixels is too tall for JPEG (at most 65535)"))?,
    );
    let Some(plan) = plan else {
        return encode_jpeg_piece(img.as_raw(), w16, h16, quality, chroma, true);
    };
    let todo = |k: usize| done.get(k).is_none_or(Option::is_none);
    let fresh = encode_strips(img, quality, chroma, threads, plan, todo)?;
    let strips: Vec<&[u8]> = fresh
        .iter()
        .enumerate()
        .map(|(k, f)| match (f.as_deref(), done.get(k).and_then(Option::as_deref)) {
            (Some(new), _) => Ok(new),
            (None, Some(old)) => Ok(old),
            (None, None) => Err(format!("strip {k} was neither encoded nor given")),
        })
        .collect::<Result<_, String>>()?;
    // per_strip <= 65535 / mcu_cols, so the product fits.
    jpeg::join_strips(&strips, h16, (plan.per_strip * plan.mcu_cols) as u16)
}

/// The strips of `img` cut by `plan` for which `want(index)` holds, encoded `threads` at a time with
/// the standard tables; `None` for the others.
fn encode_strips(
    img: &RgbImage,
    quality: u8,
    chroma: Chroma,
    threads: usize,
    plan: StripPlan,
    want: impl Fn(usize) -> bool,
) -> Result<Vec<Option<Vec<u8>>>, String> {
    let w = img.width();
    let w16 = u16::try_from(w).map_err(|_| format!("{w} pixels is too wide for JPEG (at most 65535)"))?;
    let row_bytes = w as usize * 3;
    let pieces: Vec<(usize, &[u8])> =
        img.as_raw().chunks(plan.rows() as usize * row_bytes).enumerate().filter(|(k, _)| want(*k)).collect();
    let mut out: Vec<Option<Vec<u8>>> = vec![None; img.height().div_ceil(plan.rows()) as usize];
    for batch in pieces.chunks(threads.max(1)) {
        let encoded: Vec<Result<Vec<u8>, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|&(_, raw)| {
                    let rows = (raw.len() / row_bytes) as u16;
                    scope.spawn(move || encode_jpeg_piece(raw, w16, rows, quality, chroma, false))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("a JPEG encoder thread panicked".into())))
                .collect()
        });
        for (&(k, _), e) in batch.iter().zip(encoded) {
            out[k] = Some(e?);
        }
    }
    Ok(out)
}

/// Strips of a photo's JPEG copy encoded ahead of time, from pixels the protection will not change
/// ([`preencode`]); [`write_with`] takes them instead of encoding those strips again.
pub struct Preencoded {
    size: (u32, u32),
    quality: u8,
    chroma: Chroma,
    plan: StripPlan,
    /// By strip index; `None` where the strip is still to be encoded.
    strips: Vec<Option<Vec<u8>>>,
}

impl Preencoded {
    /// How many strips are done, of how many.
    pub fn done(&self) -> (usize, usize) {
        (self.strips.iter().filter(|s| s.is_some()).count(), self.strips.len())
    }
}

/// Encodes, on `threads` threads, the strips of `photo`'s JPEG copy (in `format`, default the
/// source's, with `settings`) that no rectangle of `changing` (upright `(x, y, w, h)`, where the
/// pixels may still change) crosses, so that writing the protected photo later encodes only the
/// rest. A photo stored turned (EXIF orientation other than 1) is turned here as the write turns it,
/// and the rectangles with it. `None` where nothing can be done ahead: the copy is not a JPEG, is
/// encoded in one piece (small, or `jpeg_parallel` off), or every strip is crossed.
pub fn preencode(
    photo: &Photo,
    changing: &[(i64, i64, i64, i64)],
    format: Option<Format>,
    settings: &Settings,
    threads: usize,
) -> Option<Preencoded> {
    let format = format.unwrap_or(photo.format);
    if format != Format::Jpeg || photo.pixels.dimensions() != photo.size {
        return None;
    }
    let orientation = stored_orientation(photo, settings);
    let stored = stored_image(photo, format, orientation);
    let img = match &stored {
        Stored::Pixels(p) => *p,
        Stored::Image(DynamicImage::ImageRgb8(i)) => i,
        Stored::Image(_) => return None,
    };
    let (w, h) = img.dimensions();
    let (uw, uh) = (i64::from(photo.size.0), i64::from(photo.size.1));
    // Each rectangle's rows in the stored image: the turn that `stored_image` applies (the inverse of
    // the orientation) moves an upright pixel (x, y) to a row y, H−1−y, x or W−1−x.
    let turn = image::metadata::Orientation::from_exif(inverse(orientation));
    let stored_rows = |&(x, y, rw, rh): &(i64, i64, i64, i64)| -> (i64, i64) {
        use image::metadata::Orientation::*;
        match turn {
            Some(Rotate180 | FlipVertical) => (uh - y - rh, rh),
            Some(Rotate90 | Rotate90FlipH) => (x, rw),
            Some(Rotate270 | Rotate270FlipH) => (uw - x - rw, rw),
            Some(NoTransforms | FlipHorizontal) | None => (y, rh),
        }
    };
    let changing: Vec<(i64, i64)> = changing.iter().map(stored_rows).collect();
    let (quality, chroma) = (settings.jpeg_quality.get(), settings.jpeg_chroma);
    let (plan, _) = jpeg_plan(w, h, chroma, settings.jpeg_parallel);
    let plan = plan?;
    let rows = i64::from(plan.rows());
    let clear = |k: usize| {
        let (top, bottom) = (k as i64 * rows, (k as i64 + 1) * rows);
        !changing.iter().any(|&(y, rh)| y < bottom && top < y + rh)
    };
    let strips = encode_strips(img, quality, chroma, threads, plan, clear).ok()?;
    strips.iter().any(Option::is_some).then_some(Preencoded { size: (w, h), quality, chroma, plan, strips })
}

fn encode(
    photo: &Photo,
    stored: &Stored<'_>,
    format: Format,
    s: &Settings,
    pre: Option<&Preencoded>,
) -> Result<Vec<u8>, String> {
    let strip = s.metadata == MetadataPolicy::Strip;
    let same = format == photo.format;
    let scrubbed;
    let meta = if s.metadata == MetadataPolicy::KeepNoGps {
        scrubbed = without_xmp_gps(&photo.meta, same);
        &scrubbed
    } else {
        &photo.meta
    };
    match format {
        Format::Jpeg => {
            let encoded = match stored {
                Stored::Image(DynamicImage::ImageLuma8(grey)) => {
                    encode_jpeg_grey(grey, s.jpeg_quality.get())?
                }
                _ => encode_jpeg_reusing(
                    &stored.rgb8(),
                    s.jpeg_quality.get(),
                    s.jpeg_chroma,
                    s.jpeg_parallel,
                    pre,
                )?,
            };
            let exif = meta.exif.as_deref().and_then(|b| prepare_exif(b, s, stored, jpeg::MAX_PAYLOAD - 6));
            let exif_payload = exif.map(|e| [jpeg::EXIF_ID, &e].concat());
            let mut carried: Vec<(u8, Vec<u8>)> = Vec::new();
            match (&meta.native, same) {
                (Native::Jpeg { segments, cmyk }, true) => {
                    let mut exif_done = false;
                    for (m, p) in segments {
                        let icc = *m == jpeg::APP2 && p.starts_with(jpeg::ICC_ID);
                        if icc && *cmyk {
                            tracing::info!("dropping the CMYK ICC profile: the copy is written in RGB");
                            continue;
                        }
                        if *m == jpeg::APP1 && p.starts_with(jpeg::EXIF_ID) && !exif_done {
                            exif_done = true;
                            if let Some(e) = &exif_payload {
                                carried.push((*m, e.clone()));
                            }
                        } else if *m == 0xED && !strip && p.starts_with(irb::ID) && irb::has_thumbnail(p) {
                            carried.push((*m, photoshop_thumbnails(p, stored)));
                        } else if icc || !strip {
                            carried.push((*m, p.clone()));
                        }
                    }
                }
                _ => {
                    if let Some(e) = exif_payload {
                        carried.push((jpeg::APP1, e));
                    }
                    if let Some(x) = meta
                        .xmp
                        .as_ref()
                        .filter(|x| !strip && x.len() + jpeg::XMP_ID.len() <= jpeg::MAX_PAYLOAD)
                    {
                        carried.push((jpeg::APP1, [jpeg::XMP_ID, x].concat()));
                    }
                    for p in meta.icc.as_deref().map(jpeg::icc_segments).unwrap_or_default() {
                        carried.push((jpeg::APP2, p));
                    }
                    if let Some(c) = meta.comment.as_ref().filter(|c| !strip && c.len() <= jpeg::MAX_PAYLOAD)
                    {
                        carried.push((jpeg::COM, c.as_bytes().to_vec()));
                    }
                }
            }
            jpeg::splice(&encoded, &carried)
        }
        Format::Png => {
            let mut encoded = Vec::new();
            let enc = image::codecs::png::PngEncoder::new_with_quality(
                &mut encoded,
                image::codecs::png::CompressionType::Default,
                image::codecs::png::FilterType::Adaptive,
            );
            stored.image().write_with_encoder(enc).map_err(|e| e.to_string())?;
            let exif = meta.exif.as_deref().and_then(|b| prepare_exif(b, s, stored, 16 << 20));
            let mut carried = Vec::new();
            match (&meta.native, same) {
                (Native::Png { chunks }, true) => {
                    let mut exif = exif;
                    for (kind, raw) in chunks.iter().filter(|(k, _)| png::carry(k, strip)) {
                        if kind == b"eXIf" {
                            if let Some(e) = exif.take() {
                                carried.push(png::Carried::New(*b"eXIf", e));
                            }
                        } else {
                            carried.push(png::Carried::Raw(raw.clone()));
                        }
                    }
                }
                _ => {
                    if let Some(icc) = &meta.icc {
                        carried.push(png::Carried::New(*b"iCCP", png::iccp_data(icc)));
                    }
                    if let Some(e) = exif {
                        carried.push(png::Carried::New(*b"eXIf", e));
                    }
                    if let Some(x) = meta.xmp.as_ref().filter(|_| !strip) {
                        carried.push(png::Carried::New(*b"iTXt", png::xmp_data(x)));
                    }
                    if let Some(c) = meta.comment.as_ref().filter(|_| !strip) {
                        let (kind, data) = png::comment_chunk(c);
                        carried.push(png::Carried::New(kind, data));
                    }
                }
            }
            png::splice(&encoded, &carried)
        }
        Format::Webp => {
            let img8 = match stored {
                Stored::Image(i) if i.color().has_alpha() => DynamicImage::ImageRgba8(i.to_rgba8()),
                other => DynamicImage::ImageRgb8(other.rgb8().into_owned()),
            };
            let mut encoded = Vec::new();
            img8.write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut encoded))
                .map_err(|e| e.to_string())?;
            let exif = meta.exif.as_deref().and_then(|b| prepare_exif(b, s, stored, 16 << 20));
            let mut carried = Vec::new();
            match (&meta.native, same) {
                (Native::Webp { chunks }, true) => {
                    let mut exif = exif;
                    for (kind, d) in chunks.iter().filter(|(k, _)| webp::carry(k, strip)) {
                        if kind == b"EXIF" {
                            if let Some(e) = exif.take() {
                                carried.push((*kind, e));
                            }
                        } else {
                            carried.push((*kind, d.clone()));
                        }
                    }
                }
                _ => {
                    // A grey photo's profile (colour space GRAY) does not describe the RGB copy.
                    match &meta.icc {
                        Some(icc) if icc.get(16..20) == Some(b"GRAY") => {
                            tracing::info!("dropped the grey ICC profile: the WebP copy is written in RGB")
                        }
                        Some(icc) => carried.push((*b"ICCP", icc.clone())),
                        None => {}
                    }
                    if let Some(e) = exif {
                        carried.push((*b"EXIF", e));
                    }
                    if let Some(x) = meta.xmp.as_ref().filter(|_| !strip) {
                        carried.push((*b"XMP ", x.clone()));
                    }
                }
            }
            webp::splice(&encoded, &carried, img8.width(), img8.height(), img8.color().has_alpha())
        }
        Format::Tiff => {
            let (le, mut entries) = match (&meta.native, same) {
                (Native::Tiff { le, entries }, true) => (*le, entries.clone()),
                _ => {
                    let exif = meta.exif.as_deref().and_then(|b| prepare_exif(b, s, stored, usize::MAX));
                    let (le, mut entries) = exif
                        .as_deref()
                        .and_then(|b| {
                            let t = Tiff::new(b)?;
                            let skip = |tag| structural_tiff_tag(tag) || tag == TIFF_ICC || tag == TIFF_XMP;
                            Some((t.le, tiffmeta::copy_ifd(&t, t.ifd0_offset()?, &skip, 0)))
                        })
                        .unwrap_or((true, Vec::new()));
                    if let Some(x) = &meta.xmp {
                        entries.push(OutEntry {
                            tag: TIFF_XMP,
                            typ: 1,
                            count: x.len() as u32,
                            value: OutValue::Bytes(x.clone()),
                        });
                    }
                    if let Some(icc) = &meta.icc {
                        entries.push(OutEntry {
                            tag: TIFF_ICC,
                            typ: 7,
                            count: icc.len() as u32,
                            value: OutValue::Bytes(icc.clone()),
                        });
                    }
                    (le, entries)
                }
            };
            if strip {
                entries.retain(|e| e.tag == TIFF_ICC);
            } else if s.metadata == MetadataPolicy::KeepNoGps {
                entries.retain(|e| e.tag != tiffmeta::GPS_IFD);
            }
            encode_tiff(&stored.image(), le, entries)
        }
    }
}

/// `keep-no-gps` for XMP: `meta` with the GPS properties removed from its XMP packet where the
/// output takes it from: the source's own JPEG APP1 segment, PNG iTXt chunk, WebP chunk or TIFF tag
/// when the format stays (`same`), the decoded packet when it changes. A packet that mentions GPS but cannot be parsed, a compressed PNG XMP chunk and JPEG
/// extended-XMP parts that mention GPS are dropped instead: the copy never carries coordinates.
fn without_xmp_gps(meta: &Meta, same: bool) -> Meta {
    let mut m = meta.clone();
    if !same || matches!(meta.native, Native::None) {
        m.xmp = meta.xmp.as_deref().and_then(|x| scrub_xmp("packet", x));
        return m;
    }
    match &mut m.native {
        Native::Jpeg { segments, .. } => jpeg_without_gps(segments),
        Native::Png { chunks } => {
            chunks.retain_mut(|(kind, raw)| {
                let data = raw.get(8..raw.len().saturating_sub(4)).unwrap_or_default();
                if !matches!(&*kind, b"tEXt" | b"zTXt" | b"iTXt") {
                    return true;
                }
                let keyword = data.split(|&b| b == 0).next().unwrap_or_default();
                // ImageMagick's hex-coded copies of the EXIF and XMP blocks ("Raw profile type exif",
                // "APP1", "xmp"): GPS would travel in them.
                let raw_profile = keyword
                    .strip_prefix(b"Raw profile type ")
                    .is_some_and(|t| [&b"exif"[..], b"app1", b"xmp", b"8bim"].iter().any(|k| t.eq_ignore_ascii_case(k)));
                if raw_profile {
                    tracing::info!(
                        "dropped the PNG chunk \"{}\": a raw EXIF/XMP profile, which may hold GPS (imageio.metadata = \"keep-no-gps\")",
                        String::from_utf8_lossy(keyword)
                    );
                    return false;
                }
                if keyword != b"XML:com.adobe.xmp" {
                    return true;
                }
                if kind == b"zTXt" {
                    tracing::info!("dropped a compressed XMP chunk (imageio.metadata = \"keep-no-gps\")");
                    return false;
                }
                if kind == b"tEXt" {
                    // A chunk without the NUL after its keyword holds no packet.
                    let Some(packet) = data.get(keyword.len() + 1..) else { return false };
                    return match scrub_xmp("chunk", packet) {
                        Some(x) => {
                            let mut new = Vec::with_capacity(raw.len());
                            png::put_chunk(&mut new, b"tEXt", &[keyword, &[0], &x].concat());
                            *raw = new;
                            true
                        }
                        None => false,
                    };
                }
                let Some(packet) = png::xmp(data) else {
                    tracing::info!("dropped a compressed XMP chunk (imageio.metadata = \"keep-no-gps\")");
                    return false;
                };
                let header = &data[..data.len() - packet.len()];
                match scrub_xmp("chunk", packet) {
                    Some(x) => {
                        let mut new = Vec::with_capacity(raw.len());
                        png::put_chunk(&mut new, b"iTXt", &[header, &x].concat());
                        *raw = new;
                        true
                    }
                    None => false,
                }
            });
        }
        Native::Webp { chunks } => chunks.retain_mut(|(kind, d)| {
            if kind != b"XMP " {
                return true;
            }
            scrub_xmp("chunk", d).map(|x| *d = x).is_some()
        }),
        Native::Tiff { entries, .. } => entries.retain_mut(|e| match (&e.value, e.tag) {
            (OutValue::Bytes(b), TIFF_XMP) => match scrub_xmp("tag", b) {
                Some(x) => {
                    e.count = x.len() as u32;
                    e.value = OutValue::Bytes(x);
                    true
                }
                None => false,
            },
            _ => true,
        }),
        Native::None => {}
    }
    m
}

/// An XMP packet without its GPS properties (`where_` names it in the log); `None` when it mentions
/// GPS but cannot be parsed, and so must be dropped.
fn scrub_xmp(where_: &str, packet: &[u8]) -> Option<Vec<u8>> {
    match xmp::remove_gps(packet) {
        xmp::Scrubbed::Unchanged => Some(packet.to_vec()),
        xmp::Scrubbed::Removed(p) => {
            tracing::info!(
                "removed the GPS properties of the XMP {where_} (imageio.metadata = \"keep-no-gps\")"
            );
            Some(p)
        }
        xmp::Scrubbed::Unreadable => {
            tracing::warn!("dropped the XMP {where_}: it mentions GPS but cannot be parsed (imageio.metadata = \"keep-no-gps\")");
            None
        }
    }
}

/// `keep-no-gps` on JPEG segments (marker, payload): every EXIF segment without its GPS IFD (some
/// editors write a second one; a re-encoded copy replaces the first with the prepared EXIF), the
/// Photoshop block as [`irb_without_gps`] leaves it, the XMP segment without its GPS properties
/// (dropped when unreadable), the extended XMP parts dropped when any of them mentions GPS; every
/// other segment as it was.
fn jpeg_without_gps(segments: &mut Vec<(u8, Vec<u8>)>) {
    for (_, p) in segments.iter_mut().filter(|(m, p)| *m == jpeg::APP1 && p.starts_with(jpeg::EXIF_ID)) {
        if tiffmeta::remove_gps(&mut p[jpeg::EXIF_ID.len()..]) {
            tracing::info!("removed the GPS IFD of an EXIF segment (imageio.metadata = \"keep-no-gps\")");
        }
    }
    segments.retain_mut(|(marker, p)| *marker != 0xED || !p.starts_with(irb::ID) || irb_without_gps(p));
    let extended = |p: &[u8]| p.starts_with(jpeg::XMP_EXT_ID);
    let ext_gps = segments
        .iter()
        .any(|(m, p)| *m == jpeg::APP1 && extended(p) && xmp::mentions_gps(&p[jpeg::XMP_EXT_ID.len()..]));
    if ext_gps {
        tracing::info!("dropped the extended XMP: it mentions GPS (imageio.metadata = \"keep-no-gps\")");
    }
    segments.retain_mut(|(marker, p)| {
        if *marker != jpeg::APP1 {
            return true;
        }
        if extended(p) {
            return !ext_gps;
        }
        if !p.starts_with(jpeg::XMP_ID) {
            return true;
        }
        match scrub_xmp("segment", &p[jpeg::XMP_ID.len()..]) {
            Some(x) => {
                *p = [jpeg::XMP_ID, &x].concat();
                true
            }
            None => false,
        }
    });
}

/// `keep-no-gps` on a Photoshop APP13 block, in place (its length kept): the EXIF resource (0x0422)
/// loses its GPS IFD and the XMP resource (0x0424) its GPS properties, padded with spaces. False
/// when the block must be dropped: it mentions GPS and cannot be parsed, or its XMP cannot.
fn irb_without_gps(p: &mut [u8]) -> bool {
    let Some(resources) = irb::parse(p) else {
        // Its EXIF copy's GPS block is binary: a block that cannot be read may hold one.
        tracing::info!("dropped a Photoshop (APP13) block Veil cannot read: it may hold GPS (imageio.metadata = \"keep-no-gps\")");
        return false;
    };
    for r in resources {
        let data = &mut p[r.data.clone()];
        match r.id {
            0x0422 if tiffmeta::remove_gps(data) => {
                tracing::info!(
                    "removed the GPS IFD of Photoshop's EXIF copy (imageio.metadata = \"keep-no-gps\")"
                );
            }
            0x0424 => match xmp::remove_gps(data) {
                xmp::Scrubbed::Unchanged => {}
                xmp::Scrubbed::Removed(x) => {
                    tracing::info!("removed the GPS properties of Photoshop's XMP copy (imageio.metadata = \"keep-no-gps\")");
                    let n = x.len();
                    data[..n].copy_from_slice(&x);
                    data[n..].fill(b' ');
                }
                xmp::Scrubbed::Unreadable => {
                    tracing::warn!("dropped the Photoshop (APP13) block: its XMP copy mentions GPS but cannot be parsed (imageio.metadata = \"keep-no-gps\")");
                    return false;
                }
            },
            _ => {}
        }
    }
    true
}

/// A no-face copy of a JPEG under `keep-no-gps`, without re-encoding: the source's segments as
/// [`jpeg::unchanged`] keeps them, with GPS removed as [`jpeg_without_gps`] removes it (in place,
/// [`tiffmeta::remove_gps`], for the EXIF), then the scans.
/// `None` when an embedded thumbnail (EXIF's, or one in Photoshop's APP13) carries metadata of its
/// own, which only a copy written afresh (thumbnails regenerated) is sure to leave behind.
fn unchanged_without_gps(data: &[u8], layout: &jpeg::Layout) -> Option<Vec<u8>> {
    let mut segments: Vec<(u8, Vec<u8>)> = layout
        .header()
        .filter(|s| !jpeg::is_mpf_index(data, s))
        .map(|s| (s.marker, data[s.payload.clone()].to_vec()))
        .collect();
    let nested =
        |b: &[u8]| [jpeg::EXIF_ID, jpeg::XMP_ID].iter().any(|id| b.windows(id.len()).any(|w| w == *id));
    if let Some((_, p)) = segments.iter().find(|(m, p)| *m == jpeg::APP1 && p.starts_with(jpeg::EXIF_ID)) {
        let blob = &p[jpeg::EXIF_ID.len()..];
        if let (_, Some(th)) = tiffmeta::thumbnail(blob) {
            if nested(&blob[th.offset..th.offset + th.len]) {
                return None;
            }
        }
    }
    if segments.iter().any(|(m, p)| *m == 0xED && nested(p)) {
        return None;
    }
    jpeg_without_gps(&mut segments);
    Some(jpeg::assemble(data, layout, &segments))
}

/// A TIFF with Deflate-compressed strips of `img` and IFD0 holding `entries` (values as they were,
/// in byte order `le`) next to the tags that describe the new pixels.
fn encode_tiff(img: &DynamicImage, le: bool, mut entries: Vec<OutEntry>) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let (w, h) = (img.width(), img.height());
    let (channels, bits): (u16, u16) = (
        img.color().channel_count().into(),
        (img.color().bits_per_pixel() / u16::from(img.color().channel_count())),
    );
    let grey = !img.color().has_color();
    // The image's own samples, in its channel order; 16-bit ones in the file's byte order.
    let words = |v: &[u16]| -> Vec<u8> {
        v.iter().flat_map(|v| if le { v.to_le_bytes() } else { v.to_be_bytes() }).collect()
    };
    let samples: Vec<u8> = match img {
        DynamicImage::ImageRgb16(i) => words(i.as_raw()),
        DynamicImage::ImageRgba16(i) => words(i.as_raw()),
        DynamicImage::ImageLuma16(i) => words(i.as_raw()),
        DynamicImage::ImageLumaA16(i) => words(i.as_raw()),
        DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgba8(_)
        | DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_) => img.as_bytes().to_vec(),
        other => other.to_rgb8().into_raw(),
    };
    let row = w as usize * channels as usize * (bits as usize / 8);
    let rows_per_strip = (65536 / row.max(1)).max(1);
    let mut buf = tiffmeta::header(le);
    let (mut offsets, mut counts) = (Vec::new(), Vec::new());
    for strip in samples.chunks(rows_per_strip * row) {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
        z.write_all(strip).map_err(|e| e.to_string())?;
        let z = z.finish().map_err(|e| e.to_string())?;
        offsets.push(buf.len() as u32);
        counts.push(z.len() as u32);
        buf.extend(z);
    }
    let short = |v: u16| if le { v.to_le_bytes() } else { v.to_be_bytes() }.to_vec();
    let long = |v: u32| if le { v.to_le_bytes() } else { v.to_be_bytes() }.to_vec();
    let mut bps = Vec::new();
    for _ in 0..channels {
        bps.extend(short(bits));
    }
    entries.retain(|e| !structural_tiff_tag(e.tag));
    entries.extend([
        OutEntry { tag: 256, typ: 4, count: 1, value: OutValue::Bytes(long(w)) },
        OutEntry { tag: 257, typ: 4, count: 1, value: OutValue::Bytes(long(h)) },
        OutEntry { tag: 258, typ: 3, count: channels.into(), value: OutValue::Bytes(bps) },
        OutEntry { tag: 259, typ: 3, count: 1, value: OutValue::Bytes(short(8)) },
        // PhotometricInterpretation: BlackIsZero for grey, RGB for colour.
        OutEntry { tag: 262, typ: 3, count: 1, value: OutValue::Bytes(short(if grey { 1 } else { 2 })) },
        OutEntry { tag: 273, typ: 4, count: offsets.len() as u32, value: OutValue::Offsets(offsets) },
        OutEntry { tag: 277, typ: 3, count: 1, value: OutValue::Bytes(short(channels)) },
        OutEntry { tag: 278, typ: 4, count: 1, value: OutValue::Bytes(long(rows_per_strip as u32)) },
        OutEntry { tag: 279, typ: 4, count: counts.len() as u32, value: OutValue::Offsets(counts) },
        OutEntry { tag: 284, typ: 3, count: 1, value: OutValue::Bytes(short(1)) },
    ]);
    if img.color().has_alpha() {
        entries.push(OutEntry { tag: 338, typ: 3, count: 1, value: OutValue::Bytes(short(2)) });
    }
    let at = tiffmeta::write_ifd(&mut buf, &entries, le, &mut Vec::new());
    tiffmeta::set_ifd0(&mut buf, at, le);
    Ok(buf)
}

#[cfg(test)]
mod tests;
