//! Evaluation runner: strict label parsing, and an end-to-end evaluation of a tiny model that
//! writes eval.json and predictions.jsonl whose numbers agree with each other.

use harness::data::{parse_leading_label, Item, PromptParts, ResponseFormat};
use std::path::PathBuf;

fn labels(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

#[test]
fn label_parsing_is_strict() {
    let yn = labels(&["yes", "no", "maybe"]);
    for (text, want) in [
        ("yes", Some(0)),
        ("Yes.", Some(0)),
        (" no\nbecause ...", Some(1)),
        ("MAYBE", Some(2)),
        ("yes, the data show", Some(0)),
        ("The answer is yes", None),
        ("yess", None),
        ("", None),
        ("y", None),
    ] {
        assert_eq!(parse_leading_label(text, &yn), want, "{text:?}");
    }
    let abcd = labels(&["A", "B", "C", "D"]);
    for (text, want) in [
        ("B", Some(1)),
        ("(C)", Some(2)),
        ("D. Stage 2", Some(3)),
        ("a)", Some(0)),
        ("E", None),
        ("Answer: B", None),
        ("BC", None),
        // an article followed by more words is not option A
        ("A 54-year-old man presents with", None),
        ("A", Some(0)),
        ("A.", Some(0)),
    ] {
        assert_eq!(parse_leading_label(text, &abcd), want, "{text:?}");
    }
}

#[test]
fn response_formats_parse_what_they_ask_for() {
    let opts = ["Normal blood pressure", "Elevated blood pressure", "Stage 1 hypertension", "Stage 2 hypertension"];
    let item = Item {
        id: "bp".into(),
        parts: PromptParts {
            question: "Which category?".into(),
            options: ["A", "B", "C", "D"].iter().zip(opts).map(|(l, t)| (l.to_string(), t.to_string())).collect(),
            ..Default::default()
        },
        choices: labels(&["A", "B", "C", "D"]),
        gold: Some(0),
        response: None,
        rationale: Some("SBP 112 < 120, DBP 70 < 80: Normal blood pressure.".into()),
    };
    use ResponseFormat::*;
    for (f, text, want) in [
        (Answer, "A 54-year-old man with a blood pressure of 112/70", None),
        (Answer, "A", Some(0)),
        (Rationale, "Answer: A", Some(0)),
        (Rationale, "SBP 112 < 120, DBP 70 < 80: Normal blood pressure. Answer: A", Some(0)),
        (Rationale, "A 54-year-old man", None),
        (Rationale, "Answer: A because", None),
        (Category, "Normal blood pressure", Some(0)),
        (Category, "Stage 2 hypertension.", Some(3)),
        (Category, "A", None),
        (Category, "A. Normal blood pressure", None),
        (AnswerWithRationale, "B\nbecause", Some(1)),
        (AnswerWithRationale, "A 54-year-old", None),
    ] {
        assert_eq!(f.parse(text, &item), want, "{f:?} {text:?}");
    }
    for f in ResponseFormat::ALL {
        assert_eq!(f.parse(&item.target_text(f).unwrap(), &item), Some(0), "{f:?}");
    }
}

#[test]
fn tiny_model_evaluation_writes_consistent_files() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // Both objectives read the same random model; diffusion also sweeps its decoding steps.
    for (objective, extra, labels) in [
        ("autoregressive", vec![], vec!["likelihood", "generate"]),
        ("diffusion", vec!["--set", "eval.steps_sweep=[2]", "--set", "eval.mc_samples=4"], vec!["likelihood", "generate", "generate@steps=2"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ev");
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
            .current_dir(&root)
            .args(["eval", "--base", "random", "--dataset", "clinical-rules:n_test=12", "--method", "likelihood", "--method", "generate", "--objective", objective, "--out"])
            .arg(&out)
            .args(["--set", "model.tokenizer=tests/fixtures/smollm2-tokenizer.gguf", "--set", "model.arch={vocab_size=49152,hidden_size=32,intermediate_size=64,num_hidden_layers=1,num_attention_heads=4,num_key_value_heads=2,max_position_embeddings=512,tie_word_embeddings=true}"])
            .args(&extra)
            .output()
            .unwrap();
        assert!(status.status.success(), "{objective}: {}", String::from_utf8_lossy(&status.stderr));
        let ev: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
        let preds: Vec<serde_json::Value> = std::fs::read_to_string(out.join("predictions.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(ev["n_items"], 12);
        // The same files read through the schema types (what the notebooks use).
        let typed_dir = harness::schema::RunDir::new(&out);
        let typed = typed_dir.read_eval().unwrap().expect("eval.json");
        assert_eq!(typed.n_items, 12);
        assert_eq!(typed.methods.len(), labels.len());
        assert_eq!(typed_dir.read_predictions().unwrap().len(), 12 * labels.len());
        assert_eq!(ev["objective"], objective);
        assert_eq!(preds.len(), 12 * labels.len(), "one row per item and method");
        let names: Vec<&str> = ev["methods"].as_array().unwrap().iter().map(|m| m["method"].as_str().unwrap()).collect();
        assert_eq!(names, labels, "{objective}: method labels");
        for m in ev["methods"].as_array().unwrap() {
            let name = m["method"].as_str().unwrap();
            let rows: Vec<&serde_json::Value> = preds.iter().filter(|p| p["method"] == name).collect();
            assert_eq!(rows.len(), 12, "{objective} {name}");
            let correct = rows.iter().filter(|p| p["correct"] == true).count() as u64;
            let invalid = rows.iter().filter(|p| p["predicted"].is_null()).count() as u64;
            assert_eq!(m["report"]["correct"].as_u64().unwrap(), correct, "{name}");
            assert_eq!(m["report"]["invalid"].as_u64().unwrap(), invalid, "{name}");
            let acc = m["report"]["accuracy"]["estimate"].as_f64().unwrap();
            assert!((acc - correct as f64 / 12.0).abs() < 1e-12);
            let (lo, hi) = (m["report"]["accuracy"]["lo"].as_f64().unwrap(), m["report"]["accuracy"]["hi"].as_f64().unwrap());
            assert!(lo <= acc && acc <= hi);
            assert!(m["mean_nfe"].as_f64().unwrap() >= 1.0, "{objective} {name}: every item takes a forward pass");
            if name == "likelihood" {
                assert_eq!(invalid, 0, "likelihood always picks a choice");
                assert!(rows.iter().all(|p| p["scores"].as_array().map(|s| s.len()) == Some(4)));
            }
        }
    }
    // A diffusion-only knob on an AR evaluation is an error naming it.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
        .current_dir(&root)
        .args(["eval", "--base", "random", "--dataset", "clinical-rules:n_test=12", "--objective", "ar", "--set", "eval.steps_sweep=[2]", "--out"])
        .arg(dir.path().join("ev"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("eval.steps_sweep") && err.contains("autoregressive"), "{err}");
}
