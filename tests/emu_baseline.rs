//! The benchmark's unfused baseline (kernels/baseline.cu: build mask, fill pads with -inf,
//! plain softmax) on the CPU emulator against the reference, so that the speed-ups the
//! benchmark reports are over a path that computes the same thing.

mod common;

use std::ffi::c_void;

use common::Lcg;
use masked_softmax::{Element, Lengths, Shape, Spec, bf16, compare, f16};
use masked_softmax_emu::{Dims, GuardedBuffer, Placement, available, launch};

fn dims(grid: u32, block: u32) -> Dims {
    Dims::linear(grid, block)
}

fn arg<T>(v: &mut T) -> *mut c_void {
    (v as *mut T).cast()
}

fn unfused<T: Element>(rows: usize, k_len: usize, seed: u64) {
    let mut rng = Lcg(seed);
    let heads = 3;
    let batch = rows / heads;
    let kv: Vec<i32> = (0..batch)
        .map(|_| rng.range(1, k_len as i64) as i32)
        .collect();
    let x: Vec<T> = (0..batch * heads * k_len)
        .map(|_| T::from_f64(rng.uniform() * 8.0 - 4.0))
        .collect();
    let scale = 0.6f32;
    let n = x.len();
    let kv_buf = GuardedBuffer::from_slice(&kv, Placement::End);
    let x_buf = GuardedBuffer::from_slice(&x, Placement::End);
    let mask = GuardedBuffer::from_slice(&vec![7u8; n], Placement::End);
    let filled = GuardedBuffer::from_slice(&x, Placement::End);
    let y = GuardedBuffer::from_slice(&vec![T::from_f64(f64::NAN); n], Placement::End);
    let (mut kv_a, mut x_a, mut mask_a, mut filled_a, mut y_a) = (
        kv_buf.addr(),
        x_buf.addr(),
        mask.addr(),
        filled.addr(),
        y.addr(),
    );
    let (mut rows_i, mut k_i, mut per_batch, mut n_i, mut s) = (
        (batch * heads) as i64,
        k_len as i64,
        heads as i64,
        n as i64,
        scale,
    );
    let t = T::DTYPE.kernel_suffix();
    unsafe {
        launch(
            "baseline_build_mask",
            dims(3, 64),
            &mut [
                arg(&mut kv_a),
                arg(&mut mask_a),
                arg(&mut rows_i),
                arg(&mut k_i),
                arg(&mut per_batch),
            ],
        )
        .unwrap();
        launch(
            &format!("baseline_masked_fill_{t}"),
            dims(2, 128),
            &mut [
                arg(&mut x_a),
                arg(&mut mask_a),
                arg(&mut filled_a),
                arg(&mut n_i),
            ],
        )
        .unwrap();
        launch(
            &format!("baseline_softmax_{t}"),
            dims(2, 128),
            &mut [
                arg(&mut filled_a),
                arg(&mut y_a),
                arg(&mut rows_i),
                arg(&mut k_i),
                arg(&mut s),
            ],
        )
        .unwrap();
    }
    let spec = Spec::new(Shape::new(batch, heads, 1, k_len)).scale(scale);
    let report = compare::forward(&spec, Lengths::keys(&kv), &x, y.as_slice()).unwrap();
    assert!(report.passed(), "{t} rows {rows} k {k_len}: {report}");
}

#[test]
fn unfused_baseline_matches_the_reference() {
    if !available() {
        eprintln!("emulator built without CUDA headers; skipping");
        return;
    }
    for (rows, k_len) in [(6, 1), (9, 37), (12, 300), (3, 5000)] {
        unfused::<f32>(rows, k_len, 1);
        unfused::<f16>(rows, k_len, 2);
        unfused::<bf16>(rows, k_len, 3);
    }
}
