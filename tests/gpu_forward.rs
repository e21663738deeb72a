//! The forward kernel on a GPU, checked against the CPU reference: the seed example, every
//! mask mode and storage type over `k_len` from 1 to beyond a block, row strides that
//! break 16-byte alignment, NaN in every pad, outputs poisoned before the launch, in-place
//! runs, device lengths out of range, and misuse caught before launch.
//!
//! Without a GPU (or without kernels in this build) every test is reported as ignored with
//! the reason; `MASKED_SOFTMAX_REQUIRE_GPU=1` (set by the GPU bundle) turns that into a
//! failure.

mod common;

use std::sync::Arc;

use common::{Lcg, scores_with_nan_pads};
use cudarc::driver::{CudaContext, CudaStream, DeviceRepr};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use masked_softmax::cuda::{CudaSoftmax, DeviceLengths, open_device};
use masked_softmax::{
    Causal, DType, Element, Error, Lengths, Padding, Shape, Spec, bf16, compare, f16, seed,
};

struct Gpu {
    ctx: Arc<CudaContext>,
    softmax: CudaSoftmax,
}

fn open_gpu() -> Result<Gpu, String> {
    if !masked_softmax::cuda::kernels_built() {
        return Err(Error::KernelsNotBuilt.to_string());
    }
    let ctx = open_device(0).map_err(|e| e.to_string())?;
    let softmax = CudaSoftmax::new(&ctx).map_err(|e| e.to_string())?;
    Ok(Gpu { ctx, softmax })
}

type TestResult = Result<(), Failed>;

fn main() {
    let args = Arguments::from_args();
    let gpu = open_gpu().map(Arc::new);
    let require = std::env::var("MASKED_SOFTMAX_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match &gpu {
        Ok(g) => println!(
            "gpu_forward: running on {} (PTX {})",
            g.ctx.name().unwrap_or_default(),
            masked_softmax::cuda::PTX_TARGET.unwrap_or("?")
        ),
        Err(reason) => println!("gpu_forward: SKIPPING every GPU test: {reason}"),
    }
    let mut trials = Vec::new();
    let mut add = |name: String, test: Box<dyn FnOnce(&Gpu) -> TestResult + Send>| {
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
        for mode in MODES {
            for &k_len in K_LENS {
                let case = Case::new(mode, k_len);
                add(
                    format!("random_{}_{t}_k{k_len}", mode.name),
                    Box::new(move |g| dispatch!(dtype, random_case, g, &case)),
                );
            }
        }
    }
    add("misuse_is_an_error_before_launch".into(), Box::new(misuse));
    libtest_mimic::run(&args, trials).exit();
}

/// Calls `f::<T>(args..)` with `T` the storage type of `dtype`.
macro_rules! dispatch {
    ($dtype:expr, $f:ident, $($arg:expr),*) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F16 => $f::<f16>($($arg),*),
            DType::BF16 => $f::<bf16>($($arg),*),
        }
    };
}
use dispatch;

/// Row lengths on both sides of every warp and vector boundary, and long rows.
const K_LENS: &[usize] = &[
    1, 2, 3, 7, 8, 31, 32, 33, 63, 64, 65, 100, 255, 256, 1000, 1024, 1025, 4097, 20000,
];

#[derive(Clone, Copy)]
struct Mode {
    name: &'static str,
    padding: Padding,
    query_lengths: bool,
    causal: Option<Causal>,
}

const MODES: [Mode; 7] = [
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

#[derive(Clone)]
struct Case {
    spec: Spec,
    kv: Vec<i32>,
    q: Option<Vec<i32>>,
    seed: u64,
}

impl Case {
    fn new(mode: Mode, k_len: usize) -> Case {
        let seed = k_len as u64 * 7919 + mode.name.len() as u64;
        let mut rng = Lcg(seed);
        let (batch, heads) = (4, 2);
        // About a million elements at most; odd strides break 16-byte alignment.
        let q_len = (1 << 20) / (batch * heads * k_len);
        let q_len = q_len.clamp(1, 9);
        let row_stride = if k_len % 2 == 1 { k_len + 3 } else { k_len };
        let shape = Shape::new(batch, heads, q_len, k_len).with_row_stride(row_stride);
        // Full and empty lengths always, random ones between.
        let kv = vec![
            k_len as i32,
            0,
            rng.range(0, k_len as i64) as i32,
            rng.range(1, k_len as i64) as i32,
        ];
        let q = mode.query_lengths.then(|| {
            vec![
                rng.range(0, q_len as i64) as i32,
                q_len as i32,
                0.max(q_len as i32 - 1),
                rng.range(0, q_len as i64) as i32,
            ]
        });
        let spec = Spec {
            shape,
            padding: mode.padding,
            causal: mode.causal,
            scale: 0.7,
        };
        Case { spec, kv, q, seed }
    }

    fn lengths(&self) -> Lengths<'_> {
        Lengths {
            kv: Some(&self.kv),
            q: self.q.as_deref(),
        }
    }
}

fn bytes_of<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: any initialized Copy slice can be read as bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

fn nan<T: Element>() -> T {
    T::from_f64(f64::NAN)
}

/// Runs the forward out of place on a NaN-poisoned output and in place, checks both
/// against the reference, the gaps between rows untouched, and a rerun bit-identical.
fn check_forward<T: Element + DeviceRepr>(
    g: &Gpu,
    stream: &Arc<CudaStream>,
    spec: &Spec,
    lengths: Lengths,
    device_lengths: DeviceLengths,
    x_host: &[T],
) -> Result<Vec<T>, Failed> {
    let x = stream.clone_htod(x_host)?;
    let mut y = stream.clone_htod(&vec![nan::<T>(); x_host.len()])?;
    g.softmax
        .forward(stream, spec, device_lengths, &x, &mut y)?;
    let y_host = stream.clone_dtoh(&y)?;
    compare::forward(spec, lengths, x_host, &y_host)?.into_result()?;

    let shape = spec.shape;
    for row in 0..shape.rows()? {
        let gap =
            row * shape.row_stride + shape.k_len..((row + 1) * shape.row_stride).min(y_host.len());
        if y_host[gap.clone()].iter().any(|v| !v.to_f64().is_nan()) {
            return Err(format!("row {row}: the gap {gap:?} between rows was written").into());
        }
    }

    g.softmax
        .forward(stream, spec, device_lengths, &x, &mut y)?;
    if bytes_of(&stream.clone_dtoh(&y)?) != bytes_of(&y_host) {
        return Err("a second run is not bit-identical to the first".into());
    }

    let mut xy = stream.clone_htod(x_host)?;
    g.softmax
        .forward_in_place(stream, spec, device_lengths, &mut xy)?;
    let xy_host = stream.clone_dtoh(&xy)?;
    let rows_only = |v: &[T]| -> Vec<u8> {
        (0..shape.rows().unwrap())
            .flat_map(|r| {
                bytes_of(&v[r * shape.row_stride..r * shape.row_stride + shape.k_len]).to_vec()
            })
            .collect()
    };
    if rows_only(&xy_host) != rows_only(&y_host) {
        return Err("in-place result differs from out-of-place".into());
    }
    Ok(y_host)
}

fn seed_example<T: Element + DeviceRepr>(g: &Gpu) -> TestResult {
    let stream = g.ctx.new_stream()?;
    let spec = Spec::new(Shape::matrix(seed::ROWS, seed::COLS));
    let lengths = stream.clone_htod(&seed::LENGTHS)?;
    let x = seed::scores::<T>();
    let y = check_forward(
        g,
        &stream,
        &spec,
        Lengths::keys(&seed::LENGTHS),
        DeviceLengths::keys(&lengths),
        &x,
    )?;
    for (i, (got, want)) in y.iter().zip(seed::PUBLISHED.iter().flatten()).enumerate() {
        // 4 decimals, plus the storage rounding of the 16-bit types.
        let tol = 0.5e-4
            + if T::DTYPE == DType::F32 {
                0.0
            } else {
                4e-3 * want
            };
        if (got.to_f64() - want).abs() > tol {
            return Err(format!("element {i}: {} vs published {want}", got.to_f64()).into());
        }
    }
    Ok(())
}

fn random_case<T: Element + DeviceRepr>(g: &Gpu, case: &Case) -> TestResult {
    let stream = g.ctx.new_stream()?;
    let x: Vec<T> = scores_with_nan_pads(&case.spec, case.lengths(), case.seed)
        .into_iter()
        .map(T::from_f64)
        .collect();
    let kv = stream.clone_htod(&case.kv)?;
    let q = case.q.as_ref().map(|q| stream.clone_htod(q)).transpose()?;
    let device_lengths = DeviceLengths {
        kv: Some(&kv),
        q: q.as_ref().map(|q| q as _),
    };
    check_forward(g, &stream, &case.spec, case.lengths(), device_lengths, &x).map(drop)
}

fn device_lengths_are_clamped<T: Element + DeviceRepr>(g: &Gpu) -> TestResult {
    let stream = g.ctx.new_stream()?;
    let spec = Spec::new(Shape::new(3, 2, 5, 37)).causal();
    let (kv_raw, q_raw) = ([-5, 37 + 10, i32::MAX], [i32::MIN, 5 + 3, 2]);
    let (kv_clamped, q_clamped) = ([0, 37, 37], [0, 5, 2]);
    let x: Vec<T> = scores_with_nan_pads(
        &spec,
        Lengths::keys_and_queries(&kv_clamped, &q_clamped),
        11,
    )
    .into_iter()
    .map(T::from_f64)
    .collect();
    let (kv, q) = (stream.clone_htod(&kv_raw)?, stream.clone_htod(&q_raw)?);
    check_forward(
        g,
        &stream,
        &spec,
        Lengths::keys_and_queries(&kv_clamped, &q_clamped),
        DeviceLengths::keys_and_queries(&kv, &q),
        &x,
    )
    .map(drop)
}

fn many_rows<T: Element + DeviceRepr>(g: &Gpu) -> TestResult {
    // Far more rows than one grid covers: the grid-stride loop must reach them all.
    let stream = g.ctx.new_stream()?;
    let spec = Spec::new(Shape::new(1000, 3, 100, 3)).padding(Padding::Left);
    let kv: Vec<i32> = (0..1000).map(|b| b % 4).collect();
    let x: Vec<T> = scores_with_nan_pads(&spec, Lengths::keys(&kv), 12)
        .into_iter()
        .map(T::from_f64)
        .collect();
    let kv_dev = stream.clone_htod(&kv)?;
    check_forward(
        g,
        &stream,
        &spec,
        Lengths::keys(&kv),
        DeviceLengths::keys(&kv_dev),
        &x,
    )
    .map(drop)
}

fn misuse(g: &Gpu) -> TestResult {
    let stream = g.ctx.new_stream()?;
    let spec = Spec::new(Shape::matrix(4, 6));
    let x = stream.alloc_zeros::<f32>(24)?;
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
    let mut y = stream.alloc_zeros::<f32>(24)?;
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
    Ok(())
}
