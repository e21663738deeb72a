//! Forward and backward throughput against the memory-bandwidth floor, in one process:
//!
//! - the floor of a case is `bytes / B`, with `bytes` = the valid inputs read once (scores;
//!   or `y` and `dy` for the backward) + the whole output written once + the lengths, and
//!   `B` the bandwidth of a large device-to-device
//!   copy (bytes read + written) measured first in the same run; decode-sized cases also
//!   get one empty-kernel launch added to their floor;
//! - next to it, the sector floor: the same with the valid inputs counted in the 32-byte
//!   DRAM sectors they touch (`mask::valid_sectors`), the least any kernel can move; where
//!   the two differ (short rows share sectors with their neighbours) no kernel reaches the
//!   contract's floor, and `--model` prints both for every case without a GPU;
//! - each case times our forward and the unfused path a cudarc user would otherwise write
//!   (build a mask from the lengths, fill the pads with -inf, plain softmax:
//!   `kernels/baseline.cu`), with CUDA events, after warm-up, as the median over repeats,
//!   rotating several input sets when one would fit in L2.
//!
//! Prints a table and writes `results.json`, `results.csv` and `bandwidth.svg` (effective
//! bandwidth against k_len per type, with the copy roofline) to `--out`.
//!
//!     cargo bench --bench throughput -- --out bench-results
//!     cargo bench --bench throughput -- --types f16 --cases sweep --directions forward --quick
//!     cargo bench --bench throughput -- --model --out bench-model

use std::cell::Cell;
use std::collections::BTreeMap;
use std::error::Error;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
};
use masked_softmax::cuda::{
    CudaSoftmax, DeviceLengths, load_module_image, module_image, open_device,
};
use masked_softmax::plan::{
    Buffers, ClusterResidency, DeviceLimits, Direction, KernelKind, LaunchPlan, MASK_SHIFTED_PACKS,
    WARP_SIZE, plan_launch,
};
use masked_softmax::{DType, Element, Lengths, Shape, Spec, bf16, f16, mask};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

#[derive(Parser, Debug)]
#[command(about = "masked-softmax throughput against the copy-bandwidth floor")]
struct Args {
    /// Storage types to run.
    #[arg(long, value_delimiter = ',', default_value = "f32,f16,bf16")]
    types: Vec<String>,
    /// Directions: forward, backward.
    #[arg(long, value_delimiter = ',', default_value = "forward,backward")]
    directions: Vec<String>,
    /// Case groups: sweep (k_len 1..2^20), odd (k_len 77, 1001, 4097 and decode at 4097:
    /// rows off 16-byte boundaries), prefill, decode, rows (row-count sweep), few (decode
    /// of 32 and 128 rows between 4096 and 32768 keys: the few-rows crossovers).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sweep,odd,prefill,decode,rows,few"
    )]
    cases: Vec<String>,
    /// Where results.json, results.csv and bandwidth.svg go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// MiB of scores per sweep case.
    #[arg(long, default_value_t = 256)]
    mib: usize,
    /// Timed repeats per measurement (the median is reported).
    #[arg(long, default_value_t = 15)]
    repeats: usize,
    /// Fewer k_len values and repeats: a smoke run.
    #[arg(long)]
    quick: bool,
    /// Skip the unfused baseline (it needs 2.25x the scores' memory more).
    #[arg(long)]
    no_baseline: bool,
    /// Also time every other block and cluster kernel that can run each case, and the rows
    /// kernels the planner's size rule allows (named with
    /// `forward_with_kernel`/`backward_with_kernel`), as rows of group "variant": for
    /// checking the planner's crossovers.
    #[arg(long)]
    variants: bool,
    /// Only the sweep cases with these k_len (e.g. 1024,65536); all if empty.
    #[arg(long, value_delimiter = ',')]
    k_lens: Vec<usize>,
    /// Redraw results.csv and bandwidth.svg in `--out` from this results.json; no GPU needed.
    #[arg(long)]
    replot: Option<PathBuf>,
    /// No GPU: from a `--variants` run's results.json, each case's planned kernel against
    /// the fastest other kernel that ran it, marking where another won by 3% or more.
    #[arg(long)]
    crossovers: Option<PathBuf>,
    /// No GPU: from a run's results.json, each case whose grid v10 fitted, its time on the
    /// old grid over the new (the table's `vs grid`), and a tally.
    #[arg(long)]
    grid_fit: Option<PathBuf>,
    /// No GPU: check the predictions in this file (PERFORMANCE.md's, as JSON: see
    /// `results/predictions.json`) against the results files given with `--against`.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// With `--predictions`: results.json files of one run (the table's and the variants').
    #[arg(long, value_delimiter = ',')]
    against: Vec<PathBuf>,
    /// No GPU: print and write (`model.csv`) each case's bytes, the contract's and at the
    /// granularity of 32- and 64-byte sectors, the floors' ratio, and the kernel the planner
    /// gives it on an H100 (f32, and f16 for the 16-bit types).
    #[arg(long)]
    model: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One benchmark problem.
#[derive(Clone, Debug)]
struct Case {
    group: &'static str,
    name: String,
    spec: Spec,
    /// Key lengths (and query lengths for prefill) per batch entry.
    kv: Vec<i32>,
    q: Option<Vec<i32>>,
    /// Decode-sized: the floor includes one launch.
    latency_bound: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct Row {
    group: String,
    case: String,
    direction: String,
    dtype: String,
    kernel: String,
    rows: usize,
    k_len: usize,
    bytes: f64,
    time_us: f64,
    floor_us: f64,
    over_floor: f64,
    effective_gbps: f64,
    unfused_us: Option<f64>,
    speedup_over_unfused: Option<f64>,
    /// Bytes with the valid inputs counted in whole 32-byte sectors (absent in results
    /// written before it was added).
    #[serde(default)]
    sector_bytes: Option<f64>,
    /// Time over the floor of `sector_bytes`.
    #[serde(default)]
    over_sector_floor: Option<f64>,
    /// The kernel's launch as the handle made it ([`launch_shape`]; absent in older
    /// results).
    #[serde(default)]
    launch: Option<String>,
    /// The same kernel on the grid counted by threads alone, as before v10
    /// (`set_grid_fitting(false)`), where that grid differs (planner's kernel only).
    #[serde(default)]
    unfitted_grid_us: Option<f64>,
    /// Microseconds a call took to enqueue on an idle GPU: where it nears `time_us`, the
    /// time is the host's (absent in older results).
    #[serde(default)]
    host_us: Option<f64>,
    /// Decode-sized cases: microseconds a call with the calls replayed from a CUDA graph,
    /// the GPU's time without the host's pace.
    #[serde(default)]
    graph_us: Option<f64>,
    /// `graph_us` over the floor with the launch counted as a graph's empty call.
    #[serde(default)]
    graph_over_floor: Option<f64>,
}

#[derive(Serialize, Deserialize)]
struct Report {
    gpu: String,
    compute_capability: String,
    date_utc: String,
    copy_gbps: f64,
    empty_launch_us: f64,
    /// The empty kernel a call in a replayed CUDA graph (absent in older results).
    #[serde(default)]
    empty_graph_us: Option<f64>,
    ptx_target: Option<String>,
    /// Clusters resident at once as the driver counted them, by cluster size (2, 4, 8) and
    /// blocks per multiprocessor (1 to 8), 0 where unknown (absent in older results).
    #[serde(default)]
    cluster_residency: Option<Vec<Vec<u32>>>,
    rows: Vec<Row>,
}

/// A launch as `grid x block`, then its clusters and dynamic shared memory where it has them
/// (`264x512 c8 272B`).
fn launch_shape(p: &LaunchPlan) -> String {
    let mut shape = format!("{}x{}", p.grid, p.block);
    if p.cluster > 1 {
        shape += &format!(" c{}", p.cluster);
    }
    if p.shared_bytes > 0 {
        shape += &format!(" {}B", p.shared_bytes);
    }
    shape
}

/// [`ClusterResidency`] as rows by cluster size, columns by blocks per multiprocessor.
fn residency_table(table: &ClusterResidency) -> Vec<Vec<u32>> {
    ClusterResidency::CLUSTER_SIZES
        .iter()
        .map(|&c| {
            (1..=ClusterResidency::MAX_BLOCKS_PER_SM)
                .map(|b| table.get(c, b).unwrap_or(0))
                .collect()
        })
        .collect()
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(json) = &args.replot {
        let report: Report = serde_json::from_str(&std::fs::read_to_string(json)?)?;
        std::fs::create_dir_all(&args.out)?;
        return write_outputs(&args.out, &report);
    }
    if args.model {
        std::fs::create_dir_all(&args.out)?;
        return print_model(&args);
    }
    if let Some(predictions) = &args.predictions {
        return check_predictions(predictions, &args.against);
    }
    if let Some(json) = &args.crossovers {
        let report: Report = serde_json::from_str(&std::fs::read_to_string(json)?)?;
        print_crossovers(&report);
        return Ok(());
    }
    if let Some(json) = &args.grid_fit {
        let report: Report = serde_json::from_str(&std::fs::read_to_string(json)?)?;
        print_grid_fit(&report);
        return Ok(());
    }
    let ctx = match open_device(0) {
        Ok(ctx) => ctx,
        Err(e) => {
            println!("throughput bench: no GPU ({e}); nothing to measure");
            if std::env::var("MASKED_SOFTMAX_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                std::process::exit(1);
            }
            return Ok(());
        }
    };
    // SAFETY: every buffer the benchmark makes is used on `stream` alone, which orders
    // them; without the tracking's events the calls can be captured into CUDA graphs
    // (decode timing), and cost the host less.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream()?;
    let softmax = CudaSoftmax::new(&ctx)?;
    // The variants time the streaming kernels without their L2 priorities too.
    let mut plain_l2 = softmax.share();
    plain_l2.set_l2_hints(false);
    // And the kernels compiled to fetch ahead (the block kernels' next row into the L2,
    // the short rows kernels' next batch's lengths).
    let mut prefetch = softmax.share();
    prefetch.set_next_row_prefetch(true);
    // And the 16-bit forward's raw-pair kernels without their weight cache (v22, v23).
    let mut no_cache = softmax.share();
    no_cache.set_weight_cache(false);
    // The planner's kernels again on grids counted by threads alone (before v10).
    let mut unfitted = softmax.share();
    unfitted.set_grid_fitting(false);
    let baseline = Baseline::load(&ctx)?;
    let timer = Timer {
        ctx: ctx.clone(),
        stream: stream.clone(),
        repeats: if args.quick { 5 } else { args.repeats.max(3) },
        host_us: Cell::new(0.0),
    };
    let (major, minor) = ctx.compute_capability()?;
    let gpu = ctx.name()?;

    let copy_gbps = copy_bandwidth(&timer)?;
    let empty_launch_us = timer.per_launch_us(|| baseline.empty(&stream))?;
    let empty_graph_us = timer.per_graph_call_us(|| baseline.empty(&stream));
    println!(
        "{gpu} (sm_{major}{minor}): device-to-device copy {copy_gbps:.0} GB/s (read + write), empty launch {empty_launch_us:.2} us ({} us a call replayed from a graph)",
        empty_graph_us.map_or("-".into(), |us| format!("{us:.2}"))
    );
    let residency = residency_table(&softmax.limits().cluster_residency);
    println!(
        "clusters resident at once (2, 4, 8 blocks; 1 to 8 blocks a multiprocessor; 0 unknown): {residency:?}"
    );
    std::fs::create_dir_all(&args.out)?;

    let report = |rows: Vec<Row>| Report {
        gpu: gpu.clone(),
        compute_capability: format!("{major}.{minor}"),
        date_utc: utc_now(),
        copy_gbps,
        empty_launch_us,
        empty_graph_us,
        ptx_target: masked_softmax::cuda::PTX_TARGET.map(String::from),
        cluster_residency: Some(residency.clone()),
        rows,
    };
    let mut rows = Vec::new();
    let directions: Vec<Direction> = args
        .directions
        .iter()
        .map(|d| match d.as_str() {
            "forward" => Ok(Direction::Forward),
            "backward" => Ok(Direction::Backward),
            other => Err(format!("unknown direction {other:?}")),
        })
        .collect::<Result<_, _>>()?;
    for case in cases(&args) {
        for (t, &direction) in args
            .types
            .iter()
            .flat_map(|t| directions.iter().map(move |d| (t, d)))
        {
            let dtype = match t.as_str() {
                "f32" => DType::F32,
                "f16" => DType::F16,
                "bf16" => DType::BF16,
                other => return Err(format!("unknown type {other:?}").into()),
            };
            let env = Env {
                timer: &timer,
                softmax: &softmax,
                plain_l2: &plain_l2,
                no_cache: &no_cache,
                prefetch: &prefetch,
                unfitted: &unfitted,
                baseline: (!args.no_baseline).then_some(&baseline),
                copy_gbps,
                empty_launch_us,
                empty_graph_us,
            };
            let case_rows = match dtype {
                DType::F32 => run_case::<f32>(&env, &case, direction, args.variants)?,
                DType::F16 => run_case::<f16>(&env, &case, direction, args.variants)?,
                DType::BF16 => run_case::<bf16>(&env, &case, direction, args.variants)?,
            };
            for row in case_rows {
                print_row(&row, rows.is_empty());
                rows.push(row);
            }
            // Written after every case, so a run cut short (a device lease, a timeout) still
            // leaves what it measured.
            std::fs::write(
                args.out.join("results.json"),
                serde_json::to_string_pretty(&report(rows.clone()))?,
            )?;
        }
    }

    // Cases whose calls take nearly as long to enqueue as the GPU takes per launch: their
    // back-to-back timing is the host's as much as the kernel's.
    let host_bound: Vec<String> = rows
        .iter()
        .filter(|r| r.group != "variant")
        .filter(|r| r.host_us.is_some_and(|h| h >= HOST_BOUND * r.time_us))
        .map(|r| format!("{} {} {}", r.case, &r.direction[..3], r.dtype))
        .collect();
    println!(
        "{} cases enqueue at {:.0}% or more of their time per launch (host-bound timing): {}",
        host_bound.len(),
        HOST_BOUND * 100.0,
        host_bound.join(", ")
    );
    write_outputs(&args.out, &report(rows))?;
    println!(
        "wrote {}/results.json, results.csv, bandwidth.svg",
        args.out.display()
    );
    Ok(())
}

/// Everything a case needs from the run.
struct Env<'a> {
    timer: &'a Timer,
    softmax: &'a CudaSoftmax,
    /// The same kernels with `set_l2_hints(false)`.
    plain_l2: &'a CudaSoftmax,
    /// The same kernels with `set_next_row_prefetch(true)`.
    prefetch: &'a CudaSoftmax,
    /// The same kernels with `set_weight_cache(false)`.
    no_cache: &'a CudaSoftmax,
    /// The same kernels with `set_grid_fitting(false)`.
    unfitted: &'a CudaSoftmax,
    baseline: Option<&'a Baseline>,
    copy_gbps: f64,
    empty_launch_us: f64,
    empty_graph_us: Option<f64>,
}

fn cases(args: &Args) -> Vec<Case> {
    // A case of `spec` with key lengths uniform in [1, k_len] per batch entry, drawn from a
    // generator seeded by the case's name: the same lengths whatever else a run selects (the
    // table and the variants of one call, or two calls, see the same rows).
    let keyed = |group: &'static str, name: String, spec: Spec, latency_bound: bool| {
        let mut rng = SmallRng::seed_from_u64(fnv1a(&name));
        let kv = (0..spec.shape.batch)
            .map(|_| rng.random_range(1..=spec.shape.k_len as i32))
            .collect();
        Case {
            group,
            name,
            kv,
            q: None,
            spec,
            latency_bound,
        }
    };
    // A matrix of `--mib` MiB of f32 scores (16-bit types: the same rows, half the bytes).
    let mib = args.mib;
    let matrix = |k: usize| Spec::new(Shape::matrix((mib << 20) / (4 * k), k));
    // Decode: one query of `batch` x 32 heads against a cache of k keys.
    let decode = |batch: usize, k: usize| Spec::new(Shape::new(batch, 32, 1, k)).scale(0.125);
    let mut cases = Vec::new();
    let want = |g: &str| args.cases.iter().any(|c| c == g);
    if want("sweep") {
        let k_lens: &[usize] = if args.quick {
            &[1, 64, 1024, 8192, 1 << 20]
        } else {
            &[
                1,
                7,
                32,
                64,
                128,
                256,
                512,
                1000,
                1024,
                2048,
                4096,
                8192,
                16384,
                65536,
                1 << 18,
                1 << 20,
            ]
        };
        for &k in k_lens
            .iter()
            .filter(|k| args.k_lens.is_empty() || args.k_lens.contains(k))
        {
            cases.push(keyed("sweep", format!("k{k}"), matrix(k), false));
        }
    }
    if want("odd") {
        // Row lengths that put most rows off 16-byte boundaries (odd k_len: CLIP's 77, and
        // one past the sweep's lengths), which the vector kernels see shifted (the variants
        // add the single-element kernels); and decode with a cache one key past a power
        // of two.
        for k in [77, 1001, 4097] {
            cases.push(keyed("odd", format!("k{k}"), matrix(k), false));
        }
        for batch in [1, 8] {
            let name = format!("decode_b{batch}h32q1k4097");
            cases.push(keyed("odd", name, decode(batch, 4097), true));
        }
    }
    if want("prefill") {
        let (batch, heads, n) = (8, 32, 2048);
        let spec = Spec::new(Shape::new(batch, heads, n, n))
            .causal()
            .scale(0.125);
        // Padded queries too: each entry's query length is its key length.
        let mut case = keyed(
            "prefill",
            "b8h32q2048k2048_causal_padded".into(),
            spec,
            false,
        );
        case.q = Some(case.kv.clone());
        cases.push(case);
    }
    if want("decode") {
        for batch in [1, 8, 64] {
            for k in [4096, 32768, 131072] {
                let name = format!("b{batch}h32q1k{k}");
                cases.push(keyed("decode", name, decode(batch, k), true));
            }
        }
    }
    if want("few") {
        // Fewer rows than multiprocessors at the lengths where v11's planner goes from
        // block_regs to block_cached to a cluster (measured at 4097 and 32768 only): 32 and
        // 128 rows (b1 and b4 x 32 heads).
        for batch in [1, 4] {
            for k in [8192, 12288, 16384, 24576] {
                let name = format!("few_b{batch}h32q1k{k}");
                cases.push(keyed("few", name, decode(batch, k), true));
            }
        }
    }
    if want("rows") {
        let k = 1024;
        let exps: Vec<u32> = if args.quick {
            vec![6, 12, 18]
        } else {
            (6..=18).step_by(2).collect()
        };
        for e in exps {
            let rows = 1usize << e;
            let spec = Spec::new(Shape::matrix(rows, k));
            let latency_bound = rows * k * 4 < (64 << 20);
            cases.push(keyed(
                "rows",
                format!("rows{rows}_k{k}"),
                spec,
                latency_bound,
            ));
        }
    }
    cases
}

/// Input sets so that the sets together exceed the L2 cache (at least 128 MiB).
fn input_sets(bytes: usize) -> usize {
    (128usize << 20).div_ceil(bytes.max(1)).clamp(1, 64)
}

/// The planner's kernel on `case` (and, with `variants`, every other block or cluster
/// kernel of the same pack width that can run it, and the rows kernels of its size): one
/// row each.
fn run_case<T: Element + DeviceRepr>(
    env: &Env,
    case: &Case,
    direction: Direction,
    variants: bool,
) -> Result<Vec<Row>> {
    let stream = &env.timer.stream;
    let spec = &case.spec;
    let n = spec.shape.required_len()?;
    let size = std::mem::size_of::<T>();
    let inputs = match direction {
        Direction::Forward => 1,
        Direction::Backward => 2,
    };
    let CaseBytes {
        bytes,
        sector_bytes,
    } = case_bytes(case, direction, size, SECTOR_BYTES)?;

    // Per input set: the inputs (x; or y and dy) and the output.
    let sets = input_sets((inputs + 1) * n * size);
    let mut rng = SmallRng::seed_from_u64(7);
    let host: Vec<T> = (0..n)
        .map(|_| T::from_f64(rng.random_range(-4.0..4.0)))
        .collect();
    let mut ins: Vec<Vec<CudaSlice<T>>> = Vec::new();
    let mut outs: Vec<CudaSlice<T>> = Vec::new();
    for _ in 0..sets {
        ins.push(
            (0..inputs)
                .map(|_| stream.clone_htod(&host))
                .collect::<Result<_, _>>()?,
        );
        outs.push(stream.clone_htod(&host)?);
    }
    let kv = stream.clone_htod(&case.kv)?;
    let q = case.q.as_ref().map(|q| stream.clone_htod(q)).transpose()?;
    let lengths = DeviceLengths {
        kv: Some(&kv),
        q: q.as_ref().map(|q| q as _),
    };

    let limits = env.softmax.limits();
    // The buffers' offsets against 16-byte boundaries, as the launches see them (the
    // allocations are aligned).
    let buffers = Buffers::default();
    let planned_launch = env
        .softmax
        .plan(None, direction, spec, T::DTYPE, buffers)?
        .ok_or("the planner always has a kernel")?;
    let planned = planned_launch.kernel;
    // Rows the vector kernels see shifted: the single-element kernels are the alternative.
    let shifted = planned_launch.params.flags & MASK_SHIFTED_PACKS != 0;
    let kernel = planned.name(T::DTYPE, direction);

    // One call of the planner's kernel on input set `set`, named, so that a launch that
    // does not happen (a split kernel while a graph is captured) is an error, not a
    // silently empty call.
    let planned_call = |set: usize, outs: &mut [CudaSlice<T>]| -> Result<()> {
        let (input, out) = (&ins[set], &mut outs[set]);
        let ran = match direction {
            Direction::Forward => env
                .softmax
                .forward_with_kernel(planned, stream, spec, lengths, &input[0], out)?,
            Direction::Backward => env
                .softmax
                .backward_with_kernel(planned, stream, spec, lengths, &input[0], &input[1], out)?,
        };
        match ran {
            true => Ok(()),
            false => Err(format!("{} did not launch", planned.name(T::DTYPE, direction)).into()),
        }
    };
    let mut set = 0;
    let time_us = env.timer.per_launch_us(|| {
        set = (set + 1) % sets;
        planned_call(set, &mut outs)
    })?;
    let host_us = env.timer.host_us.get();

    let unfused_us = match env.baseline {
        Some(b) if direction == Direction::Forward && case.q.is_none() && spec.causal.is_none() => {
            let mut mask_buf = stream.alloc_zeros::<u8>(n)?;
            let mut tmp = stream.clone_htod(&host)?;
            let mut set = 0;
            Some(env.timer.per_launch_us(|| {
                set = (set + 1) % sets;
                b.unfused::<T>(
                    stream,
                    case,
                    &kv,
                    &ins[set][0],
                    &mut mask_buf,
                    &mut tmp,
                    &mut outs[set],
                )
            })?)
        }
        _ => None,
    };

    let launch_us = if case.latency_bound {
        env.empty_launch_us
    } else {
        0.0
    };
    let floor_us = bytes / (env.copy_gbps * 1e3) + launch_us;
    let sector_floor_us = sector_bytes / (env.copy_gbps * 1e3) + launch_us;
    let row = |group: &str,
               kernel: String,
               launch: Option<LaunchPlan>,
               time_us: f64,
               unfused_us: Option<f64>|
     -> Result<Row> {
        Ok(Row {
            group: group.into(),
            case: case.name.clone(),
            direction: format!("{direction:?}").to_lowercase(),
            dtype: T::DTYPE.kernel_suffix().into(),
            kernel,
            rows: spec.shape.rows()?,
            k_len: spec.shape.k_len,
            bytes,
            time_us,
            floor_us,
            over_floor: time_us / floor_us,
            effective_gbps: bytes / (time_us * 1e3),
            unfused_us,
            speedup_over_unfused: unfused_us.map(|u| u / time_us),
            sector_bytes: Some(sector_bytes),
            over_sector_floor: Some(time_us / sector_floor_us),
            launch: launch.as_ref().map(launch_shape),
            unfitted_grid_us: None,
            host_us: None,
            graph_us: None,
            graph_over_floor: None,
        })
    };
    // The planner's kernel (named, so that the old count cannot choose another) on the
    // launch counted as before v10, where that differs: the grid fitting's gain, measured
    // in the same run.
    let unfitted_launch = env
        .unfitted
        .plan(Some(planned), direction, spec, T::DTYPE, buffers)?;
    let shape = |p: &LaunchPlan| (p.grid, p.block, p.cluster, p.shared_bytes);
    let unfitted_grid_us = match unfitted_launch {
        Some(p) if shape(&p) != shape(&planned_launch) => {
            let mut set = 0;
            Some(env.timer.per_launch_us(|| {
                set = (set + 1) % sets;
                let (input, out) = (&ins[set], &mut outs[set]);
                let ran = match direction {
                    Direction::Forward => env
                        .unfitted
                        .forward_with_kernel(planned, stream, spec, lengths, &input[0], out)?,
                    Direction::Backward => env.unfitted.backward_with_kernel(
                        planned, stream, spec, lengths, &input[0], &input[1], out,
                    )?,
                };
                match ran {
                    true => Ok(()),
                    false => Err("the planner's kernel refused its own problem".into()),
                }
            })?)
        }
        _ => None,
    };
    let mut planned_row = row(
        case.group,
        kernel,
        Some(planned_launch),
        time_us,
        unfused_us,
    )?;
    planned_row.unfitted_grid_us = unfitted_grid_us;
    planned_row.host_us = Some(host_us);
    // Decode-sized cases whose calls the host paced, again from a CUDA graph: the
    // kernel's time without the host's.
    if case.latency_bound && host_us >= 0.5 * time_us {
        let mut set = 0;
        planned_row.graph_us = env.timer.per_graph_call_us(|| {
            set = (set + 1) % sets;
            planned_call(set, &mut outs)
        });
        if let (Some(graph_us), Some(empty)) = (planned_row.graph_us, env.empty_graph_us) {
            planned_row.graph_over_floor = Some(graph_us / (bytes / (env.copy_gbps * 1e3) + empty));
        }
    }
    let mut rows = vec![planned_row];
    if !variants {
        return Ok(rows);
    }
    let others = KernelKind::all(T::DTYPE, limits.clusters, direction)
        .into_iter()
        .filter(|k| *k != planned && (k.pack() == planned.pack() || shifted && k.pack() == 1))
        .filter(|k| match *k {
            // Rows kernels only as the planner would size them (the smallest that holds the
            // row): a lane per row against a group of lanes for tiny rows.
            KernelKind::Rows { group, pack, packs }
            | KernelKind::RowsKeys { group, pack, packs } => {
                let capacity = (group * pack * packs) as usize;
                capacity >= spec.shape.k_len && capacity < 2 * spec.shape.k_len
            }
            // Rows split over the grid: for long rows only (a chunk is 2048 packs).
            KernelKind::Split { .. } => spec.shape.k_len >= 4096,
            // A block per row of at most a warp's packs: far slower, and slow to time.
            _ => spec.shape.k_len > (WARP_SIZE * planned.pack()) as usize,
        });
    // Every other kernel, the streaming ones (the planner's too) again without their L2
    // priorities (named `<kernel>+plain_l2`), the kernels compiled to fetch ahead (the
    // planner's too) again as their `*_prefetch_*` instances (`<kernel>+prefetch`), and
    // those that keep their weights in shared memory (the planner's too) again without
    // (`<kernel>+no_cache`).
    let streaming = |k: &KernelKind| {
        matches!(
            k,
            KernelKind::BlockStream { .. }
                | KernelKind::Split { .. }
                | KernelKind::Cluster { cached: false, .. }
        )
    };
    let prefetching = |k: &KernelKind| k.prefetch_name(T::DTYPE, direction).is_some();
    let mut runs: Vec<(KernelKind, &CudaSoftmax)> = Vec::new();
    for kind in std::iter::once(planned).chain(others) {
        if kind != planned {
            runs.push((kind, env.softmax));
        }
        if streaming(&kind) {
            runs.push((kind, env.plain_l2));
        }
        if prefetching(&kind) {
            runs.push((kind, env.prefetch));
        }
        if kind.keeps_weights(T::DTYPE, direction) {
            runs.push((kind, env.no_cache));
        }
    }
    for (kind, softmax) in runs {
        let mut launch = |set: usize| -> Result<bool> {
            let (input, out) = (&ins[set], &mut outs[set]);
            Ok(match direction {
                Direction::Forward => {
                    softmax.forward_with_kernel(kind, stream, spec, lengths, &input[0], out)?
                }
                Direction::Backward => softmax
                    .backward_with_kernel(kind, stream, spec, lengths, &input[0], &input[1], out)?,
            })
        };
        if !launch(0)? {
            continue; // this kernel cannot run the case
        }
        let mut set = 0;
        let time_us = env.timer.per_launch_us(|| {
            set = (set + 1) % sets;
            launch(set).map(|_| ())
        })?;
        let mut name = kind.name(T::DTYPE, direction);
        if !softmax.l2_hints() {
            name.push_str(PLAIN_L2);
        }
        if softmax.next_row_prefetch() {
            name.push_str(PREFETCH);
        }
        if !softmax.weight_cache() {
            name.push_str(NO_CACHE);
        }
        let host_us = env.timer.host_us.get();
        let launch = softmax.plan(Some(kind), direction, spec, T::DTYPE, buffers)?;
        let mut variant = row("variant", name, launch, time_us, None)?;
        variant.host_us = Some(host_us);
        rows.push(variant);
    }
    Ok(rows)
}

/// An H100 SXM's limits as the planner sees them (132 multiprocessors, 2048 threads and
/// 228 KiB of shared memory each, 227 KiB a block, clusters, in GPCs of 16 to 18
/// multiprocessors: one layout such a chip may have): `--model` shows the kernels the
/// planner gives the cases there.
const H100: DeviceLimits = DeviceLimits {
    sm_count: 132,
    max_threads_per_sm: 2048,
    max_shared_per_block: 227 * 1024,
    shared_per_sm: 228 * 1024,
    clusters: true,
    reserved_shared_per_block: 1024,
    cluster_residency: ClusterResidency::of_gpcs(&[18, 18, 16, 16, 16, 16, 16, 16]),
};

/// DRAM's unit of transfer on the GPUs we target (L2 sectors).
const SECTOR_BYTES: NonZeroUsize = NonZeroUsize::new(32).unwrap();
/// The L2's fetch granularity at its largest default (two sectors).
const FETCH_BYTES: NonZeroUsize = NonZeroUsize::new(64).unwrap();

/// What a case moves: the contract's count (valid inputs + whole output + lengths) and the
/// same with the valid inputs counted in whole sectors of `sector` bytes.
struct CaseBytes {
    bytes: f64,
    sector_bytes: f64,
}

fn case_bytes(
    case: &Case,
    direction: Direction,
    size: usize,
    sector: NonZeroUsize,
) -> Result<CaseBytes> {
    let spec = &case.spec;
    let lengths = Lengths {
        kv: Some(&case.kv),
        q: case.q.as_deref(),
    };
    let inputs = match direction {
        Direction::Forward => 1.0,
        Direction::Backward => 2.0,
    };
    let valid = mask::valid_elements(spec, &lengths)? as f64;
    let sectors = mask::valid_sectors(spec, &lengths, size, sector)? as f64;
    let lengths_bytes = 4.0 * (case.kv.len() + case.q.as_ref().map_or(0, Vec::len)) as f64;
    let rest = (spec.shape.required_len()? * size) as f64 + lengths_bytes;
    Ok(CaseBytes {
        bytes: inputs * valid * size as f64 + rest,
        sector_bytes: inputs * sectors * sector.get() as f64 + rest,
    })
}

/// `--model`: every selected case's bytes and sector floors, no GPU.
fn print_model(args: &Args) -> Result<()> {
    let mut csv = String::from(
        "group,case,direction,dtype_bytes,k_len,bytes,sector32_bytes,sector64_bytes,sector32_over_floor,sector64_over_floor,h100_kernel,h100_launch\n",
    );
    println!(
        "{:<8} {:<30} {:<4} {:>5} {:>14} {:>14} {:>14} {:>10} {:>10}  planner's kernel on an H100",
        "group",
        "case",
        "dir",
        "bytes",
        "floor bytes",
        "32B sectors",
        "64B sectors",
        "x (32)",
        "x (64)",
    );
    for case in cases(args) {
        for direction in [Direction::Forward, Direction::Backward] {
            for size in [4, 2] {
                let b32 = case_bytes(&case, direction, size, SECTOR_BYTES)?;
                let b64 = case_bytes(&case, direction, size, FETCH_BYTES)?;
                let dir = format!("{direction:?}").to_lowercase();
                let (x32, x64) = (b32.sector_bytes / b32.bytes, b64.sector_bytes / b64.bytes);
                // Buffers 16-byte aligned, as the benchmark's allocations are.
                let dtype = if size == 4 { DType::F32 } else { DType::F16 };
                let buffers = Buffers {
                    x: 1 << 20,
                    y: 2 << 20,
                    dy: 3 << 20,
                    kv_lens: 4 << 20,
                    q_lens: if case.q.is_some() { 5 << 20 } else { 0 },
                };
                let launch = plan_launch(None, direction, &case.spec, dtype, H100, buffers)?
                    .ok_or("the planner always has a kernel")?;
                let kernel = launch.kernel.name(dtype, direction);
                let shape = launch_shape(&launch);
                println!(
                    "{:<8} {:<30} {:<4} {:>5} {:>14.0} {:>14.0} {:>14.0} {:>10.3} {:>10.3}  {kernel} ({shape})",
                    case.group,
                    case.name,
                    &dir[..3],
                    size,
                    b32.bytes,
                    b32.sector_bytes,
                    b64.sector_bytes,
                    x32,
                    x64
                );
                csv += &format!(
                    "{},{},{},{},{},{:.0},{:.0},{:.0},{:.4},{:.4},{kernel},{shape}\n",
                    case.group,
                    case.name,
                    dir,
                    size,
                    case.spec.shape.k_len,
                    b32.bytes,
                    b32.sector_bytes,
                    b64.sector_bytes,
                    x32,
                    x64
                );
            }
        }
    }
    std::fs::write(args.out.join("model.csv"), csv)?;
    println!("wrote {}/model.csv", args.out.display());
    Ok(())
}

/// One prediction (results/predictions.json): a case's time over the floor on one kernel
/// (the planner's if `kernel` is absent), as PERFORMANCE.md wrote it before the run.
#[derive(Deserialize)]
struct Prediction {
    version: String,
    case: String,
    direction: String,
    dtype: String,
    #[serde(default)]
    kernel: Option<String>,
    /// Predicted time over the contract's floor.
    over_floor: f64,
    /// The last measurement, for the record (time over floor).
    #[serde(default)]
    before: Option<f64>,
}

/// Within this factor of the prediction either way, a prediction held.
const PREDICTION_MARGIN: f64 = 1.10;

/// `--predictions`: each prediction against the row it names in the results files, with a
/// verdict: held (within `PREDICTION_MARGIN`), better or worse than predicted, or not run.
fn check_predictions(path: &Path, against: &[PathBuf]) -> Result<()> {
    let predictions: Vec<Prediction> = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let mut rows = Vec::new();
    for file in against {
        let report: Report = serde_json::from_str(&std::fs::read_to_string(file)?)?;
        println!(
            "{}: {} ({}), {}",
            file.display(),
            report.gpu,
            report.compute_capability,
            report.date_utc
        );
        rows.extend(report.rows);
    }
    println!(
        "{:<6} {:<30} {:<4} {:<5} {:<40} {:>7} {:>9} {:>9}  verdict",
        "vers.", "case", "dir", "type", "kernel", "before", "predicted", "measured"
    );
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &predictions {
        let found = rows.iter().find(|r| {
            r.case == p.case
                && r.direction == p.direction
                && r.dtype == p.dtype
                && match &p.kernel {
                    Some(k) => r.kernel.ends_with(k.as_str()),
                    None => r.group != "variant",
                }
        });
        let (measured, kernel, verdict) = match found {
            None => (
                String::from("-"),
                p.kernel.clone().unwrap_or("(planned)".into()),
                "not run",
            ),
            Some(r) => {
                let ratio = r.over_floor / p.over_floor;
                let verdict = if ratio > PREDICTION_MARGIN {
                    "worse than predicted"
                } else if ratio < 1.0 / PREDICTION_MARGIN {
                    "better than predicted"
                } else {
                    "held"
                };
                (format!("{:.3}", r.over_floor), r.kernel.clone(), verdict)
            }
        };
        *tally.entry(verdict).or_default() += 1;
        println!(
            "{:<6} {:<30} {:<4} {:<5} {:<40} {:>7} {:>9.3} {:>9}  {verdict}",
            p.version,
            p.case,
            &p.direction[..3.min(p.direction.len())],
            p.dtype,
            kernel
                .trim_start_matches("masked_softmax_fwd_")
                .trim_start_matches("masked_softmax_bwd_"),
            p.before.map_or("-".into(), |b| format!("{b:.3}")),
            p.over_floor,
            measured
        );
    }
    println!("{tally:?}");
    Ok(())
}

/// Suffix of a variant's kernel name timed with `set_l2_hints(false)`.
const PLAIN_L2: &str = "+plain_l2";
/// Suffix of a variant's kernel name timed with `set_next_row_prefetch(true)`: the kind's
/// `*_prefetch_*` kernel (a candidate for the planner, where the `+plain_l2` runs are not).
const PREFETCH: &str = "+prefetch";
/// Suffix of a variant's kernel name timed with `set_weight_cache(false)`: the 16-bit
/// forward's raw-pair kernels computing each weight twice (not a candidate: the cache
/// changes no result, and the planner grants it wherever it costs no block).
const NO_CACHE: &str = "+no_cache";
/// A call's enqueue time over the GPU's time per launch from which a case's timing counts
/// as the host's (the benchmark's closing line).
const HOST_BOUND: f64 = 0.8;

/// A variant that beats the planner's kernel by this factor or more is worth a crossover.
const CROSSOVER_MARGIN: f64 = 1.03;

/// `--crossovers`: for each (case, direction, type) of a variants run, the planner's kernel
/// and the fastest other kernel; `<<` marks one faster by `CROSSOVER_MARGIN` or more. The
/// `+plain_l2` runs (the same kernels without their L2 priorities, which the planner never
/// picks) are not candidates: the column `vs no L2` is the planner's kernel's own time over
/// its `+plain_l2` run (below 1: the priorities help). The `+prefetch` runs are candidates,
/// and the next column is the planner's kernel's own time over its `+prefetch` run (above
/// 1: its prefetching instance is faster). Nor are the `+no_cache` runs: the last column is
/// the planner's kernel's own time over its `+no_cache` run (below 1: the weight cache
/// helps).
fn print_crossovers(report: &Report) {
    println!(
        "{} ({}), {}",
        report.gpu, report.compute_capability, report.date_utc
    );
    println!(
        "{:<30} {:<4} {:<5} {:<38} {:>8} {:<46} {:>8} {:>7} {:>9} {:>9} {:>9}",
        "case",
        "dir",
        "type",
        "planned",
        "x floor",
        "fastest other",
        "x floor",
        "gain",
        "vs no L2",
        "prefetch",
        "no cache"
    );
    let short = |k: &str| {
        k.trim_start_matches("masked_softmax_fwd_")
            .trim_start_matches("masked_softmax_bwd_")
            .to_string()
    };
    let (mut cases, mut marked) = (0, 0);
    for planned in report.rows.iter().filter(|r| r.group != "variant") {
        let variants = || {
            report.rows.iter().filter(|r| {
                r.group == "variant"
                    && r.case == planned.case
                    && r.direction == planned.direction
                    && r.dtype == planned.dtype
            })
        };
        let fastest = variants()
            .filter(|r| !r.kernel.ends_with(PLAIN_L2) && !r.kernel.ends_with(NO_CACHE))
            .min_by(|a, b| a.time_us.total_cmp(&b.time_us));
        let Some(fastest) = fastest else { continue };
        let own = |suffix: &str| {
            variants()
                .find(|r| r.kernel == format!("{}{suffix}", planned.kernel))
                .map_or("-".into(), |r| {
                    format!("{:.3}", planned.time_us / r.time_us)
                })
        };
        let (own_plain, own_prefetch, own_no_cache) = (own(PLAIN_L2), own(PREFETCH), own(NO_CACHE));
        cases += 1;
        let gain = planned.time_us / fastest.time_us;
        let mark = if gain >= CROSSOVER_MARGIN { "<<" } else { "" };
        marked += usize::from(!mark.is_empty());
        println!(
            "{:<30} {:<4} {:<5} {:<38} {:>8.3} {:<46} {:>8.3} {:>6.3}x {:>9} {:>9} {:>9} {mark}",
            planned.case,
            &planned.direction[..3],
            planned.dtype,
            short(&planned.kernel),
            planned.over_floor,
            short(&fastest.kernel),
            fastest.over_floor,
            gain,
            own_plain,
            own_prefetch,
            own_no_cache
        );
    }
    println!(
        "{marked} of {cases} cases have a variant {:.0}% or more faster than the planner's kernel",
        (CROSSOVER_MARGIN - 1.0) * 100.0
    );
}

/// `--grid-fit`: the planner's kernel on the grid counted before v10 against the fitted
/// one, case by case (above 1: the fitting helps), then the count, the median and the
/// range, and how many moved by 3% or more either way.
fn print_grid_fit(report: &Report) {
    println!(
        "{} ({}), {}; clusters resident at once (2, 4, 8 blocks; 1-8 blocks a multiprocessor): {:?}",
        report.gpu,
        report.compute_capability,
        report.date_utc,
        report
            .cluster_residency
            .as_ref()
            .map_or("not recorded".into(), |t| format!("{t:?}"))
    );
    println!(
        "{:<30} {:<4} {:<5} {:<38} {:<20} {:>8} {:>8}",
        "case", "dir", "type", "kernel", "launch", "x floor", "old/new"
    );
    let mut ratios = Vec::new();
    for r in report.rows.iter().filter(|r| r.group != "variant") {
        let Some(old) = r.unfitted_grid_us else {
            continue;
        };
        let ratio = old / r.time_us;
        ratios.push(ratio);
        println!(
            "{:<30} {:<4} {:<5} {:<38} {:<20} {:>8.3} {:>7.3}x",
            r.case,
            &r.direction[..3],
            r.dtype,
            r.kernel
                .trim_start_matches("masked_softmax_fwd_")
                .trim_start_matches("masked_softmax_bwd_"),
            r.launch.as_deref().unwrap_or("-"),
            r.over_floor,
            ratio
        );
    }
    ratios.sort_by(f64::total_cmp);
    match (ratios.first(), ratios.last()) {
        (Some(lo), Some(hi)) => {
            let faster = ratios.iter().filter(|&&x| x >= CROSSOVER_MARGIN).count();
            let slower = ratios
                .iter()
                .filter(|&&x| x <= 1.0 / CROSSOVER_MARGIN)
                .count();
            println!(
                "{} cases on fitted grids: old grid over new {:.3}x median, {lo:.3}x to {hi:.3}x; {faster} faster by 3% or more, {slower} slower",
                ratios.len(),
                ratios[ratios.len() / 2],
            );
        }
        _ => println!("0 cases on fitted grids (results before v10, or no grid changed)"),
    }
}

/// FNV-1a of a case name: a seed that does not depend on the standard library's hasher.
fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// CUDA-event timing on one stream.
struct Timer {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    repeats: usize,
    /// What the last `per_launch_us` measured on the host: microseconds a call takes to
    /// enqueue, with the GPU idle at the start (so no queue is full).
    host_us: Cell<f64>,
}

impl Timer {
    /// Median over `repeats` of the mean time of a batch of back-to-back launches of `f`,
    /// batches sized to about 20 ms, after warm-up: microseconds per launch.
    fn per_launch_us(&self, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        for _ in 0..3 {
            f()?;
        }
        let once = self.time_ms(1, &mut f)?;
        let batch = ((20.0 / once.max(1e-4)) as usize).clamp(1, 2000);
        let mut samples: Vec<f64> = (0..self.repeats)
            .map(|_| {
                self.time_ms(batch, &mut f)
                    .map(|ms| ms * 1e3 / batch as f64)
            })
            .collect::<Result<_>>()?;
        samples.sort_by(f64::total_cmp);
        // The host's side: enqueueing a few calls on an idle GPU (no more than a batch, so
        // long calls cost one more batch at most). Where it takes about as long as the
        // GPU's time per launch, the batches above timed the host, not the kernel
        // (decode-sized cases).
        const HOST_CALLS: usize = 32;
        let calls = HOST_CALLS.min(batch).max(1);
        self.stream.synchronize()?;
        let start = std::time::Instant::now();
        for _ in 0..calls {
            f()?;
        }
        self.host_us
            .set(start.elapsed().as_secs_f64() * 1e6 / calls as f64);
        self.stream.synchronize()?;
        Ok(samples[samples.len() / 2])
    }

    /// Microseconds a call of `f` takes with GRAPH_CALLS calls captured into a CUDA graph
    /// once and the graph replayed (timed as `per_launch_us` times launches): the GPU's time
    /// per call without the host's pace. `None`, with a line saying why, if the calls
    /// cannot be captured; the stream leaves capture either way.
    fn per_graph_call_us(&self, mut f: impl FnMut() -> Result<()>) -> Option<f64> {
        let host_us = self.host_us.get();
        let us = self.try_per_graph_call_us(&mut f);
        self.host_us.set(host_us);
        us.map_err(|e| println!("graph timing: {e}")).ok()
    }

    fn try_per_graph_call_us(&self, f: &mut impl FnMut() -> Result<()>) -> Result<f64> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        const GRAPH_CALLS: usize = 64;
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let captured = (0..GRAPH_CALLS).try_for_each(|_| f());
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
        captured?;
        let graph = graph?.ok_or("the capture made no graph")?;
        graph.upload()?;
        let per_replay = self.per_launch_us(|| Ok(graph.launch()?))?;
        Ok(per_replay / GRAPH_CALLS as f64)
    }

    fn time_ms(&self, launches: usize, f: &mut impl FnMut() -> Result<()>) -> Result<f64> {
        let start = self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        let end = self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        start.record(&self.stream)?;
        for _ in 0..launches {
            f()?;
        }
        end.record(&self.stream)?;
        Ok(start.elapsed_ms(&end)? as f64)
    }
}

/// Bandwidth of a 1 GiB device-to-device copy, counting bytes read and written, in GB/s.
fn copy_bandwidth(timer: &Timer) -> Result<f64> {
    let n = 1usize << 28; // f32 elements: 1 GiB
    let src = timer.stream.alloc_zeros::<f32>(n)?;
    let mut dst = timer.stream.alloc_zeros::<f32>(n)?;
    let us = timer.per_launch_us(|| Ok(timer.stream.memcpy_dtod(&src, &mut dst)?))?;
    Ok(2.0 * (n * 4) as f64 / (us * 1e3))
}

/// The unfused path (kernels/baseline.cu) and an empty kernel.
struct Baseline {
    functions: BTreeMap<String, CudaFunction>,
}

impl Baseline {
    fn load(ctx: &Arc<CudaContext>) -> Result<Self> {
        let image = module_image("baseline").ok_or("this build has no baseline kernels")?;
        let module = load_module_image(ctx, image)?;
        let mut functions = BTreeMap::new();
        for name in ["baseline_build_mask", "baseline_empty"]
            .into_iter()
            .map(String::from)
            .chain(DType::ALL.iter().flat_map(|d| {
                let t = d.kernel_suffix();
                [
                    format!("baseline_masked_fill_{t}"),
                    format!("baseline_softmax_{t}"),
                ]
            }))
        {
            functions.insert(name.clone(), module.load_function(&name)?);
        }
        Ok(Baseline { functions })
    }

    fn empty(&self, stream: &Arc<CudaStream>) -> Result<()> {
        let config = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the empty kernel takes no arguments.
        unsafe {
            stream
                .launch_builder(&self.functions["baseline_empty"])
                .launch(config)
        }?;
        Ok(())
    }

    /// Mask from lengths, fill pads with -inf, plain softmax: three launches.
    #[allow(clippy::too_many_arguments)]
    fn unfused<T: Element + DeviceRepr>(
        &self,
        stream: &Arc<CudaStream>,
        case: &Case,
        kv: &CudaSlice<i32>,
        x: &CudaSlice<T>,
        mask: &mut CudaSlice<u8>,
        tmp: &mut CudaSlice<T>,
        y: &mut CudaSlice<T>,
    ) -> Result<()> {
        let shape = case.spec.shape;
        let (rows, k_len) = (shape.rows()? as i64, shape.k_len as i64);
        let (n, per_batch) = (rows * k_len, (shape.heads * shape.q_len) as i64);
        let t = T::DTYPE.kernel_suffix();
        let elementwise = LaunchConfig {
            grid_dim: (((n + 255) / 256).min(1 << 20) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let per_row = LaunchConfig {
            grid_dim: (rows.min(1 << 20) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let scale = case.spec.scale;
        // SAFETY: argument lists match kernels/baseline.cu; buffers hold n elements.
        unsafe {
            stream
                .launch_builder(&self.functions["baseline_build_mask"])
                .arg(kv)
                .arg(&mut *mask)
                .arg(&rows)
                .arg(&k_len)
                .arg(&per_batch)
                .launch(elementwise)?;
            stream
                .launch_builder(&self.functions[&format!("baseline_masked_fill_{t}")])
                .arg(x)
                .arg(&*mask)
                .arg(&mut *tmp)
                .arg(&n)
                .launch(elementwise)?;
            stream
                .launch_builder(&self.functions[&format!("baseline_softmax_{t}")])
                .arg(&*tmp)
                .arg(y)
                .arg(&rows)
                .arg(&k_len)
                .arg(&scale)
                .launch(per_row)?;
        }
        Ok(())
    }
}

fn print_row(row: &Row, header: bool) {
    if header {
        println!(
            "{:<8} {:<30} {:<4} {:<5} {:<38} {:>11} {:>10} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8}",
            "group",
            "case",
            "dir",
            "type",
            "kernel",
            "time us",
            "floor us",
            "x floor",
            "x sector",
            "GB/s",
            "vs unfused",
            "vs grid",
            "host us"
        );
    }
    println!(
        "{:<8} {:<30} {:<4} {:<5} {:<38} {:>11.2} {:>10.2} {:>8.3} {:>8} {:>9.0} {:>9} {:>8} {:>8}",
        row.group,
        row.case,
        &row.direction[..3],
        row.dtype,
        row.kernel
            .trim_start_matches("masked_softmax_fwd_")
            .trim_start_matches("masked_softmax_bwd_"),
        row.time_us,
        row.floor_us,
        row.over_floor,
        row.over_sector_floor
            .map_or("-".into(), |x| format!("{x:.3}")),
        row.effective_gbps,
        row.speedup_over_unfused
            .map_or("-".into(), |s| format!("{s:.2}x")),
        // The grid fitting's speed-up (above 1: the fitted grid is faster).
        row.unfitted_grid_us
            .map_or("-".into(), |u| format!("{:.3}x", u / row.time_us)),
        // A call's enqueue on an idle GPU: near `time us`, the host set the pace.
        row.host_us.map_or("-".into(), |h| format!("{h:.2}")),
    );
    if let Some(graph_us) = row.graph_us {
        println!(
            "{:<8} {:<30} replayed from a CUDA graph: {graph_us:.2} us a call, {} x floor (the floor's launch a graph's empty call)",
            "",
            "",
            row.graph_over_floor
                .map_or("-".into(), |x| format!("{x:.3}"))
        );
    }
}

fn write_outputs(dir: &Path, report: &Report) -> Result<()> {
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    let mut csv = String::from(
        "group,case,direction,dtype,kernel,rows,k_len,bytes,time_us,floor_us,over_floor,effective_gbps,unfused_us,speedup_over_unfused,sector_bytes,over_sector_floor,launch,unfitted_grid_us,host_us,graph_us,graph_over_floor\n",
    );
    for r in &report.rows {
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
        csv += &format!(
            "{},{},{},{},{},{},{},{:.0},{:.3},{:.3},{:.4},{:.1},{},{},{},{},{},{},{},{},{}\n",
            r.group,
            r.case,
            r.direction,
            r.dtype,
            r.kernel,
            r.rows,
            r.k_len,
            r.bytes,
            r.time_us,
            r.floor_us,
            r.over_floor,
            r.effective_gbps,
            opt(r.unfused_us),
            opt(r.speedup_over_unfused),
            r.sector_bytes.map_or(String::new(), |b| format!("{b:.0}")),
            opt(r.over_sector_floor),
            r.launch.as_deref().unwrap_or(""),
            opt(r.unfitted_grid_us),
            opt(r.host_us),
            opt(r.graph_us),
            opt(r.graph_over_floor)
        );
    }
    std::fs::write(dir.join("results.csv"), csv)?;
    plot(&dir.join("bandwidth.svg"), report)
}

/// Effective bandwidth against k_len, one line per type, with the copy roofline.
fn plot(path: &Path, report: &Report) -> Result<()> {
    use plotters::prelude::*;
    let sweep: Vec<&Row> = report.rows.iter().filter(|r| r.group == "sweep").collect();
    if sweep.is_empty() {
        return Ok(());
    }
    let max_k = sweep.iter().map(|r| r.k_len).max().unwrap_or(2) as f64;
    let top = report.copy_gbps * 1.15;
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("masked-softmax on {} ({})", report.gpu, report.date_utc),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((1f64..max_k * 1.5).log_scale(), 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("k_len (columns per row; lengths uniform in [1, k_len])")
        .y_desc("effective bandwidth, GB/s")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            [(1.0, report.copy_gbps), (max_k * 1.5, report.copy_gbps)],
            BLACK.stroke_width(2),
        ))?
        .label(format!(
            "device-to-device copy: {:.0} GB/s",
            report.copy_gbps
        ))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    let colors = [
        RGBColor(200, 30, 45),
        RGBColor(30, 90, 200),
        RGBColor(20, 140, 60),
    ];
    for (dtype, color) in ["f32", "f16", "bf16"].iter().zip(colors) {
        for (direction, width) in [("forward", 2), ("backward", 1)] {
            let points: Vec<(f64, f64)> = sweep
                .iter()
                .filter(|r| r.dtype == *dtype && r.direction == direction)
                .map(|r| (r.k_len as f64, r.effective_gbps))
                .collect();
            if points.is_empty() {
                continue;
            }
            let style = color.stroke_width(width);
            chart
                .draw_series(LineSeries::new(points.clone(), style))?
                .label(format!("{dtype} {direction}"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
            let marker = |p| Circle::new(p, 1 + width, color.filled());
            chart.draw_series(points.into_iter().map(marker))?;
        }
        // The forward's sector roofline: the copy's bandwidth over the bytes the valid
        // scores' 32-byte sectors make (results from before it have none). bf16 has f16's.
        let roofline: Vec<(f64, f64)> = sweep
            .iter()
            .filter(|r| r.dtype == *dtype && r.direction == "forward" && *dtype != "bf16")
            .filter_map(|r| Some((r.k_len as f64, report.copy_gbps * r.bytes / r.sector_bytes?)))
            .collect();
        if !roofline.is_empty() {
            let style = color.mix(0.6).stroke_width(1);
            let name = if *dtype == "f32" { "f32" } else { "16-bit" };
            chart
                .draw_series(DashedLineSeries::new(roofline, 6, 4, style))?
                .label(format!(
                    "{name} forward: copy over the valid scores' sectors"
                ))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}
