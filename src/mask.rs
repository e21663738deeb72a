//! The mask rule, in one place on the Rust side (its CUDA twin is `kernels/mask.cuh`).
//!
//! Every mask the contract allows leaves each row a single contiguous run of valid keys:
//! the key padding keeps a run of `kv_len` keys at one end, and the causal diagonal and
//! the sliding window cut that run at both ends. So a row's whole mask is the half-open
//! column range [`RowWindow::start`, `RowWindow::end`), empty for a padded query row.

use std::num::NonZeroUsize;
use std::ops::Range;

use crate::contract::{Lengths, Padding, Shape, Spec};
use crate::error::Result;

/// The valid key columns of one row, `start..end` (empty when the row is fully masked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowWindow {
    /// First valid column.
    pub start: usize,
    /// One past the last valid column.
    pub end: usize,
}

impl RowWindow {
    /// The window as a range of columns.
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }

    /// True if no column of the row is valid.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    /// True if column `j` is valid.
    pub fn contains(&self, j: usize) -> bool {
        self.start <= j && j < self.end
    }
}

/// The valid keys of query row `i` (`0 <= i < q_len`) of a batch entry with `kv_len` valid
/// keys and `q_valid` valid queries. Lengths past `k_len` / `q_len` count as those (as
/// device lengths are clamped), and a row `i` past the last is empty.
pub fn row_window(spec: &Spec, kv_len: usize, q_valid: usize, i: usize) -> RowWindow {
    const EMPTY: RowWindow = RowWindow { start: 0, end: 0 };
    let (k_len, q_len) = (spec.shape.k_len, spec.shape.q_len);
    let (kv_len, q_valid) = (kv_len.min(k_len), q_valid.min(q_len));
    if i >= q_len {
        return EMPTY;
    }

    // Position of the query among the valid queries, and of the first valid key.
    let (q_pos, key_start) = match spec.padding {
        Padding::Right if i < q_valid => (i, 0),
        Padding::Left if i >= q_len - q_valid => (i - (q_len - q_valid), k_len - kv_len),
        _ => return EMPTY,
    };

    // Window in key positions p (0..kv_len), as i128 so no sum or difference can wrap.
    let (mut lo, mut hi) = (0i128, kv_len as i128);
    if let Some(causal) = spec.causal {
        let diagonal = q_pos as i128 + kv_len as i128 - q_valid as i128;
        hi = hi.min(diagonal + 1);
        if let Some(window) = causal.window {
            lo = lo.max(diagonal - window as i128 + 1);
        }
    }
    if lo >= hi {
        return EMPTY;
    }
    RowWindow {
        start: key_start + lo as usize,
        end: key_start + hi as usize,
    }
}

/// Valid keys and valid queries of batch entry `b` (host lengths, already validated).
pub(crate) fn batch_lengths(shape: &Shape, lengths: &Lengths, b: usize) -> (usize, usize) {
    let kv = lengths.kv.map_or(shape.k_len, |l| l[b] as usize);
    let q = lengths.q.map_or(shape.q_len, |l| l[b] as usize);
    (kv, q)
}

/// The valid window of row `row` (rows counted over `[batch, heads, q_len]`) for a
/// validated spec and lengths.
pub fn window_of_row(spec: &Spec, lengths: &Lengths, row: usize) -> RowWindow {
    let shape = &spec.shape;
    let b = row / (shape.heads * shape.q_len);
    let i = row % shape.q_len;
    let (kv, q) = batch_lengths(shape, lengths, b);
    row_window(spec, kv, q, i)
}

/// Valid (score) elements of the whole problem: what a kernel must read.
pub fn valid_elements(spec: &Spec, lengths: &Lengths) -> Result<u64> {
    spec.validate(1)?;
    lengths.validate(&spec.shape)?;
    Ok((0..spec.shape.rows()?)
        .map(|row| {
            let w = window_of_row(spec, lengths, row);
            (w.end - w.start) as u64
        })
        .sum())
}

/// Distinct `sector`-byte blocks of a buffer of `elem_bytes`-byte elements (starting on a
/// sector boundary) that hold at least one valid element: DRAM moves whole sectors (32
/// bytes on the GPUs we target), so `sector * valid_sectors` is the least a kernel can read
/// from it. Rows shorter than a sector share sectors with their neighbours, and a row's
/// window rarely starts or ends on a sector boundary; the benchmark reports its time over
/// this floor next to the contract's (valid elements only).
pub fn valid_sectors(
    spec: &Spec,
    lengths: &Lengths,
    elem_bytes: usize,
    sector: NonZeroUsize,
) -> Result<u64> {
    spec.validate(elem_bytes)?;
    lengths.validate(&spec.shape)?;
    let sector = sector.get();
    let mut sectors = 0u64;
    // Rows come in address order and no window reaches into the next row, so a sector
    // shared with the previous row's window can only be that window's last.
    let mut uncounted = 0usize;
    for row in 0..spec.shape.rows()? {
        let w = window_of_row(spec, lengths, row);
        if w.is_empty() {
            continue;
        }
        let base = row * spec.shape.row_stride;
        let first = ((base + w.start) * elem_bytes / sector).max(uncounted);
        let end = ((base + w.end) * elem_bytes).div_ceil(sector);
        if end > first {
            sectors += (end - first) as u64;
            uncounted = end;
        }
    }
    Ok(sectors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Shape;

    fn nz(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    fn window(spec: &Spec, kv: usize, q: usize, i: usize) -> Range<usize> {
        row_window(spec, kv, q, i).range()
    }

    #[test]
    fn key_padding_right_and_left() {
        let spec = Spec::new(Shape::new(1, 1, 1, 6));
        assert_eq!(window(&spec, 4, 1, 0), 0..4);
        assert_eq!(window(&spec, 0, 1, 0), 0..0);
        let spec = spec.padding(Padding::Left);
        assert_eq!(window(&spec, 4, 1, 0), 2..6);
        assert_eq!(window(&spec, 6, 1, 0), 0..6);
    }

    #[test]
    fn padded_query_rows_are_empty() {
        let spec = Spec::new(Shape::new(1, 1, 4, 5));
        let rows: Vec<_> = (0..4).map(|i| window(&spec, 5, 2, i)).collect();
        assert_eq!(rows, [0..5, 0..5, 0..0, 0..0]);
        let spec = spec.padding(Padding::Left);
        let rows: Vec<_> = (0..4).map(|i| window(&spec, 5, 2, i)).collect();
        assert_eq!(rows, [0..0, 0..0, 0..5, 0..5]);
    }

    #[test]
    fn causal_square_is_lower_triangular() {
        let spec = Spec::new(Shape::new(1, 1, 4, 4)).causal();
        let rows: Vec<_> = (0..4).map(|i| window(&spec, 4, 4, i)).collect();
        assert_eq!(rows, [0..1, 0..2, 0..3, 0..4]);
    }

    #[test]
    fn causal_is_bottom_right_aligned() {
        // Decoding 2 new queries against 5 cached keys: the last query sees all 5 keys.
        let spec = Spec::new(Shape::new(1, 1, 2, 5)).causal();
        assert_eq!(window(&spec, 5, 2, 0), 0..4);
        assert_eq!(window(&spec, 5, 2, 1), 0..5);
        // More queries than keys: the first queries see nothing.
        let spec = Spec::new(Shape::new(1, 1, 4, 2)).causal();
        let rows: Vec<_> = (0..4).map(|i| window(&spec, 2, 4, i)).collect();
        assert_eq!(rows, [0..0, 0..0, 0..1, 0..2]);
    }

    #[test]
    fn causal_follows_the_valid_lengths() {
        // k_len 6 with 4 valid keys, q_len 3 with 2 valid queries, right padding.
        let spec = Spec::new(Shape::new(1, 1, 3, 6)).causal();
        let rows: Vec<_> = (0..3).map(|i| window(&spec, 4, 2, i)).collect();
        assert_eq!(rows, [0..3, 0..4, 0..0]);
        // Same with left padding: valid keys are columns 2..6, valid queries rows 1..3.
        let spec = spec.padding(Padding::Left);
        let rows: Vec<_> = (0..3).map(|i| window(&spec, 4, 2, i)).collect();
        assert_eq!(rows, [0..0, 2..5, 2..6]);
    }

    #[test]
    fn sliding_window_keeps_the_last_w_keys() {
        let spec = Spec::new(Shape::new(1, 1, 5, 5)).sliding_window(2);
        let rows: Vec<_> = (0..5).map(|i| window(&spec, 5, 5, i)).collect();
        assert_eq!(rows, [0..1, 0..2, 1..3, 2..4, 3..5]);
        let spec = Spec::new(Shape::new(1, 1, 1, 8)).sliding_window(3);
        assert_eq!(window(&spec, 8, 1, 0), 5..8);
        // A window larger than the row changes nothing.
        let spec = Spec::new(Shape::new(1, 1, 1, 8)).sliding_window(100);
        assert_eq!(window(&spec, 8, 1, 0), 0..8);
    }

    #[test]
    fn valid_sectors_counts_each_touched_sector_once() {
        // Rows of 7 f32 (28 bytes) with 1..=7 valid keys: windows 0..1, 7..9, 14..17 of
        // 4-byte elements are bytes 0..4, 28..36, 56..68: sectors 0; 0, 1; 1, 2.
        let spec = Spec::new(Shape::matrix(3, 7));
        let kv = [1, 2, 3];
        assert_eq!(
            valid_sectors(&spec, &Lengths::keys(&kv), 4, nz(32)).unwrap(),
            3
        );
        // Full rows touch every sector of the buffer once: 3 * 28 bytes in 3 sectors.
        let full = [7, 7, 7];
        assert_eq!(
            valid_sectors(&spec, &Lengths::keys(&full), 4, nz(32)).unwrap(),
            3
        );
        // Empty rows touch nothing; 16-bit elements halve the bytes.
        let none = [0, 0, 0];
        assert_eq!(
            valid_sectors(&spec, &Lengths::keys(&none), 4, nz(32)).unwrap(),
            0
        );
        assert_eq!(
            valid_sectors(&spec, &Lengths::keys(&full), 2, nz(32)).unwrap(),
            2
        );
    }

    #[test]
    fn valid_sectors_follow_the_stride_and_the_window() {
        // Rows of 16 f32 keys 64 elements apart: each full row is 2 sectors of its own.
        let spec = Spec::new(Shape::matrix(4, 16).with_row_stride(64));
        let full = [16; 4];
        assert_eq!(
            valid_sectors(&spec, &Lengths::keys(&full), 4, nz(32)).unwrap(),
            8
        );
        // Left padding with 9 valid keys: columns 7..16, bytes 28..64: sectors 0 and 1.
        let left = spec.padding(Padding::Left);
        let nine = [9; 4];
        assert_eq!(
            valid_sectors(&left, &Lengths::keys(&nine), 4, nz(32)).unwrap(),
            8
        );
        // One valid key a row: one sector each; with 64-byte sectors, still one each.
        let one = [1; 4];
        assert_eq!(
            valid_sectors(&spec, &Lengths::keys(&one), 4, nz(32)).unwrap(),
            4
        );
        assert_eq!(
            valid_sectors(&spec, &Lengths::keys(&one), 4, nz(64)).unwrap(),
            4
        );
        // A causal square of 4 rows of 8 f32 keys (32 bytes a row): rows 0..4 touch one
        // sector each.
        let causal = Spec::new(Shape::new(1, 1, 4, 8)).causal();
        assert_eq!(
            valid_sectors(&causal, &Lengths::keys(&[4]), 4, nz(32)).unwrap(),
            4
        );
    }

    #[test]
    fn valid_sectors_match_a_count_element_by_element() {
        use std::collections::BTreeSet;
        let mut seed = 0x2545_f491_u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for trial in 0..300 {
            let (batch, q_len, k_len) = (1 + next(4), 1 + next(5), 1 + next(40));
            let shape =
                Shape::new(batch, 1 + next(3), q_len, k_len).with_row_stride(k_len + next(9));
            let mut spec = Spec::new(shape);
            if trial % 2 == 1 {
                spec = spec.padding(Padding::Left);
            }
            match trial % 5 {
                1 => spec = spec.causal(),
                2 => spec = spec.sliding_window(1 + next(6)),
                _ => {}
            }
            let kv: Vec<i32> = (0..batch).map(|_| next(k_len + 1) as i32).collect();
            let q: Vec<i32> = (0..batch).map(|_| next(q_len + 1) as i32).collect();
            let lengths = Lengths::keys_and_queries(&kv, &q);
            for (elem_bytes, sector) in [(4, 32), (2, 32), (4, 64), (2, 8)] {
                let mut touched = BTreeSet::new();
                for row in 0..shape.rows().unwrap() {
                    for j in window_of_row(&spec, &lengths, row).range() {
                        touched.insert((row * shape.row_stride + j) * elem_bytes / sector);
                    }
                }
                let counted = valid_sectors(&spec, &lengths, elem_bytes, nz(sector)).unwrap();
                assert_eq!(
                    counted,
                    touched.len() as u64,
                    "{spec:?} {kv:?} {q:?} {elem_bytes} {sector}"
                );
            }
        }
    }
}
