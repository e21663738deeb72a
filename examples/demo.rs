//! The main job: the blog post's example through the masked softmax.
//!
//! Without a GPU it runs the CPU reference, prints the post's table and says no GPU was
//! found. With one it runs the CUDA kernel on the same example, validates it against the
//! reference, then times the kernel on a large problem per storage type against a
//! device-to-device copy of the same bytes (the bandwidth floor).
//!
//!     cargo run --release --example demo

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream, DeviceRepr, sys::CUevent_flags};
use masked_softmax::cuda::{CudaSoftmax, DeviceLengths, open_device};
use masked_softmax::{
    DType, Element, Lengths, Shape, Spec, bf16, compare, f16, mask, reference, seed,
};

fn main() -> masked_softmax::Result<()> {
    let spec = Spec::new(Shape::matrix(seed::ROWS, seed::COLS));
    let lengths = Lengths::keys(&seed::LENGTHS);
    let x = seed::scores::<f64>();
    println!(
        "masked softmax of the blog post's 4x6 example, lengths {:?}",
        seed::LENGTHS
    );
    println!("scores (pads included; they are never read):");
    println!("{}\n", seed::format_table(&x, seed::COLS));

    let mut y = vec![0f64; x.len()];
    reference::forward_into(&spec, lengths, &x, &mut y)?;
    println!("CPU reference (f64): pads get exactly 0, each row sums to 1");
    println!("{}\n", seed::format_table(&y, seed::COLS));

    let gpu = match open_gpu() {
        Ok(gpu) => gpu,
        Err(reason) => {
            println!("No GPU: {reason}");
            println!(
                "The table above comes from the CPU reference; on a machine with an NVIDIA GPU"
            );
            println!(
                "(compute capability 8.0+, driver 580+) this demo also runs and times the kernel."
            );
            return Ok(());
        }
    };
    let (ctx, softmax) = gpu;
    let stream = ctx.default_stream();
    println!("GPU: {}", ctx.name()?);

    let x32 = seed::scores::<f32>();
    let x_dev = stream.clone_htod(&x32)?;
    let lengths_dev = stream.clone_htod(&seed::LENGTHS)?;
    let mut y_dev = stream.clone_htod(&vec![f32::NAN; x32.len()])?;
    softmax.forward(
        &stream,
        &spec,
        DeviceLengths::keys(&lengths_dev),
        &x_dev,
        &mut y_dev,
    )?;
    let y32 = stream.clone_dtoh(&y_dev)?;
    println!("CUDA kernel (f32):");
    println!("{}", seed::format_table(&y32, seed::COLS));
    let report = compare::forward(&spec, lengths, &x32, &y32)?;
    println!("against the reference: {report}\n");
    report.into_result()?;

    println!("throughput, lengths uniform in [1, k_len], against a device-to-device copy:");
    println!(
        "{:>6} {:>9} {:>10} {:>10} {:>9} {:>12}",
        "type", "rows", "k_len", "time", "x floor", "GB/s"
    );
    for dtype in DType::ALL {
        match dtype {
            DType::F32 => throughput::<f32>(&ctx, &stream, &softmax)?,
            DType::F16 => throughput::<f16>(&ctx, &stream, &softmax)?,
            DType::BF16 => throughput::<bf16>(&ctx, &stream, &softmax)?,
        }
    }
    Ok(())
}

fn open_gpu() -> Result<(Arc<CudaContext>, CudaSoftmax), String> {
    let ctx = open_device(0).map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let softmax = CudaSoftmax::new(&ctx).map_err(|e| e.to_string())?;
    // The embedded SASS loads as it is on Ampere, Ada and Hopper; a newer GPU compiles the
    // PTX on its first load (the driver caches the result).
    println!("kernels loaded in {:.2} s", started.elapsed().as_secs_f64());
    Ok((ctx, softmax))
}

/// Times one large problem of type `T` (256 MiB of scores) and a copy of the same size.
fn throughput<T: Element + DeviceRepr>(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    softmax: &CudaSoftmax,
) -> masked_softmax::Result<()> {
    let k_len = 4096;
    let rows = (256 << 20) / (k_len * std::mem::size_of::<T>());
    let spec = Spec::new(Shape::matrix(rows, k_len));
    let mut state = 0x2545F4914F6CDD1Du64;
    let kv: Vec<i32> = (0..rows)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            1 + (state % k_len as u64) as i32
        })
        .collect();
    let x_host: Vec<T> = (0..rows * k_len)
        .map(|i| T::from_f64((i % 97) as f64 / 17.0))
        .collect();
    let x = stream.clone_htod(&x_host)?;
    let mut y = stream.clone_htod(&x_host)?;
    let kv_dev = stream.clone_htod(&kv)?;
    let lengths = DeviceLengths::keys(&kv_dev);

    let run = |y: &mut _| softmax.forward(stream, &spec, lengths, &x, y);
    let kernel_ms = time_ms(ctx, stream, || run(&mut y))?;
    let copy_ms = time_ms(ctx, stream, || {
        stream.memcpy_dtod(&x, &mut y)?;
        Ok(())
    })?;

    let size = std::mem::size_of::<T>() as f64;
    let valid = mask::valid_elements(&spec, &Lengths::keys(&kv))? as f64;
    let bytes = valid * size + (rows * k_len) as f64 * size + (rows * 4) as f64;
    let copy_bandwidth = 2.0 * x.num_bytes() as f64 / (copy_ms * 1e-3);
    let floor_ms = bytes / copy_bandwidth * 1e3;
    println!(
        "{:>6} {:>9} {:>10} {:>8.3}ms {:>8.2}x {:>12.0}",
        T::DTYPE.kernel_suffix(),
        rows,
        k_len,
        kernel_ms,
        kernel_ms / floor_ms,
        bytes / (kernel_ms * 1e-3) / 1e9
    );
    Ok(())
}

/// Median milliseconds of `f` over 20 timed runs after 3 warm-up runs.
fn time_ms(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    mut f: impl FnMut() -> masked_softmax::Result<()>,
) -> masked_softmax::Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    let mut times = Vec::new();
    for _ in 0..20 {
        let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        start.record(stream)?;
        f()?;
        end.record(stream)?;
        times.push(start.elapsed_ms(&end)? as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
