//! TIFF structures (EXIF blobs and TIFF files): reading IFDs with bounds checks, the few in-place
//! edits Veil makes to an EXIF blob (drop the GPS IFD, replace or drop the IFD1 thumbnail), and a
//! writer that serialises IFDs whose values are copied byte for byte.
//!
//! Every read is bounds-checked: a broken blob yields `None`, never a panic.

/// Tag numbers used here.
pub const ORIENTATION: u16 = 0x0112;
pub const EXIF_IFD: u16 = 0x8769;
pub const GPS_IFD: u16 = 0x8825;
pub const INTEROP_IFD: u16 = 0xA005;
pub const MAKER_NOTE: u16 = 0x927C;
pub const THUMB_OFFSET: u16 = 0x0201;
pub const THUMB_LENGTH: u16 = 0x0202;

/// Size in bytes of one value of a TIFF field type (0 for unknown types).
pub fn type_size(typ: u16) -> usize {
    match typ {
        1 | 2 | 6 | 7 => 1,
        3 | 8 => 2,
        4 | 9 | 11 | 13 => 4,
        5 | 10 | 12 => 8,
        _ => 0,
    }
}

/// One IFD entry as found in a blob.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Offset of the 12-byte entry itself.
    pub pos: usize,
    pub tag: u16,
    pub typ: u16,
    pub count: u32,
    /// Offset of the value bytes (inline in the entry, or where the entry points).
    pub value_pos: usize,
    /// Length of the value bytes.
    pub value_len: usize,
}

impl Entry {
    pub fn inline(&self) -> bool {
        self.value_len <= 4
    }
}

/// One IFD: its entries and where its next-IFD pointer sits.
#[derive(Debug, Clone)]
pub struct Ifd {
    pub pos: usize,
    pub entries: Vec<Entry>,
    pub next_ptr_pos: usize,
}

/// A read-only view of a TIFF structure.
#[derive(Debug, Clone, Copy)]
pub struct Tiff<'a> {
    pub data: &'a [u8],
    pub le: bool,
}

impl<'a> Tiff<'a> {
    /// Checks the header (`II*\0` or `MM\0*`).
    pub fn new(data: &'a [u8]) -> Option<Tiff<'a>> {
        let le = match data.get(0..4)? {
            [b'I', b'I', 42, 0] => true,
            [b'M', b'M', 0, 42] => false,
            _ => return None,
        };
        Some(Tiff { data, le })
    }

    pub fn u16_at(&self, pos: usize) -> Option<u16> {
        let b: [u8; 2] = self.data.get(pos..pos.checked_add(2)?)?.try_into().ok()?;
        Some(if self.le { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) })
    }

    pub fn u32_at(&self, pos: usize) -> Option<u32> {
        let b: [u8; 4] = self.data.get(pos..pos.checked_add(4)?)?.try_into().ok()?;
        Some(if self.le { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    }

    pub fn ifd0_offset(&self) -> Option<usize> {
        self.u32_at(4).map(|o| o as usize)
    }

    /// Reads the IFD at `pos`; entries whose values lie outside the blob are skipped.
    pub fn ifd(&self, pos: usize) -> Option<Ifd> {
        if pos < 8 {
            return None;
        }
        let n = self.u16_at(pos)? as usize;
        let next_ptr_pos = pos + 2 + 12 * n;
        if next_ptr_pos + 4 > self.data.len() {
            return None;
        }
        let mut entries = Vec::with_capacity(n);
        for i in 0..n {
            let e = pos + 2 + 12 * i;
            let (tag, typ, count) = (self.u16_at(e)?, self.u16_at(e + 2)?, self.u32_at(e + 4)?);
            let Some(value_len) = (count as usize).checked_mul(type_size(typ)) else { continue };
            let value_pos = if value_len <= 4 { e + 8 } else { self.u32_at(e + 8)? as usize };
            if type_size(typ) == 0 || value_pos.checked_add(value_len).is_none_or(|end| end > self.data.len())
            {
                continue;
            }
            entries.push(Entry { pos: e, tag, typ, count, value_pos, value_len });
        }
        Some(Ifd { pos, entries, next_ptr_pos })
    }

    /// The first SHORT or LONG value of an entry.
    pub fn scalar(&self, e: &Entry) -> Option<u32> {
        match e.typ {
            3 => self.u16_at(e.value_pos).map(u32::from),
            4 | 13 => self.u32_at(e.value_pos),
            _ => None,
        }
    }

    pub fn find(&self, ifd: &Ifd, tag: u16) -> Option<Entry> {
        ifd.entries.iter().find(|e| e.tag == tag).copied()
    }

    /// IFD1 of the blob, if IFD0 links to one.
    pub fn ifd1(&self) -> Option<Ifd> {
        let ifd0 = self.ifd(self.ifd0_offset()?)?;
        let next = self.u32_at(ifd0.next_ptr_pos)? as usize;
        if next == 0 {
            return None;
        }
        self.ifd(next)
    }
}

/// The Orientation tag (1–8) of IFD0, if present and valid.
pub fn orientation(blob: &[u8]) -> Option<u8> {
    let t = Tiff::new(blob)?;
    let ifd0 = t.ifd(t.ifd0_offset()?)?;
    let v = t.scalar(&t.find(&ifd0, ORIENTATION)?)?;
    u8::try_from(v).ok().filter(|v| (1..=8).contains(v))
}

/// Sets IFD0's Orientation tag (a SHORT) to `v` in place, when there is one; returns whether it did.
#[cfg(feature = "heic")]
pub fn set_orientation(blob: &mut [u8], v: u16) -> bool {
    let Some((pos, le)) = Tiff::new(blob).and_then(|t| {
        let ifd0 = t.ifd(t.ifd0_offset()?)?;
        let e = t.find(&ifd0, ORIENTATION)?;
        (e.typ == 3 && e.count == 1).then_some((e.value_pos, t.le))
    }) else {
        return false;
    };
    put_u16(blob, pos, v, le);
    true
}

fn put_u16(buf: &mut [u8], pos: usize, v: u16, le: bool) {
    if let Some(d) = buf.get_mut(pos..pos + 2) {
        d.copy_from_slice(&if le { v.to_le_bytes() } else { v.to_be_bytes() });
    }
}

fn put_u32(buf: &mut [u8], pos: usize, v: u32, le: bool) {
    if let Some(d) = buf.get_mut(pos..pos + 4) {
        d.copy_from_slice(&if le { v.to_le_bytes() } else { v.to_be_bytes() });
    }
}

fn zero(buf: &mut [u8], pos: usize, len: usize) {
    if let Some(d) = buf.get_mut(pos..pos.saturating_add(len).min(buf.len())) {
        d.fill(0);
    }
}

/// Removes the GPS IFD: its entry in IFD0 goes (later entries move up, the count drops by one) and
/// the GPS IFD and every value it points to are overwritten with zeros, so the coordinates cannot be
/// recovered from the bytes. Returns whether there was a GPS IFD. All other bytes stay where they
/// were, so every other tag and offset is unchanged.
pub fn remove_gps(blob: &mut [u8]) -> bool {
    let Some(t) = Tiff::new(blob) else { return false };
    let le = t.le;
    let Some(ifd0) = t.ifd0_offset().and_then(|o| t.ifd(o)) else { return false };
    let Some(gps) = t.find(&ifd0, GPS_IFD) else { return false };
    let mut zero_ranges = Vec::new();
    if let Some(gps_ifd) = t.scalar(&gps).and_then(|o| t.ifd(o as usize)) {
        for e in gps_ifd.entries.iter().filter(|e| !e.inline()) {
            zero_ranges.push((e.value_pos, e.value_len));
        }
        zero_ranges.push((gps_ifd.pos, gps_ifd.next_ptr_pos + 4 - gps_ifd.pos));
    }
    // A malformed file's GPS pointer may lead into another IFD (its Exif IFD, say): bytes the other
    // IFDs use are not the GPS block's to zero; the pointer alone goes.
    let mut others = vec![ifd0.clone()];
    let sub = |ifd: &Ifd, tag| t.find(ifd, tag).and_then(|e| t.scalar(&e)).and_then(|o| t.ifd(o as usize));
    if let Some(exif) = sub(&ifd0, EXIF_IFD) {
        others.extend(sub(&exif, INTEROP_IFD));
        others.push(exif);
    }
    others.extend(t.ifd1());
    let used: Vec<(usize, usize)> = others
        .iter()
        .flat_map(|ifd| {
            let table = (ifd.pos, ifd.next_ptr_pos + 4 - ifd.pos);
            ifd.entries.iter().filter(|e| !e.inline()).map(|e| (e.value_pos, e.value_len)).chain([table])
        })
        .collect();
    // Byte by byte: a GPS range another IFD's value runs over keeps only the bytes that value uses.
    let zero_ranges: Vec<(usize, usize)> = zero_ranges
        .into_iter()
        .flat_map(|(p, l)| {
            (p..p.saturating_add(l)).filter(|&b| !used.iter().any(|&(q, m)| q <= b && b < q + m))
        })
        .map(|b| (b, 1))
        .collect();
    let n = t.u16_at(ifd0.pos).unwrap_or(0) as usize;
    let end = ifd0.next_ptr_pos + 4;
    // Shift the entries after the GPS entry and the next-IFD pointer up by one entry.
    blob.copy_within(gps.pos + 12..end, gps.pos);
    zero(blob, end - 12, 12);
    put_u16(blob, ifd0.pos, (n - 1) as u16, le);
    for (pos, len) in zero_ranges {
        zero(blob, pos, len);
    }
    true
}

/// The JPEG thumbnail of IFD1: where its bytes are and where its offset/length entries sit.
#[derive(Debug, Clone, Copy)]
pub struct Thumbnail {
    pub offset: usize,
    pub len: usize,
    pub len_entry: usize,
}

/// Whether IFD1 exists, and its JPEG thumbnail if it has one.
pub fn thumbnail(blob: &[u8]) -> (bool, Option<Thumbnail>) {
    let Some(t) = Tiff::new(blob) else { return (false, None) };
    let Some(ifd1) = t.ifd1() else { return (false, None) };
    let (Some(o), Some(l)) = (t.find(&ifd1, THUMB_OFFSET), t.find(&ifd1, THUMB_LENGTH)) else {
        return (true, None);
    };
    let (Some(offset), Some(len)) = (t.scalar(&o), t.scalar(&l)) else { return (true, None) };
    let (offset, len) = (offset as usize, len as usize);
    if offset.checked_add(len).is_none_or(|end| end > blob.len()) || o.typ == 3 && offset > 0xffff {
        return (true, None);
    }
    (true, Some(Thumbnail { offset, len, len_entry: l.pos }))
}

/// An uncompressed 8-bit RGB thumbnail in IFD1, in one strip: where its bytes are and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawThumbnail {
    pub offset: usize,
    pub width: u32,
    pub height: u32,
}

pub fn raw_thumbnail(blob: &[u8]) -> Option<RawThumbnail> {
    let t = Tiff::new(blob)?;
    let ifd1 = t.ifd1()?;
    let get = |tag| t.find(&ifd1, tag).and_then(|e| t.scalar(&e));
    let count = |tag| t.find(&ifd1, tag).map(|e| e.count);
    let (width, height) = (get(256)?, get(257)?);
    let uncompressed_rgb = get(259)? == 1 && get(262)? == 2 && get(277).unwrap_or(3) == 3;
    let chunky = get(284).unwrap_or(1) == 1;
    let eight_bits = t
        .find(&ifd1, 258)
        .is_none_or(|e| (0..e.count as usize).all(|k| t.u16_at(e.value_pos + 2 * k) == Some(8)));
    let len = (width as usize).checked_mul(height as usize)?.checked_mul(3)?;
    let offset = get(273)? as usize;
    let fits = count(273)? == 1 && count(279)? == 1 && get(279)? as usize == len;
    (uncompressed_rgb
        && chunky
        && eight_bits
        && fits
        && offset.checked_add(len)? <= blob.len()
        && width > 0
        && height > 0)
        .then_some(RawThumbnail { offset, width, height })
}

/// Unlinks IFD1 from IFD0 and zeroes the old thumbnail's bytes (a copy of the unprotected photo).
pub fn drop_thumbnail(blob: &mut [u8]) {
    let Some(t) = Tiff::new(blob) else { return };
    let le = t.le;
    let Some(ifd0) = t.ifd0_offset().and_then(|o| t.ifd(o)) else { return };
    let (_, thumb) = thumbnail(blob);
    if let Some(th) = thumb {
        zero(blob, th.offset, th.len);
    }
    put_u32(blob, ifd0.next_ptr_pos, 0, le);
}

/// Puts `jpeg` in place of the IFD1 thumbnail: at the same offset when the old thumbnail ends the
/// blob (the blob grows or shrinks, `max_len` bounds it) or when the new one fits in the old one's
/// bytes (the rest is zeroed). Returns false, changing nothing, when neither is possible.
pub fn replace_thumbnail(blob: &mut Vec<u8>, th: &Thumbnail, jpeg: &[u8], max_len: usize) -> bool {
    let Some(t) = Tiff::new(blob) else { return false };
    let le = t.le;
    let end = th.offset + th.len;
    let at_end = blob[end..].iter().all(|&b| b == 0);
    if at_end && th.offset + jpeg.len() <= max_len {
        blob.truncate(th.offset);
        blob.extend_from_slice(jpeg);
    } else if jpeg.len() <= th.len {
        blob[th.offset..th.offset + jpeg.len()].copy_from_slice(jpeg);
        zero(blob, th.offset + jpeg.len(), th.len - jpeg.len());
    } else {
        return false;
    }
    put_u32(blob, th.len_entry + 8, jpeg.len() as u32, le);
    // The entry's type might be SHORT (rare); rewrite it as LONG so the new length fits.
    put_u16(blob, th.len_entry + 2, 4, le);
    put_u32(blob, th.len_entry + 4, 1, le);
    true
}

/// An entry to write: raw value bytes in the output's byte order, or a sub-IFD.
#[derive(Debug, Clone)]
pub struct OutEntry {
    pub tag: u16,
    pub typ: u16,
    pub count: u32,
    pub value: OutValue,
}

#[derive(Debug, Clone)]
pub enum OutValue {
    Bytes(Vec<u8>),
    /// A pointer tag (LONG) to an IFD that is written after this one.
    Ifd(Vec<OutEntry>),
    /// A LONG array of offsets into the file, filled by the caller's `fixup` (strip offsets).
    Offsets(Vec<u32>),
}

/// Copies the entries of the IFD at `pos` (values byte for byte), following the EXIF, GPS and
/// interoperability pointers; `skip` says which tags to leave out.
pub fn copy_ifd(t: &Tiff, pos: usize, skip: &dyn Fn(u16) -> bool, depth: u8) -> Vec<OutEntry> {
    let Some(ifd) = t.ifd(pos) else { return Vec::new() };
    let mut out = Vec::new();
    for e in ifd.entries.iter().filter(|e| !skip(e.tag)) {
        let value = if matches!(e.tag, EXIF_IFD | GPS_IFD | INTEROP_IFD) {
            let Some(sub) = t.scalar(e) else { continue };
            if depth >= 3 {
                continue;
            }
            // A maker note is the camera maker's own structure, most often with offsets from the
            // start of the TIFF data: moved into a rebuilt IFD they would point at other bytes.
            let maker_note = |tag| {
                let found = tag == MAKER_NOTE;
                if found {
                    tracing::info!("dropped the EXIF maker note: the TIFF is rewritten, and its offsets would point wrong");
                }
                found
            };
            OutValue::Ifd(copy_ifd(t, sub as usize, &maker_note, depth + 1))
        } else {
            OutValue::Bytes(t.data[e.value_pos..e.value_pos + e.value_len].to_vec())
        };
        out.push(OutEntry { tag: e.tag, typ: e.typ, count: e.count, value });
    }
    out
}

/// Appends an IFD (and, after it, the values and sub-IFDs it points to) to `buf`, which holds a
/// TIFF structure starting at offset 0. Returns the IFD's offset and, for `Offsets` values, where
/// each array was written (tag, position) so the caller can fill it in.
pub fn write_ifd(buf: &mut Vec<u8>, entries: &[OutEntry], le: bool, arrays: &mut Vec<(u16, usize)>) -> usize {
    if buf.len() % 2 == 1 {
        buf.push(0);
    }
    let mut entries: Vec<&OutEntry> = entries.iter().collect();
    entries.sort_by_key(|e| e.tag);
    let pos = buf.len();
    buf.resize(pos + 2 + 12 * entries.len() + 4, 0);
    put_u16(buf, pos, entries.len() as u16, le);
    for (i, e) in entries.iter().enumerate() {
        let ep = pos + 2 + 12 * i;
        put_u16(buf, ep, e.tag, le);
        match &e.value {
            OutValue::Bytes(bytes) => {
                put_u16(buf, ep + 2, e.typ, le);
                put_u32(buf, ep + 4, e.count, le);
                if bytes.len() <= 4 {
                    buf[ep + 8..ep + 8 + bytes.len()].copy_from_slice(bytes);
                } else {
                    if buf.len() % 2 == 1 {
                        buf.push(0);
                    }
                    let at = buf.len() as u32;
                    buf.extend_from_slice(bytes);
                    put_u32(buf, ep + 8, at, le);
                }
            }
            OutValue::Ifd(sub) => {
                put_u16(buf, ep + 2, 4, le);
                put_u32(buf, ep + 4, 1, le);
                let at = write_ifd(buf, sub, le, arrays) as u32;
                put_u32(buf, ep + 8, at, le);
            }
            OutValue::Offsets(values) => {
                put_u16(buf, ep + 2, 4, le);
                put_u32(buf, ep + 4, values.len() as u32, le);
                let at = if values.len() == 1 {
                    ep + 8
                } else {
                    let at = buf.len();
                    buf.resize(at + 4 * values.len(), 0);
                    put_u32(buf, ep + 8, at as u32, le);
                    at
                };
                for (k, v) in values.iter().enumerate() {
                    put_u32(buf, at + 4 * k, *v, le);
                }
                arrays.push((e.tag, at));
            }
        }
    }
    pos
}

/// Writes a TIFF header for `le` into an empty buffer; IFD0's offset is set by [`set_ifd0`].
pub fn header(le: bool) -> Vec<u8> {
    if le {
        vec![b'I', b'I', 42, 0, 0, 0, 0, 0]
    } else {
        vec![b'M', b'M', 0, 42, 0, 0, 0, 0]
    }
}

pub fn set_ifd0(buf: &mut [u8], pos: usize, le: bool) {
    put_u32(buf, 4, pos as u32, le);
}

#[cfg(test)]
pub fn set_u32(buf: &mut [u8], pos: usize, v: u32, le: bool) {
    put_u32(buf, pos, v, le);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian EXIF blob: IFD0 {Orientation, GPS pointer, Make}, a GPS IFD with a latitude,
    /// IFD1 with a 10-byte "thumbnail" at the end.
    fn sample() -> Vec<u8> {
        let le = true;
        let mut b = header(le);
        let gps = vec![OutEntry {
            tag: 2,
            typ: 5,
            count: 3,
            value: OutValue::Bytes([1u32, 1, 2, 1, 3, 1].iter().flat_map(|v| v.to_le_bytes()).collect()),
        }];
        let ifd0 = vec![
            OutEntry {
                tag: ORIENTATION,
                typ: 3,
                count: 1,
                value: OutValue::Bytes(6u16.to_le_bytes().to_vec()),
            },
            OutEntry { tag: 0x010f, typ: 2, count: 6, value: OutValue::Bytes(b"Canon\0".to_vec()) },
            OutEntry { tag: GPS_IFD, typ: 4, count: 1, value: OutValue::Ifd(gps) },
        ];
        let mut arrays = Vec::new();
        let p0 = write_ifd(&mut b, &ifd0, le, &mut arrays);
        set_ifd0(&mut b, p0, le);
        let ifd1 = vec![
            OutEntry { tag: THUMB_OFFSET, typ: 4, count: 1, value: OutValue::Offsets(vec![0]) },
            OutEntry {
                tag: THUMB_LENGTH,
                typ: 4,
                count: 1,
                value: OutValue::Bytes(10u32.to_le_bytes().to_vec()),
            },
        ];
        let p1 = write_ifd(&mut b, &ifd1, le, &mut arrays);
        let t = Tiff::new(&b).unwrap();
        let next = t.ifd(p0).unwrap().next_ptr_pos;
        set_u32(&mut b, next, p1 as u32, le);
        let thumb_at = b.len();
        let (_, at) = arrays[0];
        set_u32(&mut b, at, thumb_at as u32, le);
        b.extend_from_slice(&[0xAB; 10]);
        b
    }

    #[test]
    fn reads_orientation_and_thumbnail() {
        let b = sample();
        assert_eq!(orientation(&b), Some(6));
        let (has_ifd1, th) = thumbnail(&b);
        assert!(has_ifd1);
        let th = th.unwrap();
        assert_eq!(th.len, 10);
        assert_eq!(&b[th.offset..th.offset + 10], &[0xAB; 10]);
    }

    #[test]
    fn gps_removal_keeps_other_tags_and_zeroes_coordinates() {
        let mut b = sample();
        let before = b.clone();
        assert!(remove_gps(&mut b));
        assert_eq!(b.len(), before.len());
        let t = Tiff::new(&b).unwrap();
        let ifd0 = t.ifd(t.ifd0_offset().unwrap()).unwrap();
        let tags: Vec<u16> = ifd0.entries.iter().map(|e| e.tag).collect();
        assert_eq!(tags, vec![0x010f, ORIENTATION]);
        assert_eq!(orientation(&b), Some(6));
        // IFD1 is still linked and the rational 1/1 2/1 3/1 is gone from the bytes.
        assert!(thumbnail(&b).1.is_some());
        let rational: Vec<u8> = [1u32, 1, 2, 1, 3, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(before.windows(24).any(|w| w == rational.as_slice()));
        assert!(!b.windows(24).any(|w| w == rational.as_slice()));
        assert!(!remove_gps(&mut b));
    }

    /// A malformed camera file whose GPS pointer leads to its Exif IFD: the pointer goes, the Exif
    /// IFD and its values stay whole.
    #[test]
    fn a_gps_pointer_into_the_exif_ifd_takes_nothing_of_it() {
        let le = true;
        let mut b = header(le);
        let date = OutEntry {
            tag: 0x9003,
            typ: 2,
            count: 20,
            value: OutValue::Bytes(b"2004:01:02 03:04:05\0".to_vec()),
        };
        let exif = write_ifd(&mut b, &[date], le, &mut Vec::new());
        let at = |v: usize| OutValue::Bytes((v as u32).to_le_bytes().to_vec());
        let ifd0 = vec![
            OutEntry { tag: EXIF_IFD, typ: 4, count: 1, value: at(exif) },
            OutEntry { tag: GPS_IFD, typ: 4, count: 0, value: at(exif) },
        ];
        let p0 = write_ifd(&mut b, &ifd0, le, &mut Vec::new());
        set_ifd0(&mut b, p0, le);
        let before = b.clone();
        assert!(remove_gps(&mut b));
        let t = Tiff::new(&b).unwrap();
        let ifd0 = t.ifd(t.ifd0_offset().unwrap()).unwrap();
        assert_eq!(ifd0.entries.iter().map(|e| e.tag).collect::<Vec<_>>(), vec![EXIF_IFD]);
        assert_eq!(b[exif..p0.min(b.len())], before[exif..p0.min(before.len())], "the Exif IFD was zeroed");
        assert!(b.windows(19).any(|w| w == b"2004:01:02 03:04:05"));
    }

    #[test]
    fn thumbnail_replace_and_drop() {
        let mut b = sample();
        let (_, th) = thumbnail(&b);
        let th = th.unwrap();
        assert!(replace_thumbnail(&mut b, &th, &[7; 30], 1000));
        let th2 = thumbnail(&b).1.unwrap();
        assert_eq!((th2.offset, th2.len), (th.offset, 30));
        assert!(!replace_thumbnail(&mut b, &th2, &[7; 300], th.offset + 100));
        drop_thumbnail(&mut b);
        assert!(!thumbnail(&b).0);
        assert!(!b.contains(&7));
    }

    #[test]
    fn finds_an_uncompressed_thumbnail() {
        let le = false;
        let mut b = header(le);
        let p0 = write_ifd(&mut b, &[], le, &mut Vec::new());
        set_ifd0(&mut b, p0, le);
        let short = |v: u16| OutValue::Bytes(v.to_be_bytes().to_vec());
        let ifd1 = vec![
            OutEntry { tag: 256, typ: 3, count: 1, value: short(4) },
            OutEntry { tag: 257, typ: 3, count: 1, value: short(2) },
            OutEntry { tag: 258, typ: 3, count: 3, value: OutValue::Bytes(vec![0, 8, 0, 8, 0, 8]) },
            OutEntry { tag: 259, typ: 3, count: 1, value: short(1) },
            OutEntry { tag: 262, typ: 3, count: 1, value: short(2) },
            OutEntry { tag: 273, typ: 4, count: 1, value: OutValue::Offsets(vec![0]) },
            OutEntry { tag: 279, typ: 3, count: 1, value: short(24) },
        ];
        let mut arrays = Vec::new();
        let p1 = write_ifd(&mut b, &ifd1, le, &mut arrays);
        let next = Tiff::new(&b).unwrap().ifd(p0).unwrap().next_ptr_pos;
        set_u32(&mut b, next, p1 as u32, le);
        let at = b.len();
        set_u32(&mut b, arrays[0].1, at as u32, le);
        b.extend_from_slice(&[9; 24]);
        assert_eq!(raw_thumbnail(&b), Some(RawThumbnail { offset: at, width: 4, height: 2 }));
        b.truncate(b.len() - 1);
        assert_eq!(raw_thumbnail(&b), None);
    }

    #[test]
    fn garbage_is_not_a_panic() {
        for blob in [&b""[..], b"II*\0", b"II*\0\xff\xff\xff\xff", b"MM\0*\0\0\0\x08\xff\xff"] {
            assert_eq!(orientation(blob), None);
            let mut v = blob.to_vec();
            assert!(!remove_gps(&mut v));
            drop_thumbnail(&mut v);
            assert!(thumbnail(blob).1.is_none());
            assert!(raw_thumbnail(blob).is_none());
        }
    }
}
