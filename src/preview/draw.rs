//! Drawing on the sheet: text in the `font8x8` bitmap font (ASCII, Latin-1 and Greek, so `×` and `ε`
//! draw), filled rectangles and pictures pasted into panels.

use font8x8::{UnicodeFonts, BASIC_FONTS, GREEK_FONTS, LATIN_FONTS};
use image::{imageops, Rgb, RgbImage};

use super::layout::Rect;

/// Side of one glyph cell at scale 1, in pixels.
pub const GLYPH: u32 = 8;

pub const INK: Rgb<u8> = Rgb([30, 30, 30]);
pub const MUTED: Rgb<u8> = Rgb([100, 100, 100]);
pub const GOOD: Rgb<u8> = Rgb([0, 120, 40]);
pub const BAD: Rgb<u8> = Rgb([190, 20, 20]);
pub const HOLDOUT: Rgb<u8> = Rgb([120, 50, 160]);
pub const PAPER: Rgb<u8> = Rgb([255, 255, 255]);
pub const FRAME: Rgb<u8> = Rgb([200, 200, 200]);

/// The 8 rows of `c` (bit 0 is the leftmost pixel); `?` for characters the font does not have.
fn glyph(c: char) -> [u8; 8] {
    BASIC_FONTS
        .get(c)
        .or_else(|| LATIN_FONTS.get(c))
        .or_else(|| GREEK_FONTS.get(c))
        .or_else(|| BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

/// Width of `s` drawn at `scale`.
pub fn text_width(s: &str, scale: u32) -> u32 {
    s.chars().count() as u32 * GLYPH * scale
}

/// `s` cut (with a trailing `..`) so that it is at most `max_width` pixels wide at `scale`.
pub fn fit(s: &str, max_width: u32, scale: u32) -> String {
    let max_chars = (max_width / (GLYPH * scale)) as usize;
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    let keep = max_chars.saturating_sub(2);
    s.chars().take(keep).chain("..".chars().take(max_chars - keep)).collect()
}

/// Draws `s` with its top-left corner at `(x, y)`, each font pixel a `scale`×`scale` square; pixels
/// outside the image are dropped.
pub fn text(img: &mut RgbImage, x: u32, y: u32, s: &str, scale: u32, color: Rgb<u8>) {
    let (w, h) = img.dimensions();
    for (i, c) in s.chars().enumerate() {
        let x0 = x + i as u32 * GLYPH * scale;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..GLYPH {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (x0 + col * scale + dx, y + row as u32 * scale + dy);
                        if px < w && py < h {
                            img.put_pixel(px, py, color);
                        }
                    }
                }
            }
        }
    }
}

/// Fills `r` (clipped to the image).
pub fn fill(img: &mut RgbImage, r: Rect, color: Rgb<u8>) {
    let (w, h) = img.dimensions();
    for y in r.y..(r.y + r.h).min(h) {
        for x in r.x..(r.x + r.w).min(w) {
            img.put_pixel(x, y, color);
        }
    }
}

/// A one-pixel frame just outside `r`.
pub fn frame(img: &mut RgbImage, r: Rect, color: Rgb<u8>) {
    let (x0, y0) = (r.x.saturating_sub(1), r.y.saturating_sub(1));
    let (x1, y1) = (r.x + r.w, r.y + r.h);
    fill(img, Rect { x: x0, y: y0, w: x1 - x0 + 1, h: 1 }, color);
    fill(img, Rect { x: x0, y: y1, w: x1 - x0 + 1, h: 1 }, color);
    fill(img, Rect { x: x0, y: y0, w: 1, h: y1 - y0 + 1 }, color);
    fill(img, Rect { x: x1, y: y0, w: 1, h: y1 - y0 + 1 }, color);
}

/// Pastes `picture` resized to exactly `r` (bilinear, or nearest when `crisp`, which keeps single
/// pixels visible).
pub fn paste(img: &mut RgbImage, picture: &RgbImage, r: Rect, crisp: bool) {
    if r.w == 0 || r.h == 0 || picture.width() == 0 || picture.height() == 0 {
        return;
    }
    let filter = if crisp { imageops::FilterType::Nearest } else { imageops::FilterType::Triangle };
    let scaled = if picture.dimensions() == (r.w, r.h) {
        picture.clone()
    } else {
        imageops::resize(picture, r.w, r.h, filter)
    };
    imageops::replace(img, &scaled, i64::from(r.x), i64::from(r.y));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inked(img: &RgbImage) -> usize {
        img.pixels().filter(|p| **p != PAPER).count()
    }

    #[test]
    fn text_draws_every_character_the_sheet_uses() {
        for c in "Aa0.,:()=<>-+×ε%_/".chars() {
            let mut img = RgbImage::from_pixel(16, 16, PAPER);
            text(&mut img, 0, 0, &c.to_string(), 2, INK);
            assert!(inked(&img) > 4, "{c:?} drew nothing");
        }
        // A space draws nothing; unknown characters fall back to `?` rather than vanishing.
        let mut img = RgbImage::from_pixel(16, 8, PAPER);
        text(&mut img, 0, 0, " ", 1, INK);
        assert_eq!(inked(&img), 0);
        text(&mut img, 0, 0, "\u{4e00}", 1, INK);
        assert!(inked(&img) > 0);
    }

    #[test]
    fn text_scales_and_clips_at_the_edge() {
        let mut one = RgbImage::from_pixel(8, 8, PAPER);
        text(&mut one, 0, 0, "H", 1, INK);
        let mut two = RgbImage::from_pixel(16, 16, PAPER);
        text(&mut two, 0, 0, "H", 2, INK);
        assert_eq!(inked(&two), 4 * inked(&one));
        // Partly outside: no panic, only the visible part drawn.
        let mut small = RgbImage::from_pixel(10, 10, PAPER);
        text(&mut small, 6, 6, "HH", 2, INK);
        assert!(inked(&small) > 0 && inked(&small) < inked(&two));
    }

    #[test]
    fn fit_cuts_long_text_to_the_width() {
        assert_eq!(fit("stargan", 100, 1), "stargan");
        assert_eq!(fit("a very long generator name", 80, 1), "a very l..");
        assert_eq!(text_width(&fit("a very long generator name", 80, 2), 2), 80);
        assert_eq!(fit("abc", 8, 1), ".");
    }

    #[test]
    fn paste_fills_the_rectangle_and_frame_surrounds_it() {
        let mut img = RgbImage::from_pixel(20, 20, PAPER);
        let picture = RgbImage::from_pixel(3, 3, Rgb([10, 20, 30]));
        let r = Rect { x: 5, y: 5, w: 8, h: 6 };
        paste(&mut img, &picture, r, true);
        frame(&mut img, r, FRAME);
        assert_eq!(*img.get_pixel(5, 5), Rgb([10, 20, 30]));
        assert_eq!(*img.get_pixel(12, 10), Rgb([10, 20, 30]));
        assert_eq!(*img.get_pixel(13, 11), FRAME);
        assert_eq!(*img.get_pixel(4, 4), FRAME);
        assert_eq!(*img.get_pixel(14, 14), PAPER);
    }
}
