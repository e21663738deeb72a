//! Random contracts, valid and not, thrown at validation and the CPU reference (10,000 per
//! run): nothing panics; an error comes back exactly when the contract (as written out
//! here, independently of the crate's validation) is broken, and it is the right one; and
//! every result keeps the invariants (rows sum to 1 or are all +0.0, masked positions +0.0,
//! pads never read, the backward's rows sum to 0).

mod common;

use common::contract_valid;
use masked_softmax::{Causal, Error, Lengths, Padding, Shape, Spec, reference};
use proptest::prelude::*;

/// A contract as a user might hand it over: anything goes.
#[derive(Debug, Clone)]
struct Raw {
    batch: usize,
    heads: usize,
    q_len: usize,
    k_len: usize,
    stride_delta: i64,
    kv: Vec<i32>,
    q: Option<Vec<i32>>,
    left: bool,
    causal: Option<Option<usize>>,
    scale: f32,
    buffer_delta: i64,
    seed: u64,
}

/// Mostly valid contracts, each rule broken now and then (about half the cases are valid).
fn raw() -> impl Strategy<Value = Raw> {
    let dim = |max: usize| prop_oneof![1 => Just(0usize), 24 => 1..=max];
    (dim(4), dim(3), dim(5), dim(40), prop_oneof![1 => -2i64..0, 12 => 0i64..3])
        .prop_flat_map(|(batch, heads, q_len, k_len, stride_delta)| {
            // The right number of in-range lengths, or now and then one too many or few, or
            // one out of range.
            let lengths = move |n: usize, max: usize| {
                let wrong_size = prop::collection::vec(0..=max as i32, n.saturating_sub(1)..=n + 1);
                let out_of_range = (prop::collection::vec(0..=max as i32, n), any::<usize>(), prop_oneof![Just(-1i32), Just(max as i32 + 1), Just(i32::MIN), Just(i32::MAX)])
                    .prop_map(|(mut v, at, bad)| {
                        if !v.is_empty() {
                            let i = at % v.len();
                            v[i] = bad;
                        }
                        v
                    });
                prop_oneof![30 => prop::collection::vec(0..=max as i32, n), 1 => wrong_size, 1 => out_of_range]
            };
            (
                Just((batch, heads, q_len, k_len, stride_delta)),
                lengths(batch, k_len),
                prop::option::of(lengths(batch, q_len)),
                any::<bool>(),
                prop::option::of(prop::option::of(0usize..12)),
                prop_oneof![
                    4 => Just(1.0f32),
                    1 => Just(0.0),
                    1 => Just(-2.5),
                    1 => Just(1e30),
                    8 => -4.0f32..4.0,
                    1 => prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY)],
                ],
                prop_oneof![24 => Just(0i64), 1 => Just(-1), 1 => Just(1)],
                any::<u64>(),
            )
        })
        .prop_map(
            |((batch, heads, q_len, k_len, stride_delta), kv, q, left, causal, scale, buffer_delta, seed)| Raw {
                batch,
                heads,
                q_len,
                k_len,
                stride_delta,
                kv,
                q,
                left,
                causal,
                scale,
                buffer_delta,
                seed,
            },
        )
}

impl Raw {
    fn spec(&self) -> Spec {
        let stride = (self.k_len as i64 + self.stride_delta).max(0) as usize;
        Spec {
            shape: Shape::new(self.batch, self.heads, self.q_len, self.k_len)
                .with_row_stride(stride),
            padding: if self.left {
                Padding::Left
            } else {
                Padding::Right
            },
            causal: self.causal.map(|window| Causal { window }),
            scale: self.scale,
        }
    }

    /// Elements the shape needs, by the contract's formula (None if it has no rows).
    fn required(&self) -> Option<usize> {
        let rows = self.batch * self.heads * self.q_len;
        let stride = (self.k_len as i64 + self.stride_delta).max(0) as usize;
        (rows > 0).then(|| (rows - 1) * stride + self.k_len)
    }

    /// The error the contract calls for, in the order the checks are documented; None if
    /// the call is valid.
    fn expected_error(&self) -> Option<&'static str> {
        let stride = self.k_len as i64 + self.stride_delta;
        if self.batch == 0 || self.heads == 0 || self.q_len == 0 || self.k_len == 0 {
            return Some("ZeroDimension");
        }
        if stride < self.k_len as i64 {
            return Some("RowStrideTooSmall");
        }
        if matches!(self.causal, Some(Some(0))) {
            return Some("ZeroWindow");
        }
        if !self.scale.is_finite() {
            return Some("InvalidScale");
        }
        for (lengths, max) in [(Some(&self.kv), self.k_len), (self.q.as_ref(), self.q_len)] {
            let Some(lengths) = lengths else { continue };
            if lengths.len() != self.batch {
                return Some("LengthsSize");
            }
            if lengths.iter().any(|&v| v < 0 || v as usize > max) {
                return Some("LengthOutOfRange");
            }
        }
        if self.buffer_delta < 0 {
            return Some("BufferTooShort");
        }
        None
    }
}

fn error_name(e: &Error) -> &'static str {
    match e {
        Error::ZeroDimension { .. } => "ZeroDimension",
        Error::RowStrideTooSmall { .. } => "RowStrideTooSmall",
        Error::ZeroWindow => "ZeroWindow",
        Error::InvalidScale(_) => "InvalidScale",
        Error::LengthsSize { .. } => "LengthsSize",
        Error::LengthOutOfRange { .. } => "LengthOutOfRange",
        Error::BufferTooShort { .. } => "BufferTooShort",
        _ => "other",
    }
}

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::test_runner::{Config, TestCaseError, TestRunner};

const CASES: u32 = 10_000;

#[test]
fn random_contracts() {
    let (valid, invalid) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        ..Config::default()
    });
    let result = runner.run(&raw(), |raw| {
        let counter = if raw.expected_error().is_none() {
            &valid
        } else {
            &invalid
        };
        counter.fetch_add(1, Ordering::Relaxed);
        check(&raw)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (valid, invalid) = (valid.into_inner(), invalid.into_inner());
    println!(
        "random_contracts: {valid} valid and {invalid} invalid contracts, all as the contract says"
    );
    // Both halves of the space get explored (a strategy change that starves one fails here).
    assert!(valid + invalid >= CASES as usize);
    assert!(
        valid >= CASES as usize / 3 && invalid >= CASES as usize / 5,
        "{valid} / {invalid}"
    );
}

fn check(raw: &Raw) -> Result<(), TestCaseError> {
    let spec = raw.spec();
    let lengths = Lengths {
        kv: Some(&raw.kv),
        q: raw.q.as_deref(),
    };
    let len = raw
        .required()
        .map_or(4, |n| (n as i64 + raw.buffer_delta).max(0) as usize);
    let mut rng = common::Lcg(raw.seed);
    let x: Vec<f64> = (0..len).map(|_| rng.uniform() * 8.0 - 4.0).collect();
    let mut y = vec![f64::NAN; len];
    let result = reference::forward_into(&spec, lengths, &x, &mut y);
    match (raw.expected_error(), &result) {
        (None, Ok(())) => {}
        (Some(want), Err(e)) => prop_assert_eq!(want, error_name(e), "{}", e),
        (want, got) => prop_assert!(false, "expected {:?}, got {:?}", want, got),
    }
    if result.is_err() {
        return Ok(());
    }
    // Valid: check every row against the contract's mask, written out element by element.
    let shape = spec.shape;
    let (mut dy, mut dx) = (vec![0.0; len], vec![f64::NAN; len]);
    for v in dy.iter_mut() {
        *v = rng.uniform() - 0.5;
    }
    reference::backward_into(&spec, lengths, &y, &dy, &mut dx).unwrap();
    for row in 0..shape.rows().unwrap() {
        let (b, i) = (row / (shape.heads * shape.q_len), row % shape.q_len);
        let base = row * shape.row_stride;
        let valid: Vec<bool> = (0..shape.k_len)
            .map(|j| contract_valid(&spec, lengths, b, i, j))
            .collect();
        let out = &y[base..base + shape.k_len];
        let sum: f64 = out.iter().sum();
        let any_valid = valid.iter().any(|&v| v);
        for (j, &v) in valid.iter().enumerate() {
            if !v {
                prop_assert!(
                    out[j] == 0.0 && out[j].is_sign_positive(),
                    "row {} col {}",
                    row,
                    j
                );
                prop_assert!(dx[base + j] == 0.0, "dx row {} col {}", row, j);
            }
        }
        if any_valid {
            prop_assert!(out.iter().all(|v| v.is_finite()));
            prop_assert!((sum - 1.0).abs() < 1e-12, "row {} sums to {}", row, sum);
            let dsum: f64 = dx[base..base + shape.k_len].iter().sum();
            prop_assert!(
                dsum.abs() < 1e-9 * spec.scale.abs().max(1.0) as f64,
                "dx row {} sums to {}",
                row,
                dsum
            );
        } else {
            prop_assert_eq!(sum, 0.0);
        }
    }
    // Pads never read: NaN in every masked position changes nothing.
    let mut x_nan = x.clone();
    for row in 0..shape.rows().unwrap() {
        let (b, i) = (row / (shape.heads * shape.q_len), row % shape.q_len);
        for j in 0..shape.k_len {
            if !contract_valid(&spec, lengths, b, i, j) {
                x_nan[row * shape.row_stride + j] = f64::NAN;
            }
        }
    }
    let mut y_nan = vec![f64::NAN; len];
    reference::forward_into(&spec, lengths, &x_nan, &mut y_nan).unwrap();
    for row in 0..shape.rows().unwrap() {
        let r = row * shape.row_stride..row * shape.row_stride + shape.k_len;
        prop_assert_eq!(&y[r.clone()], &y_nan[r]);
    }
    Ok(())
}
