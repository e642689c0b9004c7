//! Statistics: intervals and paired tests.
//!
//! What the reports use, and for what:
//!
//! - per configuration, across seeds: the mean and the seed standard deviation
//!   ([`summarize`]), and the **pooled-item bootstrap** interval of the across-seed mean
//!   ([`seed_item_bootstrap`]: items resampled, the seeds kept), which never leaves the range of
//!   the per-seed statistic (for accuracy: `[0, 1]`). The Student-t interval across seeds
//!   ([`mean_t_interval`]) is kept for other uses: with 2 seeds it reaches far outside `[0, 1]`;
//! - the power of a comparison: the minimum detectable difference at a given power
//!   ([`mde_two_proportions`] for two configurations with pooled items, [`mde_paired`] for two
//!   systems on the same items);
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

/// Two-sided significance level of the minimum detectable differences in the reports.
pub const MDE_ALPHA: f64 = 0.05;
/// Power of the minimum detectable differences in the reports.
pub const MDE_POWER: f64 = 0.8;

/// Minimum detectable difference of two proportions (two independent arms of `n_per_arm`
/// trials each, one at the proportion `p`), at two-sided level `alpha` and `power`: the δ with
///
/// ```text
/// δ = (z_{1-α/2} + z_{power}) · sqrt((p(1-p) + q(1-q)) / N)    q = p ∓ δ (toward 1/2), N = n_per_arm
/// ```
///
/// the normal-approximation sample-size formula for two proportions with unpooled variances
/// (e.g. Fleiss, *Statistical Methods for Rates and Proportions*, §4.2, without continuity
/// correction) solved for the difference, the second arm at the detectable alternative `q`
/// (found by fixed-point iteration). Taking the alternative's variance keeps the MDE above 0 at
/// `p = 0` or `1` (there `δ = z²/(N + z²)`), where the common-variance form `sqrt(2p(1-p)/N)`
/// would claim every difference detectable. For a configuration of `n` test items and `s`
/// seeds, the study reports take `N = n · s` (items pooled across seeds: this treats the seeds'
/// correctness as independent trials, so it is the MDE of the pooled accuracies, not of a new
/// draw of test items).
///
/// Errors when `n_per_arm = 0`, `p` is not in `[0, 1]`, or `alpha` / `power` are not in (0, 1).
pub fn mde_two_proportions(p: f64, n_per_arm: u64, alpha: f64, power: f64) -> Result<f64> {
    if n_per_arm == 0 {
        return Err(Error::msg("minimum detectable difference with zero trials per arm"));
    }
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::msg(format!("minimum detectable difference: proportion {p} is not in [0, 1]")));
    }
    let z = power_z(alpha, power)?;
    let n = n_per_arm as f64;
    // δ ↦ z·sqrt((p(1-p) + q(1-q))/N) is a contraction on [0, 1/2]: iterate to the fixed point.
    let mut d = z * ((2.0 * p * (1.0 - p)).max(1.0 / n) / n).sqrt();
    for _ in 0..200 {
        let q = if p >= 0.5 { p - d } else { p + d }.clamp(0.0, 1.0);
        let next = z * ((p * (1.0 - p) + q * (1.0 - q)) / n).sqrt();
        let done = (next - d).abs() < 1e-12;
        d = next;
        if done {
            break;
        }
    }
    Ok(d)
}

/// Minimum detectable difference of two systems' accuracies on the same `n` items (paired),
/// with `discordant` the share of items on which exactly one of them is right (McNemar's
/// `(b + c) / n`), at two-sided level `alpha` and `power`:
///
/// ```text
/// MDE = max((z_{1-α/2} + z_{power}) · sqrt(ψ / n), (z_{1-α/2} + z_{power})² / n)        ψ = (b + c) / n
/// ```
///
/// the large-sample McNemar formula (Connor 1987, *Biometrics* 43:207, with `ψ - δ² ≈ ψ`), solved
/// for the difference δ: the variance of the paired difference of accuracies is `(ψ - δ²)/n`.
/// A difference δ needs at least a share δ of discordant items, so ψ is taken as `max(ψ, δ)`:
/// the MDE is never below `z²/n` (when the two systems agree on every item it is not 0).
///
/// Errors when `n = 0`, `discordant` is not in `[0, 1]`, or `alpha` / `power` are not in (0, 1).
pub fn mde_paired(discordant: f64, n: u64, alpha: f64, power: f64) -> Result<f64> {
    if n == 0 {
        return Err(Error::msg("minimum detectable difference of zero paired items"));
    }
    if !(0.0..=1.0).contains(&discordant) {
        return Err(Error::msg(format!("minimum detectable difference: discordant share {discordant} is not in [0, 1]")));
    }
    let z = power_z(alpha, power)?;
    let n = n as f64;
    Ok((z * (discordant / n).sqrt()).max(z * z / n))
}

/// `z_{1-α/2} + z_{power}` of a two-sided test at level `alpha` with power `power`.
fn power_z(alpha: f64, power: f64) -> Result<f64> {
    if !(alpha.is_finite() && alpha > 0.0 && alpha < 1.0) {
        return Err(Error::msg(format!("alpha must lie strictly between 0 and 1, got {alpha}")));
    }
    if !(power.is_finite() && power > 0.0 && power < 1.0) {
        return Err(Error::msg(format!("power must lie strictly between 0 and 1, got {power}")));
    }
    let normal = Normal::new(0.0, 1.0).map_err(|e| Error::msg(format!("normal: {e}")))?;
    Ok(normal.inverse_cdf(1.0 - alpha / 2.0) + normal.inverse_cdf(power))
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

/// Pooled-item percentile bootstrap of the across-seed mean of a per-seed statistic: the items
/// are resampled, the seed structure is kept.
///
/// `n_items[s]` is the number of items seed `s` was scored on; `statistic(s, idx)` is seed `s`'s
/// statistic on its items `idx` (with repetitions). The estimate is the mean over seeds of
/// `statistic(s, 0..n_items[s])`. Each of `n_resamples` resamples draws item indices uniformly
/// with replacement from a `ChaCha8Rng` seeded with `seed` and takes the mean over seeds of the
/// statistic on them. With `shared_items` (every seed scored the same items, aligned by index)
/// one draw of indices serves every seed, so an item that is hard for every seed stays hard in
/// the resample; otherwise each seed draws its own. The interval is the `(1-confidence)/2` and
/// `1-(1-confidence)/2` quantiles of the resampled means: it lies within the range of the
/// statistic (for an accuracy, inside `[0, 1]`), and it measures the uncertainty from the test
/// items given these seeds; the spread across seeds is reported beside it (seed s.d.).
///
/// Errors when there are no seeds, a seed has no items, `shared_items` with unequal item
/// counts, zero resamples, a bad `confidence`, or a non-finite statistic.
pub fn seed_item_bootstrap<F>(
    n_items: &[usize],
    shared_items: bool,
    n_resamples: usize,
    seed: u64,
    confidence: f64,
    mut statistic: F,
) -> Result<Interval>
where
    F: FnMut(usize, &[usize]) -> f64,
{
    check_confidence(confidence)?;
    if n_items.is_empty() {
        return Err(Error::msg("pooled bootstrap over zero seeds"));
    }
    if let Some(s) = n_items.iter().position(|&n| n == 0) {
        return Err(Error::msg(format!("pooled bootstrap: seed #{s} has no items")));
    }
    if shared_items && n_items.iter().any(|&n| n != n_items[0]) {
        return Err(Error::msg(format!("pooled bootstrap with shared items, but the seeds have different item counts {n_items:?}")));
    }
    if n_resamples == 0 {
        return Err(Error::msg("bootstrap with zero resamples"));
    }
    let seeds = n_items.len() as f64;
    // Sums divided once: a mean of values in [0, 1] stays in [0, 1] exactly.
    let mut estimate = 0.0;
    for (s, &n) in n_items.iter().enumerate() {
        let all: Vec<usize> = (0..n).collect();
        estimate += statistic(s, &all);
    }
    estimate /= seeds;
    if !estimate.is_finite() {
        return Err(Error::msg(format!("pooled bootstrap: statistic on all items is {estimate}")));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx: Vec<Vec<usize>> = n_items.iter().map(|&n| vec![0usize; n]).collect();
    let mut reps = Vec::with_capacity(n_resamples);
    let draw = |rng: &mut ChaCha8Rng, v: &mut [usize]| {
        let n = v.len() as u64;
        for slot in v.iter_mut() {
            // u64 draws: the stream does not depend on the platform's pointer width.
            *slot = rng.random_range(0..n) as usize;
        }
    };
    for r in 0..n_resamples {
        if shared_items {
            draw(&mut rng, &mut idx[0]);
        } else {
            for v in idx.iter_mut() {
                draw(&mut rng, v);
            }
        }
        let mut m = 0.0;
        for s in 0..n_items.len() {
            let v = if shared_items { &idx[0] } else { &idx[s] };
            m += statistic(s, v);
        }
        m /= seeds;
        if !m.is_finite() {
            return Err(Error::msg(format!("pooled bootstrap: statistic on resample {r} is {m}")));
        }
        reps.push(m);
    }
    reps.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    Ok(Interval { estimate, lo: quantile_sorted(&reps, tail), hi: quantile_sorted(&reps, 1.0 - tail) })
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
