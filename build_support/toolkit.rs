// Finding the CUDA toolchain, shared by build.rs and emu/build.rs (`include!`d by both).
//
// nvcc is looked for on PATH, then under CUDA_PATH, CUDA_HOME, /usr/local/cuda and the
// project-local toolchain that `scripts/install-cuda-toolchain.sh` installs.

/// Where `scripts/install-cuda-toolchain.sh` puts the pip-installed CUDA 13.0 toolchain,
/// relative to the project root.
const LOCAL_TOOLCHAIN: &str = ".cuda-toolchain/nvidia/cu13";

#[allow(dead_code)]
struct Toolkit {
    nvcc: PathBuf,
    bin: PathBuf,
    /// Holds `include/cuda.h`.
    root: PathBuf,
}

/// The first nvcc with `include/cuda.h` beside it; `project_root` holds `.cuda-toolchain`.
fn find_toolkit(project_root: &Path) -> Option<Toolkit> {
    let on_path = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let roots = ["CUDA_PATH", "CUDA_HOME"]
        .into_iter()
        .filter_map(|v| env::var_os(v).map(PathBuf::from))
        .chain([
            PathBuf::from("/usr/local/cuda"),
            project_root.join(LOCAL_TOOLCHAIN),
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

