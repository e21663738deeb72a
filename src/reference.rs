//! The CPU reference: the whole contract, forward and backward, in f64 arithmetic for
//! every storage type. It defines the answer the kernels are checked against, and it is a
//! usable CPU path (rows run in parallel on rayon's pool when the problem is large).
//!
//! Only the valid positions of the inputs are read; every element of every output row
//! (`k_len` per row) is written; elements between rows (`row_stride > k_len`) are left as
//! they were.

use rayon::prelude::*;

use crate::contract::{Lengths, Spec, check_buffer};
use crate::dtype::{Element, Real};
use crate::error::Result;
use crate::mask::{RowWindow, window_of_row};

/// Problems with fewer elements than this run on the calling thread.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// `y = softmax(scale * x)` over each row's valid keys, `0` elsewhere.
///
/// ```
/// use masked_softmax::{reference, Lengths, Shape, Spec};
/// let x = [1.0f32, 2.0, 3.0, f32::NAN, 0.5, 0.5, 7.0, 7.0];
/// let mut y = [f32::NAN; 8];
/// let spec = Spec::new(Shape::matrix(2, 4));
/// reference::forward(&spec, Lengths::keys(&[3, 2]), &x, &mut y).unwrap();
/// assert_eq!(&y[4..], &[0.5, 0.5, 0.0, 0.0]);
/// assert_eq!(y[3], 0.0); // the NaN in the pad is never read
/// ```
pub fn forward<T: Element>(spec: &Spec, lengths: Lengths, x: &[T], y: &mut [T]) -> Result<()> {
    forward_into(spec, lengths, x, y)
}

/// [`forward`] with separate input and output types, e.g. f16 scores into an f64 result.
pub fn forward_into<I: Real, O: Real>(
    spec: &Spec,
    lengths: Lengths,
    x: &[I],
    y: &mut [O],
) -> Result<()> {
    validate(spec, &lengths, std::mem::size_of::<I>())?;
    check_buffer("x", x.len(), &spec.shape)?;
    check_buffer("y", y.len(), &spec.shape)?;
    let scale = spec.scale as f64;
    let stride = spec.shape.row_stride;
    for_each_row(spec, lengths, y, |row, window, scratch, y_row| {
        let x_row = &x[row * stride..];
        scratch.clear();
        scratch.extend(window.range().map(|j| scale * x_row[j].to_f64()));
        softmax_f64(scratch);
        scatter(window, scratch, y_row);
    })
}

/// [`forward`] with the output written over the input.
pub fn forward_in_place<T: Real>(spec: &Spec, lengths: Lengths, xy: &mut [T]) -> Result<()> {
    validate(spec, &lengths, std::mem::size_of::<T>())?;
    check_buffer("xy", xy.len(), &spec.shape)?;
    let scale = spec.scale as f64;
    for_each_row(spec, lengths, xy, |_, window, scratch, row| {
        scratch.clear();
        scratch.extend(row[window.range()].iter().map(|v| scale * v.to_f64()));
        softmax_f64(scratch);
        scatter(window, scratch, row);
    })
}

/// `dx = scale * y * (dy - sum_valid(y * dy))` on valid positions, `0` elsewhere.
pub fn backward<T: Element>(
    spec: &Spec,
    lengths: Lengths,
    y: &[T],
    dy: &[T],
    dx: &mut [T],
) -> Result<()> {
    backward_into(spec, lengths, y, dy, dx)
}

/// [`backward`] with separate input and output types.
pub fn backward_into<I: Real, O: Real>(
    spec: &Spec,
    lengths: Lengths,
    y: &[I],
    dy: &[I],
    dx: &mut [O],
) -> Result<()> {
    validate(spec, &lengths, std::mem::size_of::<I>())?;
    check_buffer("y", y.len(), &spec.shape)?;
    check_buffer("dy", dy.len(), &spec.shape)?;
    check_buffer("dx", dx.len(), &spec.shape)?;
    let scale = spec.scale as f64;
    let stride = spec.shape.row_stride;
    for_each_row(spec, lengths, dx, |row, window, scratch, dx_row| {
        let (y_row, dy_row) = (&y[row * stride..], &dy[row * stride..]);
        gather_backward(window, scratch, |j| (y_row[j].to_f64(), dy_row[j].to_f64()));
        softmax_backward_f64(scale, scratch);
        scatter(window, scratch, dx_row);
    })
}

/// [`backward`] with `dx` written over `dy`.
pub fn backward_in_place<T: Real>(
    spec: &Spec,
    lengths: Lengths,
    y: &[T],
    dy_dx: &mut [T],
) -> Result<()> {
    validate(spec, &lengths, std::mem::size_of::<T>())?;
    check_buffer("y", y.len(), &spec.shape)?;
    check_buffer("dy_dx", dy_dx.len(), &spec.shape)?;
    let scale = spec.scale as f64;
    let stride = spec.shape.row_stride;
    for_each_row(spec, lengths, dy_dx, |row, window, scratch, row_io| {
        let y_row = &y[row * stride..];
        gather_backward(window, scratch, |j| (y_row[j].to_f64(), row_io[j].to_f64()));
        softmax_backward_f64(scale, scratch);
        scatter(window, scratch, row_io);
    })
}

/// Softmax of the (already scaled) valid scores, in place, with the contract's rules:
/// no valid score or all `-inf` gives zeros; NaN and `+inf` propagate as IEEE says.
pub(crate) fn softmax_f64(scaled: &mut [f64]) {
    let max = scaled.iter().fold(f64::NEG_INFINITY, |m, &s| {
        if m.is_nan() || s.is_nan() {
            f64::NAN
        } else {
            m.max(s)
        }
    });
    if max == f64::NEG_INFINITY {
        scaled.fill(0.0);
        return;
    }
    let mut sum = 0.0;
    for s in scaled.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for s in scaled.iter_mut() {
        *s /= sum;
    }
}

/// Holds `y` then `dy` of the valid positions back to back in `scratch`.
fn gather_backward(window: RowWindow, scratch: &mut Vec<f64>, pair: impl Fn(usize) -> (f64, f64)) {
    scratch.clear();
    scratch.extend(window.range().map(|j| pair(j).0));
    scratch.extend(window.range().map(|j| pair(j).1));
}

/// Turns `[y.., dy..]` into `[dx..]` (the first half of `scratch`).
fn softmax_backward_f64(scale: f64, scratch: &mut Vec<f64>) {
    let n = scratch.len() / 2;
    let (y, dy) = scratch.split_at_mut(n);
    let dot: f64 = y.iter().zip(dy.iter()).map(|(a, b)| a * b).sum();
    for (y, dy) in y.iter_mut().zip(dy.iter()) {
        *y = scale * *y * (dy - dot);
    }
    scratch.truncate(n);
}

/// Writes a row: the window's values from `valid`, exact zeros everywhere else.
fn scatter<O: Real>(window: RowWindow, valid: &[f64], row: &mut [O]) {
    for (j, out) in row.iter_mut().enumerate() {
        *out = if window.contains(j) {
            O::from_f64(valid[j - window.start])
        } else {
            O::from_f64(0.0)
        };
    }
}

fn validate(spec: &Spec, lengths: &Lengths, elem_bytes: usize) -> Result<()> {
    spec.validate(elem_bytes)?;
    lengths.validate(&spec.shape)
}

/// Calls `op(row, window, scratch, out_row)` for every row, with `out_row` the row's
/// `k_len` output elements; in parallel when the problem is large.
fn for_each_row<O, F>(spec: &Spec, lengths: Lengths, out: &mut [O], op: F) -> Result<()>
where
    O: Real,
    F: Fn(usize, RowWindow, &mut Vec<f64>, &mut [O]) + Sync,
{
    let shape = &spec.shape;
    let required = shape.required_len()?;
    let k_len = shape.k_len;
    let run = |(row, chunk): (usize, &mut [O]), scratch: &mut Vec<f64>| {
        op(
            row,
            window_of_row(spec, &lengths, row),
            scratch,
            &mut chunk[..k_len],
        );
    };
    // `required` makes the last chunk exactly `k_len` long, so there is one chunk per row.
    let rows = &mut out[..required];
    if required < PARALLEL_MIN_ELEMENTS {
        let mut scratch = Vec::new();
        rows.chunks_mut(shape.row_stride)
            .enumerate()
            .for_each(|item| run(item, &mut scratch));
    } else {
        rows.par_chunks_mut(shape.row_stride)
            .enumerate()
            .for_each_init(Vec::new, |scratch, item| run(item, scratch));
    }
    Ok(())
}
