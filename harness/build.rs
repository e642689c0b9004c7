//! Build script:
//! - records the candle version this binary is built against (read from the workspace's
//!   Cargo.lock) as `HARNESS_CANDLE_VERSION`, for the study manifest;
//! - with the `cuda` feature, compiles the project's own kernels (kernels/*.cu) to PTX with nvcc;
//!   the library embeds the PTX and the driver JIT-compiles it for the GPU at first use.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    candle_version();
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        kernels();
    }
}

fn candle_version() {
    let lock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let mut version = String::from("unknown");
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"candle-core\"" {
            if let Some(v) = lines.next().and_then(|l| l.trim().strip_prefix("version = \"")) {
                version = v.trim_end_matches('"').to_string();
            }
            break;
        }
    }
    println!("cargo:rustc-env=HARNESS_CANDLE_VERSION={version}");
}

fn kernels() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(|c| c.is_ascii_digit()).collect();
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    for name in ["optim", "fused", "layout", "flash"] {
        let src = format!("kernels/{name}.cu");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("running {nvcc} for {src}: {e} (source scripts/cuda-toolchain.sh first)"));
        assert!(status.success(), "nvcc failed on {src}");
    }
}
