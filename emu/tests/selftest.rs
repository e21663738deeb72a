//! The emulator against known answers: shuffles as PTX defines them, block barriers with
//! shared memory, and the faults it must report (divergent shuffles, misaligned vectors,
//! writes past a block's dynamic shared memory).

use std::ffi::c_void;

use masked_softmax_emu::{Dims, GuardedBuffer, Placement, available, kernel_names, launch};

fn dims(grid: u32, block: u32) -> Dims {
    Dims::linear(grid, block)
}

fn arg<T>(v: &mut T) -> *mut c_void {
    (v as *mut T).cast()
}

macro_rules! require_emulator {
    () => {
        if !available() {
            eprintln!("emulator built without CUDA headers; skipping");
            return;
        }
    };
}

#[test]
fn registers_every_kernel() {
    require_emulator!();
    let names = kernel_names();
    for name in [
        "selftest_shuffles",
        "masked_softmax_fwd_rows_g32_p4x8_f32",
        "masked_softmax_fwd_block_stream_p1_bf16",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
}

#[test]
fn shuffles_follow_the_ptx_rules() {
    require_emulator!();
    for width in [32, 8] {
        let threads = 64;
        let out = GuardedBuffer::from_slice(&vec![-1i32; 4 * threads], Placement::Start);
        let (mut out_ptr, mut w) = (out.addr(), width);
        unsafe {
            launch(
                "selftest_shuffles",
                dims(1, threads as u32),
                &mut [arg(&mut out_ptr), arg(&mut w)],
            )
        }
        .unwrap();
        for t in 0..threads {
            let lane = (t % 32) as i32;
            let seg = lane / width * width;
            let in_seg = |src: i32| {
                if src >= seg && src < seg + width {
                    src
                } else {
                    lane
                }
            };
            let want = [
                in_seg(lane ^ 1) * 10,
                in_seg(lane + 3) * 10 + 1,
                in_seg(lane - 2) * 10 + 2,
                (seg + 5 % width) * 10 + 3,
            ];
            assert_eq!(
                &out.as_slice()[4 * t..4 * t + 4],
                &want,
                "thread {t} width {width}"
            );
        }
    }
}

#[test]
fn block_barriers_order_shared_memory() {
    require_emulator!();
    let (blocks, threads) = (3usize, 256usize);
    let input: Vec<i32> = (0..(blocks * threads) as i32).collect();
    let input = GuardedBuffer::from_slice(&input, Placement::End);
    let out = GuardedBuffer::from_slice(&vec![0i32; blocks], Placement::End);
    let (mut i, mut o) = (input.addr(), out.addr());
    unsafe {
        launch(
            "selftest_block_sum",
            dims(blocks as u32, threads as u32),
            &mut [arg(&mut i), arg(&mut o)],
        )
    }
    .unwrap();
    for b in 0..blocks {
        let want: i32 = (b * threads..(b + 1) * threads).map(|v| v as i32).sum();
        assert_eq!(out.as_slice()[b], want);
    }
}

#[test]
fn odd_blocks_run_their_threads_in_reverse_so_a_missing_barrier_shows() {
    require_emulator!();
    let out = GuardedBuffer::from_slice(&[0i32; 2], Placement::End);
    let mut o = out.addr();
    let d = Dims {
        shared_bytes: 64 * 4,
        ..dims(2, 64)
    };
    unsafe { launch("selftest_missing_barrier", d, &mut [arg(&mut o)]) }.unwrap();
    // Block 0 ran thread 0 first and hides the race; block 1 ran thread 63 first, which
    // read shared memory no thread had written yet (the emulator's 0xA5 garbage).
    assert_eq!(out.as_slice()[0], 1);
    assert_eq!(out.as_slice()[1] as u32, 0xA5A5_A5A5);
}

/// The error of one warp running `kernel(int* out)`, a self-test kernel that must fail.
fn one_warp_launch_error(kernel: &str) -> String {
    let out = GuardedBuffer::from_slice(&[0i32; 32], Placement::Start);
    let mut o = out.addr();
    unsafe { launch(kernel, dims(1, 32), &mut [arg(&mut o)]) }.unwrap_err()
}

#[test]
fn a_shuffle_that_half_the_warp_skips_is_a_deadlock() {
    require_emulator!();
    let err = one_warp_launch_error("selftest_divergent_shuffle");
    assert!(err.contains("deadlock"), "{err}");
    // The emulator recovers: the next launch runs normally.
    block_barriers_order_shared_memory();
}

#[test]
fn lanes_at_a_shuffle_and_at_syncwarp_are_an_error() {
    require_emulator!();
    let err = one_warp_launch_error("selftest_shuffle_meets_syncwarp");
    assert!(err.contains("different operations"), "{err}");
    block_barriers_order_shared_memory();
}

#[test]
fn misaligned_vector_access_is_reported() {
    require_emulator!();
    let input = GuardedBuffer::from_slice(&[1.0f32; 8], Placement::Start);
    let out = GuardedBuffer::from_slice(&[0.0f32; 1], Placement::Start);
    let (mut i, mut o) = (input.addr(), out.addr());
    let err = unsafe {
        launch(
            "selftest_misaligned",
            dims(1, 1),
            &mut [arg(&mut i), arg(&mut o)],
        )
    }
    .unwrap_err();
    assert!(err.contains("misaligned"), "{err}");
}

#[test]
fn unknown_kernels_and_bad_configurations_are_errors() {
    require_emulator!();
    assert!(
        unsafe { launch("no_such_kernel", dims(1, 32), &mut []) }
            .unwrap_err()
            .contains("no kernel")
    );
    let err = unsafe { launch("selftest_shuffles", dims(1, 2048), &mut []) }.unwrap_err();
    assert!(err.contains("invalid launch"), "{err}");
}

#[test]
fn guard_pages_surround_the_buffer() {
    let start = GuardedBuffer::from_slice(&[7u8; 5], Placement::Start);
    assert_eq!(start.addr() % 4096, 0);
    let end = GuardedBuffer::from_slice(&[7u8; 5], Placement::End);
    assert_eq!((end.addr() + 5) % 4096, 0);
    assert_eq!(end.as_slice(), &[7; 5]);
}

#[test]
fn clusters_share_memory_between_their_blocks() {
    require_emulator!();
    let blocks = 8usize;
    let out = GuardedBuffer::from_slice(&vec![-1i32; blocks], Placement::Start);
    let mut o = out.addr();
    let d = Dims {
        grid: [blocks as u32, 1, 1],
        block: [64, 1, 1],
        cluster: 4,
        shared_bytes: 16,
    };
    unsafe { launch("selftest_cluster_ring", d, &mut [arg(&mut o)]) }.unwrap();
    // Block b (rank b % 4) reads rank (b + 1) % 4 of its own cluster.
    let want: Vec<i32> = (0..blocks)
        .map(|b| {
            let (first, rank) = (b / 4 * 4, b % 4);
            let next = (rank + 1) % 4;
            (next * 100 + first + next) as i32
        })
        .collect();
    assert_eq!(out.as_slice(), &want[..]);
    let bad = Dims { cluster: 3, ..d };
    let err = unsafe { launch("selftest_cluster_ring", bad, &mut [arg(&mut o)]) }.unwrap_err();
    assert!(err.contains("cluster"), "{err}");
}

#[test]
fn writing_past_the_dynamic_shared_memory_is_reported() {
    require_emulator!();
    let d = |shared_bytes: u32| Dims {
        grid: [2, 1, 1],
        block: [32, 1, 1],
        cluster: 1,
        shared_bytes,
    };
    let mut words = 16i32;
    // 16 words in 64 bytes: fine; in 56 bytes: the last two land in the guard band.
    unsafe { launch("selftest_shared_overrun", d(64), &mut [arg(&mut words)]) }.unwrap();
    let err =
        unsafe { launch("selftest_shared_overrun", d(56), &mut [arg(&mut words)]) }.unwrap_err();
    assert!(
        err.contains("wrote past its 56 bytes of dynamic shared memory"),
        "{err}"
    );
}
