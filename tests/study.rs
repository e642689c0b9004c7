//! Studies: resume after a kill, never-overwrite, divergence marked failed, manifest fields,
//! one summary row per run, study-file errors naming file and key, the report.
//! Tiny random model (vocab 49152) on clinical-rules, a few steps per run: about a second each.

use harness::study::manifest;
use harness::study::{report, run_study, StudyOpts};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// A tiny study: `axes` is appended (grid/zip/variants), `top` goes before `[base]`.
fn study_text(top: &str, axes: &str) -> String {
    let tok = root().join("tests/fixtures/smollm2-tokenizer.gguf");
    format!(
        r#"question = "test"
gpu_minutes = 0
{top}

[base]
name = "t"

[base.model]
source = "random"
tokenizer = "{}"
init_std = 0.05
device = "cpu"

[base.model.arch]
vocab_size = 49152
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 1
num_attention_heads = 2
num_key_value_heads = 1
max_position_embeddings = 512
tie_word_embeddings = true

[base.adapter]
rank = 4
alpha = 8

[base.train]
lr = 3e-3
warmup_steps = 1
max_steps = 2
micro_batch = 8
dev_loss_batches = 1
progress = false

[base.data]
dataset = "clinical-rules"
n_train = 32
n_test = 8
max_len = 192

[base.eval]
methods = ["likelihood"]
limit = 8
mc_samples = 2
bootstrap = 50

{axes}
"#,
        tok.display()
    )
}

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    study: PathBuf,
}

impl Env {
    fn new(name: &str, top: &str, axes: &str) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let study = dir.join(format!("{name}.toml"));
        std::fs::write(&study, study_text(top, axes)).unwrap();
        Env { _tmp: tmp, dir, study }
    }
    fn results(&self) -> PathBuf {
        self.dir.join("results")
    }
    fn opts<'a>(&self, stop: Option<&'a AtomicBool>) -> StudyOpts<'a> {
        StudyOpts {
            results: self.results(),
            cache: self.dir.join("cache"),
            stop,
            command: vec!["harness".into(), "study".into(), self.study.display().to_string()],
            // Not a git checkout: the commit and dirty flag cannot change between runs of a test.
            git_dir: Some(self.dir.clone()),
            ..StudyOpts::default()
        }
    }
    fn run(&self) -> harness::study::StudyOutcome {
        run_study(&self.study.display().to_string(), self.opts(None)).unwrap()
    }
}

const DDM_VS_AR: &str = "[grid]\n\"objective.kind\" = [\"diffusion\", \"autoregressive\"]\n";

fn csv_rows(path: &Path) -> Vec<csv::StringRecord> {
    let mut r = csv::Reader::from_path(path).unwrap();
    r.records().map(|x| x.unwrap()).collect()
}

fn csv_col(path: &Path, name: &str) -> Vec<String> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let i = r.headers().unwrap().iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name}"));
    r.records().map(|x| x.unwrap()[i].to_string()).collect()
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
                out.push((p.clone(), std::fs::read(&p).unwrap(), mtime));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn resume_after_a_simulated_kill_skips_done_runs_and_redoes_partial_ones() {
    let env = Env::new("resume", "seeds = [0, 1]", DDM_VS_AR);
    // A Ctrl-C before the first run: nothing runs, the folder stays unfinished.
    let stop = AtomicBool::new(true);
    let o = run_study(&env.study.display().to_string(), env.opts(Some(&stop))).unwrap();
    assert!(o.interrupted && o.done == 0 && o.total == 4, "{o:?}");
    assert!(manifest::read(&o.folder).unwrap().end.is_none());
    assert!(!env.results().join("resume/latest").exists());
    let first = o.folder;

    let o = env.run();
    assert!(o.resumed, "resumes the interrupted folder");
    assert_eq!(o.folder, first);
    assert_eq!((o.done, o.failed, o.total, o.interrupted), (4, 0, 4, false));
    let folder = o.folder;
    assert_eq!(std::fs::read_to_string(env.results().join("resume/latest")).unwrap().trim(), folder.file_name().unwrap().to_str().unwrap());

    // Simulate a kill -9: one run lost its DONE, another is half-written, the end is unset.
    let runs = folder.join("runs");
    std::fs::remove_file(runs.join("ddm-seed0/DONE")).unwrap();
    for f in ["DONE", "eval.json", "predictions.jsonl", "summary.json"] {
        std::fs::remove_file(runs.join("ar-seed1").join(f)).unwrap();
    }
    std::fs::write(runs.join("ar-seed1/partial.bin"), b"half").unwrap();
    let mut m = manifest::read(&folder).unwrap();
    m.end = None;
    manifest::write(&m, &folder).unwrap();
    let kept_a = snapshot(&runs.join("ar-seed0"));
    let kept_b = snapshot(&runs.join("ddm-seed1"));

    let o = env.run();
    assert!(o.resumed);
    assert_eq!(o.folder, folder, "same folder");
    assert_eq!((o.done, o.skipped, o.total), (4, 2, 4));
    assert_eq!(snapshot(&runs.join("ar-seed0")), kept_a, "DONE runs untouched");
    assert_eq!(snapshot(&runs.join("ddm-seed1")), kept_b, "DONE runs untouched");
    assert!(runs.join("ddm-seed0/DONE").is_file(), "redone");
    assert!(runs.join("ar-seed1/DONE").is_file(), "redone");
    assert!(!runs.join("ar-seed1/partial.bin").exists(), "half-written run redone from scratch");
    let ids = csv_col(&folder.join("summary.csv"), "run_id");
    assert_eq!(ids, vec!["ddm-seed0", "ar-seed0", "ddm-seed1", "ar-seed1"], "one row per run");
    assert!(csv_col(&folder.join("summary.csv"), "status").iter().all(|s| s == "done"));
    assert!(manifest::read(&folder).unwrap().end.is_some());
    assert_eq!(manifest::read(&folder).unwrap().resumed.len(), 2);
    assert_eq!(std::fs::read_dir(env.results().join("resume")).unwrap().filter(|e| e.as_ref().unwrap().path().is_dir()).count(), 1);
    // Checkpoints went to the cache, not into results.
    assert!(env.dir.join("cache/resume").join(folder.file_name().unwrap()).join("ddm-seed0/adapter.safetensors").is_file());
    assert!(!runs.join("ddm-seed0/checkpoints").exists());
}

#[test]
fn a_complete_folder_is_never_overwritten_and_compare_sets_two_side_by_side() {
    let env = Env::new("again", "", "[zip]\n\"adapter.rank\" = [2, 4]\n\"adapter.alpha\" = [4.0, 8.0]\n");
    let a = env.run();
    assert!(!a.resumed);
    let before = snapshot(&a.folder);
    let b = env.run();
    assert!(!b.resumed);
    assert_ne!(a.folder, b.folder, "a new folder");
    assert_eq!(snapshot(&a.folder), before, "the old folder is untouched");
    assert_eq!(std::fs::read_to_string(env.results().join("again/latest")).unwrap().trim(), b.folder.file_name().unwrap().to_str().unwrap());
    let index = csv_col(&env.results().join("index.csv"), "folder");
    assert_eq!(index.len(), 2);
    let ids = csv_col(&b.folder.join("summary.csv"), "run_id");
    assert_eq!(ids, vec!["ddm-rank=2-alpha=4.0-seed0", "ddm-rank=4-alpha=8.0-seed0"]);
    assert_eq!(csv_col(&b.folder.join("summary.csv"), "adapter.rank"), vec!["2", "4"]);
    let c = report::compare(&a.folder, &env.results().join("again")).unwrap().terminal();
    assert!(c.contains("ddm-rank=2-alpha=4.0") && c.contains("ddm-rank=4-alpha=8.0"), "{c}");
}

#[test]
fn a_diverging_run_is_marked_failed_and_the_study_goes_on() {
    let env = Env::new("nan", "", "[grid]\n\"train.lr\" = [3e-3, 1e30]\n");
    // Three steps so a huge step can blow the loss up.
    let text = std::fs::read_to_string(&env.study).unwrap().replace("max_steps = 2", "max_steps = 3");
    std::fs::write(&env.study, text).unwrap();
    let o = env.run();
    assert_eq!((o.done, o.failed, o.total), (1, 1, 2), "{o:?}");
    let runs = o.folder.join("runs");
    let failed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(runs.join("ddm-lr=1e30-seed0/FAILED")).unwrap()).unwrap();
    assert!(failed["step"].as_u64().is_some_and(|s| (1..=3).contains(&s)), "{failed}");
    assert!(failed["message"].as_str().unwrap().contains("loss became"), "{failed}");
    assert!(!runs.join("ddm-lr=1e30-seed0/DONE").exists());
    assert!(runs.join("ddm-lr=0.003-seed0/DONE").is_file());
    let s = o.folder.join("summary.csv");
    assert_eq!(csv_rows(&s).len(), 2, "one row per run");
    assert_eq!(csv_col(&s, "status"), vec!["done", "failed"]);
    assert_eq!(csv_col(&s, "failed_step")[1], failed["step"].to_string());
    assert!(manifest::read(&o.folder).unwrap().end.is_some(), "complete, with a failure");
    let (_, r) = report::report(&o.folder).unwrap();
    assert!(r.terminal().contains("Failed runs"), "{}", r.terminal());
}

#[test]
fn the_manifest_records_provenance() {
    let env = Env::new("prov", "zero_shot = true", "");
    let mut opts = env.opts(None);
    opts.git_dir = Some(root());
    let o = run_study(&env.study.display().to_string(), opts).unwrap();
    assert_eq!((o.done, o.total), (2, 2), "one trained run and the zero-shot one");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(o.folder.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(v["study"], "prov");
    assert!(v["study_toml"].as_str().unwrap().contains("[base.model]"));
    assert_eq!(v["points"].as_array().unwrap().len(), 2);
    assert_eq!(v["points"][1]["zero_shot"], true);
    assert_eq!(v["points"][1]["config"]["objective"]["kind"], "autoregressive");
    assert_eq!(v["git"]["commit"].as_str().unwrap().len(), 40, "{}", v["git"]);
    assert!(v["git"]["dirty"].is_boolean());
    let name = o.folder.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.contains(v["git"]["short"].as_str().unwrap()), "{name}");
    assert_eq!(name.ends_with("-dirty"), v["git"]["dirty"] == true);
    assert_eq!(v["harness_version"], env!("CARGO_PKG_VERSION"));
    assert!(v["candle_version"].as_str().unwrap().starts_with("0.11"), "{}", v["candle_version"]);
    assert_eq!(v["device"]["device"], "cpu");
    assert!(!v["device"]["name"].as_str().unwrap().is_empty());
    assert!(!v["device"]["host"].as_str().unwrap().is_empty());
    assert!(v["start"].as_str().unwrap().starts_with("20"));
    assert!(v["end"].as_str().unwrap().starts_with("20"));
    assert_eq!(v["command"][1], "study");
    let hashes = v["hashes"].as_array().unwrap();
    assert!(hashes.iter().any(|h| h["role"] == "model" && h["what"].as_str().unwrap().ends_with("smollm2-tokenizer.gguf") && h["sha256"].as_str().unwrap().len() == 64), "{hashes:?}");
    assert!(hashes.iter().any(|h| h["role"] == "dataset" && h["sha256"].as_str().unwrap().len() == 64), "{hashes:?}");
    // The not-a-checkout case says so.
    let g = harness::study::manifest::git_info(&env.dir, &env.results());
    assert!(g.commit.is_none() && g.note.is_some(), "{g:?}");
    assert!(csv_col(&o.folder.join("summary.csv"), "zero_shot") == vec!["false", "true"]);
}

#[test]
fn a_malformed_study_names_the_file_and_the_key() {
    let cases: [(&str, &str, &str); 7] = [
        ("gird = 1", "", "gird"),
        ("", "[grid]\n\"train.lrr\" = [1e-3]\n", "train.lrr"),
        ("", "[grid]\n\"foo.bar\" = [1]\n", "foo.bar"),
        ("", "[grid]\n\"train.lr\" = [\"fast\"]\n", "train.lr"),
        ("", "[grid]\n\"train.lr\" = 1e-3\n", "train.lr"),
        ("", "[zip]\n\"adapter.rank\" = [2, 4]\n\"adapter.alpha\" = [4.0]\n", "adapter.alpha"),
        ("", "[[variants]]\nlabel = \"x\"\nset = { \"data.nope\" = 1 }\n", "data.nope"),
    ];
    for (i, (top, axes, key)) in cases.iter().enumerate() {
        let env = Env::new(&format!("bad{i}"), top, axes);
        let e = harness::study::load(&env.study, &[]).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains(&format!("bad{i}.toml")) && e.contains(key), "case {i}: {e}");
        // Nothing ran.
        let r = run_study(&env.study.display().to_string(), env.opts(None));
        assert!(r.is_err());
        assert!(!env.results().exists());
    }
    let env = Env::new("zip", "", "[zip]\n\"adapter.rank\" = [2, 4]\n\"adapter.alpha\" = [4.0]\n");
    let e = harness::study::load(&env.study, &[]).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("equal lengths"), "{e}");
    // A value that parses but fails validation (fail fast, before anything runs).
    let env = Env::new("range", "", "[grid]\n\"train.lr\" = [1e-3, -1.0]\n");
    let e = harness::study::load(&env.study, &[]).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("range.toml") && e.contains("train.lr"), "{e}");
}

#[test]
fn the_report_renders_configurations_and_pairs_and_writes_markdown() {
    let env = Env::new("rep", "zero_shot = true", DDM_VS_AR);
    let o = env.run();
    assert_eq!((o.done, o.total), (3, 3));
    let (folder, r) = report::report(&env.results().join("rep")).unwrap();
    assert_eq!(folder, o.folder, "results/<study> means its latest folder");
    let t = r.terminal();
    for s in ["ddm", "ar", "zero-shot", "accuracy", "macro-F1", "majority", "ddm vs AR", "ddm-seed0", "ar-seed0"] {
        assert!(t.contains(s), "missing {s}: {t}");
    }
    let md = std::fs::read_to_string(o.folder.join("report.md")).unwrap();
    assert!(md.starts_with("# Study `rep`"), "{md}");
    assert!(md.contains("| configuration") && md.contains("| ddm") && md.contains("ddm vs AR"), "{md}");
    // Power and comparable losses: an MDE column in every comparison table, the dev NLL beside
    // it, and no training-loss column in a table that mixes objectives.
    for tab in &r.tables {
        if tab.title.starts_with("Failed") {
            continue;
        }
        assert!(tab.header.iter().any(|h| h.starts_with("MDE acc %")), "no MDE column in {}: {:?}", tab.title, tab.header);
        assert!(!tab.header.iter().any(|h| h.contains("train loss") || h == "final loss"), "raw loss across objectives in {}: {:?}", tab.title, tab.header);
    }
    assert!(r.tables[0].header.iter().any(|h| h.starts_with("dev NLL")), "{:?}", r.tables[0].header);
    let a: harness::schema::Analysis = harness::schema::StudyDir::new(&o.folder).read_analysis().unwrap();
    for c in a.configs.iter().filter(|c| !c.zero_shot) {
        let nll = c.dev_nll.unwrap_or_else(|| panic!("{}: no dev NLL", c.config_id));
        assert!(nll.is_finite() && nll > 0.0, "{}: dev NLL {nll}", c.config_id);
        assert!(c.mde.is_some_and(|d| d > 0.0 && d < 1.0), "{}: MDE {:?}", c.config_id, c.mde);
    }
    assert!(csv_col(&o.folder.join("summary.csv"), "dev_nll").iter().filter(|v| !v.is_empty()).count() == 2, "dev_nll of both trained runs");
}

#[test]
fn two_seeds_give_intervals_inside_0_100_and_the_diffusion_run_writes_its_t_buckets() {
    let env = Env::new("seeds", "seeds = [0, 1]", DDM_VS_AR);
    let o = env.run();
    assert_eq!((o.done, o.total), (4, 4));
    let (_, r) = report::report(&env.results().join("seeds")).unwrap();
    let a: harness::schema::Analysis = harness::schema::StudyDir::new(&o.folder).read_analysis().unwrap();
    for c in &a.configs {
        let iv = c.accuracy_pooled.unwrap_or_else(|| panic!("{}: no pooled interval with 2 seeds", c.config_id));
        assert!(0.0 <= iv.lo && iv.lo <= iv.estimate && iv.estimate <= iv.hi && iv.hi <= 1.0, "{}: {iv:?}", c.config_id);
        let f1 = c.macro_f1_pooled.unwrap();
        assert!(0.0 <= f1.lo && f1.hi <= 1.0, "{f1:?}");
        assert!(c.accuracy.as_ref().unwrap().interval.is_none(), "no Student-t interval any more");
        assert_eq!(c.accuracy_estimate().unwrap().source, harness::schema::analysis::POOLED_SOURCE);
        assert_eq!(c.items, Some(8));
        // The two-proportion MDE at the configuration's accuracy with N = 8 items × 2 seeds.
        let p = c.accuracy.as_ref().unwrap().mean;
        let want = harness::stats::mde_two_proportions(p, 16, harness::stats::MDE_ALPHA, harness::stats::MDE_POWER).unwrap();
        assert!((c.mde.unwrap() - want).abs() < 1e-9 && want > 0.0, "{:?} vs {want}", c.mde);
    }
    // Re-running the report gives the same intervals (the bootstrap is seeded).
    report::report(&env.results().join("seeds")).unwrap();
    let b: harness::schema::Analysis = harness::schema::StudyDir::new(&o.folder).read_analysis().unwrap();
    assert_eq!(a, b);
    let t = r.terminal();
    assert!(t.contains("seed s.d.") && t.contains("bootstrap over items, seeds kept"), "{t}");
    // t_buckets.csv: the diffusion runs only, 5 buckets per logged step, counts adding up to
    // the scored tokens of metrics.csv.
    let runs = o.folder.join("runs");
    let ddm = harness::schema::RunDir::new(runs.join("ddm-seed0"));
    let rows = ddm.read_t_buckets().unwrap();
    let metrics = ddm.read_metrics().unwrap();
    assert_eq!(rows.len(), 5 * metrics.len());
    for m in &metrics {
        let n: usize = rows.iter().filter(|r| r.step == m.step).map(|r| r.tokens).sum();
        assert_eq!(n, m.scored_tokens, "step {}", m.step);
    }
    assert!(!runs.join("ar-seed0").join("t_buckets.csv").exists());
    assert!(harness::schema::RunDir::new(runs.join("ar-seed0")).read_t_buckets().unwrap().is_empty());
}

/// `harness study` on `env`'s study file as a child process (cwd: the test folder).
fn study_cmd(env: &Env, extra: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_harness"));
    c.arg("study").arg(&env.study).arg("--results").arg(env.results()).args(extra).current_dir(&env.dir);
    c
}

/// Wait (at most two minutes) until `f` holds.
fn wait_until(what: &str, f: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(t.elapsed().as_secs() < 120, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The one study folder of `results/<study>` (a folder with a manifest).
fn only_folder(study_dir: &Path) -> Option<PathBuf> {
    let f: Vec<PathBuf> = std::fs::read_dir(study_dir).ok()?.map(|e| e.unwrap().path()).filter(|p| p.join("manifest.json").is_file()).collect();
    assert!(f.len() <= 1, "{f:?}");
    f.into_iter().next()
}

#[test]
fn a_second_invocation_refuses_naming_the_holder_and_with_wait_resumes_after_it_redoing_nothing() {
    let env = Env::new("twice", "seeds = [0, 1]", DDM_VS_AR);
    // Long enough runs that the first is still busy while the others start.
    let text = std::fs::read_to_string(&env.study).unwrap().replace("max_steps = 2", "max_steps = 8");
    std::fs::write(&env.study, text).unwrap();
    let first = study_cmd(&env, &[]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let study_dir = env.results().join("twice");
    wait_until("the first invocation's folder lock", || only_folder(&study_dir).is_some_and(|f| f.join("LOCK").is_file()));
    let folder = only_folder(&study_dir).unwrap();
    let lock: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(folder.join("LOCK")).unwrap()).unwrap();
    assert_eq!(lock["pid"], first.id(), "{lock}");

    // The second refuses, naming the holder, and touches nothing.
    let before = manifest::read(&folder).unwrap();
    let e = run_study(&env.study.display().to_string(), env.opts(None)).unwrap_err().to_string();
    assert!(e.contains(&format!("pid {}", first.id())) && e.contains("--wait") && e.contains("since 20"), "{e}");
    assert_eq!(manifest::read(&folder).unwrap().resumed.len(), before.resumed.len(), "the refused invocation did not resume");
    // The same from the command line: exit status ≠ 0.
    let out = study_cmd(&env, &[]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("pid {}", first.id())), "{stderr}");

    // With --wait it waits for the first, then finds every run finished and redoes nothing.
    let waiter = study_cmd(&env, &["--wait"]).output().unwrap();
    let first_out = first.wait_with_output().unwrap();
    assert!(first_out.status.success(), "{}", String::from_utf8_lossy(&first_out.stderr));
    let stdout = String::from_utf8_lossy(&waiter.stdout);
    let stderr = String::from_utf8_lossy(&waiter.stderr);
    assert!(waiter.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("waiting for"), "{stderr}");
    assert!(stdout.contains(&format!("resumed {}: 4 done, 0 failed of 4 runs (4 finished earlier)", folder.display())), "{stdout}");
    assert!(!stderr.contains("[1/4]") && !stdout.contains("[1/4]"), "nothing ran again: {stdout}\n{stderr}");
    let first_stdout = String::from_utf8_lossy(&first_out.stdout);
    assert!(first_stdout.contains("4 done, 0 failed of 4 runs (0 finished earlier)"), "{first_stdout}");
    // One folder, complete, resumed by nobody; every lock released.
    assert_eq!(only_folder(&study_dir), Some(folder.clone()));
    let m = manifest::read(&folder).unwrap();
    assert!(m.end.is_some() && m.resumed.is_empty(), "{:?}", m.resumed);
    assert!(!folder.join("LOCK").exists() && !study_dir.join("LOCK").exists());
    assert!(csv_col(&folder.join("summary.csv"), "status").iter().all(|s| s == "done"));
}

#[test]
fn a_stale_lock_of_a_dead_process_is_taken_over() {
    let env = Env::new("stale", "", DDM_VS_AR);
    // An interrupted first invocation leaves an unfinished folder…
    let stop = AtomicBool::new(true);
    let o = run_study(&env.study.display().to_string(), env.opts(Some(&stop))).unwrap();
    assert!(o.interrupted);
    assert!(!o.folder.join("LOCK").exists(), "released on the Ctrl-C path");
    // …and a kill -9 would leave the locks of a process that no longer exists.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let pid = dead.id();
    dead.wait().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let holder = serde_json::json!({"pid": pid, "host": harness::schema::lock::host_name(), "start_unix": now - 5, "heartbeat_unix": now});
    std::fs::write(o.folder.join("LOCK"), holder.to_string()).unwrap();
    std::fs::write(env.results().join("stale/LOCK"), holder.to_string()).unwrap();
    let out = study_cmd(&env, &[]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("taking over the stale lock of study stale") && stderr.contains("taking over the stale lock of study folder"), "{stderr}");
    assert!(stderr.contains(&format!("process {pid} is not running")), "{stderr}");
    assert!(stdout.contains(&format!("resumed {}: 2 done", o.folder.display())), "{stdout}");
    assert!(!o.folder.join("LOCK").exists() && !env.results().join("stale/LOCK").exists(), "released at the end");
    // A live holder (this test process) is not stale: refused.
    let live = serde_json::json!({"pid": std::process::id(), "host": harness::schema::lock::host_name(), "start_unix": now, "heartbeat_unix": now});
    std::fs::write(env.results().join("stale/LOCK"), live.to_string()).unwrap();
    let e = run_study(&env.study.display().to_string(), env.opts(None)).unwrap_err().to_string();
    assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
    assert_eq!(only_folder(&env.results().join("stale")), Some(o.folder.clone()), "no new folder");
}

#[test]
fn decoding_variants_are_paired_with_plain_generate_of_the_same_run() {
    let axes = "[grid]\n\"objective.kind\" = [\"diffusion\"]\n[by_objective.diffusion]\n\"eval.methods\" = [\"generate\"]\n\"eval.max_new_tokens\" = 4\n\"eval.steps\" = 4\n\"eval.steps_sweep\" = [2]\n\"eval.cache_sweep\" = [\"prefix\"]\n";
    let env = Env::new("variants", "", axes);
    let o = env.run();
    assert_eq!((o.done, o.failed), (1, 0), "{o:?}");
    let (_, r) = report::report(&o.folder).unwrap();
    let a = harness::study::analysis::analyze(&o.folder, &manifest::read(&o.folder).unwrap()).unwrap();
    let methods: Vec<&str> = a.method_pairs.iter().map(|p| p.method.as_str()).collect();
    assert_eq!(methods, ["generate@steps=2", "generate@cache=prefix"]);
    for p in &a.method_pairs {
        assert_eq!((p.run.as_str(), p.base.as_str()), ("ddm-seed0", "generate"));
        let c = &p.comparison;
        assert_eq!(c.n, 8, "the run's test items, matched by id");
        assert_eq!(c.both_correct + c.both_wrong + c.mcnemar.b + c.mcnemar.c, c.n);
        assert!((c.accuracy_diff.estimate - (c.a_accuracy - c.b_accuracy)).abs() < 1e-12, "variant − generate");
        assert!(p.mde.is_some() && p.holm_p >= c.mcnemar.p_value);
    }
    let md = r.markdown();
    assert!(md.contains("decoding variants vs plain generate") && md.contains("generate@cache=prefix"), "{md}");
}

/// Run folders of `folder` whose `LOCK` is held, with the holder's pid.
fn held_run_locks(folder: &Path) -> Vec<(String, u32)> {
    let Ok(rd) = std::fs::read_dir(folder.join("runs")) else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("LOCK")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            Some((e.file_name().to_string_lossy().to_string(), v["pid"].as_u64()? as u32))
        })
        .collect()
}

/// `DONE` of every run of `folder`: run id → its content (the time it was written).
fn done_times(folder: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir(folder.join("runs"))
        .unwrap()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_string_lossy().to_string(), std::fs::read_to_string(e.path().join("DONE")).ok()?)))
        .collect()
}

/// The study `name` (two seeds, ddm vs AR) run in one process gives `folder`'s numbers.
fn assert_numbers_of_one_process(folder: &Path, name: &str) {
    let one = Env::new(name, "seeds = [0, 1]", DDM_VS_AR); // kept: its folder lives in a temp dir
    let o = one.run();
    for col in ["run_id", "status", "final_loss", "dev_loss", "likelihood_accuracy"] {
        assert_eq!(csv_col(&folder.join("summary.csv"), col), csv_col(&o.folder.join("summary.csv"), col), "{col}");
    }
}

#[test]
fn cpu_workers_share_a_folder_and_give_the_numbers_of_one_process() {
    let env = Env::new("workers", "seeds = [0, 1]", DDM_VS_AR);
    let out = study_cmd(&env, &["--devices", "cpu,cpu"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Both workers ran points; every point ran once.
    let both = format!("{stdout}{stderr}");
    assert!(both.contains("(worker 0, cpu)") && both.contains("(worker 1, cpu)"), "{both}");
    for id in ["ddm-seed0", "ar-seed0", "ddm-seed1", "ar-seed1"] {
        assert_eq!(both.matches(&format!("] {id} (worker")).count(), 1, "{id}: {both}");
    }
    assert!(stdout.contains("4 done, 0 failed of 4 runs (0 finished earlier)"), "{stdout}");
    let folder = only_folder(&env.results().join("workers")).unwrap();
    let m = manifest::read(&folder).unwrap();
    assert!(m.end.is_some(), "the study process ends the folder once every worker is done");
    assert!(held_run_locks(&folder).is_empty() && !folder.join("LOCK").exists(), "every lock released");
    // The same study in one process gives the same numbers (seeded runs; the worker's device
    // override `cpu` is what the base config says).
    assert_numbers_of_one_process(&folder, "workers");
}

#[test]
fn a_killed_worker_s_run_is_redone_and_nothing_finished_runs_again() {
    let env = Env::new("killed", "seeds = [0, 1, 2]", DDM_VS_AR);
    // Runs long enough to kill one mid-way.
    let text = std::fs::read_to_string(&env.study).unwrap().replace("max_steps = 2", "max_steps = 30");
    std::fs::write(&env.study, text).unwrap();
    let first = study_cmd(&env, &["--devices", "cpu,cpu"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let study_dir = env.results().join("killed");
    wait_until("two workers holding runs", || only_folder(&study_dir).is_some_and(|f| held_run_locks(&f).len() == 2));
    let folder = only_folder(&study_dir).unwrap();
    let (victim_run, victim) = held_run_locks(&folder).into_iter().next().unwrap();
    assert_ne!(victim, first.id(), "runs are held by the workers, not the study process");
    assert!(std::process::Command::new("kill").arg("-9").arg(victim.to_string()).status().unwrap().success());
    let out = first.wait_with_output().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // The dead worker is named; its half-written run was either taken over by the other worker
    // (its lock is stale: the pid is gone) or is left for the rerun.
    assert!(log.contains(&format!("pid {victim}")), "{log}");
    let before = done_times(&folder);
    assert!(before.len() >= 5, "the surviving worker went on: {before:?}\n{log}");
    let rerun = study_cmd(&env, &["--devices", "cpu,cpu"]).output().unwrap();
    let relog = format!("{}{}", String::from_utf8_lossy(&rerun.stdout), String::from_utf8_lossy(&rerun.stderr));
    assert!(rerun.status.success(), "{relog}");
    let after = done_times(&folder);
    assert_eq!(after.len(), 6, "{after:?}");
    for (id, t) in &before {
        assert_eq!(after.get(id), Some(t), "{id} finished before the rerun and was not run again");
    }
    assert!(log.contains(&format!("taking over the stale lock of run {victim_run}")) || relog.contains(&format!("taking over the stale lock of run {victim_run}")), "{log}\n{relog}");
    // The redone run started from scratch: one metrics row per logged step, none twice.
    let steps = csv_col(&folder.join("runs").join(&victim_run).join("metrics.csv"), "step");
    let mut uniq = steps.clone();
    uniq.dedup();
    assert_eq!(steps, uniq, "{steps:?}");
    assert!(manifest::read(&folder).unwrap().end.is_some());
    assert!(csv_col(&folder.join("summary.csv"), "status").iter().all(|s| s == "done"));
    assert!(held_run_locks(&folder).is_empty());
}

#[test]
fn a_bad_device_list_is_one_clear_error() {
    let env = Env::new("baddev", "", DDM_VS_AR);
    let out = study_cmd(&env, &["--devices", "0,gpu"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`gpu` is not `all`, `cpu` or a GPU index"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn shards_share_a_folder_and_merge_ends_it_with_the_numbers_of_one_process() {
    let env = Env::new("shards", "seeds = [0, 1]", DDM_VS_AR);
    // Both shards at once, as a job array starts them.
    let piped = |c: &mut std::process::Command| c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let a = piped(&mut study_cmd(&env, &["--shard", "1/2"]));
    let b = piped(&mut study_cmd(&env, &["--shard", "2/2"]));
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let text = |o: &std::process::Output| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let (la, lb) = (text(&oa), text(&ob));
    assert!(oa.status.success() && ob.status.success(), "{la}\n{lb}");
    // Points in manifest order ddm-seed0, ar-seed0, ddm-seed1, ar-seed1: shard 1 takes 0 and 2.
    for id in ["ddm-seed0", "ddm-seed1"] {
        assert!(la.contains(&format!("] {id} (shard 1/2)")) && !lb.contains(&format!("] {id} ")), "{id}: {la}\n{lb}");
    }
    for id in ["ar-seed0", "ar-seed1"] {
        assert!(lb.contains(&format!("] {id} (shard 2/2)")) && !la.contains(&format!("] {id} ")), "{id}: {la}\n{lb}");
    }
    assert!(la.contains("--merge") && la.contains("2 done, 0 failed of its 2 runs"), "{la}");
    // One folder, every run done, not ended until the merge.
    let study_dir = env.results().join("shards");
    let folder = only_folder(&study_dir).unwrap();
    assert_eq!(done_times(&folder).len(), 4);
    assert!(manifest::read(&folder).unwrap().end.is_none() && !study_dir.join("latest").exists());
    let m = study_cmd(&env, &["--merge"]).output().unwrap();
    let lm = text(&m);
    assert!(m.status.success(), "{lm}");
    assert!(lm.contains(&format!("merged {}: 4 done, 0 failed of 4 runs", folder.display())), "{lm}");
    assert!(manifest::read(&folder).unwrap().end.is_some());
    assert_eq!(std::fs::read_to_string(study_dir.join("latest")).unwrap().trim(), folder.file_name().unwrap().to_string_lossy());
    // Merging again leaves the ended folder as it is.
    // (the merge prints the report, which rewrites report.md and analysis.json)
    let data = |f: &Path| snapshot(f).into_iter().filter(|(p, _, _)| !p.ends_with("report.md") && !p.ends_with("analysis.json")).collect::<Vec<_>>();
    let before = data(&folder);
    assert!(study_cmd(&env, &["--merge"]).output().unwrap().status.success());
    assert_eq!(data(&folder), before);
    // The same numbers as one process.
    assert_numbers_of_one_process(&folder, "shards");
}

#[test]
fn merge_of_an_unfinished_folder_names_the_missing_runs_and_a_bad_shard_is_refused() {
    let env = Env::new("halfmerge", "seeds = [0, 1]", DDM_VS_AR);
    assert!(study_cmd(&env, &["--shard", "2/2"]).output().unwrap().status.success());
    let m = study_cmd(&env, &["--merge"]).output().unwrap();
    assert!(!m.status.success());
    let e = String::from_utf8_lossy(&m.stderr);
    assert!(e.contains("2 of 4 runs are not finished") && e.contains("ddm-seed0") && e.contains("ddm-seed1"), "{e}");
    let folder = only_folder(&env.results().join("halfmerge")).unwrap();
    assert!(manifest::read(&folder).unwrap().end.is_none());
    for bad in ["3/2", "0/2", "2", "a/b"] {
        let o = study_cmd(&env, &["--shard", bad]).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(&format!("`{bad}` is not I/N")) && !e.contains("panicked"), "{bad}: {e}");
    }
}
