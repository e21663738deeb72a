//! Checks any output (a kernel's, or your own) against the CPU reference and says how far
//! off it is: max absolute and relative error, the worst row, masked positions that are
//! not exactly zero, and rows that do not sum to one.
//!
//! ```
//! use masked_softmax::{compare, reference, DType, Lengths, Shape, Spec};
//! let spec = Spec::new(Shape::matrix(2, 3));
//! let x = [0.1f32, 0.2, 0.3, 1.0, 2.0, 3.0];
//! let mut y = [0.0f32; 6];
//! reference::forward(&spec, Lengths::keys(&[3, 1]), &x, &mut y).unwrap();
//! let report = compare::forward(&spec, Lengths::keys(&[3, 1]), &x, &y).unwrap();
//! assert!(report.passed(), "{report}");
//! ```

use std::fmt;

use crate::contract::{Lengths, Spec, check_buffer};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::plan::Direction;
use crate::reference;

/// How close an output must be to the f64 reference.
///
/// A forward element passes when `|actual - expected| <= abs + rel * |expected|`; a row's
/// valid probabilities must sum to one within `row_sum`. Masked positions must be exactly
/// zero whatever the tolerance.
///
/// A backward element `dx_j = scale * y_j * (dy_j - sum_i y_i dy_i)` is judged relative to
/// the size of what it is computed from, not to its own: where `dy_j` and the sum nearly
/// cancel, `dx_j` is small while f32 rounding of the sum is not. It passes when
/// `|actual - expected| <= abs + rel * max(|expected|, m_j)` with
/// `m_j = |scale * y_j| * (|dy_j| + sum_i |y_i dy_i|)` over the row's valid positions (the
/// error bound of the computation in f32 is a small multiple of `m_j` times 2^-24).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Absolute part of the element bound.
    pub abs: f64,
    /// Relative part of the element bound.
    pub rel: f64,
    /// Largest allowed `|sum(row) - 1|` for a forward row with a valid position.
    pub row_sum: f64,
}

impl Tolerance {
    /// The tolerance for results stored in `dtype` and computed in f32: a few f32 rounding
    /// steps for f32, and the storage rounding (half an ulp: 2^-11 for f16, 2^-8 for bf16)
    /// with a margin for the 16-bit types.
    pub fn for_dtype(dtype: DType) -> Tolerance {
        match dtype {
            DType::F32 => Tolerance {
                abs: 1e-6,
                rel: 1e-5,
                row_sum: 1e-5,
            },
            DType::F16 => Tolerance {
                abs: 1e-6,
                rel: 1e-3,
                row_sum: 2e-3,
            },
            DType::BF16 => Tolerance {
                abs: 1e-6,
                rel: 8e-3,
                row_sum: 1.6e-2,
            },
        }
    }
}

/// One element where the output and the reference disagree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Location {
    /// Row index over `[batch, heads, q_len]`.
    pub row: usize,
    /// Key column.
    pub col: usize,
    /// Value the output holds.
    pub actual: f64,
    /// Value the reference computes.
    pub expected: f64,
}

/// What a comparison found. `Display` prints a one-paragraph summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// What was compared: a forward's probabilities (each element judged against its own
    /// size, rows summing to one) or a backward's gradient (each element judged against the
    /// size of its terms; see [`Tolerance`]).
    pub direction: Direction,
    /// The tolerance the verdict used.
    pub tolerance: Tolerance,
    /// Rows compared.
    pub rows: usize,
    /// Largest `|actual - expected|` over valid positions with finite values.
    pub max_abs_error: f64,
    /// Largest `|actual - expected| / |expected|` over valid positions with nonzero expected.
    pub max_rel_error: f64,
    /// The element farthest outside the tolerance (or with the largest error if none is).
    pub worst: Option<Location>,
    /// Valid positions outside the tolerance, NaN where a number was expected or the
    /// other way round included.
    pub out_of_tolerance: usize,
    /// Masked positions that are not exactly `+0.0` (`-0.0` counts as not).
    pub nonzero_masked: usize,
    /// The first such position.
    pub first_nonzero_masked: Option<Location>,
    /// Rows whose valid values do not sum to one within `row_sum` (forward only).
    pub bad_row_sums: usize,
    /// Largest `|sum(row) - 1|` over rows with a finite expected sum (forward only).
    pub max_row_sum_error: f64,
}

impl Report {
    /// True if every element is within tolerance, every masked position is exactly zero
    /// and every row sums to one.
    pub fn passed(&self) -> bool {
        self.out_of_tolerance == 0 && self.nonzero_masked == 0 && self.bad_row_sums == 0
    }

    /// `Ok(self)` if [`passed`](Self::passed), else [`Error::Mismatch`] with the summary.
    pub fn into_result(self) -> Result<Report> {
        if self.passed() {
            Ok(self)
        } else {
            Err(Error::Mismatch(self.to_string()))
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let relative_to = match self.direction {
            Direction::Forward => "the value",
            Direction::Backward => "its terms",
        };
        write!(
            f,
            "{} over {} rows: max abs error {:.3e}, max rel error {:.3e}, {} elements out of tolerance \
             (abs {:.1e} + rel {:.1e} of {relative_to}), {} masked positions not exactly 0",
            if self.passed() { "PASS" } else { "FAIL" },
            self.rows,
            self.max_abs_error,
            self.max_rel_error,
            self.out_of_tolerance,
            self.tolerance.abs,
            self.tolerance.rel,
            self.nonzero_masked,
        )?;
        if self.direction == Direction::Forward {
            write!(
                f,
                ", {} rows not summing to 1 (max |sum - 1| {:.3e})",
                self.bad_row_sums, self.max_row_sum_error
            )?;
        }
        if let Some(w) = self.worst {
            write!(
                f,
                "; worst at row {} col {}: got {:e}, expected {:e}",
                w.row, w.col, w.actual, w.expected
            )?;
        }
        if let Some(m) = self.first_nonzero_masked {
            write!(
                f,
                "; first masked nonzero at row {} col {}: {:e}",
                m.row, m.col, m.actual
            )?;
        }
        Ok(())
    }
}

/// Compares a forward output `y` with the reference's `softmax(scale * x)`, using the
/// default tolerance of `T`.
pub fn forward<T: Element>(spec: &Spec, lengths: Lengths, x: &[T], y: &[T]) -> Result<Report> {
    forward_with(spec, lengths, x, y, Tolerance::for_dtype(T::DTYPE))
}

/// [`forward`] with an explicit tolerance.
pub fn forward_with<T: Element>(
    spec: &Spec,
    lengths: Lengths,
    x: &[T],
    y: &[T],
    tolerance: Tolerance,
) -> Result<Report> {
    spec.validate(T::DTYPE.size_in_bytes())?;
    check_buffer("y", y.len(), &spec.shape)?;
    let mut expected = vec![0f64; spec.shape.required_len()?];
    reference::forward_into(spec, lengths, x, &mut expected)?;
    compare_rows(spec, lengths, y, &expected, tolerance, Check::RowSums)
}

/// Compares a backward output `dx` with the reference's gradient from `y` and `dy`.
pub fn backward<T: Element>(
    spec: &Spec,
    lengths: Lengths,
    y: &[T],
    dy: &[T],
    dx: &[T],
) -> Result<Report> {
    backward_with(spec, lengths, y, dy, dx, Tolerance::for_dtype(T::DTYPE))
}

/// [`backward`] with an explicit tolerance.
pub fn backward_with<T: Element>(
    spec: &Spec,
    lengths: Lengths,
    y: &[T],
    dy: &[T],
    dx: &[T],
    tolerance: Tolerance,
) -> Result<Report> {
    spec.validate(T::DTYPE.size_in_bytes())?;
    check_buffer("dx", dx.len(), &spec.shape)?;
    let mut expected = vec![0f64; spec.shape.required_len()?];
    reference::backward_into(spec, lengths, y, dy, &mut expected)?;
    let magnitudes = backward_magnitudes(spec, &lengths, y, dy)?;
    compare_rows(
        spec,
        lengths,
        dx,
        &expected,
        tolerance,
        Check::Backward { magnitudes },
    )
}

/// `m_j = |scale * y_j| * (|dy_j| + sum_i |y_i dy_i|)` at every valid position (see
/// [`Tolerance`]); 0 elsewhere.
fn backward_magnitudes<T: Element>(
    spec: &Spec,
    lengths: &Lengths,
    y: &[T],
    dy: &[T],
) -> Result<Vec<f64>> {
    let shape = &spec.shape;
    let mut m = vec![0f64; shape.required_len()?];
    let scale = (spec.scale as f64).abs();
    for row in 0..shape.rows()? {
        let window = crate::mask::window_of_row(spec, lengths, row);
        let base = row * shape.row_stride;
        let pair = |j: usize| (y[base + j].to_f64(), dy[base + j].to_f64());
        let dot: f64 = window
            .range()
            .map(|j| {
                let (y, dy) = pair(j);
                (y * dy).abs()
            })
            .sum();
        for j in window.range() {
            let (y, dy) = pair(j);
            m[base + j] = scale * y.abs() * (dy.abs() + dot);
        }
    }
    Ok(m)
}

/// What compare_rows checks beyond each element's error.
enum Check {
    /// Valid positions sum to one (forward); elements are judged against their own size.
    RowSums,
    /// Elements are judged against the size of the terms they come from (backward).
    Backward { magnitudes: Vec<f64> },
}

fn compare_rows<T: Element>(
    spec: &Spec,
    lengths: Lengths,
    actual: &[T],
    expected: &[f64],
    tolerance: Tolerance,
    check: Check,
) -> Result<Report> {
    let shape = &spec.shape;
    let rows = shape.rows()?;
    let mut report = Report {
        direction: match check {
            Check::RowSums => Direction::Forward,
            Check::Backward { .. } => Direction::Backward,
        },
        tolerance,
        rows,
        max_abs_error: 0.0,
        max_rel_error: 0.0,
        worst: None,
        out_of_tolerance: 0,
        nonzero_masked: 0,
        first_nonzero_masked: None,
        bad_row_sums: 0,
        max_row_sum_error: 0.0,
    };
    // How far outside its bound the worst element is (errors over bound).
    let mut worst_excess = f64::NEG_INFINITY;
    for row in 0..rows {
        let window = crate::mask::window_of_row(spec, &lengths, row);
        let base = row * shape.row_stride;
        let (mut sum, mut expected_sum) = (0.0, 0.0);
        for col in 0..shape.k_len {
            let a = actual[base + col].to_f64();
            // A result past T's range is +-inf when stored in T (a backward with a huge scale).
            let e = match expected[base + col] {
                e if T::from_f64(e).to_f64().is_infinite() => T::from_f64(e).to_f64(),
                e => e,
            };
            let at = Location {
                row,
                col,
                actual: a,
                expected: e,
            };
            if !window.contains(col) {
                // Exactly +0.0: -0.0, NaN and anything else count as leaks.
                if a != 0.0 || a.is_sign_negative() {
                    report.nonzero_masked += 1;
                    report.first_nonzero_masked.get_or_insert(at);
                }
                continue;
            }
            sum += a;
            expected_sum += e;
            let error = (a - e).abs();
            let size = match &check {
                Check::Backward { magnitudes } if magnitudes[base + col].is_finite() => {
                    e.abs().max(magnitudes[base + col])
                }
                _ => e.abs(),
            };
            let bound = tolerance.abs + tolerance.rel * size;
            let both_nan = a.is_nan() && e.is_nan();
            let same_inf = a.is_infinite() && a == e;
            let excess = if both_nan || same_inf {
                f64::NEG_INFINITY
            } else if error.is_nan() {
                f64::INFINITY
            } else {
                error - bound
            };
            if error.is_finite() {
                report.max_abs_error = report.max_abs_error.max(error);
                if e != 0.0 {
                    report.max_rel_error = report.max_rel_error.max(error / e.abs());
                }
            }
            if excess > 0.0 {
                report.out_of_tolerance += 1;
            }
            if excess > worst_excess {
                worst_excess = excess;
                report.worst = Some(at);
            }
        }
        // A row with a finite expected sum of 1 (not empty, not all -inf, no NaN) must sum to 1.
        if matches!(check, Check::RowSums) && expected_sum.is_finite() && expected_sum > 0.5 {
            let err = (sum - 1.0).abs();
            if err.is_nan() || err > tolerance.row_sum {
                report.bad_row_sums += 1;
            }
            if err.is_finite() {
                report.max_row_sum_error = report.max_row_sum_error.max(err);
            }
        }
    }
    Ok(report)
}
