//! An inference step as cudarc code would write it: one context, one stream, attention
//! scores produced on the device (q · kᵀ of a decode step over a padded KV cache), the
//! masked softmax right after, both captured once into a CUDA graph and replayed step
//! after step with the cache lengths updated in place. Prints the latency per replay and
//! checks the last step against the CPU reference.
//!
//! Without a GPU it runs the same step on the CPU with the reference and says so.
//!
//!     cargo run --release --example inference_step

use std::sync::Arc;

use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use masked_softmax::cuda::{CudaSoftmax, DeviceLengths, open_device};
use masked_softmax::{Lengths, Shape, Spec, compare, reference};

/// Decode: 8 sequences, 32 heads, one new query each, a KV cache of 4096 slots.
const BATCH: usize = 8;
const HEADS: usize = 32;
const CACHE: usize = 4096;
const HEAD_DIM: usize = 64;
const STEPS: usize = 50;

/// scores[b, h, j] = q[b, h, :] · k[b, h, j, :]; one thread per (b, h, j). Compiled at run
/// time with NVRTC, as an application's own kernels often are.
const QK_SOURCE: &str = r#"
extern "C" __global__ void qk_scores(const float* q, const float* k, float* scores,
                                     long long rows, long long cache, int head_dim) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * cache) return;
    long long row = i / cache;
    const float* qr = q + row * head_dim;
    const float* kr = k + i * head_dim;
    float acc = 0.f;
    for (int d = 0; d < head_dim; ++d) acc += qr[d] * kr[d];
    scores[i] = acc;
}
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = Spec::new(Shape::new(BATCH, HEADS, 1, CACHE)).scale(1.0 / (HEAD_DIM as f32).sqrt());
    let q_host = pseudo_random(BATCH * HEADS * HEAD_DIM, 1);
    let k_host = pseudo_random(BATCH * HEADS * CACHE * HEAD_DIM, 2);
    // Each sequence has filled part of its cache; every step appends one token.
    let first_lengths: Vec<i32> = (0..BATCH).map(|b| (500 + 437 * b) as i32).collect();
    let last_lengths: Vec<i32> = first_lengths.iter().map(|l| l + STEPS as i32 - 1).collect();
    let scores_host = qk_host(&q_host, &k_host);

    let (ctx, softmax) =
        match open_device(0).and_then(|ctx| Ok((ctx.clone(), CudaSoftmax::new(&ctx)?))) {
            Ok(gpu) => gpu,
            Err(reason) => {
                println!("No GPU: {reason}");
                println!("Running the step on the CPU with the reference instead.");
                let mut probs = vec![0f32; scores_host.len()];
                reference::forward(
                    &spec,
                    Lengths::keys(&last_lengths),
                    &scores_host,
                    &mut probs,
                )?;
                let row: f32 = probs[..CACHE].iter().sum();
                println!(
                    "sequence 0, head 0: {} valid keys, probabilities sum to {row:.6}",
                    last_lengths[0]
                );
                return Ok(());
            }
        };
    // One stream, so cudarc's cross-stream event tracking has nothing to order; left on, it
    // makes every kernel argument wait for its last write's event, and inside a capture that
    // is a wait on uncaptured work (CUDA_ERROR_STREAM_CAPTURE_ISOLATION). cudarc's own graph
    // tests turn it off the same way.
    // SAFETY: every buffer below is used on `stream` alone.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream()?;
    println!("GPU: {}", ctx.name()?);

    let q = stream.clone_htod(&q_host)?;
    let k = stream.clone_htod(&k_host)?;
    let mut scores = stream.alloc_zeros::<f32>(BATCH * HEADS * CACHE)?;
    let mut probs = stream.alloc_zeros::<f32>(BATCH * HEADS * CACHE)?;
    let mut lengths = stream.clone_htod(&first_lengths)?;
    let qk = compile_qk(&ctx);
    if qk.is_none() {
        println!("(NVRTC not found: the scores are uploaded from the host instead of computed)");
        stream.memcpy_htod(&scores_host, &mut scores)?;
    }

    // Capture one step: scores, then the masked softmax, reading the lengths from the device.
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    let captured = (|| -> Result<(), Box<dyn std::error::Error>> {
        if let Some(qk) = &qk {
            launch_qk(&stream, qk, &q, &k, &mut scores)?;
        }
        softmax.forward(
            &stream,
            &spec,
            DeviceLengths::keys(&lengths),
            &scores,
            &mut probs,
        )?;
        Ok(())
    })();
    let graph = stream.end_capture(CUgraphInstantiate_flags(0))?;
    captured?;
    let graph = graph.ok_or("the capture recorded nothing")?;

    // Replay step after step; between steps only the lengths change, in place.
    let mut per_replay = Vec::new();
    for step in 0..STEPS {
        let step_lengths: Vec<i32> = first_lengths.iter().map(|l| l + step as i32).collect();
        stream.memcpy_htod(&step_lengths, &mut lengths)?;
        let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        start.record(&stream)?;
        graph.launch()?;
        end.record(&stream)?;
        per_replay.push(start.elapsed_ms(&end)? as f64 * 1e3);
    }
    per_replay.sort_by(f64::total_cmp);
    println!(
        "{STEPS} replays of (q·kᵀ + masked softmax), batch {BATCH} x {HEADS} heads x {CACHE} keys: \
         median {:.1} us, min {:.1} us, max {:.1} us",
        per_replay[STEPS / 2],
        per_replay[0],
        per_replay[STEPS - 1]
    );

    // The last step against the reference (scores as the device computed them).
    let scores_dev = stream.clone_dtoh(&scores)?;
    let probs_dev = stream.clone_dtoh(&probs)?;
    let report = compare::forward(&spec, Lengths::keys(&last_lengths), &scores_dev, &probs_dev)?;
    println!("last step against the reference: {report}");
    report.into_result()?;
    Ok(())
}

fn compile_qk(ctx: &Arc<CudaContext>) -> Option<CudaFunction> {
    // SAFETY: only tries to dlopen libnvrtc.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return None;
    }
    let ptx = cudarc::nvrtc::compile_ptx(QK_SOURCE).ok()?;
    ctx.load_module(ptx).ok()?.load_function("qk_scores").ok()
}

fn launch_qk(
    stream: &Arc<CudaStream>,
    qk: &CudaFunction,
    q: &CudaSlice<f32>,
    k: &CudaSlice<f32>,
    scores: &mut CudaSlice<f32>,
) -> Result<(), Box<dyn std::error::Error>> {
    let (rows, cache, head_dim) = ((BATCH * HEADS) as i64, CACHE as i64, HEAD_DIM as i32);
    let config = LaunchConfig::for_num_elems((BATCH * HEADS * CACHE) as u32);
    // SAFETY: the argument list matches QK_SOURCE; the buffers hold rows x cache x head_dim.
    unsafe {
        stream
            .launch_builder(qk)
            .arg(q)
            .arg(k)
            .arg(scores)
            .arg(&rows)
            .arg(&cache)
            .arg(&head_dim)
            .launch(config)
    }?;
    Ok(())
}

/// The same scores on the host.
fn qk_host(q: &[f32], k: &[f32]) -> Vec<f32> {
    (0..BATCH * HEADS * CACHE)
        .map(|i| {
            let row = i / CACHE;
            let qr = &q[row * HEAD_DIM..(row + 1) * HEAD_DIM];
            let kr = &k[i * HEAD_DIM..(i + 1) * HEAD_DIM];
            qr.iter().zip(kr).map(|(a, b)| a * b).sum()
        })
        .collect()
}

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}
