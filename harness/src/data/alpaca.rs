//! Instruction pairs in LLaMA-Factory's alpaca form: objects with `instruction`, optional
//! `input` and `output`, as a JSON array file or JSONL.
//!
//! Mapping: `instruction` → [`PromptParts::instruction`], `input` → [`PromptParts::question`]
//! (may be empty), `output` → [`Item::response`]. No choices, no gold. Optional `system` and
//! `history` fields are ignored. Rows without `id` get `<file stem>:<entry or line>`.

use std::path::Path;

use serde_json::Value;

use super::item::{Item, PromptParts};
use super::rows::{self, BadRows};
use crate::error::Result;

/// Loads every pair of `path`. Returns the items in file order and the number of malformed rows
/// skipped; without `skip_bad_rows` any malformed row (missing or empty `instruction` or
/// `output`, a non-string field, bad JSON) is an error naming the file and rows.
pub fn load_file(path: &Path, skip_bad_rows: bool) -> Result<(Vec<Item>, usize)> {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut bad = BadRows::new(path);
    let mut items = Vec::new();
    for row in rows::read_rows(path)? {
        match row.value.and_then(|v| parse_row(&v, &stem, row.num)) {
            Ok(item) => items.push(item),
            Err(msg) => bad.push(row.loc, msg),
        }
    }
    let n_bad = bad.finish(skip_bad_rows)?;
    Ok((items, n_bad))
}

fn parse_row(v: &Value, stem: &str, num: usize) -> std::result::Result<Item, String> {
    let Value::Object(obj) = v else {
        return Err(format!("expected an object, got {}", rows::type_name(v)));
    };
    let instruction = rows::str_field(obj, "instruction")?;
    let input = rows::opt_str_field(obj, "input")?.unwrap_or_default();
    let output = rows::str_field(obj, "output")?;
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => format!("{stem}:{num}"),
    };
    Ok(Item {
        id,
        parts: PromptParts { instruction: Some(instruction), contexts: Vec::new(), question: input, options: Vec::new() },
        choices: Vec::new(),
        gold: None,
        response: Some(output),
        rationale: None,
    })
}
