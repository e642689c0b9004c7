//! Tables of a study: printed with comfy-table, shown in a notebook as an HTML `<table>`.
//!
//! Comparison tables carry the minimum detectable difference at 80% power (from
//! `analysis.json`; `–` for folders written before it) and intervals inside [0, 1] (the
//! pooled-item bootstrap across seeds; older folders' t-intervals shown clipped, and labelled
//! so). Losses are compared across objectives on the dev NLL per token only.

use crate::summary::Spread;
use crate::{Result, Study};
use std::fmt;

/// A titled table of text cells.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Title shown above it.
    pub title: String,
    /// Column names.
    pub header: Vec<String>,
    /// Rows.
    pub rows: Vec<Vec<String>>,
    /// A note shown below it.
    pub note: Option<String>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

impl Table {
    /// An empty table with `title` and `header`.
    pub fn new(title: &str, header: &[&str]) -> Self {
        Table { title: title.into(), header: header.iter().map(|h| h.to_string()).collect(), rows: Vec::new(), note: None }
    }

    /// The comfy-table rendering.
    pub fn comfy(&self) -> comfy_table::Table {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED).set_header(self.header.clone());
        for r in &self.rows {
            t.add_row(r.clone());
        }
        t
    }

    /// The HTML rendering: a title, a `<table>` and the note.
    pub fn html(&self) -> String {
        let mut s = format!("<div><b>{}</b><table class=\"ddm-table\"><thead><tr>", esc(&self.title));
        for h in &self.header {
            s += &format!("<th>{}</th>", esc(h));
        }
        s += "</tr></thead><tbody>";
        for r in &self.rows {
            s += "<tr>";
            for c in r {
                s += &format!("<td style=\"text-align:left\">{}</td>", esc(c));
            }
            s += "</tr>";
        }
        s += "</tbody></table>";
        if self.rows.is_empty() {
            s += "<i>(no rows in this folder)</i>";
        }
        if let Some(n) = &self.note {
            s += &format!("<p><small>{}</small></p>", esc(n));
        }
        s + "</div>"
    }

    /// evcxr's display hook: HTML for the notebook, the comfy-table text as plain text.
    pub fn evcxr_display(&self) {
        println!("EVCXR_BEGIN_CONTENT text/html\n{}\nEVCXR_END_CONTENT", self.html());
        println!("EVCXR_BEGIN_CONTENT text/plain\n{self}\nEVCXR_END_CONTENT");
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.title)?;
        write!(f, "{}", self.comfy())?;
        if let Some(n) = &self.note {
            write!(f, "\n{n}")?;
        }
        Ok(())
    }
}

/// Which folder, commit and device the notebook shows.
pub fn info(study: &Study) -> Table {
    let m = &study.manifest;
    let (done, failed, total) = study.counts();
    let mut t = Table::new(&format!("Study `{}`", m.study), &["", ""]);
    let mut row = |k: &str, v: String| t.rows.push(vec![k.to_string(), v]);
    row("folder", format!("{}/{} (from `{}`)", m.study, m.folder, study.spec));
    row("question", m.question.clone().unwrap_or_default());
    row("commit", m.commit());
    row("device", m.device_text());
    row("versions", format!("harness {} · candle {}", m.harness_version, m.candle_version));
    row("time", format!("{} → {}", m.start, m.end.clone().unwrap_or_default()));
    row("runs", format!("{done} done, {failed} failed, {total} total"));
    if !m.sets.is_empty() {
        row("--set", m.sets.join(" "));
    }
    t
}

/// `0.052`, or `–` when absent.
fn opt(x: Option<f64>, digits: usize) -> String {
    x.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "–".into())
}

/// Accuracy and macro-F1 per configuration and method, with intervals (pooled-item bootstrap
/// across seeds), the seed s.d., the minimum detectable difference, the majority baseline,
/// invalid rate, collapse and the dev NLL per token (comparable across objectives; the
/// training loss only when every trained configuration has one objective).
pub fn accuracy(study: &Study) -> Table {
    let mut kinds: Vec<&str> = study.analysis.configs.iter().filter(|c| !c.zero_shot).map(|c| c.objective.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let own_loss = (kinds.len() == 1).then(|| format!("final train loss ({})", kinds[0]));
    let mut header = vec![
        "configuration", "dataset", "method", "runs", "primary", "accuracy", "macro-F1", "interval", "accuracy seed s.d.", "MDE (80% power)", "majority baseline", "invalid",
        "collapsed onto", "dev NLL/token",
    ];
    if let Some(h) = &own_loss {
        header.push(h.as_str());
    }
    let mut t = Table::new("Accuracy and macro-F1 per configuration (95% intervals)", &header);
    for c in &study.analysis.configs {
        let acc = c.accuracy_estimate();
        let mut row = vec![
            c.config_id.clone(),
            c.dataset.clone(),
            c.method.clone(),
            format!("{}/{}{}", c.done, c.runs, if c.failed > 0 { format!(" ({} failed)", c.failed) } else { String::new() }),
            c.primary_metric.as_str().to_string(),
            acc.map(|e| e.text()).unwrap_or_default(),
            c.macro_f1_estimate().map(|e| e.text()).unwrap_or_default(),
            acc.map(|e| e.source.to_string()).unwrap_or_default(),
            opt(c.accuracy.as_ref().and_then(|a| a.std_dev), 3),
            match (c.mde, c.items) {
                (Some(d), Some(n)) => format!("{d:.3} (n={n}×{})", c.accuracy.as_ref().map(|a| a.n).unwrap_or(0)),
                (d, _) => opt(d, 3),
            },
            c.majority.as_ref().map(|m| format!("{:.3} ({})", m.accuracy, m.label)).unwrap_or_default(),
            c.invalid_rate.map(|x| format!("{x:.3}")).unwrap_or_default(),
            c.collapsed.join(", "),
            opt(c.dev_nll, 3),
        ];
        if own_loss.is_some() {
            row.push(c.final_loss.map(|x| format!("{x:.3}")).unwrap_or_default());
        }
        t.rows.push(row);
    }
    t.note = Some(
        "Intervals: 95% pooled-item bootstrap across seeds (test items resampled, every seed kept), the seed s.d. beside it; a single run shows its own interval \
         (Wilson for accuracy, bootstrap over items for macro-F1); folders written before the bootstrap show a Student-t interval across seeds clipped to [0, 1]. \
         MDE: smallest accuracy difference to another configuration of the same items and seeds detected with 80% power at two-sided α = 0.05 \
         (δ = (z₀.₉₇₅ + z₀.₈)·√((p(1−p) + q(1−q))/N), q = p ∓ δ, N = items × seeds). dev NLL/token: AR exact, ddm its ELBO bound; the training losses of different objectives are not comparable."
            .into(),
    );
    t
}

/// ddm-vs-AR paired comparisons: McNemar and bootstrap intervals of the differences.
pub fn comparisons(study: &Study) -> Table {
    let mut t = Table::new(
        "ddm vs AR on the same test items (differences ddm − AR, paired bootstrap 95%)",
        &["ddm run", "AR run", "dataset", "method", "n", "ddm acc", "AR acc", "Δ accuracy", "Δ macro-F1", "MDE (80% power, paired)", "McNemar b/c", "p", "Holm p"],
    );
    for p in &study.analysis.pairs {
        let c = &p.comparison;
        t.rows.push(vec![
            p.ddm.clone(),
            p.ar.clone(),
            p.dataset.clone(),
            p.method.clone(),
            c.n.to_string(),
            format!("{:.3}", c.a_accuracy),
            format!("{:.3}", c.b_accuracy),
            format!("{:+.3} [{:+.3}, {:+.3}]", c.accuracy_diff.estimate, c.accuracy_diff.lo, c.accuracy_diff.hi),
            format!("{:+.3} [{:+.3}, {:+.3}]", c.macro_f1_diff.estimate, c.macro_f1_diff.lo, c.macro_f1_diff.hi),
            opt(p.mde, 3),
            format!("{} / {}", c.mcnemar.b, c.mcnemar.c),
            format!("{:.3}", c.mcnemar.p_value),
            format!("{:.3}", p.holm_p),
        ]);
    }
    let mde = "MDE: McNemar's paired formula (z₀.₉₇₅ + z₀.₈)·√(ψ/n), ψ the discordant share ((b + c)/n).";
    t.note = Some(format!("{} {mde}", study.analysis.note.clone().unwrap_or_else(|| "McNemar b: items only ddm got right; c: only AR.".into())));
    t
}

/// Losses per configuration: the dev NLL per response token (AR exact, ddm the ELBO bound:
/// the comparable figure) beside each objective's own training and dev losses (mean and range
/// across seeds, from `summary.csv`; `–` where an older folder lacks a column).
pub fn losses(study: &Study) -> Table {
    let mut t = Table::new(
        "Losses per configuration (mean, range across seeds)",
        &["configuration", "objective", "dev NLL/token (comparable)", "dev loss (own objective)", "final train loss (own objective)"],
    );
    for p in study.manifest.config_ids().iter().filter_map(|id| study.manifest.points_of(id).next()).filter(|p| !p.zero_shot) {
        let s = |col: &str| Spread::of(&study.summary.values(&p.config_id, col)).map(|x| x.text(4)).unwrap_or_else(|| "–".into());
        t.rows.push(vec![p.config_id.clone(), p.objective().to_string(), s("dev_nll"), s("dev_loss"), s("final_loss")]);
    }
    t.note = Some(
        "dev NLL/token: negative log-likelihood per response token (eos included) on the dev split, AR exact, ddm the Monte Carlo ELBO bound \
         (an upper bound on its NLL, at the attention it is evaluated with): compare objectives on this column only. The other two are each \
         objective's own weighted loss."
            .into(),
    );
    t
}

/// Training tokens/s, generation tokens/s and likelihood items/s per configuration (mean and
/// range across seeds, from `summary.csv`).
pub fn throughput(study: &Study) -> Table {
    let mut t = Table::new("Throughput per configuration (mean, range across seeds)", &["configuration", "train tokens/s", "generate tokens/s", "likelihood items/s", "train wall s"]);
    for id in study.manifest.config_ids() {
        let s = |col: &str, d: usize| Spread::of(&study.summary.values(&id, col)).map(|x| x.text(d)).unwrap_or_else(|| "–".into());
        t.rows.push(vec![id.clone(), s("train_tokens_per_s", 0), s("generate_throughput", 1), s("likelihood_throughput", 2), s("train_wall_s", 1)]);
    }
    t
}

/// Accuracy of every diffusion run's `generate` at each number of decoding steps
/// (`generate@steps=N`, and plain `generate` at the run's `eval.steps`).
pub fn decoding_steps(study: &Study) -> Result<Table> {
    let mut t = Table::new("Diffusion sampler: accuracy against decoding steps", &["run", "steps", "accuracy", "macro-F1", "tokens/s", "forward passes / item"]);
    for (run, steps, m) in crate::sweep::steps_points(study)? {
        t.rows.push(vec![
            run,
            steps.to_string(),
            format!("{:.3} [{:.3}, {:.3}]", m.report.accuracy.estimate, m.report.accuracy.lo, m.report.accuracy.hi),
            format!("{:.3}", m.report.macro_f1.estimate),
            format!("{:.1}", m.throughput),
            format!("{:.1}", m.mean_nfe),
        ]);
    }
    Ok(t)
}
