//! `manifest.json` of a study result folder (the subset the notebooks show).

use serde::Deserialize;
use serde_json::Value;

/// Git state of the code that ran.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Git {
    /// Full commit hash; `None` outside a git checkout.
    pub commit: Option<String>,
    /// Short commit hash.
    pub short: Option<String>,
    /// Uncommitted changes were present.
    #[serde(default)]
    pub dirty: bool,
}

/// The machine the runs used.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Device {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// GPU name or CPU model.
    #[serde(default)]
    pub name: String,
    /// Host name.
    #[serde(default)]
    pub host: String,
}

/// One run of the study: a point of its grid / zip / variants, at one seed.
#[derive(Debug, Clone, Deserialize)]
pub struct Point {
    /// Run id (`ddm-anneal_steps=50-seed1`).
    pub id: String,
    /// The id without the seed: runs sharing it form one configuration.
    pub config_id: String,
    /// Variant label, when the study has variants.
    #[serde(default)]
    pub variant: Option<String>,
    /// Every override besides the seed, dotted key → TOML value.
    #[serde(default)]
    pub overrides: Vec<(String, String)>,
    /// Swept (zip and grid) values only, dotted key → TOML value.
    #[serde(default)]
    pub axes: Vec<(String, String)>,
    /// Seed.
    pub seed: u64,
    /// An evaluation of the untrained base model.
    #[serde(default)]
    pub zero_shot: bool,
    /// `accuracy` or `macro_f1`.
    #[serde(default)]
    pub primary_metric: String,
    /// The full run config, kept as JSON.
    #[serde(default)]
    pub config: Value,
}

impl Point {
    /// `diffusion` or `autoregressive`.
    pub fn objective(&self) -> &str {
        self.config.pointer("/objective/kind").and_then(Value::as_str).unwrap_or("")
    }

    /// Decoding steps of the diffusion sampler for plain `generate` (`eval.steps`).
    pub fn eval_steps(&self) -> Option<u64> {
        self.config.pointer("/eval/steps").and_then(Value::as_u64)
    }

    /// The value of swept key `key`, without TOML quotes.
    pub fn axis(&self, key: &str) -> Option<String> {
        self.axes.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim_matches('"').to_string())
    }
}

/// What `manifest.json` holds (unknown fields ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// Study name.
    pub study: String,
    /// Folder name (`<yyyymmdd-hhmmss>-<sha>[-dirty]`).
    pub folder: String,
    /// The question the study answers.
    #[serde(default)]
    pub question: Option<String>,
    /// Swept keys (zip, then grid).
    #[serde(default)]
    pub axis_keys: Vec<String>,
    /// Every run.
    pub points: Vec<Point>,
    /// Git state.
    #[serde(default)]
    pub git: Git,
    /// `harness` version.
    #[serde(default)]
    pub harness_version: String,
    /// candle version.
    #[serde(default)]
    pub candle_version: String,
    /// Device and host.
    #[serde(default)]
    pub device: Device,
    /// UTC start time.
    #[serde(default)]
    pub start: String,
    /// UTC end time: set once every run is done or failed.
    #[serde(default)]
    pub end: Option<String>,
    /// `--set` overrides of the base config.
    #[serde(default)]
    pub sets: Vec<String>,
}

impl Manifest {
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
    pub fn points_of<'a>(&'a self, config_id: &'a str) -> impl Iterator<Item = &'a Point> + 'a {
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
