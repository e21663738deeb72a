//! The kernels on a GPU, forward and backward, checked against the CPU reference: the seed
//! example, every mask mode and storage type over `k_len` from 1 to 2^20 + 1, row strides
//! that break 16-byte alignment, NaN in every pad, outputs poisoned before the launch,
//! in-place runs, reruns bit-identical, host and device lengths alike, device lengths out
//! of range, CUDA graph capture, misuse caught before launch.
//!
//! Without a GPU (or without kernels in this build) every test is reported as ignored with
//! the reason; `MASKED_SOFTMAX_REQUIRE_GPU=1` (set by the GPU bundle) makes that a failure.

mod common;

use common::dispatch;
use std::sync::Arc;

use common::{
    Case, EVERY_KERNEL_K_LENS, Runs, SPECIAL_SCALES, SpecialCase, SpecialTrial, backward_inputs,
    check_runs, forward_matrix, random_contract, scores_with_nan_pads, special_trials,
};
use cudarc::driver::{CudaContext, DeviceRepr};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use masked_softmax::cuda::{CudaSoftmax, DeviceLengths, LengthsArg, open_device};
use masked_softmax::plan::{
    Buffers, ClusterResidency, Direction, FetchAhead, KernelKind, KernelOccupancy,
};
use masked_softmax::{DType, Element, Error, Lengths, Padding, Shape, Spec, compare, f16, seed};

struct Gpu {
    ctx: Arc<CudaContext>,
    softmax: CudaSoftmax,
    /// The same kernels with `set_l2_hints(false)` (the streaming kernels' other loads).
    plain_l2: CudaSoftmax,
    /// The same kernels with `set_next_row_prefetch(true)` (the block kernels' prefetching
    /// instances).
    prefetch: CudaSoftmax,
    /// The same kernels with `set_weight_cache(false)` (the 16-bit forward raw-pair
    /// kernels' loop that computes each weight twice, which no planned launch on an H100
    /// or H200 runs at the usual scale).
    no_cache: CudaSoftmax,
}

fn open_gpu() -> Result<Gpu, String> {
    if !masked_softmax::cuda::kernels_built() {
        return Err(Error::KernelsNotBuilt.to_string());
    }
    let ctx = open_device(0).map_err(|e| e.to_string())?;
    let softmax = CudaSoftmax::new(&ctx).map_err(|e| e.to_string())?;
    let mut plain_l2 = softmax.share();
    plain_l2.set_l2_hints(false);
    let mut prefetch = softmax.share();
    prefetch.set_next_row_prefetch(true);
    let mut no_cache = softmax.share();
    no_cache.set_weight_cache(false);
    Ok(Gpu {
        ctx,
        softmax,
        plain_l2,
        prefetch,
        no_cache,
    })
}

type TestResult = Result<(), Failed>;

const MAX_ELEMENTS: usize = 1 << 20;

/// Runs a direction on the GPU out of place (twice, into NaN-poisoned outputs), in place,
/// and once more with host lengths, with `host` lengths for the reference and `device`
/// ones (possibly out of range) for the kernel; checks the runs against the contract and
/// the host-lengths run bit-identical to the device-lengths one. `inputs` are `[x]`
/// (forward) or `[y, dy]` (backward).
fn check<T: Element + DeviceRepr>(
    g: &Gpu,
    direction: Direction,
    spec: &Spec,
    host: Lengths,
    device: (Option<&[i32]>, Option<&[i32]>),
    inputs: &[&[T]],
) -> TestResult {
    let stream = g.ctx.new_stream()?;
    let kv = device.0.map(|l| stream.clone_htod(l)).transpose()?;
    let q = device.1.map(|l| stream.clone_htod(l)).transpose()?;
    let device_lengths = DeviceLengths {
        kv: kv.as_ref().map(|l| l as _),
        q: q.as_ref().map(|l| l as _),
    };
    let ins = inputs
        .iter()
        .map(|v| stream.clone_htod(*v))
        .collect::<Result<Vec<_>, _>>()?;
    let poison = vec![T::from_f64(f64::NAN); inputs[0].len()];
    let run = |lengths: LengthsArg| -> Result<Vec<T>, Failed> {
        let mut out = stream.clone_htod(&poison)?;
        match direction {
            Direction::Forward => g
                .softmax
                .forward(&stream, spec, lengths, &ins[0], &mut out)?,
            Direction::Backward => g
                .softmax
                .backward(&stream, spec, lengths, &ins[0], &ins[1], &mut out)?,
        }
        Ok(stream.clone_dtoh(&out)?)
    };
    let (out, out_again) = (run(device_lengths.into())?, run(device_lengths.into())?);
    let mut in_place = stream.clone_htod(*inputs.last().unwrap())?;
    match direction {
        Direction::Forward => {
            g.softmax
                .forward_in_place(&stream, spec, device_lengths, &mut in_place)?
        }
        Direction::Backward => {
            g.softmax
                .backward_in_place(&stream, spec, device_lengths, &ins[0], &mut in_place)?
        }
    }
    let runs = Runs {
        out,
        out_again,
        in_place: stream.clone_dtoh(&in_place)?,
    };
    let report = match direction {
        Direction::Forward => compare::forward(spec, host, inputs[0], &runs.out),
        Direction::Backward => compare::backward(spec, host, inputs[0], inputs[1], &runs.out),
    };
    check_runs(spec, report, &runs)?;
    if common::bytes_of(&run(host.into())?) != common::bytes_of(&runs.out) {
        return Err("host lengths give another result than device lengths".into());
    }
    Ok(())
}

fn to<T: Element>(v: Vec<f64>) -> Vec<T> {
    v.into_iter().map(T::from_f64).collect()
}

fn random_case<T: Element + DeviceRepr>(g: &Gpu, case: &Case) -> TestResult {
    let device = (Some(&case.kv[..]), case.q.as_deref());
    check(
        g,
        Direction::Forward,
        &case.spec,
        case.lengths(),
        device,
        &[&case.scores::<T>()],
    )
}

fn backward_case<T: Element + DeviceRepr>(g: &Gpu, case: &Case) -> TestResult {
    let device = (Some(&case.kv[..]), case.q.as_deref());
    let (y, dy) = backward_inputs(&case.spec, case.lengths(), case.seed);
    let (y, dy) = (to::<T>(y), to::<T>(dy));
    check(
        g,
        Direction::Backward,
        &case.spec,
        case.lengths(),
        device,
        &[&y, &dy],
    )
}

fn special_values<T: Element + DeviceRepr>(g: &Gpu, t: SpecialTrial) -> TestResult {
    let case = SpecialCase::<T>::new(t);
    let inputs = case.input_slices();
    check(
        g,
        t.direction,
        &case.spec,
        case.lengths(),
        (Some(&case.kv), None),
        &inputs,
    )
}

fn seed_example<T: Element + DeviceRepr>(g: &Gpu) -> TestResult {
    let spec = Spec::new(Shape::matrix(seed::ROWS, seed::COLS));
    let x = seed::scores::<T>();
    let device = (Some(&seed::LENGTHS[..]), None);
    check(
        g,
        Direction::Forward,
        &spec,
        Lengths::keys(&seed::LENGTHS),
        device,
        &[&x],
    )?;
    // And the published 4-decimal table, read back from one more run.
    let input_error = seed::SCORES
        .iter()
        .flatten()
        .zip(&x)
        .map(|(exact, stored)| (exact - stored.to_f64()).abs())
        .fold(0.0, f64::max);
    let unit_roundoff = match T::DTYPE {
        DType::F32 => 0.5f64.powi(24),
        DType::F16 => 0.5f64.powi(11),
        DType::BF16 => 0.5f64.powi(8),
    };
    let stream = g.ctx.new_stream()?;
    let lengths = stream.clone_htod(&seed::LENGTHS)?;
    let mut y = stream.clone_htod(&x)?;
    g.softmax
        .forward_in_place(&stream, &spec, DeviceLengths::keys(&lengths), &mut y)?;
    for (i, (got, want)) in stream
        .clone_dtoh(&y)?
        .iter()
        .zip(seed::PUBLISHED.iter().flatten())
        .enumerate()
    {
        // 4 decimals, plus what storing in T does: each score moves by at most `input_error`,
        // which moves a probability by a factor within exp(+-2 input_error); the output is
        // rounded once more (unit roundoff of T).
        let tol = 0.5e-4 + want * ((2.0 * input_error).exp_m1() + unit_roundoff);
        if (got.to_f64() - want).abs() > tol {
            return Err(format!("element {i}: {} vs published {want}", got.to_f64()).into());
        }
    }
    Ok(())
}

fn device_lengths_are_clamped<T: Element + DeviceRepr>(g: &Gpu) -> TestResult {
    let spec = Spec::new(Shape::new(3, 2, 5, 37)).causal();
    let (kv_raw, q_raw) = ([-5, 37 + 10, i32::MAX], [i32::MIN, 5 + 3, 2]);
    let (kv, q) = ([0, 37, 37], [0, 5, 2]);
    let host = Lengths::keys_and_queries(&kv, &q);
    let x: Vec<T> = scores_with_nan_pads(&spec, host, 11)
        .into_iter()
        .map(T::from_f64)
        .collect();
    let device = (Some(&kv_raw[..]), Some(&q_raw[..]));
    check(g, Direction::Forward, &spec, host, device, &[&x])?;
    let (y, dy) = backward_inputs(&spec, host, 11);
    check(
        g,
        Direction::Backward,
        &spec,
        host,
        device,
        &[&to::<T>(y), &to::<T>(dy)],
    )
}

fn many_rows<T: Element + DeviceRepr>(g: &Gpu) -> TestResult {
    // Far more rows than one grid covers: the grid-stride loop must reach them all.
    let spec = Spec::new(Shape::new(1000, 3, 100, 3)).padding(Padding::Left);
    let kv: Vec<i32> = (0..1000).map(|b| b % 4).collect();
    let x: Vec<T> = scores_with_nan_pads(&spec, Lengths::keys(&kv), 12)
        .into_iter()
        .map(T::from_f64)
        .collect();
    let device = (Some(&kv[..]), None);
    check(
        g,
        Direction::Forward,
        &spec,
        Lengths::keys(&kv),
        device,
        &[&x],
    )?;
    let (y, dy) = backward_inputs(&spec, Lengths::keys(&kv), 12);
    check(
        g,
        Direction::Backward,
        &spec,
        Lengths::keys(&kv),
        device,
        &[&to::<T>(y), &to::<T>(dy)],
    )
}

/// The forward captured once in a CUDA graph and replayed on new scores and lengths
/// written into the same buffers: each replay must match the reference for its inputs.
/// Host lengths during the capture are a typed error that leaves the capture intact. Runs
/// in a context of its own with cudarc's event tracking off, as capture needs (module docs
/// of `masked_softmax::cuda`); the other tests share the primary context concurrently.
fn graph_replay(_: &Gpu) -> TestResult {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let ctx = CudaContext::new_non_primary(0, 0)?;
    // SAFETY: every buffer of this context is used on `stream` alone.
    unsafe { ctx.disable_event_tracking() };
    let softmax = CudaSoftmax::new(&ctx)?;
    let stream = ctx.new_stream()?;
    let spec = Spec::new(Shape::new(4, 2, 8, 300)).causal().scale(0.5);
    let n = spec.shape.required_len()?;
    let x = stream.clone_htod(&vec![0f32; n])?;
    let kv = stream.clone_htod(&[0i32; 4])?;
    let mut y = stream.clone_htod(&vec![f32::NAN; n])?;
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    let host_lengths = softmax.forward(&stream, &spec, Lengths::keys(&[1, 2, 3, 4]), &x, &mut y);
    let captured = softmax.forward(&stream, &spec, DeviceLengths::keys(&kv), &x, &mut y);
    let graph = stream.end_capture(CUgraphInstantiate_flags(0))?;
    if !matches!(host_lengths, Err(Error::HostLengthsInCapture)) {
        return Err(format!("host lengths in capture: {host_lengths:?}").into());
    }
    captured?;
    let graph = graph.ok_or("capture produced no graph")?;
    let (mut x, mut kv) = (x, kv);
    for round in 0..3u64 {
        let lengths = [300, 7 + round as i32, 150, round as i32];
        let x_host: Vec<f32> = scores_with_nan_pads(&spec, Lengths::keys(&lengths), 100 + round)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        stream.memcpy_htod(&x_host, &mut x)?;
        stream.memcpy_htod(&lengths, &mut kv)?;
        graph.launch()?;
        let y_host = stream.clone_dtoh(&y)?;
        masked_softmax::compare::forward(&spec, Lengths::keys(&lengths), &x_host, &y_host)?
            .into_result()
            .map_err(|e| format!("replay {round}: {e}"))?;
    }
    Ok(())
}

/// Host lengths go through one staging buffer the handle shares between streams. With
/// cudarc's event tracking off nothing but the handle itself orders that buffer: launches
/// on two streams with different host lengths, back to back (the staging buffer also grows
/// on the way), must each see their own lengths.
fn host_lengths_on_two_streams(_: &Gpu) -> TestResult {
    let ctx = CudaContext::new_non_primary(0, 0)?;
    // SAFETY: each buffer below is used on one stream; the handle orders its staging buffer.
    unsafe { ctx.disable_event_tracking() };
    let softmax = CudaSoftmax::new(&ctx)?;
    let streams = [ctx.new_stream()?, ctx.new_stream()?];
    let mut pending = Vec::new();
    for round in 0..24usize {
        let stream = &streams[round % 2];
        // Large enough that the launches overlap; batch grows past the first allocation.
        let batch = 64 + 40 * round;
        let spec = Spec::new(Shape::new(batch, 2, 2, 1024)).scale(0.3);
        let mut rng = common::Lcg(round as u64);
        let kv: Vec<i32> = (0..batch).map(|_| rng.range(0, 1024) as i32).collect();
        let x_host = scores_with_nan_pads(&spec, Lengths::keys(&kv), round as u64);
        let x_host: Vec<f32> = x_host.into_iter().map(|v| v as f32).collect();
        let x = stream.clone_htod(&x_host)?;
        let mut y = stream.clone_htod(&vec![f32::NAN; x_host.len()])?;
        softmax.forward(stream, &spec, Lengths::keys(&kv), &x, &mut y)?;
        pending.push((stream.clone(), spec, kv, x_host, x, y));
    }
    for (round, (stream, spec, kv, x_host, _x, y)) in pending.into_iter().enumerate() {
        let y_host = stream.clone_dtoh(&y)?;
        masked_softmax::compare::forward(&spec, Lengths::keys(&kv), &x_host, &y_host)?
            .into_result()
            .map_err(|e| format!("round {round}: {e}"))?;
    }
    Ok(())
}

/// Every compiled kernel of a direction that can run `case`, named rather than planned, into
/// a poisoned output: each must match the reference.
fn every_kernel<T: Element + DeviceRepr>(g: &Gpu, direction: Direction, case: &Case) -> TestResult {
    let inputs = case.inputs::<T>(direction);
    let inputs: Vec<&[T]> = inputs.iter().map(Vec::as_slice).collect();
    every_kernel_on(g, direction, &case.spec, case.lengths(), &inputs)
}

/// Every compiled kernel on the special values (see `special_values`), which the planner's
/// kernels meet only where the planner sends those shapes.
fn every_kernel_special<T: Element + DeviceRepr>(g: &Gpu, t: SpecialTrial) -> TestResult {
    let case = SpecialCase::<T>::new(t);
    every_kernel_on(
        g,
        t.direction,
        &case.spec,
        case.lengths(),
        &case.input_slices(),
    )
}

/// Every compiled kernel of `direction` that can run the problem, each into a poisoned
/// output (`inputs`: `[x]` forward, `[y, dy]` backward); the streaming kernels also
/// without their L2 priorities (`set_l2_hints(false)`), the block kernels compiled for it
/// also with the next row's prefetch (`set_next_row_prefetch(true)`), those that keep
/// their weights in shared memory also without (`set_weight_cache(false)`).
fn every_kernel_on<T: Element + DeviceRepr>(
    g: &Gpu,
    direction: Direction,
    spec: &Spec,
    host_lengths: Lengths,
    inputs: &[&[T]],
) -> TestResult {
    let stream = g.ctx.new_stream()?;
    let kv = host_lengths
        .kv
        .map(|kv| stream.clone_htod(kv))
        .transpose()?;
    let q = host_lengths.q.map(|q| stream.clone_htod(q)).transpose()?;
    let lengths = DeviceLengths {
        kv: kv.as_ref().map(|kv| kv as _),
        q: q.as_ref().map(|q| q as _),
    };
    let first = stream.clone_htod(inputs[0])?;
    let second = inputs.get(1).map(|dy| stream.clone_htod(*dy)).transpose()?;
    let poison = vec![T::from_f64(f64::NAN); inputs[0].len()];
    let mut ran = 0;
    let runs = KernelKind::all(T::DTYPE, g.softmax.limits().clusters, direction)
        .into_iter()
        .flat_map(|kind| {
            let streaming = matches!(
                kind,
                KernelKind::BlockStream { .. }
                    | KernelKind::Split { .. }
                    | KernelKind::Cluster { cached: false, .. }
            );
            let prefetch = kind.prefetch_name(T::DTYPE, direction).is_some();
            let keeps_weights = kind.keeps_weights(T::DTYPE, direction);
            std::iter::once((kind, &g.softmax))
                .chain(streaming.then_some((kind, &g.plain_l2)))
                .chain(prefetch.then_some((kind, &g.prefetch)))
                .chain(keeps_weights.then_some((kind, &g.no_cache)))
        });
    for (kind, softmax) in runs {
        let mut out = stream.clone_htod(&poison)?;
        let launched = match &second {
            None => softmax.forward_with_kernel(kind, &stream, spec, lengths, &first, &mut out)?,
            Some(dy_dev) => softmax
                .backward_with_kernel(kind, &stream, spec, lengths, &first, dy_dev, &mut out)?,
        };
        if !launched {
            continue;
        }
        ran += 1;
        let out = stream.clone_dtoh(&out)?;
        let report = match direction {
            Direction::Forward => compare::forward(spec, host_lengths, inputs[0], &out),
            Direction::Backward => {
                compare::backward(spec, host_lengths, inputs[0], inputs[1], &out)
            }
        }?;
        // The kernel that ran: the kind's, or its prefetching instance.
        let name = match softmax.next_row_prefetch() {
            true => kind.prefetch_name(T::DTYPE, direction),
            false => None,
        };
        let name = name.unwrap_or_else(|| kind.name(T::DTYPE, direction));
        let hints = if softmax.l2_hints() {
            ""
        } else {
            " (plain L2)"
        };
        let cache = if softmax.weight_cache() {
            ""
        } else {
            " (no weight cache)"
        };
        report
            .into_result()
            .map_err(|e| format!("{name}{hints}{cache}: {e}"))?;
    }
    if ran == 0 {
        return Err("no kernel ran".into());
    }
    Ok(())
}

/// The prefetching instances ([`KernelKind::prefetch_name`], launched by a handle with
/// `set_next_row_prefetch(true)`) where their blocks stride over rows: about 2^23 scores,
/// at least 2048 rows, more than the launch's grid (checked: so most rows are asked into
/// the L2 ahead of their block), left padding with a causal mask and key lengths from
/// empty to full, NaN pads, each into a poisoned output. The every-kernel trials' few rows
/// mostly give a block one row, and so no prefetch. At 1 to 64 keys (the rows kernels'
/// instances, which fetch each batch's lengths a batch ahead) the rows come in entries of
/// 3 queries with their own key and query lengths instead (`Case::many_rows`). At 100 keys
/// every rows kernel whose instance asks the L2 for its next batch (77 to 1024 keys) holds
/// the rows, and each warp takes at least two batches.
fn prefetch_many_rows<T: Element + DeviceRepr>(
    g: &Gpu,
    direction: Direction,
    k_len: usize,
) -> TestResult {
    let k = k_len as i32;
    let kv = [k, 0, 1, k / 3, k - 1, 7, k / 2 + 5, k];
    // Short rows (the rows kernels' instances): 2^23 / k rows in entries of 2 heads and 3
    // queries, each entry its own lengths, so that every batch of a warp (4 to 128 rows,
    // several a warp on a whole GPU's grid) has its own windows.
    let short = (k_len <= 64).then(|| {
        let mode = common::MODES
            .into_iter()
            .find(|m| m.name == "causal_left_q")
            .expect("a mode of that name");
        common::Case::many_rows(mode, k_len, (1 << 23) / k_len)
    });
    let (spec, lengths) = match &short {
        Some(case) => (case.spec, case.lengths()),
        None => (
            Spec {
                shape: Shape::new(8, 32, ((1 << 23) / (256 * k_len)).max(8), k_len),
                padding: Padding::Left,
                causal: Some(masked_softmax::Causal { window: None }),
                scale: 0.7,
            },
            Lengths {
                kv: Some(&kv),
                q: None,
            },
        ),
    };
    let to = |v: Vec<f64>| -> Vec<T> { v.into_iter().map(T::from_f64).collect() };
    let inputs: Vec<Vec<T>> = match direction {
        Direction::Forward => vec![to(scores_with_nan_pads(&spec, lengths, 41))],
        Direction::Backward => {
            let (y, dy) = backward_inputs(&spec, lengths, 41);
            vec![to(y), to(dy)]
        }
    };
    let stream = g.ctx.new_stream()?;
    let first = stream.clone_htod(&inputs[0])?;
    let second = inputs.get(1).map(|dy| stream.clone_htod(dy)).transpose()?;
    let poison = vec![T::from_f64(f64::NAN); inputs[0].len()];
    let mut ran = 0;
    for kind in KernelKind::all(T::DTYPE, g.prefetch.limits().clusters, direction) {
        let Some(name) = kind.prefetch_name(T::DTYPE, direction) else {
            continue;
        };
        let mut out = stream.clone_htod(&poison)?;
        let launched = match &second {
            None => g
                .prefetch
                .forward_with_kernel(kind, &stream, &spec, lengths, &first, &mut out)?,
            Some(dy) => g
                .prefetch
                .backward_with_kernel(kind, &stream, &spec, lengths, &first, dy, &mut out)?,
        };
        if !launched {
            continue;
        }
        ran += 1;
        // The grid the handle launched (16-byte aligned buffers, as these are): it must
        // leave blocks more than one row (warps more than one batch), or no prefetch ran.
        let buffers = Buffers {
            x: 1 << 20,
            y: 2 << 20,
            dy: if second.is_some() { 3 << 20 } else { 0 },
            kv_lens: 4 << 20,
            q_lens: 0,
        };
        let plan = g
            .prefetch
            .plan(Some(kind), direction, &spec, T::DTYPE, buffers)?
            .ok_or(format!("{name}: launched, but no plan"))?;
        let rows = spec.shape.rows()?;
        // A rows kernel's instance: at least 4 rows a group of lanes, so that each warp
        // takes a whole batch at the most rows a lane takes at once (4), more where fewer;
        // those that ask the L2 for the next batch take a row a group at a time, so 1.5
        // (at least half the warps ask for a second batch: at 1000 keys the 16-bit warp
        // kernels' grids, 4 blocks a multiprocessor, leave 8192 rows 1.9 a group).
        if let KernelKind::Rows { group, .. } | KernelKind::RowsKeys { group, .. } = kind {
            let groups = plan.grid as usize * plan.block as usize / group as usize;
            let enough = match kind.fetch_ahead(T::DTYPE, direction) {
                Some(FetchAhead::NextBatch) => 2 * rows >= 3 * groups,
                _ => rows >= 4 * groups,
            };
            if !enough {
                return Err(format!(
                    "{name}: {groups} groups of lanes for {rows} rows: too few to fetch ahead"
                )
                .into());
            }
        } else if plan.grid as usize >= rows {
            return Err(format!(
                "{name}: a grid of {} for {rows} rows: no prefetch",
                plan.grid
            )
            .into());
        }
        let out = stream.clone_dtoh(&out)?;
        let report = match direction {
            Direction::Forward => compare::forward(&spec, lengths, &inputs[0], &out),
            Direction::Backward => compare::backward(&spec, lengths, &inputs[0], &inputs[1], &out),
        }?;
        report.into_result().map_err(|e| format!("{name}: {e}"))?;
    }
    if ran == 0 {
        return Err("no prefetching instance ran".into());
    }
    Ok(())
}

/// Contracts `first..first + count` of the fuzz sequence, forward and backward.
fn fuzz<T: Element + DeviceRepr>(g: &Gpu, first: u64, count: u64) -> TestResult {
    for seed in first..first + count {
        let (spec, kv, q) = random_contract(seed, 4096);
        let lengths = Lengths {
            kv: Some(&kv),
            q: q.as_deref(),
        };
        let device = (Some(&kv[..]), q.as_deref());
        let context = |e: Failed| format!("contract {seed} ({spec:?}, kv {kv:?}, q {q:?}): {e:?}");
        let x = to::<T>(scores_with_nan_pads(&spec, lengths, seed));
        check(g, Direction::Forward, &spec, lengths, device, &[&x]).map_err(context)?;
        let (y, dy) = backward_inputs(&spec, lengths, seed);
        check(
            g,
            Direction::Backward,
            &spec,
            lengths,
            device,
            &[&to::<T>(y), &to::<T>(dy)],
        )
        .map_err(context)?;
    }
    Ok(())
}

/// More than 2^31 elements (f16, 4.3 GB per buffer) in rows of 65536 keys (the block and
/// cluster kernels): 64-bit offsets everywhere. See [`huge_matrix`].
fn beyond_2_31_elements(g: &Gpu) -> TestResult {
    huge_matrix(g, 32_769, 65_536, None)
}

/// More than 2^32 elements (f16, 8.6 GB per buffer) in rows of 1024 keys, which the rows
/// kernels take: their 32-bit row arithmetic (kernels/work.cuh, NarrowRows) forms each
/// row's offset as one 32 x 32-bit wide multiply, here past 2^32. See [`huge_matrix`].
fn beyond_2_32_elements_rows(g: &Gpu) -> TestResult {
    huge_matrix(g, 4_194_309, 1024, Some("rows"))
}

/// A `rows` x `k_len` f16 matrix of more than 2^31 elements, forward and backward in place:
/// the rows at both ends get random scores (the rest stays 0) and are checked against the
/// reference. `kernel`: a prefix the planned kernel's name must have, both directions.
fn huge_matrix(g: &Gpu, rows: usize, k_len: usize, kernel: Option<&str>) -> TestResult {
    assert!(rows * k_len > 1 << 31);
    let spec = Spec::new(Shape::matrix(rows, k_len)).scale(0.5);
    if let Some(prefix) = kernel {
        let buffers = Buffers {
            x: 1 << 20,
            y: 2 << 20,
            dy: 3 << 20,
            kv_lens: 4 << 20,
            q_lens: 0,
        };
        for direction in [Direction::Forward, Direction::Backward] {
            let plan = g
                .softmax
                .plan(None, direction, &spec, DType::F16, buffers)?
                .ok_or("no plan")?;
            let name = plan.kernel.name(DType::F16, direction);
            if !name.contains(prefix) {
                return Err(format!("{direction:?}: planned {name}, not a {prefix} kernel").into());
            }
        }
    }
    let mut rng = common::Lcg(31);
    let kv: Vec<i32> = (0..rows)
        .map(|_| rng.range(1, k_len as i64) as i32)
        .collect();
    let stream = g.ctx.new_stream()?;
    let kv_dev = stream.clone_htod(&kv)?;
    let mut x = stream.alloc_zeros::<f16>(rows * k_len)?;
    let checked = [0, rows - 2, rows - 1];
    let mut samples = Vec::new();
    for &row in &checked {
        let sample: Vec<f16> = (0..k_len)
            .map(|_| f16::from_f64(rng.uniform() * 8.0 - 4.0))
            .collect();
        stream.memcpy_htod(&sample, &mut x.slice_mut(row * k_len..(row + 1) * k_len))?;
        samples.push(sample);
    }
    let mut y = stream.alloc_zeros::<f16>(rows * k_len)?;
    g.softmax
        .forward(&stream, &spec, DeviceLengths::keys(&kv_dev), &x, &mut y)?;
    // Backward in place over a gradient of ones.
    let ones = vec![f16::ONE; k_len];
    let mut grad = stream.alloc_zeros::<f16>(rows * k_len)?;
    for &row in &checked {
        stream.memcpy_htod(&ones, &mut grad.slice_mut(row * k_len..(row + 1) * k_len))?;
    }
    g.softmax
        .backward_in_place(&stream, &spec, DeviceLengths::keys(&kv_dev), &y, &mut grad)?;
    for (&row, sample) in checked.iter().zip(&samples) {
        let one = Spec::new(Shape::matrix(1, k_len)).scale(0.5);
        let lengths = [kv[row]];
        let y_row = stream.clone_dtoh(&y.slice(row * k_len..(row + 1) * k_len))?;
        compare::forward(&one, Lengths::keys(&lengths), sample, &y_row)?
            .into_result()
            .map_err(|e| format!("forward row {row}: {e}"))?;
        let dx_row = stream.clone_dtoh(&grad.slice(row * k_len..(row + 1) * k_len))?;
        compare::backward(&one, Lengths::keys(&lengths), &y_row, &ones, &dx_row)?
            .into_result()
            .map_err(|e| format!("backward row {row}: {e}"))?;
    }
    Ok(())
}

/// 2^31 rows and more (query rows of one key, f16, 4.3 GB per buffer): the kernels' 64-bit
/// row decomposition and mask arithmetic, which no smaller problem reaches (RowIndex in
/// kernels/mask.cuh and the rows kernels' WideRows, kernels/work.cuh, take over at 2^31
/// rows). The query length
/// (i32::MAX, the most a length can say) pads the rows from 2^31 - 1 on, which hold NaN.
/// Rows at both ends and across 2^31 are checked, forward and backward in place.
fn beyond_2_31_rows(g: &Gpu) -> TestResult {
    let q_len = (1usize << 31) + 5;
    let q_valid = i32::MAX as usize;
    let spec = Spec::new(Shape::new(1, 1, q_len, 1)).scale(0.5);
    let stream = g.ctx.new_stream()?;
    let kv_dev = stream.clone_htod(&[1i32])?;
    let q_dev = stream.clone_htod(&[i32::MAX])?;
    let lengths = DeviceLengths::keys_and_queries(&kv_dev, &q_dev);
    // (row, score, gradient): a -inf row (zero), a NaN row, finite rows, padded NaN rows.
    let nan = f16::from_f64(f64::NAN);
    let rows = [
        (0, f16::from_f64(f64::NEG_INFINITY), f16::ONE),
        (1, nan, f16::ONE),
        (q_valid - 2, f16::from_f64(-3.0), nan),
        (q_valid - 1, f16::from_f64(3.0), f16::from_f64(2.0)),
        (q_valid, nan, nan),
        (1 << 31, nan, nan),
        (q_len - 1, nan, nan),
    ];
    let mut x = stream.alloc_zeros::<f16>(q_len)?;
    let mut grad = stream.alloc_zeros::<f16>(q_len)?;
    for &(row, score, dy) in &rows {
        stream.memcpy_htod(&[score], &mut x.slice_mut(row..row + 1))?;
        stream.memcpy_htod(&[dy], &mut grad.slice_mut(row..row + 1))?;
    }
    let mut y = stream.alloc_zeros::<f16>(q_len)?;
    g.softmax.forward(&stream, &spec, lengths, &x, &mut y)?;
    g.softmax
        .backward_in_place(&stream, &spec, lengths, &y, &mut grad)?;
    let one = Spec::new(Shape::matrix(1, 1)).scale(0.5);
    for &(row, score, dy) in &rows {
        let y_row = stream.clone_dtoh(&y.slice(row..row + 1))?;
        let dx_row = stream.clone_dtoh(&grad.slice(row..row + 1))?;
        if row >= q_valid {
            if y_row[0].to_bits() != 0 || dx_row[0].to_bits() != 0 {
                return Err(format!(
                    "padded row {row}: y {:?}, dx {:?}, not +0",
                    y_row[0], dx_row[0]
                )
                .into());
            }
            continue;
        }
        compare::forward(&one, Lengths::none(), &[score], &y_row)?
            .into_result()
            .map_err(|e| format!("forward row {row}: {e}"))?;
        compare::backward(&one, Lengths::none(), &y_row, &[dy], &dx_row)?
            .into_result()
            .map_err(|e| format!("backward row {row}: {e}"))?;
    }
    Ok(())
}

/// Out of device memory: with the device full, a call that must grow the handle's staging
/// buffer (host lengths for a larger batch than any before) is `Error::Driver` with
/// `CUDA_ERROR_OUT_OF_MEMORY`, not a panic or an abort, and the handle works again once
/// memory is freed. Runs alone, after every other trial: it takes the whole device.
fn out_of_memory(g: &Gpu) -> TestResult {
    use cudarc::driver::sys::CUresult;
    let stream = g.ctx.new_stream()?;
    // Staging for 2 * 2^23 lengths: 64 MiB, more than any other trial needs.
    let batch = 1usize << 23;
    let spec = Spec::new(Shape::new(batch, 1, 1, 2));
    let x = stream.clone_htod(&vec![0.5f32; 2 * batch])?;
    let mut y = stream.alloc_zeros::<f32>(2 * batch)?;
    let lengths = vec![1i32; batch];
    let mut hog = Vec::new();
    let mut chunk = 1usize << 34;
    while chunk >= 1 << 20 {
        // SAFETY: never read; only held to take the memory.
        match unsafe { stream.alloc::<u8>(chunk) } {
            Ok(block) => hog.push(block),
            Err(_) => chunk /= 2,
        }
    }
    let full = g
        .softmax
        .forward(&stream, &spec, Lengths::keys(&lengths), &x, &mut y);
    drop(hog);
    stream.synchronize()?;
    match full {
        Err(Error::Driver(e)) if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY => {}
        other => return Err(format!("device full: expected out of memory, got {other:?}").into()),
    }
    g.softmax
        .forward(&stream, &spec, Lengths::keys(&lengths), &x, &mut y)?;
    let y_host = stream.clone_dtoh(&y)?;
    compare::forward(
        &spec,
        Lengths::keys(&lengths),
        &to::<f32>(vec![0.5; 2 * batch]),
        &y_host,
    )?
    .into_result()
    .map_err(|e| format!("after freeing: {e}"))?;
    Ok(())
}

/// Buffers, streams or lengths of another CUDA context are an error before launch.
fn foreign_context(g: &Gpu) -> TestResult {
    let other = CudaContext::new_non_primary(0, 0)?;
    let theirs = other.default_stream();
    let stream = g.ctx.new_stream()?;
    let spec = Spec::new(Shape::matrix(2, 8));
    let x = stream.alloc_zeros::<f32>(16)?;
    let mut y = stream.alloc_zeros::<f32>(16)?;
    let x_other = theirs.alloc_zeros::<f32>(16)?;
    let kv_other = theirs.clone_htod(&[3i32, 4])?;
    let foreign = |r: masked_softmax::Result<()>, what: &str| -> TestResult {
        match r {
            Err(Error::ForeignContext { .. }) => Ok(()),
            other => Err(format!("{what}: expected ForeignContext, got {other:?}").into()),
        }
    };
    foreign(
        g.softmax
            .forward(&stream, &spec, Lengths::none(), &x_other, &mut y),
        "x",
    )?;
    foreign(
        g.softmax
            .forward(&theirs, &spec, Lengths::none(), &x, &mut y),
        "stream",
    )?;
    foreign(
        g.softmax
            .forward(&stream, &spec, DeviceLengths::keys(&kv_other), &x, &mut y),
        "lengths",
    )?;
    Ok(())
}

/// On a GPU with clusters the handle knows, from the driver, how many of each size fit at
/// each occupancy (the planner sizes cluster grids by it): every entry known, at least 1 and
/// at most what the multiprocessors hold, never fewer with more blocks a multiprocessor.
/// Without clusters it knows nothing. The log shows the table.
fn cluster_residency(g: &Gpu) -> TestResult {
    let limits = g.softmax.limits();
    let table = limits.cluster_residency;
    if !limits.clusters {
        return match table == ClusterResidency::UNKNOWN {
            true => Ok(()),
            false => Err(format!("no clusters, yet {table:?}").into()),
        };
    }
    let sms = limits.sm_count;
    for c in ClusterResidency::CLUSTER_SIZES {
        let counts: Vec<Option<u32>> = (1..=ClusterResidency::MAX_BLOCKS_PER_SM)
            .map(|b| table.get(c, b))
            .collect();
        eprintln!("clusters of {c}, 1 to 8 blocks a multiprocessor: {counts:?} ({sms} SMs)");
        let mut last = 0;
        for (b, n) in (1..).zip(&counts) {
            let n = n.ok_or(format!(
                "clusters of {c} at {b} blocks a multiprocessor: unknown"
            ))?;
            if n < 1.max(last) || n > sms * b / c {
                return Err(format!(
                    "clusters of {c} at {b} blocks a multiprocessor: {n} (then {last}, {sms} SMs)"
                )
                .into());
            }
            last = n;
        }
    }
    Ok(())
}

/// The handle knows every loaded kernel's blocks a multiprocessor at the block sizes the
/// planner gives it (launches cut their grids to it): at least 1, at most what the
/// threads allow, and what the driver answers for that kernel by name. The prefetching
/// instances too, on a handle that launches them: their own numbers, not the plain
/// kernel's.
fn kernel_occupancy(g: &Gpu) -> TestResult {
    let limits = g.softmax.limits();
    let (major, minor) = g.ctx.compute_capability()?;
    for direction in [Direction::Forward, Direction::Backward] {
        // The kernels as this test loads them itself, to ask the driver about each by name:
        // a handle that fell back to the plain kernel's numbers for a prefetching instance
        // (CudaSoftmax::occupancy) would differ where their registers do.
        let (_, image) = masked_softmax::cuda::module_image_for(direction.module(), major, minor)
            .ok_or("no kernels for this device")?;
        let module = masked_softmax::cuda::load_module_image(&g.ctx, image)?;
        for dtype in DType::ALL {
            let kinds = KernelKind::all(dtype, limits.clusters, direction);
            let prefetching = kinds.iter().filter_map(|&kind| {
                let name = kind.prefetch_name(dtype, direction)?;
                Some((kind, &g.prefetch, name))
            });
            let plain = kinds
                .iter()
                .map(|&kind| (kind, &g.softmax, kind.name(dtype, direction)));
            for (kind, softmax, name) in plain.chain(prefetching) {
                // The sizes the planner launches it at: whole warps for the block kernels.
                let least = match kind {
                    KernelKind::Rows { .. } | KernelKind::RowsKeys { .. } => 256,
                    KernelKind::BlockRegs { .. } => 64,
                    KernelKind::BlockCached { .. } | KernelKind::BlockStream { .. } => 128,
                    _ => u32::MAX,
                };
                let blocks: Vec<u32> = KernelOccupancy::BLOCK_SIZES
                    .into_iter()
                    .filter(|&b| b >= least)
                    .collect();
                let occupancy = softmax
                    .occupancy(direction, kind, dtype)
                    .ok_or(format!("{name}: not loaded"))?;
                let function = module.load_function(&name)?;
                if let KernelKind::BlockRegs { .. } | KernelKind::BlockCached { .. } = kind {
                    // As the handle loads it (its dynamic shared memory's opt-in).
                    function.set_attribute(
                        cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        limits.max_shared_per_block as i32,
                    )?;
                }
                // Up to the kind's launch bounds (the wide 16-bit block_regs: 256).
                for block in blocks
                    .into_iter()
                    .filter(|&b| b <= kind.max_block_threads())
                {
                    let driver =
                        function.occupancy_max_active_blocks_per_multiprocessor(block, 0, None)?;
                    match occupancy.get(block) {
                        Some(n) if n <= limits.max_threads_per_sm / block && n == driver => {}
                        other => {
                            return Err(format!(
                                "{name} at {block} threads: {other:?}, the driver says {driver}"
                            )
                            .into());
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn misuse(g: &Gpu) -> TestResult {
    let stream = g.ctx.new_stream()?;
    let spec = Spec::new(Shape::matrix(4, 6));
    let x = stream.alloc_zeros::<f32>(24)?;
    let mut y = stream.alloc_zeros::<f32>(24)?;
    let mut short = stream.alloc_zeros::<f32>(23)?;
    let lengths = stream.clone_htod(&[1i32, 2, 3])?;
    let expect =
        |r: masked_softmax::Result<()>, what: &str, ok: fn(&Error) -> bool| -> TestResult {
            match r {
                Err(e) if ok(&e) => Ok(()),
                other => Err(format!("{what}: expected a typed error, got {other:?}").into()),
            }
        };
    expect(
        g.softmax
            .forward(&stream, &spec, DeviceLengths::none(), &x, &mut short),
        "short output",
        |e| {
            matches!(
                e,
                Error::BufferTooShort {
                    buffer: "y",
                    len: 23,
                    required: 24
                }
            )
        },
    )?;
    expect(
        g.softmax
            .forward(&stream, &spec, DeviceLengths::keys(&lengths), &x, &mut y),
        "3 lengths for batch 4",
        |e| {
            matches!(
                e,
                Error::LengthsSize {
                    len: 3,
                    batch: 4,
                    ..
                }
            )
        },
    )?;
    expect(
        g.softmax.forward(
            &stream,
            &Spec::new(Shape::matrix(4, 0)),
            DeviceLengths::none(),
            &x,
            &mut y,
        ),
        "k_len 0",
        |e| matches!(e, Error::ZeroDimension { name: "k_len" }),
    )?;
    expect(
        g.softmax
            .forward(&stream, &spec, Lengths::keys(&[1, 2, 3, 7]), &x, &mut y),
        "host length 7 > k_len 6",
        |e| {
            matches!(
                e,
                Error::LengthOutOfRange {
                    batch_index: 3,
                    value: 7,
                    max: 6,
                    ..
                }
            )
        },
    )?;
    expect(
        g.softmax.forward(
            &stream,
            &spec.sliding_window(0),
            DeviceLengths::none(),
            &x,
            &mut y,
        ),
        "window 0",
        |e| matches!(e, Error::ZeroWindow),
    )?;
    // Backward: two halves of one allocation are disjoint buffers and fine.
    let dy = stream.alloc_zeros::<f32>(24)?;
    let mut big = stream.alloc_zeros::<f32>(48)?;
    let (y_half, mut dx_half) = big.split_at_mut(24);
    g.softmax
        .backward(&stream, &spec, Lengths::none(), &y_half, &dy, &mut dx_half)?;
    expect(
        g.softmax
            .backward(&stream, &spec, Lengths::none(), &x, &dy, &mut short),
        "short dx",
        |e| matches!(e, Error::BufferTooShort { buffer: "dx", .. }),
    )?;
    let mut dy_dx = stream.alloc_zeros::<f32>(24)?;
    expect(
        g.softmax
            .backward_in_place(&stream, &spec, Lengths::keys(&[9, 1, 1, 1]), &x, &mut dy_dx),
        "host length 9 > k_len 6 (backward)",
        |e| matches!(e, Error::LengthOutOfRange { value: 9, .. }),
    )?;
    Ok(())
}

/// The trials run under compute-sanitizer (MASKED_SOFTMAX_GPU_SUBSET=sanitize), where
/// every launch is many times slower: every kernel class and type, fewer sizes.
fn in_sanitize_subset(name: &str) -> bool {
    let sizes = ["_k7_", "_k1000_", "_k1025_", "_k4097_"];
    let modes = [
        "random_right_k",
        "random_causal_left_q_k",
        "backward_right_k",
        "backward_causal_left_q_k",
    ];
    [
        "seed_example",
        "device_lengths",
        "grid_stride",
        "graph",
        "host_lengths_on_two_streams",
        "misuse",
        "foreign",
        // 150 of the 1,000 random contracts (every type): the rest run without the sanitizer.
        "fuzz_f32_00",
        "fuzz_f16_01",
        "fuzz_bf16_02",
    ]
    .iter()
    .any(|p| name.starts_with(p))
        || (name.starts_with("special_values")
            && name.ends_with("scale1e0")
            && !name.contains("_k300000_"))
        || (modes.iter().any(|m| name.starts_with(m)) && sizes.iter().any(|k| name.contains(k)))
        || (name.starts_with("long_rows_right") && name.ends_with("k65536"))
        || (name.starts_with("prefetch_many_rows")
            && (name.ends_with("_k4096") || name.ends_with("_k100")))
        || (name.starts_with("every_kernel_special")
            && (name.ends_with("_k5000_aligned_scale1e0") || name.ends_with("_k5000_odd_scale1e0")))
        || (name.starts_with("every_kernel")
            && name.contains("_right_")
            && [
                "_k1", "_k7", "_k64", "_k1021", "_k1032", "_k16377", "_k16384", "_k20001",
            ]
            .iter()
            .any(|k| name.ends_with(k)))
}

/// `"i/n"` -> `(i, n)` with `i < n`.
fn parse_shard(spec: &str) -> Option<(usize, usize)> {
    let (i, n) = spec.split_once('/')?;
    let (i, n) = (i.trim().parse().ok()?, n.trim().parse().ok()?);
    (i < n).then_some((i, n))
}

fn main() {
    let args = Arguments::from_args();
    let started = std::time::Instant::now();
    let gpu = open_gpu().map(Arc::new);
    let require = std::env::var("MASKED_SOFTMAX_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match &gpu {
        Ok(g) => println!(
            "gpu_kernels: running on {} (PTX {}; context and kernels loaded in {:.2} s)",
            g.ctx.name().unwrap_or_default(),
            masked_softmax::cuda::PTX_TARGET.unwrap_or("?"),
            started.elapsed().as_secs_f64()
        ),
        Err(reason) => println!("gpu_kernels: SKIPPING every GPU test: {reason}"),
    }
    let mut trials = Vec::new();
    let subset = std::env::var("MASKED_SOFTMAX_GPU_SUBSET").ok();
    // MASKED_SOFTMAX_GPU_SHARD=i/n keeps every n-th trial from the i-th: the bundle's
    // sanitizer mode runs the slow tools (racecheck) as n processes at once.
    let shard = match std::env::var("MASKED_SOFTMAX_GPU_SHARD") {
        Ok(spec) => Some(parse_shard(&spec).unwrap_or_else(|| {
            eprintln!("MASKED_SOFTMAX_GPU_SHARD={spec}: expected i/n with i < n");
            std::process::exit(2)
        })),
        Err(_) => None,
    };
    let mut kept = 0usize;
    let mut add = |name: String, test: Box<dyn FnOnce(&Gpu) -> TestResult + Send>| {
        if subset.as_deref() == Some("sanitize") && !in_sanitize_subset(&name) {
            return;
        }
        kept += 1;
        if shard.is_some_and(|(i, n)| (kept - 1) % n != i) {
            return;
        }
        let gpu = gpu.clone();
        trials.push(Trial::ignorable_test(name, move || match &gpu {
            Ok(g) => test(g).map(|()| Completion::Completed),
            Err(reason) if require => Err(format!("MASKED_SOFTMAX_REQUIRE_GPU=1: {reason}").into()),
            Err(reason) => Ok(Completion::ignored_with(reason)),
        }));
    };
    for dtype in DType::ALL {
        let t = dtype.kernel_suffix();
        add(
            format!("seed_example_{t}"),
            Box::new(move |g| dispatch!(dtype, seed_example, g)),
        );
        add(
            format!("device_lengths_are_clamped_{t}"),
            Box::new(move |g| dispatch!(dtype, device_lengths_are_clamped, g)),
        );
        add(
            format!("grid_stride_over_many_rows_{t}"),
            Box::new(move |g| dispatch!(dtype, many_rows, g)),
        );
        for (name, mode, k_len) in forward_matrix() {
            let case = Case::new(mode, k_len, MAX_ELEMENTS);
            let c = case.clone();
            add(
                format!("random_{name}_{t}"),
                Box::new(move |g| dispatch!(dtype, random_case, g, &c)),
            );
            add(
                format!("backward_{name}_{t}"),
                Box::new(move |g| dispatch!(dtype, backward_case, g, &case)),
            );
        }
    }
    for dtype in DType::ALL {
        let t = dtype.kernel_suffix();
        for k_len in [65_536, 1 << 18, 1 << 20, (1 << 20) + 1] {
            for mode in [common::MODES[0], common::MODES[5]] {
                let case = Case::new(mode, k_len, MAX_ELEMENTS);
                let c = case.clone();
                add(
                    format!("long_rows_{}_{t}_k{k_len}", mode.name),
                    Box::new(move |g| dispatch!(dtype, random_case, g, &c)),
                );
                add(
                    format!("long_rows_backward_{}_{t}_k{k_len}", mode.name),
                    Box::new(move |g| dispatch!(dtype, backward_case, g, &case)),
                );
            }
        }
    }
    // The special values through the planner's kernels, and through every kernel at the
    // usual and a negative scale.
    for t in special_trials(
        &[5, 100, 1000, 3000, 5000, 10000, 20000, 300_000],
        &SPECIAL_SCALES,
    ) {
        add(
            format!("special_values_{}", t.name()),
            Box::new(move |g| dispatch!(t.dtype, special_values, g, t)),
        );
    }
    for t in special_trials(&[7, 64, 1000, 5000, 20000], &[1.0, -0.7]) {
        add(
            format!("every_kernel_special_{}", t.name()),
            Box::new(move |g| dispatch!(t.dtype, every_kernel_special, g, t)),
        );
    }
    // The prefetching instances on many rows (the short rows kernels' 1 to 64 keys, the
    // medium ones' at 100 (all of them hold it) and 1000, block_regs' capacities and
    // block_cached).
    for k in [1, 7, 32, 64, 100, 1000, 4096, 8192] {
        for dtype in DType::ALL {
            for (direction, d) in common::DIRECTIONS {
                add(
                    format!("prefetch_many_rows_{d}_{}_k{k}", dtype.kernel_suffix()),
                    Box::new(move |g| dispatch!(dtype, prefetch_many_rows, g, direction, k)),
                );
            }
        }
    }
    // Every kernel that can run a problem, named: both sides of each kernel's capacity.
    let k_lens: Vec<usize> = EVERY_KERNEL_K_LENS
        .iter()
        .copied()
        .chain([65536, 262_144])
        .collect();
    for (name, dtype, direction, case) in common::every_kernel_cases(&k_lens, MAX_ELEMENTS) {
        add(
            name,
            Box::new(move |g| dispatch!(dtype, every_kernel, g, direction, &case)),
        );
    }
    // 1000 random contracts, forward and backward, in trials of 50 (also under the sanitizer).
    for chunk in 0..20u64 {
        let dtype = DType::ALL[chunk as usize % 3];
        add(
            format!("fuzz_{}_{chunk:02}", dtype.kernel_suffix()),
            Box::new(move |g| dispatch!(dtype, fuzz, g, 20_000 + chunk * 50, 50)),
        );
    }
    add(
        "beyond_2_31_elements".into(),
        Box::new(beyond_2_31_elements),
    );
    add(
        "beyond_2_32_elements_rows".into(),
        Box::new(beyond_2_32_elements_rows),
    );
    add("beyond_2_31_rows".into(), Box::new(beyond_2_31_rows));
    add(
        "foreign_context_is_an_error".into(),
        Box::new(foreign_context),
    );
    add(
        "no_such_device_is_an_error".into(),
        Box::new(|_| match open_device(4096) {
            Err(Error::NoDevice { ordinal: 4096, .. }) => Ok(()),
            other => Err(format!("device 4096: expected NoDevice, got {other:?}").into()),
        }),
    );
    add("graph_capture_and_replay".into(), Box::new(graph_replay));
    add(
        "host_lengths_on_two_streams".into(),
        Box::new(host_lengths_on_two_streams),
    );
    add("misuse_is_an_error_before_launch".into(), Box::new(misuse));
    add(
        "cluster_residency_from_the_driver".into(),
        Box::new(cluster_residency),
    );
    add(
        "kernel_occupancy_from_the_driver".into(),
        Box::new(kernel_occupancy),
    );
    let conclusion = libtest_mimic::run(&args, trials);
    // Trials that take the whole device, each alone, after the others.
    let mut alone = Vec::new();
    if subset.is_none() && shard.is_none_or(|(i, _)| i == 0) {
        let gpu = gpu.clone();
        alone.push(Trial::ignorable_test(
            "out_of_memory_is_a_typed_error",
            move || match &gpu {
                Ok(g) => out_of_memory(g).map(|()| Completion::Completed),
                Err(reason) if require => {
                    Err(format!("MASKED_SOFTMAX_REQUIRE_GPU=1: {reason}").into())
                }
                Err(reason) => Ok(Completion::ignored_with(reason)),
            },
        ));
    }
    let mut single = Arguments::from_args();
    single.test_threads = Some(1);
    let alone = libtest_mimic::run(&single, alone);
    if conclusion.has_failed() || alone.has_failed() {
        std::process::exit(101);
    }
}
