//! Compiles every `kernels/*.cu` to PTX with bindgen_cuda and embeds it.
//!
//! nvcc is looked for on PATH, then under CUDA_PATH, CUDA_HOME, /usr/local/cuda and the
//! project-local toolchain that `scripts/install-cuda-toolchain.sh` installs. Without nvcc
//! the crate still builds for CPU use (a cargo warning says so) and its GPU entry points
//! return `Error::KernelsNotBuilt`; `MASKED_SOFTMAX_REQUIRE_KERNELS=1` makes that a build
//! error instead. The target is `CUDA_COMPUTE_CAP` if set, else the GPU that `nvidia-smi`
//! reports, else compute capability 8.0 (whose PTX every supported GPU can JIT).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `scripts/install-cuda-toolchain.sh` puts the pip-installed CUDA 13.0 toolchain.
const LOCAL_TOOLCHAIN: &str = ".cuda-toolchain/nvidia/cu13";
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
        write_bindings(&bindings, &kernels, None);
        return;
    };

    let compute_cap = compute_cap();
    // bindgen_cuda reads the target from the environment and calls `nvcc` from PATH.
    let path = env::join_paths(
        std::iter::once(toolkit.bin.clone())
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    // SAFETY: build scripts are single-threaded until bindgen_cuda starts its pool below.
    unsafe {
        env::set_var("PATH", path);
        env::set_var("CUDA_COMPUTE_CAP", compute_cap.to_string());
    }
    // bindgen_cuda recompiles a kernel only when its .ptx is older than the .cu; a changed
    // header or target would leave stale PTX, so start clean whenever this script reruns.
    for kernel in &kernels {
        let _ = fs::remove_file(ptx_path(&out_dir, kernel));
    }
    let mut builder = bindgen_cuda::Builder::default()
        .kernel_paths(kernels.clone())
        .include_paths_glob("kernels/*.cuh")
        .arg("--std=c++17")
        .arg("-lineinfo")
        .arg("-Werror=all-warnings");
    builder.cuda_root(&toolkit.root);
    builder
        .build_ptx()
        .expect("nvcc failed to compile the kernels");
    write_bindings(&bindings, &kernels, Some(&out_dir));
    println!(
        "cargo:rustc-env=MASKED_SOFTMAX_PTX_TARGET=sm_{compute_cap} (nvcc {})",
        toolkit.nvcc.display()
    );
}

struct Toolkit {
    nvcc: PathBuf,
    bin: PathBuf,
    /// Holds `include/cuda.h`.
    root: PathBuf,
}

fn find_toolkit(manifest_dir: &Path) -> Option<Toolkit> {
    let on_path = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let roots = ["CUDA_PATH", "CUDA_HOME"]
        .into_iter()
        .filter_map(|v| env::var_os(v).map(PathBuf::from))
        .chain([
            PathBuf::from("/usr/local/cuda"),
            manifest_dir.join(LOCAL_TOOLCHAIN),
        ])
        .map(|root| root.join("bin"));
    on_path.into_iter().chain(roots).find_map(|bin| {
        let nvcc = bin.join("nvcc");
        if !nvcc.is_file() {
            return None;
        }
        let nvcc = fs::canonicalize(&nvcc).unwrap_or(nvcc);
        let bin = nvcc.parent()?.to_path_buf();
        let root = bin.parent()?.to_path_buf();
        if !root.join("include/cuda.h").is_file() {
            println!(
                "cargo:warning=masked-softmax: skipping {}: no include/cuda.h beside it",
                nvcc.display()
            );
            return None;
        }
        Some(Toolkit { nvcc, bin, root })
    })
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

/// One `pub const <STEM>: Option<&str>` per kernel file: its PTX, or `None` without nvcc.
fn write_bindings(path: &Path, kernels: &[PathBuf], ptx_dir: Option<&Path>) {
    let mut text = String::from("// Generated by build.rs: the PTX of every kernels/*.cu.\n");
    for kernel in kernels {
        let stem = kernel.file_stem().unwrap().to_string_lossy();
        let value = match ptx_dir {
            Some(dir) => format!("Some(include_str!({:?}))", ptx_path(dir, kernel)),
            None => "None".to_string(),
        };
        text += &format!(
            "/// PTX of `kernels/{stem}.cu`.\npub const {}: Option<&str> = {value};\n",
            stem.to_uppercase()
        );
    }
    fs::write(path, text).expect("write kernel bindings");
}
