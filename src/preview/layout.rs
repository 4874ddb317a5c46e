//! Where everything goes on a preview sheet. Pure arithmetic over sizes, so it is tested without
//! models.
//!
//! ```text
//! ┌──────────────────────────────────────────────────────────────────┐
//! │ title; preset, ε, faces, generators                              │
//! │ original        │ protected        │ perturbation (face 1, ×N)   │
//! │ verdicts: one line per generator                                 │
//! │ face 1 [thumb]  header                                           │
//! │  generator │ G(orig) G(prot) │ G(orig) G(prot) │ G(orig) G(prot) │  one row per generator,
//! │  role      │ condition, MSE  │ …               │ …               │  one pair per condition
//! │ face 2 …                                                         │
//! └──────────────────────────────────────────────────────────────────┘
//! ```

use serde::Serialize;

/// The sheet's width: every layout fits in it.
pub const WIDTH: u32 = 1200;
/// Margin and spacing between blocks.
pub const PAD: u32 = 16;
/// Scale of labels (16 px glyphs) and of captions (8 px glyphs).
pub const LABEL: u32 = 2;
pub const CAPTION: u32 = 1;
/// Height of one label line and one caption line.
pub const LINE: u32 = 8 * LABEL + 6;
pub const SMALL_LINE: u32 = 8 * CAPTION + 4;
/// Side of one generator output panel.
pub const PANEL: u32 = 96;
/// Space between the two panels of a pair.
pub const GAP: u32 = 4;
/// The generator label column.
pub const LABEL_WIDTH: u32 = 13 * 8 * LABEL;
/// Side of the perturbation panel and of the face thumbnails.
pub const PERTURBATION: u32 = 280;
pub const THUMB: u32 = 64;
/// Largest height of the photos in the top row.
pub const PHOTO_MAX_HEIGHT: u32 = 400;
/// At most this many faces and conditions per generator are shown.
pub const MAX_FACES: usize = 3;
pub const MAX_CONDITIONS: usize = 3;

/// A rectangle of the sheet, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Rect {
    pub fn right(&self) -> u32 {
        self.x + self.w
    }

    pub fn bottom(&self) -> u32 {
        self.y + self.h
    }

    pub fn overlaps(&self, o: &Rect) -> bool {
        self.x < o.right() && o.x < self.right() && self.y < o.bottom() && o.y < self.bottom()
    }
}

/// One condition of one generator for one face: the output for the original, for the protected
/// photo, and the caption under both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pair {
    pub original: Rect,
    pub protected: Rect,
    pub caption: Rect,
}

/// One generator's row within a face section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub label: Rect,
    pub pairs: Vec<Pair>,
}

/// One face's section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaceBlock {
    pub thumb: Rect,
    pub header: Rect,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub width: u32,
    pub height: u32,
    /// Two label lines: title and settings.
    pub title: Rect,
    pub original: Rect,
    /// Absent on a no-face sheet.
    pub protected: Option<Rect>,
    pub perturbation: Option<Rect>,
    /// The caption under the perturbation (ε, amplification).
    pub perturbation_caption: Option<Rect>,
    /// The verdict header line, then one line per generator; on a no-face sheet, the message lines.
    pub verdicts: Vec<Rect>,
    pub faces: Vec<FaceBlock>,
}

/// `(w, h)` scaled down (never up) to fit `max_w`×`max_h`, at least 1×1.
pub fn fit_size((w, h): (u32, u32), max_w: u32, max_h: u32) -> (u32, u32) {
    let s = (f64::from(max_w) / f64::from(w.max(1))).min(f64::from(max_h) / f64::from(h.max(1))).min(1.0);
    (((f64::from(w) * s).round() as u32).max(1), ((f64::from(h) * s).round() as u32).max(1))
}

/// Lines of text stacked from `y`, each `height` high and the sheet's inner width wide.
fn lines(y: u32, count: usize, height: u32) -> Vec<Rect> {
    (0..count as u32).map(|i| Rect { x: PAD, y: y + i * height, w: WIDTH - 2 * PAD, h: height }).collect()
}

impl Layout {
    /// The sheet for a photo of `photo` pixels with `faces` face sections (at most [`MAX_FACES`]) and
    /// one row per generator, `conditions[g]` pairs in generator `g`'s row (at most
    /// [`MAX_CONDITIONS`]).
    pub fn new(photo: (u32, u32), faces: usize, conditions: &[usize]) -> Layout {
        let title = Rect { x: PAD, y: PAD, w: WIDTH - 2 * PAD, h: 2 * LINE };
        // Top row: original | protected | perturbation, labels above, caption under the perturbation.
        let top = title.bottom() + PAD;
        let photo_w = (WIDTH - 4 * PAD - PERTURBATION) / 2;
        let (pw, ph) = fit_size(photo, photo_w, PHOTO_MAX_HEIGHT);
        let original = Rect { x: PAD, y: top + LINE, w: pw, h: ph };
        let protected = Rect { x: 2 * PAD + photo_w, y: top + LINE, w: pw, h: ph };
        let perturbation = Rect { x: 3 * PAD + 2 * photo_w, y: top + LINE, w: PERTURBATION, h: PERTURBATION };
        let caption =
            Rect { x: perturbation.x, y: perturbation.bottom() + 4, w: PERTURBATION, h: SMALL_LINE };
        let row_bottom = original.bottom().max(caption.bottom());
        // Verdicts: a header line and one line per generator.
        let verdicts = lines(row_bottom + PAD, conditions.len() + 1, LINE);
        let mut y = verdicts.last().map_or(row_bottom, Rect::bottom) + PAD;
        let row_height = PANEL + 2 * SMALL_LINE + PAD / 2;
        let pair_width = 2 * PANEL + GAP;
        let mut blocks = Vec::new();
        for _ in 0..faces.min(MAX_FACES) {
            let thumb = Rect { x: PAD, y, w: THUMB, h: THUMB };
            let header = Rect { x: thumb.right() + PAD, y, w: WIDTH - 3 * PAD - THUMB, h: THUMB };
            y = thumb.bottom() + PAD / 2;
            let mut rows = Vec::new();
            for &n in conditions {
                let label = Rect { x: PAD, y, w: LABEL_WIDTH, h: row_height };
                let pairs = (0..n.min(MAX_CONDITIONS) as u32)
                    .map(|i| {
                        let x = label.right() + PAD + i * (pair_width + PAD);
                        Pair {
                            original: Rect { x, y, w: PANEL, h: PANEL },
                            protected: Rect { x: x + PANEL + GAP, y, w: PANEL, h: PANEL },
                            caption: Rect { x, y: y + PANEL + 2, w: pair_width, h: 2 * SMALL_LINE },
                        }
                    })
                    .collect();
                rows.push(Row { label, pairs });
                y += row_height;
            }
            blocks.push(FaceBlock { thumb, header, rows });
            y += PAD;
        }
        Layout {
            width: WIDTH,
            height: y + PAD,
            title,
            original,
            protected: Some(protected),
            perturbation: Some(perturbation),
            perturbation_caption: Some(caption),
            verdicts,
            faces: blocks,
        }
    }

    /// The short sheet for a photo without a face: title, the photo, `messages` lines of text.
    pub fn no_face(photo: (u32, u32), messages: usize) -> Layout {
        let title = Rect { x: PAD, y: PAD, w: WIDTH - 2 * PAD, h: 2 * LINE };
        let top = title.bottom() + PAD;
        let (pw, ph) = fit_size(photo, WIDTH - 2 * PAD, PHOTO_MAX_HEIGHT);
        let original = Rect { x: PAD, y: top + LINE, w: pw, h: ph };
        let verdicts = lines(original.bottom() + PAD, messages, LINE);
        let height = verdicts.last().map_or(original.bottom(), Rect::bottom) + PAD;
        Layout {
            width: WIDTH,
            height,
            title,
            original,
            protected: None,
            perturbation: None,
            perturbation_caption: None,
            verdicts,
            faces: Vec::new(),
        }
    }

    /// Every rectangle of the sheet, for checks.
    pub fn rects(&self) -> Vec<Rect> {
        let mut all = vec![self.title, self.original];
        all.extend(self.protected);
        all.extend(self.perturbation);
        all.extend(self.perturbation_caption);
        all.extend(&self.verdicts);
        for f in &self.faces {
            all.push(f.thumb);
            all.push(f.header);
            for r in &f.rows {
                all.push(r.label);
                for p in &r.pairs {
                    all.extend([p.original, p.protected, p.caption]);
                }
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(l: &Layout) {
        let all = l.rects();
        for r in &all {
            assert!(r.w > 0 && r.h > 0, "{r:?}");
            assert!(r.right() <= l.width - PAD + 1 && r.bottom() <= l.height - PAD, "{r:?} outside {l:?}");
        }
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
            }
        }
    }

    #[test]
    fn one_to_three_faces_and_three_to_eight_generators_fit_without_overlap() {
        for photo in [(178, 218), (4000, 3000), (1080, 1920), (50, 2000), (3000, 40)] {
            for faces in 1..=3 {
                for generators in 3..=8 {
                    let conditions: Vec<usize> = (0..generators).map(|g| [5, 1, 3, 2][g % 4]).collect();
                    let l = Layout::new(photo, faces, &conditions);
                    assert_eq!(l.width, WIDTH);
                    assert_eq!(l.faces.len(), faces);
                    assert!(l.faces.iter().all(|f| f.rows.len() == generators));
                    check(&l);
                }
            }
        }
    }

    #[test]
    fn rows_show_at_most_three_conditions_and_faces() {
        let l = Layout::new((800, 600), 5, &[8, 1]);
        assert_eq!(l.faces.len(), MAX_FACES);
        assert_eq!(l.faces[0].rows[0].pairs.len(), MAX_CONDITIONS);
        assert_eq!(l.faces[0].rows[1].pairs.len(), 1);
        // The original/protected panels of a pair sit side by side at the same height.
        let p = l.faces[0].rows[0].pairs[0];
        assert_eq!((p.original.y, p.original.h), (p.protected.y, p.protected.h));
        assert!(p.original.right() < p.protected.x);
    }

    #[test]
    fn photos_keep_their_aspect_and_sit_side_by_side() {
        let l = Layout::new((4000, 3000), 1, &[5, 5, 1]);
        let (o, p) = (l.original, l.protected.unwrap());
        assert_eq!((o.w, o.h), (p.w, p.h));
        assert_eq!(o.y, p.y);
        assert!((f64::from(o.w) / f64::from(o.h) - 4.0 / 3.0).abs() < 0.01);
        // A small photo is not blown up.
        assert_eq!((Layout::new((178, 218), 1, &[1]).original.w), 178);
        assert_eq!(fit_size((10_000, 10), 100, 100), (100, 1));
    }

    #[test]
    fn the_no_face_sheet_is_short() {
        let l = Layout::no_face((3000, 2000), 3);
        check(&l);
        assert!(l.protected.is_none() && l.faces.is_empty());
        assert_eq!(l.verdicts.len(), 3);
        assert!(l.height < Layout::new((3000, 2000), 1, &[5, 5, 5]).height);
        assert!(l.height <= 2 * PAD + 2 * LINE + PAD + LINE + PHOTO_MAX_HEIGHT + PAD + 3 * LINE + PAD);
    }
}
