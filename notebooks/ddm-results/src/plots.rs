//! SVG figures drawn with plotters (SVG backend only: text stays `<text>` elements, so no
//! system fonts are needed), shown in a notebook as HTML through evcxr's display protocol.
//!
//! Two shapes cover the notebooks: [`forest`] (one row per configuration, a value with its
//! interval per series) and [`lines`] / [`lines_scaled`] (series over a numeric or categorical
//! x axis, with optional interval bars, faint raw series behind smoothed ones, and a log-scale
//! y axis). [`ema`] smooths a curve. [`crate::figures`] feeds them from a [`crate::Study`].

use crate::Result;
use plotters::prelude::*;

/// An SVG image (or several side by side), displayed inline by evcxr.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// The SVG documents, left to right.
    pub svgs: Vec<String>,
}

impl Figure {
    /// Figures side by side (wrapping when narrow).
    pub fn row(figs: impl IntoIterator<Item = Figure>) -> Figure {
        Figure { svgs: figs.into_iter().flat_map(|f| f.svgs).collect() }
    }

    /// The figure as HTML: the SVGs in a wrapping flex row.
    pub fn html(&self) -> String {
        let mut s = String::from("<div style=\"display:flex;flex-wrap:wrap;gap:8px\">");
        for svg in &self.svgs {
            s.push_str("<div>");
            s.push_str(svg);
            s.push_str("</div>");
        }
        s.push_str("</div>");
        s
    }

    /// evcxr's display hook: a cell whose value is a `Figure` shows it.
    pub fn evcxr_display(&self) {
        println!("EVCXR_BEGIN_CONTENT text/html\n{}\nEVCXR_END_CONTENT", self.html());
    }

    /// A figure that only says `text` (no data for a plot).
    pub fn note(title: &str, text: &str) -> Result<Figure> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (640, 80)).into_drawing_area();
            root.fill(&WHITE)?;
            root.draw(&Text::new(title.to_string(), (10, 12), ("sans-serif", 16).into_font()))?;
            root.draw(&Text::new(text.to_string(), (10, 44), ("sans-serif", 13).into_font().color(&RGBColor(90, 90, 90))))?;
            root.present()?;
        }
        Ok(Figure { svgs: vec![svg] })
    }
}

/// A value on a row of a [`forest`]: `(row, value, interval)`.
pub type RowPoint = (usize, f64, Option<(f64, f64)>);

/// One series of a [`forest`]: values on rows (categories).
#[derive(Debug, Clone, Default)]
pub struct RowSeries {
    /// Legend name.
    pub name: String,
    /// `(row, value, interval)`.
    pub points: Vec<RowPoint>,
}

/// One series of [`lines`].
#[derive(Debug, Clone, Default)]
pub struct XySeries {
    /// Legend name; empty: no legend entry.
    pub name: String,
    /// `(x, y)` in order.
    pub points: Vec<(f64, f64)>,
    /// Interval bars `(x, lo, hi)`.
    pub bars: Vec<(f64, f64, f64)>,
    /// Draw a circle at each point.
    pub markers: bool,
    /// Colour index (series sharing it share a colour, e.g. seeds of one configuration).
    pub color: usize,
    /// Drawn thin and faint (the raw curve behind its smoothed one); never in the legend.
    pub faint: bool,
}

/// The y axis of [`lines_scaled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum YScale {
    /// Linear.
    #[default]
    Linear,
    /// Logarithmic (base 10); values ≤ 0 are left out.
    Log,
}

/// Exponential moving average of a curve, debiased as TensorBoard's smoothing is:
/// `s_i = β·s_{i-1} + (1-β)·y_i`, shown as `s_i / (1 - β^i)` so the start is not pulled to 0.
/// `beta = 0` returns the curve; non-finite values are skipped. `beta` is clamped to `[0, 0.999]`.
pub fn ema(points: &[(f64, f64)], beta: f64) -> Vec<(f64, f64)> {
    let beta = if beta.is_finite() { beta.clamp(0.0, 0.999) } else { 0.0 };
    let (mut s, mut w) = (0.0, 0.0);
    let mut out = Vec::with_capacity(points.len());
    for &(x, y) in points.iter().filter(|p| p.1.is_finite()) {
        s = beta * s + (1.0 - beta) * y;
        w = beta * w + (1.0 - beta);
        out.push((x, s / w));
    }
    out
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

/// How many integers lie in `lo..=hi`: asking plotters for exactly that many labels makes it
/// choose a step of 1, so that every category (an integer position) gets its label.
fn integers(lo: f64, hi: f64) -> usize {
    (hi.floor() - lo.ceil()).max(0.0) as usize + 1
}

/// An axis label: `8`, `0.25`, `1.5e-4`, `12000`.
fn number(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.abs() >= 1e5 || x.abs() < 1e-3 {
        format!("{x:.1e}")
    } else {
        let s = format!("{x:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A log-axis label: three significant digits (`25.1`, `6.31`, `0.398`).
fn significant(x: f64) -> String {
    if !(x.is_finite() && x > 0.0) || !(1e-3..1e5).contains(&x) {
        return number(x);
    }
    let digits = (2 - x.log10().floor() as i32).max(0) as usize;
    let s = format!("{x:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn padded(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.into_iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * 0.08 } else { lo.abs().max(1.0) * 0.1 };
    (lo - pad, hi + pad)
}

/// Rows (configurations) on the y axis, top to bottom; each series a point with its interval
/// bar, offset a little within the row. `refs` are reference marks `(row, value)` (a black
/// tick, e.g. the majority baseline), named `ref_name` in the legend. `x_range` fixes the axis
/// (e.g. `0..1` for accuracy).
pub fn forest(title: &str, x_desc: &str, rows: &[String], series: &[RowSeries], refs: &[(usize, f64)], ref_name: &str, x_range: Option<(f64, f64)>) -> Result<Figure> {
    if rows.is_empty() || series.iter().all(|s| s.points.is_empty()) {
        return Figure::note(title, "no data in this folder");
    }
    let n = rows.len();
    let label_px = rows.iter().map(|r| r.chars().count()).max().unwrap_or(4) as u32 * 7 + 16;
    // An empty band under the rows holds the legend, so that it hides no data.
    let entries = series.len() + usize::from(!refs.is_empty());
    let legend_rows = 0.6 * entries as f64 + 0.3;
    let height = 90 + 34 * n as u32 + 20 * entries as u32;
    let (y_lo, y_hi) = (-0.6 - legend_rows, n as f64 - 0.4);
    let (x0, x1) = x_range.unwrap_or_else(|| {
        padded(series.iter().flat_map(|s| s.points.iter().flat_map(|&(_, v, i)| [Some(v), i.map(|i| i.0), i.map(|i| i.1)])).flatten().chain(refs.iter().map(|r| r.1)))
    });
    // Row i is drawn at y = n - 1 - i (the first row on top).
    let y_of = |row: usize, k: usize| {
        let m = series.len() as f64;
        (n - 1 - row) as f64 + (k as f64 - (m - 1.0) / 2.0) * (0.5 / m.max(1.0))
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720 + label_px.saturating_sub(120), height)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(label_px)
            .build_cartesian_2d(x0..x1, y_lo..y_hi)?;
        let fmt = |y: &f64| {
            let r = y.round();
            if (y - r).abs() < 1e-6 && r >= 0.0 && (r as usize) < n {
                rows[n - 1 - r as usize].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .y_labels(integers(y_lo, y_hi))
            .y_label_formatter(&fmt)
            .x_label_formatter(&|x: &f64| number(*x))
            .x_desc(x_desc)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        if !refs.is_empty() {
            chart
                .draw_series(refs.iter().map(|&(r, v)| {
                    let y = (n - 1 - r) as f64;
                    PathElement::new(vec![(v, y - 0.35), (v, y + 0.35)], ShapeStyle::from(&BLACK).stroke_width(2))
                }))?
                .label(ref_name)
                .legend(|(x, y)| PathElement::new(vec![(x + 10, y - 6), (x + 10, y + 6)], ShapeStyle::from(&BLACK).stroke_width(2)));
        }
        for (k, s) in series.iter().enumerate() {
            let c = color(k);
            chart.draw_series(
                s.points.iter().filter_map(|&(r, v, i)| i.map(|(lo, hi)| ErrorBar::new_horizontal(y_of(r, k), lo, v, hi, c.stroke_width(2), 8))),
            )?;
            chart
                .draw_series(s.points.iter().map(|&(r, v, _)| Circle::new((v, y_of(r, k)), 4, c.filled())))?
                .label(s.name.clone())
                .legend(move |(x, y)| Circle::new((x + 10, y), 4, c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 12))
            .draw()?;
        root.present()?;
    }
    Ok(Figure { svgs: vec![svg] })
}

/// Series over x: lines (with circles when `markers`), interval bars. With `x_labels`, x is
/// categorical: point `x = i` is labelled `x_labels[i]`.
pub fn lines(title: &str, x_desc: &str, y_desc: &str, series: &[XySeries], x_labels: Option<&[String]>) -> Result<Figure> {
    lines_scaled(title, x_desc, y_desc, series, x_labels, YScale::Linear)
}

/// [`lines`] with a choice of y scale. On a log scale the values are drawn as log10 and the
/// axis labels give the values themselves; values ≤ 0 are left out.
pub fn lines_scaled(title: &str, x_desc: &str, y_desc: &str, series: &[XySeries], x_labels: Option<&[String]>, scale: YScale) -> Result<Figure> {
    let log = scale == YScale::Log;
    let logged;
    let series = if log {
        let f = |y: f64| (y > 0.0).then(|| y.log10());
        logged = series
            .iter()
            .map(|s| XySeries {
                points: s.points.iter().filter_map(|&(x, y)| Some((x, f(y)?))).collect(),
                bars: s.bars.iter().filter_map(|&(x, lo, hi)| Some((x, f(lo)?, f(hi)?))).collect(),
                ..s.clone()
            })
            .collect::<Vec<_>>();
        &logged[..]
    } else {
        series
    };
    if series.iter().all(|s| s.points.is_empty()) {
        return Figure::note(title, "no data in this folder");
    }
    let (x0, x1) = match x_labels {
        Some(l) => (-0.5, l.len() as f64 - 0.5),
        None => {
            let (lo, hi) = padded(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
            (lo, hi)
        }
    };
    let (y0, y1) = padded(series.iter().flat_map(|s| s.points.iter().map(|p| p.1).chain(s.bars.iter().flat_map(|b| [b.1, b.2]))));
    let named = series.iter().filter(|s| !s.name.is_empty() && !s.faint).count();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 380 + 16 * named.saturating_sub(4) as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        let fmt = |x: &f64| match x_labels {
            Some(l) => {
                let r = x.round();
                if (x - r).abs() < 1e-6 && r >= 0.0 && (r as usize) < l.len() {
                    l[r as usize].clone()
                } else {
                    String::new()
                }
            }
            None => number(*x),
        };
        let yfmt = |y: &f64| if log { significant(10f64.powf(*y)) } else { number(*y) };
        let y_desc = if log { format!("{y_desc} (log scale)") } else { y_desc.to_string() };
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_desc).y_desc(y_desc.as_str()).light_line_style(RGBColor(235, 235, 235)).x_label_formatter(&fmt).y_label_formatter(&yfmt);
        if x_labels.is_some() {
            mesh.x_labels(integers(x0, x1));
        }
        mesh.draw()?;
        // faint (raw) series first, so the smoothed ones are drawn over them
        let order = series.iter().filter(|s| s.faint).chain(series.iter().filter(|s| !s.faint));
        for s in order {
            let c = color(s.color);
            if s.faint {
                chart.draw_series(LineSeries::new(s.points.iter().copied(), c.mix(0.25).stroke_width(1)))?;
                continue;
            }
            let drawn = chart.draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))?;
            if !s.name.is_empty() {
                drawn.label(s.name.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            }
            if s.markers {
                chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
            }
            let at = |x: f64, lo: f64, hi: f64| s.points.iter().find(|p| p.0 == x).map(|p| p.1).unwrap_or((lo + hi) / 2.0);
            chart.draw_series(s.bars.iter().map(|&(x, lo, hi)| ErrorBar::new_vertical(x, lo, at(x, lo, hi), hi, c.stroke_width(1), 8)))?;
        }
        if named > 0 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .label_font(("sans-serif", 12))
                .draw()?;
        }
        root.present()?;
    }
    Ok(Figure { svgs: vec![svg] })
}
