//! Statistics: intervals and paired tests.
//!
//! What the reports use, and for what:
//!
//! - per configuration, across seeds: the mean with a Student-t interval ([`mean_t_interval`],
//!   or [`summarize`] when a configuration may have a single seed);
//! - per run: the Wilson score interval of an accuracy ([`wilson`]);
//! - ddm vs AR on the same test items: the exact McNemar test on the discordant pairs
//!   ([`mcnemar_exact`], [`mcnemar_from_correctness`]) and a paired bootstrap interval of the
//!   difference of any metric ([`paired_bootstrap_diff`]); [`bootstrap_interval`] is the
//!   one-sample version;
//! - many comparisons in one study: [`bonferroni`], [`holm`] and
//!   [`multiple_comparisons_note`].
//!
//! Every function checks its input and returns `Err` rather than panicking or producing NaN.
//! Confidence levels are fractions in the open interval (0, 1), e.g. `0.95`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
pub use ddm_schema::{Interval, McNemar, SeedSummary};
use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, Normal, StudentsT};

use crate::error::{Error, Result};

fn check_confidence(confidence: f64) -> Result<()> {
    if confidence.is_finite() && confidence > 0.0 && confidence < 1.0 {
        Ok(())
    } else {
        Err(Error::msg(format!("confidence must lie strictly between 0 and 1, got {confidence}")))
    }
}

/// The standard normal quantile `z` with `P(|Z| <= z) = confidence`.
fn normal_two_sided(confidence: f64) -> Result<f64> {
    check_confidence(confidence)?;
    let normal = Normal::new(0.0, 1.0).map_err(|e| Error::msg(format!("normal: {e}")))?;
    Ok(normal.inverse_cdf(1.0 - (1.0 - confidence) / 2.0))
}

/// The Student-t quantile `t` with `P(|T| <= t) = confidence` for `df` degrees of freedom.
fn student_two_sided(confidence: f64, df: f64) -> Result<f64> {
    check_confidence(confidence)?;
    let t = StudentsT::new(0.0, 1.0, df).map_err(|e| Error::msg(format!("Student t: {e}")))?;
    Ok(t.inverse_cdf(1.0 - (1.0 - confidence) / 2.0))
}

/// Wilson score interval for a binomial proportion `successes / n`.
///
/// With `p = successes / n` and `z` the two-sided normal quantile of `confidence`:
///
/// ```text
/// centre = (p + z²/(2n)) / (1 + z²/n)
/// half   = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/(4n²))
/// ```
///
/// The estimate is `p`; the bounds are clamped to `[0, 1]` (they are exactly 0 and 1 in the
/// edge cases `successes = 0` and `successes = n`, up to rounding).
///
/// Errors when `n = 0`, `successes > n` or `confidence` is not in (0, 1).
pub fn wilson(successes: u64, n: u64, confidence: f64) -> Result<Interval> {
    if n == 0 {
        return Err(Error::msg("Wilson interval of an empty sample (n = 0)"));
    }
    if successes > n {
        return Err(Error::msg(format!(
            "Wilson interval: {successes} successes out of only {n} trials"
        )));
    }
    let z = normal_two_sided(confidence)?;
    let nf = n as f64;
    let p = successes as f64 / nf;
    let z2 = z * z;
    let denom = 1.0 + z2 / nf;
    let centre = (p + z2 / (2.0 * nf)) / denom;
    let half = z / denom * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
    let (mut lo, mut hi) = ((centre - half).clamp(0.0, 1.0), (centre + half).clamp(0.0, 1.0));
    if successes == 0 {
        lo = 0.0;
    }
    if successes == n {
        hi = 1.0;
    }
    Ok(Interval { estimate: p, lo, hi })
}

fn check_finite(xs: &[f64], what: &str) -> Result<()> {
    if let Some((i, x)) = xs.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(Error::msg(format!("{what}: value #{i} is not finite ({x})")));
    }
    Ok(())
}

/// Arithmetic mean. Errors on an empty slice or non-finite values.
pub fn mean(xs: &[f64]) -> Result<f64> {
    if xs.is_empty() {
        return Err(Error::msg("mean of an empty sample"));
    }
    check_finite(xs, "mean")?;
    Ok(xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Sample standard deviation (denominator `n - 1`).
///
/// Errors with fewer than two values (the spread of one value is undefined) or non-finite values.
pub fn std_dev(xs: &[f64]) -> Result<f64> {
    if xs.len() < 2 {
        return Err(Error::msg(format!(
            "standard deviation needs at least 2 values, got {}",
            xs.len()
        )));
    }
    let m = mean(xs)?;
    let ss: f64 = xs.iter().map(|x| (x - m) * (x - m)).sum();
    Ok((ss / (xs.len() - 1) as f64).sqrt())
}

/// Mean with a two-sided Student-t interval: `mean ± t(n-1) · sd / sqrt(n)`.
///
/// Errors with fewer than two values: a single seed carries no information about the spread,
/// and reporting `lo = hi = mean` would claim a certainty that does not exist. Use [`summarize`]
/// when a configuration may have a single seed. Also errors on non-finite values or a bad
/// `confidence`.
pub fn mean_t_interval(xs: &[f64], confidence: f64) -> Result<Interval> {
    check_confidence(confidence)?;
    let sd = std_dev(xs)?;
    let m = mean(xs)?;
    let n = xs.len() as f64;
    let t = student_two_sided(confidence, n - 1.0)?;
    let half = t * sd / n.sqrt();
    Ok(Interval { estimate: m, lo: m - half, hi: m + half })
}

/// Summarize values across seeds: mean, standard deviation and t-interval (see
/// [`mean_t_interval`]). Errors only on an empty slice, non-finite values or a bad `confidence`.
pub fn summarize(xs: &[f64], confidence: f64) -> Result<SeedSummary> {
    check_confidence(confidence)?;
    let m = mean(xs)?;
    if xs.len() < 2 {
        return Ok(SeedSummary { n: xs.len(), mean: m, std_dev: None, interval: None });
    }
    Ok(SeedSummary {
        n: xs.len(),
        mean: m,
        std_dev: Some(std_dev(xs)?),
        interval: Some(mean_t_interval(xs, confidence)?),
    })
}

/// Exact (binomial) two-sided McNemar test on the discordant pairs.
///
/// `b` = items A got right and B got wrong, `c` = items A got wrong and B got right. Under the
/// null hypothesis of equal accuracy, `b ~ Binomial(b + c, 1/2)`, and
/// `p = min(1, 2 · P(X <= min(b, c)))`. With no discordant pairs (`b + c = 0`) `p = 1`.
pub fn mcnemar_exact(b: u64, c: u64) -> McNemar {
    let n = b + c;
    if n == 0 {
        return McNemar { b, c, p_value: 1.0 };
    }
    let k = b.min(c);
    // `Binomial::new` only fails for p outside [0, 1]; 0.5 is always valid.
    let p_value = match Binomial::new(0.5, n) {
        Ok(dist) => (2.0 * dist.cdf(k)).min(1.0),
        Err(_) => 1.0,
    };
    McNemar { b, c, p_value }
}

/// Exact McNemar test from per-item correctness of two systems on the same items
/// (`a_correct[i]`, `b_correct[i]` for item `i`). Errors when the lengths differ.
pub fn mcnemar_from_correctness(a_correct: &[bool], b_correct: &[bool]) -> Result<McNemar> {
    if a_correct.len() != b_correct.len() {
        return Err(Error::msg(format!(
            "McNemar: systems scored on different numbers of items ({} vs {})",
            a_correct.len(),
            b_correct.len()
        )));
    }
    let mut b = 0u64;
    let mut c = 0u64;
    for (&x, &y) in a_correct.iter().zip(b_correct) {
        match (x, y) {
            (true, false) => b += 1,
            (false, true) => c += 1,
            _ => {}
        }
    }
    Ok(mcnemar_exact(b, c))
}

/// Linear-interpolation quantile (type 7) of sorted, non-empty `xs`.
fn quantile_sorted(xs: &[f64], q: f64) -> f64 {
    let h = (xs.len() - 1) as f64 * q;
    let i = h.floor() as usize;
    let frac = h - i as f64;
    if i + 1 < xs.len() {
        xs[i] + frac * (xs[i + 1] - xs[i])
    } else {
        xs[xs.len() - 1]
    }
}

/// Percentile bootstrap interval of a statistic of `n_items` items.
///
/// `statistic` receives a slice of item indices (with repetitions) and returns the statistic of
/// that multiset of items. The estimate is the statistic on all items (`0..n_items`, in order);
/// the interval is the `(1-confidence)/2` and `1-(1-confidence)/2` quantiles (linear
/// interpolation) of the statistic over `n_resamples` resamples of `n_items` indices drawn
/// uniformly with replacement from a `ChaCha8Rng` seeded with `seed`, so a fixed seed gives the
/// same interval. A percentile interval need not contain the estimate for very skewed
/// statistics. Use at least 1000 resamples for 95% intervals.
///
/// Errors when `n_items` or `n_resamples` is 0, on a bad `confidence`, or when the statistic
/// returns a non-finite value (it must be defined on every resample).
pub fn bootstrap_interval<F>(
    n_items: usize,
    n_resamples: usize,
    seed: u64,
    confidence: f64,
    mut statistic: F,
) -> Result<Interval>
where
    F: FnMut(&[usize]) -> f64,
{
    check_confidence(confidence)?;
    if n_items == 0 {
        return Err(Error::msg("bootstrap over zero items"));
    }
    if n_resamples == 0 {
        return Err(Error::msg("bootstrap with zero resamples"));
    }
    let all: Vec<usize> = (0..n_items).collect();
    let estimate = statistic(&all);
    if !estimate.is_finite() {
        return Err(Error::msg(format!("bootstrap: statistic on all items is {estimate}")));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx = vec![0usize; n_items];
    let mut reps = Vec::with_capacity(n_resamples);
    for r in 0..n_resamples {
        for slot in idx.iter_mut() {
            // Draw as u64 so the stream does not depend on the platform's pointer width.
            *slot = rng.random_range(0..n_items as u64) as usize;
        }
        let v = statistic(&idx);
        if !v.is_finite() {
            return Err(Error::msg(format!("bootstrap: statistic on resample {r} is {v}")));
        }
        reps.push(v);
    }
    reps.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    Ok(Interval {
        estimate,
        lo: quantile_sorted(&reps, tail),
        hi: quantile_sorted(&reps, 1.0 - tail),
    })
}

/// Paired percentile bootstrap interval of `metric_a - metric_b` over the same `n_items` items.
///
/// Both metrics receive the same resample of item indices each time (that is what makes it
/// paired: item-level correlation between the systems is kept). The estimate is
/// `metric_a(all) - metric_b(all)`. Otherwise as [`bootstrap_interval`], whose errors it shares.
pub fn paired_bootstrap_diff<FA, FB>(
    n_items: usize,
    n_resamples: usize,
    seed: u64,
    confidence: f64,
    mut metric_a: FA,
    mut metric_b: FB,
) -> Result<Interval>
where
    FA: FnMut(&[usize]) -> f64,
    FB: FnMut(&[usize]) -> f64,
{
    bootstrap_interval(n_items, n_resamples, seed, confidence, |idx| metric_a(idx) - metric_b(idx))
}

/// Bonferroni per-comparison significance level `alpha / m` for `m` comparisons.
///
/// Errors when `m = 0` or `alpha` is not in (0, 1).
pub fn bonferroni(alpha: f64, m: usize) -> Result<f64> {
    if !(alpha.is_finite() && alpha > 0.0 && alpha < 1.0) {
        return Err(Error::msg(format!("alpha must lie strictly between 0 and 1, got {alpha}")));
    }
    if m == 0 {
        return Err(Error::msg("Bonferroni correction for zero comparisons"));
    }
    Ok(alpha / m as f64)
}

fn check_p_values(p_values: &[f64]) -> Result<()> {
    if let Some((i, p)) = p_values.iter().enumerate().find(|(_, p)| !(0.0..=1.0).contains(*p)) {
        return Err(Error::msg(format!("p-value #{i} is not in [0, 1]: {p}")));
    }
    Ok(())
}

/// Bonferroni-adjusted p-values `min(1, m · p)`, in the input order.
///
/// An empty input gives an empty output; errors on a p-value outside `[0, 1]` (or NaN).
pub fn bonferroni_adjust(p_values: &[f64]) -> Result<Vec<f64>> {
    check_p_values(p_values)?;
    let m = p_values.len() as f64;
    Ok(p_values.iter().map(|p| (p * m).min(1.0)).collect())
}

/// Holm (step-down) adjusted p-values, in the input order.
///
/// With the p-values sorted ascending `p(1) <= ... <= p(m)`, the adjusted value of `p(i)` is
/// `max_{j <= i} min(1, (m - j + 1) · p(j))`. Reject the hypotheses whose adjusted p-value is
/// `<= alpha`; this controls the family-wise error rate like Bonferroni, with more power.
/// Ties keep their input order. An empty input gives an empty output; errors on a p-value
/// outside `[0, 1]` (or NaN).
pub fn holm(p_values: &[f64]) -> Result<Vec<f64>> {
    check_p_values(p_values)?;
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| p_values[i].total_cmp(&p_values[j]));
    let mut adjusted = vec![0.0; m];
    let mut running = 0.0f64;
    for (rank, &i) in order.iter().enumerate() {
        let scaled = ((m - rank) as f64 * p_values[i]).min(1.0);
        running = running.max(scaled);
        adjusted[i] = running;
    }
    Ok(adjusted)
}

/// A note for reports with `m` comparisons (hypothesis tests) in one study, or `None` when
/// `m <= 1` and there is nothing to correct for.
///
/// The note states how many tests would come out significant at α = 0.05 by chance alone if no
/// difference were real, the Bonferroni threshold, and that reports give Holm-adjusted p-values.
pub fn multiple_comparisons_note(m: usize) -> Option<String> {
    if m <= 1 {
        return None;
    }
    let alpha = 0.05;
    let threshold = alpha / m as f64;
    Some(format!(
        "{m} comparisons in this study: with no real differences, about {:.1} of them would \
         reach p < {alpha} by chance alone. To keep the family-wise error rate at {alpha}, \
         compare Holm-adjusted p-values with {alpha} (Bonferroni: raw p < {threshold:.2e}); \
         treat unadjusted p-values and intervals that exclude zero as exploratory.",
        alpha * m as f64
    ))
}
