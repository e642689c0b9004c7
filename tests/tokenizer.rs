//! Tokenizer tests: the GGUF-built SmolLM2 tokenizer against ids pinned by llama.cpp, the
//! tokenizer.json round trip, the mask-token rules and malformed inputs.
//!
//! The fixture `tests/fixtures/smollm2-tokenizer.gguf` holds every KV metadata entry of
//! `SmolLM2-135M-Instruct.Q4_1.gguf` and no tensors; it was written by
//! `tests/scripts/make_tokenizer_fixture.py` (gguf 0.19.0).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use harness::model::tokenizer::{MaskToken, Tok};
use harness::Error;

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/smollm2-tokenizer.gguf")
}

fn fixture_content() -> gguf_file::Content {
    let path = fixture_path();
    let mut f = std::fs::File::open(&path).expect("open fixture");
    gguf_file::Content::read(&mut f).expect("read fixture")
}

fn smollm2() -> Tok {
    Tok::from_gguf_path(&fixture_path(), &MaskToken::Auto).expect("build tokenizer from fixture")
}

/// Ids pinned by `tests/scripts/pin_tokenizer_ids.py` with llama-cpp-python 0.3.36 (llama.cpp
/// tokenizer, `Llama(vocab_only=True)`, `tokenize(add_bos=False, special=True)`), which gave the
/// same ids for the full model `SmolLM2-135M-Instruct.Q4_1.gguf` and for the fixture.
/// `special=True` parses control-token text such as `<|im_start|>` into its id, which is what
/// `Tok::encode` does (the `tokenizers` crate always matches added special tokens).
#[rustfmt::skip]
const PINNED: &[(&str, &[u32])] = &[
    ("The quick brown fox jumps over the lazy dog.", &[504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30]),
    ("Patient has eGFR 38 mL/min/1.73m\u{b2} and HbA1c 6.4%; BP 142/91 mmHg, K+ 5.1 mmol/L.", &[37654, 553, 297, 55, 13422, 216, 35, 40, 29957, 31, 1659, 31, 33, 30, 39, 35, 93, 19133, 284, 47987, 49, 33, 83, 216, 38, 30, 36, 38370, 21629, 216, 33, 36, 34, 31, 41, 33, 7610, 39187, 28, 659, 27, 216, 37, 30, 33, 7610, 308, 31, 60, 30]),
    ("  leading and trailing spaces  ", &[216, 2899, 284, 35079, 5600, 256]),
    ("line one\nline two\n\n\tindented\r\nwindows   gaps", &[1311, 582, 198, 1311, 827, 1116, 197, 526, 6574, 201, 198, 37066, 256, 10134]),
    ("Caf\u{e9} na\u{ef}ve r\u{e9}sum\u{e9} \u{2014} \u{65e5}\u{672c}\u{8a9e} \u{1f600} \u{0395}\u{03bb}\u{03bb}\u{03b7}\u{03bd}\u{03b9}\u{03ba}\u{03ac} \u{2211}x\u{b2} \u{2264} 10\u{207b}\u{b3}", &[51, 1939, 2756, 15486, 46494, 412, 2756, 5422, 2756, 1841, 17097, 241, 115, 40993, 179, 120, 248, 40303, 218, 5664, 239, 17162, 17162, 25723, 11517, 12001, 21118, 26112, 19995, 235, 104, 19133, 38599, 216, 33, 32, 32571, 136, 39050]),
    ("<|im_start|>user\nHi<|im_end|>", &[1, 4093, 198, 26843, 2]),
    ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 12+30?<|im_end|>\n<|im_start|>assistant\n", &[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 216, 33, 34, 27, 35, 32, 47, 2, 198, 1, 520, 9531, 198]),
    ("Don't stop; it's 2024-11-28, isn't it? I'LL SEE you'RE 100% sure!!", &[8084, 982, 2853, 43, 357, 506, 216, 34, 32, 34, 36, 29, 33, 33, 29, 34, 40, 28, 3247, 982, 357, 47, 339, 23, 16421, 334, 8405, 346, 23, 3256, 216, 33, 32, 32, 21, 2090, 10095]),
    ("", &[]),
    (" ", &[216]),
    ("\n\n", &[1116]),
    ("fn main() { let x = vec![1, 2, 3]; }", &[7853, 1085, 1000, 1662, 1303, 1792, 446, 37024, 21653, 33, 28, 216, 34, 28, 216, 35, 26695, 4029]),
];

#[test]
fn gguf_tokenizer_matches_llama_cpp_pinned_ids() {
    let tok = smollm2();
    for (text, want) in PINNED {
        let got = tok.encode(text).unwrap();
        assert_eq!(&got[..], *want, "ids for {text:?}");
    }
}

#[test]
fn decode_round_trips() {
    let tok = smollm2();
    for (text, want) in PINNED {
        assert_eq!(
            tok.decode(want, false).unwrap(),
            *text,
            "decode of {text:?}"
        );
    }
    // skip_special drops control tokens only.
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>").unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nHi");
    // Out-of-range ids are an error, not silently dropped.
    let n = tok.vocab_size() as u32;
    assert!(matches!(tok.decode(&[n], false), Err(Error::Tokenizer(_))));
    // generated ids past the tokenizer (a padded embedding's rows) decode to nothing
    let kept = tok.decode(&[ids[1], ids[2]], true).unwrap();
    assert!(!kept.is_empty());
    assert_eq!(tok.decode_generated(&[ids[1], n, ids[2], n + 7], true).unwrap(), kept);
}

#[test]
fn special_ids_and_vocab() {
    let tok = smollm2();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.eos_id, 2);
    assert_eq!(tok.pad_id, 2);
    assert_eq!(tok.bos_id, Some(1));
    assert_eq!(tok.id_to_token(0).as_deref(), Some("<|endoftext|>"));
    assert_eq!(tok.id_to_token(1).as_deref(), Some("<|im_start|>"));
    assert_eq!(tok.id_to_token(2).as_deref(), Some("<|im_end|>"));
    assert_eq!(tok.token_id("Ġthe"), Some(260));
    assert_eq!(tok.token_id("no such token"), None);
    assert_eq!(tok.id_to_token(49152), None);
    assert_eq!(tok.control_ids(), &(0..17).collect::<Vec<u32>>()[..]);
    assert!(tok.is_control(16) && !tok.is_control(17));
    // encode never adds bos/eos on its own.
    assert_eq!(tok.encode("Hi").unwrap(), vec![26843]);
}

#[test]
fn auto_mask_is_empty_output() {
    let tok = smollm2();
    assert_eq!(tok.mask_id, 16);
    assert_eq!(tok.mask_token(), "<empty_output>");
    for (text, _) in PINNED {
        assert!(
            !tok.encode(text).unwrap().contains(&tok.mask_id),
            "{text:?} encodes to the mask id"
        );
        assert!(!tok.contains_mask_literal(text));
    }
    // Only the literal text produces it, and contains_mask_literal catches that.
    let bad = "see <empty_output> here";
    assert!(tok.contains_mask_literal(bad));
    assert!(tok.encode(bad).unwrap().contains(&16));
    // Near-misses are ordinary text.
    for near in [
        "<empty_output",
        "empty_output>",
        "< empty_output>",
        "<Empty_output>",
    ] {
        assert!(!tok.encode(near).unwrap().contains(&16), "{near:?}");
    }
}

#[test]
fn no_merge_builds_a_control_token() {
    // Why BPE on ordinary text cannot yield a control id: no merge rule produces the text of
    // a control token, so they are reachable only as whole added tokens.
    let content = fixture_content();
    let tokens = match &content.metadata["tokenizer.ggml.tokens"] {
        Value::Array(a) => a
            .iter()
            .map(|v| v.to_string().unwrap().clone())
            .collect::<Vec<_>>(),
        _ => panic!("tokens"),
    };
    let controls: Vec<&str> = tokens[..17].iter().map(String::as_str).collect();
    let Value::Array(merges) = &content.metadata["tokenizer.ggml.merges"] else {
        panic!("merges")
    };
    for m in merges {
        let m = m.to_string().unwrap();
        let joined = m.replacen(' ', "", 1);
        assert!(
            !controls.contains(&joined.as_str()),
            "merge {m:?} builds a control token"
        );
    }
}

#[test]
fn mask_token_explicit_choices() {
    let content = fixture_content();
    let path = fixture_path();
    let by_id = Tok::from_gguf(&content, &path, &MaskToken::Id(3)).unwrap();
    assert_eq!(by_id.mask_id, 3);
    assert_eq!(by_id.mask_token(), "<repo_name>");
    let by_text = Tok::from_gguf(&content, &path, &MaskToken::Token("<filename>".into())).unwrap();
    assert_eq!(by_text.mask_id, 6);

    let err = Tok::from_gguf(&content, &path, &MaskToken::Id(49152)).unwrap_err();
    assert!(err.to_string().contains("49152"), "{err}");
    let err = Tok::from_gguf(&content, &path, &MaskToken::Token("<|mask|>".into())).unwrap_err();
    assert!(err.to_string().contains("<|mask|>"), "{err}");
}

#[test]
fn mask_token_serde_and_parse() {
    #[derive(serde::Deserialize, serde::Serialize, Debug)]
    struct M {
        mask_token: MaskToken,
    }
    let parse = |s: &str| toml::from_str::<M>(s).map(|m| m.mask_token);
    assert_eq!(parse("mask_token = 16").unwrap(), MaskToken::Id(16));
    assert_eq!(parse("mask_token = \"auto\"").unwrap(), MaskToken::Auto);
    assert_eq!(
        parse("mask_token = \"<empty_output>\"").unwrap(),
        MaskToken::Token("<empty_output>".into())
    );
    assert!(parse("mask_token = -1").is_err());
    assert!(parse("mask_token = 1.5").is_err());
    let back = toml::to_string(&M {
        mask_token: MaskToken::Id(7),
    })
    .unwrap();
    assert_eq!(back.trim(), "mask_token = 7");
    assert_eq!("auto".parse::<MaskToken>().unwrap(), MaskToken::Auto);
    assert_eq!("42".parse::<MaskToken>().unwrap(), MaskToken::Id(42));
    assert_eq!(
        "<x>".parse::<MaskToken>().unwrap(),
        MaskToken::Token("<x>".into())
    );
    assert_eq!(MaskToken::default(), MaskToken::Auto);
}

#[test]
fn tokenizer_json_round_trip() {
    let tok = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let json = tok.save(dir.path()).unwrap();
    let reloaded = Tok::from_file(&json, &MaskToken::Auto).unwrap();
    for (text, want) in PINNED {
        assert_eq!(
            &reloaded.encode(text).unwrap()[..],
            *want,
            "reloaded ids for {text:?}"
        );
        assert_eq!(reloaded.decode(want, false).unwrap(), *text);
    }
    assert_eq!(reloaded.vocab_size(), 49152);
    assert_eq!(
        (reloaded.eos_id, reloaded.pad_id, reloaded.bos_id),
        (2, 2, Some(1))
    );
    assert_eq!(reloaded.control_ids(), tok.control_ids());
    // No chat template in a tokenizer.json; the rule still lands on the same token.
    assert_eq!(reloaded.mask_id, 16);

    // Plain tokenizer.json (inner Tokenizer::save), no tokenizer_config.json: eos falls back to
    // <|endoftext|>, bos is unknown, ids are the same.
    let plain = tempfile::tempdir().unwrap();
    let plain_json = plain.path().join("tokenizer.json");
    tok.inner().save(&plain_json, false).unwrap();
    let bare = Tok::from_file(&plain_json, &MaskToken::Id(5)).unwrap();
    assert_eq!(
        (bare.eos_id, bare.pad_id, bare.bos_id, bare.mask_id),
        (0, 0, None, 5)
    );
    assert_eq!(bare.encode(PINNED[1].0).unwrap(), PINNED[1].1);

    // Missing file: an error naming it.
    let missing = plain.path().join("nope.json");
    let err = Tok::from_file(&missing, &MaskToken::Auto).unwrap_err();
    assert!(err.to_string().contains("nope.json"), "{err}");
}

/// A copy of the fixture's metadata with `edit` applied.
fn edited(edit: impl FnOnce(&mut HashMap<String, Value>)) -> gguf_file::Content {
    let mut c = fixture_content();
    edit(&mut c.metadata);
    c
}

fn err_of(c: &gguf_file::Content, mask: &MaskToken) -> String {
    Tok::from_gguf(c, Path::new("bad.gguf"), mask)
        .unwrap_err()
        .to_string()
}

#[test]
fn gguf_without_tokenizer_metadata_names_the_missing_key() {
    // A real GGUF file on disk with only architecture metadata and no tensors.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-tokenizer.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let arch = Value::String("llama".into());
    gguf_file::write(&mut f, &[("general.architecture", &arch)], &[]).unwrap();
    drop(f);
    let err = Tok::from_gguf_path(&path, &MaskToken::Auto).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer.ggml.model") && msg.contains("no-tokenizer.gguf"),
        "{msg}"
    );

    for key in [
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.eos_token_id",
    ] {
        let c = edited(|m| {
            m.remove(key);
        });
        let msg = err_of(&c, &MaskToken::Auto);
        assert!(msg.contains(key) && msg.contains("missing"), "{key}: {msg}");
    }
}

#[test]
fn malformed_gguf_metadata_is_an_error() {
    let c = edited(|m| {
        m.insert("tokenizer.ggml.pre".into(), Value::String("qwen2".into()));
    });
    let msg = err_of(&c, &MaskToken::Auto);
    assert!(msg.contains("qwen2") && msg.contains("smollm"), "{msg}");

    let c = edited(|m| {
        m.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    });
    assert!(err_of(&c, &MaskToken::Auto).contains("tokenizer.ggml.model"));

    let c = edited(|m| {
        m.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(49152));
    });
    assert!(err_of(&c, &MaskToken::Auto).contains("out of range"));

    let c = edited(|m| {
        m.insert("tokenizer.ggml.tokens".into(), Value::U32(3));
    });
    assert!(err_of(&c, &MaskToken::Auto).contains("should be an array"));

    let c = edited(|m| {
        if let Some(Value::Array(t)) = m.get_mut("tokenizer.ggml.token_type") {
            t.pop();
        }
    });
    assert!(err_of(&c, &MaskToken::Auto).contains("token_type"));

    let c = edited(|m| {
        m.insert(
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![Value::String("nospace".into())]),
        );
    });
    assert!(err_of(&c, &MaskToken::Auto).contains("merges[0]"));
}

#[test]
fn auto_mask_without_spare_control_token_is_an_error() {
    // Only <|endoftext|>, <|im_start|>, <|im_end|> stay control tokens.
    let c = edited(|m| {
        if let Some(Value::Array(t)) = m.get_mut("tokenizer.ggml.token_type") {
            for v in t.iter_mut().skip(3) {
                *v = Value::I32(1);
            }
        }
    });
    let msg = err_of(&c, &MaskToken::Auto);
    assert!(msg.contains("model.mask_token"), "{msg}");
    // An explicit choice still works.
    let tok = Tok::from_gguf(&c, Path::new("x.gguf"), &MaskToken::Id(16)).unwrap();
    assert_eq!(tok.mask_id, 16);
}

#[test]
fn full_model_matches_fixture_when_present() {
    // The 98 MB model is git-ignored; CI has only the fixture. Locally, check they agree.
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !model.is_file() {
        eprintln!("skipping: {} not present", model.display());
        return;
    }
    let full = Tok::from_gguf_path(&model, &MaskToken::Auto).unwrap();
    let fix = smollm2();
    assert_eq!(
        (full.eos_id, full.pad_id, full.bos_id, full.mask_id),
        (fix.eos_id, fix.pad_id, fix.bos_id, fix.mask_id)
    );
    for (text, want) in PINNED {
        assert_eq!(
            &full.encode(text).unwrap()[..],
            *want,
            "full-model ids for {text:?}"
        );
    }
}
