//! What a study varies: the swept value of `study.ipynb`'s x axis, the series drawn over it,
//! and the decoding-step sweep of the diffusion sampler (`generate@steps=N`).

use ddm_schema::{MethodResult, Point};
use crate::summary::Spread;
use crate::tables::Table;
use crate::{Result, Study};

/// The x axis of a study: a swept key and its values in study order.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// The swept key (`objective.anneal_steps`), `variant`, or `objective.kind` when the study
    /// sweeps nothing else.
    pub key: String,
    /// Its values, in the order of the study's points.
    pub values: Vec<String>,
}

fn push_new(v: &mut Vec<String>, x: String) {
    if !v.contains(&x) {
        v.push(x);
    }
}

/// The short name of an objective.
pub fn objective_short(kind: &str) -> &str {
    match kind {
        "diffusion" => "ddm",
        "autoregressive" => "AR",
        k => k,
    }
}

impl Axis {
    /// The first swept key besides `objective.kind`; else the variants; else the objective.
    pub fn of(study: &Study) -> Axis {
        let m = &study.manifest;
        let trained: Vec<&Point> = study.trained().collect();
        let key = if let Some(k) = m.axis_keys.iter().find(|k| *k != "objective.kind") {
            k.clone()
        } else if trained.iter().any(|p| p.variant.is_some()) {
            "variant".into()
        } else {
            "objective.kind".into()
        };
        let mut values = Vec::new();
        for p in &trained {
            if let Some(x) = Axis::value(&key, p) {
                push_new(&mut values, x);
            }
        }
        Axis { key, values }
    }

    fn value(key: &str, p: &Point) -> Option<String> {
        match key {
            "variant" => p.variant.clone(),
            "objective.kind" => Some(objective_short(p.objective()).to_string()),
            k => p.axis(k),
        }
    }

    /// Index of point `p` on the axis.
    pub fn index(&self, p: &Point) -> Option<usize> {
        let v = Axis::value(&self.key, p)?;
        self.values.iter().position(|x| *x == v)
    }

    /// The series `p` belongs to: its objective, the other swept keys and the variant.
    pub fn series(&self, p: &Point) -> String {
        let mut parts = vec![objective_short(p.objective()).to_string()];
        for (k, v) in &p.axes {
            if k != &self.key && k != "objective.kind" {
                parts.push(format!("{}={}", k.rsplit('.').next().unwrap_or(k), v.trim_matches('"')));
            }
        }
        if self.key != "variant" {
            if let Some(v) = &p.variant {
                parts.push(v.clone());
            }
        }
        parts.join(" ")
    }
}

/// A metric drawn against the swept value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// The study's primary metric (accuracy or macro-F1), per evaluation method.
    Primary,
    /// Accuracy, per evaluation method.
    Accuracy,
    /// Macro-F1, per evaluation method.
    MacroF1,
    /// Final training loss (mean of the last 10% of steps): each objective's own weighting,
    /// not comparable across objectives.
    FinalLoss,
    /// Dev negative log-likelihood per response token (AR exact, ddm the ELBO bound):
    /// comparable across objectives.
    DevNll,
    /// Training tokens per second.
    TrainTokensPerS,
    /// Generated tokens per second (`generate`).
    GenerateTokensPerS,
}

impl Metric {
    /// Axis title.
    pub fn name(&self) -> &'static str {
        match self {
            Metric::Primary => "primary metric",
            Metric::Accuracy => "accuracy",
            Metric::MacroF1 => "macro-F1",
            Metric::FinalLoss => "final training loss (own objective)",
            Metric::DevNll => "dev NLL per token",
            Metric::TrainTokensPerS => "training tokens/s",
            Metric::GenerateTokensPerS => "generated tokens/s",
        }
    }

    fn column(&self) -> Option<&'static str> {
        match self {
            Metric::FinalLoss => Some("final_loss"),
            Metric::DevNll => Some("dev_nll"),
            Metric::TrainTokensPerS => Some("train_tokens_per_s"),
            Metric::GenerateTokensPerS => Some("generate_throughput"),
            _ => None,
        }
    }
}

/// One point of a sweep plot.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    /// Series name.
    pub series: String,
    /// Index on the axis.
    pub x: usize,
    /// Value.
    pub y: f64,
    /// Interval (the pooled-item bootstrap across seeds, a single run's own interval, or the
    /// range across seeds for losses and throughput).
    pub interval: Option<(f64, f64)>,
}

/// The points of `metric` over the swept axis (zero-shot evaluations left out: they have no
/// swept value).
pub fn points(study: &Study, axis: &Axis, metric: Metric) -> Vec<SweepPoint> {
    let mut out = Vec::new();
    let first = |id: &str| study.manifest.points_of(id).next().cloned();
    if let Some(col) = metric.column() {
        for id in study.manifest.config_ids() {
            let Some(p) = first(&id) else { continue };
            let (Some(x), false) = (axis.index(&p), p.zero_shot) else { continue };
            if let Some(s) = Spread::of(&study.summary.values(&id, col)) {
                out.push(SweepPoint { series: axis.series(&p), x, y: s.mean, interval: (s.n > 1).then_some((s.min, s.max)) });
            }
        }
        return out;
    }
    for c in study.analysis.configs.iter().filter(|c| !c.zero_shot) {
        let Some(p) = first(&c.config_id) else { continue };
        let Some(x) = axis.index(&p) else { continue };
        let e = match metric {
            Metric::Primary => c.primary_estimate(),
            Metric::Accuracy => c.accuracy_estimate(),
            _ => c.macro_f1_estimate(),
        };
        if let Some(e) = e {
            out.push(SweepPoint { series: format!("{} · {}", axis.series(&p), c.method), x, y: e.value, interval: e.interval.map(|(lo, hi)| (lo.max(0.0), hi.min(1.0))) });
        }
    }
    out
}

/// The sweep as a table: one row per configuration and method.
pub fn table(study: &Study, axis: &Axis) -> Table {
    let mut t = Table::new(
        &format!("Against `{}` (95% intervals; loss and throughput: mean over seeds)", axis.key),
        &[&axis.key, "series", "method", "runs", "primary metric", "accuracy", "macro-F1", "MDE (80% power)", "dev NLL/token", "final loss (own objective)", "train tokens/s"],
    );
    for c in &study.analysis.configs {
        let Some(p) = study.manifest.points_of(&c.config_id).next() else { continue };
        let x = if c.zero_shot { "(zero-shot)".to_string() } else { axis.index(p).map(|i| axis.values[i].clone()).unwrap_or_default() };
        let mean = |col: &str, d: usize| Spread::of(&study.summary.values(&c.config_id, col)).map(|s| format!("{:.*}", d, s.mean)).unwrap_or_default();
        t.rows.push(vec![
            x,
            if c.zero_shot { c.config_id.clone() } else { axis.series(p) },
            c.method.clone(),
            format!("{}/{}", c.done, c.runs),
            format!("{} {}", c.primary_metric.as_str(), c.primary_estimate().map(|e| e.text()).unwrap_or_default()),
            c.accuracy_estimate().map(|e| e.text()).unwrap_or_default(),
            c.macro_f1_estimate().map(|e| e.text()).unwrap_or_default(),
            c.mde.map(|d| format!("{d:.3}")).unwrap_or_else(|| "–".into()),
            mean("dev_nll", 3),
            mean("final_loss", 3),
            mean("train_tokens_per_s", 0),
        ]);
    }
    t
}

/// Every done diffusion run's `generate` results with their decoding steps: `(run id, steps,
/// result)`, plain `generate` at the run's `eval.steps`; sorted by run, then steps.
pub fn steps_points(study: &Study) -> Result<Vec<(String, u64, MethodResult)>> {
    let mut out = Vec::new();
    for p in study.trained().filter(|p| p.objective() == "diffusion") {
        let Some(eval) = study.eval(&p.id)? else { continue };
        let mut rows: Vec<(String, u64, MethodResult)> = eval
            .methods
            .into_iter()
            .filter_map(|m| {
                let steps = if m.method == "generate" { p.eval_steps()? } else { m.sweep_steps()? };
                Some((p.id.clone(), steps, m))
            })
            .collect();
        rows.sort_by_key(|r| r.1);
        rows.dedup_by_key(|r| r.1);
        out.extend(rows);
    }
    Ok(out)
}
