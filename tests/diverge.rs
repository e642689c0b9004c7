//! A dead run is not DONE: lr 1e6 on the tiny random model (the reproduction: the loss
//! stays finite, then the gradient norm is 0 and CE sits at ln V) ends FAILED with the step and
//! the reason, through `harness::run::execute` and `harness train`; `metrics.csv` is published
//! (never left as `.part`) for finished and failed runs alike.

use harness::config::RawConfig;
use harness::run::{execute, RunOpts};
use harness::Error;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// configs/tiny-random.toml with `sets` on top (tokenizer path made absolute).
fn tiny(sets: &[&str]) -> RawConfig {
    let tok = root().join("tests/fixtures/smollm2-tokenizer.gguf");
    let mut all = vec![format!("model.tokenizer={}", tok.display()), "eval.at_end=false".to_string()];
    all.extend(sets.iter().map(|s| s.to_string()));
    RawConfig::load(&root().join("configs/tiny-random.toml"), &all).unwrap()
}

fn metrics_steps(run: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    text.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect()
}

fn no_part_files(run: &Path) {
    let parts: Vec<_> = std::fs::read_dir(run).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".part")).collect();
    assert!(parts.is_empty(), "{parts:?}");
}

#[test]
fn a_dead_gradient_run_fails_with_the_step_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // the run: 8 steps, dead (gradient norm exactly 0) from step 2 on (step 3 before
    // issue 14 changed the generated clinical-rules data)
    let Err(err) = execute(tiny(&["train.lr=1e6"]), &run, RunOpts { stop: None, hook: None }) else { panic!("a dead run must not succeed") };
    let Error::Diverged { step, reason } = &err else { panic!("not Diverged: {err}") };
    assert_eq!(*step, 6, "{err}");
    assert_eq!(reason, "gradient norm 0 for 5 consecutive steps (since step 2)");
    assert!(err.to_string().starts_with("training stopped at step 6: gradient norm 0"), "{err}");
    assert!(!run.join("DONE").exists());
    // the failed run's curve is there, up to the step it stopped at, and reads accuracy 0
    assert_eq!(metrics_steps(&run), (1..=6).collect::<Vec<_>>());
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let last: Vec<&str> = text.lines().last().unwrap().split(',').collect();
    let (ce, acc, gn): (f64, f64, f64) = (last[4].parse().unwrap(), last[5].parse().unwrap(), last[6].parse().unwrap());
    assert!((ce - 49152f64.ln()).abs() < 1e-3, "CE {ce}");
    assert_eq!((acc, gn), (0.0, 0.0), "all-equal logits are not hits");
    assert!(run.join("eval_metrics.csv").is_file());
    no_part_files(&run);

    // 0 turns the check off: the same run then trains to the end
    let off = dir.path().join("off");
    let rec = execute(tiny(&["train.lr=1e6", "train.dead_steps=0"]), &off, RunOpts { stop: None, hook: None }).unwrap();
    assert_eq!(rec.summary.train.steps, 8);
    assert_eq!(metrics_steps(&off), (1..=8).collect::<Vec<_>>());
    assert!(off.join("DONE").is_file());
    no_part_files(&off);
}

#[test]
fn a_run_at_the_uniform_ce_fails_naming_ln_v() {
    // a healthy lr, but a tolerance so wide every step counts as uniform: the CE rule fires
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let Err(err) = execute(tiny(&["train.dead_steps=3", "train.dead_ce_tol=5.0"]), &run, RunOpts { stop: None, hook: None }) else { panic!("must stop") };
    let Error::Diverged { step, reason } = &err else { panic!("not Diverged: {err}") };
    assert_eq!(*step, 3);
    assert_eq!(reason, "CE at ln V = 10.80 (uniform over 49152 tokens) for 3 consecutive steps (since step 1)");
    assert_eq!(metrics_steps(&run), vec![1, 2, 3]);
    no_part_files(&run);
}

#[test]
fn harness_train_exits_nonzero_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["train", "--config", "configs/tiny-random.toml", "--set", "train.lr=1e6", "--out"])
        .arg(dir.path())
        .current_dir(root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("training stopped at step 6: gradient norm 0 for 5 consecutive steps (since step 2)"), "{err}");
}

#[test]
fn bad_dead_ce_tol_is_rejected() {
    let e = tiny(&["train.dead_ce_tol=-1"]).validate().unwrap_err().to_string();
    assert!(e.contains("train.dead_ce_tol"), "{e}");
}
