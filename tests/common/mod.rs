//! Helpers shared by the test files: a seeded generator, the contract's mask written out
//! element by element (independent of the crate's `mask` module), and inputs with NaN in
//! every masked position.
#![allow(dead_code)]

use masked_softmax::{Lengths, Padding, Spec};

/// A tiny deterministic generator (PCG-style LCG), so failures reproduce from the seed.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.next_u64() as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi] (inclusive).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }
}

/// The contract's mask, element by element, written straight from the brief's words: is
/// key `j` of query row `i` of batch entry `b` valid?
pub fn contract_valid(spec: &Spec, lengths: Lengths, b: usize, i: usize, j: usize) -> bool {
    let (k, q_dim) = (spec.shape.k_len as i64, spec.shape.q_len as i64);
    let kv = lengths.kv.map_or(k, |l| l[b] as i64);
    let ql = lengths.q.map_or(q_dim, |l| l[b] as i64);
    let (i, j) = (i as i64, j as i64);
    let (key_valid, query_valid, p, q) = match spec.padding {
        Padding::Right => (j < kv, i < ql, j, i),
        Padding::Left => (j >= k - kv, i >= q_dim - ql, j - (k - kv), i - (q_dim - ql)),
    };
    if !key_valid || !query_valid {
        return false;
    }
    match spec.causal {
        None => true,
        Some(c) => {
            let diagonal = q + (kv - ql);
            p <= diagonal && c.window.is_none_or(|w| p > diagonal - w as i64)
        }
    }
}

/// Random scores in [-4, 4) with NaN in every position the contract masks and in the gaps
/// between rows.
pub fn scores_with_nan_pads(spec: &Spec, lengths: Lengths, seed: u64) -> Vec<f64> {
    let mut rng = Lcg(seed);
    let shape = spec.shape;
    let mut x = vec![f64::NAN; shape.required_len().unwrap()];
    for row in 0..shape.rows().unwrap() {
        let (b, i) = (row / (shape.heads * shape.q_len), row % shape.q_len);
        for j in 0..shape.k_len {
            let v = rng.uniform() * 8.0 - 4.0;
            if contract_valid(spec, lengths, b, i, j) {
                x[row * shape.row_stride + j] = v;
            }
        }
    }
    x
}
