//! Photoshop image resources (JPEG APP13, `Photoshop 3.0`): the thumbnail resources 0x0409 and
//! 0x040C hold a small copy of the unprotected photo, like the EXIF thumbnail, and are regenerated
//! the same way. Every other resource (IPTC included) stays byte for byte.

use std::ops::Range;

pub const ID: &[u8] = b"Photoshop 3.0\0";
const THUMB_OLD: u16 = 0x0409;
const THUMB: u16 = 0x040C;
/// The thumbnail resource's header before its JFIF data.
const HEADER: usize = 28;

/// One resource: its id, the whole resource, and its data.
#[derive(Debug, Clone)]
pub struct Resource {
    pub id: u16,
    pub raw: Range<usize>,
    pub data: Range<usize>,
}

/// Lists the resources after the `Photoshop 3.0` signature; `None` if the block is malformed.
pub fn parse(p: &[u8]) -> Option<Vec<Resource>> {
    let mut i = ID.len();
    let mut out = Vec::new();
    while i < p.len() {
        if p.get(i..i + 4)? != b"8BIM" {
            // Trailing padding is tolerated; anything else is not a resource block.
            return p[i..].iter().all(|&b| b == 0).then_some(out);
        }
        let id = u16::from_be_bytes([*p.get(i + 4)?, *p.get(i + 5)?]);
        let name_len = *p.get(i + 6)? as usize;
        let size_at = i + 6 + ((name_len + 2) & !1);
        let size = u32::from_be_bytes(p.get(size_at..size_at + 4)?.try_into().ok()?) as usize;
        let data = size_at + 4..(size_at + 4).checked_add(size)?;
        if data.end > p.len() {
            return None;
        }
        let end = (data.end + (size & 1)).min(p.len());
        out.push(Resource { id, raw: i..end, data });
        i = end;
    }
    Some(out)
}

/// Whether the block holds a thumbnail resource.
pub fn has_thumbnail(p: &[u8]) -> bool {
    parse(p).is_some_and(|r| r.iter().any(|r| matches!(r.id, THUMB | THUMB_OLD)))
}

/// The block with each thumbnail resource rebuilt by `make(width, height, bgr)` (JPEG data of
/// that size; `bgr` for the old 0x0409 resource, which stores blue first), or dropped where `make`
/// returns `None`. `None` when the block cannot be parsed.
pub fn replace_thumbnails(
    p: &[u8],
    make: &mut dyn FnMut(u32, u32, bool) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    let resources = parse(p)?;
    let mut out = p[..ID.len()].to_vec();
    let mut end = ID.len();
    for r in &resources {
        end = r.raw.end;
        if !matches!(r.id, THUMB | THUMB_OLD) {
            out.extend_from_slice(&p[r.raw.clone()]);
            continue;
        }
        let d = &p[r.data.clone()];
        let be = |k: usize| d.get(k..k + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
        let (Some(w), Some(h)) = (be(4), be(8)) else {
            tracing::info!("dropped a Photoshop thumbnail with an unreadable header");
            continue;
        };
        let Some(jpeg) = make(w.max(1), h.max(1), r.id == THUMB_OLD) else {
            tracing::info!("dropped a Photoshop thumbnail: a regenerated one does not fit");
            continue;
        };
        let width_bytes = (w * 24).div_ceil(32) * 4;
        let mut data = Vec::with_capacity(HEADER + jpeg.len());
        for v in [1, w, h, width_bytes, width_bytes * h, jpeg.len() as u32] {
            data.extend_from_slice(&v.to_be_bytes());
        }
        data.extend_from_slice(&24u16.to_be_bytes());
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&jpeg);
        // Signature, id and name as they were; then the new size and data.
        let size_at = r.data.start - 4;
        out.extend_from_slice(&p[r.raw.start..size_at]);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&data);
        if data.len() % 2 == 1 {
            out.push(0);
        }
    }
    out.extend_from_slice(&p[end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(id: u16, name: &[u8], data: &[u8]) -> Vec<u8> {
        let mut r = b"8BIM".to_vec();
        r.extend_from_slice(&id.to_be_bytes());
        r.push(name.len() as u8);
        r.extend_from_slice(name);
        if (name.len() + 1) % 2 == 1 {
            r.push(0);
        }
        r.extend_from_slice(&(data.len() as u32).to_be_bytes());
        r.extend_from_slice(data);
        if data.len() % 2 == 1 {
            r.push(0);
        }
        r
    }

    #[test]
    fn thumbnail_is_rebuilt_and_the_rest_kept() {
        let iptc = resource(0x0404, b"", b"\x1c\x02\x05\x00\x03abc");
        let mut thumb_data = Vec::new();
        for v in [1u32, 160, 120, 480, 480 * 120, 5] {
            thumb_data.extend_from_slice(&v.to_be_bytes());
        }
        thumb_data.extend_from_slice(&[0, 24, 0, 1, 0xFF, 0xD8, 1, 2, 3]);
        let thumb = resource(THUMB, b"x", &thumb_data);
        let other = resource(0x0425, b"", &[7; 16]);
        let block = [ID, &iptc, &thumb, &other].concat();
        assert!(has_thumbnail(&block));
        let mut asked = Vec::new();
        let out = replace_thumbnails(&block, &mut |w, h, bgr| {
            asked.push((w, h, bgr));
            Some(vec![0xFF, 0xD8, 9, 9, 9])
        })
        .unwrap();
        assert_eq!(asked, vec![(160, 120, false)]);
        let rs = parse(&out).unwrap();
        assert_eq!(rs.iter().map(|r| r.id).collect::<Vec<_>>(), vec![0x0404, THUMB, 0x0425]);
        assert_eq!(&out[rs[0].raw.clone()], &iptc[..]);
        assert_eq!(&out[rs[2].raw.clone()], &other[..]);
        let d = &out[rs[1].data.clone()];
        assert_eq!(&d[HEADER..], &[0xFF, 0xD8, 9, 9, 9]);
        assert_eq!(u32::from_be_bytes(d[20..24].try_into().unwrap()), 5);

        let dropped = replace_thumbnails(&block, &mut |_, _, _| None).unwrap();
        assert_eq!(dropped, [ID, &iptc[..], &other[..]].concat());
    }

    #[test]
    fn malformed_blocks_are_none() {
        let mut block = [ID, &resource(0x0404, b"", &[1; 10])].concat();
        block.truncate(block.len() - 3);
        assert!(parse(&block).is_none());
        assert!(replace_thumbnails(&block, &mut |_, _, _| None).is_none());
        assert!(parse(b"Photoshop 3.0\0junk").is_none());
    }
}
