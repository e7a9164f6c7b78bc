//! The paper's qualitative figure (its Figs. 7, 10, 11): one row per method,
//! one column per seed, a render in each cell, with the method names and seed
//! numbers drawn into the image by a small built-in bitmap font, so the PNG
//! reads on its own, without a legend or a font library.
use std::path::Path;

use crate::error::{Error, Result};
use crate::export::image::{Rgb8, write_png};

/// Glyph cell: 5 columns; 8 rows, of which the top 7 hold capitals and digits
/// and the 8th the descenders (g, j, p, q, y, β).
pub const GLYPH_WIDTH: usize = 5;
/// Rows of a glyph (see [`GLYPH_WIDTH`]).
pub const GLYPH_HEIGHT: usize = 8;
/// Horizontal advance per character: the glyph and one column of space.
const ADVANCE: usize = GLYPH_WIDTH + 1;

const INK: [u8; 3] = [0, 0, 0];
const PAPER: [u8; 3] = [255, 255, 255];
/// Cell frames: the renders have white backgrounds, so each gets a grey border.
const FRAME: [u8; 3] = [170, 170, 170];
/// A cell with no render (a method with fewer seeds than the others).
const EMPTY_CELL: [u8; 3] = [235, 235, 235];

/// Methods as rows and seeds as columns (column j is seed j, labelled
/// "seed j"): `rows` pairs each method's label with its renders in seed order.
/// Each render is scaled (nearest neighbour, aspect kept, centred) into a
/// `cell` × `cell` square framed in grey. Labels are black on white, scaled
/// with the cell (1× up to 95-pixel cells, 2× from 96, ...).
pub fn method_seed_figure(rows: &[(String, Vec<Rgb8>)], cell: u32) -> Result<Rgb8> {
    let columns = rows.iter().map(|(_, renders)| renders.len()).max().unwrap_or(0);
    let seeds: Vec<String> = (0..columns).map(|j| format!("seed {j}")).collect();
    labelled_grid(rows, &seeds, cell)
}

/// [`method_seed_figure`] written as a PNG (atomically).
pub fn write_method_seed_figure(path: &Path, rows: &[(String, Vec<Rgb8>)], cell: u32) -> Result<()> {
    write_png(path, &method_seed_figure(rows, cell)?)
}

/// A grid of renders with a label left of each row and above each column
/// (no header line when `column_labels` is empty).
pub fn labelled_grid(rows: &[(String, Vec<Rgb8>)], column_labels: &[String], cell: u32) -> Result<Rgb8> {
    let cell = cell as usize;
    if cell < 4 {
        return Err(Error::Invalid(format!("figure: cell size {cell} is too small for a framed render; use at least 4 (e.g. 64 or 96)")));
    }
    if rows.is_empty() {
        return Err(Error::Invalid("figure: no rows (methods) to draw".into()));
    }
    for (label, renders) in rows {
        if let Some(bad) = renders.iter().find(|r| r.width == 0 || r.height == 0 || r.data.len() != r.width * r.height * 3) {
            return Err(Error::Invalid(format!(
                "figure: a render of {label:?} is malformed ({}×{} with {} bytes)",
                bad.width,
                bad.height,
                bad.data.len()
            )));
        }
    }
    let columns = rows.iter().map(|(_, r)| r.len()).max().unwrap_or(0).max(column_labels.len());
    let scale = label_scale(cell);
    let pad = 3 * scale;
    let gap = (cell / 24).max(2);
    let label_width = rows.iter().map(|(l, _)| text_size(l, scale).0).max().unwrap_or(0) + 2 * pad;
    let header = if column_labels.is_empty() { 0 } else { GLYPH_HEIGHT * scale + 2 * pad };
    let width = label_width + columns * (cell + gap) + gap;
    let height = header + rows.len() * (cell + gap) + gap;
    let mut img = Rgb8 { width, height, data: PAPER.repeat(width * height) };

    let cell_x = |j: usize| label_width + gap + j * (cell + gap);
    let cell_y = |i: usize| header + gap + i * (cell + gap);
    for (j, label) in column_labels.iter().enumerate() {
        let (w, _) = text_size(label, scale);
        // Centred over the column, but never left of it: long labels run right.
        let x = cell_x(j) + cell.saturating_sub(w) / 2;
        draw_text(&mut img, x, pad, label, scale, INK);
    }
    for (i, (label, renders)) in rows.iter().enumerate() {
        let (_, h) = text_size(label, scale);
        draw_text(&mut img, pad, cell_y(i) + cell.saturating_sub(h) / 2, label, scale, INK);
        for j in 0..columns {
            let (x, y) = (cell_x(j), cell_y(i));
            fill(&mut img, x, y, cell, cell, FRAME);
            match renders.get(j) {
                Some(render) => {
                    fill(&mut img, x + 1, y + 1, cell - 2, cell - 2, PAPER);
                    blit_fitted(&mut img, render, x + 1, y + 1, cell - 2);
                }
                None => fill(&mut img, x + 1, y + 1, cell - 2, cell - 2, EMPTY_CELL),
            }
        }
    }
    Ok(img)
}

/// Integer label magnification for a cell size: 1× below 96 px, then +1 per 64 px.
fn label_scale(cell: usize) -> usize {
    ((cell + 32) / 64).max(1)
}

/// Width and height in pixels of `text` drawn at `scale` (one line).
pub fn text_size(text: &str, scale: usize) -> (usize, usize) {
    let chars = text.chars().count();
    (if chars == 0 { 0 } else { (chars * ADVANCE - 1) * scale }, GLYPH_HEIGHT * scale)
}

/// Draws one line of text with its top-left corner at (x, y), each font pixel
/// a `scale` × `scale` square; pixels outside the image are dropped.
/// Characters without a glyph are drawn as a hollow box, so they show.
pub fn draw_text(img: &mut Rgb8, x: usize, y: usize, text: &str, scale: usize, colour: [u8; 3]) {
    for (k, ch) in text.chars().enumerate() {
        let bits = glyph_bits(ch).unwrap_or(MISSING_GLYPH);
        let x0 = x + k * ADVANCE * scale;
        for (row, mask) in bits.iter().enumerate() {
            for col in 0..GLYPH_WIDTH {
                if mask & (1 << (GLYPH_WIDTH - 1 - col)) != 0 {
                    fill(img, x0 + col * scale, y + row * scale, scale, scale, colour);
                }
            }
        }
    }
}

/// The glyph of a character as 8 row masks (bit 4 = leftmost column), if the font has it.
pub fn glyph_bits(ch: char) -> Option<[u8; GLYPH_HEIGHT]> {
    FONT.iter().find(|(c, _)| *c == ch).map(|(_, bits)| *bits)
}

/// Every character the font draws.
pub fn font_chars() -> impl Iterator<Item = char> {
    FONT.iter().map(|(c, _)| *c)
}

/// Fills a rectangle, clipped to the image.
fn fill(img: &mut Rgb8, x: usize, y: usize, w: usize, h: usize, colour: [u8; 3]) {
    for yy in y..(y + h).min(img.height) {
        for xx in x..(x + w).min(img.width) {
            let at = (yy * img.width + xx) * 3;
            img.data[at..at + 3].copy_from_slice(&colour);
        }
    }
}

/// Scales `src` by nearest neighbour (sampling at pixel centres) to fit a
/// `size` × `size` square at (x, y), aspect kept and centred.
fn blit_fitted(img: &mut Rgb8, src: &Rgb8, x: usize, y: usize, size: usize) {
    let fit = (size as f64 / src.width as f64).min(size as f64 / src.height as f64);
    let w = ((src.width as f64 * fit).round() as usize).clamp(1, size);
    let h = ((src.height as f64 * fit).round() as usize).clamp(1, size);
    let (x0, y0) = (x + (size - w) / 2, y + (size - h) / 2);
    for dy in 0..h {
        let sy = ((dy as f64 + 0.5) * src.height as f64 / h as f64) as usize;
        for dx in 0..w {
            let sx = ((dx as f64 + 0.5) * src.width as f64 / w as f64) as usize;
            let from = (sy.min(src.height - 1) * src.width + sx.min(src.width - 1)) * 3;
            let (px, py) = (x0 + dx, y0 + dy);
            if px < img.width && py < img.height {
                let to = (py * img.width + px) * 3;
                img.data[to..to + 3].copy_from_slice(&src.data[from..from + 3]);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The font: 5 × 8 glyphs as pictures ('#' ink, '.' paper), turned into row
// masks at compile time (a malformed row stops the build).
// ---------------------------------------------------------------------------

const fn glyph(rows: [&str; GLYPH_HEIGHT]) -> [u8; GLYPH_HEIGHT] {
    let mut out = [0u8; GLYPH_HEIGHT];
    let mut r = 0;
    while r < GLYPH_HEIGHT {
        let row = rows[r].as_bytes();
        assert!(row.len() == GLYPH_WIDTH, "a glyph row must be 5 characters");
        let mut c = 0;
        while c < GLYPH_WIDTH {
            match row[c] {
                b'#' => out[r] |= 1 << (GLYPH_WIDTH - 1 - c),
                b'.' => {}
                _ => panic!("a glyph row holds only '#' and '.'"),
            }
            c += 1;
        }
        r += 1;
    }
    out
}

const MISSING_GLYPH: [u8; GLYPH_HEIGHT] = glyph(["#####", "#...#", "#...#", "#...#", "#...#", "#...#", "#####", "....."]);

/// Digits, capitals, lower case, punctuation and the Greek letters ablation
/// labels use (β, θ, Θ, τ, ε, λ, σ, ω).
const FONT: &[(char, [u8; GLYPH_HEIGHT])] = &[
    ('0', glyph([".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###.", "....."])),
    ('1', glyph(["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###.", "....."])),
    ('2', glyph([".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####", "....."])),
    ('3', glyph(["#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###.", "....."])),
    ('4', glyph(["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#.", "....."])),
    ('5', glyph(["#####", "#....", "####.", "....#", "....#", "#...#", ".###.", "....."])),
    ('6', glyph(["..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###.", "....."])),
    ('7', glyph(["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#...", "....."])),
    ('8', glyph([".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###.", "....."])),
    ('9', glyph([".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##..", "....."])),
    ('A', glyph([".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#", "....."])),
    ('B', glyph(["####.", "#...#", "#...#", "####.", "#...#", "#...#", "####.", "....."])),
    ('C', glyph([".###.", "#...#", "#....", "#....", "#....", "#...#", ".###.", "....."])),
    ('D', glyph(["###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###..", "....."])),
    ('E', glyph(["#####", "#....", "#....", "####.", "#....", "#....", "#####", "....."])),
    ('F', glyph(["#####", "#....", "#....", "####.", "#....", "#....", "#....", "....."])),
    ('G', glyph([".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####", "....."])),
    ('H', glyph(["#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#", "....."])),
    ('I', glyph([".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.", "....."])),
    ('J', glyph(["..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##..", "....."])),
    ('K', glyph(["#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#", "....."])),
    ('L', glyph(["#....", "#....", "#....", "#....", "#....", "#....", "#####", "....."])),
    ('M', glyph(["#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#", "....."])),
    ('N', glyph(["#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#", "....."])),
    ('O', glyph([".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.", "....."])),
    ('P', glyph(["####.", "#...#", "#...#", "####.", "#....", "#....", "#....", "....."])),
    ('Q', glyph([".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#", "....."])),
    ('R', glyph(["####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#", "....."])),
    ('S', glyph([".####", "#....", "#....", ".###.", "....#", "....#", "####.", "....."])),
    ('T', glyph(["#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#..", "....."])),
    ('U', glyph(["#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.", "....."])),
    ('V', glyph(["#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#..", "....."])),
    ('W', glyph(["#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#.", "....."])),
    ('X', glyph(["#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#", "....."])),
    ('Y', glyph(["#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#..", "....."])),
    ('Z', glyph(["#####", "....#", "...#.", "..#..", ".#...", "#....", "#####", "....."])),
    ('a', glyph([".....", ".....", ".###.", "....#", ".####", "#...#", ".####", "....."])),
    ('b', glyph(["#....", "#....", "#.##.", "##..#", "#...#", "#...#", "####.", "....."])),
    ('c', glyph([".....", ".....", ".###.", "#....", "#....", "#...#", ".###.", "....."])),
    ('d', glyph(["....#", "....#", ".##.#", "#..##", "#...#", "#...#", ".####", "....."])),
    ('e', glyph([".....", ".....", ".###.", "#...#", "#####", "#....", ".###.", "....."])),
    ('f', glyph(["..##.", ".#..#", ".#...", "###..", ".#...", ".#...", ".#...", "....."])),
    ('g', glyph([".....", ".....", ".####", "#...#", "#...#", ".####", "....#", ".###."])),
    ('h', glyph(["#....", "#....", "#.##.", "##..#", "#...#", "#...#", "#...#", "....."])),
    ('i', glyph(["..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###.", "....."])),
    ('j', glyph(["...#.", ".....", "..##.", "...#.", "...#.", "...#.", "#..#.", ".##.."])),
    ('k', glyph(["#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "....."])),
    ('l', glyph([".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.", "....."])),
    ('m', glyph([".....", ".....", "##.#.", "#.#.#", "#.#.#", "#...#", "#...#", "....."])),
    ('n', glyph([".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#", "....."])),
    ('o', glyph([".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###.", "....."])),
    ('p', glyph([".....", ".....", "####.", "#...#", "#...#", "####.", "#....", "#...."])),
    ('q', glyph([".....", ".....", ".####", "#...#", "#...#", ".####", "....#", "....#"])),
    ('r', glyph([".....", ".....", "#.##.", "##..#", "#....", "#....", "#....", "....."])),
    ('s', glyph([".....", ".....", ".####", "#....", ".###.", "....#", "####.", "....."])),
    ('t', glyph([".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##.", "....."])),
    ('u', glyph([".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#", "....."])),
    ('v', glyph([".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#..", "....."])),
    ('w', glyph([".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#.", "....."])),
    ('x', glyph([".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "....."])),
    ('y', glyph([".....", ".....", "#...#", "#...#", "#...#", ".####", "....#", ".###."])),
    ('z', glyph([".....", ".....", "#####", "...#.", "..#..", ".#...", "#####", "....."])),
    (' ', glyph([".....", ".....", ".....", ".....", ".....", ".....", ".....", "....."])),
    ('.', glyph([".....", ".....", ".....", ".....", ".....", ".##..", ".##..", "....."])),
    (',', glyph([".....", ".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."])),
    (':', glyph([".....", ".##..", ".##..", ".....", ".##..", ".##..", ".....", "....."])),
    (';', glyph([".....", ".##..", ".##..", ".....", ".##..", "..#..", ".#...", "....."])),
    ('-', glyph([".....", ".....", ".....", "#####", ".....", ".....", ".....", "....."])),
    ('+', glyph([".....", "..#..", "..#..", "#####", "..#..", "..#..", ".....", "....."])),
    ('=', glyph([".....", ".....", "#####", ".....", "#####", ".....", ".....", "....."])),
    ('_', glyph([".....", ".....", ".....", ".....", ".....", ".....", ".....", "#####"])),
    ('/', glyph([".....", "....#", "...#.", "..#..", ".#...", "#....", ".....", "....."])),
    ('(', glyph(["...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#.", "....."])),
    (')', glyph([".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#...", "....."])),
    ('[', glyph([".###.", ".#...", ".#...", ".#...", ".#...", ".#...", ".###.", "....."])),
    (']', glyph([".###.", "...#.", "...#.", "...#.", "...#.", "...#.", ".###.", "....."])),
    ('%', glyph(["##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##", "....."])),
    ('\'', glyph(["..#..", "..#..", ".#...", ".....", ".....", ".....", ".....", "....."])),
    ('"', glyph([".#.#.", ".#.#.", ".#.#.", ".....", ".....", ".....", ".....", "....."])),
    ('!', glyph(["..#..", "..#..", "..#..", "..#..", "..#..", ".....", "..#..", "....."])),
    ('?', glyph([".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#..", "....."])),
    ('*', glyph([".....", "..#..", "#.#.#", ".###.", "#.#.#", "..#..", ".....", "....."])),
    ('<', glyph(["...#.", "..#..", ".#...", "#....", ".#...", "..#..", "...#.", "....."])),
    ('>', glyph([".#...", "..#..", "...#.", "....#", "...#.", "..#..", ".#...", "....."])),
    ('|', glyph(["..#..", "..#..", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."])),
    ('#', glyph([".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#.", "....."])),
    ('×', glyph([".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", ".....", "....."])),
    ('±', glyph(["..#..", "..#..", "#####", "..#..", "..#..", ".....", "#####", "....."])),
    ('·', glyph([".....", ".....", ".....", "..#..", ".....", ".....", ".....", "....."])),
    ('β', glyph([".##..", "#..#.", "#..#.", "###..", "#..#.", "#..#.", "###..", "#...."])),
    ('θ', glyph(["..#..", ".#.#.", "#...#", "#####", "#...#", ".#.#.", "..#..", "....."])),
    ('Θ', glyph([".###.", "#...#", "#...#", "#####", "#...#", "#...#", ".###.", "....."])),
    ('τ', glyph([".....", ".....", "#####", "..#..", "..#..", "..#..", "...##", "....."])),
    ('ε', glyph([".....", ".....", ".###.", "#....", ".##..", "#....", ".###.", "....."])),
    ('λ', glyph([".#...", "..#..", "..#..", ".#.#.", ".#.#.", "#...#", "#...#", "....."])),
    ('σ', glyph([".....", ".....", ".####", "#..#.", "#...#", "#...#", ".###.", "....."])),
    ('ω', glyph([".....", ".....", ".#.#.", "#...#", "#.#.#", "#.#.#", ".#.#.", "....."])),
];
