//! The study file (`studies/<name>.toml`) and its expansion into validated run points.
//!
//! ## Schema
//! ```toml
//! question = "Does annealing the attention mask help?"   # documentation
//! gpu_minutes = "to be measured"                          # documentation: a number or a note
//! base_config = "../configs/quick-ddm.toml"   # optional; relative to the study file's folder
//! seeds = [0, 1, 2]              # each point runs once per seed (overrides `seed`); default [base seed]
//! primary_metric = "macro_f1"    # or "accuracy"; default macro_f1 for PubMedQA, accuracy otherwise
//! zero_shot = true               # also evaluate the untrained base model (AR), once per dataset/model
//! devices = "0,1"                # worker processes: GPU indices, `cpu`, or `all` (see `--devices`)
//!
//! [base]                         # a run config (`harness train` schema), over base_config
//! name = "anneal"
//! [base.objective]
//! kind = "diffusion"
//!
//! [grid]                         # cartesian product: dotted run-config key → list of values
//! "objective.anneal_steps" = [1, 50, 200]
//!
//! [zip]                          # varied together: equal-length lists
//! "adapter.rank" = [4, 16]
//! "adapter.alpha" = [8, 32]
//!
//! [[variants]]                   # explicit named override sets
//! label = "pubmedqa"
//! set = { "data.dataset" = "pubmedqa", "data.path" = "../shared/data/pubmedqa" }
//!
//! [variants.by_objective.diffusion]  # this variant's diffusion points only (after the study's
//! "objective.score_padding" = false  # by_objective below)
//!
//! [by_objective.diffusion]       # laid over the points whose objective is diffusion, after the
//! "objective.anneal_steps" = 50  # axes: settings only that objective takes (an autoregressive
//! "eval.steps_sweep" = [1, 2]    # config with a diffusion field is an error)
//! ```
//! Points are variants × zip rows × grid product, each run once per seed. Keys inside `[grid]`,
//! `[zip]` and `set` may be quoted (`"train.lr"`) or bare dotted keys (`train.lr`, which TOML
//! nests as tables; they are flattened back). Every point's [`RawConfig`] is built by TOML tree
//! edits on the base table and validated before anything runs; errors name the study file and
//! the key.

use crate::config::{self, ObjectiveConfig, ObjectiveKind, RawConfig};
use crate::data::DatasetKind;
use crate::model::lora::AdapterKind;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The study file as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyFile {
    /// The question the study answers (documentation).
    #[serde(default)]
    pub question: Option<String>,
    /// GPU time the study needs, in minutes, or a note such as `"to be measured"` (documentation).
    #[serde(default)]
    pub gpu_minutes: Option<toml::Value>,
    /// A run config file (TOML, `harness train` schema) the `[base]` table is laid over; a relative
    /// path is taken from the study file's folder.
    #[serde(default)]
    pub base_config: Option<PathBuf>,
    /// The base run config (inline, or overrides of `base_config`).
    #[serde(default)]
    pub base: toml::Table,
    /// Cartesian axes: dotted run-config key → list of values.
    #[serde(default)]
    pub grid: toml::Table,
    /// Zipped axes: dotted run-config key → list of values; all lists have the same length and
    /// their i-th values go together.
    #[serde(default)]
    pub zip: toml::Table,
    /// Explicit named override sets; every point is run once per variant.
    #[serde(default)]
    pub variants: Vec<VariantSpec>,
    /// Seeds: every point runs once per seed, overriding `seed`. Default: the base config's seed.
    #[serde(default)]
    pub seeds: Option<Vec<u64>>,
    /// The metric reports sort and highlight by. Default: macro-F1 for PubMedQA, accuracy otherwise.
    #[serde(default)]
    pub primary_metric: Option<PrimaryMetric>,
    /// Also evaluate the base model without training (read as AR), once per dataset and model.
    #[serde(default)]
    pub zero_shot: bool,
    /// Per objective kind (`diffusion`, `autoregressive`): dotted run-config key → value, laid over
    /// the points of that objective after the axes. Part of the base, not of a point's overrides
    /// (ddm and AR points still pair).
    #[serde(default)]
    pub by_objective: toml::Table,
    /// Worker processes to run the points in (`harness study --devices` overrides it): `all`
    /// (one per visible GPU) or comma-separated GPU indices and `cpu`, repeats allowed
    /// (`"0,0"`: two workers on GPU 0). Default: the study's own process. Not part of a point.
    #[serde(default)]
    pub devices: Option<String>,
}

/// One `[[variants]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// Name of the variant, part of run ids (`[A-Za-z0-9._=-]` after sanitising).
    pub label: String,
    /// Overrides: dotted run-config key → value.
    #[serde(default)]
    pub set: toml::Table,
    /// Per objective kind, like the study's `by_objective`, for this variant's points only; laid
    /// over them after the study's (a setting one objective takes only in this variant, e.g. the
    /// diffusion runs of a letter variant scoring no padding).
    #[serde(default)]
    pub by_objective: toml::Table,
}

pub use ddm_schema::PrimaryMetric;

/// The default primary metric for a dataset: macro-F1 for PubMedQA (unbalanced yes/no/maybe),
/// else accuracy.
pub fn default_primary_metric(d: DatasetKind) -> PrimaryMetric {
    if d == DatasetKind::Pubmedqa {
        PrimaryMetric::MacroF1
    } else {
        PrimaryMetric::Accuracy
    }
}

/// One run of a study: a validated run config and where it came from (the record is
/// `ddm_schema::Point`, as `manifest.json` holds it).
pub type Point = ddm_schema::Point<RawConfig>;

/// Key of ddm-vs-AR pairing: every override except `objective.*`, the dataset and the seed. Two
/// runs with the same key differ at most in their objective.
pub fn pair_key(p: &Point) -> String {
    let mut parts: Vec<String> = p.overrides.iter().filter(|(k, _)| !k.starts_with("objective.")).map(|(k, v)| format!("{k}={v}")).collect();
    parts.push(format!("data={}", p.config.data.dataset.as_str()));
    parts.push(format!("seed={}", p.seed));
    parts.join(" ")
}

/// A loaded, expanded and validated study.
#[derive(Debug, Clone)]
pub struct Study {
    /// Study name (the file stem).
    pub name: String,
    /// The study file.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
    /// Its parsed form.
    pub file: StudyFile,
    /// `--set` overrides applied to the base.
    pub sets: Vec<String>,
    /// The base run config after `base_config`, `[base]` and `--set` (TOML).
    pub base_toml: String,
    /// Swept keys (zip, then grid), in file order.
    pub axis_keys: Vec<String>,
    /// Every run: trained points, then zero-shot evaluations.
    pub points: Vec<Point>,
}

impl Study {
    /// A digest of everything that decides what the study runs: two invocations with the same
    /// fingerprint (and commit) may share a result folder.
    pub fn fingerprint(&self) -> Result<String> {
        let json = serde_json::to_string(&self.points).map_err(|e| Error::msg(e.to_string()))?;
        Ok(hex(&Sha256::digest(json.as_bytes())))
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `NAME_OR_PATH` → the study file: an existing file, a path ending in `.toml`, or
/// `<studies_dir>/<NAME>.toml`.
pub fn resolve_path(name_or_path: &str, studies_dir: &Path) -> PathBuf {
    let p = PathBuf::from(name_or_path);
    if p.is_file() || name_or_path.ends_with(".toml") || name_or_path.contains('/') {
        p
    } else {
        studies_dir.join(format!("{name_or_path}.toml"))
    }
}

fn err(file: &Path, key: &str, msg: impl std::fmt::Display) -> Error {
    Error::config(key, format!("{msg} (in study {})", file.display()))
}

/// Flatten nested tables into `dotted.key → leaf` pairs (arrays and scalars are leaves).
fn flatten(prefix: &str, t: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in t {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(inner) => flatten(&key, inner, out),
            _ => out.push((key, v.clone())),
        }
    }
}

/// Set `dotted.key = value` in a TOML tree, creating tables on the way.
pub fn set_key(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::config(key, "empty key segment"));
    }
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(Error::config(key, format!("`{p}` is not a table"))),
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// Lay `over` onto `base`, table by table.
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A value in compact TOML syntax (`50`, `"pubmedqa"`, `[1, 2]`).
pub fn value_text(v: &toml::Value) -> String {
    v.to_string()
}

/// A value as it appears in run ids: strings without quotes.
fn value_label(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        // Debug keeps floats short: 0.003, 4.0, 1e30.
        toml::Value::Float(f) => format!("{f:?}"),
        other => other.to_string(),
    }
}

/// Replace characters outside `[A-Za-z0-9._=-]` with `_`.
pub fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "._=-".contains(c) { c } else { '_' }).collect()
}

/// Dotted key → value pairs, in order.
type Overrides = Vec<(String, toml::Value)>;

/// Settings per objective kind (`diffusion`, `autoregressive`): kind → its overrides.
type ByObjective = std::collections::BTreeMap<String, Overrides>;

/// A `by_objective` table (at `key` of the study file): its kinds checked, its keys flattened.
fn by_objective_table(path: &Path, key: &str, table: &toml::Table) -> Result<ByObjective> {
    let mut out = ByObjective::new();
    for (kind, v) in table {
        let key = format!("{key}.{kind}");
        toml::Value::try_into::<ObjectiveKind>(toml::Value::String(kind.clone()))
            .map_err(|_| err(path, &key, "must be by_objective.diffusion or by_objective.autoregressive"))?;
        let t = v.as_table().ok_or_else(|| err(path, &key, "must be a table of dotted run-config keys"))?;
        let mut set = Vec::new();
        flatten("", t, &mut set);
        out.insert(kind.clone(), set);
    }
    Ok(out)
}

/// An error's text without the `config:` prefix, for nesting in another error.
fn describe(e: &Error) -> String {
    match e {
        Error::Config { key, msg } => format!("`{key}`: {msg}"),
        other => other.to_string(),
    }
}

/// A point's (or the base's) run config, with its checkpoint family's presets applied
/// ([`RawConfig::from_table`]; the study prints them once, for its base).
fn deserialize(table: &toml::Table, origin: &str) -> Result<RawConfig> {
    Ok(RawConfig::from_table(table.clone(), origin)?.0)
}

/// The `objective.kind` a run-config table names (`diffusion` when it names none).
fn objective_of(t: &toml::Table) -> String {
    let kind = t.get("objective").and_then(|o| o.get("kind")).and_then(|k| k.as_str());
    kind.unwrap_or("diffusion").to_string()
}

fn objective_short(k: ObjectiveKind) -> &'static str {
    match k {
        ObjectiveKind::Diffusion => "ddm",
        ObjectiveKind::Autoregressive => "ar",
    }
}

/// Read, expand and validate a study. `sets` are `key=value` overrides of the base config.
pub fn load(path: &Path, sets: &[String]) -> Result<Study> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let name = sanitize(&path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default());
    if name.is_empty() {
        return Err(err(path, "study", "the study file needs a name"));
    }
    let origin = format!("study {}", path.display());
    let file: StudyFile = config::from_toml_str(&text, &origin)?;
    if let Some(v) = &file.gpu_minutes {
        if !(v.is_integer() || v.is_float() || v.is_str()) {
            return Err(err(path, "gpu_minutes", "must be a number of minutes or a note such as \"to be measured\""));
        }
    }
    // Base table: base_config, then [base], then --set.
    let mut base = match &file.base_config {
        Some(p) => {
            // Relative to the study file's folder, wherever the study is run from.
            let p = &path.parent().map(|d| d.join(p)).unwrap_or_else(|| p.clone());
            let t = std::fs::read_to_string(p).map_err(|e| err(path, "base_config", format!("{}: {e}", p.display())))?;
            t.parse::<toml::Table>().map_err(|e| err(path, "base_config", format!("{}: {e}", p.display())))?
        }
        None => toml::Table::new(),
    };
    merge(&mut base, &file.base);
    config::apply_overrides(&mut base, sets)?;
    let (base_raw, notes) = RawConfig::from_table(base.clone(), &format!("{origin} [base]"))?;
    for n in notes {
        eprintln!("{n}");
    }
    let base_toml = toml::to_string(&base).map_err(|e| Error::msg(e.to_string()))?;

    // Axes.
    let mut zip = Vec::new();
    flatten("", &file.zip, &mut zip);
    let mut grid = Vec::new();
    flatten("", &file.grid, &mut grid);
    let mut axis_keys: Vec<String> = Vec::new();
    let mut zip_len = None;
    for (section, axes) in [("zip", &zip), ("grid", &grid)] {
        for (k, v) in axes.iter() {
            let key = format!("{section}.\"{k}\"");
            let list = v.as_array().ok_or_else(|| err(path, &key, "must be a list of values"))?;
            if list.is_empty() {
                return Err(err(path, &key, "is an empty list"));
            }
            if k == "seed" || k == "name" || k == "train.checkpoint_dir" {
                return Err(err(path, &key, "cannot be swept (use `seeds = [...]` for seeds; names and checkpoints are set by the study)"));
            }
            if axis_keys.contains(k) {
                return Err(err(path, &key, "is swept twice"));
            }
            if section == "zip" {
                match zip_len {
                    None => zip_len = Some((k.clone(), list.len())),
                    Some((ref k0, n)) if n != list.len() => {
                        return Err(err(path, &key, format!("has {} values but zip.\"{k0}\" has {n}: zipped lists must have equal lengths", list.len())))
                    }
                    _ => {}
                }
            }
            // The key must exist in the run config and take these values.
            for item in list {
                let mut t = base.clone();
                set_key(&mut t, k, item.clone()).map_err(|e| err(path, &key, describe(&e)))?;
                deserialize(&t, "the run config").map_err(|e| err(path, &key, format!("not a valid run-config key or value: {}", describe(&e))))?;
            }
            axis_keys.push(k.clone());
        }
    }
    let mut variants: Vec<(Option<String>, Overrides, ByObjective)> = Vec::new();
    for (i, v) in file.variants.iter().enumerate() {
        let key = format!("variants[{i}]");
        if sanitize(&v.label).is_empty() {
            return Err(err(path, &format!("{key}.label"), "must not be empty"));
        }
        if variants.iter().any(|(l, _, _)| l.as_deref() == Some(v.label.as_str())) {
            return Err(err(path, &format!("{key}.label"), format!("`{}` is used twice", v.label)));
        }
        let mut set = Vec::new();
        flatten("", &v.set, &mut set);
        for (k, val) in &set {
            let mut t = base.clone();
            set_key(&mut t, k, val.clone()).map_err(|e| err(path, &format!("{key}.set.\"{k}\""), describe(&e)))?;
            deserialize(&t, "the run config")
                .map_err(|e| err(path, &format!("{key}.set.\"{k}\""), format!("not a valid run-config key or value: {}", describe(&e))))?;
        }
        let by = by_objective_table(path, &format!("{key}.by_objective"), &v.by_objective)?;
        variants.push((Some(v.label.clone()), set, by));
    }
    if variants.is_empty() {
        variants.push((None, Vec::new(), Default::default()));
    }
    let by_objective = by_objective_table(path, "by_objective", &file.by_objective)?;
    let seeds = file.seeds.clone().unwrap_or_else(|| vec![base_raw.seed]);
    if seeds.is_empty() {
        return Err(err(path, "seeds", "needs at least one seed"));
    }
    for (i, s) in seeds.iter().enumerate() {
        if seeds[..i].contains(s) {
            return Err(err(path, "seeds", format!("seed {s} appears twice")));
        }
    }

    // Zip rows and grid product.
    let zip_rows: Vec<Vec<(String, toml::Value)>> = match zip_len {
        None => vec![Vec::new()],
        Some((_, n)) => (0..n)
            .map(|i| zip.iter().filter_map(|(k, v)| v.as_array().and_then(|a| a.get(i)).map(|x| (k.clone(), x.clone()))).collect())
            .collect(),
    };
    let mut grid_rows: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
    for (k, v) in &grid {
        let list = v.as_array().cloned().unwrap_or_default();
        let mut next = Vec::with_capacity(grid_rows.len() * list.len());
        for row in &grid_rows {
            for x in &list {
                let mut r = row.clone();
                r.push((k.clone(), x.clone()));
                next.push(r);
            }
        }
        grid_rows = next;
    }
    // Short names of the axes in run ids: the last key segment unless two axes share it.
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    let short = |k: &str| {
        let l = last(k);
        if axis_keys.iter().filter(|a| last(a) == l).count() > 1 {
            k.to_string()
        } else {
            l
        }
    };

    let mut points: Vec<Point> = Vec::new();
    for &seed in &seeds {
        for (label, vset, vby) in &variants {
            for zrow in &zip_rows {
                for grow in &grid_rows {
                    let mut t = base.clone();
                    let mut overrides = Vec::new();
                    let mut axes = Vec::new();
                    for (k, v) in vset {
                        set_key(&mut t, k, v.clone())?;
                        overrides.push((k.clone(), value_text(v)));
                    }
                    let mut id_parts: Vec<String> = Vec::new();
                    if let Some(l) = label {
                        id_parts.push(l.clone());
                    }
                    for (k, v) in zrow.iter().chain(grow) {
                        set_key(&mut t, k, v.clone())?;
                        overrides.push((k.clone(), value_text(v)));
                        axes.push((k.clone(), value_text(v)));
                        if k != "objective.kind" {
                            id_parts.push(format!("{}={}", short(k), value_label(v)));
                        }
                    }
                    let kind = objective_of(&t);
                    for (k, v) in by_objective.get(&kind).into_iter().flatten().chain(vby.get(&kind).into_iter().flatten()) {
                        set_key(&mut t, k, v.clone())?;
                    }
                    t.insert("seed".into(), toml::Value::Integer(seed as i64));
                    let probe = deserialize(&t, &origin)?;
                    id_parts.insert(0, objective_short(probe.objective.kind()).to_string());
                    let config_id = sanitize(&id_parts.join("-"));
                    let id = format!("{config_id}-seed{seed}");
                    t.insert("name".into(), toml::Value::String(id.clone()));
                    let raw = deserialize(&t, &format!("{origin}, run {id}"))?;
                    raw.validate().map_err(|e| err(path, &format!("run {id}"), describe(&e)))?;
                    let primary_metric = file.primary_metric.unwrap_or(default_primary_metric(raw.data.dataset));
                    points.push(Point { id, config_id, variant: label.clone(), overrides, axes, seed, zero_shot: false, primary_metric, config: raw });
                }
            }
        }
    }
    if file.zero_shot {
        let mut zs: Vec<Point> = Vec::new();
        for p in &points {
            if zs.iter().any(|z| z.config.data == p.config.data && z.config.model == p.config.model) {
                continue;
            }
            let mut raw = p.config.clone();
            raw.objective = ObjectiveConfig::Autoregressive;
            raw.eval.steps_sweep.clear(); // a diffusion setting
            raw.eval.threshold_sweep.clear(); // a diffusion setting
            raw.adapter.kind = AdapterKind::Lora;
            raw.adapter.targets.clear();
            raw.adapter.train_embeddings = false;
            raw.seed = seeds[0];
            let mut config_id = sanitize(&format!("zero_shot-{}", p.variant.clone().unwrap_or_else(|| raw.data.dataset.as_str().to_string())));
            let base_id = config_id.clone();
            let mut k = 2;
            while zs.iter().any(|z| z.config_id == config_id) {
                config_id = format!("{base_id}-{k}");
                k += 1;
            }
            raw.name = config_id.clone();
            raw.validate().map_err(|e| err(path, &format!("run {config_id}"), describe(&e)))?;
            let overrides = p.overrides.iter().filter(|(k, _)| k.starts_with("data.") || k.starts_with("model.")).cloned().collect();
            zs.push(Point {
                id: config_id.clone(),
                config_id,
                variant: p.variant.clone(),
                overrides,
                axes: Vec::new(),
                seed: seeds[0],
                zero_shot: true,
                primary_metric: p.primary_metric,
                config: raw,
            });
        }
        points.extend(zs);
    }
    for (i, p) in points.iter().enumerate() {
        if points[..i].iter().any(|q| q.id == p.id) {
            return Err(err(path, &format!("run {}", p.id), "two points get the same run id; give the variants distinct labels or values that differ after sanitising"));
        }
    }
    Ok(Study { name, path: path.to_path_buf(), text, file, sets: sets.to_vec(), base_toml, axis_keys, points })
}
