//! Throughput of the CPU reference (f64 arithmetic, rows in parallel with rayon), forward
//! and backward, in each storage type: what validating a GPU result against it costs.
//! Bytes are counted as the GPU benchmark counts them (valid inputs read once + the whole
//! output written once), so criterion's GB/s compare with `bench-throughput`'s.
//!
//! ```sh
//! cargo bench --bench reference            # all cases
//! cargo bench --bench reference -- f16     # a filter
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use masked_softmax::{Element, Lengths, Shape, Spec, bf16, f16, mask, reference};

/// One problem: a name, the contract, and key lengths per batch entry.
struct Case {
    name: &'static str,
    spec: Spec,
    kv: Vec<i32>,
}

fn cases() -> Vec<Case> {
    // Lengths spread over [1, k_len] as the GPU sweep draws them (deterministic here).
    let spread = |rows: usize, k_len: usize| -> Vec<i32> {
        (0..rows).map(|r| 1 + ((r * 7919) % k_len) as i32).collect()
    };
    vec![
        Case {
            name: "seed_4x6",
            spec: Spec::new(Shape::matrix(4, 6)),
            kv: vec![4, 1, 6, 3],
        },
        Case {
            name: "matrix_4096x1024",
            spec: Spec::new(Shape::matrix(4096, 1024)),
            kv: spread(4096, 1024),
        },
        Case {
            name: "attention_b4_h8_q256_k256_causal",
            spec: Spec::new(Shape::new(4, 8, 256, 256)).causal().scale(0.125),
            kv: vec![256, 200, 77, 1],
        },
    ]
}

fn inputs<T: Element>(n: usize) -> Vec<T> {
    (0..n)
        .map(|i| T::from_f64(((i * 2654435761usize) % 1000) as f64 / 250.0 - 2.0))
        .collect()
}

fn bench_type<T: Element>(c: &mut Criterion, type_name: &str) {
    let mut group = c.benchmark_group(format!("reference_{type_name}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for case in cases() {
        let lengths = Lengths::keys(&case.kv);
        let n = case.spec.shape.required_len().unwrap();
        let valid = mask::valid_elements(&case.spec, &lengths).unwrap() as u64;
        let size = std::mem::size_of::<T>() as u64;
        let x = inputs::<T>(n);
        let mut y = vec![T::from_f64(0.0); n];
        group.throughput(Throughput::Bytes(valid * size + n as u64 * size));
        group.bench_function(BenchmarkId::new("forward", case.name), |b| {
            b.iter(|| reference::forward(&case.spec, lengths, black_box(&x), &mut y).unwrap())
        });
        // The backward reads y and dy: one more input.
        reference::forward(&case.spec, lengths, &x, &mut y).unwrap();
        let dy = inputs::<T>(n);
        let mut dx = vec![T::from_f64(0.0); n];
        group.throughput(Throughput::Bytes(2 * valid * size + n as u64 * size));
        group.bench_function(BenchmarkId::new("backward", case.name), |b| {
            b.iter(|| {
                reference::backward(&case.spec, lengths, black_box(&y), &dy, &mut dx).unwrap()
            })
        });
    }
    group.finish();
}

fn reference_benches(c: &mut Criterion) {
    bench_type::<f32>(c, "f32");
    bench_type::<f16>(c, "f16");
    bench_type::<bf16>(c, "bf16");
}

criterion_group!(benches, reference_benches);
criterion_main!(benches);
