//! Compiles every `kernels/*.cu` to PTX with bindgen_cuda, that PTX to SASS with ptxas, and
//! embeds both as one compressed fatbin a file and target (`build_images`).
//!
//! nvcc is looked for on PATH, then under CUDA_PATH, CUDA_HOME, /usr/local/cuda and the
//! project-local toolchain that `scripts/install-cuda-toolchain.sh` installs. Without nvcc
//! the crate still builds for CPU use (a cargo warning says so) and its GPU entry points
//! return `Error::KernelsNotBuilt`; `MASKED_SOFTMAX_REQUIRE_KERNELS=1` makes that a build
//! error instead. The target is `CUDA_COMPUTE_CAP` if set, else the GPU that `nvidia-smi`
//! reports, else compute capability 8.0 (whose SASS every 8.x GPU runs and whose PTX any
//! newer one can JIT). `MASKED_SOFTMAX_PTX_CACHE=DIR` keeps each target's PTX and fatbins in
//! DIR for the next build with the same inputs (build_support/ptx_cache.rs).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

// Finds nvcc and the CUDA headers; shared with emu/build.rs.
include!("build_support/toolkit.rs");
// Reuses PTX across builds when MASKED_SOFTMAX_PTX_CACHE names a folder.
include!("build_support/ptx_cache.rs");

const DEFAULT_COMPUTE_CAP: usize = 80;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "PATH",
        "CUDA_PATH",
        "CUDA_HOME",
        "CUDA_COMPUTE_CAP",
        "MASKED_SOFTMAX_REQUIRE_KERNELS",
        "MASKED_SOFTMAX_PTX_CACHE",
        "MASKED_SOFTMAX_EMBED",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernels = kernel_sources(&manifest_dir.join("kernels"));
    let bindings = out_dir.join("kernels.rs");

    let Some(toolkit) = find_toolkit(&manifest_dir) else {
        if env::var("MASKED_SOFTMAX_REQUIRE_KERNELS").is_ok_and(|v| v == "1") {
            panic!(
                "MASKED_SOFTMAX_REQUIRE_KERNELS=1 but no nvcc was found on PATH, under CUDA_PATH, \
                 CUDA_HOME, /usr/local/cuda or {LOCAL_TOOLCHAIN}; run scripts/install-cuda-toolchain.sh"
            );
        }
        println!(
            "cargo:warning=masked-softmax: nvcc not found; building without CUDA kernels (CPU reference only). \
             Run scripts/install-cuda-toolchain.sh to get nvcc 13.0, then rebuild."
        );
        write_bindings(&bindings, &[], Embed::Fatbin);
        return;
    };

    // The base target (CUDA_COMPUTE_CAP, else the local GPU, else 8.0) runs everywhere from
    // there up (its PTX; its SASS on its major version); every file is compiled for Hopper
    // (9.0) as well, which adds the thread-block-cluster kernels and gives Hopper SASS of
    // everything; the launcher loads the highest target a device runs.
    let base = compute_cap();
    let mut targets = vec![base];
    if base < 90 {
        targets.push(90);
    }
    // bindgen_cuda reads the target from the environment and calls `nvcc` from PATH.
    let path = env::join_paths(
        std::iter::once(toolkit.bin.clone())
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    // SAFETY: build scripts are single-threaded until bindgen_cuda starts its pool below.
    unsafe {
        env::set_var("PATH", path);
        env::set_var("CUDA_COMPUTE_CAP", base.to_string());
    }
    let cache = env::var_os("MASKED_SOFTMAX_PTX_CACHE")
        .filter(|dir| !dir.is_empty())
        .and_then(|dir| {
            let shared = PtxCacheKey::shared_inputs(&manifest_dir, &toolkit.nvcc)?;
            Some((PathBuf::from(dir), shared))
        });
    // bindgen_cuda recompiles a kernel only when its .ptx is older than the .cu, so a changed
    // header would leave stale PTX, and a changed base target another target's PTX beside
    // this build's (scripts/check-ptxas.sh reads these folders): every rerun starts with none.
    for entry in fs::read_dir(&out_dir).expect("OUT_DIR").flatten() {
        if entry.file_name().to_string_lossy().starts_with("sm_") && entry.path().is_dir() {
            fs::remove_dir_all(entry.path()).expect("remove old PTX folder");
        }
    }
    let mut built = Vec::new();
    let mut fresh = Vec::new();
    for &cap in &targets {
        let files = kernels.clone();
        let dir = out_dir.join(format!("sm_{cap}"));
        fs::create_dir_all(&dir).expect("create PTX directory");
        let cached = cache
            .as_ref()
            .map(|(cache, shared)| (cache, PtxCacheKey::new(shared, cap, &files)));
        if let Some((cache, key)) = &cached {
            if restore_ptx(cache, key, &dir, &files) {
                println!(
                    "masked-softmax: sm_{cap} PTX and images from {}/{}",
                    cache.display(),
                    key.folder
                );
                built.push((cap, dir, files));
                continue;
            }
        }
        let mut builder = bindgen_cuda::Builder::default()
            .compute_cap(cap)
            .out_dir(&dir)
            .kernel_paths(files.clone())
            .include_paths_glob("kernels/*.cuh")
            .arg("--std=c++17")
            .arg("-lineinfo")
            .arg("-Werror=all-warnings");
        builder.cuda_root(&toolkit.root);
        builder
            .build_ptx()
            .expect("nvcc failed to compile the kernels");
        fresh.push((cap, dir.clone(), files.clone(), cached));
        built.push((cap, dir, files));
    }
    // Every fresh target's SASS at once (ptxas runs one thread a file), then its cache entry.
    let fresh_targets: Vec<(usize, &Path, &[PathBuf])> = fresh
        .iter()
        .map(|(cap, dir, files, _)| (*cap, dir.as_path(), files.as_slice()))
        .collect();
    build_images(&toolkit, &fresh_targets);
    for (_, dir, files, cached) in &fresh {
        if let Some((cache, key)) = cached {
            store_ptx(cache, key, dir, files);
        }
    }
    // MASKED_SOFTMAX_EMBED=ptx: the PTX alone, as before v23.1 (the driver compiles it at
    // load), for a driver that refuses the fatbins; the GPU bundle carries such a build.
    let embed = match env::var("MASKED_SOFTMAX_EMBED").as_deref() {
        Ok("ptx") => Embed::Ptx,
        Ok("fatbin") | Err(_) => Embed::Fatbin,
        Ok(other) => panic!("MASKED_SOFTMAX_EMBED={other:?}: use fatbin (the default) or ptx"),
    };
    write_bindings(&bindings, &built, embed);
    let names: Vec<String> = targets.iter().map(|c| format!("sm_{c}")).collect();
    println!(
        "cargo:rustc-env=MASKED_SOFTMAX_PTX_TARGET={} {} (nvcc {})",
        names.join("+"),
        embed.name(),
        toolkit.nvcc.display()
    );
}

fn compute_cap() -> usize {
    if let Ok(cap) = env::var("CUDA_COMPUTE_CAP") {
        return cap.trim().replace('.', "").parse().unwrap_or_else(|_| {
            panic!("CUDA_COMPUTE_CAP={cap:?} is not a compute capability like 80 or 90")
        });
    }
    // The first GPU nvidia-smi lists, if any; a machine without a GPU gets the portable default.
    Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.lines().next()?.trim().replace('.', "").parse().ok()
        })
        .unwrap_or(DEFAULT_COMPUTE_CAP)
}

fn kernel_sources(dir: &Path) -> Vec<PathBuf> {
    let mut kernels: Vec<PathBuf> = fs::read_dir(dir)
        .expect("kernels/ directory")
        .map(|entry| entry.expect("readable kernels/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    kernels.sort();
    kernels
}

fn ptx_path(out_dir: &Path, kernel: &Path) -> PathBuf {
    out_dir
        .join(kernel.file_stem().unwrap())
        .with_extension("ptx")
}

/// A file build.rs makes in a target's folder for `kernel`, beside its PTX: `<stem>.<ext>`.
fn sibling(dir: &Path, kernel: &Path, ext: &str) -> PathBuf {
    dir.join(format!(
        "{}.{ext}",
        kernel.file_stem().unwrap().to_string_lossy()
    ))
}

/// The fatbin the crate embeds.
fn image_path(dir: &Path, kernel: &Path) -> PathBuf {
    sibling(dir, kernel, "fatbin")
}

/// ptxas's `-v` report on the embedded SASS (registers, spills: what
/// scripts/check-ptxas.sh reads).
fn report_path(dir: &Path, kernel: &Path) -> PathBuf {
    sibling(dir, kernel, "ptxas.txt")
}

/// Every file build.rs makes for `kernel` in a target's folder (what the cache keeps).
fn built_files(dir: &Path, kernel: &Path) -> [PathBuf; 3] {
    [
        ptx_path(dir, kernel),
        image_path(dir, kernel),
        report_path(dir, kernel),
    ]
}

/// Compiles each fresh target's PTX to SASS for that architecture and packs both into one
/// compressed fatbin a kernel file. The driver runs the SASS on the target's architecture
/// and on later minor versions of it (sm_80's on 8.6 and 8.9) with no JIT compile at load
/// (the PTX alone took ptxas about a minute of CPU on sm_90 at v23), and JIT-compiles the
/// PTX only on a newer major architecture. Compressed, both take a fifth of the PTX alone.
fn build_images(toolkit: &Toolkit, targets: &[(usize, &Path, &[PathBuf])]) {
    let jobs: Vec<(usize, &Path, &PathBuf)> = targets
        .iter()
        .flat_map(|&(cap, dir, files)| files.iter().map(move |k| (cap, dir, k)))
        .collect();
    let mut children = Vec::new();
    for &(cap, dir, kernel) in &jobs {
        let started = fs::File::create(report_path(dir, kernel)).and_then(|report| {
            Command::new(toolkit.bin.join("ptxas"))
                .arg(format!("-arch=sm_{cap}"))
                .args(["-lineinfo", "-v", "-o"])
                .arg(sibling(dir, kernel, "cubin"))
                .arg(ptx_path(dir, kernel))
                .stderr(report)
                .spawn()
        });
        match started {
            Ok(child) => children.push(child),
            Err(err) => {
                for mut child in children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                panic!("cannot start ptxas from {}: {err}", toolkit.bin.display());
            }
        }
    }
    // Every ptxas ends before any failure is reported: none is left writing into OUT_DIR.
    let statuses: Vec<_> = children.iter_mut().map(|child| child.wait()).collect();
    for (status, &(cap, dir, kernel)) in statuses.into_iter().zip(&jobs) {
        let report = fs::read_to_string(report_path(dir, kernel)).unwrap_or_default();
        assert!(
            status.is_ok_and(|s| s.success()),
            "ptxas failed on {} for sm_{cap}:\n{report}",
            ptx_path(dir, kernel).display()
        );
    }
    for &(cap, dir, kernel) in &jobs {
        // In the target's folder, by file name: fatbinary's image lists are comma-separated.
        let name = |path: PathBuf| path.file_name().unwrap().to_string_lossy().into_owned();
        let cubin = name(sibling(dir, kernel, "cubin"));
        let pack = |compress_all: bool| {
            Command::new(toolkit.bin.join("fatbinary"))
                .current_dir(dir)
                .arg("-64")
                .arg(format!("--create={}", name(image_path(dir, kernel))))
                .arg(format!("--image3=kind=elf,sm={cap},file={cubin}"))
                .arg(format!(
                    "--image3=kind=ptx,sm={cap},file={}",
                    name(ptx_path(dir, kernel))
                ))
                .args(compress_all.then_some("--compress-all"))
                .status()
                .is_ok_and(|status| status.success())
        };
        // A fatbinary older than CUDA 12.4's compresses the PTX alone.
        assert!(
            pack(true) || pack(false),
            "fatbinary failed on {cubin} in {}",
            dir.display()
        );
        // The fatbin holds it (cuobjdump -sass reads the fatbin).
        fs::remove_file(dir.join(&cubin)).expect("remove cubin");
    }
}

/// The kernel names a PTX file defines (its `.entry` lines).
fn ptx_entries(ptx: &Path) -> Vec<String> {
    let text = fs::read_to_string(ptx).expect("read PTX");
    text.lines()
        .filter_map(|line| {
            let rest = line.trim_start().trim_start_matches(".visible ");
            let name = rest.strip_prefix(".entry ")?;
            Some(name.split('(').next()?.trim().to_string())
        })
        .collect()
}

/// What the crate embeds of each kernel file and target.
#[derive(Clone, Copy)]
enum Embed {
    /// The compressed fatbin: SASS and PTX (the default).
    Fatbin,
    /// The PTX text alone.
    Ptx,
}

impl Embed {
    fn name(self) -> &'static str {
        match self {
            Embed::Fatbin => "fatbin",
            Embed::Ptx => "ptx",
        }
    }
}

/// `MODULES`: for every kernel file and target, its stem, the compute capability, the
/// image (in a 16-byte aligned static, so that it can be handed to the driver as it is)
/// and its kernels' names (empty without nvcc).
fn write_bindings(path: &Path, built: &[(usize, PathBuf, Vec<PathBuf>)], embed: Embed) {
    let mut statics = String::new();
    let mut modules = Vec::new();
    for (cap, dir, files) in built {
        for kernel in files {
            let index = modules.len();
            let stem = kernel.file_stem().unwrap().to_string_lossy();
            let image = match embed {
                Embed::Fatbin => image_path(dir, kernel),
                Embed::Ptx => ptx_path(dir, kernel),
            };
            statics.push_str(&format!(
                "static IMAGE_{index}: &Aligned<[u8]> = &Aligned(*include_bytes!({image:?}));\n"
            ));
            modules.push(format!(
                "Module {{ stem: {stem:?}, cap: {cap}, image: &IMAGE_{index}.0, entries: &{:?} }}",
                ptx_entries(&ptx_path(dir, kernel))
            ));
        }
    }
    let text = format!(
        "// Generated by build.rs.\n{statics}/// Every kernels/*.cu and target: its compiled image and kernel names.\npub const MODULES: &[Module] = &[{}];\n",
        modules.join(", ")
    );
    fs::write(path, text).expect("write kernel bindings");
}
