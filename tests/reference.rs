//! The CPU reference against the contract: the seed's golden example, the invariants of
//! every masked softmax, hand-checked causal cases, finite differences for the backward,
//! and property tests over random shapes and masks.

mod common;

use common::{Lcg, contract_valid, scores_with_nan_pads};
use masked_softmax::{Error, Lengths, Padding, Shape, Spec, bf16, compare, f16, reference, seed};

#[test]
fn seed_example_matches_the_published_table_to_four_decimals() {
    let spec = Spec::new(Shape::matrix(seed::ROWS, seed::COLS));
    let x = seed::scores::<f64>();
    let mut y = vec![f64::NAN; x.len()];
    reference::forward_into(&spec, Lengths::keys(&seed::LENGTHS), &x, &mut y).unwrap();
    for (r, (got, want)) in y.chunks(seed::COLS).zip(seed::PUBLISHED).enumerate() {
        for (c, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 0.5e-4,
                "row {r} col {c}: {g} vs published {w}"
            );
        }
    }
}

#[test]
fn seed_example_in_every_storage_type() {
    fn check<T: masked_softmax::Element>() {
        let spec = Spec::new(Shape::matrix(seed::ROWS, seed::COLS));
        let x = seed::scores::<T>();
        let mut y = vec![T::from_f64(f64::NAN); x.len()];
        reference::forward(&spec, Lengths::keys(&seed::LENGTHS), &x, &mut y).unwrap();
        let report = compare::forward(&spec, Lengths::keys(&seed::LENGTHS), &x, &y).unwrap();
        assert!(report.passed(), "{report}");
    }
    check::<f32>();
    check::<f16>();
    check::<bf16>();
}

#[test]
fn rows_sum_to_one_and_pads_are_exactly_zero() {
    let spec = Spec::new(Shape::new(3, 2, 5, 17).with_row_stride(19)).scale(0.7);
    let kv = [17, 0, 9];
    let q = [5, 3, 1];
    let lengths = Lengths::keys_and_queries(&kv, &q);
    let x = scores_with_nan_pads(&spec, lengths, 1);
    let mut y = vec![f64::NAN; x.len()];
    reference::forward_into(&spec, lengths, &x, &mut y).unwrap();
    for row in 0..spec.shape.rows().unwrap() {
        let (b, i) = (row / 10, row % 5);
        let out = &y[row * 19..row * 19 + 17];
        let valid = i < q[b] as usize && kv[b] > 0;
        let sum: f64 = out.iter().sum();
        if valid {
            assert!((sum - 1.0).abs() < 1e-12, "row {row} sums to {sum}");
            assert!(out[kv[b] as usize..].iter().all(|&v| v == 0.0));
        } else {
            assert!(
                out.iter().all(|&v| v == 0.0 && v.is_sign_positive()),
                "row {row}: {out:?}"
            );
        }
    }
    // The gaps between rows are not ours: they keep what they held.
    assert!(y[17].is_nan() && y[18].is_nan());
}

#[test]
fn nan_in_every_pad_changes_nothing() {
    let spec = Spec::new(Shape::new(2, 1, 3, 8))
        .padding(Padding::Left)
        .causal();
    let (kv, q) = ([6, 3], [3, 2]);
    let lengths = Lengths::keys_and_queries(&kv, &q);
    let x_nan = scores_with_nan_pads(&spec, lengths, 2);
    let x_zero: Vec<f64> = x_nan
        .iter()
        .map(|v| if v.is_nan() { 0.0 } else { *v })
        .collect();
    let x_huge: Vec<f64> = x_nan
        .iter()
        .map(|v| if v.is_nan() { 1e300 } else { *v })
        .collect();
    let run = |x: &[f64]| {
        let mut y = vec![0.0f64; x.len()];
        reference::forward_into(&spec, lengths, x, &mut y).unwrap();
        y
    };
    let y = run(&x_nan);
    assert!(y.iter().all(|v| v.is_finite()));
    assert_eq!(y, run(&x_zero));
    assert_eq!(y, run(&x_huge));
}

#[test]
fn fully_masked_and_all_minus_inf_rows_are_zero() {
    let spec = Spec::new(Shape::matrix(3, 4));
    let x = [
        1.0,
        2.0,
        3.0,
        4.0, // length 0
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        f64::NAN, // valid scores all -inf
        f64::NEG_INFINITY,
        0.0,
        f64::NEG_INFINITY,
        5.0, // one -inf among finite ones
    ];
    let mut y = [f64::NAN; 12];
    reference::forward_into(&spec, Lengths::keys(&[0, 2, 3]), &x, &mut y).unwrap();
    assert_eq!(&y[..8], &[0.0; 8]);
    assert_eq!(&y[8..], &[0.0, 1.0, 0.0, 0.0]);
}

#[test]
fn nan_and_plus_inf_in_valid_positions_propagate() {
    let spec = Spec::new(Shape::matrix(3, 3));
    let x = [
        1.0,
        f64::NAN,
        2.0,
        f64::INFINITY,
        1.0,
        0.0,
        f64::INFINITY,
        f64::INFINITY,
        0.0,
    ];
    let mut y = [0.0f64; 9];
    reference::forward_into(&spec, Lengths::keys(&[3, 2, 2]), &x, &mut y).unwrap();
    assert!(y[..3].iter().all(|v| v.is_nan()), "NaN row: {:?}", &y[..3]);
    // +inf: exp(inf - inf) is NaN, so the row is NaN (as softmax in PyTorch and NumPy).
    assert!(y[3].is_nan() && y[4].is_nan());
    assert_eq!(y[5], 0.0);
    assert!(y[6].is_nan() && y[7].is_nan() && y[8] == 0.0);
}

#[test]
fn left_padding_equals_right_padding_of_the_mirrored_row() {
    let (rows, cols) = (5, 11);
    let lengths = [0, 1, 5, 10, 11];
    let right = Spec::new(Shape::matrix(rows, cols)).scale(1.3);
    let left = right.padding(Padding::Left);
    let mut rng = Lcg(3);
    let x: Vec<f64> = (0..rows * cols)
        .map(|_| rng.uniform() * 6.0 - 3.0)
        .collect();
    let mirrored: Vec<f64> = x
        .chunks(cols)
        .flat_map(|r| r.iter().rev().copied())
        .collect();
    let (mut y_left, mut y_right) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    reference::forward_into(&left, Lengths::keys(&lengths), &x, &mut y_left).unwrap();
    reference::forward_into(&right, Lengths::keys(&lengths), &mirrored, &mut y_right).unwrap();
    let y_right_mirrored: Vec<f64> = y_right
        .chunks(cols)
        .flat_map(|r| r.iter().rev().copied())
        .collect();
    // Equal up to the order of the f64 sum.
    for (l, r) in y_left.iter().zip(&y_right_mirrored) {
        approx::assert_relative_eq!(*l, *r, max_relative = 1e-14);
        assert_eq!(*l == 0.0, *r == 0.0);
    }
}

#[test]
fn causal_bottom_right_by_hand() {
    // Two new queries against four cached keys, all valid, all scores 0: query 0 sees keys
    // 0..3 (uniform 1/3), query 1 sees all four (uniform 1/4).
    let spec = Spec::new(Shape::new(1, 1, 2, 4)).causal();
    let mut y = [f64::NAN; 8];
    reference::forward_into(&spec, Lengths::none(), &[0.0; 8], &mut y).unwrap();
    let third = 1.0 / 3.0;
    assert_eq!(y, [third, third, third, 0.0, 0.25, 0.25, 0.25, 0.25]);

    // Scores ln(1), ln(2), ln(3): a visible prefix p gives weights proportional to 1..p.
    let ln = |v: f64| v.ln();
    let x = [
        ln(1.0),
        ln(2.0),
        ln(3.0),
        ln(1.0),
        ln(2.0),
        ln(3.0),
        ln(1.0),
        ln(2.0),
        ln(3.0),
    ];
    // Right padding, 3 queries of which 2 valid, kv_len 2 of k_len 3: query 0 sees key 0,
    // query 1 sees keys 0 and 1, query 2 is padding.
    let spec = Spec::new(Shape::new(1, 1, 3, 3)).causal();
    let mut y = [f64::NAN; 9];
    reference::forward_into(&spec, Lengths::keys_and_queries(&[2], &[2]), &x, &mut y).unwrap();
    let expect = [1.0, 0.0, 0.0, 1.0 / 3.0, 2.0 / 3.0, 0.0, 0.0, 0.0, 0.0];
    for (g, w) in y.iter().zip(expect) {
        assert!((g - w).abs() < 1e-15, "{y:?}");
    }

    // Sliding window of 2 over 3 queries x 3 keys: the diagonal key and the one before it.
    let spec = Spec::new(Shape::new(1, 1, 3, 3)).sliding_window(2);
    reference::forward_into(&spec, Lengths::none(), &x, &mut y).unwrap();
    let expect = [1.0, 0.0, 0.0, 1.0 / 3.0, 2.0 / 3.0, 0.0, 0.0, 0.4, 0.6];
    for (g, w) in y.iter().zip(expect) {
        assert!((g - w).abs() < 1e-15, "{y:?}");
    }
}

#[test]
fn in_place_equals_out_of_place() {
    let spec = Spec::new(Shape::new(2, 3, 4, 9).with_row_stride(10))
        .sliding_window(3)
        .scale(2.0);
    let lengths = Lengths::keys_and_queries(&[9, 4], &[4, 2]);
    let x = scores_with_nan_pads(&spec, lengths, 4);
    let mut y = x.clone();
    reference::forward_into(&spec, lengths, &x, &mut y).unwrap();
    let mut xy = x.clone();
    reference::forward_in_place(&spec, lengths, &mut xy).unwrap();
    assert_eq!(
        format!("{y:?}"),
        format!("{xy:?}"),
        "NaN gaps between rows compare by their text"
    );

    let dy = scores_with_nan_pads(&spec, lengths, 5);
    let mut dx = vec![0.0; x.len()];
    reference::backward_into(&spec, lengths, &y, &dy, &mut dx).unwrap();
    let mut dy_dx = dy.clone();
    reference::backward_in_place(&spec, lengths, &y, &mut dy_dx).unwrap();
    for row in 0..24 {
        assert_eq!(dx[row * 10..row * 10 + 9], dy_dx[row * 10..row * 10 + 9]);
    }
}

#[test]
fn backward_matches_finite_differences_of_the_forward() {
    // dL/dx for L = sum(dy * y(x)); central differences in f64 on every valid position.
    let spec = Spec::new(Shape::new(2, 1, 3, 7)).causal().scale(0.8);
    let lengths = Lengths::keys_and_queries(&[7, 5], &[3, 2]);
    let x = scores_with_nan_pads(&spec, lengths, 6);
    let dy = scores_with_nan_pads(&spec, lengths, 7);
    let forward = |x: &[f64]| {
        let mut y = vec![0.0; x.len()];
        reference::forward_into(&spec, lengths, x, &mut y).unwrap();
        y
    };
    let loss = |x: &[f64]| -> f64 {
        forward(x)
            .iter()
            .zip(&dy)
            .filter(|(y, _)| **y != 0.0)
            .map(|(y, d)| y * d)
            .sum()
    };
    let y = forward(&x);
    let mut dx = vec![f64::NAN; x.len()];
    reference::backward_into(&spec, lengths, &y, &dy, &mut dx).unwrap();
    let h = 1e-6;
    let mut checked = 0;
    for k in 0..x.len() {
        if x[k].is_nan() {
            assert_eq!(dx[k], 0.0, "masked position {k} must have gradient 0");
            continue;
        }
        let (mut plus, mut minus) = (x.clone(), x.clone());
        plus[k] += h;
        minus[k] -= h;
        let numeric = (loss(&plus) - loss(&minus)) / (2.0 * h);
        assert!(
            (numeric - dx[k]).abs() < 1e-7,
            "position {k}: analytic {} vs numeric {numeric}",
            dx[k]
        );
        checked += 1;
    }
    assert!(checked > 20, "only {checked} valid positions");
}

#[test]
fn backward_is_zero_on_fully_masked_rows_and_ignores_nan_pads() {
    let spec = Spec::new(Shape::matrix(2, 3));
    let y = [0.5, 0.5, f64::NAN, f64::NAN, f64::NAN, f64::NAN];
    let dy = [1.0, 3.0, f64::NAN, f64::NAN, f64::NAN, f64::NAN];
    let mut dx = [f64::NAN; 6];
    reference::backward_into(&spec, Lengths::keys(&[2, 0]), &y, &dy, &mut dx).unwrap();
    // dot = 2: dx = y * (dy - 2)
    assert_eq!(dx, [-0.5, 0.5, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn invalid_input_is_a_typed_error_not_a_panic() {
    let spec = Spec::new(Shape::matrix(2, 3));
    let x = [0.0f32; 6];
    let mut y = [0.0f32; 5];
    assert!(matches!(
        reference::forward(&spec, Lengths::none(), &x, &mut y),
        Err(Error::BufferTooShort {
            buffer: "y",
            len: 5,
            required: 6
        })
    ));
    let mut y = [0.0f32; 6];
    assert!(matches!(
        reference::forward(&spec, Lengths::keys(&[4, 1]), &x, &mut y),
        Err(Error::LengthOutOfRange { value: 4, .. })
    ));
    assert!(matches!(
        reference::forward(&Spec::new(Shape::matrix(2, 0)), Lengths::none(), &x, &mut y),
        Err(Error::ZeroDimension { name: "k_len" })
    ));
}

#[test]
fn compare_reports_wrong_values_nonzero_pads_and_bad_sums() {
    let spec = Spec::new(Shape::matrix(seed::ROWS, seed::COLS));
    let lengths = Lengths::keys(&seed::LENGTHS);
    let x = seed::scores::<f32>();
    let mut y = vec![0f32; x.len()];
    reference::forward(&spec, lengths, &x, &mut y).unwrap();
    assert!(compare::forward(&spec, lengths, &x, &y).unwrap().passed());

    let mut wrong = y.clone();
    wrong[13] += 1e-3; // row 2, col 1
    let report = compare::forward(&spec, lengths, &x, &wrong).unwrap();
    assert!(!report.passed());
    assert_eq!(report.out_of_tolerance, 1);
    assert_eq!(report.bad_row_sums, 1);
    let worst = report.worst.unwrap();
    assert_eq!((worst.row, worst.col), (2, 1));
    assert!(report.into_result().is_err());

    let mut leaky = y.clone();
    leaky[5] = 1e-30; // a pad of row 0
    let report = compare::forward(&spec, lengths, &x, &leaky).unwrap();
    assert_eq!(report.nonzero_masked, 1);
    assert_eq!(report.first_nonzero_masked.unwrap().col, 5);
    assert!(!report.passed());

    let mut nan = y.clone();
    nan[0] = f32::NAN;
    let report = compare::forward(&spec, lengths, &x, &nan).unwrap();
    assert_eq!(report.out_of_tolerance, 1);
    assert!(report.to_string().starts_with("FAIL"));
}

#[test]
fn compare_judges_the_backward_by_the_size_of_its_terms() {
    // dy_1 nearly cancels sum(y * dy) = 0.5 * 1000 + 0.5 * 1000.001: dx_1 is about
    // -1e-3 * 0.25, while one f32 rounding of the sum (about 6e-5) moves it by 3e-5.
    let spec = Spec::new(Shape::matrix(1, 2));
    let lengths = Lengths::keys(&[2]);
    let y = [0.5f32, 0.5];
    let dy = [1000.0f32, 1000.001];
    let mut dx = [0f32; 2];
    reference::backward(&spec, lengths, &y, &dy, &mut dx).unwrap();
    assert!(
        compare::backward(&spec, lengths, &y, &dy, &dx)
            .unwrap()
            .passed()
    );

    // One f32 rounding of the sum, passed on: within the terms' size (m = 0.5 * 2000).
    let rounded = [dx[0] + 3e-5, dx[1] + 3e-5];
    let report = compare::backward(&spec, lengths, &y, &dy, &rounded).unwrap();
    assert!(report.passed(), "{report}");
    // A wrong sum (one term dropped) is far outside it.
    let wrong = [0.5 * (1000.0 - 500.0005), 0.5 * (1000.001 - 500.0005)];
    let report = compare::backward(&spec, lengths, &y, &dy, &wrong).unwrap();
    assert_eq!(report.out_of_tolerance, 2, "{report}");
    assert!(
        report.to_string().contains("rel 1.0e-5 of its terms"),
        "{report}"
    );
    assert!(!report.to_string().contains("summing to 1"), "{report}");
}

mod properties {
    use super::*;
    use masked_softmax::Causal;
    use proptest::prelude::*;

    /// A random spec with lengths that fit it.
    fn spec_and_lengths() -> impl Strategy<Value = (Spec, Vec<i32>, Option<Vec<i32>>, u64)> {
        (1usize..4, 1usize..3, 1usize..6, 1usize..40, 0usize..3)
            .prop_flat_map(|(batch, heads, q_len, k_len, extra_stride)| {
                let shape =
                    Shape::new(batch, heads, q_len, k_len).with_row_stride(k_len + extra_stride);
                (
                    Just(shape),
                    prop::collection::vec(0..=k_len as i32, batch),
                    prop::option::of(prop::collection::vec(0..=q_len as i32, batch)),
                    any::<bool>(),
                    prop::option::of(prop::option::of(1usize..50)),
                    -3.0f32..3.0,
                    any::<u64>(),
                )
            })
            .prop_map(|(shape, kv, q, left, causal, scale, seed)| {
                let spec = Spec {
                    shape,
                    padding: if left { Padding::Left } else { Padding::Right },
                    causal: causal.map(|window| Causal { window }),
                    scale,
                };
                (spec, kv, q, seed)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn forward_invariants((spec, kv, q, seed) in spec_and_lengths()) {
            let lengths = Lengths { kv: Some(&kv), q: q.as_deref() };
            let x = scores_with_nan_pads(&spec, lengths, seed);
            let mut y = vec![f64::NAN; x.len()];
            reference::forward_into(&spec, lengths, &x, &mut y).unwrap();
            let shape = spec.shape;
            for row in 0..shape.rows().unwrap() {
                let base = row * shape.row_stride;
                let out = &y[base..base + shape.k_len];
                let valid: Vec<bool> = x[base..base + shape.k_len].iter().map(|v| !v.is_nan()).collect();
                let sum: f64 = out.iter().sum();
                prop_assert!(out.iter().all(|v| v.is_finite() && *v >= 0.0));
                if valid.iter().any(|&v| v) {
                    prop_assert!((sum - 1.0).abs() < 1e-12, "row {} sums to {}", row, sum);
                } else {
                    prop_assert_eq!(sum, 0.0);
                }
                for (o, v) in out.iter().zip(&valid) {
                    if !v { prop_assert_eq!(*o, 0.0); }
                }
            }
            // f16 storage stays within its tolerance of the f64 answer.
            let x16: Vec<f16> = x.iter().map(|&v| f16::from_f64(v)).collect();
            let mut y16 = vec![f16::NAN; x.len()];
            reference::forward(&spec, lengths, &x16, &mut y16).unwrap();
            let report = compare::forward(&spec, lengths, &x16, &y16).unwrap();
            prop_assert!(report.passed(), "{}", report);
        }

        #[test]
        fn row_window_is_the_contract_mask((spec, kv, q, _seed) in spec_and_lengths()) {
            let lengths = Lengths { kv: Some(&kv), q: q.as_deref() };
            let shape = spec.shape;
            for b in 0..shape.batch {
                let kv_b = kv[b] as usize;
                let q_b = q.as_ref().map_or(shape.q_len, |q| q[b] as usize);
                for i in 0..shape.q_len {
                    let window = masked_softmax::mask::row_window(&spec, kv_b, q_b, i);
                    for j in 0..shape.k_len {
                        prop_assert_eq!(
                            window.contains(j),
                            contract_valid(&spec, lengths, b, i, j),
                            "b {} i {} j {} window {:?}", b, i, j, window
                        );
                    }
                }
            }
        }

        #[test]
        fn backward_gradient_sums_to_zero_per_row((spec, kv, q, seed) in spec_and_lengths()) {
            // sum_valid(dx) = scale * (sum(y dy) - sum(y) * sum(y dy)) = 0 since sum(y) = 1.
            let lengths = Lengths { kv: Some(&kv), q: q.as_deref() };
            let x = scores_with_nan_pads(&spec, lengths, seed);
            let dy = scores_with_nan_pads(&spec, lengths, seed ^ 1);
            let mut y = vec![0.0; x.len()];
            reference::forward_into(&spec, lengths, &x, &mut y).unwrap();
            let mut dx = vec![f64::NAN; x.len()];
            reference::backward_into(&spec, lengths, &y, &dy, &mut dx).unwrap();
            let shape = spec.shape;
            for row in 0..shape.rows().unwrap() {
                let base = row * shape.row_stride;
                let out = &dx[base..base + shape.k_len];
                prop_assert!(out.iter().all(|v| v.is_finite()));
                let sum: f64 = out.iter().sum();
                prop_assert!(sum.abs() < 1e-9, "row {} gradient sums to {}", row, sum);
                for (o, xv) in out.iter().zip(&x[base..base + shape.k_len]) {
                    if xv.is_nan() { prop_assert_eq!(*o, 0.0); }
                }
            }
        }
    }
}
