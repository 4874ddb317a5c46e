//! XMP packets: the GPS properties (`exif:GPSLatitude`, `exif:GPSLongitude`, … and any other
//! property whose local name starts with `GPS`, in any letter case) removed for
//! `imageio.metadata = "keep-no-gps"`, every other byte of the packet left as it was.
//!
//! XMP writes a property either as an attribute of `rdf:Description` (`exif:GPSLatitude="51,30.1N"`)
//! or as an element (`<exif:GPSLatitude>51,30.1N</exif:GPSLatitude>`, possibly holding nested
//! elements). Both are removed. A packet that mentions GPS but cannot be read as XML is reported as
//! [`Scrubbed::Unreadable`], so the caller drops it rather than risk carrying coordinates.

use std::ops::Range;

/// What [`remove_gps`] made of a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scrubbed {
    /// No GPS property: the packet can be carried as it is.
    Unchanged,
    /// The packet without its GPS properties.
    Removed(Vec<u8>),
    /// The packet mentions GPS but is not well-formed enough to remove it: drop the packet.
    Unreadable,
}

/// The packet without its GPS properties.
pub fn remove_gps(packet: &[u8]) -> Scrubbed {
    match gps_spans(packet) {
        Some(spans) if spans.is_empty() => Scrubbed::Unchanged,
        Some(spans) => {
            let mut out = Vec::with_capacity(packet.len());
            let mut at = 0;
            for s in spans {
                out.extend_from_slice(&packet[at..s.start]);
                at = s.end;
            }
            out.extend_from_slice(&packet[at..]);
            Scrubbed::Removed(out)
        }
        None if mentions_gps(packet) => Scrubbed::Unreadable,
        None => Scrubbed::Unchanged,
    }
}

/// Whether `bytes` contain "gps" in any letter case (e.g. in an extended-XMP part).
pub fn mentions_gps(bytes: &[u8]) -> bool {
    bytes.windows(3).any(|w| w.eq_ignore_ascii_case(b"gps"))
}

/// A qualified name whose local part starts with "GPS" (a namespace declaration never is one).
fn is_gps(name: &[u8]) -> bool {
    if name.starts_with(b"xmlns") {
        return false;
    }
    let local = name.iter().position(|&b| b == b':').map_or(name, |i| &name[i + 1..]);
    local.len() >= 3 && local[..3].eq_ignore_ascii_case(b"gps")
}

/// The byte ranges to remove, in order and disjoint; `None` when the packet is not well-formed.
fn gps_spans(p: &[u8]) -> Option<Vec<Range<usize>>> {
    let mut spans = Vec::new();
    let mut i = 0;
    while let Some(token) = next_token(p, i)? {
        match token {
            Token::Start { start, name, end, empty, .. } if is_gps(&p[name.clone()]) => {
                let end = if empty { end } else { matching_end(p, end, &p[name])? };
                spans.push(start..end);
                i = end;
            }
            Token::Start { attrs, end, .. } => {
                spans.extend(attrs.into_iter().filter(|a| is_gps(&p[a.name.clone()])).map(|a| a.whole));
                i = end;
            }
            Token::End { end, .. } | Token::Other { end } => i = end,
        }
    }
    Some(spans)
}

/// Where the element whose start tag ends at `from` ends (after its `</name>`).
fn matching_end(p: &[u8], from: usize, name: &[u8]) -> Option<usize> {
    let mut depth = 1usize;
    let mut i = from;
    while let Some(token) = next_token(p, i)? {
        match token {
            Token::Start { name: n, end, empty, .. } => {
                if !empty && &p[n] == name {
                    depth += 1;
                }
                i = end;
            }
            Token::End { name: n, end } => {
                if &p[n] == name {
                    depth -= 1;
                    if depth == 0 {
                        return Some(end);
                    }
                }
                i = end;
            }
            Token::Other { end } => i = end,
        }
    }
    None
}

struct Attr {
    name: Range<usize>,
    /// The attribute with the whitespace before it.
    whole: Range<usize>,
}

enum Token {
    /// `<name attr="v" …>` or, `empty`, `<name …/>`; `end` is just after the `>`.
    Start { start: usize, name: Range<usize>, attrs: Vec<Attr>, end: usize, empty: bool },
    /// `</name>`.
    End { name: Range<usize>, end: usize },
    /// A comment, CDATA section, processing instruction or declaration.
    Other { end: usize },
}

/// The next markup from `i`: `Ok(None)` at the end of the packet (only text left), `None` (outer)
/// when the markup is not well-formed.
fn next_token(p: &[u8], i: usize) -> Option<Option<Token>> {
    let Some(start) = find(p, i, b"<") else { return Some(None) };
    let rest = &p[start..];
    let skip_to = |open: usize, close: &[u8]| find(p, start + open, close).map(|e| e + close.len());
    let token = if rest.starts_with(b"<!--") {
        Token::Other { end: skip_to(4, b"-->")? }
    } else if rest.starts_with(b"<![CDATA[") {
        Token::Other { end: skip_to(9, b"]]>")? }
    } else if rest.starts_with(b"<?") {
        Token::Other { end: skip_to(2, b"?>")? }
    } else if rest.starts_with(b"<!") {
        Token::Other { end: skip_to(2, b">")? }
    } else if rest.starts_with(b"</") {
        let close = find(p, start + 2, b">")?;
        let name = trim_end(p, start + 2..close);
        if name.is_empty() {
            return None;
        }
        Token::End { name, end: close + 1 }
    } else {
        start_tag(p, start)?
    };
    Some(Some(token))
}

fn start_tag(p: &[u8], start: usize) -> Option<Token> {
    let mut i = start + 1;
    while i < p.len() && !is_space(p[i]) && p[i] != b'>' && p[i] != b'/' {
        i += 1;
    }
    let name = start + 1..i;
    if name.is_empty() {
        return None;
    }
    let mut attrs = Vec::new();
    loop {
        let ws = i;
        while i < p.len() && is_space(p[i]) {
            i += 1;
        }
        match *p.get(i)? {
            b'>' => return Some(Token::Start { start, name, attrs, end: i + 1, empty: false }),
            b'/' if p.get(i + 1) == Some(&b'>') => {
                return Some(Token::Start { start, name, attrs, end: i + 2, empty: true })
            }
            b'/' => return None,
            _ if i == ws => return None,
            _ => {}
        }
        let name_start = i;
        while i < p.len() && !is_space(p[i]) && !matches!(p[i], b'=' | b'>' | b'/') {
            i += 1;
        }
        let attr_name = name_start..i;
        while i < p.len() && is_space(p[i]) {
            i += 1;
        }
        if p.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        while i < p.len() && is_space(p[i]) {
            i += 1;
        }
        let quote = *p.get(i)?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        i = find(p, i + 1, &[quote])? + 1;
        attrs.push(Attr { name: attr_name, whole: ws..i });
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim_end(p: &[u8], mut r: Range<usize>) -> Range<usize> {
    while r.end > r.start && is_space(p[r.end - 1]) {
        r.end -= 1;
    }
    r
}

fn find(p: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    p.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|k| from + k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removed(packet: &str) -> String {
        match remove_gps(packet.as_bytes()) {
            Scrubbed::Removed(v) => String::from_utf8(v).unwrap_or_default(),
            other => panic!("expected a removal, got {other:?}"),
        }
    }

    #[test]
    fn attribute_properties_go_and_the_rest_stays_byte_for_byte() {
        let packet = r#"<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="51,30.1N"
  exif:GPSLongitude='0,7.5W' exif:ExposureTime="1/100" exif:gpsAltitude = "12"/>
</rdf:RDF></x:xmpmeta>
<?xpacket end="w"?>"#;
        let want = r#"<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:ExposureTime="1/100"/>
</rdf:RDF></x:xmpmeta>
<?xpacket end="w"?>"#;
        assert_eq!(removed(packet), want);
    }

    #[test]
    fn element_properties_go_with_what_they_hold() {
        let packet = "<rdf:Description xmlns:gps='g' xmlns:exif='e'>\
            <exif:GPSVersionID>2.2.0.0</exif:GPSVersionID>\
            <exif:Model>X</exif:Model>\
            <exif:GPSDestBearing><rdf:Seq><rdf:li>1</rdf:li><exif:GPSDestBearing>n</exif:GPSDestBearing></rdf:Seq></exif:GPSDestBearing>\
            <drone-dji:GpsLatitude/>\
            <!-- <exif:GPSLatitude> in a comment is text -->\
            </rdf:Description>";
        let want = "<rdf:Description xmlns:gps='g' xmlns:exif='e'>\
            <exif:Model>X</exif:Model>\
            <!-- <exif:GPSLatitude> in a comment is text -->\
            </rdf:Description>";
        assert_eq!(removed(packet), want);
    }

    #[test]
    fn a_packet_without_gps_is_unchanged() {
        let packet = b"<x:xmpmeta><rdf:Description exif:Make=\"Jolla\" xmlns:gps=\"g\"/></x:xmpmeta>";
        assert_eq!(remove_gps(packet), Scrubbed::Unchanged);
        assert_eq!(remove_gps(b"no markup at all"), Scrubbed::Unchanged);
    }

    #[test]
    fn a_broken_packet_that_mentions_gps_is_unreadable() {
        assert_eq!(remove_gps(b"<rdf:Description exif:GPSLatitude=\"51"), Scrubbed::Unreadable);
        assert_eq!(remove_gps(b"<exif:GPSLatitude>51</rdf:Description>"), Scrubbed::Unreadable);
        assert_eq!(remove_gps(b"<a b=c>"), Scrubbed::Unchanged);
    }
}
