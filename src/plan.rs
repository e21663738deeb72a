//! Launch planning: which kernel runs a problem, with what grid, block, shared memory and
//! parameters. Pure Rust, so it is unit-tested without a GPU, and it drives both the CUDA
//! launcher ([`crate::cuda`]) and the CPU emulator the tests run the kernels on.
//!
//! The ladder, by row length `k_len` (P = elements per pack: 16 bytes' worth when every
//! buffer sits alike against 16-byte boundaries, else 1; rows that start off a boundary,
//! as odd row strides make them, are seen from the boundary before them and take up to
//! P - 1 more columns (kernels/io.cuh, `PackShift`), or single elements if shorter than
//! `SHIFTED_MIN_PACKS` packs; each thread keeps at most 32
//! floats of a row in registers in a rows kernel, 16 in a block kernel, half that in the
//! backward, which holds `y` and `dy`, where 16-bit packs kept as raw pairs, two values to
//! a register, hold twice the columns):
//!
//! 1. Short rows: [`KernelKind::Rows`] with `group` lanes per row and several rows per
//!    warp, so short rows are neither launch- nor shuffle-bound. 16-byte packs: up to 8
//!    lanes with a pack each, then up to 4 packs per lane (2 in the 16-bit backward) on
//!    8 or 16 lanes. Single elements: a lane per column (16-bit rows up to 8 columns: a
//!    lane per row). The 16-bit forward's rows of up to 2 packs a lane hold f32 keys
//!    ([`KernelKind::RowsKeys`]).
//! 2. Up to 32 floats per lane: `Rows` with a whole warp per row and `packs` packs per
//!    lane in registers (`rows_shape`); the f32 backward of 16-byte packs stops at 256
//!    keys (`rows_columns`).
//! 3. Up to 16 floats per thread of a 512-thread block: [`KernelKind::BlockRegs`], a
//!    block per row, the row in registers (f32: up to 4096 keys, or the kernel's capacity
//!    where rows are fewer than 4 per multiprocessor). Many 16-bit rows take the
//!    `block_regs` kernel that keeps 32 columns a thread as raw pairs, up to 16384 keys.
//! 4. f32 rows up to 8192 keys (backward: 16384), and any row whose keys (or `y` and `dy`)
//!    fit where rows are fewer than multiprocessors: [`KernelKind::BlockCached`], a block
//!    per row, the row cached in shared memory.
//! 5. Anything longer: [`KernelKind::BlockStream`], a block per row reading the valid
//!    scores twice.
//!
//! On GPUs with thread-block clusters (9.0+) two more cases go to [`KernelKind::Cluster`],
//! a cluster of 2 to 8 blocks per row, each block a chunk of it: rows too few to give every
//! multiprocessor a block and too long for steps 3 and 4 (cached in the cluster's shared
//! memory when it fits); and forward 16-bit rows past step 3 (read twice, the cluster's
//! rows close together in L2). Steps 3 to 5 and the cluster cases follow crossovers
//! measured on an H200 and an H100 with the benchmark's `--variants` (see
//! `Problem::choose`).
//!
//! [`KernelKind::Split`] (rows cut into chunks spread over the whole grid, two launches
//! and a scratch buffer) runs any length on request; the planner does not pick it yet.
//!
//! Blocks: the block kernels' blocks are whole warps, as many as a row needs (steps 3-5;
//! 64 to 512 threads), not the next power of two: a row a pack past one would otherwise
//! take twice the threads and registers and halve the rows a multiprocessor holds.
//!
//! Grids: every kernel strides over its rows (or chunks) by the grid, so a grid need hold
//! no more than the blocks the device runs at once (more would start as a second wave,
//! part-empty unless whole). The planner counts threads, shared memory with the system's
//! reservation, and for clusters the GPCs ([`ClusterResidency`]); the CUDA launcher then
//! cuts the grid to the compiled kernel's occupancy by registers, as the driver counts it
//! ([`LaunchPlan::fit_resident`]). Where the driver's counts are unknown, grids are the
//! planner's.

use crate::contract::{Causal, Padding, Spec};
use crate::dtype::DType;
use crate::error::Result;

/// Threads per warp.
pub const WARP_SIZE: u32 = 32;

/// What the planner needs to know about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Resident threads per multiprocessor.
    pub max_threads_per_sm: u32,
    /// Dynamic shared memory one block may use (after opting in), bytes.
    pub max_shared_per_block: u32,
    /// Shared memory per multiprocessor, bytes.
    pub shared_per_sm: u32,
    /// Thread-block clusters available (compute capability 9.0+, with its PTX loaded).
    pub clusters: bool,
    /// Shared memory the system takes from a multiprocessor for each resident block (1 KiB
    /// on every GPU of compute capability 8.0 and newer), bytes: a block of `s` bytes of
    /// dynamic shared memory holds `s` plus this.
    pub reserved_shared_per_block: u32,
    /// How many thread-block clusters run at once, as the driver counts them
    /// ([`ClusterResidency::UNKNOWN`] where it was not asked, or there are no clusters).
    pub cluster_residency: ClusterResidency,
}

impl DeviceLimits {
    /// Blocks of `shared` bytes of dynamic shared memory a multiprocessor holds, each with
    /// the system's reservation.
    fn blocks_by_shared(&self, shared: u64) -> u64 {
        self.shared_per_sm as u64 / (shared + self.reserved_shared_per_block as u64).max(1)
    }

    /// Clusters of `cluster` blocks resident at once at `blocks_per_sm` blocks a
    /// multiprocessor: those [`ClusterResidency`] says the GPCs fit, at most those the
    /// multiprocessors hold.
    fn resident_clusters(&self, cluster: u64, blocks_per_sm: u64) -> u64 {
        let by_sms = self.sm_count.max(1) as u64 * blocks_per_sm / cluster.max(1);
        let by_gpcs = self.cluster_residency.get(
            cluster.min(u32::MAX as u64) as u32,
            blocks_per_sm.min(u32::MAX as u64) as u32,
        );
        by_gpcs.map_or(by_sms, |n| by_sms.min(n as u64))
    }
}

/// How many thread-block clusters of 2, 4 or 8 blocks a device runs at once, by how many
/// blocks of the launch fit a multiprocessor (1 to [`ClusterResidency::MAX_BLOCKS_PER_SM`]).
///
/// A cluster's blocks all run in one GPC (a group of multiprocessors), and a chip's GPCs
/// differ in size: an H100 SXM has 132 multiprocessors in 8 GPCs of uneven size, so
/// clusters of 4 or 8 blocks, one a multiprocessor, leave some idle and fewer fit than
/// `sm_count * blocks_per_sm / cluster`. The kernels loop over their rows with the grid's
/// clusters as the stride, so a cluster launched beyond those that fit starts only when
/// one of them has done all its rows, and the launch takes up to twice as long. The
/// planner therefore sizes cluster grids by this table, which
/// [`CudaSoftmax::new`](crate::cuda::CudaSoftmax::new) fills from the driver
/// (`cuOccupancyMaxActiveClusters`); where an entry is unknown it counts
/// `sm_count * blocks_per_sm / cluster`.
///
/// ```
/// use masked_softmax::plan::ClusterResidency;
///
/// // 16 multiprocessors in one GPC and 14 in another: clusters of 8, one block each.
/// let table = ClusterResidency::of_gpcs(&[16, 14]);
/// assert_eq!(table.get(8, 1), Some(2 + 1));
/// assert_eq!(table.get(8, 2), Some(4 + 3));
/// assert_eq!(ClusterResidency::UNKNOWN.get(8, 1), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClusterResidency {
    /// Clusters at once, by cluster size (2, 4, 8) and blocks per multiprocessor (1 to 8);
    /// 0 where unknown.
    clusters: [[u32; ClusterResidency::MAX_BLOCKS_PER_SM as usize]; 3],
}

impl ClusterResidency {
    /// Nothing known: the planner counts `sm_count * blocks_per_sm / cluster`.
    pub const UNKNOWN: ClusterResidency = ClusterResidency {
        clusters: [[0; ClusterResidency::MAX_BLOCKS_PER_SM as usize]; 3],
    };
    /// The most blocks per multiprocessor the table records; launches with more count as
    /// this many (fewer clusters than fit, never more).
    pub const MAX_BLOCKS_PER_SM: u32 = 8;
    /// Blocks per cluster the table records.
    pub const CLUSTER_SIZES: [u32; 3] = [2, 4, 8];

    /// The table of a device whose GPCs hold `sms_per_gpc` multiprocessors each, where a
    /// cluster's blocks pack freely into its GPC: per GPC, `blocks_per_sm * sms / cluster`
    /// clusters (rounded down). For models and tests; a real device's table comes from its
    /// driver.
    pub const fn of_gpcs(sms_per_gpc: &[u32]) -> ClusterResidency {
        let mut table = ClusterResidency::UNKNOWN;
        let mut c = 0;
        while c < ClusterResidency::CLUSTER_SIZES.len() {
            let mut b = 0;
            while b < ClusterResidency::MAX_BLOCKS_PER_SM as usize {
                let mut clusters = 0;
                let mut g = 0;
                while g < sms_per_gpc.len() {
                    clusters +=
                        (b as u32 + 1) * sms_per_gpc[g] / ClusterResidency::CLUSTER_SIZES[c];
                    g += 1;
                }
                table.clusters[c][b] = clusters;
                b += 1;
            }
            c += 1;
        }
        table
    }

    /// Records that `clusters` clusters of `cluster` blocks fit at once with
    /// `blocks_per_sm` blocks a multiprocessor; sizes the table does not hold, and 0, are
    /// ignored.
    pub fn record(&mut self, cluster: u32, blocks_per_sm: u32, clusters: u32) {
        if let Some(c) = Self::CLUSTER_SIZES.iter().position(|&s| s == cluster)
            && (1..=Self::MAX_BLOCKS_PER_SM).contains(&blocks_per_sm)
            && clusters > 0
        {
            self.clusters[c][blocks_per_sm as usize - 1] = clusters;
        }
    }

    /// How many clusters of `cluster` blocks fit at once with `blocks_per_sm` blocks a
    /// multiprocessor (past [`MAX_BLOCKS_PER_SM`](Self::MAX_BLOCKS_PER_SM), as many as
    /// at that), if known.
    pub fn get(&self, cluster: u32, blocks_per_sm: u32) -> Option<u32> {
        let c = Self::CLUSTER_SIZES.iter().position(|&s| s == cluster)?;
        let b = blocks_per_sm.clamp(1, Self::MAX_BLOCKS_PER_SM) as usize - 1;
        Some(self.clusters[c][b]).filter(|&n| n > 0)
    }
}

/// The kernels, forward and backward alike. Each is instantiated for f32, f16 and bf16 (see
/// [`KernelKind::all`] for which exist in each direction); `kernels/masked_softmax.cu`
/// and `kernels/masked_softmax_backward.cu` say what they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelKind {
    /// `group` lanes per row (a power of two up to 32), `packs` packs of `pack` elements
    /// per lane, held in registers: rows up to `group * pack * packs` columns.
    Rows {
        /// Lanes per row.
        group: u32,
        /// Elements per pack.
        pack: u32,
        /// Packs per lane.
        packs: u32,
    },
    /// The forward's 16-bit [`KernelKind::Rows`] with the row held as f32 keys (one `exp`
    /// an element, half the rows in flight) where `Rows` keeps 16-bit pairs as fetched
    /// (two `exp` an element until v22; one since, with the weights kept in shared memory):
    /// compiled for short rows of 16-byte packs (the group ladder and the forward's split
    /// shapes). The planner picks it for 16-bit forward rows of up to 2 packs a lane (128
    /// keys), where it measured faster (v11, against the raw pairs' two `exp`).
    RowsKeys {
        /// Lanes per row.
        group: u32,
        /// Elements per pack.
        pack: u32,
        /// Packs per lane.
        packs: u32,
    },
    /// A block per row (64 to 512 threads, in whole warps; 256 at most for the 16-bit
    /// forward's wide variant of 64 columns a thread), `packs` packs of `pack` elements per
    /// thread in registers: rows up to that many threads times `pack * packs` columns.
    BlockRegs {
        /// Elements per pack.
        pack: u32,
        /// Packs per thread.
        packs: u32,
    },
    /// A block per row, keys cached in dynamic shared memory.
    BlockCached {
        /// Elements per pack.
        pack: u32,
    },
    /// A block per row, any length: statistics pass, then a second read to write.
    BlockStream {
        /// Elements per pack.
        pack: u32,
    },
    /// Rows cut into chunks of [`SPLIT_CHUNK_PACKS`] packs, the chunks of all rows spread
    /// over the grid, in two launches: each chunk's statistics into a scratch buffer
    /// ([`LaunchPlan::partials`]), then each chunk merges its row's, reads its scores again
    /// and writes. Any length; the work spreads evenly however few and uneven the rows are.
    /// Not yet picked by the planner (the benchmark's variants compare it).
    Split {
        /// Elements per pack.
        pack: u32,
    },
    /// A thread-block cluster per row (9.0+), each block a chunk of the row.
    Cluster {
        /// Elements per pack.
        pack: u32,
        /// Chunks cached in shared memory (else read twice).
        cached: bool,
    },
}

/// Elements in a 16-byte pack of `dtype`.
pub fn vector_pack(dtype: DType) -> u32 {
    16 / dtype.size_in_bytes() as u32
}

/// What a kernel's `*_prefetch_*` instance ([`KernelKind::prefetch_name`]) fetches ahead
/// of its planned kernel's work (kernels/work.cuh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FetchAhead {
    /// A block kernel holding one row at a time (block_regs, block_cached; v12): warp 0
    /// asks the L2 for the block's next row but one of its grid stride as it finishes a
    /// row (`prefetch_row_l2`).
    NextRow,
    /// A rows kernel of the short rows (1 to 64 keys, most taking several a lane at once;
    /// v14): each batch's lengths a batch ahead, into registers; no L2 hint.
    Lengths,
    /// A rows kernel of 16-byte packs taking a row a group of lanes at a time (77 to 1024
    /// keys; v19): the leader of each group asks the L2 for its row of the warp's next
    /// batch before the current batch's work, with the lengths fetched two batches ahead
    /// (`for_each_group_rows` under `Ahead::rows`).
    NextBatch,
}

/// Forward (`kernels/masked_softmax.cu`) or backward (`kernels/masked_softmax_backward.cu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `y = softmax(scale * x)`; kernel arguments `(x, y, params)`.
    Forward,
    /// `dx = scale * y * (dy - sum(y * dy))`; kernel arguments `(y, dy, dx, params)`.
    Backward,
}

impl Direction {
    /// The kernel file the direction's kernels are in.
    pub fn module(self) -> &'static str {
        match self {
            Direction::Forward => "masked_softmax",
            Direction::Backward => "masked_softmax_backward",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Direction::Forward => "masked_softmax_fwd",
            Direction::Backward => "masked_softmax_bwd",
        }
    }

    /// Bytes of shared memory a cached column takes: a key, or a `y` and a `dy`.
    fn cached_bytes_per_column(self) -> u64 {
        match self {
            Direction::Forward => 4,
            Direction::Backward => 8,
        }
    }
}

/// Most packs per lane of a warp-per-row kernel: 32 floats of the row per lane in the
/// forward (8 f32 or 4 16-bit vector packs, or 32 single elements), 16 of `y` and 16 of `dy`
/// in the backward, where 16-bit vector packs, kept as raw pairs (two values to a
/// register), take 32 columns of each in the same registers: 4 packs, rows of up to 1024
/// keys on a warp (64 registers, no spills), which went to a 64-thread block_regs before
/// (H100 v7: 1.60x the floor at k=1000, where the warp's 2 packs a lane took 1.33x at 512
/// and the forward's 4 took 1.32x at 1000). More costs registers the multiprocessor needs
/// for occupancy.
fn max_packs(dtype: DType, pack: u32, direction: Direction) -> u32 {
    match direction {
        Direction::Forward => 32 / pack,
        Direction::Backward if raw_pairs(dtype, pack) => 32 / pack,
        Direction::Backward => 16 / pack,
    }
}

/// The 16-bit kernels of 16-byte packs keep their columns as fetched, two to a register
/// (kernels/work.cuh, RAW_PAIRS).
fn raw_pairs(dtype: DType, pack: u32) -> bool {
    dtype.size_in_bytes() == 2 && pack > 1
}

/// Packs per lane a rows kernel of 16-byte packs fills before it spreads a row over more
/// lanes, and the fewest lanes it spreads one over (8 lanes of 16 bytes fill a 128-byte
/// line). On the H200 (v5) one pack per lane cost 2.3x the floor for f32 at k=32-128, where
/// 4 packs per lane (k=512) cost 1.21x at the same bytes: with one pack per lane each
/// row's two 5-step warp reductions and its window are spread over 4 columns.
const ROWS_PACKS_PER_LANE: u32 = 4;
const ROWS_MIN_VECTOR_GROUP: u32 = 8;

/// Lanes per row and packs per lane of the rows kernel for rows of `k_len <= 32 * pack *
/// max_packs` columns: the smallest kernel that holds the row. By the H100 variants of v7
/// and the H200 variants of v10 (PERFORMANCE.md, "v7 measured", "v10 measured"):
/// - Single elements (misaligned rows) of 16-bit types up to TINY_ROW_KEYS: a lane per row,
///   holding all of it (k=7: 3.40x the floor against 4.65x forward, 3.08x against 3.22x
///   backward). f32 keeps 8 lanes a row there (2.41x against 2.59x forward, 2.06x against
///   2.61x backward).
/// - Single elements past that: a lane per column up to 32, then more columns per lane.
/// - 16-byte packs: up to [`rows_packs_per_lane`] packs per lane over at least
///   ROWS_MIN_VECTOR_GROUP lanes (fewer only for rows of fewer packs), up to 32 lanes
///   (forward f16 k=128: 2.11x against 2.67x with a pack a lane, H100 v7). The backward
///   took a lane per pack up to 32 until v11: on the H200 (v10, the kernels of v9.3) the
///   forward's shapes beat it at f32 k=64 (1.42x against 1.65x), k=128 (1.30x against
///   1.54x) and k=77 (1.89x against 2.86x), and 16-bit k=128 and 256 by 8-10%; they lose
///   only f32 k=256, by 2% (1.18x against 1.16x).
fn rows_shape(dtype: DType, pack: u32, direction: Direction, k_len: u64) -> (u32, u32) {
    let row_packs = k_len.div_ceil(pack as u64).next_power_of_two() as u32;
    if pack == 1 {
        if k_len <= TINY_ROW_KEYS && dtype.size_in_bytes() == 2 {
            return (1, row_packs);
        }
        let group = row_packs.min(WARP_SIZE);
        return (group, row_packs / group);
    }
    let per_lane = rows_packs_per_lane(dtype, pack, direction);
    let group = (row_packs / per_lane)
        .max(row_packs.min(ROWS_MIN_VECTOR_GROUP))
        .min(WARP_SIZE);
    (group, row_packs / group)
}

/// Packs of 16 bytes a lane of a rows kernel fills before a row spreads over more lanes:
/// ROWS_PACKS_PER_LANE, but 2 in the 16-bit backward, whose split ladder stops there
/// (kernels/ladder.cuh, ROWS_SPLIT_LADDER_2: `y` and `dy` as raw pairs).
fn rows_packs_per_lane(dtype: DType, pack: u32, direction: Direction) -> u32 {
    let most = match direction {
        Direction::Backward if raw_pairs(dtype, pack) => 2,
        _ => ROWS_PACKS_PER_LANE,
    };
    most.min(max_packs(dtype, pack, direction))
}

/// Whether the 16-bit forward's short rows take [`KernelKind::RowsKeys`] (f32 keys, one
/// `exp` an element) over [`KernelKind::Rows`] (raw pairs, two before v22): at up to 2
/// packs a lane, where the rows in flight that raw pairs buy matter less than their second
/// `exp`. H200, v10 variants: k=32, 64 and 128 1.20-1.39x faster with f32 keys (f16 k=64:
/// 2.85x the floor against 3.76x); at 4 packs a lane (k=256) raw pairs won, 2.62x against
/// 2.90x. v22 keeps the raw pairs' weights in shared memory (one `exp` an element): the
/// variants' next run says whether this crossover still stands.
fn rows_keys_pay(dtype: DType, pack: u32, direction: Direction, packs: u32) -> bool {
    direction == Direction::Forward && raw_pairs(dtype, pack) && packs <= 2
}

/// Longest rows (in columns of the kernel's frame) the planner gives a rows kernel: a
/// warp's `32 * pack * max_packs`, but 256 in the f32 backward of 16-byte packs, whose warp
/// of 4 packs a lane took 1.28x the floor at k=512 where a 64-thread block_regs took 1.11x
/// (H200, v10 variants; at k=256 the rows kernel won, 1.16x against 1.88x).
fn rows_columns(dtype: DType, pack: u32, direction: Direction) -> u64 {
    let warp = (WARP_SIZE * pack * max_packs(dtype, pack, direction)) as u64;
    match direction {
        Direction::Backward if dtype.size_in_bytes() == 4 && pack > 1 => warp.min(256),
        _ => warp,
    }
}

/// `(group, packs)` of the rows kernels besides the group and warp ladders, those
/// [`rows_shape`] picks for short rows (kernels/ladder.cuh): single elements a lane per row
/// with 2, 4 or 8 each (`ROWS_LANE_LADDER`); 16-byte packs 8 or 16 lanes per row with
/// several packs each (`ROWS_SPLIT_LADDER_{2,4}`).
fn short_rows(pack: u32, direction: Direction) -> &'static [(u32, u32)] {
    match (pack, direction) {
        (1, _) => &[(1, 2), (1, 4), (1, 8)],
        (_, Direction::Forward) | (4, Direction::Backward) => &[(8, 2), (8, 4), (16, 4)],
        _ => &[(8, 2), (16, 2)],
    }
}

/// Lanes per row of the rows kernels' group ladder (kernels/ladder.cuh, ROWS_GROUP_LADDER).
const ROWS_GROUPS: [u32; 6] = [1, 2, 4, 8, 16, 32];

/// Packs per thread of the block-per-row register kernels: 16 floats per thread (8 of `y`
/// and 8 of `dy` backward); 8 single elements in the forward's scalar fallback, which needs
/// more registers per element.
fn block_regs_packs(pack: u32, direction: Direction) -> u32 {
    match (direction, pack) {
        (Direction::Forward, 1) => 8,
        (Direction::Forward, p) => 16 / p,
        (Direction::Backward, p) => 8 / p,
    }
}

/// Packs per thread of the 16-bit register kernels that keep the row as fetched (raw
/// 16-bit pairs, converted twice): 32 columns per thread (of `y` and of `dy` backward), so
/// rows up to 16384 keys in registers. `None` for f32 and single elements.
fn block_regs_16bit_packs(dtype: DType, pack: u32) -> Option<u32> {
    raw_pairs(dtype, pack).then_some(32 / pack)
}

/// Packs per thread of the 16-bit forward's wide raw-pair block_regs kernel, a variant the
/// planner does not pick (v11.1): 64 columns a thread, so half the threads a row and, at 79
/// registers (ptxas, sm_90, 256-thread blocks at most: BLOCK_REGS_WIDE_THREADS), 12 rows
/// of 4096 keys resident a multiprocessor against the 32-column kernel's 9.
const BLOCK_REGS_16BIT_WIDE_PACKS: u32 = 8;

/// Registers a thread of the 16-bit forward's raw-pair block_regs kernels takes, for their
/// weight cache's grant (Problem::weight_cache_bytes): p8x4 is held to 56
/// (`BLOCK_REGS_16BIT_BOUNDS` in kernels/masked_softmax.cu: 9 blocks of 128 threads a
/// multiprocessor), the wide p8x8 takes 80 (ptxas, sm_80 and sm_90; 85 at most).
fn block_regs_16bit_registers(pack: u32, packs: u32) -> u64 {
    if pack * packs > 32 { 80 } else { 56 }
}

/// Threads of the largest block of the wide raw-pair kernel (`__launch_bounds__(256, 3)`
/// in kernels/masked_softmax.cu: 85 registers a thread at most): rows up to 16384 keys, as
/// the 32-column kernel holds.
const BLOCK_REGS_WIDE_THREADS: u32 = 256;

/// Threads of the largest block of a register kernel (block_regs): 512, so that each
/// thread may use 128 registers (`__launch_bounds__(512)`); at 1024 threads a 64-register
/// budget left the compiler spilling, and the measured crossover to the looping kernels
/// (v2, H200) sat below 1024 threads' worth of keys anyway.
const REGS_BLOCK: u32 = 512;
/// Threads of the largest block of a kernel that loops over its row (cached, stream,
/// cluster): 512. Their launch bounds set their registers (kernels/: the forward
/// block_cached's `CACHED_MIN_BLOCKS`, `STREAM_MIN_BLOCKS`, the cached clusters' 2 blocks;
/// the backward block_cached is left free), which `fit_resident` reads back from the
/// driver.
const LOOP_BLOCK: u32 = 512;

/// Shortest rows, in packs, that kernels of 16-byte packs take where rows start off 16-byte
/// boundaries (odd row strides, buffers offset alike): shorter ones go to single elements.
/// Seen shifted (kernels/io.cuh, PackShift), a row's first and last packs go element by
/// element, so at 8 packs a quarter of its packs do. Not yet measured (v8).
const SHIFTED_MIN_PACKS: u64 = 8;

/// Longest 16-bit rows of single elements (rows misaligned for 16-byte packs) the planner
/// gives one lane each (`rows_g1_p1x{2,4,8}`) instead of a group of lanes with one column
/// each: a lane per row keeps 4 times the rows in flight per warp and spends no shuffles.
/// Measured at k=7 on the H100 (v7): 16-bit 3.40x the floor against 4.65x forward; f32
/// lost (2.59x against 2.41x), so f32 keeps the group ladder (`rows_shape`).
const TINY_ROW_KEYS: u64 = 8;

/// Longest f32 rows the planner gives block_regs, and block_cached forward and backward,
/// where rows are many (fewer than 4 a multiprocessor keep block_regs up to its capacity,
/// fewer than one block_cached wherever it fits: see `Problem::choose`).
const WIDE_REGS_KEYS: u64 = 4096;
const WIDE_CACHED_KEYS: u64 = 8192;
const WIDE_CACHED_BACKWARD_KEYS: u64 = 16384;

impl KernelKind {
    /// Every kernel compiled for `dtype` in `direction`; the cluster kernels if `clusters`,
    /// as they are in the 9.0 PTX alone.
    pub fn all(dtype: DType, clusters: bool, direction: Direction) -> Vec<KernelKind> {
        let mut kinds = Vec::new();
        for pack in [vector_pack(dtype), 1] {
            let groups = ROWS_GROUPS.map(|group| KernelKind::Rows {
                group,
                pack,
                packs: 1,
            });
            let warps = (1..=max_packs(dtype, pack, direction).ilog2()).map(|e| KernelKind::Rows {
                group: 32,
                pack,
                packs: 1 << e,
            });
            let short = short_rows(pack, direction)
                .iter()
                .map(|&(group, packs)| KernelKind::Rows { group, pack, packs });
            kinds.extend(groups.into_iter().chain(short).chain(warps));
            // The 16-bit forward's short rows with f32 keys (ladder.cuh, ROWS_KEYS_LADDER):
            // the group ladder and the split shapes.
            if direction == Direction::Forward && block_regs_16bit_packs(dtype, pack).is_some() {
                let keys = ROWS_GROUPS
                    .map(|group| (group, 1))
                    .into_iter()
                    .chain(short_rows(pack, direction).iter().copied())
                    .map(|(group, packs)| KernelKind::RowsKeys { group, pack, packs });
                kinds.extend(keys);
            }
            kinds.push(KernelKind::BlockRegs {
                pack,
                packs: block_regs_packs(pack, direction),
            });
            if let Some(packs) = block_regs_16bit_packs(dtype, pack) {
                kinds.push(KernelKind::BlockRegs { pack, packs });
                if direction == Direction::Forward {
                    kinds.push(KernelKind::BlockRegs {
                        pack,
                        packs: BLOCK_REGS_16BIT_WIDE_PACKS,
                    });
                }
            }
            kinds.extend([
                KernelKind::BlockCached { pack },
                KernelKind::BlockStream { pack },
                KernelKind::Split { pack },
            ]);
            if clusters {
                kinds.extend([true, false].map(|cached| KernelKind::Cluster { pack, cached }));
            }
        }
        kinds
    }

    /// The kernel's name in the PTX, `masked_softmax_{fwd,bwd}_<kind>_<dtype>`.
    pub fn name(self, dtype: DType, direction: Direction) -> String {
        let (d, t) = (direction.prefix(), dtype.kernel_suffix());
        match self {
            KernelKind::Rows { group, pack, packs } => {
                format!("{d}_rows_g{group}_p{pack}x{packs}_{t}")
            }
            KernelKind::RowsKeys { group, pack, packs } => {
                format!("{d}_rows_keys_g{group}_p{pack}x{packs}_{t}")
            }
            KernelKind::BlockRegs { pack, packs } => format!("{d}_block_regs_p{pack}x{packs}_{t}"),
            KernelKind::BlockCached { pack } => format!("{d}_block_cached_p{pack}_{t}"),
            KernelKind::BlockStream { pack } => format!("{d}_block_stream_p{pack}_{t}"),
            KernelKind::Split { pack } => format!("{d}_split_write_p{pack}_{t}"),
            KernelKind::Cluster { pack, cached } => {
                let mode = if cached { "cached" } else { "stream" };
                format!("{d}_cluster_{mode}_p{pack}_{t}")
            }
        }
    }

    /// The kernel a kind launches before [`name`](Self::name)'s, if any: a
    /// [`KernelKind::Split`]'s statistics pass.
    pub fn first_pass_name(self, dtype: DType, direction: Direction) -> Option<String> {
        let (d, t) = (direction.prefix(), dtype.kernel_suffix());
        match self {
            KernelKind::Split { pack } => Some(format!("{d}_split_stats_p{pack}_{t}")),
            _ => None,
        }
    }

    /// What the kind's kernel compiled again to fetch ahead (`*_prefetch_*`:
    /// [`prefetch_name`](Self::prefetch_name)) fetches, or `None` where there is no such
    /// instance (kernels/masked_softmax*.cu list the same set).
    pub fn fetch_ahead(self, dtype: DType, direction: Direction) -> Option<FetchAhead> {
        let vector = vector_pack(dtype);
        let f32 = dtype == DType::F32;
        let forward = direction == Direction::Forward;
        match self {
            // The block kernels the planner gives the large cases (v12).
            KernelKind::BlockRegs { pack, packs } if pack == vector => (packs
                == block_regs_16bit_packs(dtype, pack)
                    .unwrap_or_else(|| block_regs_packs(pack, direction)))
            .then_some(FetchAhead::NextRow),
            KernelKind::BlockCached { pack } => {
                (f32 && pack == vector).then_some(FetchAhead::NextRow)
            }
            // The rows kernels of 1, 7, 32 and 64 keys (v14). One key: a lane a row.
            KernelKind::Rows {
                group: 1,
                pack: 1,
                packs: 1,
            } => Some(FetchAhead::Lengths),
            // Seven keys (single elements: rows off 16-byte boundaries): f32 on 8 lanes of
            // one, 16-bit on a lane of 8.
            KernelKind::Rows {
                group: 8,
                pack: 1,
                packs: 1,
            } => f32.then_some(FetchAhead::Lengths),
            KernelKind::Rows {
                group: 1,
                pack: 1,
                packs: 8,
            } => (!f32).then_some(FetchAhead::Lengths),
            // 32 and 64 keys, 16-byte packs: f32 on 8 lanes of one or two packs; 16-bit on
            // 4 or 8 lanes of one, as f32 keys forward (RowsKeys), raw pairs backward.
            KernelKind::Rows {
                group: 8,
                pack,
                packs: 1 | 2,
            } if f32 => (pack == vector).then_some(FetchAhead::Lengths),
            KernelKind::Rows {
                group: 4 | 8,
                pack,
                packs: 1,
            } if !f32 => (pack == vector && !forward).then_some(FetchAhead::Lengths),
            KernelKind::RowsKeys {
                group: 4 | 8,
                pack,
                packs: 1,
            } => (pack == vector).then_some(FetchAhead::Lengths),
            // The rows kernels of 77 to 1024 keys, a row a group of lanes at a time (v19):
            // f32 on 8 or 16 lanes of 4 packs, and forward on a warp of 4 or 8; 16-bit
            // forward as f32 keys on 8 lanes of 2 packs and as raw pairs on 8 to 32 lanes of
            // 4, backward on 8 to 32 lanes of 2 and a warp of 4.
            KernelKind::Rows {
                group: 8 | 16,
                pack,
                packs: 4,
            } if f32 => (pack == vector).then_some(FetchAhead::NextBatch),
            KernelKind::Rows {
                group: 32,
                pack,
                packs: 4 | 8,
            } if f32 => (pack == vector && forward).then_some(FetchAhead::NextBatch),
            KernelKind::RowsKeys {
                group: 8,
                pack,
                packs: 2,
            } => (pack == vector).then_some(FetchAhead::NextBatch),
            KernelKind::Rows {
                group: 8 | 16 | 32,
                pack,
                packs: 4,
            } if forward => (pack == vector).then_some(FetchAhead::NextBatch),
            KernelKind::Rows {
                group: 8 | 16 | 32,
                pack,
                packs: 2,
            } if !f32 && !forward => (pack == vector).then_some(FetchAhead::NextBatch),
            KernelKind::Rows {
                group: 32,
                pack,
                packs: 4,
            } => (!f32 && pack == vector).then_some(FetchAhead::NextBatch),
            _ => None,
        }
    }

    /// The kind's kernel compiled again to fetch ahead (`*_prefetch_*`), which
    /// [`CudaSoftmax::set_next_row_prefetch`](crate::cuda::CudaSoftmax::set_next_row_prefetch)
    /// launches in its place. The same launch as the kind's; the planner never asks for it
    /// (a variant, until measured). What it fetches: [`fetch_ahead`](Self::fetch_ahead).
    pub fn prefetch_name(self, dtype: DType, direction: Direction) -> Option<String> {
        self.fetch_ahead(dtype, direction)?;
        // The kind's name with `prefetch_` before the type: `..._p4x4_prefetch_f32`.
        let name = self.name(dtype, direction);
        let stem = name.strip_suffix(dtype.kernel_suffix())?;
        Some(format!("{stem}prefetch_{}", dtype.kernel_suffix()))
    }

    /// Whether the kind's [`prefetch_name`](Self::prefetch_name) instance asks the L2 for
    /// rows ahead ([`FetchAhead::NextRow`], [`FetchAhead::NextBatch`]), rather than
    /// fetching the next batch's lengths into registers ([`FetchAhead::Lengths`]).
    pub fn asks_l2_ahead(self, dtype: DType, direction: Direction) -> bool {
        matches!(
            self.fetch_ahead(dtype, direction),
            Some(FetchAhead::NextRow | FetchAhead::NextBatch)
        )
    }

    /// Whether the kind's kernel in `dtype` keeps each row's weights in a weight cache of
    /// dynamic shared memory where its launch grants one (kernels/masked_softmax.cu,
    /// WeightCache): the 16-bit forward's raw-pair kernels, [`KernelKind::Rows`] of 16-byte
    /// packs and [`KernelKind::BlockRegs`] of 32 or 64 columns a thread (p8x2 keeps f32
    /// keys, which need no cache).
    pub fn keeps_weights(self, dtype: DType, direction: Direction) -> bool {
        direction == Direction::Forward
            && raw_pairs(dtype, self.pack())
            && match self {
                KernelKind::Rows { .. } => true,
                KernelKind::BlockRegs { pack, packs } => pack * packs >= 32,
                _ => false,
            }
    }

    /// Threads of the largest block the kind's kernel is launched with (its
    /// `__launch_bounds__`): the rows kernels' 256, the wide 16-bit raw-pair block_regs'
    /// 256 (BLOCK_REGS_WIDE_THREADS), every other block kernel's 512.
    pub fn max_block_threads(self) -> u32 {
        match self {
            KernelKind::Rows { .. } | KernelKind::RowsKeys { .. } => ROWS_BLOCK,
            KernelKind::BlockRegs { pack, packs } if pack * packs > 32 => BLOCK_REGS_WIDE_THREADS,
            KernelKind::BlockRegs { .. } => REGS_BLOCK,
            KernelKind::BlockCached { .. }
            | KernelKind::BlockStream { .. }
            | KernelKind::Split { .. }
            | KernelKind::Cluster { .. } => LOOP_BLOCK,
        }
    }

    /// Elements per pack.
    pub fn pack(self) -> u32 {
        match self {
            KernelKind::Rows { pack, .. }
            | KernelKind::RowsKeys { pack, .. }
            | KernelKind::BlockRegs { pack, .. }
            | KernelKind::BlockCached { pack }
            | KernelKind::BlockStream { pack }
            | KernelKind::Split { pack }
            | KernelKind::Cluster { pack, .. } => pack,
        }
    }
}

/// Device addresses of the buffers of one call (0 where absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Buffers {
    /// First input: the scores (forward) or the probabilities `y` (backward).
    pub x: u64,
    /// Output: `y` (forward, may equal `x`) or `dx` (backward, may equal `dy`).
    pub y: u64,
    /// Second input of the backward: the incoming gradient `dy`; 0 for the forward.
    pub dy: u64,
    /// Key lengths, or 0.
    pub kv_lens: u64,
    /// Query lengths, or 0.
    pub q_lens: u64,
}

/// Kernel parameters; must match `MaskParams` in `kernels/mask.cuh` field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelParams {
    /// Device address of the key lengths (`batch` i32), or 0 for "all valid".
    pub kv_lens: u64,
    /// Device address of the query lengths, or 0 for "all valid".
    pub q_lens: u64,
    /// `batch * heads * q_len`.
    pub rows: i64,
    /// Heads.
    pub heads: i64,
    /// Query rows per head.
    pub q_len: i64,
    /// Keys per row.
    pub k_len: i64,
    /// Elements between row starts.
    pub row_stride: i64,
    /// Sliding window in keys; 0 = unlimited.
    pub window: i64,
    /// Scale applied to the scores.
    pub scale: f32,
    /// [`MASK_LEFT_PADDING`] | [`MASK_CAUSAL`] | [`MASK_SHIFTED_PACKS`] |
    /// [`MASK_PLAIN_STREAM`] | [`MASK_KEYS_ONLY`] | [`MASK_NARROW_ROWS`].
    pub flags: i32,
    /// Divides a row index by `heads * q_len` (launches of fewer than 2^31 rows).
    pub per_batch: FastDivisor,
    /// Divides a row index by `q_len` (launches of fewer than 2^31 rows).
    pub per_query: FastDivisor,
}

const _: () = assert!(std::mem::size_of::<KernelParams>() == 88);

/// `n / d` for every `n` and `d` below 2^31 as `(umulhi(n, magic) + n) >> shift`
/// (Granlund and Montgomery, in the form PyTorch's IntDivider uses): the kernels split row
/// indices with it (`FastDivisor` in kernels/mask.cuh), worked out here once per launch.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastDivisor {
    /// The multiplier.
    pub magic: u32,
    /// The final shift.
    pub shift: u32,
}

impl FastDivisor {
    /// The divisor `d` (at least 1, below 2^31); 1 for 0 or anything larger, which no
    /// launch of fewer than 2^31 rows divides by.
    pub fn of(d: u64) -> FastDivisor {
        let d = if (1..1 << 31).contains(&d) { d } else { 1 };
        let shift = if d <= 1 {
            0
        } else {
            64 - (d - 1).leading_zeros()
        }; // ceil(log2 d)
        let magic = ((1u64 << 32) * ((1u64 << shift) - d)) / d + 1;
        FastDivisor {
            magic: magic as u32,
            shift,
        }
    }

    /// `n / d`, as the kernels work it out.
    pub fn divide(self, n: u32) -> u32 {
        let high = ((n as u64 * self.magic as u64) >> 32) as u32;
        ((high as u64 + n as u64) >> self.shift) as u32
    }
}

/// [`KernelParams::flags`] bit: left padding.
pub const MASK_LEFT_PADDING: i32 = 1;
/// [`KernelParams::flags`] bit: causal masking.
pub const MASK_CAUSAL: i32 = 2;
/// [`KernelParams::flags`] bit, set by the planner: kernels of 16-byte packs see rows from
/// the 16-byte boundary before them (kernels/io.cuh, PackShift).
pub const MASK_SHIFTED_PACKS: i32 = 4;
/// [`KernelParams::flags`] bit, set by [`CudaSoftmax::set_l2_hints`](crate::cuda::CudaSoftmax::set_l2_hints)`(false)`,
/// never by the planner: the kernels that read a row's valid scores twice (block_stream,
/// cluster_stream, split) change no line's L2 eviction priority instead of keeping the
/// first read's lines for the second (kernels/work.cuh, RereadPolicy).
pub const MASK_PLAIN_STREAM: i32 = 8;
/// [`KernelParams::flags`]: key padding alone (no causal mask, no query lengths), the
/// rows kernels' short path to a row's window.
pub const MASK_KEYS_ONLY: i32 = 16;
/// [`KernelParams::flags`] bit, set by [`KernelParams::new`] when the launch has fewer than
/// 2^31 rows, a row stride below 2^31 and `k_len + q_len` below 2^31 - 1: the rows kernels
/// then work out each row's lengths, window and offset in 32-bit arithmetic
/// (kernels/work.cuh, NarrowRows); without it, in 64 bits. A kernel trusts it: set on a
/// launch outside those sizes, rows would be misplaced.
pub const MASK_NARROW_ROWS: i32 = 32;

impl KernelParams {
    /// From a spec (validated: every size then fits in i64, since it fits in isize bytes)
    /// and the device addresses of its lengths (0 where absent).
    pub fn new(spec: &Spec, kv_lens: u64, q_lens: u64) -> Result<Self> {
        let shape = &spec.shape;
        let mut flags = 0;
        if spec.padding == Padding::Left {
            flags |= MASK_LEFT_PADDING;
        }
        let mut window = 0;
        if let Some(Causal { window: w }) = spec.causal {
            flags |= MASK_CAUSAL;
            // A window of k_len keys or more cuts nothing: pass it as unlimited (0).
            window = w.filter(|&w| w < shape.k_len).unwrap_or(0) as i64;
        } else if q_lens == 0 {
            flags |= MASK_KEYS_ONLY;
        }
        let rows = shape.rows()?;
        const NARROW: usize = 1 << 31;
        let keys_and_queries = shape.k_len.saturating_add(shape.q_len);
        if rows < NARROW && shape.row_stride < NARROW && keys_and_queries < NARROW - 1 {
            flags |= MASK_NARROW_ROWS;
        }
        Ok(KernelParams {
            kv_lens,
            q_lens,
            rows: rows as i64,
            heads: shape.heads as i64,
            q_len: shape.q_len as i64,
            k_len: shape.k_len as i64,
            row_stride: shape.row_stride as i64,
            window,
            scale: spec.scale,
            flags,
            per_batch: FastDivisor::of(shape.heads.checked_mul(shape.q_len).unwrap_or(0) as u64),
            per_query: FastDivisor::of(shape.q_len as u64),
        })
    }
}

/// A launch: kernel, grid, block, shared memory and parameters. The kernel's arguments
/// are `(x, y, params)` forward and `(y, dy, dx, params)` backward; a
/// [`KernelKind::Split`] launch is two kernels with a partials buffer of
/// [`LaunchPlan::partials`] entries between them (`src/cuda.rs`, `launch_split`).
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    /// Which kernel.
    pub kernel: KernelKind,
    /// Forward or backward.
    pub direction: Direction,
    /// Storage type (selects the kernel's instantiation).
    pub dtype: DType,
    /// Blocks in the (1-D) grid, at least 1.
    pub grid: u32,
    /// Threads per block, a multiple of 32.
    pub block: u32,
    /// Blocks per thread-block cluster (1: launched without clusters); divides `grid`.
    pub cluster: u32,
    /// Dynamic shared memory per block, bytes.
    pub shared_bytes: u32,
    /// The parameter block passed by value.
    pub params: KernelParams,
    /// [`KernelKind::Split`]: the `float2` entries of the scratch buffer both its launches
    /// take (after the inputs and output, before `params`), one per chunk of every row; 0
    /// for every other kind.
    pub partials: u64,
}

impl LaunchPlan {
    /// The kernel's name in the PTX.
    pub fn kernel_name(&self) -> String {
        self.kernel.name(self.dtype, self.direction)
    }

    /// The part of [`LaunchPlan::shared_bytes`] that is a weight cache, which the kernel
    /// runs without, computing each weight twice (the forward's 16-bit raw-pair rows and
    /// block_regs kernels): what is there beyond a block kernel's reduction scratch, all of
    /// a rows kernel's; 0 for every other kernel.
    pub fn weight_cache_bytes(&self) -> u32 {
        match self.kernel {
            _ if !self.kernel.keeps_weights(self.dtype, self.direction) => 0,
            KernelKind::BlockRegs { .. } => {
                self.shared_bytes.saturating_sub(BLOCK_SCRATCH_BYTES as u32)
            }
            _ => self.shared_bytes,
        }
    }

    /// Launches the kernel without its weight cache (if it has one): it then computes each
    /// weight twice, with the same results.
    pub fn drop_weight_cache(&mut self) {
        self.shared_bytes -= self.weight_cache_bytes();
    }

    /// Cuts the grid of a kernel that loops over its rows (every kind but split, whose two
    /// launches count their own) to the blocks the device runs at once: `occupancy` is the
    /// compiled kernel's (its registers, which the planner cannot know), this plan's shared
    /// memory and the system's reservation are counted here, and a cluster launch keeps the
    /// clusters [`ClusterResidency`] says fit at that many blocks a multiprocessor. The
    /// planner counts threads alone (and for clusters the most registers a cluster kernel
    /// takes), so a kernel held to fewer blocks by its registers got a grid of more blocks
    /// than fit, and the blocks beyond started only as others ended, with all their rows
    /// still to do: a second wave, which runs the GPU part-empty where it is not a whole one
    /// (H100 sm_90 ptxas: f32 forward block_regs at 2048 keys, 2112 blocks of 128 threads
    /// where 9 a multiprocessor, 1188, fit). Kernels stride over rows by the grid, so fewer
    /// blocks compute the same. A weight cache ([`LaunchPlan::weight_cache_bytes`]) that
    /// would cost a block is dropped first. Unknown occupancy changes nothing.
    ///
    /// ```
    /// use masked_softmax::plan::{
    ///     plan_forward, Buffers, ClusterResidency, DeviceLimits, KernelOccupancy,
    /// };
    /// use masked_softmax::{DType, Shape, Spec};
    ///
    /// let limits = DeviceLimits {
    ///     sm_count: 132,
    ///     max_threads_per_sm: 2048,
    ///     max_shared_per_block: 227 << 10,
    ///     shared_per_sm: 228 << 10,
    ///     clusters: false,
    ///     reserved_shared_per_block: 1024,
    ///     cluster_residency: ClusterResidency::UNKNOWN,
    /// };
    /// let spec = Spec::new(Shape::matrix(32_768, 2048));
    /// let mut plan = plan_forward(&spec, DType::F32, limits, Buffers::default())?;
    /// assert_eq!((plan.grid, plan.block), (132 * 16, 128));
    /// // 54 registers a thread: 9 blocks of 128 threads a multiprocessor.
    /// let mut occupancy = KernelOccupancy::UNKNOWN;
    /// occupancy.record(128, 9);
    /// plan.fit_resident(&limits, &occupancy);
    /// assert_eq!(plan.grid, 132 * 9);
    /// # Ok::<(), masked_softmax::Error>(())
    /// ```
    pub fn fit_resident(&mut self, limits: &DeviceLimits, occupancy: &KernelOccupancy) {
        if matches!(self.kernel, KernelKind::Split { .. }) {
            return;
        }
        let Some(by_threads_and_registers) = occupancy.get(self.block) else {
            return;
        };
        // A weight cache only where it costs no block: the planner guessed the registers'
        // blocks (ROWS_BLOCKS_BY_REGISTERS, block_regs_16bit_registers), the driver knows
        // them. Without it the kernel computes each weight twice
        // (Problem::weight_cache_bytes).
        if self.weight_cache_bytes() > 0
            && limits.blocks_by_shared(self.shared_bytes as u64) < by_threads_and_registers as u64
        {
            self.drop_weight_cache();
        }
        let blocks_per_sm = limits
            .blocks_by_shared(self.shared_bytes as u64)
            .min(by_threads_and_registers as u64)
            .max(1);
        let resident = match self.cluster as u64 {
            0 | 1 => limits.sm_count.max(1) as u64 * blocks_per_sm,
            cluster => limits.resident_clusters(cluster, blocks_per_sm).max(1) * cluster,
        };
        if (self.grid as u64) > resident {
            self.grid = resident.min(u32::MAX as u64) as u32;
        }
    }
}

/// How many blocks of one compiled kernel a multiprocessor runs at once by the kernel's
/// threads and registers alone (no dynamic shared memory), at every block size in whole
/// warps from 32 to 1024 threads (the block kernels' sizes: see `whole_warps`): what the
/// driver's occupancy calculator answers for the loaded kernel
/// ([`CudaSoftmax::new`](crate::cuda::CudaSoftmax::new) asks it), for
/// [`LaunchPlan::fit_resident`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelOccupancy {
    /// Blocks a multiprocessor by block size (32, 64, 96, ... 1024 threads); 0 where unknown.
    blocks: [u32; OCCUPANCY_BLOCK_SIZES],
}

/// Block sizes a [`KernelOccupancy`] holds: 1 to 32 warps.
const OCCUPANCY_BLOCK_SIZES: usize = 32;

impl KernelOccupancy {
    /// Nothing known.
    pub const UNKNOWN: KernelOccupancy = KernelOccupancy {
        blocks: [0; OCCUPANCY_BLOCK_SIZES],
    };
    /// The block sizes recorded: 32, 64, 96, ... 1024 threads.
    pub const BLOCK_SIZES: [u32; OCCUPANCY_BLOCK_SIZES] = {
        let mut sizes = [0; OCCUPANCY_BLOCK_SIZES];
        let mut i = 0;
        while i < OCCUPANCY_BLOCK_SIZES {
            sizes[i] = (i as u32 + 1) * WARP_SIZE;
            i += 1;
        }
        sizes
    };

    fn index(block: u32) -> Option<usize> {
        let i = (block / WARP_SIZE).checked_sub(1)? as usize;
        (block % WARP_SIZE == 0 && i < OCCUPANCY_BLOCK_SIZES).then_some(i)
    }

    /// Records `blocks_per_sm` blocks of `block` threads a multiprocessor; other block
    /// sizes, and 0, are ignored.
    pub fn record(&mut self, block: u32, blocks_per_sm: u32) {
        if let Some(i) = Self::index(block)
            && blocks_per_sm > 0
        {
            self.blocks[i] = blocks_per_sm;
        }
    }

    /// Blocks of `block` threads a multiprocessor, if known.
    pub fn get(&self, block: u32) -> Option<u32> {
        Some(self.blocks[Self::index(block)?]).filter(|&n| n > 0)
    }
}

/// Registers per thread the split kernels may take (ptxas, v9.1: 27 to 64), for their
/// residency.
const SPLIT_REGISTERS: u64 = 64;

/// Packs per chunk of a [`KernelKind::Split`] launch (`SPLIT_CHUNK_PACKS` in
/// kernels/work.cuh): 4 packs a thread of a 512-thread block, 32 KiB of 16-byte packs.
pub const SPLIT_CHUNK_PACKS: u64 = 2048;

/// Threads per block of the [`KernelKind::Rows`] kernels (`ROWS_THREADS` in
/// kernels/work.cuh).
const ROWS_BLOCK: u32 = 256;
/// Blocks of a [`KernelKind::Rows`] kernel that its registers let a multiprocessor hold
/// (`__launch_bounds__(256, 4)`: 64 registers a thread at most, about 56 taken), until
/// [`LaunchPlan::fit_resident`] knows the driver's count.
const ROWS_BLOCKS_BY_REGISTERS: u64 = 4;
/// Dynamic shared memory a kernel may take without the opt-in attribute (src/cuda.rs sets
/// it for the block_regs, block_cached and cluster kernels alone).
const DEFAULT_DYNAMIC_SHARED_BYTES: u64 = 48 * 1024;
/// Per-warp reduction scratch in a block kernel's shared memory (32 float2): at its start in
/// block_regs (whose weight cache follows it) and block_stream, at its end in block_cached.
const BLOCK_SCRATCH_BYTES: u64 = 32 * 8;
/// A cluster kernel's shared memory before its cache (kernels/cluster.cuh, ClusterShared):
/// published statistics (8 bytes, padded to 16 so the cache is 16-byte aligned) + scratch.
const CLUSTER_HEADER_BYTES: u64 = 16 + BLOCK_SCRATCH_BYTES;
/// The largest portable cluster.
const MAX_CLUSTER: u64 = 8;
/// 32-bit registers per multiprocessor (every GPU of compute capability 8.0 and newer).
const REGISTERS_PER_SM: u64 = 64 * 1024;
/// Registers per thread the cluster kernels take at most (ptxas, sm_90: 40-64; their
/// launch bounds ask for at least 2 blocks of 512 threads a multiprocessor, so 64 at most).
const CLUSTER_KERNEL_REGISTERS: u64 = 64;

/// The threads of whole warps that `threads` need: a block kernel's size. Blocks in whole
/// warps rather than powers of two (v16): a row one pack past a power of two took a
/// block twice the size, half of it idle and holding its registers and threads, so half
/// as many rows resident a multiprocessor (H200, v10: 16-bit forward block_regs at 4097
/// keys, 256 threads a row where 4096 keys take 128, 2.92x the floor against 1.55x).
fn whole_warps(threads: u64) -> u64 {
    threads.next_multiple_of(WARP_SIZE as u64)
}

fn prev_power_of_two(n: u64) -> u64 {
    if n == 0 { 0 } else { 1 << n.ilog2() }
}

/// Plans the forward launch of a validated `spec` on the buffers at `buffers`.
pub fn plan_forward(
    spec: &Spec,
    dtype: DType,
    limits: DeviceLimits,
    buffers: Buffers,
) -> Result<LaunchPlan> {
    plan(spec, dtype, limits, buffers, Direction::Forward)
}

/// Plans the backward launch of a validated `spec` on the buffers at `buffers`.
pub fn plan_backward(
    spec: &Spec,
    dtype: DType,
    limits: DeviceLimits,
    buffers: Buffers,
) -> Result<LaunchPlan> {
    plan(spec, dtype, limits, buffers, Direction::Backward)
}

/// Plans a launch of `kind` (any compiled kernel, not the planner's choice) for a validated
/// `spec`, or `None` if that kernel cannot run it: a row longer than its registers hold,
/// keys that do not fit in shared memory, vector packs on misaligned buffers, clusters
/// where there are none. For benchmarks and tests that compare kernels
/// on one problem.
pub fn plan_kernel(
    kind: KernelKind,
    direction: Direction,
    spec: &Spec,
    dtype: DType,
    limits: DeviceLimits,
    buffers: Buffers,
) -> Result<Option<LaunchPlan>> {
    let problem = Problem::new(spec, dtype, limits, buffers, direction)?;
    // A kind built by hand that no kernel was compiled for (a pack of 0, a group of 3)
    // runs nothing.
    if !compiled_kinds(dtype, direction).contains(&kind) {
        return Ok(None);
    }
    if kind.pack() != 1 && !problem.vectors {
        return Ok(None);
    }
    Ok(problem.configure(kind))
}

/// [`KernelKind::all`] with the cluster kernels, listed once per type and direction: the
/// launchers ask it on every named launch, which must not allocate.
fn compiled_kinds(dtype: DType, direction: Direction) -> &'static [KernelKind] {
    static KINDS: std::sync::OnceLock<Vec<Vec<KernelKind>>> = std::sync::OnceLock::new();
    let directions = [Direction::Forward, Direction::Backward];
    let kinds = KINDS.get_or_init(|| {
        DType::ALL
            .iter()
            .flat_map(|&t| directions.map(|d| KernelKind::all(t, true, d)))
            .collect()
    });
    let t = DType::ALL.iter().position(|&t| t == dtype).unwrap_or(0);
    let d = directions.iter().position(|&d| d == direction).unwrap_or(0);
    &kinds[t * directions.len() + d]
}

/// The launch of `kind`, or of the planner's choice when `kind` is `None`: what every
/// launcher (the CUDA one, the emulator tests) asks. `None` if a named kind cannot run the
/// problem.
pub fn plan_launch(
    kind: Option<KernelKind>,
    direction: Direction,
    spec: &Spec,
    dtype: DType,
    limits: DeviceLimits,
    buffers: Buffers,
) -> Result<Option<LaunchPlan>> {
    match kind {
        None => plan(spec, dtype, limits, buffers, direction).map(Some),
        Some(kind) => plan_kernel(kind, direction, spec, dtype, limits, buffers),
    }
}

fn plan(
    spec: &Spec,
    dtype: DType,
    limits: DeviceLimits,
    buffers: Buffers,
    direction: Direction,
) -> Result<LaunchPlan> {
    let problem = Problem::new(spec, dtype, limits, buffers, direction)?;
    let kind = problem.choose();
    Ok(problem
        .configure(kind)
        .expect("the planner picks a kernel that can run the problem"))
}

/// One problem as the planner sees it.
struct Problem {
    params: KernelParams,
    direction: Direction,
    dtype: DType,
    limits: DeviceLimits,
    rows: u64,
    k_len: u64,
    /// Elements per pack of the planner's kernel.
    pack: u32,
    /// Whether kernels of 16-byte packs can run the problem: every buffer sits alike
    /// against 16-byte boundaries.
    vectors: bool,
    /// Whether rows start off 16-byte boundaries, so kernels of 16-byte packs see them
    /// shifted (kernels/io.cuh, PackShift): up to a pack minus one more columns a row.
    shifted: bool,
}

impl Problem {
    fn new(
        spec: &Spec,
        dtype: DType,
        limits: DeviceLimits,
        buffers: Buffers,
        direction: Direction,
    ) -> Result<Self> {
        // The entry points have validated it already; a direct caller of the planner gets
        // the same errors (a zero window, a NaN scale, a size past the address space).
        spec.validate(dtype.size_in_bytes())?;
        let params = KernelParams::new(spec, buffers.kv_lens, buffers.q_lens)?;
        let elem = dtype.size_in_bytes() as u64;
        // 16-byte packs where every buffer's element j of a row lies at the same place
        // against a 16-byte boundary; shifted where that place is not the boundary.
        let first = buffers.x % 16;
        let inputs = match direction {
            Direction::Forward => &[buffers.y][..],
            Direction::Backward => &[buffers.y, buffers.dy][..],
        };
        let vectors = first % elem == 0 && inputs.iter().all(|a| a % 16 == first);
        let shifted = first != 0 || (spec.shape.row_stride as u64 * elem) % 16 != 0;
        let k_len = spec.shape.k_len as u64;
        let pack = vector_pack(dtype);
        let vector = vectors && (!shifted || k_len >= SHIFTED_MIN_PACKS * pack as u64);
        Ok(Problem {
            params,
            direction,
            dtype,
            limits,
            rows: spec.shape.rows()? as u64,
            k_len,
            pack: if vector { pack } else { 1 },
            vectors,
            shifted,
        })
    }

    fn sms(&self) -> u64 {
        self.limits.sm_count.max(1) as u64
    }

    fn threads_per_sm(&self) -> u64 {
        self.limits.max_threads_per_sm.max(WARP_SIZE) as u64
    }

    /// Columns a row spans for kernels of `pack` elements a pack: `k_len`, and up to a pack
    /// minus one more where rows are seen shifted (kernels/io.cuh, PackShift).
    fn columns(&self, pack: u32) -> u64 {
        if pack > 1 && self.shifted {
            self.k_len + pack as u64 - 1
        } else {
            self.k_len
        }
    }

    fn row_packs(&self, pack: u32) -> u64 {
        self.columns(pack).div_ceil(pack as u64)
    }

    fn clusters(&self) -> bool {
        self.limits.clusters
    }

    /// The planner's kernel: the ladder of the module docs.
    fn choose(&self) -> KernelKind {
        let (pack, direction) = (self.pack, self.direction);
        let columns = self.columns(pack);
        if columns <= rows_columns(self.dtype, pack, direction) {
            let (group, packs) = rows_shape(self.dtype, pack, direction, columns);
            if rows_keys_pay(self.dtype, pack, direction, packs) {
                return KernelKind::RowsKeys { group, pack, packs };
            }
            return KernelKind::Rows { group, pack, packs };
        }
        // Many 16-bit rows: the block_regs kernels keeping raw pairs (32 columns a thread: a
        // quarter (backward) or half (forward) the threads per row of the f32-value ones,
        // so more rows per multiprocessor and fewer instructions per row). H100, v7
        // variants: forward k=4096 1.27x the floor against 1.53x with p8x2, backward 1.19x
        // against 1.84x with p8x1 and 1.32x with block_stream (16384 keys: 1.39x against
        // 1.40x). With fewer rows than 4 per multiprocessor (decode) the f32-value kernels,
        // measured there, spread a row over more threads; the raw-pair ones take the rows
        // those cannot hold.
        let f32_values = KernelKind::BlockRegs {
            pack,
            packs: block_regs_packs(pack, direction),
        };
        let regs = match block_regs_16bit_packs(self.dtype, pack) {
            Some(packs) if self.rows >= 4 * self.sms() || self.configure(f32_values).is_none() => {
                KernelKind::BlockRegs { pack, packs }
            }
            _ => f32_values,
        };
        // Fewer rows than 4 per multiprocessor: a block a row in registers wherever
        // block_regs holds it. H200, v10 variants: decode b1 x 32 heads at 4097 keys took
        // 0.97-1.08x the floor on block_regs where the cached cluster took 1.31-1.39x (all
        // types, both directions where block_regs holds the row); 8 x 32 rows of 4097 f32
        // forward 1.12x against block_cached's 1.23x (16384 rows: block_cached 1.59x,
        // block_regs 2.07x, so many f32 rows keep WIDE_REGS_KEYS).
        let regs_hold_row = self.configure(regs).is_some();
        if self.rows < 4 * self.sms() && regs_hold_row {
            return regs;
        }
        // Too few rows to give each multiprocessor a block: block_cached where its shared
        // memory holds the row, else a cluster per row. H200, v10 variants, decode b1 x 32
        // heads: at 4097 f32 backward keys block_cached 1.14x against the cached cluster's
        // 1.31x; at 32768 forward keys 1.37-1.41x against 1.61-1.74x (a cluster's launch
        // and its two syncs across blocks cost more than 4 in 5 idle multiprocessors).
        let cached = KernelKind::BlockCached { pack };
        let cached_holds_row = self.configure(cached).is_some();
        if self.rows < self.sms() {
            if cached_holds_row {
                return cached;
            }
            if self.clusters() {
                return KernelKind::Cluster {
                    pack,
                    cached: self.cluster_config(pack).1,
                };
            }
        }
        // Past the rows kernels, by the crossovers measured with `--variants` (H200, v4
        // kernels, and H100, v7: PERFORMANCE.md): f32 rows go to block_regs up to 4096
        // keys, block_cached up to 8192 forward (1.37x the floor at 8192 on the H200, where
        // block_regs took 2.2x and block_stream 1.47x) and 16384 backward (H100: 1.29x
        // against block_stream's 1.37x at 16384, where the forward's block_cached lost,
        // 1.31x against 1.28x), then block_stream (H100: 1.28x at 16384, 1.52x at 65536,
        // 1.66x at 2^18; the clusters 1.24-2.9x). 16-bit rows go to block_regs up to its
        // capacity (16384 keys), then forward to a streaming cluster (H100: 1.71x at 65536
        // against block_stream's 2.47x; even at 2^18) and backward to block_stream (1.62x
        // at 65536 against the streaming cluster's 2.00x).
        let wide = self.dtype.size_in_bytes() == 4;
        if (!wide || self.k_len <= WIDE_REGS_KEYS) && regs_hold_row {
            return regs;
        }
        let cached_keys = match direction {
            Direction::Forward => WIDE_CACHED_KEYS,
            Direction::Backward => WIDE_CACHED_BACKWARD_KEYS,
        };
        if wide && self.k_len <= cached_keys && cached_holds_row {
            return cached;
        }
        if self.clusters() && !wide && direction == Direction::Forward {
            return KernelKind::Cluster {
                pack,
                cached: false,
            };
        }
        KernelKind::BlockStream { pack }
    }

    /// Blocks per cluster and whether their chunks are cached in shared memory: the fewest
    /// blocks (2 to 8) whose chunks fit, but no fewer than it takes to give every
    /// multiprocessor a block, cached if every row's cluster is then resident and a chunk
    /// takes at most half a multiprocessor's shared memory, else streaming at that size; 8
    /// streaming if no cluster holds the row.
    fn cluster_config(&self, pack: u32) -> (u64, bool) {
        match self.cached_cluster(pack) {
            // Cached only if every row's cluster is resident at once: a cached block holds a
            // multiprocessor's shared memory, so clusters beyond that would run in waves.
            // And only if two cached blocks fit a multiprocessor: decode b1 x 32 heads at
            // k=131072 (clusters of 4, 128 KiB chunks, one block a multiprocessor) took
            // 2.65x the floor cached against 2.16x streaming (f32 forward; f16 3.12x
            // against 2.57x, H100 v7 variants), where at k=32768 (32 KiB chunks) the cached
            // cluster won (f32 2.12x against 2.39x, f16 2.44x against 2.85x).
            Some(cluster) => {
                let shared = self.cluster_cache_bytes(pack, cluster);
                let resident = self.cluster_shape(pack, cluster, shared).1;
                let two_per_sm = self.limits.blocks_by_shared(shared) >= 2;
                (cluster, self.rows <= resident && two_per_sm)
            }
            None => (MAX_CLUSTER, false),
        }
    }

    /// Threads per block of a cluster launch with `shared` bytes per block, and how many of
    /// its clusters are resident at once: blocks per multiprocessor by threads, shared
    /// memory and registers (the cluster kernels take up to CLUSTER_KERNEL_REGISTERS),
    /// then clusters by the device's [`ClusterResidency`], which counts those that GPCs of
    /// uneven size leave out. H100, v7: the streaming cluster took 1.7x the floor at 65536
    /// keys in 16-bit (clusters of 2, which always fit) and 2.6x at 2^18 (a grid of 33
    /// clusters of 8, two blocks a multiprocessor, where 32 at most fit in GPCs of 16 to
    /// 18 multiprocessors: one cluster did its 15 rows after the others had done theirs).
    ///
    /// About 8 packs a thread, or 2 where the launch has no more blocks than
    /// multiprocessors: a multiprocessor's only block must bring its loads in flight
    /// alone. Decode b1 x 32 heads at k=32768 (clusters of 4 on 128 multiprocessors, f16
    /// chunks of 1024 packs: 128 threads, 4 warps and 8 KiB of loads in flight a
    /// multiprocessor) took 2.4x the floor, where a block of 512 threads per row on 32
    /// multiprocessors (block_cached) took 2.1x (H100, v7 variants). Not yet measured (v8).
    fn cluster_shape(&self, pack: u32, cluster: u64, shared: u64) -> (u32, u64) {
        let chunk_packs = self.row_packs(pack).div_ceil(cluster);
        let alone = self.rows * cluster <= self.sms();
        let packs_per_thread = if alone { 2 } else { 8 };
        let block = chunk_packs
            .div_ceil(packs_per_thread)
            .next_power_of_two()
            .clamp(128, LOOP_BLOCK as u64) as u32;
        let by_registers = REGISTERS_PER_SM / (CLUSTER_KERNEL_REGISTERS * block as u64);
        let blocks_per_sm = (self.threads_per_sm() / block as u64)
            .min(self.limits.blocks_by_shared(shared))
            .min(by_registers)
            .max(1);
        let resident = self.limits.resident_clusters(cluster, blocks_per_sm);
        (block, resident.max(1))
    }

    /// The cluster size of a cached cluster launch, if one holds the row.
    fn cached_cluster(&self, pack: u32) -> Option<u64> {
        let to_fill = prev_power_of_two(self.sms() / self.rows.max(1)).clamp(2, MAX_CLUSTER);
        [2, 4, 8]
            .into_iter()
            .find(|&c| c >= to_fill && self.cluster_cache_bytes(pack, c) <= self.shared_limit())
    }

    /// The cluster size a cached cluster launch takes: [`Self::cached_cluster`]'s, but with a
    /// row for every multiprocessor (where the planner streams, and the benchmark's
    /// variants time this kernel) the fewest blocks from there whose chunks fit two a
    /// multiprocessor, so that one block's loads overlap another's stores. H100, v7: f32
    /// rows of 65536 keys on clusters of 2 (128 KiB chunks, one a multiprocessor) took
    /// 1.49x the floor, block_stream 1.52x, though the cached cluster reads each key once.
    /// Not yet measured (v10.1).
    fn cached_launch_cluster(&self, pack: u32) -> Option<u64> {
        let fits = self.cached_cluster(pack)?;
        if self.rows < self.sms() {
            return Some(fits);
        }
        let two_per_sm = |c: u64| {
            self.limits
                .blocks_by_shared(self.cluster_cache_bytes(pack, c))
                >= 2
        };
        Some(
            [2, 4, 8]
                .into_iter()
                .find(|&c| c >= fits && two_per_sm(c))
                .unwrap_or(fits),
        )
    }

    fn cluster_cache_bytes(&self, pack: u32, cluster: u64) -> u64 {
        let per_column = self.direction.cached_bytes_per_column();
        CLUSTER_HEADER_BYTES + self.row_packs(pack).div_ceil(cluster) * pack as u64 * per_column
    }

    /// Dynamic shared memory for the weight cache of a launch of `kind` in blocks of `block`
    /// threads: the kernels that keep their weights ([`KernelKind::keeps_weights`]: the
    /// forward's 16-bit raw-pair rows and block_regs) keep each thread's weights of a row
    /// there between the sum and the store (kernels/masked_softmax.cu, WeightCache: `pack *
    /// packs` floats a thread, 32 KiB a rows block of p8x4, 128 bytes a thread of block_regs
    /// p8x4, after its reduction scratch), where a multiprocessor holds as many such blocks
    /// as the kernel's registers let it run (the rows kernels' ROWS_BLOCKS_BY_REGISTERS,
    /// block_regs_16bit_registers). So:
    /// - H100 and H200: every kernel, every size;
    /// - A100 (164 KiB a multiprocessor): the rows kernels, block_regs p8x4 from 96 threads
    ///   (at 64, rows of up to 2048 keys, 17 blocks fit where the registers run 18), not the
    ///   wide p8x8 (80 registers);
    /// - compute capability 8.6 and 8.9 (100 KiB): the rows kernels' p8x1 and p8x2 alone
    ///   (p8x4: 3 blocks where the registers allow 4; block_regs: none).
    ///
    /// Elsewhere, none; the kernel then computes each weight twice.
    /// [`LaunchPlan::fit_resident`] checks again against the driver's count of blocks.
    fn weight_cache_bytes(&self, kind: KernelKind, block: u32) -> u64 {
        if !kind.keeps_weights(self.dtype, self.direction) {
            return 0;
        }
        let (columns, before, limit, blocks_by_registers) = match kind {
            KernelKind::Rows { pack, packs, .. } => (
                pack * packs,
                0,
                self.shared_limit().min(DEFAULT_DYNAMIC_SHARED_BYTES),
                ROWS_BLOCKS_BY_REGISTERS,
            ),
            KernelKind::BlockRegs { pack, packs } => {
                let registers = block as u64 * block_regs_16bit_registers(pack, packs);
                let by_threads = self.threads_per_sm() / block as u64;
                (
                    pack * packs,
                    BLOCK_SCRATCH_BYTES,
                    self.shared_limit(),
                    (REGISTERS_PER_SM / registers).min(by_threads),
                )
            }
            _ => return 0,
        };
        let bytes = block as u64 * columns as u64 * 4;
        let fits = before + bytes <= limit
            && self.limits.blocks_by_shared(before + bytes) >= blocks_by_registers;
        if fits { bytes } else { 0 }
    }

    fn shared_limit(&self) -> u64 {
        self.limits.max_shared_per_block as u64
    }

    /// The launch of `kind` for this problem, or `None` if it cannot run it.
    fn configure(&self, kind: KernelKind) -> Option<LaunchPlan> {
        let pack = kind.pack();
        let p = pack as u64;
        let row_packs = self.row_packs(pack);
        let sms = self.sms();
        let threads_per_sm = self.threads_per_sm();
        let columns = self.columns(pack);
        let mut params = self.params;
        if columns != self.k_len {
            params.flags |= MASK_SHIFTED_PACKS;
        }
        let plan = |grid: u64, block: u32, shared_bytes: u64| LaunchPlan {
            kernel: kind,
            direction: self.direction,
            dtype: self.dtype,
            grid: grid.clamp(1, i32::MAX as u64) as u32,
            block,
            cluster: 1,
            shared_bytes: shared_bytes as u32,
            params,
            partials: 0,
        };
        // The looping block kernels: about 8 packs per thread, 128 to LOOP_BLOCK threads.
        let loop_block = whole_warps(row_packs.div_ceil(8)).clamp(128, LOOP_BLOCK as u64) as u32;
        match kind {
            KernelKind::Rows { group, packs, .. } | KernelKind::RowsKeys { group, packs, .. } => {
                if columns > (group * pack * packs) as u64 {
                    return None;
                }
                let rows_per_block = (ROWS_BLOCK / WARP_SIZE * (WARP_SIZE / group)) as u64;
                let resident = sms * (threads_per_sm / ROWS_BLOCK as u64).max(1);
                let grid = self.rows.div_ceil(rows_per_block).min(resident);
                Some(plan(
                    grid,
                    ROWS_BLOCK,
                    self.weight_cache_bytes(kind, ROWS_BLOCK),
                ))
            }
            KernelKind::BlockRegs { packs, .. } => {
                let most = kind.max_block_threads();
                if columns > (most * pack * packs) as u64 {
                    return None;
                }
                let block =
                    whole_warps(row_packs.div_ceil(packs as u64)).clamp(64, most as u64) as u32;
                let grid = self.rows.min(sms * (threads_per_sm / block as u64).max(1));
                let shared = BLOCK_SCRATCH_BYTES + self.weight_cache_bytes(kind, block);
                Some(plan(grid, block, shared))
            }
            KernelKind::BlockCached { .. } => {
                let cached_bytes =
                    row_packs * p * self.direction.cached_bytes_per_column() + BLOCK_SCRATCH_BYTES;
                if cached_bytes > self.shared_limit() {
                    return None;
                }
                let blocks_by_threads = (threads_per_sm / loop_block as u64).max(1);
                let blocks_by_shared = self.limits.blocks_by_shared(cached_bytes).max(1);
                let grid = self.rows.min(sms * blocks_by_threads.min(blocks_by_shared));
                Some(plan(grid, loop_block, cached_bytes))
            }
            KernelKind::BlockStream { .. } => {
                let grid = self
                    .rows
                    .min(sms * (threads_per_sm / loop_block as u64).max(1));
                Some(plan(grid, loop_block, BLOCK_SCRATCH_BYTES))
            }
            KernelKind::Split { .. } => {
                let chunks = row_packs.div_ceil(SPLIT_CHUNK_PACKS);
                let partials = self.rows.checked_mul(chunks)?;
                let block = row_packs
                    .min(SPLIT_CHUNK_PACKS)
                    .div_ceil(4)
                    .next_power_of_two()
                    .clamp(128, LOOP_BLOCK as u64) as u32;
                // Blocks beyond those resident at once would start only when a block ends
                // all its items, out of the order launch 2 reverses for the L2.
                let by_registers = REGISTERS_PER_SM / (block as u64 * SPLIT_REGISTERS);
                let by_threads = threads_per_sm / block as u64;
                let grid = partials.min(sms * by_registers.min(by_threads).max(1));
                let mut launch = plan(grid, block, BLOCK_SCRATCH_BYTES);
                launch.partials = partials;
                Some(launch)
            }
            KernelKind::Cluster { cached, .. } => {
                if !self.clusters() {
                    return None;
                }
                let cluster = if cached {
                    self.cached_launch_cluster(pack)?
                } else {
                    self.cluster_config(pack).0
                };
                let shared = if cached {
                    self.cluster_cache_bytes(pack, cluster)
                } else {
                    CLUSTER_HEADER_BYTES
                };
                // Clusters beyond those resident at once would only wait their turn.
                let (block, resident) = self.cluster_shape(pack, cluster, shared);
                let mut launch = plan(self.rows.min(resident) * cluster, block, shared);
                launch.cluster = cluster as u32;
                Some(launch)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Shape;

    /// 132 multiprocessors in GPCs of 16 to 18, one layout an H100 SXM may have (chips
    /// differ; the driver counts the real one's clusters).
    const H100_GPCS: [u32; 8] = [18, 18, 16, 16, 16, 16, 16, 16];
    const H100: DeviceLimits = DeviceLimits {
        sm_count: 132,
        max_threads_per_sm: 2048,
        max_shared_per_block: 227 * 1024,
        shared_per_sm: 228 * 1024,
        clusters: false,
        reserved_shared_per_block: 1024,
        cluster_residency: ClusterResidency::of_gpcs(&H100_GPCS),
    };
    /// The H100's 132 multiprocessors with an A100's shared memory (164 KiB each, 163 a
    /// block): where the weight caches' grants differ from the H100's.
    const A100_SHARED: DeviceLimits = DeviceLimits {
        shared_per_sm: 164 * 1024,
        max_shared_per_block: 163 * 1024,
        ..H100
    };
    const H100_CLUSTERS: DeviceLimits = DeviceLimits {
        clusters: true,
        ..H100
    };
    const ALIGNED: Buffers = Buffers {
        x: 0x1000,
        y: 0x2000,
        dy: 0,
        kv_lens: 0,
        q_lens: 0,
    };

    fn plan(spec: &Spec, dtype: DType, buffers: Buffers) -> LaunchPlan {
        plan_forward(spec, dtype, H100, buffers).unwrap()
    }

    fn capacity(kind: KernelKind) -> Option<u64> {
        match kind {
            KernelKind::Rows { group, pack, packs }
            | KernelKind::RowsKeys { group, pack, packs } => Some((group * pack * packs) as u64),
            KernelKind::BlockRegs { pack, packs } => {
                Some((kind.max_block_threads() * pack * packs) as u64)
            }
            _ => None,
        }
    }

    #[test]
    fn every_row_length_gets_a_compiled_kernel_that_holds_it() {
        let cases = DType::ALL.iter().flat_map(|&d| {
            [(d, H100), (d, H100_CLUSTERS)]
                .into_iter()
                .flat_map(move |(d, l)| {
                    // Few rows (a block each where one holds the row, else a cluster each
                    // where there are clusters) and many rows.
                    [10, 1000].into_iter().flat_map(move |rows| {
                        [Direction::Forward, Direction::Backward]
                            .map(|direction| (d, l, rows, direction))
                    })
                })
        });
        let k_lens: Vec<usize> = (1..=3000)
            .chain([
                4095,
                4096,
                4097,
                8191,
                8192,
                8193,
                16384,
                16385,
                65536,
                1 << 20,
                3 << 20,
            ])
            .collect();
        for (dtype, limits, rows, direction) in cases {
            let compiled = KernelKind::all(dtype, limits.clusters, direction);
            for &k_len in &k_lens {
                for buffers in [
                    ALIGNED,
                    Buffers {
                        x: 0x1002,
                        ..ALIGNED
                    },
                    Buffers {
                        x: 0x1004,
                        y: 0x2004,
                        dy: 0x3004,
                        ..ALIGNED
                    },
                ] {
                    let spec = Spec::new(Shape::matrix(rows, k_len));
                    let p = match direction {
                        Direction::Forward => plan_forward(&spec, dtype, limits, buffers),
                        Direction::Backward => plan_backward(&spec, dtype, limits, buffers),
                    }
                    .unwrap();
                    assert!(
                        compiled.contains(&p.kernel),
                        "{dtype:?} {direction:?} rows={rows} k={k_len}: {:?} not compiled",
                        p.kernel
                    );
                    // Split needs the handle's scratch buffer: not yet the planner's.
                    assert!(!matches!(p.kernel, KernelKind::Split { .. }));
                    assert_eq!(p.partials, 0);
                    // Shifted rows span up to a pack minus one more columns.
                    let columns = if p.params.flags & MASK_SHIFTED_PACKS != 0 {
                        k_len as u64 + p.kernel.pack() as u64 - 1
                    } else {
                        k_len as u64
                    };
                    if let Some(cap) = capacity(p.kernel) {
                        assert!(cap >= columns, "{:?} holds {cap} < {columns}", p.kernel);
                        // The smallest kernel that holds the row: half its capacity would not.
                        if let KernelKind::Rows { group, packs, .. } = p.kernel {
                            assert!(
                                group * packs == 1 || cap / 2 < columns,
                                "{:?} for {k_len}",
                                p.kernel
                            );
                        }
                    }
                    assert!(p.grid >= 1 && p.block % WARP_SIZE == 0 && p.block <= 1024);
                    assert!(p.grid % p.cluster == 0 && p.cluster <= 8);
                    assert!(p.shared_bytes <= limits.max_shared_per_block);
                }
            }
        }
    }

    #[test]
    fn the_16_bit_forward_rows_keep_their_weights_in_shared_memory() {
        // 256 keys: rows_g8_p8x4 (raw pairs), 32 floats of weights a thread, 32 KiB a block.
        let spec = Spec::new(Shape::matrix(100_000, 256));
        let consumer = DeviceLimits {
            max_threads_per_sm: 1536,
            max_shared_per_block: 99 * 1024,
            shared_per_sm: 100 * 1024,
            ..H100
        };
        for dtype in [DType::F16, DType::BF16] {
            let p = plan(&spec, dtype, ALIGNED);
            let KernelKind::Rows { pack, packs, .. } = p.kernel else {
                panic!("{dtype:?}: {:?}", p.kernel);
            };
            assert_eq!((pack, packs), (8, 4), "{dtype:?}");
            assert_eq!(p.shared_bytes, 256 * 32 * 4, "{dtype:?}");
            // The H100 holds 6 such blocks by shared memory, 4 by registers: the grid is
            // unchanged, 8 blocks a multiprocessor.
            assert_eq!(p.grid, 132 * 8, "{dtype:?}");
            // 100 KiB a multiprocessor would hold 3: no cache (the kernel computes each
            // weight twice), and the grid of the threads.
            let small = plan_forward(&spec, dtype, consumer, ALIGNED).unwrap();
            assert_eq!(small.kernel, p.kernel, "{dtype:?}");
            assert_eq!(small.shared_bytes, 0, "{dtype:?}");
            assert_eq!(small.grid, 132 * 6, "{dtype:?}");
            // The backward has no weights to keep.
            let bwd = plan_backward(&spec, dtype, H100, ALIGNED).unwrap();
            assert!(
                matches!(bwd.kernel, KernelKind::Rows { .. }),
                "{:?}",
                bwd.kernel
            );
            assert_eq!(bwd.shared_bytes, 0, "{dtype:?} backward");
        }
        // The driver's count decides once known: 5 blocks by registers would lose one to
        // the cache on an A100 (164 KiB: 4 of 33 KiB), 4 would not.
        for (by_registers, kept) in [(4, true), (5, false)] {
            let mut p = plan_forward(&spec, DType::F16, A100_SHARED, ALIGNED).unwrap();
            assert_eq!(p.shared_bytes, 256 * 32 * 4);
            let mut occupancy = KernelOccupancy::UNKNOWN;
            occupancy.record(256, by_registers);
            p.fit_resident(&A100_SHARED, &occupancy);
            assert_eq!(
                p.shared_bytes > 0,
                kept,
                "{by_registers} blocks by registers"
            );
            assert_eq!(
                p.grid,
                132 * by_registers,
                "{by_registers} blocks by registers"
            );
        }
        // Neither do f32 keys, nor 16-bit rows kept as f32 keys (rows_keys, up to 128 keys).
        let f32 = plan(&spec, DType::F32, ALIGNED);
        assert!(
            matches!(f32.kernel, KernelKind::Rows { .. }),
            "{:?}",
            f32.kernel
        );
        assert_eq!(f32.shared_bytes, 0);
        let short = plan(&Spec::new(Shape::matrix(100_000, 128)), DType::F16, ALIGNED);
        assert!(
            matches!(short.kernel, KernelKind::RowsKeys { .. }),
            "{:?}",
            short.kernel
        );
        assert_eq!(short.shared_bytes, 0);
    }

    #[test]
    fn the_16_bit_forward_block_regs_keep_their_weights_after_the_scratch() {
        // (keys, threads a row, whether an A100 grants the cache): 128 bytes a thread after
        // the reduction scratch, 64 KiB at 16384 keys (past the 48 KiB that need the
        // opt-in). At 2048 keys an A100 holds 17 blocks of 8 KiB where the registers run 18.
        for (k_len, block, on_a100) in [
            (2048, 64, false),
            (4096, 128, true),
            (8192, 256, true),
            (16384, 512, true),
        ] {
            let spec = Spec::new(Shape::matrix(20_000, k_len));
            for dtype in [DType::F16, DType::BF16] {
                let p = plan(&spec, dtype, ALIGNED);
                assert_eq!(
                    (p.kernel, p.block),
                    (KernelKind::BlockRegs { pack: 8, packs: 4 }, block),
                    "{dtype:?} {k_len}"
                );
                let cache = block as u64 * 32 * 4;
                assert_eq!(p.shared_bytes as u64, BLOCK_SCRATCH_BYTES + cache);
                let on = plan_forward(&spec, dtype, A100_SHARED, ALIGNED).unwrap();
                assert_eq!(
                    on.shared_bytes as u64,
                    BLOCK_SCRATCH_BYTES + if on_a100 { cache } else { 0 },
                    "{dtype:?} {k_len} on an A100"
                );
                // No weights to keep backward, none kept for f32 keys.
                let bwd = plan_backward(&spec, dtype, H100, ALIGNED).unwrap();
                assert_eq!(
                    bwd.shared_bytes as u64, BLOCK_SCRATCH_BYTES,
                    "{:?}",
                    bwd.kernel
                );
            }
            let f32 = plan(&spec, DType::F32, ALIGNED);
            if let KernelKind::BlockRegs { .. } = f32.kernel {
                assert_eq!(f32.shared_bytes as u64, BLOCK_SCRATCH_BYTES);
            }
        }
        // Few rows take p8x2, which keeps f32 keys: no cache.
        for dtype in [DType::F16, DType::BF16] {
            let p = plan(&Spec::new(Shape::matrix(100, 4096)), dtype, ALIGNED);
            assert_eq!(p.kernel, KernelKind::BlockRegs { pack: 8, packs: 2 });
            assert_eq!(p.shared_bytes as u64, BLOCK_SCRATCH_BYTES);
            assert_eq!(p.weight_cache_bytes(), 0);
        }
        // The wide variant p8x8 (80 registers): an H100 grants it at every size, an A100
        // at none (at 4096 keys, 64 threads: 9 blocks by shared memory where 12 run).
        let wide = KernelKind::BlockRegs { pack: 8, packs: 8 };
        for (k_len, block) in [(4096, 64), (16384, 256)] {
            let spec = Spec::new(Shape::matrix(20_000, k_len));
            let on = |limits| {
                plan_launch(
                    Some(wide),
                    Direction::Forward,
                    &spec,
                    DType::F16,
                    limits,
                    ALIGNED,
                )
                .unwrap()
                .unwrap()
            };
            let h100 = on(H100);
            assert_eq!(h100.block, block);
            assert_eq!(h100.weight_cache_bytes(), block * 64 * 4, "{k_len}");
            assert_eq!(
                on(A100_SHARED).weight_cache_bytes(),
                0,
                "{k_len} on an A100"
            );
        }
        // The driver's count decides once known: at 4096 keys an A100 holds 9 blocks of
        // 16.25 KiB (+1 KiB), so 9 blocks by registers keep the cache and 10 do not (the
        // scratch stays, the grid follows the registers).
        let spec = Spec::new(Shape::matrix(20_000, 4096));
        for (by_registers, kept) in [(9, true), (10, false)] {
            let mut p = plan_forward(&spec, DType::F16, A100_SHARED, ALIGNED).unwrap();
            let mut occupancy = KernelOccupancy::UNKNOWN;
            occupancy.record(128, by_registers);
            p.fit_resident(&A100_SHARED, &occupancy);
            let expected = BLOCK_SCRATCH_BYTES + if kept { 128 * 32 * 4 } else { 0 };
            assert_eq!(
                p.shared_bytes as u64, expected,
                "{by_registers} by registers"
            );
            assert_eq!(p.grid, 132 * by_registers, "{by_registers} by registers");
        }
    }

    #[test]
    fn tiny_rows_of_single_elements_take_a_lane_each() {
        // k=7 misaligns 16-byte packs in every row after the first: single elements. 16-bit
        // rows up to 8 keys take a lane each; f32 rows a lane per column.
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let lane_per_row = dtype.size_in_bytes() == 2;
            for (k, lane_shape, column_shape) in [
                (1, (1, 1), (1, 1)),
                (3, (1, 4), (4, 1)),
                (7, (1, 8), (8, 1)),
                (8, (1, 8), (8, 1)),
                (9, (16, 1), (16, 1)),
            ] {
                let spec = Spec::new(Shape::matrix(1000, k));
                let (group, packs) = if lane_per_row {
                    lane_shape
                } else {
                    column_shape
                };
                let want = KernelKind::Rows {
                    group,
                    pack: 1,
                    packs,
                };
                let fwd = plan(&spec, dtype, ALIGNED);
                let bwd = plan_backward(&spec, dtype, H100, ALIGNED).unwrap();
                if k % vector_pack(dtype) as usize != 0 {
                    assert_eq!(fwd.kernel, want, "{dtype:?} k={k}");
                    assert_eq!(bwd.kernel, want, "{dtype:?} k={k} backward");
                }
                // Even rows that align take the same when a buffer does not.
                let odd = Buffers {
                    x: 0x1002,
                    ..ALIGNED
                };
                assert_eq!(plan(&spec, dtype, odd).kernel, want, "{dtype:?} k={k}");
            }
        }
    }

    #[test]
    fn the_ladder_by_row_length() {
        let kind =
            |k: usize, dtype| plan(&Spec::new(Shape::matrix(1000, k)), dtype, ALIGNED).kernel;
        assert_eq!(
            kind(4, DType::F32),
            KernelKind::Rows {
                group: 1,
                pack: 4,
                packs: 1
            }
        );
        assert_eq!(
            kind(32, DType::F32),
            KernelKind::Rows {
                group: 8,
                pack: 4,
                packs: 1
            }
        );
        // Past 8 lanes, more packs per lane (up to 4), then more lanes.
        assert_eq!(
            kind(64, DType::F32),
            KernelKind::Rows {
                group: 8,
                pack: 4,
                packs: 2
            }
        );
        assert_eq!(
            kind(128, DType::F32),
            KernelKind::Rows {
                group: 8,
                pack: 4,
                packs: 4
            }
        );
        assert_eq!(
            kind(256, DType::BF16),
            KernelKind::Rows {
                group: 8,
                pack: 8,
                packs: 4
            }
        );
        assert_eq!(
            kind(500, DType::F32),
            KernelKind::Rows {
                group: 32,
                pack: 4,
                packs: 4
            }
        );
        let backward = |k: usize, dtype| {
            plan_backward(&Spec::new(Shape::matrix(1000, k)), dtype, H100, ALIGNED)
                .unwrap()
                .kernel
        };
        // The backward: the forward's shapes, up to 2 packs a lane in 16-bit (H200, v10).
        for (dtype, pack, k, group, packs) in [
            (DType::F32, 4, 32, 8, 1),
            (DType::F32, 4, 64, 8, 2),
            (DType::F32, 4, 128, 8, 4),
            (DType::F32, 4, 256, 16, 4),
            (DType::F16, 8, 64, 8, 1),
            (DType::F16, 8, 128, 8, 2),
            (DType::BF16, 8, 256, 16, 2),
            (DType::F16, 8, 512, 32, 2),
            (DType::BF16, 8, 1024, 32, 4),
        ] {
            assert_eq!(
                backward(k, dtype),
                KernelKind::Rows { group, pack, packs },
                "{dtype:?} k={k}"
            );
        }
        // The f32 backward's rows kernels stop at 256 keys: block_regs from 257.
        for k in [257, 512] {
            let regs = KernelKind::BlockRegs { pack: 4, packs: 2 };
            assert_eq!(backward(k, DType::F32), regs, "k={k}");
        }
        // The 16-bit forward's rows of up to 2 packs a lane hold f32 keys (RowsKeys); at 4
        // packs a lane, raw pairs.
        for (dtype, k, group, packs) in [
            (DType::F16, 8, 1, 1),
            (DType::BF16, 32, 4, 1),
            (DType::F16, 64, 8, 1),
            (DType::BF16, 128, 8, 2),
        ] {
            assert_eq!(
                kind(k, dtype),
                KernelKind::RowsKeys {
                    group,
                    pack: 8,
                    packs
                },
                "{dtype:?} k={k}"
            );
            assert_eq!(
                backward(k, dtype),
                KernelKind::Rows {
                    group,
                    pack: 8,
                    packs
                },
                "{dtype:?} k={k}"
            );
        }
        assert_eq!(
            kind(1000, DType::F32),
            KernelKind::Rows {
                group: 32,
                pack: 4,
                packs: 8
            }
        );
        assert_eq!(
            kind(1024, DType::F16),
            KernelKind::Rows {
                group: 32,
                pack: 8,
                packs: 4
            }
        );
        assert_eq!(
            kind(1032, DType::F16),
            KernelKind::BlockRegs { pack: 8, packs: 4 }
        );
        assert_eq!(
            kind(4096, DType::F32),
            KernelKind::BlockRegs { pack: 4, packs: 4 }
        );
        assert_eq!(
            kind(8192, DType::BF16),
            KernelKind::BlockRegs { pack: 8, packs: 4 }
        );
        assert_eq!(kind(4100, DType::F32), KernelKind::BlockCached { pack: 4 });
        assert_eq!(kind(8192, DType::F32), KernelKind::BlockCached { pack: 4 });
        assert_eq!(kind(8196, DType::F32), KernelKind::BlockStream { pack: 4 });
        // The 16-bit raw-pair kernel: 32 columns a thread, up to 16384.
        assert_eq!(
            kind(8200, DType::F16),
            KernelKind::BlockRegs { pack: 8, packs: 4 }
        );
        assert_eq!(
            kind(16384, DType::BF16),
            KernelKind::BlockRegs { pack: 8, packs: 4 }
        );
        assert_eq!(kind(16392, DType::F16), KernelKind::BlockStream { pack: 8 });
        // Fewer rows than 4 per multiprocessor keep the f32-key p8x2 where it holds the row.
        let few = |k: usize| plan(&Spec::new(Shape::matrix(256, k)), DType::F16, ALIGNED).kernel;
        assert_eq!(few(4096), KernelKind::BlockRegs { pack: 8, packs: 2 });
        assert_eq!(few(10_000), KernelKind::BlockRegs { pack: 8, packs: 4 });
        assert_eq!(
            kind(50_000, DType::F32),
            KernelKind::BlockStream { pack: 4 }
        );
        assert_eq!(
            kind(1 << 20, DType::BF16),
            KernelKind::BlockStream { pack: 8 }
        );
    }

    #[test]
    fn split_cuts_every_row_into_chunks_spread_over_the_grid() {
        let named = |spec: &Spec, dtype, pack, buffers| {
            plan_kernel(
                KernelKind::Split { pack },
                Direction::Forward,
                spec,
                dtype,
                H100,
                buffers,
            )
            .unwrap()
            .unwrap()
        };
        // 64 rows of 2^20 f32: 128 chunks of 2048 packs each, 8192 items, two 512-thread
        // blocks a multiprocessor (64 registers a thread).
        let p = named(
            &Spec::new(Shape::matrix(64, 1 << 20)),
            DType::F32,
            4,
            ALIGNED,
        );
        assert_eq!((p.partials, p.block, p.grid), (64 * 128, 512, 132 * 2));
        assert_eq!(p.shared_bytes as u64, BLOCK_SCRATCH_BYTES);
        // Odd rows of 16-bit 16-byte packs are seen shifted: k + 7 columns, 2501 packs, 2
        // chunks; few items make a grid of one block each.
        let p = named(&Spec::new(Shape::matrix(3, 20001)), DType::F16, 8, ALIGNED);
        assert_eq!(p.params.flags & MASK_SHIFTED_PACKS, MASK_SHIFTED_PACKS);
        assert_eq!((p.partials, p.grid), (3 * 2, 6));
        // Short rows: a chunk each, blocks of 128 threads at least.
        let p = named(&Spec::new(Shape::matrix(10, 100)), DType::F32, 4, ALIGNED);
        assert_eq!((p.partials, p.block, p.grid), (10, 128, 10));
        // Single elements where the buffers sit differently against 16-byte boundaries.
        let misaligned = Buffers {
            x: 0x1004,
            ..ALIGNED
        };
        assert!(
            plan_kernel(
                KernelKind::Split { pack: 4 },
                Direction::Forward,
                &Spec::new(Shape::matrix(10, 100)),
                DType::F32,
                H100,
                misaligned,
            )
            .unwrap()
            .is_none()
        );
        let p = named(
            &Spec::new(Shape::matrix(2, 5000)),
            DType::F32,
            1,
            misaligned,
        );
        assert_eq!(p.partials, 2 * 3);
    }

    #[test]
    fn rows_off_16_byte_boundaries_shift_or_fall_back_to_single_elements() {
        let spec = Spec::new(Shape::matrix(8, 1000));
        let shifted = |p: &LaunchPlan| p.params.flags & MASK_SHIFTED_PACKS != 0;
        let p = plan(&spec, DType::F32, ALIGNED);
        assert_eq!((p.kernel.pack(), shifted(&p)), (4, false));
        // Buffers that sit differently against 16-byte boundaries: single elements.
        for buffers in [
            Buffers {
                x: 0x1004,
                ..ALIGNED
            },
            Buffers {
                y: 0x2008,
                ..ALIGNED
            },
            Buffers {
                x: 0x1002,
                y: 0x2002,
                ..ALIGNED
            },
        ] {
            let p = plan(&spec, DType::F32, buffers);
            assert_eq!((p.kernel.pack(), shifted(&p)), (1, false), "{buffers:?}");
        }
        // Alike: shifted packs.
        let alike = Buffers {
            x: 0x1004,
            y: 0x2004,
            ..ALIGNED
        };
        let p = plan(&spec, DType::F32, alike);
        assert_eq!((p.kernel.pack(), shifted(&p)), (4, true));
        // A row stride that is not a whole number of packs: shifted packs.
        let odd = Spec::new(Shape::matrix(8, 1000).with_row_stride(1002));
        let p = plan(&odd, DType::F16, ALIGNED);
        assert_eq!((p.kernel.pack(), shifted(&p)), (8, true));
        // The row takes up to 7 columns more: 1007 fits 32 lanes of 4 packs of 8.
        assert_eq!(
            p.kernel,
            KernelKind::Rows {
                group: 32,
                pack: 8,
                packs: 4
            }
        );
        let even = Spec::new(Shape::matrix(8, 1000).with_row_stride(1008));
        let p = plan(&even, DType::F16, ALIGNED);
        assert_eq!((p.kernel.pack(), shifted(&p)), (8, false));
        // 1024 keys shifted need 1031 columns: past the rows kernels.
        let full = Spec::new(Shape::matrix(8, 1024).with_row_stride(1025));
        let p = plan(&full, DType::F16, ALIGNED);
        assert_eq!(p.kernel, KernelKind::BlockRegs { pack: 8, packs: 2 });
        // Rows shorter than 8 packs take single elements.
        for (k, dtype, pack) in [
            (31, DType::F32, 1),
            (32, DType::F32, 4),
            (63, DType::BF16, 1),
            (64, DType::BF16, 8),
        ] {
            let spec = Spec::new(Shape::matrix(8, k).with_row_stride(k + 3));
            assert_eq!(plan(&spec, dtype, ALIGNED).kernel.pack(), pack, "k={k}");
        }
        // The backward's dy sits alike too, or single elements.
        for (dy, pack) in [(0x3004, 4), (0x3008, 1)] {
            let buffers = Buffers { dy, ..alike };
            let p = plan_backward(&spec, DType::F32, H100, buffers).unwrap();
            assert_eq!(p.kernel.pack(), pack, "dy={dy:#x}");
            // A named vector kernel runs only where the buffers sit alike.
            let named = KernelKind::BlockStream { pack: 4 };
            let launch =
                plan_kernel(named, Direction::Backward, &spec, DType::F32, H100, buffers).unwrap();
            assert_eq!(launch.is_some(), pack == 4);
        }
    }

    #[test]
    fn grids_fill_the_gpu_and_no_more() {
        let p = plan(&Spec::new(Shape::matrix(4, 6)), DType::F32, ALIGNED);
        assert_eq!(p.grid, 1);
        let p = plan(
            &Spec::new(Shape::new(1 << 20, 64, 64, 1)),
            DType::F32,
            ALIGNED,
        );
        assert_eq!(p.grid, 132 * 8);
        let p = plan(&Spec::new(Shape::matrix(3, 1 << 20)), DType::F32, ALIGNED);
        assert_eq!((p.grid, p.block), (3, 512));
        let p = plan(
            &Spec::new(Shape::matrix(100_000, 4096)),
            DType::F32,
            ALIGNED,
        );
        // 1024 packs, 4 per thread: 256 threads, 8 blocks per multiprocessor.
        assert_eq!(p.kernel, KernelKind::BlockRegs { pack: 4, packs: 4 });
        assert_eq!((p.block, p.grid), (256, 132 * 8));
        let p = plan(
            &Spec::new(Shape::matrix(100_000, 8000)),
            DType::F32,
            ALIGNED,
        );
        assert!(p.kernel == KernelKind::BlockCached { pack: 4 });
        assert!(p.shared_bytes as u64 * (p.grid as u64 / 132) <= H100.shared_per_sm as u64);
    }

    #[test]
    fn odd_limits_never_give_an_empty_grid() {
        let limits = DeviceLimits {
            sm_count: 0,
            max_threads_per_sm: 0,
            max_shared_per_block: 0,
            shared_per_sm: 0,
            clusters: true,
            reserved_shared_per_block: 0,
            cluster_residency: ClusterResidency::UNKNOWN,
        };
        for k in [3, 5000, 1 << 20] {
            let p = plan_forward(
                &Spec::new(Shape::matrix(1000, k)),
                DType::F32,
                limits,
                ALIGNED,
            )
            .unwrap();
            assert!(p.grid >= 1, "k={k}: {p:?}");
        }
    }

    #[test]
    fn the_backward_ladder_holds_half_as_much_per_lane() {
        for dtype in DType::ALL {
            let compiled = KernelKind::all(dtype, false, Direction::Backward);
            for k_len in (1..=2100).chain([4096, 4097, 50_000, 1 << 20]) {
                let spec = Spec::new(Shape::matrix(300, k_len));
                let buffers = Buffers {
                    dy: 0x3000,
                    ..ALIGNED
                };
                let p = plan_backward(&spec, dtype, H100, buffers).unwrap();
                assert!(
                    compiled.contains(&p.kernel),
                    "{dtype:?} k={k_len}: {:?}",
                    p.kernel
                );
                assert_eq!((p.direction, p.cluster), (Direction::Backward, 1));
                if let Some(cap) = capacity(p.kernel) {
                    assert!(cap >= k_len as u64);
                }
                assert!(p.shared_bytes <= H100.max_shared_per_block);
            }
        }
        let spec = Spec::new(Shape::matrix(3, 1000));
        let misaligned_dy = Buffers {
            dy: 0x3004,
            ..ALIGNED
        };
        let p = plan_backward(&spec, DType::F32, H100, misaligned_dy).unwrap();
        assert_eq!(p.kernel.pack(), 1);
        // y and dy cached: 8 bytes per column.
        let spec = Spec::new(Shape::matrix(3, 6000));
        let p = plan_backward(&spec, DType::F32, H100, ALIGNED).unwrap();
        assert_eq!(p.kernel, KernelKind::BlockCached { pack: 4 });
        assert_eq!(p.shared_bytes as u64, 6000 * 8 + 256);
        // 16-bit: the raw-pair block_regs holds up to 16384 keys.
        let p = plan_backward(&spec, DType::F16, H100, ALIGNED).unwrap();
        assert_eq!(p.kernel, KernelKind::BlockRegs { pack: 8, packs: 4 });
        let spec = Spec::new(Shape::matrix(3, 40_000));
        let p = plan_backward(&spec, DType::F32, H100, ALIGNED).unwrap();
        assert_eq!(p.kernel, KernelKind::BlockStream { pack: 4 });
        // But 16-bit raw pairs hold as many columns a lane as the forward: a warp per row
        // up to 1024 keys. f32 rows kernels stop at 256 keys (rows_columns: block_regs
        // measured faster at 512), which 16 lanes of 4 packs hold.
        for (dtype, k_len, shape) in [
            (DType::F16, 1000, Some((32, 4))),
            (DType::BF16, 1024, Some((32, 4))),
            (DType::F16, 1025, None),
            (DType::F32, 256, Some((16, 4))),
            (DType::F32, 257, None),
        ] {
            let spec = Spec::new(Shape::matrix(3000, k_len));
            let p = plan_backward(&spec, dtype, H100, ALIGNED).unwrap();
            let expected = shape.map(|(group, packs)| KernelKind::Rows {
                group,
                pack: vector_pack(dtype),
                packs,
            });
            assert_eq!(
                matches!(p.kernel, KernelKind::Rows { .. }).then_some(p.kernel),
                expected,
                "{dtype:?} k={k_len}"
            );
        }
    }

    #[test]
    fn the_wide_raw_pair_kernel_runs_blocks_of_at_most_256_threads() {
        let wide = KernelKind::BlockRegs { pack: 8, packs: 8 };
        let named = |k_len: usize| {
            let spec = Spec::new(Shape::matrix(1000, k_len));
            plan_kernel(wide, Direction::Forward, &spec, DType::F16, H100, ALIGNED).unwrap()
        };
        // 64 columns a thread: 64 threads at 4096 keys (the 32-column kernel takes 128),
        // 256 at 16384, and no further (its launch bounds: 256 threads).
        assert_eq!(named(4096).map(|p| p.block), Some(64));
        assert_eq!(named(16_384).map(|p| p.block), Some(256));
        assert_eq!(named(16_392), None);
        // Forward only, and never the planner's.
        assert!(!KernelKind::all(DType::BF16, true, Direction::Backward).contains(&wide));
        for k_len in [2048, 4096, 8192, 16_384] {
            let spec = Spec::new(Shape::matrix(10_000, k_len));
            assert_ne!(plan(&spec, DType::F16, ALIGNED).kernel, wide);
        }
    }

    #[test]
    fn invalid_specs_and_kinds_built_by_hand_are_refused() {
        let spec = Spec::new(Shape::matrix(4, 64));
        for bad in [
            spec.sliding_window(0),
            spec.scale(f32::NAN),
            Spec::new(Shape::matrix(4, 0)),
        ] {
            assert!(
                plan_forward(&bad, DType::F32, H100, ALIGNED).is_err(),
                "{bad:?}"
            );
            assert!(
                plan_backward(&bad, DType::F16, H100, ALIGNED).is_err(),
                "{bad:?}"
            );
        }
        for kind in [
            KernelKind::Rows {
                group: 32,
                pack: 0,
                packs: 1,
            },
            KernelKind::Rows {
                group: 3,
                pack: 4,
                packs: 1,
            },
            KernelKind::BlockRegs { pack: 4, packs: 64 },
            KernelKind::BlockStream { pack: 2 },
        ] {
            for direction in [Direction::Forward, Direction::Backward] {
                let p = plan_kernel(kind, direction, &spec, DType::F32, H100, ALIGNED).unwrap();
                assert_eq!(p, None, "{kind:?}");
            }
        }
    }

    #[test]
    fn names_follow_the_cuda_instantiations() {
        assert_eq!(
            KernelKind::Rows {
                group: 8,
                pack: 4,
                packs: 1
            }
            .name(DType::F32, Direction::Forward),
            "masked_softmax_fwd_rows_g8_p4x1_f32"
        );
        assert_eq!(
            KernelKind::BlockStream { pack: 8 }.name(DType::BF16, Direction::Forward),
            "masked_softmax_fwd_block_stream_p8_bf16"
        );
        assert_eq!(
            KernelKind::all(DType::F32, false, Direction::Forward).len(),
            34
        );
        assert_eq!(
            KernelKind::all(DType::F32, true, Direction::Forward).len(),
            38
        );
        // 16-bit: the same, with the f32-key short rows kernels and the wide raw-pair
        // block_regs (variant only).
        assert_eq!(
            KernelKind::all(DType::F16, true, Direction::Forward).len(),
            38 + 9 + 1
        );
        assert_eq!(
            KernelKind::BlockRegs { pack: 8, packs: 8 }.name(DType::F16, Direction::Forward),
            "masked_softmax_fwd_block_regs_p8x8_f16"
        );
        assert_eq!(
            KernelKind::RowsKeys {
                group: 8,
                pack: 8,
                packs: 2
            }
            .name(DType::F16, Direction::Forward),
            "masked_softmax_fwd_rows_keys_g8_p8x2_f16"
        );
        assert_eq!(
            KernelKind::BlockRegs { pack: 8, packs: 4 }.name(DType::BF16, Direction::Forward),
            "masked_softmax_fwd_block_regs_p8x4_bf16"
        );
        assert_eq!(
            KernelKind::all(DType::F32, true, Direction::Backward).len(),
            36
        );
        // 16-bit: one pack a lane fewer in the split shapes, up to 4 on a warp (raw pairs).
        assert_eq!(
            KernelKind::all(DType::BF16, true, Direction::Backward).len(),
            36
        );
        // Two launches: the statistics pass, then the writing one under the kind's name.
        let split = KernelKind::Split { pack: 8 };
        assert_eq!(
            split.name(DType::F16, Direction::Backward),
            "masked_softmax_bwd_split_write_p8_f16"
        );
        assert_eq!(
            split.first_pass_name(DType::F16, Direction::Backward),
            Some("masked_softmax_bwd_split_stats_p8_f16".into())
        );
        assert_eq!(
            KernelKind::BlockStream { pack: 8 }.first_pass_name(DType::F16, Direction::Forward),
            None
        );
        // Prefetching instances: the vector block_regs of each type and direction and the
        // f32 block_cached (asking the L2 for the next row), the rows kernels of 1, 7, 32
        // and 64 keys (lengths a batch ahead) and those of 77 to 1024 keys (asking the L2
        // for the next batch), nothing else.
        let prefetching = |dtype, direction| -> Vec<String> {
            let mut names: Vec<String> = KernelKind::all(dtype, true, direction)
                .into_iter()
                .filter_map(|k| k.prefetch_name(dtype, direction))
                .collect();
            names.sort();
            names
        };
        let sorted = |mut names: Vec<String>| {
            names.sort();
            names
        };
        for direction in [Direction::Forward, Direction::Backward] {
            let d = direction.prefix();
            let (regs, medium) = match direction {
                Direction::Forward => ("p4x4", vec!["g32_p4x4", "g32_p4x8"]),
                Direction::Backward => ("p4x2", vec![]),
            };
            let mut expected = vec![
                format!("{d}_rows_g8_p4x1_prefetch_f32"),
                format!("{d}_rows_g8_p4x2_prefetch_f32"),
                format!("{d}_block_regs_{regs}_prefetch_f32"),
                format!("{d}_block_cached_p4_prefetch_f32"),
                format!("{d}_rows_g1_p1x1_prefetch_f32"),
                format!("{d}_rows_g8_p1x1_prefetch_f32"),
                format!("{d}_rows_g8_p4x4_prefetch_f32"),
                format!("{d}_rows_g16_p4x4_prefetch_f32"),
            ];
            expected.extend(medium.iter().map(|m| format!("{d}_rows_{m}_prefetch_f32")));
            assert_eq!(prefetching(DType::F32, direction), sorted(expected));
            for dtype in [DType::F16, DType::BF16] {
                let t = dtype.kernel_suffix();
                let (rows, medium) = match direction {
                    Direction::Forward => (
                        "rows_keys",
                        vec![
                            "rows_keys_g8_p8x2",
                            "rows_g8_p8x4",
                            "rows_g16_p8x4",
                            "rows_g32_p8x4",
                        ],
                    ),
                    Direction::Backward => (
                        "rows",
                        vec![
                            "rows_g8_p8x2",
                            "rows_g16_p8x2",
                            "rows_g32_p8x2",
                            "rows_g32_p8x4",
                        ],
                    ),
                };
                let mut expected = vec![
                    format!("{d}_{rows}_g4_p8x1_prefetch_{t}"),
                    format!("{d}_{rows}_g8_p8x1_prefetch_{t}"),
                    format!("{d}_block_regs_p8x4_prefetch_{t}"),
                    format!("{d}_rows_g1_p1x1_prefetch_{t}"),
                    format!("{d}_rows_g1_p1x8_prefetch_{t}"),
                ];
                expected.extend(medium.iter().map(|m| format!("{d}_{m}_prefetch_{t}")));
                assert_eq!(prefetching(dtype, direction), sorted(expected));
            }
        }
        // The instances that ask the L2 for the next row are v12's block kernels
        // (kernels/*.cu: the PREFETCH_KERNEL ones); the rows kernels' fetch lengths ahead
        // (v14, ROWS_PREFETCH: 1 to 64 keys) or ask the L2 for the next batch (v19,
        // ROWS_L2_PREFETCH: a row a group of lanes, up to 32 floats a lane).
        for dtype in DType::ALL {
            for direction in [Direction::Forward, Direction::Backward] {
                for kind in KernelKind::all(dtype, true, direction) {
                    let Some(fetch) = kind.fetch_ahead(dtype, direction) else {
                        continue;
                    };
                    let name = kind.prefetch_name(dtype, direction).unwrap();
                    assert_eq!(
                        fetch == FetchAhead::NextRow,
                        name.contains("_block_"),
                        "{name}"
                    );
                    assert_eq!(
                        kind.asks_l2_ahead(dtype, direction),
                        fetch != FetchAhead::Lengths,
                        "{name}"
                    );
                    if fetch == FetchAhead::NextBatch {
                        assert!(
                            matches!(kind, KernelKind::Rows { pack, packs, .. } | KernelKind::RowsKeys { pack, packs, .. } if pack > 1 && packs >= 2),
                            "{name}"
                        );
                    }
                }
            }
        }
        assert_eq!(
            KernelKind::Cluster {
                pack: 8,
                cached: false
            }
            .name(DType::BF16, Direction::Backward),
            "masked_softmax_bwd_cluster_stream_p8_bf16"
        );
        assert_eq!(
            KernelKind::BlockRegs { pack: 8, packs: 2 }.name(DType::F16, Direction::Forward),
            "masked_softmax_fwd_block_regs_p8x2_f16"
        );
        assert_eq!(
            KernelKind::Rows {
                group: 32,
                pack: 8,
                packs: 4
            }
            .name(DType::F16, Direction::Backward),
            "masked_softmax_bwd_rows_g32_p8x4_f16"
        );
        assert_eq!(
            KernelKind::Cluster {
                pack: 4,
                cached: true
            }
            .name(DType::F32, Direction::Forward),
            "masked_softmax_fwd_cluster_cached_p4_f32"
        );
    }

    #[test]
    fn few_long_rows_get_a_cluster_each_where_clusters_exist() {
        // Decode: 32 heads x 1 query of 131072 keys.
        let decode = Spec::new(Shape::new(1, 32, 1, 131_072));
        let p = plan_forward(&decode, DType::F16, H100_CLUSTERS, ALIGNED).unwrap();
        // 131072 / 4 keys of 4 bytes per block would fit in shared memory, but one such
        // block a multiprocessor: streaming.
        assert_eq!(
            p.kernel,
            KernelKind::Cluster {
                pack: 8,
                cached: false
            }
        );
        assert_eq!((p.cluster, p.grid), (4, 128));
        assert_eq!(p.shared_bytes as u64, 16 + 256);
        // At 65536 keys, 64 KiB chunks: cached.
        let decode_64k = Spec::new(Shape::new(1, 32, 1, 65_536));
        let p = plan_forward(&decode_64k, DType::F16, H100_CLUSTERS, ALIGNED).unwrap();
        assert_eq!(
            (p.kernel, p.cluster),
            (
                KernelKind::Cluster {
                    pack: 8,
                    cached: true
                },
                4
            )
        );
        assert_eq!(p.shared_bytes as u64, 16 + 256 + 65_536 / 4 * 4);
        // A block a multiprocessor at most: 2 packs a thread (2048 packs: 512 threads).
        assert_eq!(p.block, 512);
        // Where one block holds the row, a block a row: block_regs up to its capacity
        // (f32 keys up to 8192, raw pairs up to 16384), then block_cached while the keys
        // fit its shared memory (32768 keys: 128 KiB), with clusters or without.
        let decode_of = |k_len| Spec::new(Shape::new(1, 32, 1, k_len));
        let regs = |pack, packs| KernelKind::BlockRegs { pack, packs };
        for (k_len, dtype, kernel) in [
            (4096, DType::F16, regs(8, 2)),
            (4097, DType::F16, regs(8, 2)),
            (8192, DType::F32, regs(4, 4)),
            (16_384, DType::BF16, regs(8, 4)),
            (8193, DType::F32, KernelKind::BlockCached { pack: 4 }),
            (32_768, DType::F16, KernelKind::BlockCached { pack: 8 }),
        ] {
            for limits in [H100, H100_CLUSTERS] {
                let p = plan_forward(&decode_of(k_len), dtype, limits, ALIGNED).unwrap();
                assert_eq!((p.kernel, p.cluster), (kernel, 1), "{dtype:?} k={k_len}");
            }
        }
        // One row of 2^20 f32: 8 blocks of 512 KiB chunks do not fit: read twice.
        let one = Spec::new(Shape::matrix(1, 1 << 20));
        let p = plan_forward(&one, DType::F32, H100_CLUSTERS, ALIGNED).unwrap();
        assert_eq!(
            (p.kernel, p.cluster),
            (
                KernelKind::Cluster {
                    pack: 4,
                    cached: false
                },
                8
            )
        );
        // Without clusters, or with enough rows: a block per row.
        let p = plan_forward(&decode, DType::F16, H100, ALIGNED).unwrap();
        assert_eq!(p.kernel, KernelKind::BlockStream { pack: 8 });
        let many = Spec::new(Shape::new(8, 32, 1, 32_768));
        let p = plan_forward(&many, DType::F32, H100_CLUSTERS, ALIGNED).unwrap();
        assert_eq!(
            (p.kernel, p.cluster),
            (KernelKind::BlockStream { pack: 4 }, 1)
        );
        // Many 16-bit rows past block_regs: a streaming cluster each, of as many blocks as
        // a cached cluster would take (2: 16384 f32 keys per block fit), 8 packs a thread.
        let p = plan_forward(&many, DType::F16, H100_CLUSTERS, ALIGNED).unwrap();
        assert_eq!(p.block, 256);
        assert_eq!(
            (p.kernel, p.cluster),
            (
                KernelKind::Cluster {
                    pack: 8,
                    cached: false
                },
                2
            )
        );
        // Many rows too long for one block's shared memory: f32 streams a block per row
        // (measured faster than the cached clusters), 16-bit a cluster per row.
        let long = Spec::new(Shape::matrix(1024, 65_536));
        let p = plan_forward(&long, DType::F32, H100_CLUSTERS, ALIGNED).unwrap();
        assert_eq!(
            (p.kernel, p.cluster),
            (KernelKind::BlockStream { pack: 4 }, 1)
        );
        let p = plan_forward(&long, DType::BF16, H100_CLUSTERS, ALIGNED).unwrap();
        assert_eq!(
            (p.kernel, p.cluster),
            (
                KernelKind::Cluster {
                    pack: 8,
                    cached: false
                },
                2
            )
        );
        let longer = Spec::new(Shape::matrix(64, 1 << 20));
        let p = plan_forward(&longer, DType::F32, H100_CLUSTERS, ALIGNED).unwrap();
        assert_eq!(
            (p.kernel, p.cluster),
            (
                KernelKind::Cluster {
                    pack: 4,
                    cached: false
                },
                8
            )
        );
        // Short rows never use clusters.
        let short = Spec::new(Shape::matrix(1, 1000));
        let p = plan_forward(&short, DType::F32, H100_CLUSTERS, ALIGNED).unwrap();
        assert!(matches!(p.kernel, KernelKind::Rows { .. }));
    }

    #[test]
    fn cluster_grids_hold_only_the_clusters_the_gpcs_fit() {
        // 512 rows of 2^18 16-bit keys: streaming clusters of 8, 512 threads, 2 blocks a
        // multiprocessor. 132 / 8 * 2 = 33 by multiprocessors, but GPCs of 16 and 18 fit
        // 4 each: 32, every cluster 16 rows.
        let long = Spec::new(Shape::matrix(512, 1 << 18));
        let p = plan_forward(&long, DType::F16, H100_CLUSTERS, ALIGNED).unwrap();
        assert_eq!((p.cluster, p.block), (8, 512));
        assert_eq!(p.grid, 32 * 8);
        let unknown = DeviceLimits {
            cluster_residency: ClusterResidency::UNKNOWN,
            ..H100_CLUSTERS
        };
        let p = plan_forward(&long, DType::F16, unknown, ALIGNED).unwrap();
        assert_eq!(p.grid, 33 * 8);
        let small_gpcs = DeviceLimits {
            cluster_residency: ClusterResidency::of_gpcs(&[18, 18, 18, 18, 16, 16, 14, 14]),
            ..H100_CLUSTERS
        };
        let p = plan_forward(&long, DType::F16, small_gpcs, ALIGNED).unwrap();
        assert_eq!(p.grid, (6 * 4 + 2 * 3) * 8);

        // Decode backward, 32 rows of 32768 16-bit keys: cached clusters of 4 (512 threads,
        // 2 blocks a multiprocessor) while every row's cluster fits at once; where the
        // driver says 31 fit, one row would wait for another's cluster to finish:
        // streaming instead.
        let decode = Spec::new(Shape::new(1, 32, 1, 32_768));
        let cached = |limits| plan_backward(&decode, DType::F16, limits, ALIGNED).unwrap();
        let p = cached(H100_CLUSTERS);
        assert_eq!((p.kernel.pack(), p.cluster, p.grid), (8, 4, 32 * 4));
        assert!(matches!(p.kernel, KernelKind::Cluster { cached: true, .. }));
        let mut table = ClusterResidency::UNKNOWN;
        table.record(4, 2, 31);
        let p = cached(DeviceLimits {
            cluster_residency: table,
            ..H100_CLUSTERS
        });
        assert!(matches!(
            p.kernel,
            KernelKind::Cluster { cached: false, .. }
        ));
    }

    #[test]
    fn cached_clusters_for_many_rows_fit_two_blocks_a_multiprocessor() {
        let cached = KernelKind::Cluster {
            pack: 4,
            cached: true,
        };
        let launch = |rows: usize, k: usize| {
            let spec = Spec::new(Shape::matrix(rows, k));
            plan_kernel(
                cached,
                Direction::Forward,
                &spec,
                DType::F32,
                H100_CLUSTERS,
                ALIGNED,
            )
            .unwrap()
            .unwrap()
        };
        // 1024 rows of 65536 f32 keys: clusters of 4, 64 KiB chunks (2 of 128 KiB would
        // hold the row, one a multiprocessor).
        let p = launch(1024, 65_536);
        assert_eq!(p.cluster, 4);
        assert_eq!(p.shared_bytes as u64, CLUSTER_HEADER_BYTES + 65_536 * 4 / 4);
        // 2^18 keys: no cluster of 8 or fewer fits two a multiprocessor: 8 hold it.
        assert_eq!(launch(256, 1 << 18).cluster, 8);
        // Fewer rows than multiprocessors: the fewest blocks that hold the row, as the
        // planner counts them (decode).
        assert_eq!(launch(32, 32_768).cluster, 4);
        assert_eq!(launch(16, 65_536).cluster, 8);
        assert_eq!(launch(100, 65_536).cluster, 2);
    }

    #[test]
    fn blocks_hold_their_shared_memory_and_the_systems_reservation() {
        // 28900 f32 keys cached: 115,856 bytes a block, two of which fit 228 KiB but not
        // with 1 KiB reserved for each.
        let spec = Spec::new(Shape::matrix(1000, 28_900));
        let cached = KernelKind::BlockCached { pack: 4 };
        let grid = |limits| {
            plan_kernel(
                cached,
                Direction::Forward,
                &spec,
                DType::F32,
                limits,
                ALIGNED,
            )
            .unwrap()
            .unwrap()
            .grid
        };
        assert_eq!(grid(H100), 132);
        let unreserved = DeviceLimits {
            reserved_shared_per_block: 0,
            ..H100
        };
        assert_eq!(grid(unreserved), 264);
    }

    #[test]
    fn block_kernels_take_the_warps_a_row_needs() {
        // (Dense rows of odd length start off 16-byte boundaries: seen shifted.)
        let rows = |k_len: usize| Spec::new(Shape::matrix(16_384, k_len));
        // 16-bit forward block_regs, 32 columns a thread: 4096 keys on 4 warps; 4097 seen
        // shifted, 4104 columns, on 5 warps (a power of two would take 8).
        let p = plan(&rows(4096), DType::F16, ALIGNED);
        assert_eq!(
            (p.kernel_name().as_str(), p.block),
            ("masked_softmax_fwd_block_regs_p8x4_f16", 128)
        );
        let p = plan(&rows(4097), DType::F16, ALIGNED);
        assert_eq!(p.params.flags & MASK_SHIFTED_PACKS, MASK_SHIFTED_PACKS);
        assert_eq!(
            (p.kernel_name().as_str(), p.block),
            ("masked_softmax_fwd_block_regs_p8x4_f16", 160)
        );
        // At 2500 keys, 3 warps; never fewer than 2 (the f32 backward at 300 keys, 8
        // columns a thread, 38 threads).
        assert_eq!(plan(&rows(2500), DType::F16, ALIGNED).block, 96);
        let p = plan_backward(&rows(300), DType::F32, H100, ALIGNED).unwrap();
        assert_eq!(
            (p.kernel_name().as_str(), p.block),
            ("masked_softmax_bwd_block_regs_p4x2_f32", 64)
        );
        // The f32 forward's block_cached, about 8 packs a thread: 1025 packs on 5 warps.
        let p = plan(&rows(4097), DType::F32, ALIGNED);
        assert_eq!(
            (p.kernel_name().as_str(), p.block),
            ("masked_softmax_fwd_block_cached_p4_f32", 160)
        );
        // block_stream, 8 packs a thread: 3000 packs on 12 warps.
        let p = plan(&rows(12_000), DType::F32, ALIGNED);
        assert_eq!(
            (p.kernel_name().as_str(), p.block),
            ("masked_softmax_fwd_block_stream_p4_f32", 384)
        );
        // The driver's count at 5 warps cuts the grid of 12 blocks a multiprocessor by
        // threads to the 7 that 54 registers a thread let run.
        let p = plan(&rows(4097), DType::F16, ALIGNED);
        assert_eq!(p.grid, 132 * 12);
        let mut occupancy = KernelOccupancy::UNKNOWN;
        occupancy.record(160, 7);
        let mut fitted = p.clone();
        fitted.fit_resident(&H100, &occupancy);
        assert_eq!(fitted.grid, 132 * 7);
    }

    #[test]
    fn occupancy_is_kept_for_every_whole_number_of_warps() {
        let mut occupancy = KernelOccupancy::UNKNOWN;
        for (i, &block) in KernelOccupancy::BLOCK_SIZES.iter().enumerate() {
            assert_eq!(block, 32 * (i as u32 + 1));
            occupancy.record(block, 100 + i as u32);
        }
        assert_eq!(occupancy.get(32), Some(100));
        assert_eq!(occupancy.get(160), Some(104));
        assert_eq!(occupancy.get(1024), Some(131));
        // Sizes that are not whole warps, or past 1024 threads, are neither kept nor known.
        for block in [0, 16, 100, 1056, u32::MAX] {
            occupancy.record(block, 1);
            assert_eq!(occupancy.get(block), None);
        }
        assert_eq!(occupancy.get(160), Some(104));
    }

    #[test]
    fn launches_fit_the_blocks_their_registers_and_shared_memory_let_run() {
        let fit = |mut p: LaunchPlan, block: u32, blocks_per_sm: u32| {
            let mut occupancy = KernelOccupancy::UNKNOWN;
            occupancy.record(block, blocks_per_sm);
            p.fit_resident(&H100_CLUSTERS, &occupancy);
            p.grid
        };
        // block_cached at 8192 f32 keys: 256 threads, 33,024 bytes: 6 a multiprocessor by
        // shared memory even where registers would let 8 run.
        let cached = plan(&Spec::new(Shape::matrix(8192, 8192)), DType::F32, ALIGNED);
        assert_eq!((cached.grid, cached.block), (132 * 6, 256));
        assert_eq!(fit(cached.clone(), 256, 8), 132 * 6);
        assert_eq!(fit(cached.clone(), 256, 3), 132 * 3);
        // Occupancy at another block size, or none, changes nothing.
        assert_eq!(fit(cached.clone(), 512, 1), 132 * 6);
        assert_eq!(fit(cached.clone(), 256, 0), 132 * 6);
        // Zero records nothing over a known count.
        let mut occupancy = KernelOccupancy::UNKNOWN;
        occupancy.record(256, 3);
        occupancy.record(256, 0);
        assert_eq!(occupancy.get(256), Some(3));
        // Fewer rows than blocks that fit: one block a row, as planned.
        let few = plan(&Spec::new(Shape::matrix(100, 2048)), DType::F32, ALIGNED);
        assert_eq!(fit(few, 128, 9), 100);
        // Clusters of 8 at 2 blocks of 512 threads a multiprocessor, as planned: 32 fit
        // the GPCs. Were the kernel's registers to hold it to one block, 16 would.
        let long = Spec::new(Shape::matrix(512, 1 << 18));
        let p = plan_forward(&long, DType::F16, H100_CLUSTERS, ALIGNED).unwrap();
        assert_eq!((p.cluster, p.block, p.grid), (8, 512, 32 * 8));
        assert_eq!(fit(p.clone(), 512, 2), 32 * 8);
        assert_eq!(fit(p.clone(), 512, 1), 16 * 8);
        // Split kernels keep their grids (each of their two launches counts its own).
        let split = KernelKind::Split { pack: 4 };
        let p = plan_kernel(split, Direction::Forward, &long, DType::F32, H100, ALIGNED)
            .unwrap()
            .unwrap();
        assert_eq!(fit(p.clone(), p.block, 1), p.grid);
    }

    #[test]
    fn cluster_residency_records_what_it_holds() {
        let mut table = ClusterResidency::UNKNOWN;
        table.record(4, 3, 40);
        // Sizes and occupancies outside the table, and zero, are not recorded.
        table.record(16, 1, 5);
        table.record(2, 9, 5);
        table.record(2, 1, 0);
        table.record(4, 3, 0);
        assert_eq!(table.get(4, 3), Some(40));
        assert_eq!(table.get(2, 1), None);
        assert_eq!(table.get(16, 1), None);
        // Past 8 blocks a multiprocessor, what 8 give.
        table.record(8, 8, 64);
        assert_eq!(table.get(8, 12), Some(64));
        let h100 = ClusterResidency::of_gpcs(&H100_GPCS);
        // Clusters of 2 always fit every multiprocessor's blocks; of 8 blocks one a
        // multiprocessor, 2 a GPC.
        for b in 1..=8 {
            assert_eq!(h100.get(2, b), Some(66 * b));
        }
        assert_eq!(h100.get(8, 1), Some(16));
        assert_eq!(h100.get(4, 1), Some(32));
        assert_eq!(h100.get(8, 3), Some(2 * 6 + 6 * 6));
    }

    #[test]
    fn long_backward_rows_by_the_h100_crossovers() {
        let with_dy = Buffers {
            dy: 0x3000,
            ..ALIGNED
        };
        let kind = |rows, k_len, dtype| {
            let spec = Spec::new(Shape::matrix(rows, k_len));
            plan_backward(&spec, dtype, H100, with_dy).unwrap().kernel
        };
        // 16-bit: the raw-pair block_regs up to its 16384 keys, then block_stream.
        let regs = KernelKind::BlockRegs { pack: 8, packs: 4 };
        assert_eq!(kind(16384, 4096, DType::F16), regs);
        assert_eq!(kind(4 * 132, 16384, DType::BF16), regs);
        assert_eq!(
            kind(4 * 132, 16392, DType::BF16),
            KernelKind::BlockStream { pack: 8 }
        );
        // Fewer rows than 4 per multiprocessor: the f32-value block_regs where it holds the row.
        assert_eq!(
            kind(256, 4096, DType::F16),
            KernelKind::BlockRegs { pack: 8, packs: 1 }
        );
        // f32: block_regs up to 4096 keys, block_cached up to 16384, then block_stream.
        assert_eq!(
            kind(16384, 4096, DType::F32),
            KernelKind::BlockRegs { pack: 4, packs: 2 }
        );
        assert_eq!(
            kind(1000, 16384, DType::F32),
            KernelKind::BlockCached { pack: 4 }
        );
        assert_eq!(
            kind(1000, 16388, DType::F32),
            KernelKind::BlockStream { pack: 4 }
        );
    }

    #[test]
    fn few_backward_rows_take_a_block_while_one_holds_them_then_a_cluster() {
        let with_dy = Buffers {
            dy: 0x3000,
            ..ALIGNED
        };
        // Decode, 32 heads x 1 query: at 4096 keys block_regs holds the row.
        let decode = |k_len| Spec::new(Shape::new(1, 32, 1, k_len));
        for dtype in DType::ALL {
            let p = plan_backward(&decode(4096), dtype, H100_CLUSTERS, with_dy).unwrap();
            assert!(matches!(p.kernel, KernelKind::BlockRegs { .. }), "{p:?}");
            assert_eq!(p.cluster, 1);
        }
        // Past it, block_cached while y and dy (8 bytes a column) fit its shared memory.
        for (k_len, dtype, pack) in [(4097, DType::F32, 4), (20_000, DType::F16, 8)] {
            let p = plan_backward(&decode(k_len), dtype, H100_CLUSTERS, with_dy).unwrap();
            assert_eq!((p.kernel, p.cluster), (KernelKind::BlockCached { pack }, 1));
        }
        // Past that, a cluster per row; y and dy cached when they fit: 32768 / 4 columns
        // per block do (256 KiB would not at 2 blocks).
        let p = plan_backward(&decode(32_768), DType::F32, H100_CLUSTERS, with_dy).unwrap();
        assert_eq!(
            (p.kernel, p.cluster, p.grid),
            (
                KernelKind::Cluster {
                    pack: 4,
                    cached: true
                },
                4,
                128
            )
        );
        assert_eq!(p.shared_bytes as u64, 16 + 256 + 32_768 / 4 * 8);
        // 131072 keys would need 8 blocks of 128 KiB each, one per multiprocessor: 16
        // clusters at a time for 32 rows. So 8 blocks a row read twice, all at once.
        let p = plan_backward(&decode(131_072), DType::F16, H100_CLUSTERS, with_dy).unwrap();
        assert_eq!(
            (p.kernel, p.cluster, p.grid),
            (
                KernelKind::Cluster {
                    pack: 8,
                    cached: false
                },
                8,
                256
            )
        );
        assert_eq!(p.shared_bytes as u64, 16 + 256);
        // Named, the cached cluster still runs it (in two waves).
        let kind = KernelKind::Cluster {
            pack: 8,
            cached: true,
        };
        let spec = decode(131_072);
        let p = plan_kernel(
            kind,
            Direction::Backward,
            &spec,
            DType::F16,
            H100_CLUSTERS,
            with_dy,
        );
        let p = p.unwrap().unwrap();
        assert_eq!((p.cluster, p.grid), (8, 128));
        assert_eq!(p.shared_bytes as u64, 16 + 256 + 131_072 / 8 * 8);
        // 64 rows of 2^20: no cluster holds them; 8 blocks a row, each reading twice.
        let longest = Spec::new(Shape::matrix(64, 1 << 20));
        let p = plan_backward(&longest, DType::F32, H100_CLUSTERS, with_dy).unwrap();
        assert_eq!(
            (p.kernel, p.cluster),
            (
                KernelKind::Cluster {
                    pack: 4,
                    cached: false
                },
                8
            )
        );
        // Enough rows, or no clusters: a block per row.
        let many = Spec::new(Shape::new(8, 32, 1, 32_768));
        let p = plan_backward(&many, DType::F16, H100_CLUSTERS, with_dy).unwrap();
        assert_eq!(
            (p.kernel, p.cluster),
            (KernelKind::BlockStream { pack: 8 }, 1)
        );
        let p = plan_backward(&longest, DType::F32, H100, with_dy).unwrap();
        assert_eq!(p.kernel, KernelKind::BlockStream { pack: 4 });
    }

    #[test]
    fn fast_divisors_divide_exactly_below_2_31() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut divisors: Vec<u64> = (1..=300).chain([(1 << 31) - 1, 1 << 30, 3 << 29]).collect();
        divisors.extend((0..300).map(|_| 1 + next() % ((1 << 31) - 1)));
        for d in divisors {
            let f = FastDivisor::of(d);
            let mut numerators: Vec<u32> = vec![0, 1, d as u32 - 1, d as u32, (1 << 31) - 1];
            numerators.extend((0..200).map(|_| (next() % (1 << 31)) as u32));
            numerators.extend((0..50).map(|_| ((next() % 64) * d).min((1 << 31) - 1) as u32));
            for n in numerators {
                assert_eq!(f.divide(n) as u64, n as u64 / d, "{n} / {d}");
            }
        }
        assert_eq!(FastDivisor::of(0), FastDivisor::of(1));
    }

    #[test]
    fn params_encode_the_mask_options() {
        let spec = Spec::new(Shape::new(2, 3, 4, 10).with_row_stride(12))
            .padding(Padding::Left)
            .sliding_window(4)
            .scale(0.5);
        let p = KernelParams::new(&spec, 0x1000, 0).unwrap();
        assert_eq!(p.flags, MASK_LEFT_PADDING | MASK_CAUSAL | MASK_NARROW_ROWS);
        assert_eq!(
            (p.rows, p.heads, p.q_len, p.k_len, p.row_stride),
            (24, 3, 4, 10, 12)
        );
        assert_eq!(
            (p.window, p.scale, p.kv_lens, p.q_lens),
            (4, 0.5, 0x1000, 0)
        );
        // A window as wide as the row cuts nothing and is passed as unlimited.
        let p = KernelParams::new(&spec.sliding_window(10), 0, 0).unwrap();
        assert_eq!(p.window, 0);
        let p = KernelParams::new(&Spec::new(Shape::matrix(1, 5)), 0, 0).unwrap();
        assert_eq!((p.flags, p.window), (MASK_KEYS_ONLY | MASK_NARROW_ROWS, 0));
        // Key padding alone, either side, with or without key lengths; not with query
        // lengths or a causal mask.
        let keys = Spec::new(Shape::new(2, 3, 4, 10));
        for (spec, q_lens, keys_only) in [
            (keys, 0, true),
            (keys.padding(Padding::Left), 0, true),
            (keys, 0x2000, false),
            (keys.causal(), 0, false),
        ] {
            let p = KernelParams::new(&spec, 0x1000, q_lens).unwrap();
            assert_eq!(
                p.flags & MASK_KEYS_ONLY != 0,
                keys_only,
                "{spec:?} {q_lens}"
            );
        }
    }

    #[test]
    fn narrow_rows_below_2_31_rows_row_stride_and_keys_plus_queries() {
        let narrow = |shape: Shape| {
            KernelParams::new(&Spec::new(shape), 0, 0).unwrap().flags & MASK_NARROW_ROWS != 0
        };
        let edge = 1usize << 31;
        assert!(narrow(Shape::matrix(edge - 1, 1)));
        assert!(!narrow(Shape::matrix(edge, 1)));
        assert!(narrow(Shape::matrix(2, 1).with_row_stride(edge - 1)));
        assert!(!narrow(Shape::matrix(2, 1).with_row_stride(edge)));
        // k_len + q_len up to 2^31 - 2 (kernels/mask.cuh, window_in: every intermediate
        // within +-(k_len + q_len) in 32 bits).
        assert!(narrow(Shape::new(1, 1, 2, edge - 4)));
        assert!(!narrow(Shape::new(1, 1, 2, edge - 3)));
    }
}
