//! The kernels' CUDA sources run on the CPU emulator (emu/) against the reference, forward
//! and backward: the same matrix as the GPU suite (every mask mode and type, `k_len` across
//! every warp and vector boundary, NaN pads, poisoned outputs, in place, reruns), smaller
//! problems, buffers between guard pages at both alignments, on an A100-like device and,
//! for long rows, on a Hopper-like one with clusters. It also checks that the matrix
//! launches every compiled kernel. This is what CI can say about the kernels without a GPU;
//! the GPU suite (tests/gpu_kernels.rs) remains the judge.

mod common;

use common::dispatch;
use std::collections::BTreeSet;
use std::ffi::c_void;
use std::sync::Mutex;

use common::{
    Case, EVERY_KERNEL_K_LENS, Runs, SPECIAL_SCALES, SpecialCase, SpecialTrial, backward_inputs,
    check_runs, forward_matrix, random_contract, scores_with_nan_pads, special_trials,
};
use libtest_mimic::{Arguments, Completion, Trial};
use masked_softmax::plan::{
    Buffers, ClusterResidency, DeviceLimits, Direction, FetchAhead, KernelKind, MASK_NARROW_ROWS,
    plan_launch,
};
use masked_softmax::{DType, Element, Lengths, Padding, Shape, Spec, compare, seed};
use masked_softmax_emu::{Dims, GuardedBuffer, Placement};

/// A small GPU, so grid-stride loops wrap many times, with little shared memory, so the
/// streaming block kernels get rows the emulator can afford.
const A100ISH: DeviceLimits = DeviceLimits {
    sm_count: 2,
    max_threads_per_sm: 1024,
    max_shared_per_block: 16 << 10,
    shared_per_sm: 32 << 10,
    clusters: false,
    reserved_shared_per_block: 0,
    cluster_residency: ClusterResidency::UNKNOWN,
};
/// A GPU with thread-block clusters and more multiprocessors than the long-row cases have
/// rows, so those too long for block_regs and block_cached take the cluster kernels (the
/// f32 backward at 4097-8200 keys, the f32 forward at 8200, 16-bit at 20000); shared memory small enough that some chunks are
/// cached and some are not.
const HOPPERISH: DeviceLimits = DeviceLimits {
    sm_count: 64,
    max_threads_per_sm: 2048,
    max_shared_per_block: 8 << 10,
    shared_per_sm: 32 << 10,
    clusters: true,
    reserved_shared_per_block: 0,
    cluster_residency: ClusterResidency::UNKNOWN,
};
/// Hopper's shared memory on a small GPU: every kernel that can hold a row in a block's
/// shared memory can be named on it (the `every_kernel` trials).
const BIG_SHARED: DeviceLimits = DeviceLimits {
    sm_count: 4,
    max_threads_per_sm: 2048,
    max_shared_per_block: 227 << 10,
    shared_per_sm: 228 << 10,
    clusters: true,
    reserved_shared_per_block: 0,
    cluster_residency: ClusterResidency::UNKNOWN,
};
/// One multiprocessor of 512 threads: a grid of 1 to 4 block kernels, so each block strides
/// over many rows and the prefetching instances ask for most of them (`prefetch_*` trials),
/// and 16 warps of a rows kernel, each over several batches of `Case::many_rows`.
const TINY_GRID: DeviceLimits = DeviceLimits {
    sm_count: 1,
    max_threads_per_sm: 512,
    ..BIG_SHARED
};
/// Hopper's threads with 24 KiB of shared memory a multiprocessor: no block of a 16-bit
/// forward raw-pair kernel gets its weight cache (rows: 256 threads, 8 to 32 KiB of
/// weights; block_regs: at least 64 threads of 128 bytes, 2 blocks where the registers run
/// 18), so each runs its loop without (the every-kernel trials, on BIG_SHARED, run the one
/// with).
const NO_WEIGHT_CACHE: DeviceLimits = DeviceLimits {
    max_shared_per_block: 24 << 10,
    shared_per_sm: 24 << 10,
    ..BIG_SHARED
};
const MAX_ELEMENTS: usize = 1 << 15;

/// Every kernel some case launched: the whole matrix must reach every compiled kernel.
static LAUNCHED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
/// Every prefetching instance some case saw ask the L2 for a row: the whole matrix must
/// reach each that asks ([`KernelKind::asks_l2_ahead`]; the every-kernel trials' grids
/// mostly give a block a single row, or a warp a single batch).
static PREFETCHED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
/// Every block-per-row kernel some case launched in blocks of a whole number of warps other
/// than a power of two (the planner sizes those blocks in whole warps): the whole matrix
/// must launch each so, since nothing in a block kernel may take its block for a power of
/// two.
static UNEVEN_BLOCKS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// One problem for the emulated kernels: the device, the kernel (the planner's if `kind`
/// is `None`; its prefetching instance if `prefetch`, as
/// `CudaSoftmax::set_next_row_prefetch` launches it), the direction, the spec and lengths,
/// the inputs (`[x]` forward, `[y, dy]` backward) and where the buffers sit against their
/// guard pages.
struct Emulation<'a, T> {
    limits: DeviceLimits,
    kind: Option<KernelKind>,
    prefetch: bool,
    /// Clears MASK_NARROW_ROWS, so that the rows kernels take the 64-bit path that only
    /// launches of 2^31 rows (or a row stride or `k_len + q_len` as large) take otherwise
    /// (kernels/work.cuh, WideRows).
    wide_rows: bool,
    direction: Direction,
    spec: &'a Spec,
    lengths: Lengths<'a>,
    inputs: &'a [&'a [T]],
    placement: Placement,
}

impl<T: Element> Emulation<'_, T> {
    /// One emulated call into a NaN-poisoned output, or in place over the last input;
    /// `None` if the named kernel cannot run the problem.
    fn run(&self, in_place: bool) -> Result<Option<Vec<T>>, String> {
        let (placement, direction) = (self.placement, self.direction);
        let guarded = |v: &[i32]| GuardedBuffer::from_slice(v, placement);
        let kv = self.lengths.kv.map(guarded);
        let q = self.lengths.q.map(guarded);
        let addr = |b: &Option<GuardedBuffer<i32>>| b.as_ref().map_or(0, |b| b.addr());
        let ins: Vec<GuardedBuffer<T>> = self
            .inputs
            .iter()
            .map(|v| GuardedBuffer::from_slice(v, placement))
            .collect();
        let poison = vec![T::from_f64(f64::NAN); self.inputs[0].len()];
        let out = GuardedBuffer::from_slice(&poison, placement);
        let out_buf = if in_place { ins.last().unwrap() } else { &out };
        let buffers = Buffers {
            x: ins[0].addr(),
            y: out_buf.addr(),
            dy: if direction == Direction::Backward {
                ins[1].addr()
            } else {
                0
            },
            kv_lens: addr(&kv),
            q_lens: addr(&q),
        };
        let plan = plan_launch(
            self.kind,
            direction,
            self.spec,
            T::DTYPE,
            self.limits,
            buffers,
        )
        .map_err(|e| e.to_string())?;
        let Some(mut plan) = plan else {
            return Ok(None);
        };
        // Every problem here is small: the planner must let the rows kernels take their
        // 32-bit path, unless the trial asks for the 64-bit one.
        if plan.params.flags & MASK_NARROW_ROWS == 0 {
            return Err(format!("{}: MASK_NARROW_ROWS not set", plan.kernel_name()));
        }
        if self.wide_rows {
            plan.params.flags &= !MASK_NARROW_ROWS;
        }
        let name = match self.prefetch {
            false => plan.kernel_name(),
            true => match plan.kernel.prefetch_name(T::DTYPE, direction) {
                Some(name) => name,
                None => return Ok(None),
            },
        };
        LAUNCHED.lock().unwrap().insert(name.clone());
        if !plan.block.is_power_of_two() {
            UNEVEN_BLOCKS.lock().unwrap().insert(name.clone());
        }
        if let KernelKind::Split { .. } = plan.kernel {
            return self.run_split(plan, buffers, &ins, &out, out_buf);
        }
        let dims = Dims {
            grid: [plan.grid, 1, 1],
            block: [plan.block, 1, 1],
            cluster: plan.cluster,
            shared_bytes: plan.shared_bytes,
        };
        let (mut x, mut dy, mut y) = (buffers.x, buffers.dy, buffers.y);
        let mut forward_args: [*mut c_void; 3] = [
            (&raw mut x).cast(),
            (&raw mut y).cast(),
            (&raw mut plan.params).cast(),
        ];
        let mut backward_args: [*mut c_void; 4] = [
            (&raw mut x).cast(),
            (&raw mut dy).cast(),
            (&raw mut y).cast(),
            (&raw mut plan.params).cast(),
        ];
        let args: &mut [*mut c_void] = match direction {
            Direction::Forward => &mut forward_args,
            Direction::Backward => &mut backward_args,
        };
        // SAFETY: (const T*, T*, MaskParams) forward and (const T*, const T*, T*, MaskParams)
        // backward; the buffers hold the shape's elements and `batch` lengths.
        unsafe { masked_softmax_emu::launch(&name, dims, args) }?;
        if !ins.iter().chain([&out]).all(GuardedBuffer::canary_intact) {
            return Err(format!("{name}: wrote before a buffer"));
        }
        let prefetched = masked_softmax_emu::last_launch_prefetches();
        // The rows a launch takes before any is asked of the L2 (each block's, or each
        // warp's, first): none where it asks for none (the short rows kernels' instances
        // fetch lengths ahead into registers; the rows kernels' 64-bit path fetches in turn).
        let first_asked = match self.prefetch {
            false => None,
            true => match plan.kernel.fetch_ahead(T::DTYPE, direction) {
                Some(FetchAhead::NextRow) => Some(plan.grid as usize),
                // A warp takes 32 / group rows a batch (a row a group), so the grid's first
                // batches are grid * block / group rows.
                Some(FetchAhead::NextBatch) if !self.wide_rows => match plan.kernel {
                    KernelKind::Rows { group, .. } | KernelKind::RowsKeys { group, .. } => {
                        Some((plan.grid * plan.block / group) as usize)
                    }
                    _ => {
                        return Err(format!(
                            "{name}: a next batch to ask for, not a rows kernel"
                        ));
                    }
                },
                _ => None,
            },
        };
        let expected = match first_asked {
            Some(first) => self.expected_prefetches(&ins, first),
            None => (0, 0),
        };
        if prefetched != expected {
            return Err(format!(
                "{name}: L2 prefetches (ranges, bytes) {prefetched:?}, expected {expected:?}"
            ));
        }
        if prefetched.0 > 0 {
            PREFETCHED.lock().unwrap().insert(name.clone());
        }
        Ok(Some(out_buf.as_slice().to_vec()))
    }

    /// The L2 prefetches a prefetching instance makes (kernels/work.cuh, prefetch_row_l2
    /// and prefetch_batch_rows_l2): every row from `first` on (after each block's first
    /// row, or each warp's first batch) once, each input's valid window in the whole
    /// 16-byte chunks it holds (io.cuh, L2Chunks).
    fn expected_prefetches(&self, ins: &[GuardedBuffer<T>], first: usize) -> (u64, u64) {
        let shape = &self.spec.shape;
        let size = T::DTYPE.size_in_bytes();
        let (mut count, mut bytes) = (0, 0);
        for row in first..shape.rows().unwrap() {
            let w = masked_softmax::mask::window_of_row(self.spec, &self.lengths, row);
            for input in ins {
                let at = |column: usize| {
                    input.addr() as usize + (row * shape.row_stride + column) * size
                };
                let (lo, hi) = (at(w.start).next_multiple_of(16), at(w.end) / 16 * 16);
                if !w.is_empty() && hi > lo {
                    count += 1;
                    bytes += (hi - lo) as u64;
                }
            }
        }
        (count, bytes)
    }

    /// A planned [`KernelKind::Split`]: its statistics launch, then its writing launch, with
    /// a NaN-poisoned partials buffer between guard pages.
    fn run_split(
        &self,
        mut plan: masked_softmax::plan::LaunchPlan,
        buffers: Buffers,
        ins: &[GuardedBuffer<T>],
        out: &GuardedBuffer<T>,
        out_buf: &GuardedBuffer<T>,
    ) -> Result<Option<Vec<T>>, String> {
        let first = plan
            .kernel
            .first_pass_name(T::DTYPE, self.direction)
            .ok_or("a split kind without a first pass")?;
        LAUNCHED.lock().unwrap().insert(first.clone());
        let partials =
            GuardedBuffer::from_slice(&vec![f32::NAN; 2 * plan.partials as usize], self.placement);
        let dims = Dims {
            grid: [plan.grid, 1, 1],
            block: [plan.block, 1, 1],
            cluster: plan.cluster,
            shared_bytes: plan.shared_bytes,
        };
        let (mut x, mut dy, mut y, mut scratch) =
            (buffers.x, buffers.dy, buffers.y, partials.addr());
        let p: *mut c_void = (&raw mut plan.params).cast();
        let (x_arg, dy_arg, y_arg, s_arg): (*mut c_void, *mut c_void, *mut c_void, *mut c_void) = (
            (&raw mut x).cast(),
            (&raw mut dy).cast(),
            (&raw mut y).cast(),
            (&raw mut scratch).cast(),
        );
        let (mut first_args, mut second_args): (Vec<*mut c_void>, Vec<*mut c_void>) =
            match self.direction {
                Direction::Forward => (vec![x_arg, s_arg, p], vec![x_arg, y_arg, s_arg, p]),
                Direction::Backward => (
                    vec![x_arg, dy_arg, s_arg, p],
                    vec![x_arg, dy_arg, y_arg, s_arg, p],
                ),
            };
        // SAFETY: the split kernels' parameters (src/cuda.rs, launch_split): the partials
        // hold plan.partials float2, the other buffers the shape and its lengths.
        unsafe { masked_softmax_emu::launch(&first, dims, &mut first_args) }?;
        unsafe { masked_softmax_emu::launch(&plan.kernel_name(), dims, &mut second_args) }?;
        if !ins.iter().chain([out]).all(GuardedBuffer::canary_intact) || !partials.canary_intact() {
            return Err(format!("{}: wrote before a buffer", plan.kernel_name()));
        }
        Ok(Some(out_buf.as_slice().to_vec()))
    }

    /// Out of place twice and in place, checked against the reference and the contract;
    /// false if the named kernel cannot run the problem.
    fn check(&self) -> Result<bool, String> {
        let Some(out) = self.run(false)? else {
            return Ok(false);
        };
        let runs = Runs {
            out,
            out_again: self.run(false)?.ok_or("ran once, then not")?,
            in_place: self.run(true)?.ok_or("ran out of place, not in place")?,
        };
        let (spec, lengths, inputs) = (self.spec, self.lengths, self.inputs);
        let report = match self.direction {
            Direction::Forward => compare::forward(spec, lengths, inputs[0], &runs.out),
            Direction::Backward => {
                compare::backward(spec, lengths, inputs[0], inputs[1], &runs.out)
            }
        };
        check_runs(spec, report, &runs)?;
        Ok(true)
    }
}

/// [`Emulation::check`] on the planner's kernel.
fn check<T: Element>(
    limits: DeviceLimits,
    direction: Direction,
    spec: &Spec,
    lengths: Lengths,
    inputs: &[&[T]],
    placement: Placement,
) -> Result<(), String> {
    Emulation {
        limits,
        kind: None,
        prefetch: false,
        wide_rows: false,
        direction,
        spec,
        lengths,
        inputs,
        placement,
    }
    .check()
    .map(|_| ())
}

/// Every compiled kernel of a direction that can run `case` (the prefetching instances
/// too), named rather than planned, at both buffer placements (at the end of a page, rows sit off 16-byte boundaries and the
/// vector kernels see them shifted): each must match the reference.
fn every_kernel<T: Element>(direction: Direction, case: &Case) -> Result<(), String> {
    let inputs = case.inputs::<T>(direction);
    let inputs: Vec<&[T]> = inputs.iter().map(Vec::as_slice).collect();
    every_kernel_on(direction, &case.spec, case.lengths(), &inputs)
}

/// Every compiled kernel on the special values (zero rows of -inf keys, NaN, +-inf, huge and
/// subnormal scores): the planner's kernels meet them in `special_values`, but only where
/// the planner sends those shapes.
fn every_kernel_special<T: Element>(t: SpecialTrial) -> Result<(), String> {
    let case = SpecialCase::<T>::new(t);
    every_kernel_on(
        t.direction,
        &case.spec,
        case.lengths(),
        &case.input_slices(),
    )
}

fn every_kernel_on<T: Element>(
    direction: Direction,
    spec: &Spec,
    lengths: Lengths,
    inputs: &[&[T]],
) -> Result<(), String> {
    let mut ran = 0;
    let mut vector_ran = [false; PLACEMENTS.len()];
    // Each kernel, each prefetching instance, and each rows kernel (and its prefetching
    // instance) again on its 64-bit path (Emulation::wide_rows).
    let runs = KernelKind::all(T::DTYPE, true, direction)
        .into_iter()
        .flat_map(|kind| {
            let prefetch = kind.prefetch_name(T::DTYPE, direction).is_some();
            let rows = matches!(kind, KernelKind::Rows { .. } | KernelKind::RowsKeys { .. });
            std::iter::once((kind, false, false))
                .chain(prefetch.then_some((kind, true, false)))
                .chain(rows.then_some((kind, false, true)))
                .chain((rows && prefetch).then_some((kind, true, true)))
        });
    for (kind, prefetch, wide_rows) in runs {
        for (i, (placement, _)) in PLACEMENTS.into_iter().enumerate() {
            let name = match prefetch {
                false => kind.name(T::DTYPE, direction),
                true => kind.prefetch_name(T::DTYPE, direction).unwrap_or_default(),
            };
            let name = match wide_rows {
                false => name,
                true => format!("{name} (64-bit rows)"),
            };
            let emulation = Emulation {
                limits: BIG_SHARED,
                kind: Some(kind),
                prefetch,
                wide_rows,
                direction,
                spec,
                lengths,
                inputs,
                placement,
            };
            match emulation.check() {
                Ok(true) => {
                    ran += 1;
                    vector_ran[i] |= kind.pack() > 1;
                }
                Ok(false) => {}
                Err(e) => return Err(format!("{name}: {e}")),
            }
        }
    }
    if ran == 0 {
        return Err("no kernel ran".into());
    }
    // Inputs and output of one length sit alike against 16-byte boundaries at either
    // placement, so vector kernels (shifted where rows are off them) must run.
    if vector_ran != [true; PLACEMENTS.len()] {
        return Err(format!(
            "no vector kernel ran at some placement: {vector_ran:?}"
        ));
    }
    Ok(())
}

/// [`Emulation::check`] on `kind` (its prefetching instance if `prefetch`), named, at
/// each placement: at how many it could run `case`.
fn check_named<T: Element>(
    limits: DeviceLimits,
    kind: KernelKind,
    prefetch: bool,
    direction: Direction,
    case: &Case,
    inputs: &[&[T]],
) -> Result<usize, String> {
    let mut ran = 0;
    for (placement, _) in PLACEMENTS {
        let emulation = Emulation {
            limits,
            kind: Some(kind),
            prefetch,
            wide_rows: false,
            direction,
            spec: &case.spec,
            lengths: case.lengths(),
            inputs,
            placement,
        };
        ran += usize::from(emulation.check()?);
    }
    Ok(ran)
}

/// Every 16-bit forward raw-pair kernel that keeps its weights where granted
/// ([`KernelKind::keeps_weights`]: `Rows` of 16-byte packs, `BlockRegs` p8x4 and p8x8) that
/// can run `case`, named, on NO_WEIGHT_CACHE, whose plans give it no weight cache: each must
/// match the reference through the loop that computes each weight twice.
fn without_weight_cache<T: Element>(case: &Case) -> Result<(), String> {
    let direction = Direction::Forward;
    let inputs = case.inputs::<T>(direction);
    let inputs: Vec<&[T]> = inputs.iter().map(Vec::as_slice).collect();
    let mut ran = 0;
    for kind in KernelKind::all(T::DTYPE, false, direction) {
        if !kind.keeps_weights(T::DTYPE, direction) {
            continue;
        }
        let plan = plan_launch(
            Some(kind),
            direction,
            &case.spec,
            T::DTYPE,
            NO_WEIGHT_CACHE,
            Buffers::default(),
        )
        .map_err(|e| e.to_string())?;
        if let Some(plan) = plan
            && plan.weight_cache_bytes() != 0
        {
            return Err(format!(
                "{}: a weight cache of {} bytes",
                plan.kernel_name(),
                plan.weight_cache_bytes()
            ));
        }
        ran += check_named(NO_WEIGHT_CACHE, kind, false, direction, case, &inputs)
            .map_err(|e| format!("{}: {e}", kind.name(T::DTYPE, direction)))?;
    }
    match ran {
        0 => Err("no raw-pair kernel ran".into()),
        _ => Ok(()),
    }
}

/// The prefetching instances of `direction` ([`KernelKind::prefetch_name`]) that can run
/// `case`, those that ask the L2 or the others as `asking_l2` says, on TINY_GRID, where a block strides over several rows (and a rows kernel's warp
/// over several batches, each fetching the next's lengths): each must match the reference
/// and, where it asks the L2, ask for exactly the bytes of the rows after each block's
/// first (`Emulation::run`). (Whether each asks for any somewhere: the matrix's end,
/// PREFETCHED.)
fn prefetch_instances<T: Element>(
    direction: Direction,
    case: &Case,
    asking_l2: bool,
) -> Result<(), String> {
    let inputs = case.inputs::<T>(direction);
    let inputs: Vec<&[T]> = inputs.iter().map(Vec::as_slice).collect();
    let kinds: Vec<KernelKind> = KernelKind::all(T::DTYPE, false, direction)
        .into_iter()
        .filter(|k| {
            k.prefetch_name(T::DTYPE, direction).is_some()
                && k.asks_l2_ahead(T::DTYPE, direction) == asking_l2
        })
        .collect();
    if kinds.is_empty() {
        return Err("no prefetching instance".into());
    }
    let mut ran = false;
    for kind in kinds {
        ran |= check_named(TINY_GRID, kind, true, direction, case, &inputs)? > 0;
    }
    match ran {
        true => Ok(()),
        false => Err("no prefetching instance can run the case".into()),
    }
}

fn to<T: Element>(v: Vec<f64>) -> Vec<T> {
    v.into_iter().map(T::from_f64).collect()
}

fn forward_case<T: Element>(
    limits: DeviceLimits,
    case: &Case,
    placement: Placement,
) -> Result<(), String> {
    let x = case.scores::<T>();
    check(
        limits,
        Direction::Forward,
        &case.spec,
        case.lengths(),
        &[&x],
        placement,
    )
}

fn backward_case<T: Element>(
    limits: DeviceLimits,
    case: &Case,
    placement: Placement,
) -> Result<(), String> {
    let (y, dy) = backward_inputs(&case.spec, case.lengths(), case.seed);
    let (y, dy) = (to::<T>(y), to::<T>(dy));
    check(
        limits,
        Direction::Backward,
        &case.spec,
        case.lengths(),
        &[&y, &dy],
        placement,
    )
}

/// The special scores and scales through the planner's kernel on `limits` (HOPPERISH: the
/// 20 rows of 20000 keys take the cluster kernels).
fn special_values<T: Element>(limits: DeviceLimits, t: SpecialTrial) -> Result<(), String> {
    let case = SpecialCase::<T>::new(t);
    let inputs = case.input_slices();
    check(
        limits,
        t.direction,
        &case.spec,
        case.lengths(),
        &inputs,
        Placement::Start,
    )
}

fn seed_example<T: Element>() -> Result<(), String> {
    let spec = Spec::new(Shape::matrix(seed::ROWS, seed::COLS));
    let x = seed::scores::<T>();
    let lengths = Lengths::keys(&seed::LENGTHS);
    check(
        A100ISH,
        Direction::Forward,
        &spec,
        lengths,
        &[&x],
        Placement::Start,
    )
}

fn many_rows<T: Element>() -> Result<(), String> {
    let spec = Spec::new(Shape::new(300, 3, 10, 3)).padding(Padding::Left);
    let kv: Vec<i32> = (0..300).map(|b| b % 4).collect();
    let x = to::<T>(scores_with_nan_pads(&spec, Lengths::keys(&kv), 12));
    check(
        A100ISH,
        Direction::Forward,
        &spec,
        Lengths::keys(&kv),
        &[&x],
        Placement::End,
    )?;
    let (y, dy) = backward_inputs(&spec, Lengths::keys(&kv), 12);
    let (y, dy) = (to::<T>(y), to::<T>(dy));
    check(
        A100ISH,
        Direction::Backward,
        &spec,
        Lengths::keys(&kv),
        &[&y, &dy],
        Placement::End,
    )
}

/// Contracts `first..first + count` of the fuzz sequence, forward and backward, in `T`.
fn fuzz<T: Element>(first: u64, count: u64) -> Result<(), String> {
    for seed in first..first + count {
        let (spec, kv, q) = random_contract(seed, 4096);
        let lengths = Lengths {
            kv: Some(&kv),
            q: q.as_deref(),
        };
        let placement = if seed % 2 == 0 {
            Placement::Start
        } else {
            Placement::End
        };
        let limits = if seed % 3 == 0 { HOPPERISH } else { A100ISH };
        let context = |e: String| format!("contract {seed} ({spec:?}, kv {kv:?}, q {q:?}): {e}");
        let x = to::<T>(scores_with_nan_pads(&spec, lengths, seed));
        check(limits, Direction::Forward, &spec, lengths, &[&x], placement).map_err(context)?;
        let (y, dy) = backward_inputs(&spec, lengths, seed);
        let (y, dy) = (to::<T>(y), to::<T>(dy));
        check(
            limits,
            Direction::Backward,
            &spec,
            lengths,
            &[&y, &dy],
            placement,
        )
        .map_err(context)?;
    }
    Ok(())
}

const PLACEMENTS: [(Placement, &str); 2] = [(Placement::Start, "start"), (Placement::End, "end")];

fn main() {
    let args = Arguments::from_args();
    let available = masked_softmax_emu::available();
    if !available {
        println!("emu_kernels: SKIPPING: the emulator was built without the CUDA headers");
    }
    let mut trials = Vec::new();
    let mut add = |name: String, test: Box<dyn FnOnce() -> Result<(), String> + Send>| {
        trials.push(Trial::ignorable_test(name, move || {
            if !available {
                return Ok(Completion::ignored_with(
                    "emulator built without CUDA headers",
                ));
            }
            test().map(|()| Completion::Completed).map_err(Into::into)
        }));
    };
    for dtype in DType::ALL {
        let t = dtype.kernel_suffix();
        add(
            format!("seed_example_{t}"),
            Box::new(move || dispatch!(dtype, seed_example)),
        );
        add(
            format!("grid_stride_over_many_rows_{t}"),
            Box::new(move || dispatch!(dtype, many_rows)),
        );
        for (name, mode, k_len) in forward_matrix() {
            let case = Case::new(mode, k_len, MAX_ELEMENTS);
            for (placement, p) in PLACEMENTS {
                let c = case.clone();
                add(
                    format!("forward_{name}_{t}_{p}"),
                    Box::new(move || dispatch!(dtype, forward_case, A100ISH, &c, placement)),
                );
                let c = case.clone();
                add(
                    format!("backward_{name}_{t}_{p}"),
                    Box::new(move || dispatch!(dtype, backward_case, A100ISH, &c, placement)),
                );
            }
            // Long rows on a GPU with clusters, in every mask mode.
            if k_len > 1024 {
                for (placement, p) in PLACEMENTS {
                    let c = case.clone();
                    add(
                        format!("hopper_forward_{name}_{t}_{p}"),
                        Box::new(move || dispatch!(dtype, forward_case, HOPPERISH, &c, placement)),
                    );
                    let c = case.clone();
                    add(
                        format!("hopper_backward_{name}_{t}_{p}"),
                        Box::new(move || dispatch!(dtype, backward_case, HOPPERISH, &c, placement)),
                    );
                }
            }
        }
    }
    // Every kernel that can run a problem, named: both sides of each kernel's capacity.
    for (name, dtype, direction, case) in
        common::every_kernel_cases(EVERY_KERNEL_K_LENS, MAX_ELEMENTS)
    {
        add(
            name,
            Box::new(move || dispatch!(dtype, every_kernel, direction, &case)),
        );
    }
    // The prefetching instances where blocks stride over rows (and, at 1 to 64 keys, the
    // rows kernels' instances, where warps take several batches of rows, each with its own
    // lengths: 6144 rows, 3 to 48 batches a warp on TINY_GRID's 16 warps), in the modes
    // that give rows full, empty, cut at both ends and left-padded windows.
    for (mode, k) in common::MODES
        .iter()
        .filter(|m| ["right", "causal_left_q", "window_q"].contains(&m.name))
        .flat_map(|m| [1, 7, 32, 64, 77, 1000, 4097, 8192].map(|k| (m, k)))
    {
        for dtype in DType::ALL {
            for (direction, d) in common::DIRECTIONS {
                let short = k <= 64;
                let case = match short {
                    true => Case::many_rows(*mode, k, 6144),
                    false => Case::new(*mode, k, MAX_ELEMENTS),
                };
                add(
                    format!("prefetch_{d}_{}_{}_k{k}", mode.name, dtype.kernel_suffix()),
                    Box::new(move || {
                        dispatch!(dtype, prefetch_instances, direction, &case, !short)
                    }),
                );
            }
        }
    }
    // The 16-bit forward raw-pair kernels without their weight cache, in the modes that
    // give rows full, empty, cut at both ends and left-padded windows.
    for (mode, k) in common::MODES
        .iter()
        .filter(|m| ["right", "causal_left_q", "window_q"].contains(&m.name))
        .flat_map(|m| [64, 256, 1001].map(|k| (m, k)))
    {
        for dtype in [DType::F16, DType::BF16] {
            let case = Case::new(*mode, k, MAX_ELEMENTS);
            add(
                format!(
                    "without_weight_cache_{}_{}_k{k}",
                    mode.name,
                    dtype.kernel_suffix()
                ),
                Box::new(move || dispatch!(dtype, without_weight_cache, &case)),
            );
        }
    }
    // The special values through the planner's kernels (HOPPERISH: 20 rows of 20000 keys
    // take the clusters), and through every kernel at the usual and a negative scale.
    for t in special_trials(&[5, 100, 1000, 3000, 5000, 10000, 20000], &SPECIAL_SCALES) {
        let name = format!("special_values_{}", t.name());
        add(
            name.clone(),
            Box::new(move || dispatch!(t.dtype, special_values, A100ISH, t)),
        );
        if t.k_len == 20000 {
            add(
                format!("hopper_{name}"),
                Box::new(move || dispatch!(t.dtype, special_values, HOPPERISH, t)),
            );
        }
    }
    // 20000: rows of several chunks for the split kernels, 16-byte packs too.
    for t in special_trials(&[7, 64, 1000, 5000, 20000], &[1.0, -0.7]) {
        add(
            format!("every_kernel_special_{}", t.name()),
            Box::new(move || dispatch!(t.dtype, every_kernel_special, t)),
        );
    }
    // 2400 random contracts (800 per type), forward and backward, in trials of 50.
    for chunk in 0..48u64 {
        let dtype = DType::ALL[chunk as usize % 3];
        add(
            format!("fuzz_{}_{chunk:02}", dtype.kernel_suffix()),
            Box::new(move || dispatch!(dtype, fuzz, 10_000 + chunk * 50, 50)),
        );
    }
    let whole_matrix = args.filter.is_none() && args.skip.is_empty() && !args.list;
    let conclusion = libtest_mimic::run(&args, trials);
    if available && whole_matrix {
        let launched = LAUNCHED.lock().unwrap();
        let kinds: Vec<(KernelKind, DType, Direction)> = [Direction::Forward, Direction::Backward]
            .into_iter()
            .flat_map(|direction| {
                DType::ALL.into_iter().flat_map(move |d| {
                    KernelKind::all(d, true, direction)
                        .into_iter()
                        .map(move |k| (k, d, direction))
                })
            })
            .collect();
        let compiled: Vec<String> = kinds
            .iter()
            .flat_map(|&(k, d, direction)| {
                std::iter::once(k.name(d, direction))
                    .chain(k.first_pass_name(d, direction))
                    .chain(k.prefetch_name(d, direction))
            })
            .collect();
        let missed: Vec<&String> = compiled.iter().filter(|n| !launched.contains(*n)).collect();
        if !missed.is_empty() {
            println!("emu_kernels: the case matrix never launched {missed:?}");
            std::process::exit(1);
        }
        let prefetched = PREFETCHED.lock().unwrap();
        let asking: Vec<String> = kinds
            .iter()
            .filter(|&&(k, d, direction)| k.asks_l2_ahead(d, direction))
            .filter_map(|&(k, d, direction)| k.prefetch_name(d, direction))
            .collect();
        let idle: Vec<&String> = asking.iter().filter(|n| !prefetched.contains(*n)).collect();
        if !idle.is_empty() {
            println!(
                "emu_kernels: these prefetching instances never asked the L2 for a row: {idle:?}"
            );
            std::process::exit(1);
        }
        let uneven = UNEVEN_BLOCKS.lock().unwrap();
        let block_per_row: Vec<String> = kinds
            .iter()
            .filter(|(k, _, _)| {
                matches!(
                    k,
                    KernelKind::BlockRegs { .. }
                        | KernelKind::BlockCached { .. }
                        | KernelKind::BlockStream { .. }
                )
            })
            .map(|&(k, d, direction)| k.name(d, direction))
            .collect();
        let even: Vec<&String> = block_per_row
            .iter()
            .filter(|n| !uneven.contains(*n))
            .collect();
        if !even.is_empty() {
            println!(
                "emu_kernels: these block kernels never ran in a block of whole warps other \
                 than a power of two: {even:?}"
            );
            std::process::exit(1);
        }
        println!(
            "emu_kernels: every one of the {} compiled kernels ran, each of the {} \
             prefetching instances that asks the L2 asked for rows, and each of the {} \
             block-per-row kernels ran in a block of warps not a power of two in number",
            compiled.len(),
            prefetched.len(),
            block_per_row.len()
        );
    }
    conclusion.exit();
}
