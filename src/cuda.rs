//! The cudarc launchers: a handle that loads the kernels once per CUDA context and launches
//! them on the caller's stream.
//!
//! Lengths come from the host ([`Lengths`], checked, then staged in a device buffer the
//! handle keeps) or from the device ([`DeviceLengths`], clamped into range by the kernel;
//! the form to use inside CUDA graphs).
//!
//! **CUDA graphs.** With [`DeviceLengths`] a launch allocates nothing and never waits for
//! the host, so it can be captured and replayed; host lengths during a capture are
//! [`Error::HostLengthsInCapture`]. cudarc's event tracking (on by default once a context
//! has a second stream) makes every kernel argument wait for the event of its last write;
//! inside a capture that is a wait on uncaptured work, and CUDA invalidates the capture
//! (`CUDA_ERROR_STREAM_CAPTURE_ISOLATION`). Capture as cudarc's own graph tests do, with
//! `unsafe { ctx.disable_event_tracking() }` and streams you order yourself
//! (`examples/inference_step.rs`). The handle orders its own staging buffer either way.
//!
//! ```no_run
//! use masked_softmax::cuda::{open_device, CudaSoftmax, DeviceLengths};
//! use masked_softmax::{Lengths, Shape, Spec};
//!
//! # fn main() -> masked_softmax::Result<()> {
//! let ctx = open_device(0)?; // a typed error, not a panic, without a GPU
//! let stream = ctx.default_stream();
//! let softmax = CudaSoftmax::new(&ctx)?;
//!
//! let spec = Spec::new(Shape::matrix(4, 6));
//! let x = stream.clone_htod(&[0.5f32; 24])?;
//! let mut y = stream.alloc_zeros::<f32>(24)?;
//! softmax.forward(&stream, &spec, Lengths::keys(&[4, 1, 6, 3]), &x, &mut y)?;
//! assert_eq!(stream.clone_dtoh(&y)?[6], 1.0); // row 1 has one valid key
//!
//! // The same with the lengths already on the device.
//! let lengths = stream.clone_htod(&[4i32, 1, 6, 3])?;
//! softmax.forward(&stream, &spec, DeviceLengths::keys(&lengths), &x, &mut y)?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUstreamCaptureStatus;
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr,
    DevicePtrMut, DeviceRepr,
};
use cudarc::nvrtc::Ptx;

use crate::contract::{Lengths, Spec, check_buffer};
use crate::dtype::{DType, Element};
use crate::error::{Error, LengthKind, Result};
use crate::plan::{
    Buffers, ClusterResidency, DeviceLimits, Direction, KernelKind, KernelOccupancy, KernelParams,
    LaunchPlan, MASK_PLAIN_STREAM, plan_launch,
};

/// The kernels built from `kernels/*.cu` by build.rs (no modules when built without nvcc).
mod images {
    /// 16-byte aligned bytes, so that they can go to the driver where they are (a fatbin's
    /// header holds 64-bit fields). cudarc's `Ptx::from_binary` copies them into a heap
    /// buffer, which the system allocator aligns to 16 bytes on 64-bit targets.
    #[repr(C, align(16))]
    pub struct Aligned<B: ?Sized>(pub B);

    /// One kernel file compiled for one target.
    pub struct Module {
        /// The file's stem: `kernels/<stem>.cu`.
        pub stem: &'static str,
        /// The compute capability its SASS and PTX target (80: 8.0).
        pub cap: u32,
        /// A compressed fatbin: SASS for `cap` and PTX for `cap` (or, built with
        /// `MASKED_SOFTMAX_EMBED=ptx`, the PTX text alone).
        pub image: &'static [u8],
        /// The names of the kernels it defines (the tests check them against the planner).
        #[cfg_attr(not(test), allow(dead_code))]
        pub entries: &'static [&'static str],
    }

    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// The architectures, the form (`fatbin`, or `ptx` where built with
/// `MASKED_SOFTMAX_EMBED=ptx`) and the nvcc of the embedded kernels, if there are any.
pub const PTX_TARGET: Option<&str> = option_env!("MASKED_SOFTMAX_PTX_TARGET");

/// True if this build carries the CUDA kernels.
pub fn kernels_built() -> bool {
    module_image("masked_softmax").is_some()
}

/// The embedded image of `kernels/<name>.cu` (e.g. `"masked_softmax"`, or `"baseline"`,
/// the unfused mask-fill-softmax kernels the benchmark compares against) for the base
/// target, which every supported GPU can load, for loading with cudarc yourself
/// ([`load_module_image`]). It is a compressed fatbin with SASS for the base target (which
/// the driver runs on that architecture's later minor versions too) and PTX for it (which
/// the driver compiles on any newer architecture); built with `MASKED_SOFTMAX_EMBED=ptx`,
/// the PTX text alone. `None` if there is no such file or the build has no kernels.
pub fn module_image(name: &str) -> Option<&'static [u8]> {
    images::MODULES
        .iter()
        .filter(|m| m.stem == name)
        .min_by_key(|m| m.cap)
        .map(|m| m.image)
}

/// The image of `kernels/<name>.cu` best suited to a device of compute capability
/// `major.minor`, with its target: the highest target it can run. Hopper's (9.0) also
/// holds the thread-block-cluster kernels.
pub fn module_image_for(name: &str, major: i32, minor: i32) -> Option<(u32, &'static [u8])> {
    module_for(name, major, minor).map(|m| (m.cap, m.image))
}

/// Loads an image of [`module_image`] or [`module_image_for`] into `ctx`: a fatbin as it
/// is, PTX as text.
pub fn load_module_image(ctx: &Arc<CudaContext>, image: &[u8]) -> Result<Arc<CudaModule>> {
    let code = if is_fatbin(image) {
        Ptx::from_binary(image.to_vec())
    } else {
        Ptx::from_src(String::from_utf8_lossy(image))
    };
    Ok(ctx.load_module(code)?)
}

/// A fatbin starts with its magic number, 0xBA55ED50, little-endian.
fn is_fatbin(image: &[u8]) -> bool {
    image.starts_with(&[0x50, 0xed, 0x55, 0xba])
}

fn module_for(name: &str, major: i32, minor: i32) -> Option<&'static images::Module> {
    let device = (major.max(0) as u32)
        .saturating_mul(10)
        .saturating_add(minor.max(0) as u32);
    images::MODULES
        .iter()
        .filter(|m| m.stem == name && m.cap <= device)
        .max_by_key(|m| m.cap)
}

/// The PTX target the kernels load from on a device of compute capability `major.minor`:
/// [`Error::KernelsNotBuilt`] without kernels, [`Error::UnsupportedDevice`] below 8.0.
pub fn ptx_target_for(major: i32, minor: i32) -> Result<u32> {
    if !kernels_built() {
        return Err(Error::KernelsNotBuilt);
    }
    module_image_for(Direction::Forward.module(), major, minor)
        .filter(|_| major >= 8)
        .map(|(target, _)| target)
        .ok_or(Error::UnsupportedDevice { major, minor })
}

/// Opens device `ordinal` with typed errors where cudarc would panic: no driver library,
/// no device.
pub fn open_device(ordinal: usize) -> Result<Arc<CudaContext>> {
    // SAFETY: only tries to dlopen libcuda; nothing is called through it. (Linked
    // dynamically instead, as candle-cuda builds are, the loader has found it already.)
    #[cfg(feature = "dynamic-loading")]
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::NoDriver);
    }
    match CudaContext::device_count() {
        Ok(n) if (n as usize) > ordinal => Ok(CudaContext::new(ordinal)?),
        Ok(n) => Err(Error::NoDevice {
            ordinal,
            count: n.max(0) as usize,
        }),
        Err(e) if e.0 == cudarc::driver::sys::cudaError_enum::CUDA_ERROR_NO_DEVICE => {
            Err(Error::NoDevice { ordinal, count: 0 })
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

impl std::fmt::Debug for DeviceLengths<'_> {
    /// Which lengths are there and how many entries each holds.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = |l: Option<&dyn DevicePtr<i32>>| l.map(|l| l.len());
        f.debug_struct("DeviceLengths")
            .field("kv_entries", &entries(self.kv))
            .field("q_entries", &entries(self.q))
            .finish()
    }
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

/// Where a call's lengths are: [`Lengths`] on the host or [`DeviceLengths`] on the device.
/// Entry points take `impl Into<LengthsArg>`, so either can be passed directly.
#[derive(Clone, Copy, Debug)]
pub enum LengthsArg<'a> {
    /// Host lengths: validated (out of range is an error), then copied to the device.
    Host(Lengths<'a>),
    /// Device lengths: used in place, clamped into range by the kernel.
    Device(DeviceLengths<'a>),
}

impl<'a> From<Lengths<'a>> for LengthsArg<'a> {
    fn from(lengths: Lengths<'a>) -> Self {
        LengthsArg::Host(lengths)
    }
}

impl<'a> From<DeviceLengths<'a>> for LengthsArg<'a> {
    fn from(lengths: DeviceLengths<'a>) -> Self {
        LengthsArg::Device(lengths)
    }
}

// SAFETY: plain old data with the C layout the kernels expect (`MaskParams`).
unsafe impl DeviceRepr for KernelParams {}

/// The kernels of one CUDA context, loaded once; launches on any stream of that context.
#[derive(Debug)]
pub struct CudaSoftmax {
    ctx: Arc<CudaContext>,
    limits: DeviceLimits,
    functions: HashMap<(Direction, KernelKind, DType), CudaFunction>,
    /// Each loaded kernel's blocks a multiprocessor by threads and registers, from the
    /// driver ([`LaunchPlan::fit_resident`]).
    occupancy: HashMap<(Direction, KernelKind, DType), KernelOccupancy>,
    /// Whether the streaming kernels ask the L2 to keep a row between its two reads
    /// ([`set_l2_hints`](Self::set_l2_hints)).
    l2_hints: bool,
    /// Whether grids are sized by what the device runs at once
    /// ([`set_grid_fitting`](Self::set_grid_fitting)).
    grid_fitting: bool,
    /// Whether the kernels that keep their weights in shared memory get the room for it
    /// ([`set_weight_cache`](Self::set_weight_cache)).
    weight_cache: bool,
    /// Device copy of host lengths; grows, never shrinks.
    staging: Mutex<Option<Staging>>,
    /// The first launch of kinds that take two ([`KernelKind::first_pass_name`]).
    first_passes: HashMap<(Direction, KernelKind, DType), CudaFunction>,
    /// The kinds compiled again to fetch ahead ([`KernelKind::prefetch_name`]: the next
    /// row or batch of rows into the L2, or the next batch's lengths), with their own
    /// occupancy.
    prefetching: HashMap<(Direction, KernelKind, DType), (CudaFunction, KernelOccupancy)>,
    /// Whether launches of those kinds take their prefetching kernels
    /// ([`set_next_row_prefetch`](Self::set_next_row_prefetch)).
    next_row_prefetch: bool,
    /// The split kernels' partial statistics ([`LaunchPlan::partials`]); grows, never
    /// shrinks, and is ordered across streams as `staging` is.
    partials: Mutex<Option<Partials>>,
}

/// The scratch buffer of the split kernels (two f32 per entry), with the event recorded
/// after the last launch pair that used it.
#[derive(Debug)]
struct Partials {
    buffer: CudaSlice<f32>,
    released: CudaEvent,
}

/// The device buffer host lengths are copied into (keys, then queries), shared by every
/// stream the handle launches on. `released` is recorded after each launch that reads it and
/// waited for before the next copy, on whatever stream: the handle orders its own buffer
/// itself, so it stays correct with cudarc's event tracking disabled (as graph capture
/// needs).
#[derive(Debug)]
struct Staging {
    buffer: CudaSlice<i32>,
    released: CudaEvent,
}

impl CudaSoftmax {
    /// Loads the kernels into `ctx` and asks the driver how many blocks of each, and how
    /// many thread-block clusters, the device runs at once (for the launches' grids: see
    /// [`set_grid_fitting`](Self::set_grid_fitting)); once per context is enough, and
    /// [`share`](Self::share) reuses all of it. Fails with [`Error::KernelsNotBuilt`] if
    /// this build has no kernels and [`Error::UnsupportedDevice`] below compute capability
    /// 8.0.
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self> {
        let (major, minor) = ctx.compute_capability()?;
        let target = ptx_target_for(major, minor)?;
        let attribute = |a| ctx.attribute(a).map(|v| v.max(0) as u32);
        let mut limits = DeviceLimits {
            sm_count: attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            max_threads_per_sm: attribute(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR,
            )?,
            max_shared_per_block: attribute(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )?,
            shared_per_sm: attribute(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
            )?,
            clusters: target >= 90,
            reserved_shared_per_block: attribute(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK,
            )?,
            cluster_residency: ClusterResidency::UNKNOWN,
        };
        let mut functions = HashMap::new();
        let mut occupancy = HashMap::new();
        let mut first_passes = HashMap::new();
        let mut prefetching = HashMap::new();
        for direction in [Direction::Forward, Direction::Backward] {
            let (_, image) = module_image_for(direction.module(), major, minor)
                .ok_or(Error::UnsupportedDevice { major, minor })?;
            let module = load_module_image(ctx, image)?;
            for dtype in DType::ALL {
                for kind in KernelKind::all(dtype, limits.clusters, direction) {
                    let load = |name: &str| -> Result<CudaFunction> {
                        let function = module.load_function(name)?;
                        if let KernelKind::BlockRegs { .. }
                        | KernelKind::BlockCached { .. }
                        | KernelKind::Cluster { .. } = kind
                        {
                            // Above 48 KiB a block's dynamic shared memory needs an opt-in
                            // (block_regs: the 16-bit forward's weight cache, 64 KiB at
                            // 16384 keys).
                            function.set_attribute(
                                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                limits.max_shared_per_block as i32,
                            )?;
                        }
                        Ok(function)
                    };
                    let key = (direction, kind, dtype);
                    let function = load(&kind.name(dtype, direction))?;
                    occupancy.insert(key, kernel_occupancy(&function));
                    functions.insert(key, function);
                    if let Some(name) = kind.first_pass_name(dtype, direction) {
                        first_passes.insert(key, module.load_function(&name)?);
                    }
                    if let Some(name) = kind.prefetch_name(dtype, direction) {
                        let function = load(&name)?;
                        prefetching.insert(key, (function.clone(), kernel_occupancy(&function)));
                    }
                }
            }
        }
        // Any cluster kernel asks how many clusters fit (in blocks of a warp, so that its
        // shared memory alone sets its occupancy).
        let probe = KernelKind::Cluster {
            pack: 1,
            cached: false,
        };
        if let Some(function) = functions.get(&(Direction::Forward, probe, DType::F32)) {
            limits.cluster_residency = probe_cluster_residency(ctx, function, &limits);
        }
        Ok(CudaSoftmax {
            ctx: ctx.clone(),
            limits,
            functions,
            occupancy,
            l2_hints: true,
            grid_fitting: true,
            weight_cache: true,
            staging: Mutex::new(None),
            first_passes,
            prefetching,
            next_row_prefetch: false,
            partials: Mutex::new(None),
        })
    }

    /// Whether the kernels for rows too long to keep on chip, which read each row's valid
    /// scores twice (once for the softmax statistics, once to write), give the L2 cache
    /// eviction priorities: the first read's lines are kept (`evict_last`) for the second,
    /// their last use (`evict_first`). On by default. Turned off, those loads change no
    /// line's priority (`evict_unchanged`), e.g. where the caller keeps its own data
    /// persisting in L2; the results are the same either way. Other kernels read each
    /// score once and give no priorities.
    ///
    /// ```no_run
    /// # fn main() -> masked_softmax::Result<()> {
    /// let ctx = masked_softmax::cuda::open_device(0)?;
    /// let mut softmax = masked_softmax::cuda::CudaSoftmax::new(&ctx)?;
    /// softmax.set_l2_hints(false);
    /// assert!(!softmax.l2_hints());
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_l2_hints(&mut self, on: bool) {
        self.l2_hints = on;
    }

    /// See [`set_l2_hints`](Self::set_l2_hints).
    pub fn l2_hints(&self) -> bool {
        self.l2_hints
    }

    /// Whether the kinds compiled to fetch ahead ([`KernelKind::prefetch_name`]) take
    /// their `*_prefetch_*` kernels in place of the planned ones (same launch, same
    /// results): the block kernels that hold one row at a time ask the L2 cache for the
    /// block's next row while they work on one, so that its loads hit the L2 rather than
    /// wait on DRAM; the rows kernels the planner gives rows of 1, 7, 32 and 64 keys fetch
    /// each batch's lengths a batch ahead, so that a row's length and score loads do not
    /// wait out two memory latencies in turn; those of 16-byte packs at 77 to 1024 keys ask
    /// the L2 for each warp's next batch of rows (lengths two batches ahead). What each
    /// kind's does: [`KernelKind::fetch_ahead`]. Off by default: it is the benchmark's
    /// `+prefetch` variant until a GPU run says where it helps. Other kinds are launched as
    /// ever.
    ///
    /// ```no_run
    /// # fn main() -> masked_softmax::Result<()> {
    /// let ctx = masked_softmax::cuda::open_device(0)?;
    /// let mut softmax = masked_softmax::cuda::CudaSoftmax::new(&ctx)?;
    /// softmax.set_next_row_prefetch(true);
    /// assert!(softmax.next_row_prefetch());
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_next_row_prefetch(&mut self, on: bool) {
        self.next_row_prefetch = on;
    }

    /// See [`set_next_row_prefetch`](Self::set_next_row_prefetch).
    pub fn next_row_prefetch(&self) -> bool {
        self.next_row_prefetch
    }

    /// The prefetching kernel this handle launches for `kind`, if it takes one
    /// ([`set_next_row_prefetch`](Self::set_next_row_prefetch)).
    fn prefetch_instance(
        &self,
        direction: Direction,
        kind: KernelKind,
        dtype: DType,
    ) -> Option<&(CudaFunction, KernelOccupancy)> {
        self.next_row_prefetch
            .then(|| self.prefetching.get(&(direction, kind, dtype)))
            .flatten()
    }

    /// Whether launches size their grids by what the device runs at once: the kernels'
    /// occupancy by threads and registers as the driver counts it
    /// ([`LaunchPlan::fit_resident`]), the system's shared memory reservation per block,
    /// and the clusters that fit the GPCs ([`ClusterResidency`]). On by default. Turned
    /// off, grids are counted by threads and shared memory alone, as before v10, for the
    /// benchmark to compare (a weight cache is then granted by that count too, so it may
    /// cost a block: an A100's 16-bit forward at 2048 keys runs 17 blocks a multiprocessor
    /// where its registers allow 18). Every kernel strides over its rows by the grid, so a
    /// kernel computes the same on either grid; but the planner may also choose another
    /// kernel with it off (a cached cluster where it counts more clusters fitting than do),
    /// whose outputs meet the contract as well, not bit for bit the same.
    pub fn set_grid_fitting(&mut self, on: bool) {
        self.grid_fitting = on;
    }

    /// See [`set_grid_fitting`](Self::set_grid_fitting).
    pub fn grid_fitting(&self) -> bool {
        self.grid_fitting
    }

    /// Whether the 16-bit forward's raw-pair kernels ([`KernelKind::keeps_weights`]: the
    /// rows kernels of 256 to 1024 keys, block_regs of 2048 to 16384) get dynamic shared
    /// memory to keep each row's weights in from the sum to the store, where the device
    /// has room for it without losing a block a multiprocessor
    /// ([`LaunchPlan::weight_cache_bytes`]). On by default. Turned off, they compute each
    /// weight twice, as before v22 (one more `exp` an element), with the same results: for
    /// the benchmark and the tests to run both loops. Other kernels are launched as ever.
    ///
    /// ```no_run
    /// # fn main() -> masked_softmax::Result<()> {
    /// let ctx = masked_softmax::cuda::open_device(0)?;
    /// let mut softmax = masked_softmax::cuda::CudaSoftmax::new(&ctx)?;
    /// softmax.set_weight_cache(false);
    /// assert!(!softmax.weight_cache());
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_weight_cache(&mut self, on: bool) {
        self.weight_cache = on;
    }

    /// See [`set_weight_cache`](Self::set_weight_cache).
    pub fn weight_cache(&self) -> bool {
        self.weight_cache
    }

    /// The launch this handle makes for a problem: the kernel `kind`, or the planner's if
    /// `None` (`Ok(None)` if `kind` cannot run it), with the grid fitted as
    /// [`set_grid_fitting`](Self::set_grid_fitting) says and a weight cache as
    /// [`set_weight_cache`](Self::set_weight_cache) does. `buffers` are the addresses the
    /// launch would take (their offsets against 16-byte boundaries choose the kernels).
    pub fn plan(
        &self,
        kind: Option<KernelKind>,
        direction: Direction,
        spec: &Spec,
        dtype: DType,
        buffers: Buffers,
    ) -> Result<Option<LaunchPlan>> {
        let limits = match self.grid_fitting {
            true => self.limits,
            false => DeviceLimits {
                reserved_shared_per_block: 0,
                cluster_residency: ClusterResidency::UNKNOWN,
                ..self.limits
            },
        };
        let Some(mut plan) = plan_launch(kind, direction, spec, dtype, limits, buffers)? else {
            return Ok(None);
        };
        if self.grid_fitting
            && let Some(occupancy) = self.occupancy(direction, plan.kernel, dtype)
        {
            plan.fit_resident(&limits, &occupancy);
        }
        if !self.weight_cache {
            plan.drop_weight_cache();
        }
        Ok(Some(plan))
    }

    /// A handle on the same loaded kernels (nothing is loaded again), with its own
    /// settings and its own buffers (host lengths, the split kernels' scratch).
    pub fn share(&self) -> Self {
        CudaSoftmax {
            ctx: self.ctx.clone(),
            limits: self.limits,
            functions: self.functions.clone(),
            occupancy: self.occupancy.clone(),
            l2_hints: self.l2_hints,
            grid_fitting: self.grid_fitting,
            weight_cache: self.weight_cache,
            staging: Mutex::new(None),
            first_passes: self.first_passes.clone(),
            prefetching: self.prefetching.clone(),
            next_row_prefetch: self.next_row_prefetch,
            partials: Mutex::new(None),
        }
    }

    /// The context the kernels are loaded in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// What the planner knows about the device.
    pub fn limits(&self) -> DeviceLimits {
        self.limits
    }

    /// How many blocks of the loaded kernel `kind` a multiprocessor runs at once by its
    /// threads and registers, as the driver counted them when the handle loaded it
    /// (`None` for a kind not loaded): launches cut their grids to it
    /// ([`LaunchPlan::fit_resident`]). The prefetching kernel's where this handle
    /// launches that ([`set_next_row_prefetch`](Self::set_next_row_prefetch)).
    pub fn occupancy(
        &self,
        direction: Direction,
        kind: KernelKind,
        dtype: DType,
    ) -> Option<KernelOccupancy> {
        match self.prefetch_instance(direction, kind, dtype) {
            Some(&(_, occupancy)) => Some(occupancy),
            None => self.occupancy.get(&(direction, kind, dtype)).copied(),
        }
    }

    /// `y = softmax(scale * x)` over each row's valid keys and exact zeros elsewhere,
    /// enqueued on `stream`; `lengths` is a [`Lengths`] or a [`DeviceLengths`]. `x` and `y`
    /// must not overlap (see [`forward_in_place`](Self::forward_in_place)). Every misuse is
    /// an error before anything is launched, and nothing waits for the GPU. With device
    /// lengths nothing is allocated, so the call can be captured in a CUDA graph; host
    /// lengths are copied into a buffer the handle keeps (allocated on first use, grown
    /// when a larger batch comes). That buffer is one per handle: calls with host lengths
    /// on different streams through one handle wait for each other's copy (an event, no
    /// host synchronisation); give each stream its own handle with [`share`](Self::share),
    /// or pass [`DeviceLengths`]. Any row stride and buffer offset work; the kernels move
    /// 16 bytes at a time when `x` and `y` sit alike against 16-byte boundaries (rows off
    /// one, as odd strides make them, are seen shifted), else single elements.
    pub fn forward<'a, T: Element>(
        &self,
        stream: &Arc<CudaStream>,
        spec: &Spec,
        lengths: impl Into<LengthsArg<'a>>,
        x: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.forward_on(None, stream, spec, lengths.into(), x, y)
            .map(|_| ())
    }

    /// [`forward`](Self::forward) on the kernel `kind` rather than the planner's choice, for
    /// benchmarks and tests that compare kernels on one problem (the kinds are listed by
    /// [`KernelKind::all`]). `Ok(false)`, with nothing launched, if that kernel cannot run
    /// the problem (see [`plan_kernel`](crate::plan::plan_kernel)), and for
    /// [`KernelKind::Split`] while `stream` is capturing a CUDA graph (its scratch buffer
    /// may have to be allocated or grown, which a capture cannot hold).
    pub fn forward_with_kernel<'a, T: Element>(
        &self,
        kind: KernelKind,
        stream: &Arc<CudaStream>,
        spec: &Spec,
        lengths: impl Into<LengthsArg<'a>>,
        x: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<bool> {
        self.forward_on(Some(kind), stream, spec, lengths.into(), x, y)
    }

    fn forward_on<T: Element>(
        &self,
        kind: Option<KernelKind>,
        stream: &Arc<CudaStream>,
        spec: &Spec,
        lengths: LengthsArg<'_>,
        x: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<bool> {
        self.check::<T>(stream, spec)?;
        check_buffer("x", x.len(), &spec.shape)?;
        check_buffer("y", y.len(), &spec.shape)?;
        self.check_context("x", x.stream())?;
        self.check_context("y", y.stream())?;
        self.with_device_lengths(stream, spec, lengths, |lengths| {
            let (x_bytes, y_bytes) = (x.num_bytes() as u64, y.num_bytes() as u64);
            let (x_ptr, _x_guard) = x.device_ptr(stream);
            let (y_ptr, _y_guard) = y.device_ptr_mut(stream);
            check_disjoint(("x", x_ptr, x_bytes), ("y", y_ptr, y_bytes))?;
            let buffers = Buffers {
                x: x_ptr,
                y: y_ptr,
                ..Buffers::default()
            };
            self.launch::<T>(stream, spec, lengths, buffers, Direction::Forward, kind)
        })
    }

    /// [`forward`](Self::forward) with the probabilities written over the scores.
    pub fn forward_in_place<'a, T: Element>(
        &self,
        stream: &Arc<CudaStream>,
        spec: &Spec,
        lengths: impl Into<LengthsArg<'a>>,
        xy: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.check::<T>(stream, spec)?;
        check_buffer("xy", xy.len(), &spec.shape)?;
        self.check_context("xy", xy.stream())?;
        self.with_device_lengths(stream, spec, lengths.into(), |lengths| {
            let (ptr, _guard) = xy.device_ptr_mut(stream);
            let buffers = Buffers {
                x: ptr,
                y: ptr,
                ..Buffers::default()
            };
            self.launch::<T>(stream, spec, lengths, buffers, Direction::Forward, None)
                .map(|_| ())
        })
    }

    /// The softmax gradient `dx = scale * y * (dy - sum_valid(y * dy))` on each row's valid
    /// keys, exact zeros elsewhere, from the forward's output `y` and the incoming gradient
    /// `dy`, enqueued on `stream`, with the forward's `spec` and lengths. Only valid
    /// positions of `y` and `dy` are read. `dx` must overlap neither (see
    /// [`backward_in_place`](Self::backward_in_place)). Same conventions as
    /// [`forward`](Self::forward): typed errors before launch, no synchronisation, no
    /// allocation with device lengths.
    ///
    /// One training step's worth, forward then backward:
    ///
    /// ```no_run
    /// use masked_softmax::cuda::{open_device, CudaSoftmax, DeviceLengths};
    /// use masked_softmax::{Lengths, Shape, Spec};
    ///
    /// # fn main() -> masked_softmax::Result<()> {
    /// let ctx = open_device(0)?;
    /// let stream = ctx.default_stream();
    /// let softmax = CudaSoftmax::new(&ctx)?;
    /// let spec = Spec::new(Shape::new(2, 4, 8, 8)).causal().scale(0.35);
    /// let n = 2 * 4 * 8 * 8;
    /// let kv = stream.clone_htod(&[8i32, 5])?;
    ///
    /// let scores = stream.clone_htod(&vec![0.25f32; n])?;
    /// let mut probs = stream.alloc_zeros::<f32>(n)?;
    /// softmax.forward(&stream, &spec, DeviceLengths::keys(&kv), &scores, &mut probs)?;
    ///
    /// // ... the loss gives d(loss)/d(probs); here, all ones ...
    /// let mut grad = stream.clone_htod(&vec![1.0f32; n])?;
    /// // d(loss)/d(scores), written over the incoming gradient.
    /// softmax.backward_in_place(&stream, &spec, DeviceLengths::keys(&kv), &probs, &mut grad)?;
    /// // Host lengths work too (validated, then staged by the handle).
    /// let mut dx = stream.alloc_zeros::<f32>(n)?;
    /// let dy = stream.clone_htod(&vec![1.0f32; n])?;
    /// softmax.backward(&stream, &spec, Lengths::keys(&[8, 5]), &probs, &dy, &mut dx)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn backward<'a, T: Element>(
        &self,
        stream: &Arc<CudaStream>,
        spec: &Spec,
        lengths: impl Into<LengthsArg<'a>>,
        y: &impl DevicePtr<T>,
        dy: &impl DevicePtr<T>,
        dx: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.backward_on(None, stream, spec, lengths.into(), y, dy, dx)
            .map(|_| ())
    }

    /// [`backward`](Self::backward) on the kernel `kind` rather than the planner's choice;
    /// see [`forward_with_kernel`](Self::forward_with_kernel).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_with_kernel<'a, T: Element>(
        &self,
        kind: KernelKind,
        stream: &Arc<CudaStream>,
        spec: &Spec,
        lengths: impl Into<LengthsArg<'a>>,
        y: &impl DevicePtr<T>,
        dy: &impl DevicePtr<T>,
        dx: &mut impl DevicePtrMut<T>,
    ) -> Result<bool> {
        self.backward_on(Some(kind), stream, spec, lengths.into(), y, dy, dx)
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_on<T: Element>(
        &self,
        kind: Option<KernelKind>,
        stream: &Arc<CudaStream>,
        spec: &Spec,
        lengths: LengthsArg<'_>,
        y: &impl DevicePtr<T>,
        dy: &impl DevicePtr<T>,
        dx: &mut impl DevicePtrMut<T>,
    ) -> Result<bool> {
        self.check::<T>(stream, spec)?;
        for (name, len, s) in [
            ("y", y.len(), y.stream()),
            ("dy", dy.len(), dy.stream()),
            ("dx", dx.len(), dx.stream()),
        ] {
            check_buffer(name, len, &spec.shape)?;
            self.check_context(name, s)?;
        }
        self.with_device_lengths(stream, spec, lengths, |lengths| {
            let (y_bytes, dy_bytes, dx_bytes) = (
                y.num_bytes() as u64,
                dy.num_bytes() as u64,
                dx.num_bytes() as u64,
            );
            let (y_ptr, _y_guard) = y.device_ptr(stream);
            let (dy_ptr, _dy_guard) = dy.device_ptr(stream);
            let (dx_ptr, _dx_guard) = dx.device_ptr_mut(stream);
            check_disjoint(("y", y_ptr, y_bytes), ("dx", dx_ptr, dx_bytes))?;
            check_disjoint(("dy", dy_ptr, dy_bytes), ("dx", dx_ptr, dx_bytes))?;
            let buffers = Buffers {
                x: y_ptr,
                dy: dy_ptr,
                y: dx_ptr,
                ..Buffers::default()
            };
            self.launch::<T>(stream, spec, lengths, buffers, Direction::Backward, kind)
        })
    }

    /// [`backward`](Self::backward) with `dx` written over `dy`. `y` must not overlap it.
    pub fn backward_in_place<'a, T: Element>(
        &self,
        stream: &Arc<CudaStream>,
        spec: &Spec,
        lengths: impl Into<LengthsArg<'a>>,
        y: &impl DevicePtr<T>,
        dy_dx: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.check::<T>(stream, spec)?;
        check_buffer("y", y.len(), &spec.shape)?;
        check_buffer("dy_dx", dy_dx.len(), &spec.shape)?;
        self.check_context("y", y.stream())?;
        self.check_context("dy_dx", dy_dx.stream())?;
        self.with_device_lengths(stream, spec, lengths.into(), |lengths| {
            let (y_bytes, g_bytes) = (y.num_bytes() as u64, dy_dx.num_bytes() as u64);
            let (y_ptr, _y_guard) = y.device_ptr(stream);
            let (g_ptr, _g_guard) = dy_dx.device_ptr_mut(stream);
            check_disjoint(("y", y_ptr, y_bytes), ("dy_dx", g_ptr, g_bytes))?;
            let buffers = Buffers {
                x: y_ptr,
                dy: g_ptr,
                y: g_ptr,
                ..Buffers::default()
            };
            self.launch::<T>(stream, spec, lengths, buffers, Direction::Backward, None)
                .map(|_| ())
        })
    }

    /// Runs `f` with the lengths on the device: device lengths after their checks, host
    /// lengths after validation and a copy into the staging buffer (held locked meanwhile).
    fn with_device_lengths<R>(
        &self,
        stream: &Arc<CudaStream>,
        spec: &Spec,
        lengths: LengthsArg<'_>,
        f: impl FnOnce(DeviceLengths<'_>) -> Result<R>,
    ) -> Result<R> {
        let batch = spec.shape.batch;
        let host = match lengths {
            LengthsArg::Device(device) => {
                for (kind, l) in [(LengthKind::Key, device.kv), (LengthKind::Query, device.q)] {
                    let Some(l) = l else { continue };
                    if l.len() != batch {
                        return Err(Error::LengthsSize {
                            kind,
                            len: l.len(),
                            batch,
                        });
                    }
                    self.check_context("lengths", l.stream())?;
                }
                return f(device);
            }
            LengthsArg::Host(host) => host,
        };
        host.validate(&spec.shape)?;
        if host.kv.is_none() && host.q.is_none() {
            return f(DeviceLengths::none());
        }
        if stream.capture_status()? != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
            return Err(Error::HostLengthsInCapture);
        }
        let mut guard = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(staging) = guard.as_ref() {
            // The last launch that read the buffer, on any stream, must be done with it.
            stream.wait(&staging.released)?;
        }
        if guard.as_ref().is_none_or(|s| s.buffer.len() < 2 * batch) {
            let buffer = stream.alloc_zeros::<i32>((2 * batch).next_power_of_two().max(256))?;
            let released = self.ctx.new_event(None)?;
            if let Some(old) = guard.replace(Staging { buffer, released }) {
                // The old buffer is freed on the stream that allocated it: after its last use.
                old.buffer.stream().wait(&old.released)?;
            }
        }
        let staging = guard.as_mut().expect("allocated above");
        if let Some(kv) = host.kv {
            stream.memcpy_htod(kv, &mut staging.buffer.slice_mut(0..batch))?;
        }
        if let Some(q) = host.q {
            stream.memcpy_htod(q, &mut staging.buffer.slice_mut(batch..2 * batch))?;
        }
        let (kv, q) = (
            staging.buffer.slice(0..batch),
            staging.buffer.slice(batch..2 * batch),
        );
        let result = f(DeviceLengths {
            kv: host.kv.map(|_| &kv as &dyn DevicePtr<i32>),
            q: host.q.map(|_| &q as &dyn DevicePtr<i32>),
        });
        staging.released.record(stream)?;
        result
    }

    /// Plans and launches: `buffers` holds x/y (forward) or y/dy/dx (backward).
    fn launch<T: Element>(
        &self,
        stream: &Arc<CudaStream>,
        spec: &Spec,
        lengths: DeviceLengths<'_>,
        mut buffers: Buffers,
        direction: Direction,
        kind: Option<KernelKind>,
    ) -> Result<bool> {
        let (kv_ptr, _kv_guard) = lengths.kv.map(|l| l.device_ptr(stream)).unzip();
        let (q_ptr, _q_guard) = lengths.q.map(|l| l.device_ptr(stream)).unzip();
        buffers.kv_lens = kv_ptr.unwrap_or(0);
        buffers.q_lens = q_ptr.unwrap_or(0);
        let Some(plan) = self.plan(kind, direction, spec, T::DTYPE, buffers)? else {
            return Ok(false);
        };
        // Every kernel the planner picks is loaded (a unit test checks the PTX holds them);
        // a kind named by the caller may be one that is not compiled.
        let function = match self.prefetch_instance(direction, plan.kernel, plan.dtype) {
            Some((function, _)) => Some(function),
            None => self.functions.get(&(direction, plan.kernel, plan.dtype)),
        };
        let Some(function) = function else {
            return match kind {
                Some(_) => Ok(false),
                None => Err(Error::MissingKernel {
                    name: plan.kernel_name(),
                }),
            };
        };
        let mut params = plan.params;
        if !self.l2_hints {
            params.flags |= MASK_PLAIN_STREAM;
        }
        let (mut x, mut dy, mut y) = (buffers.x, buffers.dy, buffers.y);
        let mut forward_args: [*mut c_void; 3] = [
            (&raw mut x).cast(),
            (&raw mut y).cast(),
            (&raw mut params).cast(),
        ];
        let mut backward_args: [*mut c_void; 4] = [
            (&raw mut x).cast(),
            (&raw mut dy).cast(),
            (&raw mut y).cast(),
            (&raw mut params).cast(),
        ];
        if let KernelKind::Split { .. } = plan.kernel {
            debug_assert!(plan.partials > 0);
            return self.launch_split(stream, &plan, params, buffers);
        }
        let args: &mut [*mut c_void] = match direction {
            Direction::Forward => &mut forward_args,
            Direction::Backward => &mut backward_args,
        };
        // SAFETY: forward kernels take (const T* x, T* y, MaskParams) and backward kernels
        // (const T* y, const T* dy, T* dx, MaskParams); the buffers hold `required_len`
        // elements of T and the lengths `batch` i32 (checked by every entry point).
        unsafe { launch_raw(stream, function, &plan, args) }?;
        Ok(true)
    }

    /// A [`KernelKind::Split`] launch: the statistics pass, then the writing pass, both
    /// with the handle's partials buffer, allocated or grown here. So not while the stream
    /// is being captured into a graph: `Ok(false)` then, as for a kind that cannot run the
    /// problem. (Only named kinds get here: the planner does not pick `Split`.)
    fn launch_split(
        &self,
        stream: &Arc<CudaStream>,
        plan: &LaunchPlan,
        mut params: KernelParams,
        buffers: Buffers,
    ) -> Result<bool> {
        let key = (plan.direction, plan.kernel, plan.dtype);
        let (Some(first), Some(second)) = (self.first_passes.get(&key), self.functions.get(&key))
        else {
            return Ok(false);
        };
        if stream.capture_status()? != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
            return Ok(false);
        }
        let floats = usize::try_from(plan.partials)
            .ok()
            .and_then(|n| n.checked_mul(2))
            .ok_or(Error::SizeOverflow {
                what: "split partials",
            })?;
        let mut guard = self.partials.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(partials) = guard.as_ref() {
            // The last launch pair that used the buffer, on any stream, must be done with it.
            stream.wait(&partials.released)?;
        }
        if guard.as_ref().is_none_or(|p| p.buffer.len() < floats) {
            let buffer = stream.alloc_zeros::<f32>(floats.next_power_of_two().max(1024))?;
            let released = self.ctx.new_event(None)?;
            if let Some(old) = guard.replace(Partials { buffer, released }) {
                // The old buffer is freed on the stream that allocated it: after its last use.
                old.buffer.stream().wait(&old.released)?;
            }
        }
        let partials = guard.as_mut().expect("allocated above");
        let result = {
            let (mut scratch, _guard) = partials.buffer.device_ptr_mut(stream);
            let (mut x, mut dy, mut y) = (buffers.x, buffers.dy, buffers.y);
            let p: *mut c_void = (&raw mut params).cast();
            let (x_arg, dy_arg, y_arg, s_arg): (
                *mut c_void,
                *mut c_void,
                *mut c_void,
                *mut c_void,
            ) = (
                (&raw mut x).cast(),
                (&raw mut dy).cast(),
                (&raw mut y).cast(),
                (&raw mut scratch).cast(),
            );
            let (mut first_args, mut second_args): (Vec<*mut c_void>, Vec<*mut c_void>) =
                match plan.direction {
                    Direction::Forward => (vec![x_arg, s_arg, p], vec![x_arg, y_arg, s_arg, p]),
                    Direction::Backward => (
                        vec![x_arg, dy_arg, s_arg, p],
                        vec![x_arg, dy_arg, y_arg, s_arg, p],
                    ),
                };
            // SAFETY: the split kernels take (x, float2* partials, MaskParams) and (x, y,
            // const float2* partials, MaskParams) forward, (y, dy, partials, MaskParams) and
            // (y, dy, dx, partials, MaskParams) backward; `partials` holds plan.partials
            // float2, the other buffers what every entry point checked.
            unsafe { launch_raw(stream, first, plan, &mut first_args) }
                .and_then(|()| unsafe { launch_raw(stream, second, plan, &mut second_args) })
        };
        partials.released.record(stream)?;
        result.map(|()| true)
    }

    /// Checks shared by every entry point: spec and stream.
    fn check<T: Element>(&self, stream: &CudaStream, spec: &Spec) -> Result<()> {
        spec.validate(std::mem::size_of::<T>())?;
        self.check_context("stream", stream)
    }

    fn check_context(&self, buffer: &'static str, stream: &CudaStream) -> Result<()> {
        if stream.context().cu_ctx() != self.ctx.cu_ctx() {
            return Err(Error::ForeignContext { buffer });
        }
        Ok(())
    }
}

/// How many blocks of `function` a multiprocessor runs at once at each block size, by its
/// threads and registers (no dynamic shared memory), as the driver counts them; sizes it
/// does not answer stay unknown.
fn kernel_occupancy(function: &CudaFunction) -> KernelOccupancy {
    let mut occupancy = KernelOccupancy::UNKNOWN;
    for block in KernelOccupancy::BLOCK_SIZES {
        if let Ok(n) = function.occupancy_max_active_blocks_per_multiprocessor(block, 0, None) {
            occupancy.record(block, n);
        }
    }
    occupancy
}

/// How many clusters of each size the device runs at once at 1 to 8 blocks a
/// multiprocessor ([`ClusterResidency`]), asked of the driver with `function` (a cluster
/// kernel) in blocks of one warp, whose registers cannot hold it under 8 blocks, its
/// dynamic shared memory sized so that exactly that many blocks fit a multiprocessor. An
/// entry the driver does not confirm stays unknown (the planner then counts
/// multiprocessors alone); nothing here fails the handle.
fn probe_cluster_residency(
    ctx: &CudaContext,
    function: &CudaFunction,
    limits: &DeviceLimits,
) -> ClusterResidency {
    use cudarc::driver::sys;
    const BLOCK: u32 = 32;
    let mut table = ClusterResidency::UNKNOWN;
    if ctx.bind_to_thread().is_err() {
        return table;
    }
    for blocks_per_sm in 1..=ClusterResidency::MAX_BLOCKS_PER_SM {
        let shared = (limits.shared_per_sm / blocks_per_sm)
            .saturating_sub(limits.reserved_shared_per_block)
            .min(limits.max_shared_per_block)
            & !1023;
        let occupancy =
            function.occupancy_max_active_blocks_per_multiprocessor(BLOCK, shared as usize, None);
        if occupancy.ok() != Some(blocks_per_sm) {
            continue;
        }
        for cluster in ClusterResidency::CLUSTER_SIZES {
            let mut attribute = cluster_dimension(cluster);
            let config = sys::CUlaunchConfig {
                gridDimX: cluster * limits.sm_count.max(1) * blocks_per_sm,
                gridDimY: 1,
                gridDimZ: 1,
                blockDimX: BLOCK,
                blockDimY: 1,
                blockDimZ: 1,
                sharedMemBytes: shared,
                hStream: std::ptr::null_mut(),
                attrs: &mut attribute,
                numAttrs: 1,
            };
            let mut clusters: std::ffi::c_int = 0;
            // SAFETY: `config` and `attribute` outlive the call, which only reads them.
            let status = unsafe {
                sys::cuOccupancyMaxActiveClusters(&mut clusters, function.cu_function(), &config)
            };
            if status == sys::CUresult::CUDA_SUCCESS && clusters > 0 {
                table.record(cluster, blocks_per_sm, clusters as u32);
            }
        }
    }
    table
}

/// The launch attribute of a 1-D thread-block cluster of `blocks` blocks.
fn cluster_dimension(blocks: u32) -> cudarc::driver::sys::CUlaunchAttribute {
    use cudarc::driver::sys;
    // SAFETY: zero is a valid bit pattern for this plain C union.
    let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
    value.clusterDim = sys::CUlaunchAttributeValue_union__bindgen_ty_1 {
        x: blocks,
        y: 1,
        z: 1,
    };
    sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
        pad: [0; 4],
        value,
    }
}

/// An error if the byte ranges of two buffers overlap.
fn check_disjoint(a: (&'static str, u64, u64), b: (&'static str, u64, u64)) -> Result<()> {
    let ((a_name, a_ptr, a_len), (b_name, b_ptr, b_len)) = (a, b);
    if a_ptr < b_ptr + b_len && b_ptr < a_ptr + a_len {
        return Err(Error::Aliasing {
            a: a_name,
            b: b_name,
        });
    }
    Ok(())
}

/// Launches a planned kernel with `cuLaunchKernelEx`, with the cluster dimension attribute
/// when the plan has clusters. Allocates nothing.
///
/// # Safety
/// `args` must point at values matching the kernel's parameters, valid for what it does.
unsafe fn launch_raw(
    stream: &CudaStream,
    function: &CudaFunction,
    plan: &LaunchPlan,
    args: &mut [*mut c_void],
) -> Result<()> {
    use cudarc::driver::sys;
    stream.context().bind_to_thread()?;
    let mut cluster = cluster_dimension(plan.cluster);
    let config = sys::CUlaunchConfig {
        gridDimX: plan.grid,
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: plan.block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: plan.shared_bytes,
        hStream: stream.cu_stream(),
        attrs: &mut cluster,
        numAttrs: u32::from(plan.cluster > 1),
    };
    // SAFETY: the caller vouches for `args`; `config` and `cluster` outlive the call, which
    // copies them.
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            function.cu_function(),
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI sets MASKED_SOFTMAX_REQUIRE_KERNELS=1: there the kernels must be embedded, every
    /// one the launcher loads.
    #[test]
    fn modules_are_found_by_name_and_target() {
        assert_eq!(module_image("no_such_file"), None);
        if kernels_built() {
            let baseline = images::MODULES.iter().filter(|m| m.stem == "baseline");
            assert!(baseline.clone().count() >= 1);
            assert!(
                baseline
                    .clone()
                    .all(|m| m.entries.contains(&"baseline_empty"))
            );
            // Every file for every target: Hopper loads none from the base target's PTX.
            assert_eq!(module_image_for("baseline", 9, 0).map(|m| m.0), Some(90));
            assert_eq!(
                module_image_for("masked_softmax", 8, 6).map(|m| m.0),
                Some(80)
            );
            assert_eq!(
                module_image_for("masked_softmax", 9, 0).map(|m| m.0),
                Some(90)
            );
            assert_eq!(
                module_image_for("masked_softmax", 12, 0).map(|m| m.0),
                Some(90)
            );
            assert_eq!(module_image_for("masked_softmax", 7, 5), None);
        }
    }

    #[test]
    fn devices_below_compute_capability_8_are_refused() {
        for (major, minor) in [(7, 5), (6, 1), (3, 0)] {
            match ptx_target_for(major, minor) {
                Err(Error::UnsupportedDevice { .. }) => assert!(kernels_built()),
                Err(Error::KernelsNotBuilt) => assert!(!kernels_built()),
                other => panic!("{major}.{minor}: {other:?}"),
            }
        }
        if kernels_built() {
            assert_eq!(ptx_target_for(8, 0).unwrap(), 80);
            assert_eq!(ptx_target_for(8, 9).unwrap(), 80);
            assert_eq!(ptx_target_for(9, 0).unwrap(), 90);
            assert_eq!(ptx_target_for(10, 0).unwrap(), 90);
        } else {
            assert!(matches!(ptx_target_for(9, 0), Err(Error::KernelsNotBuilt)));
        }
        let message = Error::UnsupportedDevice { major: 7, minor: 5 }.to_string();
        assert!(
            message.contains("7.5") && message.contains("8.0"),
            "{message}"
        );
    }

    #[test]
    fn lengths_arguments_print_what_they_hold() {
        let arg: LengthsArg = DeviceLengths::none().into();
        assert_eq!(
            format!("{arg:?}"),
            "Device(DeviceLengths { kv_entries: None, q_entries: None })"
        );
        let kv = [3, 1];
        let arg: LengthsArg = Lengths::keys(&kv).into();
        assert!(
            format!("{arg:?}").starts_with("Host(Lengths { kv: Some([3, 1])"),
            "{arg:?}"
        );
    }

    #[test]
    fn a_machine_without_a_driver_gets_a_typed_error() {
        // SAFETY: only tries to dlopen libcuda.
        if unsafe { cudarc::driver::sys::is_culib_present() } {
            // A GPU machine: a device number past the last is NoDevice, not a panic.
            assert!(matches!(
                open_device(4096),
                Err(Error::NoDevice { ordinal: 4096, .. })
            ));
        } else {
            let err = open_device(0).unwrap_err();
            assert!(matches!(err, Error::NoDriver), "{err:?}");
            assert!(err.to_string().contains("libcuda"));
        }
    }

    #[test]
    fn kernels_are_embedded_where_required() {
        let required = std::env::var("MASKED_SOFTMAX_REQUIRE_KERNELS").is_ok_and(|v| v == "1");
        if !kernels_built() {
            assert!(
                !required,
                "MASKED_SOFTMAX_REQUIRE_KERNELS=1 but no kernels are embedded"
            );
            return;
        }
        assert!(PTX_TARGET.is_some());
        // Every target's module holds every kernel the launcher loads there, and no more
        // kernels than that.
        for direction in [Direction::Forward, Direction::Backward] {
            let modules = images::MODULES
                .iter()
                .filter(|m| m.stem == direction.module());
            for module in modules {
                let target = module.cap;
                let mut expected = 0;
                for dtype in DType::ALL {
                    for kind in KernelKind::all(dtype, target >= 90, direction) {
                        let names = std::iter::once(kind.name(dtype, direction))
                            .chain(kind.first_pass_name(dtype, direction))
                            .chain(kind.prefetch_name(dtype, direction));
                        for name in names {
                            assert!(
                                module.entries.contains(&name.as_str()),
                                "sm_{target} module lacks kernel {name}"
                            );
                            expected += 1;
                        }
                    }
                }
                // What the driver loads: a whole fatbin (its header: magic, version, header
                // size, then the size of what follows), or the PTX where the build asked.
                let image = module.image;
                if PTX_TARGET.unwrap().contains(" ptx ") {
                    assert!(
                        image.starts_with(b"//") && !is_fatbin(image),
                        "sm_{target}: not PTX"
                    );
                } else {
                    assert!(is_fatbin(image), "sm_{target}: not a fatbin");
                    let size = u64::from_le_bytes(image[8..16].try_into().unwrap());
                    assert_eq!(size + 16, image.len() as u64, "sm_{target}: a cut fatbin");
                }
                assert_eq!(
                    image.as_ptr() as usize % 16,
                    0,
                    "sm_{target}: unaligned static"
                );
                let entries = module
                    .entries
                    .iter()
                    .filter(|e| e.starts_with("masked_softmax_"))
                    .count();
                assert_eq!(
                    entries, expected,
                    "sm_{target}: kernels the planner does not know"
                );
            }
        }
    }
}
