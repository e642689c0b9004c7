//! `manifest.json` of a study result folder: what ran, from which code, on which machine, with
//! which files. Written when the folder is created (without `end`) and again with `end` when
//! every run is done or failed.

use super::spec::{hex, Point, Study};
use crate::config::{self, RawConfig};
use crate::{data, run, Error, Result};
pub use ddm_schema::{DeviceInfo, FileHash, GitInfo, Resumption};
use ddm_schema::StudyDir;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(dir).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

/// Ask git (run in `dir`) for the commit and whether the tree is dirty; changes under
/// `results` (when it lies inside the checkout) do not count.
pub fn git_info(dir: &Path, results: &Path) -> GitInfo {
    // A copy of a checkout sent to another machine (e.g. a GPU machine, by scripts/gpu-pack.sh)
    // names the commit it was packed from through DDM_GIT_COMMIT (full hash) and DDM_GIT_DIRTY
    // (1 = dirty). That statement wins over any .git the copy carries, which may be stale.
    if let Ok(c) = std::env::var("DDM_GIT_COMMIT") {
        let c = c.trim().to_string();
        if c.len() >= 7 && c.chars().all(|ch| ch.is_ascii_hexdigit()) {
            let dirty = std::env::var("DDM_GIT_DIRTY").is_ok_and(|d| d.trim() == "1");
            return GitInfo { short: Some(c[..7].to_string()), commit: Some(c), dirty, note: Some("commit from DDM_GIT_COMMIT".into()) };
        }
    }
    let Some(commit) = git(dir, &["rev-parse", "HEAD"]) else {
        return GitInfo { commit: None, short: None, dirty: false, note: Some("not a git checkout (or git is not installed)".into()) };
    };
    let short = git(dir, &["rev-parse", "--short", "HEAD"]);
    let mut args: Vec<String> = vec!["status".into(), "--porcelain".into(), "--".into(), ":/".into()];
    if let (Some(top), Ok(res)) = (git(dir, &["rev-parse", "--show-toplevel"]), abs(results)) {
        let top = PathBuf::from(top);
        let top = top.canonicalize().unwrap_or(top);
        if let Ok(rel) = res.strip_prefix(&top) {
            if !rel.as_os_str().is_empty() {
                args.push(format!(":(top,exclude){}", rel.display()));
            }
        }
    }
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    match git(dir, &args) {
        Some(s) => GitInfo { commit: Some(commit), short, dirty: !s.trim().is_empty(), note: None },
        None => GitInfo { commit: Some(commit), short, dirty: true, note: Some("`git status` failed; assumed dirty".into()) },
    }
}

/// Absolute, symlink-free form of a path that may not exist yet (its parent must).
fn abs(p: &Path) -> std::io::Result<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Ok(c);
    }
    let a = std::path::absolute(p)?;
    match (a.parent(), a.file_name()) {
        (Some(parent), Some(name)) => Ok(parent.canonicalize().unwrap_or_else(|_| parent.to_path_buf()).join(name)),
        _ => Ok(a),
    }
}

/// Describe the device `spec` (a `model.device` value) resolves to.
pub fn device_info(spec: &str) -> Result<DeviceInfo> {
    let device = config::resolve_device(spec)?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into());
    if device.starts_with("cuda") {
        let idx = device.trim_start_matches("cuda:").to_string();
        let q = Command::new("nvidia-smi")
            .args(["--query-gpu=name,driver_version", "--format=csv,noheader", &format!("--id={idx}")])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        let (name, driver) = match q.as_deref().and_then(|s| s.lines().next()).and_then(|l| l.split_once(',')) {
            Some((n, d)) => (n.trim().to_string(), Some(d.trim().to_string())),
            None => ("unknown GPU (nvidia-smi did not answer)".to_string(), None),
        };
        let cuda_version = Command::new("nvidia-smi").output().ok().and_then(|o| {
            let s = String::from_utf8_lossy(&o.stdout).to_string();
            s.split("CUDA Version:").nth(1).and_then(|r| r.split_whitespace().next()).map(|v| v.to_string())
        });
        Ok(DeviceInfo { device, name, driver_version: driver, cuda_version, host })
    } else {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| "unknown CPU".into());
        Ok(DeviceInfo { device, name: cpu, driver_version: None, cuda_version: None, host })
    }
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Hashes of the model files (as the loader reports them) and the datasets of every point; loads
/// each distinct model and dataset once, so missing files fail here, before any run.
pub fn hashes(points: &[Point]) -> Result<Vec<FileHash>> {
    let mut out: Vec<FileHash> = Vec::new();
    let mut models: Vec<&RawConfig> = Vec::new();
    let mut datasets: Vec<&data::DataConfig> = Vec::new();
    for p in points {
        let c = &p.config;
        if !models.iter().any(|m| m.model == c.model) {
            models.push(c);
            let loaded = run::load_model(&c.clone().resolve()?)?;
            if c.model.source == "random" {
                let arch = serde_json::to_string(&c.model.arch).map_err(|e| Error::msg(e.to_string()))?;
                out.push(FileHash {
                    role: "model".into(),
                    what: format!("random weights (init_std {}, seeded by the run seed), arch {arch}", c.model.init_std),
                    sha256: hex(&Sha256::digest(arch.as_bytes())),
                });
            }
            for f in &loaded.files {
                if f.is_file() && !out.iter().any(|h| h.what == f.display().to_string()) {
                    out.push(FileHash { role: "model".into(), what: f.display().to_string(), sha256: sha256_file(f)? });
                }
            }
        }
        if !datasets.contains(&&c.data) {
            datasets.push(&c.data);
            let splits = data::load(&c.data)?;
            let mut files: Vec<PathBuf> = Vec::new();
            if let Some(path) = &c.data.path {
                if path.is_file() {
                    files.push(path.clone());
                } else if let Ok(rd) = std::fs::read_dir(path) {
                    files = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
                    files.sort();
                }
            }
            if files.is_empty() {
                let json = serde_json::to_string(&(&splits.train, &splits.dev, &splits.test)).map_err(|e| Error::msg(e.to_string()))?;
                let spec = serde_json::to_string(&c.data).map_err(|e| Error::msg(e.to_string()))?;
                out.push(FileHash {
                    role: "dataset".into(),
                    what: format!("{} items (train+dev+test as JSON) of {spec}", splits.name),
                    sha256: hex(&Sha256::digest(json.as_bytes())),
                });
            }
            for f in files {
                if !out.iter().any(|h| h.what == f.display().to_string()) {
                    out.push(FileHash { role: "dataset".into(), what: f.display().to_string(), sha256: sha256_file(&f)? });
                }
            }
        }
    }
    Ok(out)
}

/// What `manifest.json` holds, with each point's full run config.
pub type Manifest = ddm_schema::Manifest<RawConfig>;

/// A manifest for a new folder (no end time).
pub fn new(study: &Study, folder: &str, git: GitInfo, device: DeviceInfo, hashes: Vec<FileHash>, command: Vec<String>) -> Result<Manifest> {
    Ok(Manifest {
        study: study.name.clone(),
        folder: folder.to_string(),
        study_path: study.path.clone(),
        study_toml: study.text.clone(),
        sets: study.sets.clone(),
        base_toml: study.base_toml.clone(),
        question: study.file.question.clone(),
        axis_keys: study.axis_keys.clone(),
        points: study.points.clone(),
        fingerprint: study.fingerprint()?,
        git,
        harness_version: env!("CARGO_PKG_VERSION").to_string(),
        candle_version: env!("HARNESS_CANDLE_VERSION").to_string(),
        device,
        start: chrono::Utc::now().to_rfc3339(),
        end: None,
        command,
        resumed: Vec::new(),
        hashes,
    })
}

/// Read `<folder>/manifest.json`.
pub fn read(folder: &Path) -> Result<Manifest> {
    Ok(StudyDir::new(folder).read_manifest()?)
}

/// Write `<folder>/manifest.json` atomically.
pub fn write(m: &Manifest, folder: &Path) -> Result<()> {
    Ok(StudyDir::new(folder).write_manifest(m)?)
}
