//! WebP (RIFF) container surgery: list the chunks, carry ICCP, EXIF, XMP and unknown chunks, and
//! wrap freshly encoded image data in an extended (VP8X) container that holds them.

use std::ops::Range;

#[derive(Debug, Clone)]
pub struct Chunk {
    pub kind: [u8; 4],
    /// The whole chunk: type, size, data and padding byte.
    pub raw: Range<usize>,
    pub data: Range<usize>,
}

pub fn parse(data: &[u8]) -> Result<Vec<Chunk>, String> {
    if data.len() < 12 || &data[0..4] != b"RIFF" || &data[8..12] != b"WEBP" {
        return Err("not a WebP file (no RIFF/WEBP header)".into());
    }
    let riff_len = u32::from_le_bytes([data[4], data[5], data[6], data[7]]) as usize;
    let end = riff_len
        .checked_add(8)
        .filter(|&e| e <= data.len())
        .ok_or("truncated WebP (the RIFF size runs past the end of the file)")?;
    let mut chunks = Vec::new();
    let mut i = 12;
    while i < end {
        let head = data.get(i..i + 8).ok_or("truncated WebP (a chunk header runs past the end)")?;
        let kind = [head[0], head[1], head[2], head[3]];
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let data_end = (i + 8).checked_add(len).filter(|&e| e <= end).ok_or_else(|| {
            format!("truncated WebP (chunk {} runs past the end)", String::from_utf8_lossy(&kind))
        })?;
        let next = (data_end + (len & 1)).min(end);
        chunks.push(Chunk { kind, raw: i..next, data: i + 8..data_end });
        i = next;
    }
    Ok(chunks)
}

/// Image data and container flags do not survive a re-encode; everything else is carried.
pub fn carry(kind: &[u8; 4], strip: bool) -> bool {
    match kind {
        b"ICCP" => true,
        b"VP8 " | b"VP8L" | b"VP8X" | b"ALPH" | b"ANIM" | b"ANMF" => false,
        _ => !strip,
    }
}

pub fn is_animated(chunks: &[Chunk]) -> bool {
    chunks.iter().any(|c| &c.kind == b"ANIM" || &c.kind == b"ANMF")
}

fn put_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(kind);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
}

/// Wraps the encoder's simple-format WebP (one VP8/VP8L chunk) in a VP8X container with the
/// carried chunks: ICCP first, then the image, then EXIF, XMP and the rest, as the format orders
/// them. `carried` holds (type, data).
pub fn splice(
    encoded: &[u8],
    carried: &[([u8; 4], Vec<u8>)],
    width: u32,
    height: u32,
    alpha: bool,
) -> Result<Vec<u8>, String> {
    let chunks = parse(encoded).map_err(|e| format!("the encoder produced an unreadable WebP: {e}"))?;
    let image: Vec<&Chunk> =
        chunks.iter().filter(|c| matches!(&c.kind, b"VP8 " | b"VP8L" | b"ALPH")).collect();
    if image.is_empty() {
        return Err("the encoder's WebP has no image data".into());
    }
    if carried.is_empty() {
        return Ok(encoded.to_vec());
    }
    let has = |k: &[u8; 4]| carried.iter().any(|(c, _)| c == k);
    let mut flags = 0u8;
    if has(b"ICCP") {
        flags |= 0x20;
    }
    if alpha {
        flags |= 0x10;
    }
    if has(b"EXIF") {
        flags |= 0x08;
    }
    if has(b"XMP ") {
        flags |= 0x04;
    }
    let mut vp8x = vec![flags, 0, 0, 0];
    vp8x.extend_from_slice(&width.saturating_sub(1).to_le_bytes()[..3]);
    vp8x.extend_from_slice(&height.saturating_sub(1).to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    put_chunk(&mut body, b"VP8X", &vp8x);
    for (k, d) in carried.iter().filter(|(k, _)| k == b"ICCP") {
        put_chunk(&mut body, k, d);
    }
    for c in image {
        body.extend_from_slice(&encoded[c.raw.clone()]);
    }
    for (k, d) in carried.iter().filter(|(k, _)| k != b"ICCP") {
        put_chunk(&mut body, k, d);
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend(body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_builds_an_extended_container() {
        let mut simple = b"WEBP".to_vec();
        put_chunk(&mut simple, b"VP8L", &[0x2f, 1, 2]);
        let mut enc = b"RIFF".to_vec();
        enc.extend_from_slice(&(simple.len() as u32).to_le_bytes());
        enc.extend(simple);
        let out = splice(
            &enc,
            &[(*b"EXIF", b"II*\0abc".to_vec()), (*b"ICCP", vec![1; 5]), (*b"XMP ", b"<x/>".to_vec())],
            300,
            200,
            false,
        )
        .unwrap();
        let chunks = parse(&out).unwrap();
        let kinds: Vec<&[u8; 4]> = chunks.iter().map(|c| &c.kind).collect();
        assert_eq!(kinds, vec![b"VP8X", b"ICCP", b"VP8L", b"EXIF", b"XMP "]);
        let x = &out[chunks[0].data.clone()];
        assert_eq!(x[0], 0x20 | 0x08 | 0x04);
        assert_eq!(u32::from_le_bytes([x[4], x[5], x[6], 0]), 299);
        assert_eq!(u32::from_le_bytes([x[7], x[8], x[9], 0]), 199);
        assert_eq!(&out[chunks[3].data.clone()], b"II*\0abc");
        for n in 12..out.len() - 1 {
            assert!(parse(&out[..n]).is_err() || n < 12, "{n}");
        }
    }
}
