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
        // The objective is a tagged enum: the autoregressive one takes no diffusion field.
        ("[objective]\nkind = \"autoregressive\"\nanneal_steps = 4\n", "objective.anneal_steps", "not a field of the autoregressive objective"),
        ("[objective]\nshift = false\nkind = \"autoregressive\"\n", "objective.shift", "not a field of the autoregressive objective"),
        ("[objective]\nkind = \"autoregressive\"\n[eval]\nsteps_sweep = [2]\n", "eval.steps_sweep", "autoregressive"),
        ("[objective]\nkind = \"ddm\"\n", "objective", "unknown variant"),
        // Methods and strategies are enums: a bad string names the key and the allowed values.
        ("[eval]\nstrategy = \"greedy\"\n", "eval.strategy", "low_confidence"),
        ("[eval]\nmethods = [\"generate\", \"likelyhood\"]\n", "eval.methods", "likelihood"),
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
    // Switching a config with diffusion fields to AR by `--set objective.kind` is an error naming
    // the field; replacing the whole table works.
    let (code, _, err) = harness(&["train", "--config", "configs/tiny-random.toml", "--set", "objective.kind=autoregressive"]);
    assert_ne!(code, 0);
    assert!(err.contains("objective.anneal_steps") && err.contains("autoregressive"), "{err}");
    // The CLI parses methods into the same enum.
    let (code, _, err) = harness(&["eval", "--base", "random", "--dataset", "clinical-rules", "--method", "generat"]);
    assert_ne!(code, 0);
    assert!(err.contains("--method") && err.contains("generate") && err.contains("likelihood"), "{err}");
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
    assert_eq!(cfg["eval"]["cache"], "none", "the decoding cache is recorded in config.json");
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
    // The diffusion loss by t bucket: 5 rows per logged step, counts adding up to the scored
    // tokens, CE sums to the step's CE (mean CE × scored tokens).
    let buckets = dir.read_t_buckets().unwrap();
    assert_eq!(buckets.len(), 5 * 6);
    for m in dir.read_metrics().unwrap() {
        let rows: Vec<_> = buckets.iter().filter(|b| b.step == m.step).collect();
        assert_eq!(rows.iter().map(|b| b.tokens).sum::<usize>(), m.scored_tokens);
        let ce: f64 = rows.iter().filter_map(|b| Some(b.ce? * b.tokens as f64)).sum();
        assert!((ce - m.ce * m.scored_tokens as f64).abs() < 1e-3 * ce.max(1.0), "step {}: {ce} vs {}", m.step, m.ce * m.scored_tokens as f64);
    }
    // The comparable dev NLL, beside the objective's own dev loss.
    let nll = dir.read_summary().unwrap().unwrap().train.dev_nll.expect("dev_nll in summary.json");
    assert!(nll.is_finite() && nll > 0.0, "{nll}");
    let evals = std::fs::read_to_string(out.join("eval_metrics.csv")).unwrap();
    assert!(evals.contains(",dev_nll,") && evals.contains(",dev_loss,"), "{evals}");
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
    // eval.* settings may change with --run: here annealing finished, so "full" is what "trained"
    // read, and the predictions are the same.
    let full = dir.path().join("evals/full");
    let (code, _, err) = harness(&["eval", "--run", &out.display().to_string(), "--set", "eval.attention=\"full\"", "--out", &full.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    let fe = harness::schema::RunDir::new(&full).read_predictions().unwrap();
    assert_eq!(fe.iter().map(|p| &p.predicted).collect::<Vec<_>>(), dir.read_predictions().unwrap().iter().map(|p| &p.predicted).collect::<Vec<_>>());
    // The prefix KV cache is an eval.* setting too (its accuracy cost: compare this folder with the
    // run's own evaluation); eval.json records it.
    let cached = dir.path().join("evals/prefix");
    let (code, _, err) = harness(&["eval", "--run", &out.display().to_string(), "--set", "eval.cache=\"prefix\"", "--out", &cached.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    let ce = harness::schema::RunDir::new(&cached).read_eval().unwrap().expect("eval.json of the cached evaluation");
    assert_eq!(ce.n_items, at_end.n_items);
    assert!(ce.methods.iter().filter_map(|m| m.decode.as_ref()).all(|d| d.cache.as_deref() == Some("prefix")), "{:?}", ce.methods);
    assert!(at_end.methods.iter().filter_map(|m| m.decode.as_ref()).all(|d| d.cache.as_deref() == Some("none")));
}

#[test]
fn tiny_ar_run_trains_and_evaluates_both_methods() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let sets = ["objective={kind=\"autoregressive\"}", "train.max_steps=2", "eval.methods=[\"generate\", \"likelihood\"]", "eval.limit=4", "eval.mc_samples=2"];
    let mut args = vec!["train", "--config", "configs/tiny-random.toml"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let out_s = out.display().to_string();
    args.extend(["--out", &out_s]);
    let (code, stdout, err) = harness(&args);
    assert_eq!(code, 0, "{err}");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["objective"], serde_json::json!({"kind": "autoregressive"}), "the tagged objective, no diffusion fields");
    let eval: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(eval["objective"], "autoregressive");
    let methods: Vec<&str> = eval["methods"].as_array().unwrap().iter().map(|m| m["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["generate", "likelihood"], "{stdout}");
    assert!(out.join("DONE").is_file());
    // AR: no t buckets; its dev NLL is exact and written as for diffusion.
    assert!(!out.join("t_buckets.csv").exists());
    let s = harness::schema::RunDir::new(&out).read_summary().unwrap().unwrap();
    assert!(s.train.dev_nll.is_some_and(|x| x.is_finite() && x > 0.0), "{:?}", s.train.dev_nll);
    // For AR the training objective is the exact NLL per response token: the two agree.
    let (loss, nll) = (s.train.dev_loss.unwrap(), s.train.dev_nll.unwrap());
    assert!((loss - nll).abs() < 1e-5 * loss.max(1.0), "AR dev_loss {loss} vs dev_nll {nll}");
}

#[test]
fn every_study_expands() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("studies")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let (code, stdout, err) = harness(&["study", &name, "--dry-run"]);
        assert_eq!(code, 0, "study {name}: {err}");
        assert!(stdout.contains(&format!("study {name}")), "{stdout}");
        n += 1;
    }
    assert!(n >= 7, "{n} studies");
    // A study over both objectives: the diffusion-only settings reach the ddm runs only.
    let s = harness::study::load(&root().join("studies/baseline.toml"), &[]).unwrap();
    let ddm: Vec<_> = s.points.iter().filter(|p| p.config.objective.kind() == harness::config::ObjectiveKind::Diffusion).collect();
    let ar: Vec<_> = s.points.iter().filter(|p| p.id.starts_with("ar-")).collect();
    assert!(!ddm.is_empty() && !ar.is_empty());
    for p in &ddm {
        assert!(p.id.starts_with("ddm-"), "{}", p.id);
        assert_eq!(p.config.objective.diffusion().map(|d| d.anneal_steps), Some(50), "{}", p.id);
        assert_eq!(p.config.eval.threshold_sweep, vec![0.9, 0.5], "{}", p.id);
        // The letter variant's own by_objective, laid over the study's: no padding scored there.
        let letter = p.variant.as_deref() == Some("letter");
        assert_eq!(p.config.objective.diffusion().map(|d| d.score_padding), Some(!letter), "{}", p.id);
    }
    // Every campaign study reads the shared recipe (base_config, relative to the study file).
    for name in ["baseline", "anneal", "shift", "lora_rank", "t_sampling", "sft_variants", "letter_pad"] {
        let s = harness::study::load(&root().join(format!("studies/{name}.toml")), &[]).unwrap();
        for p in &s.points {
            let c = &p.config;
            assert_eq!((c.train.max_steps, c.train.micro_batch, c.eval.batch_size, c.data.n_test), (Some(600), 16, 64, 1000), "{name} {}", p.id);
            assert_eq!(s.file.seeds.as_deref(), Some(&[0u64, 1, 2][..]), "{name}");
        }
    }
    for p in &ar {
        assert_eq!(p.config.objective, harness::config::ObjectiveConfig::Autoregressive, "{}", p.id);
        assert!(p.config.eval.steps_sweep.is_empty() && p.config.eval.threshold_sweep.is_empty(), "{}", p.id);
    }
    // ddm and AR runs still pair (the per-objective settings are not point overrides).
    assert!(ddm.iter().all(|d| ar.iter().any(|a| harness::study::spec::pair_key(a) == harness::study::spec::pair_key(d))));
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

/// `harness eval` of a random tiny AR model on `spec` into `out`, with extra `--set`s.
fn eval_tiny(spec: &str, out: &std::path::Path, sets: &[&str]) -> (i32, String, String) {
    let out = out.display().to_string();
    let mut args = vec!["eval", "--base", "random", "--dataset", spec, "--method", "likelihood", "--objective", "ar", "--out", &out];
    for s in ["model.tokenizer=tests/fixtures/smollm2-tokenizer.gguf", "model.arch={vocab_size=49152,hidden_size=32,intermediate_size=64,num_hidden_layers=1,num_attention_heads=4,num_key_value_heads=2,max_position_embeddings=512,tie_word_embeddings=true}"].iter().chain(sets) {
        args.extend(["--set", s]);
    }
    harness(&args)
}

/// An MCQ row in MedQA form whose question has `words` words.
fn mcq_row(id: &str, words: usize) -> String {
    let q = vec!["word"; words].join(" ");
    format!(r#"{{"id": "{id}", "question": "Which one? {q}", "options": {{"A": "alpha", "B": "beta", "C": "gamma", "D": "delta"}}, "answer_idx": "B"}}"#)
}

#[test]
fn eval_of_one_mcq_file_with_data_overrides_and_overlong_items() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [mcq_row("s1", 3), mcq_row("long1", 300), mcq_row("s2", 5), mcq_row("long2", 250), mcq_row("s3", 2)];
    let file = write(dir.path(), "medqa.jsonl", &rows.join("\n"));
    // `mcq:FILE` (the README's form): the whole file is the test split.
    let out = dir.path().join("ev");
    let (code, stdout, err) = eval_tiny(&format!("mcq:{file}"), &out, &[]);
    assert_eq!(code, 0, "{err}");
    let e = harness::schema::RunDir::new(&out).read_eval().unwrap().expect("eval.json");
    assert_eq!((e.split.as_str(), e.n_items, e.n_overlong), ("test", 5, 0), "{stdout}");
    // `--set data.max_len` applies on top of the spec: the two long questions no longer fit and
    // are skipped (the default for evaluation), counted in eval.json and named on stderr.
    let out = dir.path().join("short");
    let (code, stdout, err) = eval_tiny(&format!("mcq:{file}"), &out, &["data.max_len=128"]);
    assert_eq!(code, 0, "{err}");
    let e = harness::schema::RunDir::new(&out).read_eval().unwrap().expect("eval.json");
    assert_eq!((e.n_items, e.n_overlong), (3, 2));
    assert!(err.contains("2 test item(s) exceed") && err.contains("skipped") && err.contains("long1, long2") && err.contains("max_len = 128"), "{err}");
    assert!(stdout.contains("2 over-long items skipped"), "{stdout}");
    let raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(raw["n_overlong"], 2, "the count is in eval.json");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!((cfg["data"]["max_len"].as_u64(), cfg["data"]["file_split"].as_str()), (Some(128), Some("test")));
    let preds = harness::schema::RunDir::new(&out).read_predictions().unwrap();
    assert_eq!(preds.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["s1", "s2", "s3"]);
    // on_overlong = error: an error naming the file, how many and which; no folder is left.
    let out = dir.path().join("strict");
    let (code, _, err) = eval_tiny(&format!("mcq:{file}"), &out, &["data.max_len=128", "data.on_overlong=\"error\""]);
    assert_ne!(code, 0);
    assert!(err.contains(&file) && err.contains("2 test item(s)") && err.contains("long1, long2"), "{err}");
    assert!(!out.exists(), "a failed evaluation leaves no folder");
    // A bad data override is an error naming the key, never ignored.
    let (code, _, err) = eval_tiny(&format!("mcq:{file}"), &dir.path().join("bad"), &["data.max_len=4"]);
    assert_ne!(code, 0);
    assert!(err.contains("data.max_len"), "{err}");
    // `--set` with `--run` is refused except for eval.* keys (the run folder's training and data
    // config is used as written).
    let (code, _, err) = harness(&["eval", "--run", &dir.path().display().to_string(), "--set", "data.max_len=128"]);
    assert_ne!(code, 0);
    assert!(err.contains("--set") && err.contains("--run"), "{err}");
}

#[test]
fn data_errors_name_the_file_and_leave_no_folder() {
    let dir = tempfile::tempdir().unwrap();
    // A row over the raw bound is refused before tokenizing, naming file and line.
    let big = mcq_row("huge", harness::data::MAX_ROW_BYTES / 5 + 1);
    let file = write(dir.path(), "big.jsonl", &format!("{}\n{big}\n", mcq_row("s1", 3)));
    let out = dir.path().join("ev");
    let (code, _, err) = eval_tiny(&format!("mcq:{file}"), &out, &[]);
    assert_ne!(code, 0);
    assert!(err.contains(&file) && err.contains("line 2") && err.contains("bytes"), "{err}");
    assert!(err.len() < 4000, "the row is not echoed");
    assert!(!out.exists());
    // An empty file names the file, in evaluation and in training.
    let empty = write(dir.path(), "empty.jsonl", "");
    let (code, _, err) = eval_tiny(&format!("mcq:{empty}"), &out, &[]);
    assert_ne!(code, 0);
    assert!(err.contains(&empty) && err.contains("no items"), "{err}");
    assert!(!out.exists());
    let run = dir.path().join("run");
    let run_s = run.display().to_string();
    let path_set = format!("data.path=\"{empty}\"");
    let (code, _, err) = harness(&["train", "--config", "configs/tiny-random.toml", "--set", "data.dataset=\"mcq\"", "--set", &path_set, "--out", &run_s]);
    assert_ne!(code, 0);
    assert!(err.contains(&empty), "{err}");
    assert!(!run.exists(), "a run that fails before training leaves no folder");
    // Training: over-long items are an error by default, listing how many and which.
    let rows: Vec<String> = (0..6).map(|i| mcq_row(&format!("q{i}"), if i % 3 == 0 { 300 } else { 3 })).collect();
    let file = write(dir.path(), "train.jsonl", &rows.join("\n"));
    let path_set = format!("data.path=\"{file}\"");
    let args = ["train", "--config", "configs/tiny-random.toml", "--set", "data.dataset=\"mcq\"", "--set", &path_set, "--set", "data.dev_fraction=0.0", "--set", "data.max_len=128", "--out", &run_s];
    let (code, _, err) = harness(&args);
    assert_ne!(code, 0);
    assert!(err.contains(&file) && err.contains("2 train item(s)") && err.contains("q0, q3"), "{err}");
    assert!(!run.exists());
    // A file given as the test split leaves training nothing: named, no folder.
    let (code, _, err) = harness(&["train", "--config", "configs/tiny-random.toml", "--set", "data.dataset=\"mcq\"", "--set", &path_set, "--set", "data.file_split=\"test\"", "--out", &run_s]);
    assert_ne!(code, 0);
    assert!(err.contains(&file) && err.contains("training split is empty"), "{err}");
    assert!(!run.exists());
    // A bad model path leaves no folder either.
    let garbage = write(dir.path(), "garbage.gguf", "not a gguf file");
    let model_set = format!("model.source=\"{garbage}\"");
    let (code, _, err) = harness(&["train", "--config", "configs/tiny-random.toml", "--set", &model_set, "--out", &run_s]);
    assert_ne!(code, 0);
    assert!(err.contains("garbage.gguf"), "{err}");
    assert!(!run.exists());
}

#[test]
fn data_parallel_training_on_cpu_is_one_clear_error_and_leaves_no_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dp");
    // --nproc starts two ranks; each finds it is on the CPU, which has no NCCL
    let (code, _, err) = harness(&["train", "--config", "configs/tiny-random.toml", "--nproc", "2", "--out", &out.display().to_string()]);
    assert_ne!(code, 0);
    assert!(err.contains("needs CUDA devices and NCCL") && err.contains("failed"), "{err}");
    assert!(!out.join("config.json").exists(), "no run folder is started");
    // a rank started by another launcher without --out is refused
    let out2 = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["train", "--config", "configs/tiny-random.toml"])
        .env("RANK", "1")
        .env("WORLD_SIZE", "2")
        .current_dir(root())
        .output()
        .unwrap();
    assert_ne!(out2.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out2.stderr).contains("needs --out"));
    // a bad variable names itself
    let out3 = Command::new(env!("CARGO_BIN_EXE_harness")).args(["train", "--config", "configs/tiny-random.toml"]).env("WORLD_SIZE", "two").current_dir(root()).output().unwrap();
    assert!(String::from_utf8_lossy(&out3.stderr).contains("WORLD_SIZE"), "{}", String::from_utf8_lossy(&out3.stderr));
}
