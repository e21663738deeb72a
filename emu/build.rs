//! Compiles the emulator and every `../kernels/*.cu` as C++ for the host, with the
//! emulation prelude force-included. Needs a C++20 compiler and the CUDA headers (for
//! `cuda_fp16.h`, `cuda_bf16.h`); without the headers the crate builds empty and says so.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

include!("../build_support/toolkit.rs");

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let project_root = manifest_dir.parent().unwrap().to_path_buf();
    let kernels_dir = project_root.join("kernels");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed={}", kernels_dir.display());
    for var in [
        "PATH",
        "CUDA_PATH",
        "CUDA_HOME",
        "MASKED_SOFTMAX_REQUIRE_KERNELS",
        "MASKED_SOFTMAX_EMU_CHECK_ONLY",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo::rustc-check-cfg=cfg(emu_kernels)");

    let Some(toolkit) = find_toolkit(&project_root) else {
        if env::var("MASKED_SOFTMAX_REQUIRE_KERNELS").is_ok_and(|v| v == "1") {
            panic!(
                "MASKED_SOFTMAX_REQUIRE_KERNELS=1 but no CUDA toolkit headers were found for the emulator"
            );
        }
        println!(
            "cargo:warning=masked-softmax-emu: no CUDA headers found; the emulator carries no kernels"
        );
        return;
    };

    // For builds that never call into the emulator: CI sets this for `cargo clippy`, `cargo
    // doc` and the candle steps, which would otherwise compile its C++ (a minute on two
    // cores) for nothing. A binary that does call it fails to link with this set.
    if env::var("MASKED_SOFTMAX_EMU_CHECK_ONLY").is_ok_and(|v| v == "1") {
        println!("cargo:rustc-cfg=emu_kernels");
        return;
    }

    // One wrapper translation unit per kernel file, so kernel files never share a unit.
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .include(toolkit.root.join("include"))
        .include(&kernels_dir)
        .include(manifest_dir.join("src"))
        .flag("-include")
        .flag(manifest_dir.join("src/cuda_emu.h").to_str().unwrap())
        .flag("-Wall")
        .flag("-Wno-unused-function")
        .flag("-Wno-unknown-pragmas")
        .opt_level(2)
        .file(manifest_dir.join("src/emu.cpp"))
        .file(manifest_dir.join("src/selftest.cpp"))
        // The kernels register themselves from static initialisers nothing else refers to.
        .link_lib_modifier("+whole-archive");
    let mut kernels: Vec<PathBuf> = fs::read_dir(&kernels_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    kernels.sort();
    for kernel in &kernels {
        let wrapper = out_dir.join(format!("{}.emu.cpp", stem(kernel)));
        fs::write(
            &wrapper,
            format!("#include {:?}\n", kernel.display().to_string()),
        )
        .unwrap();
        build.file(wrapper);
    }
    build.compile("masked_softmax_emu");
    println!("cargo:rustc-cfg=emu_kernels");
}

fn stem(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}
