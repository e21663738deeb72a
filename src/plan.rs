//! Launch planning: which kernel runs a problem, with what grid and block. Pure Rust, so
//! it is unit-tested without a GPU.
//!
//! Today there is one kernel, one warp per row with a grid-stride loop over rows, so any
//! row count and any `k_len` are covered; the dispatch ladder (sub-warp rows, register-
//! resident rows, block and split rows) grows here.

use crate::contract::Spec;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// One warp per row, two passes over the row's valid scores.
    WarpPerRow,
}

impl KernelKind {
    /// The kernel's name without its dtype suffix.
    pub fn forward_name_stem(self) -> &'static str {
        match self {
            KernelKind::WarpPerRow => "masked_softmax_fwd_warp",
        }
    }
}

/// A launch: kernel, grid and block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchPlan {
    /// Which kernel.
    pub kernel: KernelKind,
    /// Blocks in the (1-D) grid, at least 1.
    pub grid: u32,
    /// Threads per block, a multiple of 32.
    pub block: u32,
}

/// Threads per block of the warp-per-row kernel.
const WARP_KERNEL_BLOCK: u32 = 256;

/// Plans the forward launch of a validated `spec`.
pub fn plan_forward(spec: &Spec, limits: DeviceLimits) -> Result<LaunchPlan> {
    let rows = spec.shape.rows()?;
    let warps_per_block = (WARP_KERNEL_BLOCK / WARP_SIZE) as usize;
    let blocks_needed = rows.div_ceil(warps_per_block);
    // Enough blocks to fill every multiprocessor; the grid-stride loop covers the rest.
    let resident_blocks = (limits.sm_count.max(1) as usize)
        * (limits.max_threads_per_sm / WARP_KERNEL_BLOCK).max(1) as usize;
    let grid = blocks_needed.clamp(1, resident_blocks) as u32;
    Ok(LaunchPlan {
        kernel: KernelKind::WarpPerRow,
        grid,
        block: WARP_KERNEL_BLOCK,
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

    #[test]
    fn small_problems_get_one_warp_per_row() {
        let plan = plan_forward(&Spec::new(Shape::matrix(4, 6)), H100).unwrap();
        assert_eq!(plan.kernel, KernelKind::WarpPerRow);
        assert_eq!(plan.grid, 1);
        assert_eq!(plan.block % WARP_SIZE, 0);
        let plan = plan_forward(&Spec::new(Shape::matrix(17, 6)), H100).unwrap();
        assert_eq!(plan.grid as usize * (plan.block / WARP_SIZE) as usize, 24);
    }

    #[test]
    fn huge_row_counts_are_capped_at_a_full_gpu() {
        let plan = plan_forward(&Spec::new(Shape::new(1 << 20, 64, 64, 1)), H100).unwrap();
        assert_eq!(plan.grid, 132 * 8);
    }

    #[test]
    fn odd_limits_never_give_an_empty_grid() {
        let limits = DeviceLimits {
            sm_count: 0,
            max_threads_per_sm: 0,
        };
        let plan = plan_forward(&Spec::new(Shape::matrix(1000, 3)), limits).unwrap();
        assert!(plan.grid >= 1);
    }
}
