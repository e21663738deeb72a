//! The contract as types: the shape and layout of the scores, the mask options, and the
//! validation that turns every inconsistency into a typed [`Error`].

use crate::error::{Error, LengthKind, Result};

/// Logical shape `[batch, heads, q_len, k_len]` of the scores, row-major with the key
/// dimension contiguous; consecutive rows are `row_stride` elements apart.
///
/// A plain `[rows, cols]` matrix with one length per row is [`Shape::matrix`]
/// (`batch = rows`, `heads = q_len = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Batch entries; lengths are given per batch entry.
    pub batch: usize,
    /// Attention heads (lengths broadcast over them).
    pub heads: usize,
    /// Query rows per head.
    pub q_len: usize,
    /// Key columns per row (the softmax axis).
    pub k_len: usize,
    /// Elements between the starts of consecutive rows (`>= k_len`).
    pub row_stride: usize,
}

impl Shape {
    /// A dense `[batch, heads, q_len, k_len]` shape (`row_stride = k_len`).
    pub fn new(batch: usize, heads: usize, q_len: usize, k_len: usize) -> Self {
        Shape {
            batch,
            heads,
            q_len,
            k_len,
            row_stride: k_len,
        }
    }

    /// A dense `[rows, cols]` matrix with one length per row.
    pub fn matrix(rows: usize, cols: usize) -> Self {
        Shape::new(rows, 1, 1, cols)
    }

    /// The same shape with rows `row_stride` elements apart.
    pub fn with_row_stride(mut self, row_stride: usize) -> Self {
        self.row_stride = row_stride;
        self
    }

    /// Number of rows, `batch * heads * q_len`, or an error if it overflows.
    pub fn rows(&self) -> Result<usize> {
        self.batch
            .checked_mul(self.heads)
            .and_then(|n| n.checked_mul(self.q_len))
            .ok_or(Error::SizeOverflow {
                what: "batch * heads * q_len",
            })
    }

    /// Elements a buffer must hold: `(rows - 1) * row_stride + k_len` (an error for a
    /// zero dimension).
    pub fn required_len(&self) -> Result<usize> {
        self.check_dimensions()?;
        let overflow = Error::SizeOverflow {
            what: "(rows - 1) * row_stride + k_len",
        };
        let rows = self.rows()?;
        rows.checked_sub(1)
            .and_then(|r| r.checked_mul(self.row_stride))
            .and_then(|n| n.checked_add(self.k_len))
            .ok_or(overflow)
    }

    /// Checks dimensions, stride and addressability for elements of `elem_bytes` bytes.
    pub fn validate(&self, elem_bytes: usize) -> Result<()> {
        self.check_dimensions()?;
        if self.row_stride < self.k_len {
            return Err(Error::RowStrideTooSmall {
                row_stride: self.row_stride,
                k_len: self.k_len,
            });
        }
        let required = self.required_len()?;
        match required.checked_mul(elem_bytes) {
            Some(bytes) if bytes <= isize::MAX as usize => Ok(()),
            _ => Err(Error::SizeOverflow {
                what: "buffer size in bytes",
            }),
        }
    }

    fn check_dimensions(&self) -> Result<()> {
        for (name, value) in [
            ("batch", self.batch),
            ("heads", self.heads),
            ("q_len", self.q_len),
            ("k_len", self.k_len),
        ] {
            if value == 0 {
                return Err(Error::ZeroDimension { name });
            }
        }
        Ok(())
    }
}

/// Which side of a sequence holds the padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// Valid positions first, pads after them (`j < kv_len`). The seed's case.
    #[default]
    Right,
    /// Pads first, valid positions last (`j >= k_len - kv_len`).
    Left,
}

/// Causal masking, aligned bottom-right as in KV-cache decoding.
///
/// With `p` the position of key `j` among the valid keys and `q` the position of query
/// `i` among the valid queries, key `j` is visible iff `p <= q + (kv_len - q_len)`, and,
/// with a sliding window `w`, also `p > q + (kv_len - q_len) - w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Causal {
    /// Keys visible to each query, counting its own diagonal key; `None` is unlimited.
    pub window: Option<usize>,
}

/// Everything about one masked softmax call except the data: shape, padding side,
/// causal masking and the scale applied to the scores before the softmax.
///
/// ```
/// use masked_softmax::{Padding, Shape, Spec};
/// let spec = Spec::new(Shape::new(2, 8, 128, 128))
///     .padding(Padding::Left)
///     .causal()
///     .sliding_window(64)
///     .scale(0.125);
/// assert!(spec.validate(4).is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    /// Shape and layout of the scores.
    pub shape: Shape,
    /// Padding side of keys and queries.
    pub padding: Padding,
    /// Causal masking, if any.
    pub causal: Option<Causal>,
    /// Multiplier applied to every valid score before the softmax: any finite value
    /// (negative flips the order, 0 gives the uniform distribution over the valid keys, but
    /// NaN in a row where a valid score is infinite, as `0 * inf` is).
    pub scale: f32,
}

impl Spec {
    /// Right padding, no causal mask, scale 1.
    pub fn new(shape: Shape) -> Self {
        Spec {
            shape,
            padding: Padding::Right,
            causal: None,
            scale: 1.0,
        }
    }

    /// Sets the padding side.
    pub fn padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// Turns on bottom-right-aligned causal masking (keeps any window already set).
    pub fn causal(mut self) -> Self {
        self.causal = Some(self.causal.unwrap_or(Causal { window: None }));
        self
    }

    /// Causal masking with a sliding window of `window` keys.
    pub fn sliding_window(mut self, window: usize) -> Self {
        self.causal = Some(Causal {
            window: Some(window),
        });
        self
    }

    /// Sets the scale applied to the scores.
    pub fn scale(mut self, scale: f32) -> Self {
        self.scale = scale;
        self
    }

    /// Checks the spec for elements of `elem_bytes` bytes.
    pub fn validate(&self, elem_bytes: usize) -> Result<()> {
        self.shape.validate(elem_bytes)?;
        if let Some(Causal { window: Some(0) }) = self.causal {
            return Err(Error::ZeroWindow);
        }
        if !self.scale.is_finite() {
            return Err(Error::InvalidScale(self.scale));
        }
        Ok(())
    }
}

/// Per-batch-entry lengths held on the host. `None` means "all valid": `kv_len = k_len`,
/// `q_len = Q`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lengths<'a> {
    /// Valid keys per batch entry.
    pub kv: Option<&'a [i32]>,
    /// Valid queries per batch entry.
    pub q: Option<&'a [i32]>,
}

impl<'a> Lengths<'a> {
    /// Every position valid.
    pub fn none() -> Self {
        Lengths::default()
    }

    /// Key lengths only (the seed's case).
    pub fn keys(kv: &'a [i32]) -> Self {
        Lengths {
            kv: Some(kv),
            q: None,
        }
    }

    /// Key and query lengths.
    pub fn keys_and_queries(kv: &'a [i32], q: &'a [i32]) -> Self {
        Lengths {
            kv: Some(kv),
            q: Some(q),
        }
    }

    /// Checks sizes and ranges against `shape`: one entry per batch entry, each in
    /// `[0, k_len]` (keys) or `[0, q_len]` (queries).
    pub fn validate(&self, shape: &Shape) -> Result<()> {
        for (kind, lengths, max) in [
            (LengthKind::Key, self.kv, shape.k_len),
            (LengthKind::Query, self.q, shape.q_len),
        ] {
            let Some(lengths) = lengths else { continue };
            if lengths.len() != shape.batch {
                return Err(Error::LengthsSize {
                    kind,
                    len: lengths.len(),
                    batch: shape.batch,
                });
            }
            if let Some((batch_index, &value)) = lengths
                .iter()
                .enumerate()
                .find(|&(_, &v)| v < 0 || v as usize > max)
            {
                return Err(Error::LengthOutOfRange {
                    kind,
                    batch_index,
                    value,
                    max,
                });
            }
        }
        Ok(())
    }
}

/// Checks that a buffer of `len` elements can hold `shape`.
pub(crate) fn check_buffer(buffer: &'static str, len: usize, shape: &Shape) -> Result<()> {
    let required = shape.required_len()?;
    if len < required {
        return Err(Error::BufferTooShort {
            buffer,
            len,
            required,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_dimensions_are_errors() {
        for (shape, name) in [
            (Shape::new(0, 1, 1, 1), "batch"),
            (Shape::new(1, 0, 1, 1), "heads"),
            (Shape::new(1, 1, 0, 1), "q_len"),
            (Shape::new(1, 1, 1, 0), "k_len"),
        ] {
            match shape.validate(4) {
                Err(Error::ZeroDimension { name: n }) => assert_eq!(n, name),
                other => panic!("{shape:?}: expected ZeroDimension, got {other:?}"),
            }
            // The buffer length asked on its own says the same, not "too large".
            match shape.required_len() {
                Err(Error::ZeroDimension { name: n }) => assert_eq!(n, name),
                other => panic!("{shape:?}: expected ZeroDimension, got {other:?}"),
            }
            let spec = Spec::new(shape);
            let report = crate::compare::forward::<f32>(&spec, Lengths::none(), &[0.0], &[0.0]);
            assert!(
                matches!(report, Err(Error::ZeroDimension { .. })),
                "{report:?}"
            );
        }
    }

    #[test]
    fn stride_smaller_than_row_is_an_error() {
        let shape = Shape::matrix(3, 8).with_row_stride(7);
        assert!(matches!(
            shape.validate(4),
            Err(Error::RowStrideTooSmall {
                row_stride: 7,
                k_len: 8
            })
        ));
        assert!(Shape::matrix(3, 8).with_row_stride(9).validate(4).is_ok());
    }

    #[test]
    fn required_len_counts_the_last_row_once() {
        let shape = Shape::matrix(3, 5).with_row_stride(8);
        assert_eq!(shape.required_len().unwrap(), 2 * 8 + 5);
    }

    #[test]
    fn overflowing_sizes_are_errors() {
        let huge = Shape::new(usize::MAX / 2, 3, 1, 1);
        assert!(matches!(huge.rows(), Err(Error::SizeOverflow { .. })));
        assert!(matches!(huge.validate(4), Err(Error::SizeOverflow { .. })));
        let wide = Shape::matrix(1 << 20, 1 << 44);
        assert!(matches!(wide.validate(4), Err(Error::SizeOverflow { .. })));
        // Fits in elements, not in bytes.
        let bytes = Shape::matrix(1, usize::MAX / 4);
        assert!(matches!(bytes.validate(4), Err(Error::SizeOverflow { .. })));
    }

    #[test]
    fn zero_window_is_an_error() {
        let spec = Spec::new(Shape::matrix(1, 4)).sliding_window(0);
        assert!(matches!(spec.validate(4), Err(Error::ZeroWindow)));
    }

    #[test]
    fn scale_must_be_finite() {
        let spec = Spec::new(Shape::matrix(1, 4));
        for scale in [0.0, -3.5, f32::MAX, f32::MIN_POSITIVE / 8.0] {
            assert!(spec.scale(scale).validate(4).is_ok(), "{scale}");
        }
        for scale in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(matches!(
                spec.scale(scale).validate(4),
                Err(Error::InvalidScale(_))
            ));
        }
    }

    #[test]
    fn lengths_are_checked() {
        let shape = Shape::new(2, 1, 3, 4);
        assert!(Lengths::keys(&[4, 0]).validate(&shape).is_ok());
        assert!(matches!(
            Lengths::keys(&[1]).validate(&shape),
            Err(Error::LengthsSize {
                kind: LengthKind::Key,
                len: 1,
                batch: 2
            })
        ));
        assert!(matches!(
            Lengths::keys(&[1, 5]).validate(&shape),
            Err(Error::LengthOutOfRange {
                kind: LengthKind::Key,
                batch_index: 1,
                value: 5,
                max: 4
            })
        ));
        assert!(matches!(
            Lengths::keys_and_queries(&[1, 1], &[-1, 0]).validate(&shape),
            Err(Error::LengthOutOfRange {
                kind: LengthKind::Query,
                batch_index: 0,
                value: -1,
                max: 3
            })
        ));
        assert!(matches!(
            Lengths::keys_and_queries(&[1, 1], &[1, 2, 3]).validate(&shape),
            Err(Error::LengthsSize {
                kind: LengthKind::Query,
                ..
            })
        ));
    }

    #[test]
    fn buffers_one_element_short_are_errors() {
        let shape = Shape::matrix(2, 3).with_row_stride(4);
        assert!(check_buffer("x", 7, &shape).is_ok());
        assert!(matches!(
            check_buffer("x", 6, &shape),
            Err(Error::BufferTooShort {
                buffer: "x",
                len: 6,
                required: 7
            })
        ));
    }
}
