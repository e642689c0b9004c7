//! How the `harness` binary reports a user's error: `error: <message>` once, exit status ≠ 0, each
//! OS message once, and no backtrace even with `RUST_BACKTRACE=1` (`DDM_BACKTRACE=1` asks for one).

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Run the binary with `args` and extra environment `env`; (exit code, stderr).
fn harness(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.args(args).current_dir(root()).env_remove("DDM_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into())
}

/// A file that is not a GGUF: candle's reader rejects it with an error that carries a backtrace
/// whenever backtraces are enabled.
fn bad_gguf(dir: &std::path::Path) -> String {
    let p = dir.join("bad.gguf");
    std::fs::write(&p, b"this is not a gguf file at all, just text").unwrap();
    p.display().to_string()
}

/// Any trace of a backtrace: std's "stack backtrace:", anyhow's "Stack backtrace:", candle's frames.
fn has_backtrace(stderr: &str) -> bool {
    stderr.to_lowercase().contains("backtrace")
}

#[test]
fn an_os_error_is_printed_once() {
    let (code, err) = harness(&["train", "--config", "/nonexistent/ddm.toml"], &[]);
    assert_ne!(code, 0, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("/nonexistent/ddm.toml"), "names the file: {err}");
    let msg = std::fs::read("/nonexistent/ddm.toml").unwrap_err().to_string(); // "No such file or directory (os error 2)"
    assert!(err.contains(&msg), "{err} lacks {msg}");
    assert_eq!(err.matches(&msg).count(), 1, "OS message printed more than once: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_user_error_prints_no_backtrace_even_with_rust_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = bad_gguf(dir.path());
    let out = dir.path().join("eval").display().to_string();
    let eval = ["eval", "--base", gguf.as_str(), "--dataset", "clinical-rules:n_test=2", "--out", out.as_str()];
    for bt in ["1", "full"] {
        for args in [&eval[..], &["train", "--config", "/nonexistent/ddm.toml"][..]] {
            let (code, err) = harness(args, &[("RUST_BACKTRACE", bt)]);
            assert_ne!(code, 0, "{args:?}: {err}");
            assert!(err.starts_with("error: "), "{args:?}: {err}");
            assert!(!has_backtrace(&err), "RUST_BACKTRACE={bt} {args:?} printed a backtrace:\n{err}");
            assert_eq!(err.lines().count(), 1, "RUST_BACKTRACE={bt} {args:?}: {err}");
        }
    }
    let (_, err) = harness(&eval, &[("RUST_BACKTRACE", "1")]);
    assert!(err.contains("bad.gguf") && err.contains("GGUF"), "names the file and the problem: {err}");
    // Asked for, a backtrace is there (for internal bugs).
    let (code, err) = harness(&eval, &[("DDM_BACKTRACE", "1")]);
    assert_ne!(code, 0, "{err}");
    assert!(has_backtrace(&err), "DDM_BACKTRACE=1 printed no backtrace:\n{err}");
}

/// A config from TOML text, validated.
fn validate(text: &str) -> Result<harness::config::RawConfig, String> {
    let raw = harness::config::RawConfig::from_str_with(text, "test.toml", &[]).map_err(|e| e.to_string())?;
    raw.validate().map_err(|e| e.to_string())?;
    Ok(raw)
}

#[test]
fn annealing_past_the_budget_needs_an_eval_attention() {
    // Through the binary: one message naming both numbers and the key that lifts it.
    let (code, err) = harness(
        &["eval", "--dataset", "clinical-rules:n_test=4", "--objective", "diffusion", "--set", "train.max_steps=120", "--set", "objective.anneal_steps=300"],
        &[],
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("objective.anneal_steps = 300") && err.contains("120 optimizer steps") && err.contains("eval.attention"), "{err}");
    assert!(err.contains("40%"), "says how far annealing got: {err}");
    let base = "[train]\nmax_steps = 120\n[objective]\nanneal_steps = 300\n";
    assert!(validate(base).is_err());
    // Saying which attention lifts it; so does annealing within the budget.
    for choice in ["trained", "full", "causal"] {
        let raw = validate(&format!("{base}[eval]\nattention = \"{choice}\"\n")).unwrap();
        // The choice is recorded in the resolved config (config.json).
        let cfg = raw.resolve().unwrap();
        assert_eq!(cfg.resolved.eval_attention.map(|a| a.as_str()), Some(choice));
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["eval"]["attention"], choice);
        assert_eq!(json["resolved"]["eval_attention"], choice);
    }
    validate("[train]\nmax_steps = 120\n[objective]\nanneal_steps = 120\n").unwrap();
    // Unset means trained, recorded as such.
    let cfg = validate("[train]\nmax_steps = 10\n").unwrap().resolve().unwrap();
    assert_eq!(cfg.resolved.eval_attention, Some(harness::config::EvalAttention::Trained));
    // The step count from epochs is checked by the run itself (RawConfig::check_eval_attention).
    let raw = validate("[objective]\nanneal_steps = 300\n").unwrap();
    let e = raw.check_eval_attention(50).unwrap_err().to_string();
    assert!(e.contains("300") && e.contains("50"), "{e}");
    // Full attention is not a reading of an AR model.
    let e = validate("[objective]\nkind = \"autoregressive\"\n[eval]\nattention = \"full\"\n").unwrap_err();
    assert!(e.contains("eval.attention"), "{e}");
}

#[test]
fn diffusion_only_sweeps_and_likelihood_without_fixed_responses_are_config_errors() {
    let e = validate("[objective]\nkind = \"autoregressive\"\n[eval]\nthreshold_sweep = [0.5]\n").unwrap_err();
    assert!(e.contains("eval.threshold_sweep") && e.contains("autoregressive"), "{e}");
    validate("[eval]\nthreshold_sweep = [0.5, 0.9]\n").unwrap();
    let e = validate("[eval]\nthreshold_sweep = [1.5]\n").unwrap_err();
    assert!(e.contains("eval.threshold_sweep"), "{e}");
    for format in ["rationale", "answer_with_rationale"] {
        let e = validate(&format!("[data]\nresponse_format = \"{format}\"\n[eval]\nmethods = [\"likelihood\", \"generate\"]\n")).unwrap_err();
        assert!(e.contains("eval.methods") && e.contains("data.response_format") && e.contains(format), "{e}");
        validate(&format!("[data]\nresponse_format = \"{format}\"\n[eval]\nmethods = [\"generate\"]\n")).unwrap();
    }
    for format in ["answer", "category"] {
        validate(&format!("[data]\nresponse_format = \"{format}\"\n[eval]\nmethods = [\"likelihood\"]\n")).unwrap();
    }
}

#[test]
fn repeated_sweep_values_and_sweeps_without_generate_are_config_errors() {
    // A repeated value would write two methods with one label (and duplicate prediction rows).
    let e = validate("[eval]\nsteps_sweep = [2, 4, 2]\n").unwrap_err();
    assert!(e.contains("eval.steps_sweep") && e.contains("2 appears twice"), "{e}");
    let e = validate("[eval]\nthreshold_sweep = [0.9, 0.9]\n").unwrap_err();
    assert!(e.contains("eval.threshold_sweep") && e.contains("0.9 appears twice"), "{e}");
    // A sweep re-runs `generate`: without it in eval.methods it would be silently ignored.
    let e = validate("[eval]\nmethods = [\"likelihood\"]\nsteps_sweep = [2]\n").unwrap_err();
    assert!(e.contains("eval.steps_sweep") && e.contains("generate"), "{e}");
    let e = validate("[eval]\nmethods = [\"likelihood\"]\nthreshold_sweep = [0.5]\n").unwrap_err();
    assert!(e.contains("eval.threshold_sweep") && e.contains("generate"), "{e}");
    validate("[eval]\nmethods = [\"likelihood\", \"generate\"]\nsteps_sweep = [2, 4]\nthreshold_sweep = [0.5, 0.9]\n").unwrap();
    // the cache sweep: no repeats, not the configured cache, diffusion only, a `generate` to re-run
    let e = validate("[eval]\ncache_sweep = [\"prefix\", \"prefix\"]\n").unwrap_err();
    assert!(e.contains("eval.cache_sweep") && e.contains("appears twice"), "{e}");
    let e = validate("[eval]\ncache_sweep = [\"none\"]\n").unwrap_err();
    assert!(e.contains("eval.cache_sweep") && e.contains("eval.cache already"), "{e}");
    let e = validate("[eval]\nmethods = [\"likelihood\"]\ncache_sweep = [\"prefix\"]\n").unwrap_err();
    assert!(e.contains("eval.cache_sweep") && e.contains("generate"), "{e}");
    let e = validate("[objective]\nkind = \"autoregressive\"\n[eval]\ncache_sweep = [\"prefix\"]\n").unwrap_err();
    assert!(e.contains("eval.cache_sweep") && e.contains("autoregressive"), "{e}");
    let e = validate("[eval]\ncache_sweep = [\"warm\"]\n").unwrap_err();
    assert!(e.contains("cache_sweep"), "{e}");
    validate("[eval]\ncache_sweep = [\"prefix\"]\n").unwrap();
}

#[test]
fn train_launch_resolves_per_device_and_names_its_key_when_it_cannot_run() {
    use harness::config::resolve_launch;
    use harness::model::{AdapterConfig, AdapterKind};
    use harness::train::graph::StepLaunch::{Auto, CudaGraph, Eager};
    let lora = AdapterConfig::default();
    let dropout = AdapterConfig { dropout: 0.1, ..Default::default() };
    let full_dropout = AdapterConfig { kind: AdapterKind::Full, dropout: 0.1, ..Default::default() };
    // auto: a graph on CUDA unless LoRA dropout is on; eager on the CPU
    assert_eq!(resolve_launch(Auto, "cuda:0", &lora).unwrap(), CudaGraph);
    assert_eq!(resolve_launch(Auto, "cuda:0", &dropout).unwrap(), Eager);
    assert_eq!(resolve_launch(Auto, "cuda:0", &full_dropout).unwrap(), CudaGraph, "dropout only acts on adapters");
    assert_eq!(resolve_launch(Auto, "cpu", &lora).unwrap(), Eager);
    assert_eq!(resolve_launch(Eager, "cuda:0", &lora).unwrap(), Eager);
    // an explicit graph where it cannot run is an error naming the key
    for (dev, a) in [("cpu", &lora), ("cuda:0", &dropout)] {
        let e = resolve_launch(CudaGraph, dev, a).unwrap_err().to_string();
        assert!(e.contains("train.launch") && e.contains("cuda_graph"), "{e}");
    }
    // the TOML spelling, and the resolved choice in config.json (a CPU run: eager)
    let cfg = validate("[train]\nmax_steps = 3\nlaunch = \"auto\"\n").unwrap().resolve().unwrap();
    if cfg.resolved.device == "cpu" {
        assert_eq!(serde_json::to_value(&cfg).unwrap()["resolved"]["launch"], "eager");
        let e = validate("[train]\nmax_steps = 3\nlaunch = \"cuda_graph\"\n").unwrap().resolve().unwrap_err().to_string();
        assert!(e.contains("train.launch"), "{e}");
    }
    let e = validate("[train]\nlaunch = \"graph\"\n").unwrap_err();
    assert!(e.contains("launch") && e.contains("cuda_graph"), "an unknown spelling lists the choices: {e}");
}
