//! JPEG container surgery: walk the markers (the whole file, so a truncated one is caught), pick
//! the metadata segments to carry, and splice them into freshly encoded JPEG data. Also the
//! encoder's input for 4:2:0 copies ([`Averaged420`]).

use std::ops::Range;

pub const SOI: u8 = 0xD8;
pub const EOI: u8 = 0xD9;
pub const SOS: u8 = 0xDA;
pub const COM: u8 = 0xFE;
pub const APP0: u8 = 0xE0;
pub const APP1: u8 = 0xE1;
pub const APP2: u8 = 0xE2;
pub const APP14: u8 = 0xEE;

pub const EXIF_ID: &[u8] = b"Exif\0\0";
pub const XMP_ID: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
/// Extended XMP: the parts of a packet too large for one segment.
pub const XMP_EXT_ID: &[u8] = b"http://ns.adobe.com/xmp/extension/\0";
pub const ICC_ID: &[u8] = b"ICC_PROFILE\0";
pub const MPF_ID: &[u8] = b"MPF\0";

/// The largest payload a marker segment can hold (its length field counts itself).
pub const MAX_PAYLOAD: usize = 0xFFFF - 2;

/// One marker segment: `marker_pos` is the position of its 0xFF, `payload` its bytes after the
/// length field.
#[derive(Debug, Clone)]
pub struct Segment {
    pub marker: u8,
    pub marker_pos: usize,
    pub payload: Range<usize>,
}

/// What the frame header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub precision: u8,
    pub height: u16,
    pub width: u16,
    pub components: u8,
    pub progressive: bool,
}

#[derive(Debug, Clone)]
pub struct Layout {
    /// Every segment with a length field, in file order (those after the first SOS included).
    pub segments: Vec<Segment>,
    pub frame: Option<Frame>,
    /// Where the bytes after EOI start (MPF images, vendor trailers).
    pub trailer: usize,
}

fn is_sof(m: u8) -> bool {
    matches!(m, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF)
}

/// Walks the markers from SOI to EOI. Errors say what is wrong in words for the user.
pub fn parse(data: &[u8]) -> Result<Layout, String> {
    if data.get(0..2) != Some(&[0xFF, SOI]) {
        return Err("not a JPEG file (no start-of-image marker)".into());
    }
    let mut segments = Vec::new();
    let mut frame = None;
    let mut i = 2;
    loop {
        // Find the next marker, skipping fill bytes.
        if data.get(i) != Some(&0xFF) {
            return match data.get(i) {
                None => Err("truncated JPEG (the file ends before the end-of-image marker)".into()),
                Some(b) => {
                    Err(format!("corrupt JPEG (byte {b:#04x} where a marker should be at offset {i})"))
                }
            };
        }
        while data.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&marker) = data.get(i) else {
            return Err("truncated JPEG (the file ends inside a marker)".into());
        };
        let marker_pos = i - 1;
        i += 1;
        match marker {
            EOI => return Ok(Layout { segments, frame, trailer: i }),
            0x01 | 0xD0..=0xD7 => continue,
            0x00 => return Err(format!("corrupt JPEG (stray 0xFF00 at offset {marker_pos})")),
            _ => {}
        }
        let Some(len) = data.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize) else {
            return Err("truncated JPEG (the file ends inside a segment header)".into());
        };
        if len < 2 || i + len > data.len() {
            return Err(format!(
                "truncated JPEG (segment {marker:#04x} at offset {marker_pos} runs past the end)"
            ));
        }
        let payload = i + 2..i + len;
        if is_sof(marker) && frame.is_none() {
            let p = &data[payload.clone()];
            if p.len() >= 6 {
                frame = Some(Frame {
                    precision: p[0],
                    height: u16::from_be_bytes([p[1], p[2]]),
                    width: u16::from_be_bytes([p[3], p[4]]),
                    components: p[5],
                    progressive: matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE),
                });
            }
        }
        segments.push(Segment { marker, marker_pos, payload });
        i += len;
        if marker == SOS {
            // Entropy-coded data: runs until a 0xFF that is neither stuffing (0x00), a restart
            // marker nor fill.
            loop {
                let Some(off) = data.get(i..).and_then(|rest| rest.iter().position(|&b| b == 0xFF)) else {
                    return Err("truncated JPEG (the file ends inside the image data)".into());
                };
                i += off;
                let mut j = i + 1;
                while data.get(j) == Some(&0xFF) {
                    j += 1;
                }
                match data.get(j) {
                    None => return Err("truncated JPEG (the file ends inside the image data)".into()),
                    Some(0x00 | 0xD0..=0xD7) => i = j + 1,
                    Some(_) => {
                        i = j - 1;
                        break;
                    }
                }
            }
        }
    }
}

/// Whether a sequential (not progressive) colour JPEG codes its components in scans of one
/// component each (non-interleaved): valid baseline JPEG, which every decoder must read, and what
/// `jpeg-encoder` writes with optimized tables (Veil's own one-piece copies) and libjpeg's `cjpeg`
/// with a scan script. zune-jpeg 0.5.15 (`image`'s decoder) misreads it without an error: into
/// garbage with subsampled chroma (zune-image issue 422), and with full-resolution chroma now and
/// then the last row of 8×8 blocks of a component (issue 448; 3 of 1,600 re-encoded CelebA crops,
/// up to 227 levels off what libjpeg reads).
pub fn is_non_interleaved(data: &[u8], layout: &Layout) -> bool {
    if !layout.frame.is_some_and(|f| !f.progressive && f.components > 1) {
        return false;
    }
    // Scan header payload: the number of components in the scan first.
    layout.segments.iter().any(|s| s.marker == SOS && data.get(s.payload.start) == Some(&1))
}

/// Dimensions of a JPEG in memory (for the EXIF thumbnail).
pub fn dimensions(data: &[u8]) -> Option<(u32, u32)> {
    let f = parse(data).ok()?.frame?;
    Some((f.width as u32, f.height as u32))
}

impl Layout {
    /// Segments before the first SOS.
    pub fn header<'a>(&'a self) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments.iter().take_while(|s| s.marker != SOS)
    }
}

pub fn starts(data: &[u8], seg: &Segment, id: &[u8]) -> bool {
    data[seg.payload.clone()].starts_with(id)
}

/// Whether `seg` is a multi-picture (MPF) index, which points at images after EOI.
pub fn is_mpf_index(data: &[u8], seg: &Segment) -> bool {
    seg.marker == APP2 && starts(data, seg, MPF_ID)
}

/// The file as it was up to its end (EOI), without the multi-picture (MPF) index: what follows EOI
/// (MPF images, vendor trailers) is not carried, so an index pointing there would be wrong.
pub fn unchanged(data: &[u8], layout: &Layout) -> Vec<u8> {
    let end = layout.trailer.min(data.len());
    let mut out = Vec::with_capacity(end);
    let mut from = 0;
    for s in layout.header().filter(|s| is_mpf_index(data, s)) {
        out.extend_from_slice(&data[from..s.marker_pos]);
        from = s.payload.end;
    }
    out.extend_from_slice(&data[from..end]);
    out
}

/// SOI, `segments` (marker, payload) in order, then `data`'s scans from its first SOS to its EOI:
/// the file with its header segments replaced.
pub fn assemble(data: &[u8], layout: &Layout, segments: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let end = layout.trailer.min(data.len());
    let scans = layout.segments.iter().find(|s| s.marker == SOS).map_or(end, |s| s.marker_pos);
    let mut out = Vec::with_capacity(end);
    out.extend_from_slice(&[0xFF, SOI]);
    for (marker, payload) in segments {
        put_segment(&mut out, *marker, payload);
    }
    out.extend_from_slice(&data[scans..end]);
    out
}

/// Writes one segment (marker, length, payload) to `out`. The caller keeps payloads within
/// [`MAX_PAYLOAD`].
pub fn put_segment(out: &mut Vec<u8>, marker: u8, payload: &[u8]) {
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Splits an ICC profile into APP2 chunks as ICC.1 Annex B describes.
pub fn icc_segments(icc: &[u8]) -> Vec<Vec<u8>> {
    let room = MAX_PAYLOAD - ICC_ID.len() - 2;
    let chunks: Vec<&[u8]> = icc.chunks(room).collect();
    let n = chunks.len().min(255);
    chunks
        .iter()
        .take(n)
        .enumerate()
        .map(|(k, c)| {
            let mut p = ICC_ID.to_vec();
            p.extend_from_slice(&[(k + 1) as u8, n as u8]);
            p.extend_from_slice(c);
            p
        })
        .collect()
}

/// Reassembles an ICC profile from its APP2 chunks (ordered by their sequence numbers).
pub fn icc_profile(data: &[u8], layout: &Layout) -> Option<Vec<u8>> {
    let mut parts: Vec<(u8, &[u8])> = layout
        .header()
        .filter(|s| s.marker == APP2 && starts(data, s, ICC_ID))
        .filter_map(|s| {
            let p = &data[s.payload.clone()];
            Some((*p.get(ICC_ID.len())?, p.get(ICC_ID.len() + 2..)?))
        })
        .collect();
    if parts.is_empty() {
        return None;
    }
    parts.sort_by_key(|(seq, _)| *seq);
    Some(parts.into_iter().flat_map(|(_, p)| p.iter().copied()).collect())
}

/// Builds the output: SOI, the `carried` segments (marker, payload) in order, then the encoded
/// JPEG's own segments from its first non-APPn one (tables, frame, scans, EOI). The encoder's APP0
/// (JFIF) is kept only when nothing carried can stand first (no APP0 and no EXIF APP1).
pub fn splice(encoded: &[u8], carried: &[(u8, Vec<u8>)]) -> Result<Vec<u8>, String> {
    let enc = parse(encoded).map_err(|e| format!("the encoder produced an unreadable JPEG: {e}"))?;
    let body = enc
        .segments
        .iter()
        .find(|s| !(0xE0..=0xEF).contains(&s.marker) && s.marker != COM)
        .map(|s| s.marker_pos)
        .ok_or("the encoder produced a JPEG without image data")?;
    let mut out =
        Vec::with_capacity(encoded.len() + carried.iter().map(|(_, p)| p.len() + 4).sum::<usize>() + 2);
    out.extend_from_slice(&[0xFF, SOI]);
    let has_first = carried.iter().any(|(m, p)| *m == APP0 || *m == APP1 && p.starts_with(EXIF_ID));
    if !has_first {
        for s in enc.header().filter(|s| s.marker == APP0) {
            out.extend_from_slice(&encoded[s.marker_pos..s.payload.end]);
        }
    }
    for (marker, payload) in carried {
        put_segment(&mut out, *marker, payload);
    }
    out.extend_from_slice(&encoded[body..enc.trailer]);
    Ok(out)
}

/// Joins baseline JPEGs encoded from horizontal strips of one image, top to bottom, into one JPEG of
/// `height` rows whose scan has a restart marker between strips. Every strip must come from the same
/// encoder settings (identical quantization and Huffman tables, so no per-strip optimized tables)
/// and, but the last, hold exactly `mcus_per_strip` MCUs (whole MCU rows). A restart marker resets
/// the decoder's DC predictors, as each strip's encoder started from zero, so the joined file
/// decodes to the strips' pixels. This is what lets a 12 MP photo be encoded on every core.
pub fn join_strips<S: AsRef<[u8]>>(
    strips: &[S],
    height: u16,
    mcus_per_strip: u16,
) -> Result<Vec<u8>, String> {
    const DQT: u8 = 0xDB;
    const DHT: u8 = 0xC4;
    const DRI: u8 = 0xDD;
    let strips: Vec<&[u8]> = strips.iter().map(AsRef::as_ref).collect();
    let first = *strips.first().ok_or("no strips to join")?;
    let layouts: Vec<Layout> = strips.iter().map(|s| parse(s)).collect::<Result<_, _>>()?;
    let tables = |data: &[u8], l: &Layout| -> Vec<u8> {
        l.segments
            .iter()
            .filter(|s| s.marker == DQT || s.marker == DHT)
            .flat_map(|s| data[s.marker_pos..s.payload.end].iter().copied())
            .collect()
    };
    let first_tables = tables(first, &layouts[0]);
    // Each strip's scan header and the range of its entropy-coded data.
    let mut scans: Vec<(&Segment, Range<usize>)> = Vec::with_capacity(strips.len());
    for (k, (data, l)) in strips.iter().zip(&layouts).enumerate() {
        let mut sos = l.segments.iter().filter(|s| s.marker == SOS);
        let (Some(scan), None) = (sos.next(), sos.next()) else {
            return Err(format!("strip {k} is not a single-scan baseline JPEG"));
        };
        if l.segments.iter().any(|s| s.marker == DRI) {
            return Err(format!("strip {k} already has restart markers"));
        }
        if tables(data, l) != first_tables {
            return Err(format!("strip {k} was encoded with other tables than strip 0"));
        }
        if l.trailer < scan.payload.end + 2 || data[l.trailer - 2..l.trailer] != [0xFF, EOI] {
            return Err(format!("strip {k} does not end its scan with an end-of-image marker"));
        }
        scans.push((scan, scan.payload.end..l.trailer - 2));
    }
    let l0 = &layouts[0];
    let sos0 = scans[0].0;
    let mut out = Vec::with_capacity(strips.iter().map(|s| s.len()).sum::<usize>() + 2 * strips.len() + 8);
    out.extend_from_slice(&first[..sos0.marker_pos]);
    // The frame header gets the whole image's height (payload: precision, height, width, ...).
    let sof = l0.segments.iter().find(|s| is_sof(s.marker)).ok_or("strip 0 has no frame header")?;
    if sof.marker != 0xC0 && sof.marker != 0xC1 {
        return Err("strip 0 is not a baseline JPEG".into());
    }
    out[sof.payload.start + 1..sof.payload.start + 3].copy_from_slice(&height.to_be_bytes());
    put_segment(&mut out, DRI, &mcus_per_strip.to_be_bytes());
    out.extend_from_slice(&first[sos0.marker_pos..sos0.payload.end]);
    for (k, (data, (_, scan))) in strips.iter().zip(&scans).enumerate() {
        if k > 0 {
            // RST0..RST7, in turn.
            out.extend_from_slice(&[0xFF, 0xD0 + ((k - 1) % 8) as u8]);
        }
        out.extend_from_slice(&data[scan.clone()]);
    }
    out.extend_from_slice(&[0xFF, EOI]);
    Ok(out)
}

/// RGB rows as `jpeg-encoder` input for a 4:2:0 JPEG, with each 2×2 block's colour averaged as
/// libjpeg does. Given plain RGB, `jpeg-encoder` keeps the colour of each block's top-left pixel
/// and drops the other three (its `get_block` samples with a stride of 2), so a thin coloured line
/// can vanish or double. Here every pixel keeps its own luma and carries its block's mean Cb and Cr,
/// so whichever pixel the encoder samples, it gets the mean. A block cut by the right or bottom edge
/// repeats its last column or row, as libjpeg's edge expansion does; strips cut at whole MCU rows
/// (16 pixels at 4:2:0) never split a block.
pub struct Averaged420<'a> {
    raw: &'a [u8],
    width: u16,
    rows: u16,
    /// Mean Cb and Cr of each block, `width.div_ceil(2)` blocks a row, row-major.
    cb: Vec<u8>,
    cr: Vec<u8>,
}

impl<'a> Averaged420<'a> {
    /// `raw` holds `rows` rows of `width` RGB pixels (`None` if it does not).
    pub fn new(raw: &'a [u8], width: u16, rows: u16) -> Option<Averaged420<'a>> {
        let (w, h) = (usize::from(width), usize::from(rows));
        if raw.len() != w * h * 3 || w == 0 || h == 0 {
            return None;
        }
        let (bw, bh) = (w.div_ceil(2), h.div_ceil(2));
        let (mut cb, mut cr) = (vec![0u8; bw * bh], vec![0u8; bw * bh]);
        let chroma = |x: usize, y: usize| {
            let p = &raw[(y * w + x) * 3..(y * w + x) * 3 + 3];
            let (_, cb, cr) = jpeg_encoder::rgb_to_ycbcr(p[0], p[1], p[2]);
            (u32::from(cb), u32::from(cr))
        };
        for by in 0..bh {
            let (y0, y1) = (2 * by, (2 * by + 1).min(h - 1));
            for bx in 0..bw {
                let (x0, x1) = (2 * bx, (2 * bx + 1).min(w - 1));
                let (mut sb, mut sr) = (0, 0);
                for (x, y) in [(x0, y0), (x1, y0), (x0, y1), (x1, y1)] {
                    let (b, r) = chroma(x, y);
                    sb += b;
                    sr += r;
                }
                // libjpeg's h2v2_downsample rounds with a bias of 1 and 2 in turn along a row.
                let bias = 1 + (bx as u32 & 1);
                cb[by * bw + bx] = ((sb + bias) >> 2) as u8;
                cr[by * bw + bx] = ((sr + bias) >> 2) as u8;
            }
        }
        Some(Averaged420 { raw, width, rows, cb, cr })
    }
}

impl jpeg_encoder::ImageBuffer for Averaged420<'_> {
    fn get_jpeg_color_type(&self) -> jpeg_encoder::JpegColorType {
        jpeg_encoder::JpegColorType::Ycbcr
    }

    fn width(&self) -> u16 {
        self.width
    }

    fn height(&self) -> u16 {
        self.rows
    }

    fn fill_buffers(&self, y: u16, buffers: &mut [Vec<u8>; 4]) {
        let (w, y) = (usize::from(self.width), usize::from(y));
        let blocks = (y / 2) * w.div_ceil(2);
        for (x, p) in self.raw[y * w * 3..(y + 1) * w * 3].chunks_exact(3).enumerate() {
            let (luma, _, _) = jpeg_encoder::rgb_to_ycbcr(p[0], p[1], p[2]);
            buffers[0].push(luma);
            buffers[1].push(self.cb[blocks + x / 2]);
            buffers[2].push(self.cr[blocks + x / 2]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(extra: &[(u8, &[u8])]) -> Vec<u8> {
        let mut v = vec![0xFF, SOI];
        for (m, p) in extra {
            put_segment(&mut v, *m, p);
        }
        // A fake frame header and a scan with stuffing and a restart marker.
        put_segment(&mut v, 0xC0, &[8, 0, 2, 0, 3, 3, 1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1]);
        put_segment(&mut v, SOS, &[1, 1, 0, 0, 63, 0]);
        v.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, EOI]);
        v
    }

    #[test]
    fn parses_markers_frame_and_trailer() {
        let mut data = tiny(&[(APP1, b"Exif\0\0II*\0"), (COM, b"hello")]);
        let end = data.len();
        data.extend_from_slice(b"trailer");
        let l = parse(&data).unwrap();
        assert_eq!(l.trailer, end);
        let f = l.frame.unwrap();
        assert_eq!((f.width, f.height, f.precision, f.components), (3, 2, 8, 3));
        let markers: Vec<u8> = l.header().map(|s| s.marker).collect();
        assert_eq!(markers, vec![APP1, COM, 0xC0]);
    }

    #[test]
    fn unchanged_is_the_file_without_the_mpf_index_and_what_follows_eoi() {
        let plain = tiny(&[(APP1, b"Exif\0\0II*\0"), (APP2, b"ICC_PROFILE\0\x01\x01icc"), (COM, b"hello")]);
        assert_eq!(unchanged(&plain, &parse(&plain).unwrap()), plain);
        let mut mpf = tiny(&[
            (APP1, b"Exif\0\0II*\0"),
            (APP2, b"MPF\0MM\0*index"),
            (APP2, b"ICC_PROFILE\0\x01\x01icc"),
            (COM, b"hello"),
        ]);
        mpf.extend_from_slice(b"\xFF\xD8 a second image, or a motion photo's video");
        assert_eq!(unchanged(&mpf, &parse(&mpf).unwrap()), plain);
    }

    #[test]
    fn truncation_is_an_error_at_every_length() {
        let data = tiny(&[(APP1, b"Exif\0\0II*\0")]);
        for n in 0..data.len() - 1 {
            let err = parse(&data[..n]).unwrap_err();
            assert!(err.contains("truncated") || err.contains("not a JPEG"), "{n}: {err}");
        }
    }

    #[test]
    fn icc_round_trips_through_chunks() {
        let icc: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let segs = icc_segments(&icc);
        assert_eq!(segs.len(), 3);
        let carried: Vec<(u8, &[u8])> = segs.iter().rev().map(|p| (APP2, p.as_slice())).collect();
        let data = tiny(&carried);
        assert_eq!(icc_profile(&data, &parse(&data).unwrap()).unwrap(), icc);
    }

    #[test]
    fn splice_replaces_the_encoders_header() {
        let encoded = tiny(&[(APP0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0")]);
        let out = splice(&encoded, &[(APP1, b"Exif\0\0MM\0*".to_vec()), (COM, b"c".to_vec())]).unwrap();
        let l = parse(&out).unwrap();
        let markers: Vec<u8> = l.header().map(|s| s.marker).collect();
        assert_eq!(markers, vec![APP1, COM, 0xC0]);
        let out = splice(&encoded, &[(COM, b"c".to_vec())]).unwrap();
        let markers: Vec<u8> = parse(&out).unwrap().header().map(|s| s.marker).collect();
        assert_eq!(markers, vec![APP0, COM, 0xC0]);
    }
}
