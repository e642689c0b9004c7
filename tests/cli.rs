//! The `harness` binary: config errors name the key and exit non-zero; a tiny run trains end to end.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn harness(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_harness")).args(args).current_dir(root()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn config_errors_name_the_key_and_exit_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[train]\nlrr = 1e-4\n", "train", "lrr"),
        ("[train]\nlr = \"fast\"\n", "train.lr", "string"),
        ("[train]\nlr = -1.0\n", "train.lr", "> 0"),
        ("[adapter]\nrank = 0\n", "adapter.rank", "≥ 1"),
        ("[objective]\nanneal_steps = 0\n", "objective.anneal_steps", "≥ 1"),
        ("[objective]\nloss_norm = \"tokens\"\n", "objective.loss_norm", "unknown variant"),
        ("[objective]\neps = 2.0\n", "objective.eps", "(0, 1)"),
        ("name = \"x\"\n[model]\nsource = \"nope.gguf\"\n", "model.source", "not found"),
        ("[train\nlr = 1\n", "", "line"),
    ];
    for (i, (text, key, frag)) in cases.iter().enumerate() {
        let f = write(dir.path(), &format!("c{i}.toml"), text);
        let (code, _, err) = harness(&["train", "--config", &f, "--out", &dir.path().join(format!("r{i}")).display().to_string()]);
        assert_ne!(code, 0, "{text}");
        assert!(err.contains(key) && err.contains(frag), "config {text:?}: stderr was {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(err.trim().lines().filter(|l| l.starts_with("error")).count(), 1, "one error: {err}");
    }
    // --set errors name the key too
    let f = write(dir.path(), "ok.toml", "name = \"x\"\n");
    let (code, _, err) = harness(&["train", "--config", &f, "--set", "train.micro_batch=0"]);
    assert_ne!(code, 0);
    assert!(err.contains("train.micro_batch"), "{err}");
    let (code, _, err) = harness(&["train", "--config", "/nonexistent/run.toml"]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/run.toml"), "{err}");
}

#[test]
fn tiny_run_trains_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (code, stdout, err) = harness(&["train", "--config", "configs/tiny-random.toml", "--set", "train.max_steps=6", "--out", &out.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("final loss"), "{stdout}");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["train"]["max_steps"], 6);
    assert_eq!(cfg["resolved"]["mask_id"], 16);
    assert_eq!(cfg["resolved"]["device"], "cpu");
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 7, "header + 6 steps");
    assert!(out.join("checkpoints/adapter.safetensors").is_file());
    assert!(out.join("summary.json").is_file());
    // eval.at_end (the default): the test split is evaluated and DONE is written last
    assert!(stdout.contains("accuracy"), "{stdout}");
    let eval: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert!(eval["n_items"].as_u64().unwrap() > 0);
    assert!(out.join("predictions.jsonl").is_file());
    assert!(out.join("DONE").is_file());
    // The same folder read through the schema types (what the notebooks use).
    let dir = harness::schema::RunDir::new(&out);
    assert!(dir.is_done());
    assert_eq!(dir.read_summary().unwrap().expect("summary.json").train.steps, 6);
    assert_eq!(dir.read_metrics().unwrap().len(), 6);
    let at_end = dir.read_eval().unwrap().expect("eval.json");
    assert!(at_end.n_items > 0);
    // `harness eval --run DIR` reads the folder's config and saved adapter: the same model, the
    // same seed, so the same predictions as the evaluation at the end of training.
    let again = dir.path().join("evals/again");
    let (code, _, err) = harness(&["eval", "--run", &out.display().to_string(), "--out", &again.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    let re = harness::schema::RunDir::new(&again);
    let e = re.read_eval().unwrap().expect("eval.json of eval --run");
    assert_eq!(e.n_items, at_end.n_items);
    assert_eq!(e.methods.iter().map(|m| (&m.method, m.report.correct)).collect::<Vec<_>>(), at_end.methods.iter().map(|m| (&m.method, m.report.correct)).collect::<Vec<_>>());
    assert_eq!(re.read_predictions().unwrap().iter().map(|p| &p.predicted).collect::<Vec<_>>(), dir.read_predictions().unwrap().iter().map(|p| &p.predicted).collect::<Vec<_>>());
}

#[test]
fn readme_documents_every_config_field() {
    fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    leaves(&key, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let v = serde_json::to_value(harness::config::RawConfig::default()).unwrap();
    let mut keys = Vec::new();
    leaves("", &v, &mut keys);
    assert!(keys.len() > 60, "{}", keys.len());
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let missing: Vec<&String> = keys.iter().filter(|k| !readme.contains(&format!("`{k}`"))).collect();
    assert!(missing.is_empty(), "README lacks config keys: {missing:?}");
}
