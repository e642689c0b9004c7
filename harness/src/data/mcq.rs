//! Multiple-choice questions from JSONL (or a JSON array), one question per row, in either form
//! (detected per row):
//!
//! - MedQA: `question`, `options` (object label → text, e.g. `{"A": "...", "B": "..."}`),
//!   `answer_idx` (the correct label); optional `id`, `explanation`.
//! - MedMCQA: `question`, `opa`, `opb`, ... (consecutive, up to `opj`), `cop` (1-based integer
//!   or a letter); optional `id`, `exp`.
//!
//! 2 to 10 options, each non-empty. An optional `explanation` or `exp` becomes the rationale.
//! Rows without `id` get `<file stem>:<line>`. Under the response formats
//! ([`ResponseFormat`](super::ResponseFormat)) the `category` target is the gold option's text
//! and the `rationale` target the explanation then `Answer: <letter>` (`Answer: <letter>` alone
//! for a row without one).

use std::path::Path;

use serde_json::{Map, Value};

use super::item::{Item, PromptParts};
use super::rows::{self, BadRows};
use crate::error::Result;

/// Fewest options a question may have.
pub const MIN_OPTIONS: usize = 2;
/// Most options a question may have.
pub const MAX_OPTIONS: usize = 10;

const MEDMCQA_KEYS: [&str; 10] = ["opa", "opb", "opc", "opd", "ope", "opf", "opg", "oph", "opi", "opj"];
const LETTERS: [&str; 10] = ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J"];

/// Loads every row of `path`. Returns the items in file order and the number of malformed rows
/// skipped; without `skip_bad_rows` any malformed row is an error naming the file and lines.
pub fn load_file(path: &Path, skip_bad_rows: bool) -> Result<(Vec<Item>, usize)> {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut bad = BadRows::new(path);
    let mut items = Vec::new();
    for row in rows::read_rows(path)? {
        let parsed = row.value.and_then(|v| parse_row(&v, &stem, row.num));
        match parsed {
            Ok(item) => items.push(item),
            Err(msg) => bad.push(row.loc, msg),
        }
    }
    let n_bad = bad.finish(skip_bad_rows)?;
    Ok((items, n_bad))
}

fn row_id(obj: &Map<String, Value>, stem: &str, num: usize) -> String {
    match obj.get("id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => format!("{stem}:{num}"),
    }
}

/// Parses one row in MedQA or MedMCQA form.
fn parse_row(v: &Value, stem: &str, num: usize) -> std::result::Result<Item, String> {
    let Value::Object(obj) = v else {
        return Err(format!("expected an object, got {}", rows::type_name(v)));
    };
    let question = rows::str_field(obj, "question")?;
    let (options, gold) = if obj.contains_key("options") {
        medqa_options(obj)?
    } else if obj.contains_key("opa") {
        medmcqa_options(obj)?
    } else {
        return Err("neither `options` (MedQA form) nor `opa`... (MedMCQA form) present".to_string());
    };
    let rationale = match rows::opt_str_field(obj, "explanation")? {
        Some(r) => Some(r),
        None => rows::opt_str_field(obj, "exp")?,
    };
    Ok(Item {
        id: row_id(obj, stem, num),
        choices: options.iter().map(|(l, _)| l.clone()).collect(),
        parts: PromptParts { instruction: None, contexts: Vec::new(), question, options },
        gold: Some(gold),
        response: None,
        rationale,
    })
}

fn check_count(n: usize) -> std::result::Result<(), String> {
    if (MIN_OPTIONS..=MAX_OPTIONS).contains(&n) {
        Ok(())
    } else {
        Err(format!("{n} option(s); between {MIN_OPTIONS} and {MAX_OPTIONS} are required"))
    }
}

type Options = (Vec<(String, String)>, usize);

fn medqa_options(obj: &Map<String, Value>) -> std::result::Result<Options, String> {
    let Some(Value::Object(opts)) = obj.get("options") else {
        return Err("field `options` must be an object label -> text".to_string());
    };
    check_count(opts.len())?;
    let mut options = Vec::with_capacity(opts.len());
    for (label, text) in opts {
        let label = label.trim();
        if label.is_empty() {
            return Err("an option has an empty label".to_string());
        }
        match text.as_str().map(str::trim) {
            Some(t) if !t.is_empty() => options.push((label.to_string(), t.to_string())),
            Some(_) => return Err(format!("option {label} is empty")),
            None => return Err(format!("option {label} must be a string")),
        }
    }
    options.sort_by(|a, b| a.0.cmp(&b.0));
    let answer = rows::str_field(obj, "answer_idx")?;
    let gold = options
        .iter()
        .position(|(l, _)| l.eq_ignore_ascii_case(&answer))
        .ok_or_else(|| format!("answer_idx `{answer}` is not among the options"))?;
    Ok((options, gold))
}

fn medmcqa_options(obj: &Map<String, Value>) -> std::result::Result<Options, String> {
    let mut options = Vec::new();
    for (i, key) in MEDMCQA_KEYS.iter().enumerate() {
        match obj.get(*key) {
            None | Some(Value::Null) => break,
            Some(Value::String(s)) if s.trim().is_empty() => return Err(format!("option `{key}` is empty")),
            Some(Value::String(s)) => options.push((LETTERS[i].to_string(), s.trim().to_string())),
            Some(other) => return Err(format!("option `{key}` must be a string, got {}", rows::type_name(other))),
        }
    }
    if let Some(extra) = MEDMCQA_KEYS
        .iter()
        .skip(options.len() + 1)
        .find(|k| obj.get(**k).is_some_and(|v| !v.is_null()))
    {
        return Err(format!("option `{extra}` present after a missing one"));
    }
    check_count(options.len())?;
    let gold = match obj.get("cop") {
        None | Some(Value::Null) => return Err("missing field `cop`".to_string()),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(k) if k >= 1 && (k as usize) <= options.len() => (k - 1) as usize,
            _ => return Err(format!("cop {n} is not among the options (1-based, 1..={})", options.len())),
        },
        Some(Value::String(s)) => {
            let s = s.trim();
            let by_letter = options.iter().position(|(l, _)| l.eq_ignore_ascii_case(s));
            let by_number = s.parse::<usize>().ok().filter(|k| *k >= 1 && *k <= options.len()).map(|k| k - 1);
            by_letter.or(by_number).ok_or_else(|| format!("cop `{s}` is not among the options"))?
        }
        Some(other) => return Err(format!("cop must be an integer or a letter, got {}", rows::type_name(other))),
    };
    Ok((options, gold))
}
