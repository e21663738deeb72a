//! The forward kernels' CUDA sources run on the CPU emulator (emu/) against the reference:
//! the same matrix as the GPU suite (every mask mode and type, `k_len` across every warp
//! and vector boundary, NaN pads, poisoned outputs, in place, reruns), smaller problems,
//! buffers between guard pages at both alignments. This is what CI can say about the
//! kernels without a GPU; the GPU suite (tests/gpu_forward.rs) remains the judge.

mod common;

use std::collections::BTreeSet;
use std::ffi::c_void;
use std::sync::Mutex;

use common::{
    Case, ForwardRuns, SPECIAL_SCALES, check_forward_runs, forward_matrix, scores_with_nan_pads,
    special_scores,
};
use libtest_mimic::{Arguments, Completion, Trial};
use masked_softmax::plan::{Buffers, DeviceLimits, KernelKind, plan_forward};
use masked_softmax::{DType, Element, Lengths, Padding, Shape, Spec, bf16, f16, seed};
use masked_softmax_emu::{Dims, GuardedBuffer, Placement};

/// A small GPU, so grid-stride loops wrap many times, with little shared memory, so the
/// streaming block kernel gets rows the emulator can afford.
const LIMITS: DeviceLimits = DeviceLimits {
    sm_count: 2,
    max_threads_per_sm: 1024,
    max_shared_per_block: 16 << 10,
    shared_per_sm: 32 << 10,
    clusters: false,
};
/// A GPU with thread-block clusters and more multiprocessors than the long-row cases have
/// rows, so those take the cluster kernels; shared memory small enough that some chunks
/// are cached and some are not.
const HOPPER: DeviceLimits = DeviceLimits {
    sm_count: 64,
    max_threads_per_sm: 2048,
    max_shared_per_block: 8 << 10,
    shared_per_sm: 32 << 10,
    clusters: true,
};
const MAX_ELEMENTS: usize = 1 << 15;

/// Every kernel some case launched: the whole matrix must reach every compiled kernel.
static LAUNCHED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Runs the planned forward kernel on the emulator; `in_place` passes `x` as `y`.
fn emulate<T: Element>(
    limits: DeviceLimits,
    spec: &Spec,
    lengths: Lengths,
    x: &[T],
    placement: Placement,
    in_place: bool,
) -> Result<Vec<T>, String> {
    let guarded = |v: &[i32]| GuardedBuffer::from_slice(v, placement);
    let kv = lengths.kv.map(guarded);
    let q = lengths.q.map(guarded);
    let x_buf = GuardedBuffer::from_slice(x, placement);
    let y_buf = GuardedBuffer::from_slice(&vec![T::from_f64(f64::NAN); x.len()], placement);
    let addr = |b: &Option<GuardedBuffer<i32>>| b.as_ref().map_or(0, |b| b.addr());
    let (mut x_addr, mut y_addr) = (
        x_buf.addr(),
        if in_place { x_buf.addr() } else { y_buf.addr() },
    );
    let buffers = Buffers {
        x: x_addr,
        y: y_addr,
        kv_lens: addr(&kv),
        q_lens: addr(&q),
    };
    let mut plan = plan_forward(spec, T::DTYPE, limits, buffers).map_err(|e| e.to_string())?;
    let dims = Dims {
        grid: [plan.grid, 1, 1],
        block: [plan.block, 1, 1],
        cluster: plan.cluster,
        shared_bytes: plan.shared_bytes,
    };
    let mut params: [*mut c_void; 3] = [
        (&raw mut x_addr).cast(),
        (&raw mut y_addr).cast(),
        (&raw mut plan.params).cast(),
    ];
    LAUNCHED.lock().unwrap().insert(plan.kernel_name());
    // SAFETY: (const T*, T*, MaskParams) is the signature of every forward kernel; the
    // buffers hold the shape's elements and `batch` lengths.
    unsafe { masked_softmax_emu::launch(&plan.kernel_name(), dims, &mut params) }?;
    Ok(if in_place { x_buf } else { y_buf }.as_slice().to_vec())
}

fn check_on<T: Element>(
    limits: DeviceLimits,
    spec: &Spec,
    lengths: Lengths,
    x: &[T],
    placement: Placement,
) -> Result<(), String> {
    let runs = ForwardRuns {
        y: emulate(limits, spec, lengths, x, placement, false)?,
        y_again: emulate(limits, spec, lengths, x, placement, false)?,
        xy: emulate(limits, spec, lengths, x, placement, true)?,
    };
    check_forward_runs(spec, lengths, x, &runs)
}

fn check<T: Element>(
    spec: &Spec,
    lengths: Lengths,
    x: &[T],
    placement: Placement,
) -> Result<(), String> {
    check_on(LIMITS, spec, lengths, x, placement)
}

fn random_case<T: Element>(case: &Case, placement: Placement) -> Result<(), String> {
    check(&case.spec, case.lengths(), &case.scores::<T>(), placement)
}

fn cluster_case<T: Element>(case: &Case, placement: Placement) -> Result<(), String> {
    check_on(
        HOPPER,
        &case.spec,
        case.lengths(),
        &case.scores::<T>(),
        placement,
    )
}

fn special_values<T: Element>(k_len: usize, scale: f32) -> Result<(), String> {
    let spec = Spec::new(Shape::new(4, 1, 4, k_len).with_row_stride(k_len + 1)).scale(scale);
    let kv = [k_len as i32, 1, (k_len as i32 + 1) / 2, k_len as i32];
    let lengths = Lengths::keys(&kv);
    let x: Vec<T> = special_scores(&spec, lengths, 13)
        .into_iter()
        .map(T::from_f64)
        .collect();
    check(&spec, lengths, &x, Placement::Start)
}

fn seed_example<T: Element>() -> Result<(), String> {
    let spec = Spec::new(Shape::matrix(seed::ROWS, seed::COLS));
    check(
        &spec,
        Lengths::keys(&seed::LENGTHS),
        &seed::scores::<T>(),
        Placement::Start,
    )
}

fn many_rows<T: Element>() -> Result<(), String> {
    let spec = Spec::new(Shape::new(300, 3, 10, 3)).padding(Padding::Left);
    let kv: Vec<i32> = (0..300).map(|b| b % 4).collect();
    let x: Vec<T> = scores_with_nan_pads(&spec, Lengths::keys(&kv), 12)
        .into_iter()
        .map(T::from_f64)
        .collect();
    check(&spec, Lengths::keys(&kv), &x, Placement::End)
}

macro_rules! dispatch {
    ($dtype:expr, $f:ident $(, $arg:expr)*) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F16 => $f::<f16>($($arg),*),
            DType::BF16 => $f::<bf16>($($arg),*),
        }
    };
}

fn main() {
    let args = Arguments::from_args();
    let available = masked_softmax_emu::available();
    if !available {
        println!("emu_forward: SKIPPING: the emulator was built without the CUDA headers");
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
        for k_len in [5, 100, 1000, 3000, 20000] {
            for scale in SPECIAL_SCALES {
                add(
                    format!("special_values_{t}_k{k_len}_scale{scale:e}"),
                    Box::new(move || dispatch!(dtype, special_values, k_len, scale)),
                );
            }
        }
        for (name, mode, k_len) in forward_matrix().into_iter().filter(|m| m.2 > 1024) {
            let case = Case::new(mode, k_len, MAX_ELEMENTS);
            for (placement, p) in [(Placement::Start, "start"), (Placement::End, "end")] {
                let case = case.clone();
                add(
                    format!("hopper_{name}_{t}_{p}"),
                    Box::new(move || dispatch!(dtype, cluster_case, &case, placement)),
                );
            }
        }
        for (name, mode, k_len) in forward_matrix() {
            let case = Case::new(mode, k_len, MAX_ELEMENTS);
            for (placement, p) in [(Placement::Start, "start"), (Placement::End, "end")] {
                let case = case.clone();
                add(
                    format!("random_{name}_{t}_{p}"),
                    Box::new(move || dispatch!(dtype, random_case, &case, placement)),
                );
            }
        }
    }
    let whole_matrix = args.filter.is_none() && args.skip.is_empty() && !args.list;
    let conclusion = libtest_mimic::run(&args, trials);
    if available && whole_matrix {
        let launched = LAUNCHED.lock().unwrap();
        let missed: Vec<String> = DType::ALL
            .iter()
            .flat_map(|&d| {
                KernelKind::all(d, true)
                    .into_iter()
                    .map(move |k| k.forward_name(d))
            })
            .filter(|name| !launched.contains(name))
            .collect();
        if !missed.is_empty() {
            println!("emu_forward: the case matrix never launched {missed:?}");
            std::process::exit(1);
        }
        println!(
            "emu_forward: every one of the {} compiled forward kernels ran",
            launched.len()
        );
    }
    conclusion.exit();
}
