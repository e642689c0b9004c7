//! Tests of `harness::stats` and `harness::eval::metrics` against hand-computed values.

use harness::eval::metrics::{
    classification_report, paired_comparison, ClassificationReport, Confusion, ConfusionStats,
};
use harness::stats::{
    bonferroni, bonferroni_adjust, bootstrap_interval, holm, mcnemar_exact,
    mcnemar_from_correctness, mean_t_interval, multiple_comparisons_note, paired_bootstrap_diff,
    mde_paired, mde_two_proportions, seed_item_bootstrap, std_dev, summarize, wilson, MDE_ALPHA,
    MDE_POWER,
};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

macro_rules! assert_close {
    ($a:expr, $b:expr, $tol:expr) => {{
        let (a, b): (f64, f64) = ($a, $b);
        assert!(close(a, b, $tol), "{} = {a}, expected {b} (±{})", stringify!($a), $tol);
    }};
}

fn labels(ls: &[&str]) -> Vec<String> {
    ls.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------- Wilson

// z = Φ⁻¹(0.975) = 1.959963984540054, z² = 3.841458820694124, n = 10.
// 8/10: p = 0.8, d = 1 + z²/n = 1.3841458820694124,
//   centre = (0.8 + z²/20) / d = 0.7167401600685444,
//   half = z/d · sqrt(0.8·0.2/10 + z²/400) = 0.22657768853190...
//   → (0.49016247153664, 0.94331784854562).
#[test]
fn wilson_8_of_10() {
    let iv = wilson(8, 10, 0.95).unwrap();
    assert_close!(iv.estimate, 0.8, 1e-15);
    assert_close!(iv.lo, 0.490_162_471_536_641_8, 1e-9);
    assert_close!(iv.hi, 0.943_317_848_545_624_7, 1e-9);
}

// 0/10: lo = 0, hi = z²/(n + z²) = 3.841458820694124 / 13.841458820694124 = 0.27753279986289.
// 10/10 mirrors it: (1 - 0.27753279986289, 1).
#[test]
fn wilson_edges() {
    let iv = wilson(0, 10, 0.95).unwrap();
    assert_eq!(iv.estimate, 0.0);
    assert_eq!(iv.lo, 0.0);
    assert_close!(iv.hi, 0.277_532_799_862_889_15, 1e-9);
    let iv = wilson(10, 10, 0.95).unwrap();
    assert_eq!(iv.estimate, 1.0);
    assert_eq!(iv.hi, 1.0);
    assert_close!(iv.lo, 0.722_467_200_137_110_9, 1e-9);
}

#[test]
fn wilson_rejects_bad_input() {
    assert!(wilson(0, 0, 0.95).is_err());
    assert!(wilson(11, 10, 0.95).is_err());
    assert!(wilson(5, 10, 1.0).is_err());
    assert!(wilson(5, 10, 0.0).is_err());
    assert!(wilson(5, 10, f64::NAN).is_err());
}

// ---------------------------------------------------------------- t interval

// [1,2,3,4,5]: mean 3, sample variance 10/4 = 2.5, t(0.975, df 4) = 2.7764451051977987,
// half-width = 2.776445 · sqrt(2.5) / sqrt(5) = 1.9632431614775607.
#[test]
fn t_interval_one_to_five() {
    let xs = [1.0, 2.0, 3.0, 4.0, 5.0];
    assert_close!(std_dev(&xs).unwrap(), 2.5f64.sqrt(), 1e-12);
    let iv = mean_t_interval(&xs, 0.95).unwrap();
    assert_close!(iv.estimate, 3.0, 1e-12);
    assert_close!(iv.half_width(), 1.963_243_161_477_560_7, 1e-6);
    assert_close!(iv.lo, 3.0 - 1.963_243_161_477_560_7, 1e-6);
    assert_close!(iv.hi, 3.0 + 1.963_243_161_477_560_7, 1e-6);
}

#[test]
fn t_interval_needs_two_values() {
    assert!(mean_t_interval(&[], 0.95).is_err());
    assert!(mean_t_interval(&[0.7], 0.95).is_err());
    assert!(std_dev(&[0.7]).is_err());
    assert!(mean_t_interval(&[0.7, f64::NAN], 0.95).is_err());
    // A single seed: summarize keeps the mean and leaves the spread out.
    let s = summarize(&[0.7], 0.95).unwrap();
    assert_eq!((s.n, s.mean, s.std_dev, s.interval), (1, 0.7, None, None));
    let s = summarize(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.95).unwrap();
    assert_close!(s.interval.unwrap().half_width(), 1.963_243_161_477_560_7, 1e-6);
    assert!(summarize(&[], 0.95).is_err());
}

// ---------------------------------------------------------------- McNemar

// b = 1, c = 9: X ~ Bin(10, 1/2), P(X <= 1) = (C(10,0) + C(10,1)) / 2¹⁰ = 11/1024,
// p = 2 · 11/1024 = 0.021484375.
#[test]
fn mcnemar_hand_table() {
    let m = mcnemar_exact(1, 9);
    assert_eq!((m.b, m.c), (1, 9));
    assert_close!(m.p_value, 0.021_484_375, 1e-12);
    assert_close!(mcnemar_exact(9, 1).p_value, 0.021_484_375, 1e-12);
    // b = 0, c = 5: p = 2 · (1/2)⁵ = 0.0625.
    assert_close!(mcnemar_exact(0, 5).p_value, 0.0625, 1e-12);
    // b = c: 2 · P(X <= n/2) > 1, capped at 1.
    assert_eq!(mcnemar_exact(5, 5).p_value, 1.0);
    // No discordant pairs.
    assert_eq!(mcnemar_exact(0, 0).p_value, 1.0);
}

#[test]
fn mcnemar_from_items() {
    // A right / B wrong on item 0; A wrong / B right on items 1..=9; both right on 10 and 11.
    let mut a = vec![true];
    let mut b = vec![false];
    a.extend([false; 9]);
    b.extend([true; 9]);
    a.extend([true; 2]);
    b.extend([true; 2]);
    let m = mcnemar_from_correctness(&a, &b).unwrap();
    assert_eq!((m.b, m.c), (1, 9));
    assert_close!(m.p_value, 0.021_484_375, 1e-12);
    assert!(mcnemar_from_correctness(&a, &b[1..]).is_err());
}

// ---------------------------------------------------------------- bootstrap

fn mean_of(data: &[f64], idx: &[usize]) -> f64 {
    idx.iter().map(|&i| data[i]).sum::<f64>() / idx.len() as f64
}

#[test]
fn bootstrap_reproducible_and_sane() {
    // 400 Bernoulli outcomes, 200 ones: mean 0.5, standard error 0.025, so the 95% percentile
    // interval is about 0.5 ± 0.049.
    let data: Vec<f64> = (0..400).map(|i| (i % 2) as f64).collect();
    let f = |idx: &[usize]| mean_of(&data, idx);
    let a = bootstrap_interval(data.len(), 2000, 7, 0.95, f).unwrap();
    let b = bootstrap_interval(data.len(), 2000, 7, 0.95, f).unwrap();
    let c = bootstrap_interval(data.len(), 2000, 8, 0.95, f).unwrap();
    assert_eq!(a, b);
    assert_ne!((a.lo, a.hi), (c.lo, c.hi));
    assert_eq!(a.estimate, 0.5);
    assert!(a.contains(a.estimate) && c.contains(c.estimate));
    assert!(a.half_width() > 0.04 && a.half_width() < 0.06, "{a:?}");
}

#[test]
fn paired_bootstrap_difference() {
    let xs: Vec<f64> = (0..50).map(|i| ((i * 37) % 11) as f64).collect();
    // Identical systems: every resample differs by exactly 0.
    let same =
        paired_bootstrap_diff(50, 500, 1, 0.95, |i| mean_of(&xs, i), |i| mean_of(&xs, i)).unwrap();
    assert_eq!((same.estimate, same.lo, same.hi), (0.0, 0.0, 0.0));
    // A = B + 1 item by item: the pairing makes the interval collapse onto 1.
    let ys: Vec<f64> = xs.iter().map(|x| x + 1.0).collect();
    let shift =
        paired_bootstrap_diff(50, 500, 1, 0.95, |i| mean_of(&ys, i), |i| mean_of(&xs, i)).unwrap();
    assert_close!(shift.estimate, 1.0, 1e-9);
    assert_close!(shift.lo, 1.0, 1e-9);
    assert_close!(shift.hi, 1.0, 1e-9);
    // Unpaired-looking data: the interval is wide and contains the estimate.
    let zs: Vec<f64> = (0..50).map(|i| ((i * 13) % 7) as f64).collect();
    let d =
        paired_bootstrap_diff(50, 1000, 3, 0.95, |i| mean_of(&xs, i), |i| mean_of(&zs, i)).unwrap();
    assert!(d.contains(d.estimate) && d.hi > d.lo);
}

#[test]
fn bootstrap_rejects_bad_input() {
    let f = |_: &[usize]| 1.0;
    assert!(bootstrap_interval(0, 100, 0, 0.95, f).is_err());
    assert!(bootstrap_interval(10, 0, 0, 0.95, f).is_err());
    assert!(bootstrap_interval(10, 100, 0, 1.5, f).is_err());
    assert!(bootstrap_interval(10, 100, 0, 0.95, |_| f64::NAN).is_err());
}

// ---------------------------------------------------------------- multiple comparisons

// p = [0.01, 0.04, 0.03, 0.005], m = 4. Sorted: 0.005, 0.01, 0.03, 0.04;
// scaled (m - j + 1)·p(j): 0.02, 0.03, 0.06, 0.04; running max: 0.02, 0.03, 0.06, 0.06.
// Back in input order: [0.03, 0.06, 0.06, 0.02].
#[test]
fn holm_hand_example() {
    let adj = holm(&[0.01, 0.04, 0.03, 0.005]).unwrap();
    let want = [0.03, 0.06, 0.06, 0.02];
    for (a, w) in adj.iter().zip(want) {
        assert_close!(*a, w, 1e-12);
    }
    // Capping at 1 and monotonicity: 2·0.5 = 1, then max(1, 0.6) = 1.
    assert_eq!(holm(&[0.6, 0.5]).unwrap(), vec![1.0, 1.0]);
    assert!(holm(&[]).unwrap().is_empty());
    assert!(holm(&[0.1, 1.2]).is_err());
    assert!(holm(&[f64::NAN]).is_err());
}

#[test]
fn bonferroni_and_note() {
    assert_close!(bonferroni(0.05, 10).unwrap(), 0.005, 1e-15);
    assert!(bonferroni(0.05, 0).is_err());
    let adj = bonferroni_adjust(&[0.01, 0.3]).unwrap();
    assert_eq!(adj, vec![0.02, 0.6]);
    assert!(multiple_comparisons_note(1).is_none());
    assert!(multiple_comparisons_note(0).is_none());
    let note = multiple_comparisons_note(20).unwrap();
    assert!(note.contains("20 comparisons") && note.contains("Holm"), "{note}");
}

// ---------------------------------------------------------------- classification metrics

/// gold [yes×6, no×3, maybe×1], always predicted "yes".
/// yes: precision 6/10, recall 1, F1 = 2·0.6/1.6 = 0.75; no, maybe: never predicted, F1 0.
/// Macro-F1 = (0.75 + 0 + 0)/3 = 0.25; balanced accuracy = (1 + 0 + 0)/3; accuracy 0.6.
#[test]
fn report_always_yes() {
    let ls = labels(&["yes", "no", "maybe"]);
    let mut pairs = vec![(0, Some(0)); 6];
    pairs.extend([(1, Some(0)); 3]);
    pairs.push((2, Some(0)));
    let r = classification_report(&ls, &pairs, 500, 0).unwrap();
    assert_eq!((r.n, r.correct, r.invalid), (10, 6, 0));
    assert_close!(r.accuracy.estimate, 0.6, 1e-12);
    assert_close!(r.macro_f1.estimate, 0.25, 1e-12);
    assert_close!(r.balanced_accuracy.estimate, 1.0 / 3.0, 1e-12);
    assert_eq!(r.collapse.as_deref(), Some("yes"));
    assert_eq!(r.majority_baseline.label, "yes");
    assert_close!(r.majority_baseline.accuracy, 0.6, 1e-12);
    assert_close!(r.per_class[0].f1, 0.75, 1e-12);
    assert_eq!((r.per_class[1].precision, r.per_class[1].f1), (0.0, 0.0));
    assert_eq!(r.per_class[2].support, 1);
    assert_eq!(r.predicted.iter().map(|p| p.count).collect::<Vec<_>>(), vec![10, 0, 0]);
    assert_eq!(r.confusion.counts, vec![vec![6, 0, 0], vec![3, 0, 0], vec![1, 0, 0]]);
    for iv in [r.accuracy, r.macro_f1, r.balanced_accuracy] {
        assert!(iv.lo <= iv.hi && iv.lo.is_finite() && iv.hi.is_finite(), "{iv:?}");
    }
}

/// Labels A, B, C; gold A×4 → [A, A, B, invalid]; gold B×4 → [B, B, invalid, invalid];
/// gold C×2 → [A, C].
/// tp = (2, 2, 1); gold = (4, 4, 2); valid predictions = (3, 3, 1).
/// A: P 2/3, R 1/2, F1 4/7. B: P 2/3, R 1/2, F1 4/7. C: P 1, R 1/2, F1 2/3.
/// Macro-F1 = (4/7 + 4/7 + 2/3)/3 = 38/63; balanced accuracy = (1/2 + 1/2 + 1/2)/3 = 1/2;
/// accuracy 5/10; 3 invalid (rate 0.3); majority baseline A (tie with B, first wins) at 0.4.
#[test]
fn report_with_invalid_predictions() {
    let ls = labels(&["A", "B", "C"]);
    let pairs = vec![
        (0, Some(0)),
        (0, Some(0)),
        (0, Some(1)),
        (0, None),
        (1, Some(1)),
        (1, Some(1)),
        (1, None),
        (1, None),
        (2, Some(0)),
        (2, Some(2)),
    ];
    let r = classification_report(&ls, &pairs, 500, 1).unwrap();
    assert_eq!((r.n, r.correct, r.invalid), (10, 5, 3));
    assert_close!(r.invalid_rate, 0.3, 1e-12);
    assert_close!(r.accuracy.estimate, 0.5, 1e-12);
    assert_close!(r.macro_f1.estimate, 38.0 / 63.0, 1e-12);
    assert_close!(r.balanced_accuracy.estimate, 0.5, 1e-12);
    assert_close!(r.per_class[0].f1, 4.0 / 7.0, 1e-12);
    assert_close!(r.per_class[2].f1, 2.0 / 3.0, 1e-12);
    assert_eq!(r.collapse, None);
    assert_eq!(r.majority_baseline.label, "A");
    assert_close!(r.majority_baseline.accuracy, 0.4, 1e-12);
    assert_eq!(r.confusion.invalid, vec![1, 2, 0]);
    assert_eq!(r.predicted.iter().map(|p| p.count).collect::<Vec<_>>(), vec![3, 3, 1]);
    // The report goes to JSON and back (serde_json's default float parser may move the last
    // bit of a float, so floats are compared to within 1e-12).
    let json = serde_json::to_string(&r).unwrap();
    let back: ClassificationReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back.confusion, r.confusion);
    assert_eq!((back.n, back.correct, back.invalid, back.collapse), (10, 5, 3, None));
    for (x, y) in [
        (back.macro_f1.lo, r.macro_f1.lo),
        (back.macro_f1.hi, r.macro_f1.hi),
        (back.accuracy.lo, r.accuracy.lo),
        (back.balanced_accuracy.hi, r.balanced_accuracy.hi),
    ] {
        assert_close!(x, y, 1e-12);
    }
}

/// A class predicted but absent from gold counts in macro-F1 (F1 0) but not in balanced
/// accuracy; a label absent from both is ignored.
/// gold [yes, yes, no, no], pred [yes, maybe, no, no]; labels yes, no, maybe, unused.
/// yes: P 1, R 1/2, F1 2/3. no: F1 1. maybe: P 0/1, R 0/0 := 0, F1 0.
/// Macro-F1 = (2/3 + 1 + 0)/3 = 5/9; balanced accuracy = (1/2 + 1)/2 = 3/4.
#[test]
fn macro_f1_class_only_predicted() {
    let ls = labels(&["yes", "no", "maybe", "unused"]);
    let pairs = [(0, Some(0)), (0, Some(2)), (1, Some(1)), (1, Some(1))];
    let c = Confusion::from_pairs(&ls, &pairs).unwrap();
    assert_close!(c.macro_f1(), 5.0 / 9.0, 1e-12);
    assert_close!(c.balanced_accuracy(), 0.75, 1e-12);
    assert_close!(c.accuracy(), 0.75, 1e-12);
    let r = classification_report(&ls, &pairs, 200, 0).unwrap();
    assert_close!(r.macro_f1.estimate, 5.0 / 9.0, 1e-12);
    assert_eq!(r.collapse, None);
}

#[test]
fn collapse_threshold_and_bad_input() {
    // 9 of 10 predictions "no" (90%) is a collapse even though some are wrong.
    let ls = labels(&["yes", "no"]);
    let mut pairs = vec![(0, Some(1)); 5];
    pairs.extend([(1, Some(1)); 4]);
    pairs.push((1, Some(0)));
    let r = classification_report(&ls, &pairs, 100, 0).unwrap();
    assert_eq!(r.collapse.as_deref(), Some("no"));
    // 8 of 10 is not.
    pairs[0] = (0, Some(0));
    let r = classification_report(&ls, &pairs, 100, 0).unwrap();
    assert_eq!(r.collapse, None);

    assert!(classification_report(&ls, &[], 100, 0).is_err());
    assert!(classification_report(&ls, &[(2, Some(0))], 100, 0).is_err());
    assert!(classification_report(&ls, &[(0, Some(5))], 100, 0).is_err());
    assert!(classification_report(&[], &[(0, Some(0))], 100, 0).is_err());
    assert!(classification_report(&labels(&["a", "a"]), &[(0, Some(0))], 100, 0).is_err());
    assert!(classification_report(&ls, &[(0, Some(0))], 0, 0).is_err());
}

#[test]
fn report_bootstrap_reproducible() {
    let ls = labels(&["yes", "no", "maybe"]);
    let pairs: Vec<(usize, Option<usize>)> =
        (0..60).map(|i| (i % 3, if i % 7 == 0 { None } else { Some((i * i) % 3) })).collect();
    let a = classification_report(&ls, &pairs, 300, 42).unwrap();
    let b = classification_report(&ls, &pairs, 300, 42).unwrap();
    let c = classification_report(&ls, &pairs, 300, 43).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.macro_f1, c.macro_f1);
}

// ---------------------------------------------------------------- paired comparison

/// 12 items, gold alternating yes/no. A right & B wrong on item 0, A wrong & B right on items
/// 1..=9, both right on 10 and 11: McNemar b = 1, c = 9, p = 0.021484375;
/// accuracy A = 3/12, B = 11/12, difference −8/12.
#[test]
fn paired_comparison_hand_table() {
    let ls = labels(&["yes", "no"]);
    let gold: Vec<usize> = (0..12).map(|i| i % 2).collect();
    let other = |g: usize| 1 - g;
    let a: Vec<(usize, Option<usize>)> = gold
        .iter()
        .enumerate()
        .map(|(i, &g)| match i {
            0 | 10 | 11 => (g, Some(g)),
            // Mix wrong labels and invalid outputs for A's errors.
            i if i % 3 == 0 => (g, None),
            _ => (g, Some(other(g))),
        })
        .collect();
    let b: Vec<(usize, Option<usize>)> = gold
        .iter()
        .enumerate()
        .map(|(i, &g)| if i == 0 { (g, Some(other(g))) } else { (g, Some(g)) })
        .collect();
    let cmp = paired_comparison(&ls, &a, &b, 1000, 5).unwrap();
    assert_eq!((cmp.mcnemar.b, cmp.mcnemar.c), (1, 9));
    assert_close!(cmp.mcnemar.p_value, 0.021_484_375, 1e-12);
    assert_eq!((cmp.both_correct, cmp.both_wrong, cmp.n), (2, 0, 12));
    assert_close!(cmp.a_accuracy, 3.0 / 12.0, 1e-12);
    assert_close!(cmp.b_accuracy, 11.0 / 12.0, 1e-12);
    assert_close!(cmp.accuracy_diff.estimate, -8.0 / 12.0, 1e-12);
    assert!(cmp.accuracy_diff.hi < 0.0, "{:?}", cmp.accuracy_diff);
    assert!(cmp.macro_f1_diff.estimate < 0.0);
    assert_eq!(cmp, paired_comparison(&ls, &a, &b, 1000, 5).unwrap());

    // Misaligned inputs are refused.
    assert!(paired_comparison(&ls, &a, &b[1..], 100, 0).is_err());
    let mut shifted = b.clone();
    shifted[3].0 = 0;
    assert!(paired_comparison(&ls, &a, &shifted, 100, 0).is_err());
    assert!(paired_comparison(&ls, &[], &[], 100, 0).is_err());
}

/// A confusion table read back from malformed JSON is refused by `validate` and does not make
/// the metric methods panic.
#[test]
fn malformed_confusion_does_not_panic() {
    let json = r#"{"labels":["yes","no"],"counts":[[3,1]],"invalid":[]}"#;
    let c: Confusion = serde_json::from_str(json).unwrap();
    assert!(c.validate().is_err());
    assert_eq!((c.n(), c.correct()), (4, 3));
    assert_close!(c.accuracy(), 0.75, 1e-12);
    assert!(c.macro_f1().is_finite() && c.balanced_accuracy().is_finite());
    let ok = Confusion::from_pairs(&labels(&["yes", "no"]), &[(0, Some(0)), (1, None)]).unwrap();
    assert!(ok.validate().is_ok());
    assert_eq!((ok.n(), ok.correct(), ok.total_invalid()), (2, 1, 1));
}

// ---------------------------------------------------------------- power and pooled intervals

#[test]
fn minimum_detectable_difference_hand_computed() {
    // z_0.975 = 1.959964, z_0.8 = 0.841621: their sum z = 2.801585, z² = 7.848880.
    // Two proportions at p = 0.5 with 200 items × 2 seeds = 400 per arm: q = 0.5 − δ has
    //   q(1−q) = 0.25 − δ², so δ² = z²(0.5 − δ²)/N, δ = sqrt(0.5·z²/(N + z²))
    //   = sqrt(3.924440 / 407.848880) = sqrt(0.0096223) = 0.098093.
    assert_close!(mde_two_proportions(0.5, 400, MDE_ALPHA, MDE_POWER).unwrap(), 0.098093, 1e-5);
    // At p = 1 (a perfect configuration), 1000 items: q = 1 − δ, δ = z·sqrt(δ(1−δ)/N), so
    //   δ = z²/(N + z²) = 7.848880 / 1007.848880 = 0.0077878 — not 0.
    assert_close!(mde_two_proportions(1.0, 1000, 0.05, 0.8).unwrap(), 0.0077878, 1e-6);
    assert_close!(mde_two_proportions(0.0, 1000, 0.05, 0.8).unwrap(), 0.0077878, 1e-6);
    // Paired (McNemar) with 20% discordant items out of 500: sqrt(0.2 / 500) = 0.02;
    //   MDE = 2.801585 · 0.02 = 0.056032 (above z²/n = 0.015698).
    assert_close!(mde_paired(0.2, 500, MDE_ALPHA, MDE_POWER).unwrap(), 0.056032, 1e-5);
    // No discordant item out of 1000: the floor z²/n = 7.848880 / 1000 = 0.0078489.
    assert_close!(mde_paired(0.0, 1000, MDE_ALPHA, MDE_POWER).unwrap(), 0.0078489, 1e-6);
    // More items, smaller MDE; errors on empty samples and bad levels.
    assert!(mde_two_proportions(0.5, 4000, 0.05, 0.8).unwrap() < mde_two_proportions(0.5, 400, 0.05, 0.8).unwrap());
    assert!(mde_two_proportions(0.5, 0, 0.05, 0.8).is_err());
    assert!(mde_two_proportions(1.5, 10, 0.05, 0.8).is_err());
    assert!(mde_paired(0.2, 0, 0.05, 0.8).is_err());
    assert!(mde_paired(0.2, 10, 0.05, 1.0).is_err());
    assert!(mde_paired(0.2, 10, 0.0, 0.8).is_err());
}

/// Per-seed correctness of `n` items with `k` right (the first `k`).
fn correct(n: usize, k: usize) -> Vec<bool> {
    (0..n).map(|i| i < k).collect()
}

fn accuracy_of(seeds: &[Vec<bool>]) -> impl FnMut(usize, &[usize]) -> f64 + '_ {
    move |s, idx| idx.iter().filter(|&&i| seeds[s][i]).count() as f64 / idx.len() as f64
}

#[test]
fn pooled_item_bootstrap_stays_inside_zero_one_for_two_seeds() {
    // Two seeds with extreme accuracies: the t-interval over 2 seeds leaves [0, 1] badly ...
    let seeds = vec![correct(40, 40), correct(40, 1)]; // 100% and 2.5%
    let t = mean_t_interval(&[1.0, 0.025], 0.95).unwrap();
    assert!(t.lo < 0.0 && t.hi > 1.0, "{t:?}");
    // ... the pooled-item bootstrap does not, with either kind of resampling.
    for shared in [true, false] {
        let iv = seed_item_bootstrap(&[40, 40], shared, 500, 3, 0.95, accuracy_of(&seeds)).unwrap();
        assert_close!(iv.estimate, (1.0 + 0.025) / 2.0, 1e-12);
        assert!(0.0 <= iv.lo && iv.lo <= iv.estimate && iv.estimate <= iv.hi && iv.hi <= 1.0, "{iv:?}");
    }
    // All right in both seeds: exactly [1, 1]; none right: exactly [0, 0].
    let all = vec![correct(10, 10), correct(10, 10)];
    let iv = seed_item_bootstrap(&[10, 10], true, 200, 1, 0.95, accuracy_of(&all)).unwrap();
    assert_eq!((iv.lo, iv.estimate, iv.hi), (1.0, 1.0, 1.0));
    let none = vec![correct(10, 0), correct(10, 0)];
    let iv = seed_item_bootstrap(&[10, 10], true, 200, 1, 0.95, accuracy_of(&none)).unwrap();
    assert_eq!((iv.lo, iv.estimate, iv.hi), (0.0, 0.0, 0.0));
}

#[test]
fn pooled_item_bootstrap_is_seeded_and_keeps_the_seed_structure() {
    let seeds = vec![correct(30, 12), correct(30, 21)];
    let a = seed_item_bootstrap(&[30, 30], true, 300, 9, 0.95, accuracy_of(&seeds)).unwrap();
    let b = seed_item_bootstrap(&[30, 30], true, 300, 9, 0.95, accuracy_of(&seeds)).unwrap();
    assert_eq!(a, b, "same seed, same interval");
    let c = seed_item_bootstrap(&[30, 30], true, 300, 10, 0.95, accuracy_of(&seeds)).unwrap();
    assert_ne!((a.lo, a.hi), (c.lo, c.hi), "another seed, another resample");
    // Shared items: one draw serves both seeds. Two seeds that agree item by item resample
    // exactly like one seed does; independent draws would average two resamples and be narrower.
    let twin = vec![correct(30, 15), correct(30, 15)];
    let one = seed_item_bootstrap(&[30], true, 400, 4, 0.95, accuracy_of(&twin)).unwrap();
    let joint = seed_item_bootstrap(&[30, 30], true, 400, 4, 0.95, accuracy_of(&twin)).unwrap();
    assert_close!(joint.lo, one.lo, 1e-12);
    assert_close!(joint.hi, one.hi, 1e-12);
    let indep = seed_item_bootstrap(&[30, 30], false, 400, 4, 0.95, accuracy_of(&twin)).unwrap();
    assert!(indep.hi - indep.lo < joint.hi - joint.lo, "{indep:?} vs {joint:?}");
    // Bad input is an error, not a panic.
    assert!(seed_item_bootstrap(&[], true, 10, 0, 0.95, |_, _| 0.5).is_err());
    assert!(seed_item_bootstrap(&[3, 0], false, 10, 0, 0.95, |_, _| 0.5).is_err());
    assert!(seed_item_bootstrap(&[3, 4], true, 10, 0, 0.95, |_, _| 0.5).is_err());
    assert!(seed_item_bootstrap(&[3], true, 0, 0, 0.95, |_, _| 0.5).is_err());
    assert!(seed_item_bootstrap(&[3], true, 10, 0, 0.95, |_, _| f64::NAN).is_err());
}
