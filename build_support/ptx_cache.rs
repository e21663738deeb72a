// A PTX cache shared by every build of this crate, `include!`d by build.rs.
//
// Every cargo build that changes a feature, profile or lint wrapper reruns build.rs, and each
// rerun compiled the kernels again (about 90 s on two cores; CI did it six times). With
// `MASKED_SOFTMAX_PTX_CACHE=DIR` set, build.rs keeps each target's PTX (with the fatbins and
// ptxas reports it makes from it) under DIR, keyed by
// everything that goes into it: the bytes of every file in kernels/, of build.rs and
// build_support/, of Cargo.toml (bindgen_cuda's pinned version), nvcc's `--version`, the
// compute capability and the nvcc environment variables. The key's full text is stored
// next to the PTX and compared byte for byte, so a hash collision cannot hand back the
// wrong PTX; the hash only names the folder.

/// Everything that decides one target's PTX, as bytes, and the folder it names.
struct PtxCacheKey {
    text: Vec<u8>,
    folder: String,
}

impl PtxCacheKey {
    /// What every target's key shares, read once a build: nvcc's `--version`, the nvcc
    /// environment variables and the bytes of every input file. None where any of them
    /// cannot be read (the build then compiles, uncached).
    fn shared_inputs(manifest_dir: &Path, nvcc: &Path) -> Option<Vec<u8>> {
        let mut text = b"masked-softmax PTX cache 2\n".to_vec();
        let version = Command::new(nvcc).arg("--version").output().ok()?;
        if !version.status.success() {
            return None;
        }
        text.extend_from_slice(&version.stdout);
        for var in [
            "NVCC_CCBIN",
            "NVCC_PREPEND_FLAGS",
            "NVCC_APPEND_FLAGS",
            "RAYON_NUM_THREADS",
        ] {
            text.extend_from_slice(format!("{var}={:?}\n", env::var_os(var)).as_bytes());
        }
        let mut inputs = vec![
            manifest_dir.join("Cargo.toml"),
            manifest_dir.join("build.rs"),
        ];
        for dir in ["build_support", "kernels"] {
            let mut entries: Vec<PathBuf> = fs::read_dir(manifest_dir.join(dir))
                .ok()?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()
                .ok()?;
            entries.sort();
            inputs.extend(entries);
        }
        for input in inputs {
            let bytes = fs::read(&input).ok()?;
            text.extend_from_slice(format!("{} {}\n", input.display(), bytes.len()).as_bytes());
            text.extend_from_slice(&bytes);
        }
        Some(text)
    }

    /// One target's key: the shared inputs, the compute capability and the files compiled.
    /// The folder is named by FNV-1a of the key's text.
    fn new(shared: &[u8], cap: usize, files: &[PathBuf]) -> Self {
        let mut text = shared.to_vec();
        text.extend_from_slice(format!("cap {cap}\n").as_bytes());
        for file in files {
            text.extend_from_slice(format!("compiles {}\n", file.display()).as_bytes());
        }
        let hash = text.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Self {
            text,
            folder: format!("{hash:016x}"),
        }
    }
}

/// Copies a cached target's PTX into `dir`; false (and nothing trusted) unless the stored
/// key matches byte for byte and every file is there.
fn restore_ptx(cache: &Path, key: &PtxCacheKey, dir: &Path, files: &[PathBuf]) -> bool {
    let entry = cache.join(&key.folder);
    if fs::read(entry.join("key")).ok().as_deref() != Some(&key.text[..]) {
        return false;
    }
    files.iter().all(|kernel| {
        built_files(Path::new(""), kernel)
            .iter()
            .all(|name| fs::copy(entry.join(name), dir.join(name)).is_ok())
    })
}

/// Stores a freshly built target's PTX. A failure only costs the next build its compile, so
/// it is reported and otherwise ignored; the entry appears whole or not at all (renamed
/// into place from a private folder).
fn store_ptx(cache: &Path, key: &PtxCacheKey, dir: &Path, files: &[PathBuf]) {
    let entry = cache.join(&key.folder);
    let staging = cache.join(format!("{}.{}.tmp", key.folder, std::process::id()));
    let stored = (|| -> std::io::Result<()> {
        fs::create_dir_all(&staging)?;
        for kernel in files {
            for name in built_files(Path::new(""), kernel) {
                fs::copy(dir.join(&name), staging.join(&name))?;
            }
        }
        fs::write(staging.join("key"), &key.text)?;
        if fs::read(entry.join("key")).ok().as_deref() == Some(&key.text[..]) {
            // Another build stored the same PTX meanwhile.
            return fs::remove_dir_all(&staging);
        }
        if entry.exists() {
            fs::remove_dir_all(&entry)?; // another key under a colliding name
        }
        fs::rename(&staging, &entry)
    })();
    if let Err(err) = stored {
        let _ = fs::remove_dir_all(&staging);
        println!(
            "cargo:warning=masked-softmax: could not store PTX in {}: {err}",
            cache.display()
        );
    }
}
