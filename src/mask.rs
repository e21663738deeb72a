//! The mask rule, in one place on the Rust side (its CUDA twin is `kernels/mask.cuh`).
//!
//! Every mask the contract allows leaves each row a single contiguous run of valid keys:
//! the key padding keeps a run of `kv_len` keys at one end, and the causal diagonal and
//! the sliding window cut that run at both ends. So a row's whole mask is the half-open
//! column range [`RowWindow::start`, `RowWindow::end`), empty for a padded query row.

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
/// keys and `q_valid` valid queries (both already within `[0, k_len]` and `[0, q_len]`).
pub fn row_window(spec: &Spec, kv_len: usize, q_valid: usize, i: usize) -> RowWindow {
    const EMPTY: RowWindow = RowWindow { start: 0, end: 0 };
    let (k_len, q_len) = (spec.shape.k_len, spec.shape.q_len);
    debug_assert!(kv_len <= k_len && q_valid <= q_len && i < q_len);

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
pub fn batch_lengths(shape: &Shape, lengths: &Lengths, b: usize) -> (usize, usize) {
    let kv = lengths.kv.map_or(shape.k_len, |l| l[b] as usize);
    let q = lengths.q.map_or(shape.q_len, |l| l[b] as usize);
    (kv, q)
}

/// The valid window of row `row` (rows counted over `[batch, heads, q_len]`).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Shape;

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
}
