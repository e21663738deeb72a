//! The crate's error type: every misuse and every environment fault is one of these,
//! returned before anything is launched. Nothing in this crate panics on user input.

/// Which of the two length vectors a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthKind {
    /// `kv_len`: valid keys per batch entry (masks columns).
    Key,
    /// `q_len`: valid queries per batch entry (masks rows).
    Query,
}

impl std::fmt::Display for LengthKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LengthKind::Key => "key length (kv_len)",
            LengthKind::Query => "query length (q_len)",
        })
    }
}

/// Everything that can go wrong, as a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// One of `batch`, `heads`, `q_len`, `k_len` is zero.
    #[error(
        "dimension `{name}` is zero; every dimension of [batch, heads, q_len, k_len] must be at least 1"
    )]
    ZeroDimension {
        /// The dimension's name.
        name: &'static str,
    },

    /// Rows would overlap.
    #[error("row_stride {row_stride} is smaller than k_len {k_len}: rows would overlap")]
    RowStrideTooSmall {
        /// The stride given.
        row_stride: usize,
        /// The row length.
        k_len: usize,
    },

    /// The element count or byte size of the problem does not fit in memory addresses.
    #[error("the problem is too large to address: {what} overflows")]
    SizeOverflow {
        /// Which product overflowed.
        what: &'static str,
    },

    /// A sliding window of zero keys would mask every position.
    #[error("sliding window must be at least 1 key (got 0)")]
    ZeroWindow,

    /// The scale is NaN or infinite.
    #[error("scale must be finite (got {0})")]
    InvalidScale(f32),

    /// A lengths slice does not hold one entry per batch entry.
    #[error("{kind} slice has {len} entries but batch is {batch}")]
    LengthsSize {
        /// Which lengths.
        kind: LengthKind,
        /// Entries given.
        len: usize,
        /// Entries expected.
        batch: usize,
    },

    /// A host length lies outside `[0, max]`.
    #[error("{kind} {value} of batch entry {batch_index} is outside [0, {max}]")]
    LengthOutOfRange {
        /// Which lengths.
        kind: LengthKind,
        /// The batch entry.
        batch_index: usize,
        /// The value given.
        value: i32,
        /// The largest valid value (`k_len` or `q_len`).
        max: usize,
    },

    /// A buffer holds fewer elements than the shape needs.
    #[error("buffer `{buffer}` holds {len} elements but the shape needs {required}")]
    BufferTooShort {
        /// Which buffer (`x`, `y`, `dy`, ...).
        buffer: &'static str,
        /// Elements it holds.
        len: usize,
        /// Elements the shape needs: `(rows - 1) * row_stride + k_len`.
        required: usize,
    },

    /// Two buffers that must not overlap do.
    #[error(
        "buffers `{a}` and `{b}` overlap; they must be disjoint (to write the output over an \
         input, pass one buffer to forward_in_place (y over x) or backward_in_place (dx over dy))"
    )]
    Aliasing {
        /// First buffer.
        a: &'static str,
        /// Second buffer.
        b: &'static str,
    },

    /// A buffer or stream belongs to another CUDA context than the kernels' handle.
    #[error("`{buffer}` belongs to another CUDA context than this CudaSoftmax handle")]
    ForeignContext {
        /// Which buffer or stream.
        buffer: &'static str,
    },

    /// The planner picked a kernel this build did not load: the kernels and the planner
    /// are out of step (a bug; a unit test guards against it).
    #[error("this build has no kernel `{name}`, which the launch planner picked (a build bug)")]
    MissingKernel {
        /// The kernel's name.
        name: String,
    },

    /// Host lengths passed while the stream is capturing a CUDA graph: they would be copied
    /// into the handle's staging buffer at capture time, not at replay.
    #[error(
        "host lengths cannot be used while the stream captures a CUDA graph: pass DeviceLengths \
         (a device buffer the graph reads at every replay)"
    )]
    HostLengthsInCapture,

    /// A comparison against the reference failed (see [`crate::compare::Report`]).
    #[error("result does not match the reference: {0}")]
    Mismatch(String),

    /// The crate was built without nvcc, so it carries no kernels.
    #[error(
        "this build of masked-softmax carries no CUDA kernels: nvcc was not found when it was compiled. \
         Run `scripts/install-cuda-toolchain.sh` (or put nvcc 13.0 on PATH / set CUDA_PATH), then rebuild"
    )]
    KernelsNotBuilt,

    /// The CUDA driver library (libcuda) could not be loaded.
    #[error(
        "the CUDA driver library (libcuda.so) was not found: no NVIDIA driver is installed on this machine"
    )]
    NoDriver,

    /// The device asked for does not exist: the driver sees `count` devices (0: none is
    /// visible).
    #[error(
        "CUDA device {ordinal} does not exist: the driver sees {count} device(s) (check CUDA_VISIBLE_DEVICES)"
    )]
    NoDevice {
        /// The device number asked for.
        ordinal: usize,
        /// Devices the driver reports.
        count: usize,
    },

    /// The device is older than the kernels support.
    #[error(
        "device compute capability {major}.{minor} is not supported; masked-softmax needs 8.0 or newer"
    )]
    UnsupportedDevice {
        /// Major version.
        major: i32,
        /// Minor version.
        minor: i32,
    },

    /// An error reported by the CUDA driver.
    #[error("CUDA driver error: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
