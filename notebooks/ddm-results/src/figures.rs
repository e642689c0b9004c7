//! The notebooks' figures, from a [`Study`]: accuracy per configuration, loss curves (smoothed,
//! raw faint behind, optionally on a log scale), the diffusion loss by noise level (t bucket),
//! the dev NLL per token across objectives, accuracy against decoding steps, throughput, and a
//! metric against the swept value. Files that older folders lack (`t_buckets.csv`, the
//! `dev_nll` column) give a figure that says so, never an error.

use crate::plots::{ema, forest, lines, lines_scaled, Figure, RowSeries, XySeries, YScale};
use crate::summary::Spread;
use crate::sweep::{self, Axis, Metric};
use crate::{Result, Study};

fn clamp01((lo, hi): (f64, f64)) -> (f64, f64) {
    (lo.max(0.0), hi.min(1.0))
}

/// Accuracy and macro-F1 per configuration (rows), one series per evaluation method, with
/// their intervals and the majority baseline (black tick).
pub fn accuracy(study: &Study) -> Result<Figure> {
    let configs = &study.analysis.configs;
    let mut rows: Vec<String> = Vec::new();
    let mut methods: Vec<String> = Vec::new();
    for c in configs {
        if !rows.contains(&c.config_id) {
            rows.push(c.config_id.clone());
        }
        if !methods.contains(&c.method) {
            methods.push(c.method.clone());
        }
    }
    let mut refs = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if let Some(m) = configs.iter().find(|c| &c.config_id == r).and_then(|c| c.majority.as_ref()) {
            refs.push((i, m.accuracy));
        }
    }
    let panel = |title: &str, f1: bool| {
        let series: Vec<RowSeries> = methods
            .iter()
            .map(|m| RowSeries {
                name: m.clone(),
                points: configs
                    .iter()
                    .filter(|c| &c.method == m)
                    .filter_map(|c| {
                        let e = if f1 { c.macro_f1_estimate() } else { c.accuracy_estimate() }?;
                        Some((rows.iter().position(|r| *r == c.config_id)?, e.value, e.interval.map(clamp01)))
                    })
                    .collect(),
            })
            .collect();
        forest(title, title, &rows, &series, if f1 { &[] } else { &refs }, "majority baseline", Some((0.0, 1.0)))
    };
    Ok(Figure::row([panel("accuracy", false)?, panel("macro-F1", true)?]))
}

/// How loss curves are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurveStyle {
    /// EMA smoothing factor β in `[0, 1)` ([`ema`]); 0 draws the raw curve alone.
    pub smoothing: f64,
    /// The y axis.
    pub scale: YScale,
}

impl Default for CurveStyle {
    /// β = 0.9 on a linear axis.
    fn default() -> Self {
        CurveStyle { smoothing: 0.9, scale: YScale::Linear }
    }
}

impl CurveStyle {
    /// The default smoothing on a log-scale y axis.
    pub fn log() -> Self {
        CurveStyle { scale: YScale::Log, ..CurveStyle::default() }
    }
}

/// `points` as the series a curve is drawn with: the raw curve faint, the EMA over it (named
/// `name`); the raw curve alone when `style.smoothing` is 0.
fn curve(name: String, points: Vec<(f64, f64)>, color: usize, style: CurveStyle) -> Vec<XySeries> {
    if style.smoothing <= 0.0 {
        return vec![XySeries { name, points, color, ..Default::default() }];
    }
    let smooth = ema(&points, style.smoothing);
    vec![XySeries { points, color, faint: true, ..Default::default() }, XySeries { name, points: smooth, color, ..Default::default() }]
}

/// Training curves of every trained run with [`CurveStyle::default`] (see [`loss_curves_with`]).
pub fn loss_curves(study: &Study) -> Result<Figure> {
    loss_curves_with(study, CurveStyle::default())
}

/// Training curves of every trained run: weighted `loss` (each objective's own weighting: not
/// comparable across objectives) and unweighted `ce` per step, one colour per configuration,
/// one line per seed; smoothed with an EMA over the raw curve drawn faint behind.
pub fn loss_curves_with(study: &Study, style: CurveStyle) -> Result<Figure> {
    let ids = study.manifest.config_ids();
    let (mut loss, mut ce) = (Vec::new(), Vec::new());
    let mut named: Vec<String> = Vec::new();
    for p in study.trained() {
        let rows = study.metrics(&p.id)?;
        if rows.is_empty() {
            continue;
        }
        let color = ids.iter().position(|c| *c == p.config_id).unwrap_or(0);
        let name = if named.contains(&p.config_id) { String::new() } else { p.config_id.clone() };
        named.push(p.config_id.clone());
        let finite = |v: f64| v.is_finite();
        loss.extend(curve(name.clone(), rows.iter().filter(|r| finite(r.loss)).map(|r| (r.step as f64, r.loss)).collect(), color, style));
        ce.extend(curve(name, rows.iter().filter(|r| finite(r.ce)).map(|r| (r.step as f64, r.ce)).collect(), color, style));
    }
    let smoothed = if style.smoothing > 0.0 { format!(", EMA β = {}", style.smoothing) } else { String::new() };
    Ok(Figure::row([
        lines_scaled(&format!("weighted loss (each objective's own){smoothed}"), "step", "loss", &loss, None, style.scale)?,
        lines_scaled(&format!("unweighted cross-entropy over scored tokens{smoothed}"), "step", "ce", &ce, None, style.scale)?,
    ]))
}

/// The diffusion loss by noise level: per diffusion configuration, the unweighted CE per masked
/// token in each t bucket against the step (`t_buckets.csv`; seeds pooled, weighted by their
/// token counts), smoothed as `style` says. Which noise levels learn: a bucket whose curve stays
/// flat is not being learnt. A note when no run of the folder has `t_buckets.csv`.
pub fn t_buckets(study: &Study, style: CurveStyle) -> Result<Figure> {
    let mut panels = Vec::new();
    for id in study.manifest.config_ids() {
        // (step, bucket) -> (Σ ce·tokens, Σ tokens), and the bucket ranges
        let mut acc: std::collections::BTreeMap<(u64, usize), (f64, usize)> = Default::default();
        let mut ranges: std::collections::BTreeMap<usize, (f64, f64)> = Default::default();
        for p in study.manifest.points_of(&id).filter(|p| !p.zero_shot) {
            for r in study.t_buckets(&p.id)? {
                ranges.insert(r.bucket, (r.t_lo, r.t_hi));
                if let Some(ce) = r.ce.filter(|c| c.is_finite()) {
                    let e = acc.entry((r.step, r.bucket)).or_insert((0.0, 0));
                    e.0 += ce * r.tokens as f64;
                    e.1 += r.tokens;
                }
            }
        }
        if ranges.is_empty() {
            continue;
        }
        let mut series = Vec::new();
        for (&k, &(lo, hi)) in &ranges {
            let points: Vec<(f64, f64)> = acc.iter().filter(|((_, b), (_, n))| *b == k && *n > 0).map(|((s, _), (sum, n))| (*s as f64, sum / *n as f64)).collect();
            if !points.is_empty() {
                series.extend(curve(format!("t {lo:.1}–{hi:.1}"), points, k, style));
            }
        }
        panels.push(lines_scaled(&format!("{id}: CE per masked token by t bucket"), "step", "ce", &series, None, style.scale)?);
    }
    if panels.is_empty() {
        return Figure::note("diffusion loss by t bucket", "no t_buckets.csv in this folder (no diffusion runs, or runs written before the file existed)");
    }
    Ok(Figure::row(panels))
}

/// The dev negative log-likelihood per response token per trained configuration (mean over
/// seeds, bar: the range), the loss figure comparable across objectives (AR exact, diffusion
/// the ELBO bound). A note when the folder's `summary.csv` has no `dev_nll` values.
pub fn dev_nll(study: &Study) -> Result<Figure> {
    let mut rows = Vec::new();
    let mut s = RowSeries { name: "mean (range over seeds)".into(), points: Vec::new() };
    for id in study.manifest.config_ids() {
        if let Some(x) = Spread::of(&study.summary.values(&id, "dev_nll")) {
            s.points.push((rows.len(), x.mean, (x.n > 1).then_some((x.min, x.max))));
            rows.push(id.clone());
        }
    }
    if rows.is_empty() {
        return Figure::note("dev NLL per response token", "no dev_nll in this folder's summary.csv (written before it existed, or no dev split)");
    }
    forest("dev NLL per response token (AR exact, ddm ELBO bound)", "nats per token", &rows, &[s], &[], "", None)
}

/// Accuracy of the diffusion sampler's `generate` against the number of decoding steps: one
/// line per run (colour per configuration), with the run's Wilson interval.
pub fn decoding_steps(study: &Study) -> Result<Figure> {
    let pts = sweep::steps_points(study)?;
    if pts.is_empty() {
        return Figure::note("accuracy against decoding steps", "no diffusion runs with `generate` in this folder");
    }
    let ids = study.manifest.config_ids();
    let mut series: Vec<XySeries> = Vec::new();
    let mut named: Vec<String> = Vec::new();
    let mut run = String::new();
    for (id, steps, m) in &pts {
        if *id != run {
            run = id.clone();
            let cfg = study.manifest.points.iter().find(|p| &p.id == id).map(|p| p.config_id.clone()).unwrap_or_default();
            let name = if named.contains(&cfg) { String::new() } else { cfg.clone() };
            named.push(cfg.clone());
            series.push(XySeries { name, markers: true, color: ids.iter().position(|c| *c == cfg).unwrap_or(0), ..Default::default() });
        }
        let s = series.last_mut().expect("pushed above");
        let a = &m.report.accuracy;
        s.points.push((*steps as f64, a.estimate));
        s.bars.push((*steps as f64, a.lo, a.hi));
    }
    lines("diffusion generate: accuracy against decoding steps (Wilson 95%)", "decoding steps", "accuracy", &series, None)
}

/// Training tokens/s and generated tokens/s per configuration (mean; bars: range over seeds).
pub fn throughput(study: &Study) -> Result<Figure> {
    let ids = study.manifest.config_ids();
    let panel = |title: &str, col: &str| {
        let mut rows = Vec::new();
        let mut s = RowSeries { name: "mean (range over seeds)".into(), points: Vec::new() };
        for id in &ids {
            if let Some(x) = Spread::of(&study.summary.values(id, col)).filter(|x| x.mean > 0.0) {
                s.points.push((rows.len(), x.mean, (x.n > 1).then_some((x.min, x.max))));
                rows.push(id.clone());
            }
        }
        forest(title, title, &rows, &[s], &[], "", None)
    };
    Ok(Figure::row([panel("training tokens/s", "train_tokens_per_s")?, panel("generated tokens/s", "generate_throughput")?]))
}

/// `metric` against the study's swept value, one line per series, with interval bars.
pub fn sweep(study: &Study, metric: Metric) -> Result<Figure> {
    let axis = Axis::of(study);
    let pts = sweep::points(study, &axis, metric);
    let mut series: Vec<XySeries> = Vec::new();
    for p in pts {
        let k = match series.iter().position(|s| s.name == p.series) {
            Some(k) => k,
            None => {
                series.push(XySeries { name: p.series.clone(), markers: true, color: series.len(), ..Default::default() });
                series.len() - 1
            }
        };
        series[k].points.push((p.x as f64, p.y));
        if let Some((lo, hi)) = p.interval {
            series[k].bars.push((p.x as f64, lo, hi));
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let mut name = metric.name().to_string();
    if metric == Metric::Primary {
        let mut kinds: Vec<&str> = study.analysis.configs.iter().map(|c| c.primary_metric.as_str()).collect();
        kinds.dedup();
        if kinds.len() == 1 {
            name = format!("primary metric ({})", kinds[0]);
        }
    }
    lines(&format!("{name} against {}", axis.key), &axis.key, &name, &series, Some(&axis.values))
}
