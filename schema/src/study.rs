//! `manifest.json` of a study result folder: what ran ([`Point`]s), from which code
//! ([`GitInfo`]), on which machine ([`DeviceInfo`]), with which files ([`FileHash`]).
//!
//! A point carries its full run config. The config type belongs to `harness`, so the records
//! are generic over it: `harness` reads and writes `Manifest<RawConfig>`, the notebooks read
//! `Manifest` (the config kept as JSON, `serde_json::Value`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

/// The git state of the code that ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GitInfo {
    /// Full commit hash; `None` when not a git checkout.
    pub commit: Option<String>,
    /// Short commit hash.
    pub short: Option<String>,
    /// Uncommitted changes (outside the results folder) were present.
    #[serde(default)]
    pub dirty: bool,
    /// Why the commit is unknown, when it is.
    pub note: Option<String>,
}

impl GitInfo {
    /// The folder-name suffix: `<short sha>[-dirty]`, or `nogit`.
    pub fn suffix(&self) -> String {
        match &self.short {
            Some(s) if self.dirty => format!("{s}-dirty"),
            Some(s) => s.clone(),
            None => "nogit".into(),
        }
    }
}

/// The machine the runs used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Resolved device of the runs: `cpu` or `cuda:N`.
    pub device: String,
    /// GPU name (CUDA) or CPU model.
    #[serde(default)]
    pub name: String,
    /// NVIDIA driver version (CUDA).
    pub driver_version: Option<String>,
    /// CUDA version the driver reports (CUDA).
    pub cuda_version: Option<String>,
    /// Host name.
    #[serde(default)]
    pub host: String,
}

/// A file (or generated content) and its sha256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileHash {
    /// `model`, `dataset`.
    pub role: String,
    /// The path, or a description of generated content.
    pub what: String,
    /// Hex sha256.
    pub sha256: String,
}

/// A later invocation that resumed the folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resumption {
    /// UTC time (RFC 3339).
    pub time: String,
    /// Its command line.
    pub command: Vec<String>,
}

/// The metric a study is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrimaryMetric {
    /// Macro-F1 over the answer labels.
    MacroF1,
    /// Accuracy.
    Accuracy,
}

impl PrimaryMetric {
    /// The config spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            PrimaryMetric::MacroF1 => "macro_f1",
            PrimaryMetric::Accuracy => "accuracy",
        }
    }
}

/// One run of a study: a run config (`C`) and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point<C = Value> {
    /// Run id, stable from the overrides: `ddm-anneal_steps=50-seed1`.
    pub id: String,
    /// The id without the seed: runs that share it form one configuration.
    pub config_id: String,
    /// Variant label, when the study has variants.
    pub variant: Option<String>,
    /// Every override of this point besides the seed (variant set, zip, grid), in order, as
    /// dotted key → value in TOML syntax.
    pub overrides: Vec<(String, String)>,
    /// Swept (zip and grid) values only: dotted key → value in TOML syntax.
    pub axes: Vec<(String, String)>,
    /// Seed of the run.
    pub seed: u64,
    /// An evaluation of the untrained base model.
    pub zero_shot: bool,
    /// The metric this run is judged by.
    pub primary_metric: PrimaryMetric,
    /// The run config (validated; `train.checkpoint_dir` is set when the run starts).
    pub config: C,
}

impl<C> Point<C> {
    /// The value of swept key `key`, without TOML quotes.
    pub fn axis(&self, key: &str) -> Option<String> {
        self.axes.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim_matches('"').to_string())
    }
}

impl Point<Value> {
    /// `diffusion` or `autoregressive` (`objective.kind` of the config), or empty.
    pub fn objective(&self) -> &str {
        self.config.pointer("/objective/kind").and_then(Value::as_str).unwrap_or("")
    }

    /// Decoding steps of the diffusion sampler for plain `generate` (`eval.steps`).
    pub fn eval_steps(&self) -> Option<u64> {
        self.config.pointer("/eval/steps").and_then(Value::as_u64)
    }
}

/// What `manifest.json` holds, with each point's run config of type `C`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest<C = Value> {
    /// Study name.
    pub study: String,
    /// This folder's name (`<yyyymmdd-hhmmss>-<sha>[-dirty]`).
    pub folder: String,
    /// The study file.
    #[serde(default)]
    pub study_path: PathBuf,
    /// The study file's text.
    #[serde(default)]
    pub study_toml: String,
    /// `--set` overrides of the base config.
    #[serde(default)]
    pub sets: Vec<String>,
    /// The base run config after `base_config`, `[base]` and `--set`.
    #[serde(default)]
    pub base_toml: String,
    /// The question the study answers (from the study file).
    pub question: Option<String>,
    /// Swept keys (zip, then grid).
    #[serde(default)]
    pub axis_keys: Vec<String>,
    /// The expanded points, each with its full run config.
    pub points: Vec<Point<C>>,
    /// Digest of the points; a rerun with the same digest and commit resumes this folder.
    #[serde(default)]
    pub fingerprint: String,
    /// Git state.
    #[serde(default)]
    pub git: GitInfo,
    /// `harness` version.
    #[serde(default)]
    pub harness_version: String,
    /// candle version (from Cargo.lock at build time).
    #[serde(default)]
    pub candle_version: String,
    /// Device and host.
    #[serde(default)]
    pub device: DeviceInfo,
    /// UTC start time (RFC 3339).
    #[serde(default)]
    pub start: String,
    /// UTC end time, written once every run is done or failed.
    pub end: Option<String>,
    /// Command line that created the folder.
    #[serde(default)]
    pub command: Vec<String>,
    /// Later invocations that resumed it.
    #[serde(default)]
    pub resumed: Vec<Resumption>,
    /// Model and dataset hashes.
    #[serde(default)]
    pub hashes: Vec<FileHash>,
}

impl<C> Manifest<C> {
    /// `<commit>` plus ` (dirty)` when the tree had uncommitted changes, or `unknown`.
    pub fn commit(&self) -> String {
        let c = self.git.commit.clone().unwrap_or_else(|| "unknown (not a git checkout)".into());
        if self.git.dirty {
            format!("{c} (dirty)")
        } else {
            c
        }
    }

    /// `cuda:0 (NVIDIA H100 …) on host`.
    pub fn device_text(&self) -> String {
        format!("{} ({}) on {}", self.device.device, self.device.name, self.device.host)
    }

    /// The points of configuration `config_id`.
    pub fn points_of<'a>(&'a self, config_id: &'a str) -> impl Iterator<Item = &'a Point<C>> + 'a {
        self.points.iter().filter(move |p| p.config_id == config_id)
    }

    /// Configuration ids in manifest order.
    pub fn config_ids(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in &self.points {
            if !out.contains(&p.config_id) {
                out.push(p.config_id.clone());
            }
        }
        out
    }
}
