//! `veil faces --draw`: the photo with each face's box and landmarks painted on, for people who want
//! to see what was found. Plain pixel code; nothing here affects detection.

use image::{Rgb, RgbImage};

use super::Face;

const BOX: Rgb<u8> = Rgb([0, 255, 64]);
const DOT: Rgb<u8> = Rgb([255, 32, 32]);

/// Paints every face onto `image`: the box as a rectangle outline and each landmark as a dot, both
/// sized to the photo (about 1/400 and 1/200 of its longer side) so they show at any resolution.
pub fn draw(image: &mut RgbImage, faces: &[Face]) {
    let longest = image.width().max(image.height()) as f32;
    let thick = (longest / 400.0).round().max(1.0);
    let radius = (longest / 200.0).round().max(2.0);
    for face in faces {
        let b = &face.bbox;
        // The four sides as filled bands `thick` pixels wide, inside the box's outline.
        fill(image, b.x1, b.y1, b.x2, b.y1 + thick, BOX);
        fill(image, b.x1, b.y2 - thick, b.x2, b.y2, BOX);
        fill(image, b.x1, b.y1, b.x1 + thick, b.y2, BOX);
        fill(image, b.x2 - thick, b.y1, b.x2, b.y2, BOX);
        for [x, y] in face.landmarks {
            disc(image, x, y, radius, DOT);
        }
    }
}

/// Pixel column or row range `[a, b)` clipped to `0..limit`.
fn span(a: f32, b: f32, limit: u32) -> std::ops::Range<u32> {
    let clip = |v: f32| v.round().clamp(0.0, limit as f32) as u32;
    clip(a)..clip(b)
}

fn fill(image: &mut RgbImage, x1: f32, y1: f32, x2: f32, y2: f32, colour: Rgb<u8>) {
    for y in span(y1, y2, image.height()) {
        for x in span(x1, x2, image.width()) {
            image.put_pixel(x, y, colour);
        }
    }
}

fn disc(image: &mut RgbImage, cx: f32, cy: f32, r: f32, colour: Rgb<u8>) {
    for y in span(cy - r, cy + r + 1.0, image.height()) {
        for x in span(cx - r, cx + r + 1.0, image.width()) {
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            if dx * dx + dy * dy <= r * r {
                image.put_pixel(x, y, colour);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faces::FaceBox;

    #[test]
    fn draws_the_outline_and_dots_and_clips_at_the_edges() {
        let mut img = RgbImage::new(400, 300);
        let face = Face {
            bbox: FaceBox { x1: 100.0, y1: 50.0, x2: 200.0, y2: 180.0 },
            score: 0.99,
            landmarks: [[130.0, 100.0], [170.0, 100.0], [150.0, 120.0], [135.0, 150.0], [165.0, 150.0]],
        };
        // A second face hanging over the corner must not panic.
        let outside = Face { bbox: FaceBox { x1: 380.0, y1: -20.0, x2: 450.0, y2: 40.0 }, ..face.clone() };
        draw(&mut img, &[face, outside]);
        assert_eq!(*img.get_pixel(100, 50), BOX);
        assert_eq!(*img.get_pixel(199, 179), BOX);
        assert_eq!(*img.get_pixel(150, 50), BOX);
        assert_eq!(*img.get_pixel(150, 90), Rgb([0, 0, 0]), "inside the box stays untouched");
        assert_eq!(*img.get_pixel(150, 120), DOT);
        assert_eq!(*img.get_pixel(380, 0), BOX);
        assert_eq!(*img.get_pixel(399, 39), BOX);
    }
}
