//! PNG container surgery: walk the chunks, check compressed text and ICC chunks for
//! decompression bombs, pick the chunks to carry and splice them into freshly encoded PNG data.

use std::io::Read;
use std::ops::Range;

use super::latin1;

pub const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The most a single compressed chunk (zTXt, iTXt, iCCP) may inflate to. Real text and ICC
/// profiles are far smaller; a chunk beyond this is treated as a decompression bomb.
pub const MAX_INFLATED: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub struct Chunk {
    pub kind: [u8; 4],
    /// The whole chunk: length, type, data, CRC.
    pub raw: Range<usize>,
    pub data: Range<usize>,
}

/// Walks the chunks up to IEND.
pub fn parse(data: &[u8]) -> Result<Vec<Chunk>, String> {
    if !data.starts_with(SIGNATURE) {
        return Err("not a PNG file (bad signature)".into());
    }
    let mut chunks = Vec::new();
    let mut i = SIGNATURE.len();
    loop {
        let Some(head) = data.get(i..i + 8) else {
            return Err("truncated PNG (the file ends before the IEND chunk)".into());
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = [head[4], head[5], head[6], head[7]];
        let end = (i + 12).checked_add(len).filter(|&e| e <= data.len()).ok_or_else(|| {
            format!("truncated PNG (chunk {} runs past the end of the file)", String::from_utf8_lossy(&kind))
        })?;
        chunks.push(Chunk { kind, raw: i..end, data: i + 8..end - 4 });
        i = end;
        if &kind == b"IEND" {
            return Ok(chunks);
        }
    }
}

/// The compressed part of a zTXt, iTXt or iCCP chunk, if it has one.
fn compressed_part<'a>(kind: &[u8; 4], d: &'a [u8]) -> Option<&'a [u8]> {
    match kind {
        b"zTXt" | b"iCCP" => d.get(d.iter().position(|&b| b == 0)? + 2..),
        b"iTXt" => itxt(d).filter(|&(_, flag, _)| flag == 1).map(|(_, _, text)| text),
        _ => None,
    }
}

/// An iTXt chunk's keyword, compression flag (1: compressed) and text, as stored (past the
/// compression method, language tag and translated keyword).
fn itxt(d: &[u8]) -> Option<(&[u8], u8, &[u8])> {
    let nul = d.iter().position(|&b| b == 0)?;
    let flag = *d.get(nul + 1)?;
    let rest = d.get(nul + 3..)?;
    let lang = rest.iter().position(|&b| b == 0)?;
    let rest = rest.get(lang + 1..)?;
    let key = rest.iter().position(|&b| b == 0)?;
    Some((&d[..nul], flag, rest.get(key + 1..)?))
}

/// A zlib stream inflated, bounded by [`MAX_INFLATED`]; `None` when it is corrupt.
fn inflate(z: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(z).take(MAX_INFLATED).read_to_end(&mut out).ok()?;
    Some(out)
}

/// Inflates every compressed chunk up to [`MAX_INFLATED`] bytes; one that inflates further is a
/// decompression bomb and named in the error.
pub fn check_bombs(data: &[u8], chunks: &[Chunk]) -> Result<(), String> {
    for c in chunks {
        let Some(z) = compressed_part(&c.kind, &data[c.data.clone()]) else { continue };
        let mut sink = std::io::sink();
        let mut dec = flate2::read::ZlibDecoder::new(z).take(MAX_INFLATED + 1);
        // A corrupt stream is the decoder's business (and harmless): only size matters here.
        let n = std::io::copy(&mut dec, &mut sink).unwrap_or(0);
        if n > MAX_INFLATED {
            return Err(format!(
                "decompression bomb: a {} chunk of {} bytes inflates to more than {} MiB",
                String::from_utf8_lossy(&c.kind),
                z.len(),
                MAX_INFLATED >> 20
            ));
        }
    }
    Ok(())
}

/// Chunks that describe the pixels' encoding (palette, transparency key, significant bits,
/// background in the old colour type, animation) do not survive a re-encode; everything else that
/// describes the photo does: colour (gAMA, cHRM, sRGB, iCCP, cICP, mDCv, cLLi), text, EXIF, time,
/// physical size, and unknown chunks marked safe to copy.
pub fn carry(kind: &[u8; 4], strip: bool) -> bool {
    const COLOUR: [&[u8; 4]; 7] = [b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"cICP", b"mDCv", b"cLLi"];
    const META: [&[u8; 4]; 7] = [b"pHYs", b"sPLT", b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"];
    const NEVER: [&[u8; 4]; 11] =
        [b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"bKGD", b"hIST", b"sBIT", b"acTL", b"fcTL", b"fdAT"];
    if COLOUR.contains(&kind) {
        return true;
    }
    if strip || NEVER.contains(&kind) {
        return false;
    }
    META.contains(&kind) || kind[0].is_ascii_lowercase() && kind[3].is_ascii_lowercase()
}

/// Writes a chunk with its CRC.
pub fn put_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// The XMP packet of an iTXt `XML:com.adobe.xmp` chunk (uncompressed ones only).
pub fn xmp(d: &[u8]) -> Option<&[u8]> {
    itxt(d).filter(|&(key, flag, _)| key == b"XML:com.adobe.xmp" && flag == 0).map(|(_, _, text)| text)
}

/// The ICC profile of an iCCP chunk, inflated (bounded by [`MAX_INFLATED`]).
pub fn icc(d: &[u8]) -> Option<Vec<u8>> {
    inflate(compressed_part(b"iCCP", d)?)
}

/// An iCCP chunk's data for `profile`.
pub fn iccp_data(profile: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc =
        flate2::write::ZlibEncoder::new(b"ICC profile\0\0".to_vec(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(profile);
    enc.finish().unwrap_or_default()
}

/// An iTXt chunk's data holding an XMP packet.
pub fn xmp_data(packet: &[u8]) -> Vec<u8> {
    let mut d = b"XML:com.adobe.xmp\0\0\0\0\0".to_vec();
    d.extend_from_slice(packet);
    d
}

/// The keyword under which PNG writers (exiftool, ImageMagick, GIMP) store a photo's comment.
const COMMENT: &[u8] = b"Comment";

/// The text of a tEXt, zTXt or iTXt chunk whose keyword is `Comment`: Latin-1 in tEXt and zTXt,
/// UTF-8 in iTXt; a compressed one inflated up to [`MAX_INFLATED`]. `None` for another keyword or a
/// malformed chunk.
pub fn comment(kind: &[u8; 4], d: &[u8]) -> Option<String> {
    let rest = d.strip_prefix(COMMENT)?.strip_prefix(b"\0")?;
    match kind {
        b"tEXt" => Some(latin1(rest)),
        b"zTXt" => inflate(compressed_part(kind, d)?).map(|t| latin1(&t)),
        b"iTXt" => {
            let text = match itxt(d)? {
                (_, 1, z) => inflate(z)?,
                (_, _, text) => text.to_vec(),
            };
            String::from_utf8(text).ok()
        }
        _ => None,
    }
}

/// A text chunk holding `text` as the photo's comment: tEXt when Latin-1 holds it, else iTXt
/// (UTF-8, uncompressed).
pub fn comment_chunk(text: &str) -> ([u8; 4], Vec<u8>) {
    let mut d = [COMMENT, b"\0"].concat();
    let latin1: Option<Vec<u8>> =
        text.chars().map(|c| u8::try_from(u32::from(c)).ok().filter(|&b| b != 0)).collect();
    match latin1 {
        Some(bytes) => {
            d.extend_from_slice(&bytes);
            (*b"tEXt", d)
        }
        None => {
            // Not compressed, no language, no translated keyword.
            d.extend_from_slice(b"\0\0\0\0");
            d.extend_from_slice(text.as_bytes());
            (*b"iTXt", d)
        }
    }
}

/// Builds the output: signature, the encoder's IHDR, the carried chunks (raw bytes, or data to
/// which a CRC is added), then the encoder's IDAT chunks and IEND.
pub fn splice(encoded: &[u8], carried: &[Carried]) -> Result<Vec<u8>, String> {
    let chunks = parse(encoded).map_err(|e| format!("the encoder produced an unreadable PNG: {e}"))?;
    let mut out = Vec::with_capacity(encoded.len() + 4096);
    out.extend_from_slice(SIGNATURE);
    let ihdr = chunks.first().filter(|c| &c.kind == b"IHDR").ok_or("the encoder's PNG has no IHDR")?;
    out.extend_from_slice(&encoded[ihdr.raw.clone()]);
    for c in carried {
        match c {
            Carried::Raw(raw) => out.extend_from_slice(raw),
            Carried::New(kind, data) => put_chunk(&mut out, kind, data),
        }
    }
    for c in chunks.iter().filter(|c| &c.kind == b"IDAT" || &c.kind == b"IEND") {
        out.extend_from_slice(&encoded[c.raw.clone()]);
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub enum Carried {
    /// A chunk copied byte for byte (length, type, data, CRC).
    Raw(Vec<u8>),
    /// A chunk to write with a fresh CRC.
    New([u8; 4], Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn png_with(chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        put_chunk(&mut v, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0]);
        for (k, d) in chunks {
            put_chunk(&mut v, k, d);
        }
        put_chunk(&mut v, b"IEND", &[]);
        v
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn ztxt_bomb_is_rejected_and_small_text_is_not() {
        let mut bomb = b"Comment\0\0".to_vec();
        bomb.extend(zlib(&vec![b'a'; (MAX_INFLATED + 10) as usize]));
        assert!(bomb.len() < 20_000, "the bomb is small: {}", bomb.len());
        let data = png_with(&[(b"zTXt", bomb)]);
        let err = check_bombs(&data, &parse(&data).unwrap()).unwrap_err();
        assert!(err.contains("zTXt") && err.contains("bomb"), "{err}");

        let mut fine = b"Comment\0\0".to_vec();
        fine.extend(zlib(b"a short comment"));
        let data = png_with(&[(b"zTXt", fine)]);
        check_bombs(&data, &parse(&data).unwrap()).unwrap();
    }

    #[test]
    fn itxt_and_iccp_bombs_are_rejected() {
        let mut itxt = b"XML:com.adobe.xmp\0\x01\0en\0\0".to_vec();
        itxt.extend(zlib(&vec![b' '; (MAX_INFLATED + 1) as usize]));
        let mut iccp = b"ICC\0\0".to_vec();
        iccp.extend(zlib(&vec![0; (MAX_INFLATED + 1) as usize]));
        for (k, d) in [(b"iTXt", itxt), (b"iCCP", iccp)] {
            let data = png_with(&[(k, d)]);
            assert!(check_bombs(&data, &parse(&data).unwrap()).is_err());
        }
    }

    #[test]
    fn truncated_png_is_an_error() {
        let data = png_with(&[(b"tEXt", b"a\0b".to_vec())]);
        for n in 0..data.len() {
            assert!(parse(&data[..n]).is_err(), "{n}");
        }
        assert_eq!(parse(&data).unwrap().len(), 3);
    }

    #[test]
    fn which_chunks_are_carried() {
        for k in [b"iCCP", b"eXIf", b"iTXt", b"zTXt", b"tEXt", b"pHYs", b"tIME", b"prVt"] {
            assert!(carry(k, false), "{}", String::from_utf8_lossy(k));
        }
        for k in [b"tRNS", b"PLTE", b"acTL", b"sBIT", b"prVT", b"IDAT"] {
            assert!(!carry(k, false), "{}", String::from_utf8_lossy(k));
        }
        assert!(carry(b"iCCP", true) && !carry(b"eXIf", true) && !carry(b"tEXt", true));
    }

    #[test]
    fn xmp_and_icc_helpers_round_trip() {
        let packet = b"<x:xmpmeta/>";
        assert_eq!(xmp(&xmp_data(packet)), Some(&packet[..]));
        let profile = vec![7u8; 3000];
        assert_eq!(icc(&iccp_data(&profile)), Some(profile));
    }
}
