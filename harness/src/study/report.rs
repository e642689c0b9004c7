//! Rendering of a study folder: comfy-table tables for the terminal and the same tables as
//! Markdown (`report.md` beside `summary.csv`), and the side-by-side comparison of two folders.
//! Reads data only; every number comes from [`super::analysis`] or, for the speed–accuracy
//! frontier, the runs' `frontier.csv`.
//!
//! Configuration intervals are the 95% pooled-item bootstrap across seeds (items resampled,
//! seeds kept: inside [0, 100]), with the seed s.d. in its own column; each comparison table
//! has a minimum-detectable-difference column (80% power, two-sided α = 0.05: two proportions
//! with items pooled across seeds in the configuration tables, McNemar's paired formula in the
//! pair table). Losses: configurations of different objectives are compared on the dev NLL per
//! response token (AR exact, ddm the ELBO bound); a training-loss column appears only in a
//! table whose trained rows share one objective.

use super::analysis::{analyze, Analysis, ConfigStats};
use super::manifest::{self, Manifest};
use super::spec::PrimaryMetric;
use crate::stats::{Interval, SeedSummary};
use crate::{Error, Result};
use ddm_schema::eval::FrontierRow;
use ddm_schema::PairedComparison;
use ddm_schema::StudyDir;
use comfy_table::{presets, Attribute, Cell, Table};
use std::path::{Path, PathBuf};

/// A table kept as text cells, rendered twice: terminal and Markdown. Bold cells are the
/// highlighted ones.
#[derive(Debug, Clone, Default)]
pub struct Tab {
    /// Title (a Markdown heading).
    pub title: String,
    /// Column names.
    pub header: Vec<String>,
    /// Rows of `(text, bold)` cells.
    pub rows: Vec<Vec<(String, bool)>>,
}

impl Tab {
    fn table(&self, markdown: bool) -> Table {
        let mut t = Table::new();
        t.load_preset(if markdown { presets::ASCII_MARKDOWN } else { presets::UTF8_FULL_CONDENSED });
        t.set_header(self.header.clone());
        for r in &self.rows {
            t.add_row(r.iter().map(|(s, bold)| match (bold, markdown) {
                (true, true) => Cell::new(format!("**{s}**")),
                (true, false) => Cell::new(s).add_attribute(Attribute::Bold),
                _ => Cell::new(s),
            }));
        }
        t
    }
    /// Terminal rendering.
    pub fn terminal(&self) -> String {
        format!("{}\n{}\n", self.title, self.table(false))
    }
    /// Markdown rendering.
    pub fn markdown(&self) -> String {
        format!("### {}\n\n{}\n", self.title, self.table(true))
    }
}

/// The speed–accuracy frontier of every generate method of every run: each run's
/// `frontier.csv` (runs in name order) under [`FrontierRow::HEADER`], the run id first; `None`
/// when no run has one (folders written before the frontier existed).
fn frontier_tab(folder: &Path) -> Result<Option<Tab>> {
    let Ok(entries) = std::fs::read_dir(StudyDir::new(folder).runs()) else { return Ok(None) };
    let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    let mut rows = Vec::new();
    for d in dirs {
        let id = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for r in ddm_schema::eval::read_frontier(&d)?.unwrap_or_default() {
            rows.push(std::iter::once(id.clone()).chain(r.cells()).map(|c| (c, false)).collect());
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let header = std::iter::once("run").chain(FrontierRow::HEADER).map(str::to_string).collect();
    Ok(Some(Tab { title: "speed–accuracy frontier (every generate method of every run)".into(), header, rows }))
}

/// A rendered report.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Lines above the tables (study, question, commit, device, runs).
    pub preamble: Vec<String>,
    /// The tables.
    pub tables: Vec<Tab>,
    /// Notes below them.
    pub notes: Vec<String>,
}

impl Rendered {
    /// For the terminal.
    pub fn terminal(&self) -> String {
        let mut s = self.preamble.join("\n") + "\n\n";
        for t in &self.tables {
            s += &t.terminal();
            s += "\n";
        }
        for n in &self.notes {
            s += n;
            s += "\n";
        }
        s
    }
    /// As Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        for (i, l) in self.preamble.iter().enumerate() {
            s += &if i == 0 { format!("# {l}\n\n") } else { format!("- {l}\n") };
        }
        s += "\n";
        for t in &self.tables {
            s += &t.markdown();
            s += "\n";
        }
        for n in &self.notes {
            s += &format!("> {n}\n\n");
        }
        s
    }
}

/// A study result folder from `PATH`: the folder itself (it has `manifest.json`), or a study's
/// results directory (`results/<study>`), meaning the folder its `latest` names.
pub fn resolve_folder(path: &Path) -> Result<PathBuf> {
    if StudyDir::is_study_folder(path) {
        return Ok(path.to_path_buf());
    }
    let latest = StudyDir::latest_file(path);
    if latest.is_file() {
        let name = std::fs::read_to_string(&latest).map_err(|e| Error::io(&latest, e))?;
        let folder = path.join(name.trim());
        if StudyDir::is_study_folder(&folder) {
            return Ok(folder);
        }
        return Err(Error::data(&latest, format!("names `{}`, which has no manifest.json", name.trim())));
    }
    Err(Error::msg(format!("{}: not a study result folder (no manifest.json) nor a study results directory (no `latest`)", path.display())))
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn pct_signed(x: f64) -> String {
    format!("{:+.1}", 100.0 * x)
}

/// `mean [lo, hi]` in percent: the pooled-item bootstrap across seeds, an older folder's
/// t-interval across seeds clipped to [0, 100] (marked ²), or a single run's own interval (¹).
fn with_interval(s: &Option<SeedSummary>, pooled: Option<Interval>, single: Option<Interval>) -> String {
    match s {
        None => "-".into(),
        Some(s) => match (pooled, &s.interval, single) {
            (Some(i), _, _) => format!("{} [{}, {}]", pct(s.mean), pct(i.lo), pct(i.hi)),
            (None, Some(i), _) => format!("{} [{}, {}]²", pct(s.mean), pct(i.lo.max(0.0)), pct(i.hi.min(1.0))),
            (None, None, Some(i)) => format!("{} [{}, {}]¹", pct(s.mean), pct(i.lo), pct(i.hi)),
            (None, None, None) => pct(s.mean),
        },
    }
}

/// The seed standard deviation in percent points, `-` with one seed.
fn seed_sd(s: &Option<SeedSummary>) -> String {
    s.as_ref().and_then(|s| s.std_dev).map(pct).unwrap_or_else(|| "-".into())
}

fn metric_name(m: PrimaryMetric) -> &'static str {
    match m {
        PrimaryMetric::MacroF1 => "macro-F1",
        PrimaryMetric::Accuracy => "accuracy",
    }
}

/// The configuration tables: one per dataset and method, sorted by the primary metric (best
/// first, in bold), zero-shot rows last.
pub fn config_tables(a: &Analysis) -> Vec<Tab> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for c in &a.configs {
        let k = (c.dataset.clone(), c.method.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut tabs = Vec::new();
    for (dataset, method) in keys {
        let mut group: Vec<&ConfigStats> = a.configs.iter().filter(|c| c.dataset == dataset && c.method == method).collect();
        let primary = group[0].primary_metric;
        group.sort_by(|x, y| {
            x.zero_shot.cmp(&y.zero_shot).then_with(|| y.primary_mean().unwrap_or(f64::NEG_INFINITY).total_cmp(&x.primary_mean().unwrap_or(f64::NEG_INFINITY)))
        });
        let best = group.iter().filter(|c| !c.zero_shot).filter_map(|c| c.primary_mean()).fold(f64::NEG_INFINITY, f64::max);
        let (pname, sname) = match primary {
            PrimaryMetric::MacroF1 => ("macro-F1", "accuracy"),
            PrimaryMetric::Accuracy => ("accuracy", "macro-F1"),
        };
        // The training loss is each objective's own: shown only when the trained rows share one.
        let mut kinds: Vec<_> = group.iter().filter(|c| !c.zero_shot).map(|c| c.objective).collect();
        kinds.dedup();
        let own_loss = (kinds.len() == 1).then(|| kinds[0]);
        let mut header = vec![
            "configuration".into(),
            "runs ok/total".into(),
            format!("{pname} % [95% pooled-item bootstrap]"),
            format!("{pname} seed s.d."),
            format!("{sname} % [95% CI]"),
            "MDE acc % (80% power)".into(),
            "majority %".into(),
            "invalid %".into(),
            "collapse".into(),
            "dev NLL/token (AR exact, ddm bound)".into(),
        ];
        if let Some(k) = own_loss {
            header.push(format!("final train loss ({})", k.as_str()));
        }
        header.extend(["train tok/s".into(), "eval throughput".into()]);
        let mut t = Tab { title: format!(
                "{dataset} — {method} (sorted by {}; 95% CIs: bootstrap over items, seeds kept; MDE: two proportions, items × seeds pooled, 80% power, two-sided α = 0.05)",
                metric_name(primary)
            ), header, rows: Vec::new() };
        for c in group {
            let (ps, ss, psd) = match primary {
                PrimaryMetric::MacroF1 => (
                    with_interval(&c.macro_f1, c.macro_f1_pooled, c.single_macro_f1),
                    with_interval(&c.accuracy, c.accuracy_pooled, c.single_accuracy),
                    seed_sd(&c.macro_f1),
                ),
                PrimaryMetric::Accuracy => (
                    with_interval(&c.accuracy, c.accuracy_pooled, c.single_accuracy),
                    with_interval(&c.macro_f1, c.macro_f1_pooled, c.single_macro_f1),
                    seed_sd(&c.accuracy),
                ),
            };
            let is_best = !c.zero_shot && c.primary_mean().is_some_and(|m| m == best);
            let name = if c.zero_shot { format!("{} (zero-shot base, AR)", c.config_id) } else { c.config_id.clone() };
            let runs = if c.failed > 0 { format!("{}/{} ({} failed)", c.done, c.runs, c.failed) } else { format!("{}/{}", c.done, c.runs) };
            let collapse = if c.collapsed.is_empty() {
                "-".to_string()
            } else {
                let mut labels = c.collapsed.clone();
                labels.dedup();
                format!("{}/{} → {}", c.collapsed.len(), c.done, labels.join(", "))
            };
            let mde = match (c.mde, c.items) {
                (Some(d), Some(n)) => format!("{} (n={n}×{})", pct(d), c.accuracy.as_ref().map(|a| a.n).unwrap_or(0)),
                (Some(d), None) => pct(d),
                _ => "-".into(),
            };
            let mut row = vec![
                (name, is_best),
                (runs, false),
                (ps, is_best),
                (psd, false),
                (ss, false),
                (mde, false),
                (c.majority.as_ref().map(|m| format!("{} ({})", pct(m.accuracy), m.label)).unwrap_or_else(|| "-".into()), false),
                (c.invalid_rate.map(pct).unwrap_or_else(|| "-".into()), false),
                (collapse, !c.collapsed.is_empty()),
                (c.dev_nll.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()), false),
            ];
            if own_loss.is_some() {
                row.push((c.final_loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()), false));
            }
            row.extend([
                (c.train_tokens_per_s.map(|t| format!("{t:.0}")).unwrap_or_else(|| "-".into()), false),
                (c.eval_throughput.as_ref().map(|(v, u)| format!("{v:.1} {u}")).unwrap_or_else(|| "-".into()), false),
            ]);
            t.rows.push(row);
        }
        tabs.push(t);
    }
    tabs
}

/// The cells a paired comparison table shows after its labels: n, both accuracies, the
/// differences with their intervals (bold when excluding 0), the MDE, b / c, p and Holm p.
fn comparison_cells(c: &PairedComparison, mde: Option<f64>, holm_p: f64) -> Vec<(String, bool)> {
    let d = |i: &Interval| format!("{} [{}, {}]", pct_signed(i.estimate), pct_signed(i.lo), pct_signed(i.hi));
    vec![
        (c.n.to_string(), false),
        (pct(c.a_accuracy), false),
        (pct(c.b_accuracy), false),
        (d(&c.accuracy_diff), c.accuracy_diff.excludes_zero()),
        (d(&c.macro_f1_diff), c.macro_f1_diff.excludes_zero()),
        (mde.map(pct).unwrap_or_else(|| "-".into()), false),
        (format!("{} / {}", c.mcnemar.b, c.mcnemar.c), false),
        (format!("{:.3}", c.mcnemar.p_value), false),
        (format!("{:.3}", holm_p), holm_p <= 0.05),
    ]
}

/// The ddm-vs-AR comparison table, or `None` when the study has no pairs.
pub fn pairs_table(a: &Analysis) -> Option<Tab> {
    if a.pairs.is_empty() {
        return None;
    }
    let mut t = Tab {
        title: "ddm vs AR, paired on the same test items (Δ = ddm − AR; exact McNemar, paired bootstrap 95% CI; MDE: paired McNemar formula, 80% power, two-sided α = 0.05)".into(),
        header: ["ddm run", "AR run", "dataset", "method", "n", "acc ddm %", "acc AR %", "Δ acc % [95% CI]", "Δ macro-F1 % [95% CI]", "MDE acc % (80% power, paired)", "b / c", "p", "Holm p"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        rows: Vec::new(),
    };
    for p in &a.pairs {
        let mut row = vec![
            (p.ddm.clone(), false),
            (p.ar.clone(), false),
            (p.dataset.clone(), false),
            (p.method.clone(), false),
        ];
        row.extend(comparison_cells(&p.comparison, p.mde, p.holm_p));
        t.rows.push(row);
    }
    Some(t)
}

/// Each run's decoding variants against its plain `generate` (same trained model, same items),
/// or `None` when no run has variants.
pub fn method_pairs_table(a: &Analysis) -> Option<Tab> {
    if a.method_pairs.is_empty() {
        return None;
    }
    let mut t = Tab {
        title: "decoding variants vs plain generate, paired on the same run and test items (Δ = variant − generate; exact McNemar, paired bootstrap 95% CI; MDE: paired, 80% power, two-sided α = 0.05)".into(),
        header: ["run", "dataset", "method", "n", "acc variant %", "acc generate %", "Δ acc % [95% CI]", "Δ macro-F1 % [95% CI]", "MDE acc % (80% power, paired)", "b / c", "p", "Holm p"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        rows: Vec::new(),
    };
    for p in &a.method_pairs {
        let mut row = vec![
            (p.run.clone(), false),
            (p.dataset.clone(), false),
            (p.method.clone(), false),
        ];
        row.extend(comparison_cells(&p.comparison, p.mde, p.holm_p));
        t.rows.push(row);
    }
    Some(t)
}

fn failed_table(folder: &Path, man: &Manifest) -> Result<Option<Tab>> {
    let rows = super::summary::collect(folder, &man.points)?;
    let failed: Vec<_> = rows.iter().filter(|r| r.status == super::summary::RunStatus::Failed).collect();
    if failed.is_empty() {
        return Ok(None);
    }
    Ok(Some(Tab {
        title: "Failed runs".into(),
        header: vec!["run".into(), "step".into(), "error".into()],
        rows: failed
            .iter()
            .map(|r| {
                let f = r.failure.as_ref();
                vec![
                    (r.point.id.clone(), false),
                    (f.and_then(|f| f.step).map(|s| s.to_string()).unwrap_or_else(|| "-".into()), false),
                    (f.map(|f| f.message.clone()).unwrap_or_default(), false),
                ]
            })
            .collect(),
    }))
}

/// Render the report of a study folder (or `results/<study>` → its `latest`) and write it as
/// Markdown to `report.md` in the folder. Returns the folder and the rendering.
pub fn report(path: &Path) -> Result<(PathBuf, Rendered)> {
    let folder = resolve_folder(path)?;
    let man = manifest::read(&folder)?;
    let a = analyze(&folder, &man)?;
    let mut preamble = vec![format!("Study `{}` — {}", man.study, man.folder)];
    if let Some(q) = &man.question {
        preamble.push(format!("question: {}", q.trim()));
    }
    preamble.push(format!(
        "commit: {}{}  ·  harness {}  ·  candle {}",
        man.git.commit.as_deref().unwrap_or("none (not a git checkout)"),
        if man.git.dirty { " (dirty)" } else { "" },
        man.harness_version,
        man.candle_version
    ));
    preamble.push(format!("device: {} ({}) on {}", man.device.device, man.device.name, man.device.host));
    preamble.push(format!("started {}  ·  ended {}", man.start, man.end.as_deref().unwrap_or("— (unfinished)")));
    preamble.push(format!("runs: {} done, {} failed, {} total", a.counts.0, a.counts.1, a.counts.2));
    let mut tables = config_tables(&a);
    tables.extend(pairs_table(&a));
    tables.extend(method_pairs_table(&a));
    tables.extend(failed_table(&folder, &man)?);
    tables.extend(frontier_tab(&folder)?);
    let mut notes = vec![
        "Intervals: 95% pooled-item bootstrap across seeds (the test items resampled, every seed kept; inside [0, 100]); the seed s.d. beside it is the spread across seeds; ¹ a single seed: the run's own interval (Wilson for accuracy, bootstrap over items for macro-F1); ² a folder written before the bootstrap: Student-t across seeds, clipped to [0, 100]. Bold: best configuration by the primary metric; in the pair table, differences whose interval excludes 0 and Holm p ≤ 0.05.".to_string(),
        "MDE: the smallest accuracy difference detected with 80% power by a two-sided test at α = 0.05. Configuration tables: two proportions, δ = (z₀.₉₇₅ + z₀.₈)·√((p(1−p) + q(1−q))/N) at the row's accuracy p and the alternative q = p ∓ δ, with N = test items × seeds (seeds pooled as independent trials); pair table: McNemar, max((z₀.₉₇₅ + z₀.₈)·√(ψ/n), (z₀.₉₇₅ + z₀.₈)²/n) with ψ the discordant share. Differences smaller than the MDE are not resolved by this study.".to_string(),
        "Losses: configurations of different objectives are compared on the dev NLL per response token (eos included; AR exact, ddm the Monte Carlo ELBO bound, an upper bound on its NLL given the response length — the padding is hidden, so the ddm figure does not pay for where the response ends, AR's does through its eos); each objective's training loss is its own weighting and is shown only in tables of one objective.".to_string(),
    ];
    notes.extend(a.note.clone());
    let r = Rendered { preamble, tables, notes };
    let dir = StudyDir::new(&folder);
    let md = dir.report_md();
    ddm_schema::write_atomic(&md, r.markdown().as_bytes())?;
    // The numbers behind the tables, as data for notebooks (which do not compile candle).
    dir.write_analysis(&a)?;
    // Keep results/index.csv in step with the folders (e.g. after copying folders in).
    if let Some(root) = folder.parent().and_then(|p| p.parent()) {
        super::summary::write_index(root)?;
    }
    Ok((folder, r))
}

/// Two study folders side by side: per configuration, dataset and method present in both, the
/// primary metric and accuracy of A and B (means across seeds) and their differences B − A.
pub fn compare(a_path: &Path, b_path: &Path) -> Result<Rendered> {
    let fa = resolve_folder(a_path)?;
    let fb = resolve_folder(b_path)?;
    let (ma, mb) = (manifest::read(&fa)?, manifest::read(&fb)?);
    let (aa, ab) = (analyze(&fa, &ma)?, analyze(&fb, &mb)?);
    let mut t = Tab {
        title: format!("A = {}/{}  vs  B = {}/{}", ma.study, ma.folder, mb.study, mb.folder),
        header: ["configuration", "dataset", "method", "primary", "A %", "B %", "B − A", "acc A %", "acc B %", "acc B − A"].iter().map(|s| s.to_string()).collect(),
        rows: Vec::new(),
    };
    let m = |s: &Option<SeedSummary>| s.as_ref().map(|s| s.mean);
    let show = |x: Option<f64>| x.map(pct).unwrap_or_else(|| "-".into());
    let diff = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => pct_signed(y - x),
        _ => "-".into(),
    };
    for ca in &aa.configs {
        let Some(cb) = ab.configs.iter().find(|c| c.config_id == ca.config_id && c.dataset == ca.dataset && c.method == ca.method) else { continue };
        let (pa, pb) = (m(&ca.primary), m(&cb.primary));
        let (xa, xb) = (m(&ca.accuracy), m(&cb.accuracy));
        t.rows.push(vec![
            (ca.config_id.clone(), false),
            (ca.dataset.clone(), false),
            (ca.method.clone(), false),
            (metric_name(ca.primary_metric).to_string(), false),
            (show(pa), false),
            (show(pb), false),
            (diff(pa, pb), false),
            (show(xa), false),
            (show(xb), false),
            (diff(xa, xb), false),
        ]);
    }
    let mut notes = Vec::new();
    if t.rows.is_empty() {
        notes.push("no configuration is present in both folders".to_string());
    }
    notes.push("Means across seeds; the runs of A and B are not paired here (use `harness report` for paired tests within a study).".into());
    Ok(Rendered { preamble: vec![format!("Compare {} and {}", fa.display(), fb.display())], tables: vec![t], notes })
}
