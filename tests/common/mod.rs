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

use masked_softmax::plan::Direction;
use masked_softmax::{Causal, DType, Element, Shape, compare};

/// A mask mode of the contract.
#[derive(Clone, Copy, Debug)]
pub struct Mode {
    pub name: &'static str,
    pub padding: Padding,
    pub query_lengths: bool,
    pub causal: Option<Causal>,
}

/// Every mask mode the kernels must honour.
pub const MODES: [Mode; 7] = [
    Mode {
        name: "right",
        padding: Padding::Right,
        query_lengths: false,
        causal: None,
    },
    Mode {
        name: "left",
        padding: Padding::Left,
        query_lengths: false,
        causal: None,
    },
    Mode {
        name: "right_q",
        padding: Padding::Right,
        query_lengths: true,
        causal: None,
    },
    Mode {
        name: "left_q",
        padding: Padding::Left,
        query_lengths: true,
        causal: None,
    },
    Mode {
        name: "causal",
        padding: Padding::Right,
        query_lengths: false,
        causal: Some(Causal { window: None }),
    },
    Mode {
        name: "causal_left_q",
        padding: Padding::Left,
        query_lengths: true,
        causal: Some(Causal { window: None }),
    },
    Mode {
        name: "window_q",
        padding: Padding::Right,
        query_lengths: true,
        causal: Some(Causal { window: Some(5) }),
    },
];

/// Row lengths on both sides of every warp and vector boundary, and long rows.
/// With odd lengths (odd strides: rows at every place against 16-byte boundaries, seen
/// shifted by the vector kernels or taken by single elements) and even ones (16-byte packs)
/// in every step of the planner's ladder.
pub const K_LENS: &[usize] = &[
    1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 33, 63, 64, 65, 100, 128, 255, 256, 500, 501, 1000, 1023,
    1024, 1025, 2000, 3000, 4096, 4097, 8192, 8200, 20000, 20001,
];

/// One random problem: spec, lengths (full and empty ones always among them), seed.
#[derive(Clone, Debug)]
pub struct Case {
    pub spec: Spec,
    pub kv: Vec<i32>,
    pub q: Option<Vec<i32>>,
    pub seed: u64,
}

impl Case {
    /// A case of `mode` with rows of `k_len` and at most about `max_elements` scores.
    pub fn new(mode: Mode, k_len: usize, max_elements: usize) -> Case {
        let seed = k_len as u64 * 7919 + mode.name.len() as u64;
        let mut rng = Lcg(seed);
        let (batch, heads) = (4, 2);
        let q_len = (max_elements / (batch * heads * k_len)).clamp(1, 9);
        let shape = Self::shape(batch, heads, q_len, k_len);
        let k = k_len as i64;
        let kv = vec![k as i32, 0, rng.range(0, k) as i32, rng.range(1, k) as i32];
        let q = mode.query_lengths.then(|| {
            let q = q_len as i64;
            vec![
                rng.range(0, q) as i32,
                q as i32,
                (q - 1) as i32,
                rng.range(0, q) as i32,
            ]
        });
        Self::of(mode, shape, kv, q, seed)
    }

    /// Odd rows get an odd stride, which puts rows at every place against 16-byte
    /// boundaries (every lead of a shifted pack: kernels/io.cuh, PackShift).
    fn shape(batch: usize, heads: usize, q_len: usize, k_len: usize) -> Shape {
        let row_stride = if k_len % 2 == 1 { k_len + 2 } else { k_len };
        Shape::new(batch, heads, q_len, k_len).with_row_stride(row_stride)
    }

    fn of(mode: Mode, shape: Shape, kv: Vec<i32>, q: Option<Vec<i32>>, seed: u64) -> Case {
        let spec = Spec {
            shape,
            padding: mode.padding,
            causal: mode.causal,
            scale: 0.7,
        };
        Case { spec, kv, q, seed }
    }

    /// A case of `mode` with about `rows` rows of `k_len` in batch entries of 2 heads and 3
    /// queries each, every entry its own key (and query) lengths, full and empty among
    /// them: consecutive runs of rows (a rows kernel's batches) see different windows.
    pub fn many_rows(mode: Mode, k_len: usize, rows: usize) -> Case {
        let seed = k_len as u64 * 6361 + mode.name.len() as u64 + rows as u64;
        let mut rng = Lcg(seed);
        let (heads, q_len) = (2, 3);
        let batch = (rows / (heads * q_len)).max(2);
        let shape = Self::shape(batch, heads, q_len, k_len);
        let k = k_len as i64;
        let kv = (0..batch)
            .map(|b| match b {
                0 => k,
                1 => 0,
                _ => rng.range(0, k),
            } as i32)
            .collect();
        let q = mode
            .query_lengths
            .then(|| (0..batch).map(|_| rng.range(0, 3) as i32).collect());
        Self::of(mode, shape, kv, q, seed)
    }

    pub fn lengths(&self) -> Lengths<'_> {
        Lengths {
            kv: Some(&self.kv),
            q: self.q.as_deref(),
        }
    }

    /// The scores in storage type `T`, NaN in every pad and gap.
    pub fn scores<T: Element>(&self) -> Vec<T> {
        scores_with_nan_pads(&self.spec, self.lengths(), self.seed)
            .into_iter()
            .map(T::from_f64)
            .collect()
    }

    /// The inputs of `direction` in storage type `T`: `[x]` (the scores), or `[y, dy]`
    /// (`backward_inputs`).
    pub fn inputs<T: Element>(&self, direction: Direction) -> Vec<Vec<T>> {
        match direction {
            Direction::Forward => vec![self.scores()],
            Direction::Backward => {
                let (y, dy) = backward_inputs(&self.spec, self.lengths(), self.seed);
                [y, dy]
                    .map(|v| v.into_iter().map(T::from_f64).collect())
                    .into()
            }
        }
    }
}

/// Every (name, mode, k_len) of the random forward matrix.
pub fn forward_matrix() -> Vec<(String, Mode, usize)> {
    MODES
        .iter()
        .flat_map(|&mode| {
            K_LENS
                .iter()
                .map(move |&k| (format!("{}_k{k}", mode.name), mode, k))
        })
        .collect()
}

pub fn bytes_of<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: any initialised Copy slice can be read as bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

/// What a kernel produced for one problem: out of place into an output poisoned with NaN
/// (`out`), the same again (`out_again`), and in place (`in_place`: over x in the forward,
/// over dy in the backward).
pub struct Runs<T> {
    pub out: Vec<T>,
    pub out_again: Vec<T>,
    pub in_place: Vec<T>,
}

/// Checks results against the contract: `report` (the comparison of `runs.out` with the
/// reference) passed, the gaps between rows are untouched (still NaN), a rerun is
/// bit-identical, and the in-place result is bit-identical to the out-of-place one.
pub fn check_runs<T: Element>(
    spec: &Spec,
    report: masked_softmax::Result<compare::Report>,
    runs: &Runs<T>,
) -> Result<(), String> {
    report
        .and_then(|r| r.into_result())
        .map_err(|e| e.to_string())?;
    let shape = spec.shape;
    let rows = shape.rows().unwrap();
    for row in 0..rows {
        let gap = row * shape.row_stride + shape.k_len
            ..((row + 1) * shape.row_stride).min(runs.out.len());
        if runs.out[gap.clone()].iter().any(|v| !v.to_f64().is_nan()) {
            return Err(format!(
                "row {row}: the gap {gap:?} between rows was written"
            ));
        }
    }
    if bytes_of(&runs.out_again) != bytes_of(&runs.out) {
        return Err("a second run is not bit-identical to the first".into());
    }
    for row in 0..rows {
        let r = row * shape.row_stride..row * shape.row_stride + shape.k_len;
        if bytes_of(&runs.in_place[r.clone()]) != bytes_of(&runs.out[r]) {
            return Err(format!(
                "row {row}: the in-place result differs from out-of-place"
            ));
        }
    }
    Ok(())
}

/// Inputs of a backward check: `y`, the reference forward of random scores, and a random
/// `dy`, both NaN in every masked position and gap (so any read of a pad shows).
pub fn backward_inputs(spec: &Spec, lengths: Lengths, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let x = scores_with_nan_pads(spec, lengths, seed);
    let mut y = vec![f64::NAN; x.len()];
    masked_softmax::reference::forward_into(spec, lengths, &x, &mut y).unwrap();
    for (y, x) in y.iter_mut().zip(&x) {
        if x.is_nan() {
            *y = f64::NAN;
        }
    }
    (y, scores_with_nan_pads(spec, lengths, seed ^ 0x9e37_79b9))
}

/// Scores whose rows cycle through the contract's special cases (NaN in every pad and gap):
/// all valid scores -inf; one NaN; one +inf; some -inf among finite ones; huge scores of
/// both signs (+-3e38: no finite score may overflow, whatever the scale); equal scores; one
/// huge score among ordinary ones; f32/bf16 subnormals; f16 subnormals; and one plain
/// random row.
pub fn special_scores(spec: &Spec, lengths: Lengths, seed: u64) -> Vec<f64> {
    let mut x = scores_with_nan_pads(spec, lengths, seed);
    let shape = spec.shape;
    for row in 0..shape.rows().unwrap() {
        let r = &mut x[row * shape.row_stride..row * shape.row_stride + shape.k_len];
        let valid: Vec<usize> = (0..r.len()).filter(|&j| !r[j].is_nan()).collect();
        let Some(&first) = valid.first() else {
            continue;
        };
        let last = *valid.last().unwrap();
        match row % 10 {
            0 => valid.iter().for_each(|&j| r[j] = f64::NEG_INFINITY),
            1 => r[last] = f64::NAN,
            2 => r[first] = f64::INFINITY,
            3 => valid
                .iter()
                .step_by(2)
                .for_each(|&j| r[j] = f64::NEG_INFINITY),
            4 => valid
                .iter()
                .enumerate()
                .for_each(|(n, &j)| r[j] = if n % 2 == 0 { 3e38 } else { -3e38 }),
            5 => valid.iter().for_each(|&j| r[j] = 1.5),
            6 => r[first] = 3e38,
            7 => valid
                .iter()
                .enumerate()
                .for_each(|(n, &j)| r[j] = (n % 5) as f64 * 1e-39),
            8 => valid
                .iter()
                .enumerate()
                .for_each(|(n, &j)| r[j] = (n % 5) as f64 * 1e-6),
            _ => {}
        }
    }
    x
}

/// Both directions, with the short names trials use.
pub const DIRECTIONS: [(Direction, &str); 2] =
    [(Direction::Forward, "fwd"), (Direction::Backward, "bwd")];

/// Inputs of the special-value trials for `direction`, from `special_scores`: the scores
/// (forward), or `y` and `dy` (backward). The backward's `y` is the forward's output on
/// special scores (NaN rows, zero rows, probabilities of exactly 1 and 0, NaN pads); its `dy`
/// is special scores again, the huge ones cut from 3e38 to 1e30, so that the kernels' f32
/// sums of `y * dy` overflow only where the f64 reference's result does.
pub fn special_inputs(direction: Direction, spec: &Spec, lengths: Lengths) -> Vec<Vec<f64>> {
    let x = special_scores(spec, lengths, 13);
    match direction {
        Direction::Forward => vec![x],
        Direction::Backward => {
            let mut y = vec![f64::NAN; x.len()];
            masked_softmax::reference::forward_into(spec, lengths, &x, &mut y).unwrap();
            for (y, x) in y.iter_mut().zip(&x) {
                if x.is_nan() {
                    *y = f64::NAN; // keep the pads NaN
                }
            }
            let dy = special_scores(spec, lengths, 29)
                .into_iter()
                .map(|v| {
                    if v.is_finite() {
                        v.clamp(-1e30, 1e30)
                    } else {
                        v
                    }
                })
                .collect();
            vec![y, dy]
        }
    }
}

/// One special-values trial: type, direction, row length, scale, and whether the row stride
/// keeps 16-byte packs aligned (`special_stride`).
#[derive(Clone, Copy, Debug)]
pub struct SpecialTrial {
    pub dtype: DType,
    pub direction: Direction,
    pub k_len: usize,
    pub scale: f32,
    pub aligned: bool,
}

impl SpecialTrial {
    /// The trial name's tail, e.g. `fwd_f32_k5000_odd_scale1e0`.
    pub fn name(&self) -> String {
        let d = DIRECTIONS
            .iter()
            .find(|(direction, _)| *direction == self.direction)
            .map_or("?", |(_, d)| d);
        let layout = if self.aligned { "aligned" } else { "odd" };
        format!(
            "{d}_{}_k{}_{layout}_scale{:e}",
            self.dtype.kernel_suffix(),
            self.k_len,
            self.scale
        )
    }
}

/// Every type, direction, layout and each of `k_lens` and `scales`.
pub fn special_trials(k_lens: &[usize], scales: &[f32]) -> Vec<SpecialTrial> {
    let mut trials = Vec::new();
    for dtype in DType::ALL {
        for (direction, _) in DIRECTIONS {
            for &k_len in k_lens {
                for &scale in scales {
                    for aligned in [false, true] {
                        trials.push(SpecialTrial {
                            dtype,
                            direction,
                            k_len,
                            scale,
                            aligned,
                        });
                    }
                }
            }
        }
    }
    trials
}

/// The special-values problem of a trial: 4 batch entries of 5 query rows of `k_len` keys
/// (key lengths k_len, 1, half and k_len), and its inputs from `special_inputs`, in the
/// storage type.
pub struct SpecialCase<T> {
    pub spec: Spec,
    pub kv: [i32; 4],
    pub inputs: Vec<Vec<T>>,
}

impl<T: Element> SpecialCase<T> {
    pub fn new(t: SpecialTrial) -> Self {
        let spec = Spec::new(
            Shape::new(4, 1, 5, t.k_len).with_row_stride(special_stride(t.k_len, t.aligned)),
        )
        .scale(t.scale);
        let kv = [t.k_len as i32, 1, (t.k_len as i32 + 1) / 2, t.k_len as i32];
        let inputs = special_inputs(t.direction, &spec, Lengths::keys(&kv))
            .into_iter()
            .map(|v| v.into_iter().map(T::from_f64).collect())
            .collect();
        SpecialCase { spec, kv, inputs }
    }

    pub fn lengths(&self) -> Lengths<'_> {
        Lengths::keys(&self.kv)
    }

    /// The inputs as slices: `[x]` forward, `[y, dy]` backward.
    pub fn input_slices(&self) -> Vec<&[T]> {
        self.inputs.iter().map(Vec::as_slice).collect()
    }
}

/// Row stride of the special-values trials: odd (rows at every place against 16-byte
/// boundaries: the vector kernels see them shifted, short ones take single elements) or
/// rounded up to 8 elements, so every row is 16-byte aligned.
pub fn special_stride(k_len: usize, aligned: bool) -> usize {
    if aligned {
        k_len.next_multiple_of(8)
    } else {
        (k_len + 1) | 1
    }
}

/// Scales that exercise the key mapping: negative, zero, tiny, huge, and so huge that
/// `|scale| * log2(e)` overflows f32 (past about 2.4e38).
pub const SPECIAL_SCALES: [f32; 8] = [1.0, -0.7, 0.0, 1e-30, 1e-38, -1e-40, 1e30, -3e38];

/// A random valid contract for fuzzing the kernels, from `seed`: any shape with up to about
/// `max_elements` scores (k_len 1 to 3000, skewed small), any row stride, padding side,
/// query lengths or not, causal or not with or without a window, and a scale from the
/// awkward ones (negative, zero, tiny, huge) as often as the plain ones.
pub fn random_contract(seed: u64, max_elements: usize) -> (Spec, Vec<i32>, Option<Vec<i32>>) {
    let mut rng = Lcg(seed);
    let k_len = match rng.range(0, 3) {
        0 => rng.range(1, 8),
        1 => rng.range(1, 80),
        2 => rng.range(1, 600),
        _ => rng.range(1, 3000),
    } as usize;
    let max_rows = (max_elements / k_len).max(1) as i64;
    let batch = rng.range(1, 4.min(max_rows)) as usize;
    let heads = rng.range(1, 3.min(max_rows / batch as i64).max(1)) as usize;
    let q_len = rng.range(1, 6.min(max_rows / (batch * heads) as i64).max(1)) as usize;
    let row_stride = k_len + rng.range(0, 1) as usize * rng.range(1, 9) as usize;
    let shape = Shape::new(batch, heads, q_len, k_len).with_row_stride(row_stride);
    let length = |rng: &mut Lcg, max: usize| match rng.range(0, 4) {
        0 => 0,
        1 => max as i32,
        _ => rng.range(0, max as i64) as i32,
    };
    let kv: Vec<i32> = (0..batch).map(|_| length(&mut rng, k_len)).collect();
    let q = (rng.range(0, 1) == 1).then(|| (0..batch).map(|_| length(&mut rng, q_len)).collect());
    let causal = match rng.range(0, 3) {
        0 | 1 => None,
        2 => Some(Causal { window: None }),
        _ => Some(Causal {
            window: Some(rng.range(1, k_len as i64 + 2) as usize),
        }),
    };
    let scale = match rng.range(0, 8) {
        0 => 0.0,
        1 => -1.3,
        2 => 1e-30,
        3 => 3e30,
        4 => -1e-39,
        _ => (rng.uniform() * 4.0) as f32 + 0.01,
    };
    let padding = if rng.range(0, 1) == 0 {
        Padding::Right
    } else {
        Padding::Left
    };
    (
        Spec {
            shape,
            padding,
            causal,
            scale,
        },
        kv,
        q,
    )
}

/// Calls `f::<T>(args..)` with `T` the storage type of `dtype`.
#[allow(unused_macros)]
macro_rules! dispatch {
    ($dtype:expr, $f:ident $(, $arg:expr)*) => {
        match $dtype {
            masked_softmax::DType::F32 => $f::<f32>($($arg),*),
            masked_softmax::DType::F16 => $f::<masked_softmax::f16>($($arg),*),
            masked_softmax::DType::BF16 => $f::<masked_softmax::bf16>($($arg),*),
        }
    };
}
#[allow(unused_imports)]
pub(crate) use dispatch;

/// `k_len` on both sides of each kernel's capacity, for the trials that run every kernel by
/// name (the GPU suite adds longer rows the emulator cannot afford). Odd ones have odd
/// strides, so the vector kernels see them shifted: 1021 fills 1024 columns of f32 packs
/// and 16377 the 16384 of the 16-bit raw-pair block_regs with the lead at its largest.
/// 70001 cuts single-element rows into 35 of the split kernels' chunks (more than a
/// warp's worth of partials to merge), f32 packs into 9, 16-bit ones into 5.
pub const EVERY_KERNEL_K_LENS: &[usize] = &[
    1, 3, 7, 33, 64, 1000, 1021, 1032, 4097, 8192, 8200, 16377, 16384, 16388, 20001, 70001,
];

/// The "every kernel by name" trials: `(name, dtype, direction, case)` for each type, each
/// of `k_lens`, right padding and causal-left-with-query-lengths, forward and backward.
pub fn every_kernel_cases(
    k_lens: &[usize],
    max_elements: usize,
) -> Vec<(String, DType, Direction, Case)> {
    let mut cases = Vec::new();
    for dtype in DType::ALL {
        for &k_len in k_lens {
            // Long rows also with a sliding window: a window of a few keys deep inside a row
            // the looping and split kernels cut into chunks, empty chunks on both sides.
            let long = k_len >= 16384;
            let modes = [MODES[0], MODES[5]]
                .into_iter()
                .chain(long.then_some(MODES[6]));
            for mode in modes {
                let case = Case::new(mode, k_len, max_elements);
                for direction in [Direction::Forward, Direction::Backward] {
                    let name = format!(
                        "every_kernel_{direction:?}_{}_{}_k{k_len}",
                        mode.name,
                        dtype.kernel_suffix()
                    );
                    cases.push((name, dtype, direction, case.clone()));
                }
            }
        }
    }
    cases
}
