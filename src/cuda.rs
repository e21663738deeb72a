//! The cudarc launchers: a handle that loads the kernels once per CUDA context and launches
//! them on the caller's stream.
//!
//! ```no_run
//! use masked_softmax::cuda::{open_device, CudaSoftmax, DeviceLengths};
//! use masked_softmax::{Shape, Spec};
//!
//! # fn main() -> masked_softmax::Result<()> {
//! let ctx = open_device(0)?; // a typed error, not a panic, without a GPU
//! let stream = ctx.default_stream();
//! let softmax = CudaSoftmax::new(&ctx)?;
//!
//! let spec = Spec::new(Shape::matrix(4, 6));
//! let x = stream.clone_htod(&[0.5f32; 24])?;
//! let lengths = stream.clone_htod(&[4i32, 1, 6, 3])?;
//! let mut y = stream.alloc_zeros::<f32>(24)?;
//! softmax.forward(&stream, &spec, DeviceLengths::keys(&lengths), &x, &mut y)?;
//! let y = stream.clone_dtoh(&y)?;
//! assert_eq!(y[6], 1.0); // row 1 has one valid key
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use std::collections::HashMap;

use crate::contract::{Spec, check_buffer};
use crate::dtype::{DType, Element};
use crate::error::{Error, LengthKind, Result};
use crate::plan::{DeviceLimits, KernelKind, KernelParams, plan_forward};

/// The PTX built from `kernels/*.cu` (`None` when the crate was built without nvcc).
mod ptx {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// The architecture and nvcc the embedded PTX was built with, if it was.
pub const PTX_TARGET: Option<&str> = option_env!("MASKED_SOFTMAX_PTX_TARGET");

/// True if this build carries the CUDA kernels.
pub fn kernels_built() -> bool {
    ptx::MASKED_SOFTMAX.is_some()
}

/// Opens device `ordinal` with typed errors where cudarc would panic: no driver library,
/// no device.
pub fn open_device(ordinal: usize) -> Result<Arc<CudaContext>> {
    // SAFETY: only tries to dlopen libcuda; nothing is called through it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::NoDriver);
    }
    match CudaContext::device_count() {
        Ok(n) if (n as usize) > ordinal => Ok(CudaContext::new(ordinal)?),
        Ok(_) => Err(Error::NoDevice),
        Err(e) if e.0 == cudarc::driver::sys::cudaError_enum::CUDA_ERROR_NO_DEVICE => {
            Err(Error::NoDevice)
        }
        Err(e) => Err(e.into()),
    }
}

/// Key and query lengths held on the device, one `i32` per batch entry. Values outside
/// `[0, k_len]` / `[0, q_len]` are clamped into range by the kernel (they cannot be
/// checked without a synchronisation). `None` means "all valid".
#[derive(Clone, Copy, Default)]
pub struct DeviceLengths<'a> {
    /// Valid keys per batch entry.
    pub kv: Option<&'a dyn DevicePtr<i32>>,
    /// Valid queries per batch entry.
    pub q: Option<&'a dyn DevicePtr<i32>>,
}

impl<'a> DeviceLengths<'a> {
    /// Every position valid.
    pub fn none() -> Self {
        DeviceLengths::default()
    }

    /// Key lengths only.
    pub fn keys(kv: &'a dyn DevicePtr<i32>) -> Self {
        DeviceLengths {
            kv: Some(kv),
            q: None,
        }
    }

    /// Key and query lengths.
    pub fn keys_and_queries(kv: &'a dyn DevicePtr<i32>, q: &'a dyn DevicePtr<i32>) -> Self {
        DeviceLengths {
            kv: Some(kv),
            q: Some(q),
        }
    }
}

// SAFETY: plain old data with the C layout the kernels expect (`MaskParams`).
unsafe impl DeviceRepr for KernelParams {}

/// The kernels of one CUDA context, loaded once; launches on any stream of that context.
#[derive(Debug)]
pub struct CudaSoftmax {
    ctx: Arc<CudaContext>,
    limits: DeviceLimits,
    forward: HashMap<(KernelKind, DType), CudaFunction>,
}

impl CudaSoftmax {
    /// Loads the kernels into `ctx`. Fails with [`Error::KernelsNotBuilt`] if this build has
    /// no kernels and [`Error::UnsupportedDevice`] below compute capability 8.0.
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self> {
        let ptx = ptx::MASKED_SOFTMAX.ok_or(Error::KernelsNotBuilt)?;
        let (major, minor) = ctx.compute_capability()?;
        if major < 8 {
            return Err(Error::UnsupportedDevice { major, minor });
        }
        let module = ctx.load_module(Ptx::from_src(ptx))?;
        let mut forward = HashMap::new();
        for kind in KernelKind::ALL {
            for dtype in DType::ALL {
                let function = module.load_function(&kind.forward_name(dtype))?;
                forward.insert((kind, dtype), function);
            }
        }
        let limits = DeviceLimits {
            sm_count: ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?
                as u32,
            max_threads_per_sm: ctx
                .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR)?
                as u32,
        };
        Ok(CudaSoftmax {
            ctx: ctx.clone(),
            limits,
            forward,
        })
    }

    /// The context the kernels are loaded in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// What the planner knows about the device.
    pub fn limits(&self) -> DeviceLimits {
        self.limits
    }

    /// `y = softmax(scale * x)` over each row's valid keys and exact zeros elsewhere,
    /// enqueued on `stream`. `x` and `y` must not overlap (see
    /// [`forward_in_place`](Self::forward_in_place)). Every misuse is an error before
    /// anything is launched; nothing is allocated and nothing waits for the GPU.
    pub fn forward<T: Element>(
        &self,
        stream: &CudaStream,
        spec: &Spec,
        lengths: DeviceLengths<'_>,
        x: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.check::<T>(stream, spec, &lengths)?;
        check_buffer("x", x.len(), &spec.shape)?;
        check_buffer("y", y.len(), &spec.shape)?;
        self.check_context("x", x.stream())?;
        self.check_context("y", y.stream())?;
        let (x_bytes, y_bytes) = (x.num_bytes() as u64, y.num_bytes() as u64);
        let (x_ptr, _x_guard) = x.device_ptr(stream);
        let (y_ptr, _y_guard) = y.device_ptr_mut(stream);
        if x_ptr < y_ptr + y_bytes && y_ptr < x_ptr + x_bytes {
            return Err(Error::Aliasing { a: "x", b: "y" });
        }
        self.launch_forward::<T>(stream, spec, lengths, x_ptr, y_ptr)
    }

    /// [`forward`](Self::forward) with the probabilities written over the scores.
    pub fn forward_in_place<T: Element>(
        &self,
        stream: &CudaStream,
        spec: &Spec,
        lengths: DeviceLengths<'_>,
        xy: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.check::<T>(stream, spec, &lengths)?;
        check_buffer("xy", xy.len(), &spec.shape)?;
        self.check_context("xy", xy.stream())?;
        let (ptr, _guard) = xy.device_ptr_mut(stream);
        self.launch_forward::<T>(stream, spec, lengths, ptr, ptr)
    }

    fn launch_forward<T: Element>(
        &self,
        stream: &CudaStream,
        spec: &Spec,
        lengths: DeviceLengths<'_>,
        x_ptr: u64,
        y_ptr: u64,
    ) -> Result<()> {
        let (kv_ptr, _kv_guard) = lengths.kv.map(|l| l.device_ptr(stream)).unzip();
        let (q_ptr, _q_guard) = lengths.q.map(|l| l.device_ptr(stream)).unzip();
        let plan = plan_forward(
            spec,
            T::DTYPE,
            self.limits,
            kv_ptr.unwrap_or(0),
            q_ptr.unwrap_or(0),
        )?;
        let function = &self.forward[&(plan.kernel, plan.dtype)];
        let config = LaunchConfig {
            grid_dim: (plan.grid, 1, 1),
            block_dim: (plan.block, 1, 1),
            shared_mem_bytes: plan.shared_bytes,
        };
        let mut launch = stream.launch_builder(function);
        launch.arg(&x_ptr).arg(&y_ptr).arg(&plan.params);
        // SAFETY: the kernel's signature is (const T*, T*, MaskParams); the buffers hold
        // `required_len` elements of T (checked) and the lengths `batch` i32 (checked).
        unsafe { launch.launch(config) }?;
        Ok(())
    }

    /// Checks shared by every entry point: spec, stream context, device lengths.
    fn check<T: Element>(
        &self,
        stream: &CudaStream,
        spec: &Spec,
        lengths: &DeviceLengths<'_>,
    ) -> Result<()> {
        spec.validate(std::mem::size_of::<T>())?;
        self.check_context("stream", stream)?;
        for (kind, l) in [
            (LengthKind::Key, lengths.kv),
            (LengthKind::Query, lengths.q),
        ] {
            let Some(l) = l else { continue };
            if l.len() != spec.shape.batch {
                return Err(Error::LengthsSize {
                    kind,
                    len: l.len(),
                    batch: spec.shape.batch,
                });
            }
            self.check_context("lengths", l.stream())?;
        }
        Ok(())
    }

    fn check_context(&self, buffer: &'static str, stream: &CudaStream) -> Result<()> {
        if stream.context().cu_ctx() != self.ctx.cu_ctx() {
            return Err(Error::ForeignContext { buffer });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI sets MASKED_SOFTMAX_REQUIRE_KERNELS=1: there the PTX must be embedded and hold
    /// every kernel the launcher loads.
    #[test]
    fn kernels_are_embedded_where_required() {
        let required = std::env::var("MASKED_SOFTMAX_REQUIRE_KERNELS").is_ok_and(|v| v == "1");
        let Some(ptx) = ptx::MASKED_SOFTMAX else {
            assert!(
                !required,
                "MASKED_SOFTMAX_REQUIRE_KERNELS=1 but no PTX is embedded"
            );
            return;
        };
        assert!(PTX_TARGET.is_some());
        for (kind, dtype) in KernelKind::ALL
            .iter()
            .flat_map(|k| DType::ALL.map(|d| (*k, d)))
        {
            let name = kind.forward_name(dtype);
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "PTX lacks kernel {name}"
            );
        }
    }
}
