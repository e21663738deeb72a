//! Runs the crate's CUDA kernel sources on the CPU, so that machines without a GPU (CI)
//! check the kernels themselves against the reference, not only the Rust around them.
//!
//! `build.rs` compiles every `kernels/*.cu` as C++ with `src/cuda_emu.h` force-included:
//! each CUDA thread becomes a fiber, blocks run one after another (the threads of odd
//! blocks, or clusters, in reverse order, so that a missing barrier shows in one order or
//! the other), warp shuffles and
//! barriers are exact rendezvous (a shuffle or barrier that some required thread never
//! reaches is reported as a deadlock), and vector accesses check their alignment.
//! [`GuardedBuffer`] puts guard pages around test buffers, so an out-of-bounds access
//! faults as it would under compute-sanitizer. Timing, inter-block races and hardware
//! limits are out of its reach: the GPU suite remains the judge of those.

use std::ffi::{CString, c_char, c_void};

#[cfg(emu_kernels)]
unsafe extern "C" {
    fn emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        cluster: u32,
        shared_bytes: u32,
        params: *mut *mut c_void,
        error: *mut c_char,
        error_len: usize,
    ) -> i32;
    fn emu_kernel_names(out: *mut c_char, out_len: usize) -> usize;
    fn emu_last_launch_prefetches(count: *mut u64, bytes: *mut u64);
}

/// True if this build carries the kernels (the CUDA headers were found at build time).
pub fn available() -> bool {
    cfg!(emu_kernels)
}

/// The L2 prefetch hints of the calling thread's last launch: how many ranges the kernel
/// asked for, and their bytes in all (`(0, 0)` before any launch, or without kernels).
pub fn last_launch_prefetches() -> (u64, u64) {
    #[cfg(emu_kernels)]
    {
        let (mut count, mut bytes) = (0, 0);
        // SAFETY: two writable u64.
        unsafe { emu_last_launch_prefetches(&mut count, &mut bytes) };
        (count, bytes)
    }
    #[cfg(not(emu_kernels))]
    (0, 0)
}

/// Names of the kernels the emulator can run.
pub fn kernel_names() -> Vec<String> {
    #[cfg(emu_kernels)]
    {
        let mut buf = vec![0u8; 1 << 16];
        // SAFETY: the buffer is writable for its whole length.
        unsafe { emu_kernel_names(buf.as_mut_ptr().cast(), buf.len()) };
        let text = std::ffi::CStr::from_bytes_until_nul(&buf)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        text.lines().map(str::to_owned).collect()
    }
    #[cfg(not(emu_kernels))]
    Vec::new()
}

/// Grid, block, cluster and dynamic shared memory of a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Blocks per grid dimension.
    pub grid: [u32; 3],
    /// Threads per block dimension.
    pub block: [u32; 3],
    /// Blocks per thread-block cluster along x (1: no clusters); must divide `grid[0]`.
    pub cluster: u32,
    /// Dynamic shared memory per block, bytes.
    pub shared_bytes: u32,
}

impl Dims {
    /// A one-dimensional launch: `grid` blocks of `block` threads, no clusters, no dynamic
    /// shared memory.
    pub fn linear(grid: u32, block: u32) -> Dims {
        Dims {
            grid: [grid, 1, 1],
            block: [block, 1, 1],
            cluster: 1,
            shared_bytes: 0,
        }
    }
}

/// Runs kernel `name` like `cuLaunchKernelEx`, on the calling thread: `params[i]` points at
/// the i-th argument. Launches from different threads run in parallel.
///
/// # Safety
/// The arguments must match the kernel's signature in number, order and type, and every
/// pointer among them must be valid for what the kernel does with it.
pub unsafe fn launch(name: &str, dims: Dims, params: &mut [*mut c_void]) -> Result<(), String> {
    #[cfg(emu_kernels)]
    {
        let name_c = CString::new(name).map_err(|e| e.to_string())?;
        let mut error = vec![0u8; 1024];
        // SAFETY: the caller vouches for the arguments; the rest are valid buffers.
        let rc = unsafe {
            emu_launch(
                name_c.as_ptr(),
                dims.grid.as_ptr(),
                dims.block.as_ptr(),
                dims.cluster,
                dims.shared_bytes,
                params.as_mut_ptr(),
                error.as_mut_ptr().cast(),
                error.len(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::ffi::CStr::from_bytes_until_nul(&error)
                .unwrap()
                .to_string_lossy()
                .into_owned())
        }
    }
    #[cfg(not(emu_kernels))]
    {
        let _ = (name, dims, params, CString::default);
        Err("the emulator was built without the CUDA headers, so it has no kernels".into())
    }
}

/// Where a [`GuardedBuffer`]'s elements sit between its guard pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// First element at the start of a page (aligned like a `cudaMalloc`): any read before
    /// the buffer faults.
    Start,
    /// Last element at the end of a page (aligned to the element only): any read past the
    /// buffer faults. The bytes before it in its page hold a canary
    /// ([`GuardedBuffer::canary_intact`]), so a write there (a kernel seeing the first row
    /// from the 16-byte boundary before the buffer) is caught too.
    End,
}

/// What the bytes between the page start and an [`Placement::End`] buffer hold.
const CANARY: u8 = 0xa5;

/// Host memory of `len` elements of `T` between two inaccessible guard pages.
pub struct GuardedBuffer<T: Copy> {
    base: *mut u8,
    map_len: usize,
    data: *mut T,
    len: usize,
}

// SAFETY: owns its mapping like a Box<[T]>.
unsafe impl<T: Copy + Send> Send for GuardedBuffer<T> {}

impl<T: Copy> GuardedBuffer<T> {
    /// A buffer holding a copy of `values`.
    pub fn from_slice(values: &[T], placement: Placement) -> Self {
        let page = page_size();
        let bytes = std::mem::size_of_val(values);
        let data_pages = bytes.div_ceil(page).max(1);
        let map_len = (data_pages + 2) * page;
        // SAFETY: anonymous private mapping; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(base != libc::MAP_FAILED, "mmap of {map_len} bytes failed");
        let base = base.cast::<u8>();
        // SAFETY: both guard pages lie inside the mapping.
        unsafe {
            libc::mprotect(base.cast(), page, libc::PROT_NONE);
            libc::mprotect(base.add(map_len - page).cast(), page, libc::PROT_NONE);
        }
        let offset = match placement {
            Placement::Start => page,
            Placement::End => map_len - page - bytes,
        };
        // SAFETY: `offset .. offset + bytes` lies between the guard pages, and the canary
        // `page .. offset` too.
        unsafe { std::ptr::write_bytes(base.add(page), CANARY, offset - page) };
        let data = unsafe { base.add(offset) }.cast::<T>();
        assert!(data.is_aligned(), "element alignment");
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), data, values.len()) };
        GuardedBuffer {
            base,
            map_len,
            data,
            len: values.len(),
        }
    }

    /// The device-style address of the first element.
    pub fn addr(&self) -> u64 {
        self.data as u64
    }

    /// Whether the bytes from the first page's start to the first element still hold the
    /// canary (none for [`Placement::Start`]): nothing wrote before the buffer.
    pub fn canary_intact(&self) -> bool {
        let page = page_size();
        let before = self.data as usize - self.base as usize - page;
        // SAFETY: those bytes lie inside the mapping, after the first guard page.
        let bytes = unsafe { std::slice::from_raw_parts(self.base.add(page), before) };
        bytes.iter().all(|&b| b == CANARY)
    }

    /// The elements.
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `len` initialised elements at `data`.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}

impl<T: Copy> Drop for GuardedBuffer<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `from_slice`.
        unsafe { libc::munmap(self.base.cast(), self.map_len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}
