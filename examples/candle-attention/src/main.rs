//! A multi-head self-attention layer over a padded batch, with the attention softmax done
//! two ways on candle Tensors:
//!
//! - masked-softmax: `masked_softmax(scores, lengths, lengths, causal, scale)`, one op;
//! - candle's own path: a boolean mask built from the lengths, `masked_fill` with -inf
//!   (`where_cond`), `candle_nn::ops::softmax_last_dim`, and then the rows with no valid
//!   key, which that path leaves as NaN, set to zero by hand.
//!
//! For f32, f16 and bf16 it prints the max abs difference of the probabilities and of the
//! layer's output, and the median time of each softmax. Runs on the CPU (the crate's
//! reference); built with `--no-default-features --features cuda`, on the first GPU.
//!
//!     cargo run --release --manifest-path examples/candle-attention/Cargo.toml

use std::time::Instant;

use candle_core::{D, DType, Device, Result, Tensor};
use masked_softmax::candle::{MaskOptions, masked_softmax};

const BATCH: usize = 4;
const HEADS: usize = 8;
const SEQ: usize = 128;
const HEAD_DIM: usize = 32;
const MODEL: usize = HEADS * HEAD_DIM;
/// Tokens per sequence: full, partial, short, and a single token.
const LENGTHS: [u32; BATCH] = [128, 77, 31, 1];

struct Attention {
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
}

impl Attention {
    fn new(device: &Device) -> Result<Self> {
        let std = (1.0 / MODEL as f64).sqrt() as f32;
        let w = |seed| normal((MODEL, MODEL), std, seed, device);
        Ok(Attention {
            wq: w(0)?,
            wk: w(1)?,
            wv: w(2)?,
            wo: w(3)?,
        })
    }

    /// `[batch, seq, model]` -> `[batch, heads, seq, head_dim]`.
    fn heads(x: &Tensor) -> Result<Tensor> {
        x.reshape((BATCH, SEQ, HEADS, HEAD_DIM))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Scores `q kᵀ` (unscaled, f32) and the values.
    fn scores_and_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x2 = x.reshape((BATCH * SEQ, MODEL))?;
        let q = Self::heads(&x2.matmul(&self.wq)?)?;
        let k = Self::heads(&x2.matmul(&self.wk)?)?;
        let v = Self::heads(&x2.matmul(&self.wv)?)?;
        let scores = q.matmul(&k.transpose(2, 3)?.contiguous()?)?;
        Ok((scores, v))
    }

    /// `softmax(scores) v`, heads merged, output projection.
    fn output(&self, probs: &Tensor, v: &Tensor) -> Result<Tensor> {
        let ctx = probs.to_dtype(DType::F32)?.matmul(v)?; // [b, h, s, d]
        let ctx = ctx
            .transpose(1, 2)?
            .contiguous()?
            .reshape((BATCH * SEQ, MODEL))?;
        ctx.matmul(&self.wo)?.reshape((BATCH, SEQ, MODEL))
    }
}

/// Pseudo-random values with mean 0 and standard deviation `std` (sums of uniforms from a
/// fixed generator): the same weights and inputs every run.
fn normal<S: Into<candle_core::Shape>>(
    shape: S,
    std: f32,
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    let shape = shape.into();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let values: Vec<f32> = (0..shape.elem_count())
        .map(|_| ((0..4).map(|_| uniform()).sum::<f32>() - 2.0) * std * 3f32.sqrt())
        .collect();
    Tensor::from_vec(values, shape, device)
}

/// candle's path: mask from the lengths (causal, padded keys and queries), masked_fill with
/// -inf, softmax_last_dim, then the fully masked rows (padded queries), NaN there, zeroed.
/// `softmax_last_dim` is candle's fused kernel, which has no backward: for gradients the
/// composed `candle_nn::ops::softmax` runs instead (`differentiable`).
fn candle_softmax(
    scores: &Tensor,
    scale: f64,
    device: &Device,
    differentiable: bool,
) -> Result<(Tensor, usize)> {
    let mut valid = vec![0u8; BATCH * SEQ * SEQ];
    for (b, &len) in LENGTHS.iter().enumerate() {
        let len = len as usize;
        for i in 0..len {
            for j in 0..=i {
                valid[(b * SEQ + i) * SEQ + j] = 1;
            }
        }
    }
    let mask =
        Tensor::from_vec(valid, (BATCH, 1, SEQ, SEQ), device)?.broadcast_as(scores.shape())?;
    let neg_inf = Tensor::new(f32::NEG_INFINITY, device)?
        .to_dtype(scores.dtype())?
        .broadcast_as(scores.shape())?;
    let filled = mask.where_cond(&(scores * scale)?, &neg_inf)?;
    let probs = if differentiable {
        candle_nn::ops::softmax(&filled, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&filled)?
    };
    // Rows without a valid key came out NaN: count them, then zero them.
    let nan = probs
        .ne(&probs)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as usize;
    let row_valid = mask.max_keepdim(D::Minus1)?.broadcast_as(scores.shape())?;
    let zeros = probs.zeros_like()?;
    Ok((row_valid.where_cond(&probs, &zeros)?, nan))
}

fn median_ms(mut f: impl FnMut() -> Result<Tensor>, device: &Device) -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        let t = f()?;
        device.synchronize()?;
        drop(t);
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()
}

fn main() -> Result<()> {
    let device = if cfg!(feature = "cuda") {
        Device::new_cuda(0)?
    } else {
        Device::Cpu
    };
    println!(
        "multi-head self-attention on {device:?}: batch {BATCH}, {HEADS} heads, {SEQ} tokens, head dim {HEAD_DIM}, lengths {LENGTHS:?}, causal"
    );
    let layer = Attention::new(&device)?;
    let x = normal((BATCH, SEQ, MODEL), 1.0, 4, &device)?;
    let (scores, v) = layer.scores_and_values(&x)?;
    let lengths = Tensor::new(&LENGTHS, &device)?;
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    let options = MaskOptions::default().causal().scale(scale as f32);

    println!(
        "{:<5} {:>11} {:>12} {:>13} {:>15} {:>9} {:>10} {:>9}",
        "type",
        "max |dp|",
        "max |d out|",
        "ours vs f64",
        "candle vs f64",
        "ours ms",
        "candle ms",
        "NaN rows"
    );
    let mut worst = 0f32;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let s = scores.to_dtype(dtype)?;
        let ours = masked_softmax(&s, Some(&lengths), Some(&lengths), options)?;
        let (theirs, nan) = candle_softmax(&s, scale, &device, false)?;
        let dp = max_abs_diff(&ours, &theirs)?;
        // The softmax of the same (rounded) scores in f64 (the crate's CPU reference, on any
        // device), rounded to f32: how far each path is from the exact answer.
        let cpu = Device::Cpu;
        let exact = masked_softmax(
            &s.to_device(&cpu)?.to_dtype(DType::F32)?,
            Some(&lengths.to_device(&cpu)?),
            Some(&lengths.to_device(&cpu)?),
            options,
        )?;
        let (ours_err, theirs_err) = (
            max_abs_diff(&ours.to_device(&cpu)?, &exact)?,
            max_abs_diff(&theirs.to_device(&cpu)?, &exact)?,
        );
        let dout = max_abs_diff(&layer.output(&ours, &v)?, &layer.output(&theirs, &v)?)?;
        let ours_ms = median_ms(
            || masked_softmax(&s, Some(&lengths), Some(&lengths), options),
            &device,
        )?;
        let theirs_ms = median_ms(
            || candle_softmax(&s, scale, &device, false).map(|r| r.0),
            &device,
        )?;
        println!(
            "{:<5} {dp:>11.3e} {dout:>12.3e} {ours_err:>13.3e} {theirs_err:>15.3e} {ours_ms:>9.3} {theirs_ms:>10.3} {:>9}",
            format!("{dtype:?}").to_lowercase(),
            nan / SEQ
        );
        // Ours is the f64 softmax rounded once to the storage type; candle's is computed in
        // the storage type's own arithmetic: a few units in the last place apart (4 ulp of
        // 1.0 allowed; seen: about 1 for f32 and f16, 2 for bf16).
        let ulp_at_one = match dtype {
            DType::F32 => f32::EPSILON,
            DType::F16 => 2f32.powi(-10),
            _ => 2f32.powi(-7),
        };
        let tolerance = 4.0 * ulp_at_one;
        if dp > tolerance {
            candle_core::bail!("{dtype:?}: the two paths differ by {dp} > {tolerance}");
        }
        worst = worst.max(dp);
    }
    let grad = gradient_difference(&scores, &lengths, scale, options, &device)?;
    println!(
        "PASS: the paths agree within each type's rounding (worst {worst:.3e}); the padded query rows are NaN in candle's path until zeroed, exact zeros in ours; f32 gradients of the scores through both paths (candle autograd) differ by at most {grad:.3e}"
    );
    Ok(())
}

/// The gradient of a weighted sum of the probabilities with respect to the scores, through
/// each path (ours: the op's backward kernel; candle's: the backward of its own ops), in
/// f32: their max abs difference, which must stay at f32 rounding.
fn gradient_difference(
    scores: &Tensor,
    lengths: &Tensor,
    scale: f64,
    options: MaskOptions,
    device: &Device,
) -> Result<f32> {
    let weights = normal(scores.shape(), 1.0, 5, device)?;
    let grad_of = |probs: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<Tensor> {
        let var = candle_core::Var::from_tensor(scores)?;
        let loss = (probs(var.as_tensor())? * &weights)?.sum_all()?;
        let grads = loss.backward()?;
        match grads.get(var.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => candle_core::bail!("no gradient reached the scores"),
        }
    };
    let ours = grad_of(&|s| masked_softmax(s, Some(lengths), Some(lengths), options))?;
    let theirs = grad_of(&|s| candle_softmax(s, scale, device, true).map(|r| r.0))?;
    let diff = max_abs_diff(&ours, &theirs)?;
    let largest = ours.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    // Both are f32 computations of the same gradient: a few units in the last place of its
    // largest entry apart.
    let tolerance = 64.0 * f32::EPSILON * largest.max(1.0);
    if diff.is_nan() || diff > tolerance {
        candle_core::bail!("f32 gradients differ by {diff} > {tolerance}");
    }
    Ok(diff)
}
