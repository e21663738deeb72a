//! Launch planning: which kernel runs a problem, with what grid, block and parameters.
//! Pure Rust, so it is unit-tested without a GPU and drives both the CUDA launcher
//! ([`crate::cuda`]) and the CPU emulator the tests run the kernels on.
//!
//! Today there is one kernel, one warp per row with a grid-stride loop over rows, so any
//! row count and any `k_len` are covered; the dispatch ladder (sub-warp rows, register-
//! resident rows, block and split rows) grows here.

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
}

/// The kernels the planner can choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelKind {
    /// One warp per row, two passes over the row's valid scores.
    WarpPerRow,
}

impl KernelKind {
    /// Every kernel kind (the launcher loads them all).
    pub const ALL: [KernelKind; 1] = [KernelKind::WarpPerRow];

    /// The forward kernel's name for `dtype`: `masked_softmax_fwd_<kind>_<dtype>`.
    pub fn forward_name(self, dtype: DType) -> String {
        let kind = match self {
            KernelKind::WarpPerRow => "warp",
        };
        format!("masked_softmax_fwd_{kind}_{}", dtype.kernel_suffix())
    }
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
    /// [`MASK_LEFT_PADDING`] | [`MASK_CAUSAL`].
    pub flags: i32,
}

const _: () = assert!(std::mem::size_of::<KernelParams>() == 72);

/// [`KernelParams::flags`] bit: left padding.
pub const MASK_LEFT_PADDING: i32 = 1;
/// [`KernelParams::flags`] bit: causal masking.
pub const MASK_CAUSAL: i32 = 2;

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
        }
        Ok(KernelParams {
            kv_lens,
            q_lens,
            rows: shape.rows()? as i64,
            heads: shape.heads as i64,
            q_len: shape.q_len as i64,
            k_len: shape.k_len as i64,
            row_stride: shape.row_stride as i64,
            window,
            scale: spec.scale,
            flags,
        })
    }
}

/// A launch: kernel, grid, block and parameters. The kernel's arguments are
/// `(x, y, params)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    /// Which kernel.
    pub kernel: KernelKind,
    /// Storage type (selects the kernel's instantiation).
    pub dtype: DType,
    /// Blocks in the (1-D) grid, at least 1.
    pub grid: u32,
    /// Threads per block, a multiple of 32.
    pub block: u32,
    /// Dynamic shared memory per block, bytes.
    pub shared_bytes: u32,
    /// The parameter block passed by value.
    pub params: KernelParams,
}

impl LaunchPlan {
    /// The kernel's name in the PTX.
    pub fn kernel_name(&self) -> String {
        self.kernel.forward_name(self.dtype)
    }
}

/// Threads per block of the warp-per-row kernel.
const WARP_KERNEL_BLOCK: u32 = 256;

/// Plans the forward launch of a validated `spec` whose lengths live at the device
/// addresses `kv_lens` and `q_lens` (0 where absent).
pub fn plan_forward(
    spec: &Spec,
    dtype: DType,
    limits: DeviceLimits,
    kv_lens: u64,
    q_lens: u64,
) -> Result<LaunchPlan> {
    let params = KernelParams::new(spec, kv_lens, q_lens)?;
    let rows = spec.shape.rows()?;
    let warps_per_block = (WARP_KERNEL_BLOCK / WARP_SIZE) as usize;
    let blocks_needed = rows.div_ceil(warps_per_block);
    // Enough blocks to fill every multiprocessor; the grid-stride loop covers the rest.
    let resident_blocks = (limits.sm_count.max(1) as usize)
        * (limits.max_threads_per_sm / WARP_KERNEL_BLOCK).max(1) as usize;
    let grid = blocks_needed.clamp(1, resident_blocks) as u32;
    Ok(LaunchPlan {
        kernel: KernelKind::WarpPerRow,
        dtype,
        grid,
        block: WARP_KERNEL_BLOCK,
        shared_bytes: 0,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Shape;

    const H100: DeviceLimits = DeviceLimits {
        sm_count: 132,
        max_threads_per_sm: 2048,
    };

    fn plan(spec: &Spec, limits: DeviceLimits) -> LaunchPlan {
        plan_forward(spec, DType::F32, limits, 0, 0).unwrap()
    }

    #[test]
    fn small_problems_get_one_warp_per_row() {
        let p = plan(&Spec::new(Shape::matrix(4, 6)), H100);
        assert_eq!(p.kernel, KernelKind::WarpPerRow);
        assert_eq!(p.kernel_name(), "masked_softmax_fwd_warp_f32");
        assert_eq!(p.grid, 1);
        assert_eq!(p.block % WARP_SIZE, 0);
        let p = plan(&Spec::new(Shape::matrix(17, 6)), H100);
        assert_eq!(p.grid as usize * (p.block / WARP_SIZE) as usize, 24);
    }

    #[test]
    fn huge_row_counts_are_capped_at_a_full_gpu() {
        let p = plan(&Spec::new(Shape::new(1 << 20, 64, 64, 1)), H100);
        assert_eq!(p.grid, 132 * 8);
    }

    #[test]
    fn odd_limits_never_give_an_empty_grid() {
        let limits = DeviceLimits {
            sm_count: 0,
            max_threads_per_sm: 0,
        };
        assert!(plan(&Spec::new(Shape::matrix(1000, 3)), limits).grid >= 1);
    }

    #[test]
    fn params_encode_the_mask_options() {
        let spec = Spec::new(Shape::new(2, 3, 4, 10).with_row_stride(12))
            .padding(Padding::Left)
            .sliding_window(4)
            .scale(0.5);
        let p = KernelParams::new(&spec, 0x1000, 0).unwrap();
        assert_eq!(p.flags, MASK_LEFT_PADDING | MASK_CAUSAL);
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
        assert_eq!((p.flags, p.window), (0, 0));
    }
}
