//! Compiles every `kernels/*.cu` to PTX with bindgen_cuda and embeds it.
//!
//! nvcc is looked for on PATH, then under CUDA_PATH, CUDA_HOME, /usr/local/cuda and the
//! project-local toolchain that `scripts/install-cuda-toolchain.sh` installs. Without nvcc
//! the crate still builds for CPU use (a cargo warning says so) and its GPU entry points
//! return `Error::KernelsNotBuilt`; `MASKED_SOFTMAX_REQUIRE_KERNELS=1` makes that a build
//! error instead. The target is `CUDA_COMPUTE_CAP` if set, else the GPU that `nvidia-smi`
//! reports, else compute capability 8.0 (whose PTX every supported GPU can JIT).
//! `MASKED_SOFTMAX_PTX_CACHE=DIR` keeps each target's PTX in DIR for the next build with the
//! same inputs (build_support/ptx_cache.rs).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

// Finds nvcc and the CUDA headers; shared with emu/build.rs.
include!("build_support/toolkit.rs");
// Reuses PTX across builds when MASKED_SOFTMAX_PTX_CACHE names a folder.
include!("build_support/ptx_cache.rs");

const DEFAULT_COMPUTE_CAP: usize = 80;
/// Kernel files with Hopper-only kernels, compiled for sm_90 as well.
const HOPPER_FILES: &[&str] = &["masked_softmax", "masked_softmax_backward"];

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
        write_bindings(&bindings, &[]);
        return;
    };

    // The base target (CUDA_COMPUTE_CAP, else the local GPU, else 8.0) runs everywhere from
    // there up; Hopper (9.0) gets its own PTX of the files with Hopper-only kernels
    // (thread-block clusters), HOPPER_FILES; the launcher loads the highest target a device
    // runs.
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
    for &cap in &targets {
        let files: Vec<PathBuf> = kernels
            .iter()
            .filter(|k| {
                cap == base || HOPPER_FILES.contains(&k.file_stem().unwrap().to_str().unwrap())
            })
            .cloned()
            .collect();
        let dir = out_dir.join(format!("sm_{cap}"));
        fs::create_dir_all(&dir).expect("create PTX directory");
        let cached = cache
            .as_ref()
            .map(|(cache, shared)| (cache, PtxCacheKey::new(shared, cap, &files)));
        if let Some((cache, key)) = &cached {
            if restore_ptx(cache, key, &dir, &files) {
                println!(
                    "masked-softmax: sm_{cap} PTX from {}/{}",
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
        if let Some((cache, key)) = &cached {
            store_ptx(cache, key, &dir, &files);
        }
        built.push((cap, dir, files));
    }
    write_bindings(&bindings, &built);
    let names: Vec<String> = targets.iter().map(|c| format!("sm_{c}")).collect();
    println!(
        "cargo:rustc-env=MASKED_SOFTMAX_PTX_TARGET={} (nvcc {})",
        names.join("+"),
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

/// `MODULES`: every kernel file's stem, PTX target and PTX (empty without nvcc).
fn write_bindings(path: &Path, built: &[(usize, PathBuf, Vec<PathBuf>)]) {
    let modules: Vec<String> = built
        .iter()
        .flat_map(|(cap, dir, files)| {
            files.iter().map(move |kernel| {
                let stem = kernel.file_stem().unwrap().to_string_lossy();
                format!(
                    "({stem:?}, {cap}, include_str!({:?}))",
                    ptx_path(dir, kernel)
                )
            })
        })
        .collect();
    let text = format!(
        "// Generated by build.rs.\n/// (kernel file stem, compute capability targeted, PTX) for every kernels/*.cu and target.\npub const MODULES: &[(&str, u32, &str)] = &[{}];\n",
        modules.join(", ")
    );
    fs::write(path, text).expect("write kernel bindings");
}
