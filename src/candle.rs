//! candle integration (feature `candle`): the masked softmax and its gradient on candle
//! [`Tensor`]s, as a candle custom op with autograd.
//!
//! Scores are `[batch, heads, q_len, k_len]` in f32, f16 or bf16 (any layout; a strided
//! one is made contiguous first), lengths are integer tensors of `batch` entries. On a CPU
//! tensor the crate's f64 CPU reference computes the result, so the same model code runs
//! without a GPU. With feature `candle-cuda`, on a CUDA tensor the crate's kernels run on
//! candle's stream, reading the lengths from the device (clamped into range, as the
//! contract says of device lengths; on the CPU, out-of-range lengths are an error). On a
//! GPU the lengths must be u32, i64 or u8: candle's CUDA backend has no conversions from
//! other integer types, and says so with an error.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use masked_softmax::candle::{masked_softmax, MaskOptions};
//!
//! # fn main() -> candle_core::Result<()> {
//! let scores = Tensor::arange(0f32, 24., &Device::Cpu)?.reshape((4, 1, 1, 6))?;
//! let lengths = Tensor::new(&[4u32, 1, 6, 3], &Device::Cpu)?;
//! let probs = masked_softmax(&scores, Some(&lengths), None, MaskOptions::default())?;
//! let rows = probs.squeeze(1)?.squeeze(1)?.to_vec2::<f32>()?;
//! assert_eq!(rows[1], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]); // one valid key
//! assert_eq!(rows[0][4..], [0.0, 0.0]); // padding is exactly 0
//! # Ok(())
//! # }
//! ```
//!
//! `candle-cuda` turns on candle-core's `cuda` feature, which links cudarc dynamically
//! (`dynamic-linking`); this crate loads it at run time by default (`dynamic-loading`), and
//! cudarc accepts one of the two. Build with `--no-default-features --features candle-cuda`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType as CandleDType, Layout, Tensor};

use crate::contract::{Causal, Lengths, Padding, Shape, Spec};
use crate::dtype::Element;
use crate::reference;
use crate::{bf16, f16};

/// The mask options of the contract; the tensors give the shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskOptions {
    /// Which end of each sequence the padding is at (keys and queries alike).
    pub padding: Padding,
    /// Causal masking (bottom-right aligned), with an optional sliding window.
    pub causal: Option<Causal>,
    /// Multiplier applied to every valid score before the softmax.
    pub scale: f32,
}

impl Default for MaskOptions {
    /// Right padding, no causal mask, scale 1.
    fn default() -> Self {
        MaskOptions {
            padding: Padding::Right,
            causal: None,
            scale: 1.0,
        }
    }
}

impl MaskOptions {
    /// With padding on `padding`'s side.
    pub fn padding(self, padding: Padding) -> Self {
        MaskOptions { padding, ..self }
    }

    /// Causal, bottom-right aligned (a sliding window set before stays).
    pub fn causal(self) -> Self {
        MaskOptions {
            causal: Some(self.causal.unwrap_or(Causal { window: None })),
            ..self
        }
    }

    /// Causal with a sliding window of `window` keys (the diagonal included).
    pub fn sliding_window(self, window: usize) -> Self {
        MaskOptions {
            causal: Some(Causal {
                window: Some(window),
            }),
            ..self
        }
    }

    /// Scores multiplied by `scale` before the softmax.
    pub fn scale(self, scale: f32) -> Self {
        MaskOptions { scale, ..self }
    }
}

/// `softmax(scale * scores)` over each row's valid keys, exact zeros elsewhere, as a
/// tensor of the scores' shape and type; differentiable with respect to `scores`.
/// `kv_lens` and `q_lens` hold `batch` integers (`None`: every key, or every query, valid).
pub fn masked_softmax(
    scores: &Tensor,
    kv_lens: Option<&Tensor>,
    q_lens: Option<&Tensor>,
    options: MaskOptions,
) -> candle_core::Result<Tensor> {
    let (op, lengths) = prepare(scores, kv_lens, q_lens, options)?;
    scores.contiguous()?.apply_op2(&lengths, Forward(op))
}

/// The gradient of [`masked_softmax`] with respect to the scores, from its output `probs`
/// and the incoming gradient `grad`: `scale * probs * (grad - sum_valid(probs * grad))`,
/// exact zeros on masked positions. Not itself differentiable: its result carries no
/// gradient of its own (no second-order gradients through it).
pub fn masked_softmax_backward(
    probs: &Tensor,
    grad: &Tensor,
    kv_lens: Option<&Tensor>,
    q_lens: Option<&Tensor>,
    options: MaskOptions,
) -> candle_core::Result<Tensor> {
    let (op, lengths) = prepare(probs, kv_lens, q_lens, options)?;
    backward_op(op, probs, grad, &lengths)
}

fn backward_op(
    op: Op,
    probs: &Tensor,
    grad: &Tensor,
    lengths: &Tensor,
) -> candle_core::Result<Tensor> {
    if grad.shape() != probs.shape() || grad.dtype() != probs.dtype() {
        candle_core::bail!(
            "masked softmax backward: gradient {:?} {:?} against probabilities {:?} {:?}",
            grad.shape(),
            grad.dtype(),
            probs.shape(),
            probs.dtype()
        );
    }
    probs
        .contiguous()?
        .apply_op3_no_bwd(&grad.contiguous()?, lengths, &Backward(op))
}

/// What the custom ops need besides the tensors.
#[derive(Debug, Clone, Copy)]
struct Op {
    spec: Spec,
    has_kv: bool,
    has_q: bool,
}

impl Op {
    fn batch(&self) -> usize {
        self.spec.shape.batch
    }
}

/// The spec from the scores' shape, and one tensor of `2 * batch` lengths (keys, then
/// queries; zeros where absent) on the scores' device: i32 on the CPU (the reference checks
/// the range: out-of-range host lengths are an error), u32 clamped into range on a GPU
/// (candle's CUDA backend has no casts to i32, and device lengths are clamped by contract;
/// the kernels read the u32 words as i32, equal once clamped below 2^31).
fn prepare(
    scores: &Tensor,
    kv_lens: Option<&Tensor>,
    q_lens: Option<&Tensor>,
    options: MaskOptions,
) -> candle_core::Result<(Op, Tensor)> {
    let (batch, heads, q_len, k_len) = scores.dims4()?;
    if !matches!(
        scores.dtype(),
        CandleDType::F32 | CandleDType::F16 | CandleDType::BF16
    ) {
        candle_core::bail!(
            "masked softmax: scores must be f32, f16 or bf16, not {:?}",
            scores.dtype()
        );
    }
    let spec = Spec {
        shape: Shape::new(batch, heads, q_len, k_len),
        padding: options.padding,
        causal: options.causal,
        scale: options.scale,
    };
    let elem = scores.dtype().size_in_bytes();
    spec.validate(elem).map_err(candle_core::Error::wrap)?;
    let device = scores.device();
    let on_cpu = device.is_cpu();
    let part = |lens: Option<&Tensor>, what: &str, max: usize| -> candle_core::Result<Tensor> {
        let Some(l) = lens else {
            let dtype = if on_cpu {
                CandleDType::I32
            } else {
                CandleDType::U32
            };
            return Tensor::zeros(batch, dtype, device);
        };
        if l.dims() != [batch] {
            candle_core::bail!(
                "masked softmax: {what} lengths have shape {:?}, expected [{batch}]",
                l.dims()
            );
        }
        if l.dtype().is_float() {
            candle_core::bail!("masked softmax: {what} lengths must be integers");
        }
        let l = l.to_device(device)?;
        if on_cpu {
            // Through i64, which holds every integer dtype's values exactly (candle's own
            // cast to i32 wraps): a value past i32 is an error here, as the reference's
            // range check makes any other out-of-range host length.
            let values = l.to_dtype(CandleDType::I64)?.to_vec1::<i64>()?;
            let narrowed = values
                .iter()
                .enumerate()
                .map(|(b, &v)| {
                    i32::try_from(v).map_err(|_| {
                        candle_core::Error::Msg(format!(
                            "masked softmax: {what} length {v} of batch entry {b} is outside [0, {max}]"
                        ))
                    })
                })
                .collect::<candle_core::Result<Vec<i32>>>()?;
            return Tensor::from_vec(narrowed, batch, device);
        }
        // Clamped into [0, max] in a type candle's CUDA kernels support, then u32; never
        // past i32::MAX, so that the kernels' i32 reading of the words is the same number
        // (a device length cannot exceed i32::MAX anyway).
        let max_u32 = max.min(i32::MAX as usize) as u32;
        match l.dtype() {
            CandleDType::U32 => l.minimum(max_u32),
            CandleDType::U8 => l.to_dtype(CandleDType::U32)?.minimum(max_u32),
            CandleDType::I64 => l.clamp(0i64, max_u32 as i64)?.to_dtype(CandleDType::U32),
            other => candle_core::bail!(
                "masked softmax: {what} lengths on a GPU must be u32, i64 or u8, not {other:?} \
                 (candle's CUDA backend cannot convert them)"
            ),
        }
    };
    let lengths = Tensor::cat(
        &[part(kv_lens, "key", k_len)?, part(q_lens, "query", q_len)?],
        0,
    )?;
    let op = Op {
        spec,
        has_kv: kv_lens.is_some(),
        has_q: q_lens.is_some(),
    };
    Ok((op, lengths))
}

struct Forward(Op);
struct Backward(Op);

/// A contiguous layout's element range.
fn range(layout: &Layout) -> candle_core::Result<std::ops::Range<usize>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(start..end),
        None => candle_core::bail!("masked softmax: expected a contiguous tensor"),
    }
}

/// The host lengths of the op from the lengths tensor's storage.
fn host_lengths<'a>(
    op: &Op,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<Lengths<'a>> {
    let CpuStorage::I32(all) = storage else {
        candle_core::bail!("masked softmax: lengths must be i32 here")
    };
    let all = &all[range(layout)?];
    let batch = op.batch();
    Ok(Lengths {
        kv: op.has_kv.then(|| &all[..batch]),
        q: op.has_q.then(|| &all[batch..2 * batch]),
    })
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(
        &self,
        scores: &CpuStorage,
        scores_layout: &Layout,
        lengths: &CpuStorage,
        lengths_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
        let op = &self.0;
        let lengths = host_lengths(op, lengths, lengths_layout)?;
        let scores_range = range(scores_layout)?;
        fn run<T: Element>(spec: &Spec, lengths: Lengths, x: &[T]) -> candle_core::Result<Vec<T>> {
            let mut y = vec![T::from_f64(0.0); x.len()];
            reference::forward(spec, lengths, x, &mut y).map_err(candle_core::Error::wrap)?;
            Ok(y)
        }
        let out = match scores {
            CpuStorage::F32(x) => CpuStorage::F32(run(&op.spec, lengths, &x[scores_range])?),
            CpuStorage::F16(x) => CpuStorage::F16(run::<f16>(&op.spec, lengths, &x[scores_range])?),
            CpuStorage::BF16(x) => {
                CpuStorage::BF16(run::<bf16>(&op.spec, lengths, &x[scores_range])?)
            }
            _ => candle_core::bail!("masked softmax: scores must be f32, f16 or bf16"),
        };
        Ok((out, scores_layout.shape().clone()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        scores: &candle_core::CudaStorage,
        scores_layout: &Layout,
        lengths: &candle_core::CudaStorage,
        lengths_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        let out = cuda::forward(&self.0, scores, scores_layout, lengths, lengths_layout)?;
        Ok((out, scores_layout.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        lengths: &Tensor,
        probs: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(backward_op(self.0, probs, grad, lengths)?), None))
    }
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "masked-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        probs: &CpuStorage,
        probs_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
        lengths: &CpuStorage,
        lengths_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
        let op = &self.0;
        let lengths = host_lengths(op, lengths, lengths_layout)?;
        let (yr, gr) = (range(probs_layout)?, range(grad_layout)?);
        fn run<T: Element>(
            spec: &Spec,
            lengths: Lengths,
            y: &[T],
            dy: &[T],
        ) -> candle_core::Result<Vec<T>> {
            let mut dx = vec![T::from_f64(0.0); y.len()];
            reference::backward(spec, lengths, y, dy, &mut dx).map_err(candle_core::Error::wrap)?;
            Ok(dx)
        }
        let out = match (probs, grad) {
            (CpuStorage::F32(y), CpuStorage::F32(dy)) => {
                CpuStorage::F32(run(&op.spec, lengths, &y[yr], &dy[gr])?)
            }
            (CpuStorage::F16(y), CpuStorage::F16(dy)) => {
                CpuStorage::F16(run::<f16>(&op.spec, lengths, &y[yr], &dy[gr])?)
            }
            (CpuStorage::BF16(y), CpuStorage::BF16(dy)) => {
                CpuStorage::BF16(run::<bf16>(&op.spec, lengths, &y[yr], &dy[gr])?)
            }
            _ => candle_core::bail!(
                "masked softmax backward: probabilities and gradient must both be f32, f16 or bf16"
            ),
        };
        Ok((out, probs_layout.shape().clone()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        probs: &candle_core::CudaStorage,
        probs_layout: &Layout,
        grad: &candle_core::CudaStorage,
        grad_layout: &Layout,
        lengths: &candle_core::CudaStorage,
        lengths_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        let out = cuda::backward(
            &self.0,
            (probs, probs_layout),
            (grad, grad_layout),
            (lengths, lengths_layout),
        )?;
        Ok((out, probs_layout.shape().clone()))
    }
}

/// The CUDA path: this crate's kernels on candle's stream, one handle per CUDA context.
#[cfg(feature = "candle-cuda")]
mod cuda {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    use candle_core::cuda_backend::CudaStorageSlice;
    use candle_core::{CudaStorage, Layout};
    use cudarc::driver::{CudaContext, CudaSlice, DevicePtr, DeviceRepr};

    use super::{Op, range};
    use crate::cuda::{CudaSoftmax, DeviceLengths};
    use crate::dtype::Element;

    /// The kernels, loaded once per CUDA context.
    fn handle(ctx: &Arc<CudaContext>) -> candle_core::Result<Arc<CudaSoftmax>> {
        static HANDLES: OnceLock<Mutex<HashMap<usize, Arc<CudaSoftmax>>>> = OnceLock::new();
        let mut handles = HANDLES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let key = ctx.cu_ctx() as usize;
        if let Some(h) = handles.get(&key) {
            return Ok(h.clone());
        }
        let h = Arc::new(CudaSoftmax::new(ctx).map_err(candle_core::Error::wrap)?);
        handles.insert(key, h.clone());
        Ok(h)
    }

    fn lengths_view<'a>(
        op: &Op,
        lengths: &'a CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(
        cudarc::driver::CudaView<'a, i32>,
        cudarc::driver::CudaView<'a, i32>,
    )> {
        let CudaStorageSlice::U32(all) = &lengths.slice else {
            candle_core::bail!("masked softmax: lengths must be u32 here")
        };
        let r = range(layout)?;
        let batch = op.batch();
        // SAFETY: u32 and i32 have one size and alignment, and `prepare` clamped every
        // length to at most i32::MAX, where both read the same.
        let as_i32 = |v: cudarc::driver::CudaView<'a, u32>| unsafe { v.transmute::<i32>(batch) };
        match (
            as_i32(all.slice(r.start..r.start + batch)),
            as_i32(all.slice(r.start + batch..r.start + 2 * batch)),
        ) {
            (Some(kv), Some(q)) => Ok((kv, q)),
            _ => candle_core::bail!("masked softmax: lengths tensor too short"),
        }
    }

    fn device_lengths<'a>(
        op: &Op,
        views: &'a (
            cudarc::driver::CudaView<'a, i32>,
            cudarc::driver::CudaView<'a, i32>,
        ),
    ) -> DeviceLengths<'a> {
        DeviceLengths {
            kv: op.has_kv.then_some(&views.0 as &dyn DevicePtr<i32>),
            q: op.has_q.then_some(&views.1 as &dyn DevicePtr<i32>),
        }
    }

    pub(super) fn forward(
        op: &Op,
        scores: &CudaStorage,
        scores_layout: &Layout,
        lengths: &CudaStorage,
        lengths_layout: &Layout,
    ) -> candle_core::Result<CudaStorage> {
        let device = &scores.device;
        let stream = device.cuda_stream();
        let softmax = handle(stream.context())?;
        let views = lengths_view(op, lengths, lengths_layout)?;
        let lens = device_lengths(op, &views);
        let r = range(scores_layout)?;
        fn run<T: Element + DeviceRepr>(
            softmax: &CudaSoftmax,
            stream: &Arc<cudarc::driver::CudaStream>,
            op: &Op,
            lens: DeviceLengths,
            x: &CudaSlice<T>,
            r: std::ops::Range<usize>,
        ) -> candle_core::Result<CudaSlice<T>> {
            // SAFETY: the kernel writes every element of every row (the shape is dense).
            let mut y = unsafe { stream.alloc::<T>(r.len()) }.map_err(candle_core::Error::wrap)?;
            softmax
                .forward(stream, &op.spec, lens, &x.slice(r), &mut y)
                .map_err(candle_core::Error::wrap)?;
            Ok(y)
        }
        let slice = match &scores.slice {
            CudaStorageSlice::F32(x) => {
                CudaStorageSlice::F32(run(&softmax, &stream, op, lens, x, r)?)
            }
            CudaStorageSlice::F16(x) => {
                CudaStorageSlice::F16(run(&softmax, &stream, op, lens, x, r)?)
            }
            CudaStorageSlice::BF16(x) => {
                CudaStorageSlice::BF16(run(&softmax, &stream, op, lens, x, r)?)
            }
            _ => candle_core::bail!("masked softmax: scores must be f32, f16 or bf16"),
        };
        Ok(CudaStorage {
            slice,
            device: device.clone(),
        })
    }

    pub(super) fn backward(
        op: &Op,
        (probs, probs_layout): (&CudaStorage, &Layout),
        (grad, grad_layout): (&CudaStorage, &Layout),
        (lengths, lengths_layout): (&CudaStorage, &Layout),
    ) -> candle_core::Result<CudaStorage> {
        let device = &probs.device;
        let stream = device.cuda_stream();
        let softmax = handle(stream.context())?;
        let views = lengths_view(op, lengths, lengths_layout)?;
        let lens = device_lengths(op, &views);
        let (yr, gr) = (range(probs_layout)?, range(grad_layout)?);
        #[allow(clippy::too_many_arguments)]
        fn run<T: Element + DeviceRepr>(
            softmax: &CudaSoftmax,
            stream: &Arc<cudarc::driver::CudaStream>,
            op: &Op,
            lens: DeviceLengths,
            y: &CudaSlice<T>,
            yr: std::ops::Range<usize>,
            dy: &CudaSlice<T>,
            gr: std::ops::Range<usize>,
        ) -> candle_core::Result<CudaSlice<T>> {
            // SAFETY: the kernel writes every element of every row (the shape is dense).
            let mut dx =
                unsafe { stream.alloc::<T>(yr.len()) }.map_err(candle_core::Error::wrap)?;
            softmax
                .backward(stream, &op.spec, lens, &y.slice(yr), &dy.slice(gr), &mut dx)
                .map_err(candle_core::Error::wrap)?;
            Ok(dx)
        }
        let slice = match (&probs.slice, &grad.slice) {
            (CudaStorageSlice::F32(y), CudaStorageSlice::F32(dy)) => {
                CudaStorageSlice::F32(run(&softmax, &stream, op, lens, y, yr, dy, gr)?)
            }
            (CudaStorageSlice::F16(y), CudaStorageSlice::F16(dy)) => {
                CudaStorageSlice::F16(run(&softmax, &stream, op, lens, y, yr, dy, gr)?)
            }
            (CudaStorageSlice::BF16(y), CudaStorageSlice::BF16(dy)) => {
                CudaStorageSlice::BF16(run(&softmax, &stream, op, lens, y, yr, dy, gr)?)
            }
            _ => candle_core::bail!(
                "masked softmax backward: probabilities and gradient must both be f32, f16 or bf16"
            ),
        };
        Ok(CudaStorage {
            slice,
            device: device.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn seed_scores() -> Tensor {
        let flat: Vec<f32> = crate::seed::SCORES
            .iter()
            .flatten()
            .map(|&v| v as f32)
            .collect();
        Tensor::from_vec(flat, (4, 1, 1, 6), &Device::Cpu).unwrap()
    }

    #[test]
    fn the_seed_example_on_cpu_tensors() {
        let lengths = Tensor::new(&crate::seed::LENGTHS, &Device::Cpu).unwrap();
        let probs = masked_softmax(&seed_scores(), Some(&lengths), None, MaskOptions::default())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (got, want) in probs.iter().zip(crate::seed::PUBLISHED.iter().flatten()) {
            assert!((*got as f64 - want).abs() <= 0.5e-4, "{got} vs {want}");
        }
    }

    #[test]
    fn every_type_and_mask_option_matches_the_reference() {
        let (b, h, q, k) = (3, 2, 5, 7);
        let kv = [7u32, 3, 0];
        let ql = [5i64, 2, 4];
        let options = MaskOptions::default()
            .padding(Padding::Left)
            .sliding_window(3)
            .scale(-0.7);
        let scores = Tensor::randn(0f32, 2.0, (b, h, q, k), &Device::Cpu).unwrap();
        for dtype in [CandleDType::F32, CandleDType::F16, CandleDType::BF16] {
            let x = scores.to_dtype(dtype).unwrap();
            let kv_t = Tensor::new(&kv, &Device::Cpu).unwrap();
            let q_t = Tensor::new(&ql, &Device::Cpu).unwrap();
            let y = masked_softmax(&x, Some(&kv_t), Some(&q_t), options).unwrap();
            assert_eq!((y.dims(), y.dtype()), (x.dims(), dtype));
            let spec = Spec::new(Shape::new(b, h, q, k))
                .padding(Padding::Left)
                .sliding_window(3)
                .scale(-0.7);
            let kv32: Vec<i32> = kv.iter().map(|&v| v as i32).collect();
            let q32: Vec<i32> = ql.iter().map(|&v| v as i32).collect();
            let lengths = Lengths {
                kv: Some(&kv32),
                q: Some(&q32),
            };
            let xs = x.to_dtype(CandleDType::F32).unwrap().flatten_all().unwrap();
            let ys = y.to_dtype(CandleDType::F32).unwrap().flatten_all().unwrap();
            let (xs, ys) = (xs.to_vec1::<f32>().unwrap(), ys.to_vec1::<f32>().unwrap());
            // The same f64 reference on the same (rounded) inputs: equal after rounding.
            let mut want = vec![0f32; xs.len()];
            reference::forward_into(&spec, lengths, &xs, &mut want).unwrap();
            for (i, (g, w)) in ys.iter().zip(&want).enumerate() {
                let tol = match dtype {
                    CandleDType::F32 => 1e-6,
                    CandleDType::F16 => 1e-3,
                    _ => 8e-3,
                };
                assert!((g - w).abs() <= tol, "{dtype:?} element {i}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn gradients_flow_through_candle_autograd() {
        // d/dx of sum(w * masked_softmax(x)) against central differences of the forward.
        let (b, h, q, k) = (2, 1, 3, 5);
        let kv = Tensor::new(&[5u32, 2], &Device::Cpu).unwrap();
        let options = MaskOptions::default().causal().scale(0.9);
        let x0 = Tensor::randn(0f32, 1.0, (b, h, q, k), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (b, h, q, k), &Device::Cpu).unwrap();
        let x = Var::from_tensor(&x0).unwrap();
        let loss = masked_softmax(x.as_tensor(), Some(&kv), None, options)
            .unwrap()
            .mul(&w)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let dx = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap();
        let dx = dx.to_vec1::<f32>().unwrap();
        let base = x0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let f = |v: &[f32]| -> f64 {
            let t = Tensor::from_vec(v.to_vec(), (b, h, q, k), &Device::Cpu).unwrap();
            let y = masked_softmax(&t, Some(&kv), None, options).unwrap();
            let s = y.mul(&w).unwrap().sum_all().unwrap();
            s.to_scalar::<f32>().unwrap() as f64
        };
        let eps = 1e-2f32;
        for i in 0..base.len() {
            let (mut up, mut down) = (base.clone(), base.clone());
            up[i] += eps;
            down[i] -= eps;
            let numeric = (f(&up) - f(&down)) / (2.0 * eps as f64);
            assert!(
                (numeric - dx[i] as f64).abs() <= 2e-3,
                "element {i}: autograd {} vs finite difference {numeric}",
                dx[i]
            );
        }
        // Masked positions get exactly zero gradient.
        let probs = masked_softmax(&x0, Some(&kv), None, options).unwrap();
        let zero = probs.eq(0f32).unwrap().to_dtype(CandleDType::F32).unwrap();
        let leaked = (zero.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .iter()
            .zip(&dx)
            .filter(|(z, d)| **z == 1.0 && **d != 0.0)
            .count();
        assert_eq!(leaked, 0);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let x = Tensor::zeros((2, 1, 1, 4), CandleDType::F32, &Device::Cpu).unwrap();
        let bad_len = Tensor::new(&[5u32, 1], &Device::Cpu).unwrap();
        assert!(masked_softmax(&x, Some(&bad_len), None, MaskOptions::default()).is_err());
        let wrong_size = Tensor::new(&[1u32, 1, 1], &Device::Cpu).unwrap();
        assert!(masked_softmax(&x, Some(&wrong_size), None, MaskOptions::default()).is_err());
        let float_len = Tensor::new(&[1f32, 1.], &Device::Cpu).unwrap();
        assert!(masked_softmax(&x, Some(&float_len), None, MaskOptions::default()).is_err());
        let ints = Tensor::zeros((2, 1, 1, 4), CandleDType::U32, &Device::Cpu).unwrap();
        assert!(masked_softmax(&ints, None, None, MaskOptions::default()).is_err());
        let rank3 = Tensor::zeros((2, 1, 4), CandleDType::F32, &Device::Cpu).unwrap();
        assert!(masked_softmax(&rank3, None, None, MaskOptions::default()).is_err());
        let nan_scale = MaskOptions::default().scale(f32::NAN);
        assert!(masked_softmax(&x, None, None, nan_scale).is_err());
        // Lengths past i32 are errors that quote them, not wrapped into range (2^32 + 2
        // once read as 2).
        let huge = Tensor::new(&[(1i64 << 32) + 2, 1], &Device::Cpu).unwrap();
        let err = masked_softmax(&x, Some(&huge), None, MaskOptions::default()).unwrap_err();
        assert!(err.to_string().contains("4294967298"), "{err}");
        let huge_u32 = Tensor::new(&[3_000_000_000u32, 1], &Device::Cpu).unwrap();
        let err = masked_softmax(&x, Some(&huge_u32), None, MaskOptions::default()).unwrap_err();
        assert!(err.to_string().contains("3000000000"), "{err}");
        let negative = Tensor::new(&[-1i64, 1], &Device::Cpu).unwrap();
        assert!(masked_softmax(&x, Some(&negative), None, MaskOptions::default()).is_err());
    }

    #[test]
    fn causal_keeps_a_sliding_window_set_before_it() {
        let window = Some(Causal { window: Some(2) });
        assert_eq!(
            MaskOptions::default().sliding_window(2).causal().causal,
            window
        );
        assert_eq!(
            MaskOptions::default().causal().sliding_window(2).causal,
            window
        );
        assert_eq!(
            MaskOptions::default().causal().causal,
            Some(Causal { window: None })
        );
    }
}
