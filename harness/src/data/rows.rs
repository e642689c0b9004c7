//! Shared plumbing of the file loaders: reading JSON-array or JSONL rows, collecting malformed
//! rows, and the seeded draws used for splitting and limiting.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::error::{Error, Result};

/// How many offending rows an error message lists.
pub(crate) const SHOWN_BAD_ROWS: usize = 5;

/// Most bytes one row may hold (1 MiB): a JSONL line, or the text of a JSON-array entry. A
/// longer row is malformed (named by file and line or entry) and never reaches the tokenizer;
/// real questions are a few KiB.
pub const MAX_ROW_BYTES: usize = 1 << 20;

/// The message of a row over [`MAX_ROW_BYTES`].
pub(crate) fn oversized(bytes: usize) -> String {
    format!("row is {bytes} bytes, over the bound of {MAX_ROW_BYTES} bytes per row (checked before tokenizing)")
}

/// Bytes of text in a JSON value: string lengths (keys included) and a byte per other leaf.
pub(crate) fn text_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(text_bytes).sum(),
        Value::Object(o) => o.iter().map(|(k, v)| k.len() + text_bytes(v)).sum(),
        _ => 1,
    }
}

/// One row of a data file with where it came from.
pub(crate) struct Row {
    /// Human-readable location: `line 7` (JSONL) or `entry 3` (JSON array, 1-based).
    pub loc: String,
    /// 1-based line or entry number.
    pub num: usize,
    /// The parsed row, or why it did not parse.
    pub value: std::result::Result<Value, String>,
}

/// Reads `path` as a JSON array of objects (first non-blank character `[`) or as JSONL (one
/// object per non-blank line). Unparseable JSONL lines come back as `Err` rows so the caller
/// can skip or report them, as do rows over [`MAX_ROW_BYTES`]; an unparseable JSON array is an
/// error of the whole file.
pub(crate) fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    if text.trim_start().starts_with('[') {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::data(path, format!("not valid JSON: {e}")))?;
        let Value::Array(rows) = v else {
            return Err(Error::data(path, "expected a JSON array of objects"));
        };
        return Ok(rows
            .into_iter()
            .enumerate()
            .map(|(i, value)| {
                let n = text_bytes(&value);
                let value = if n > MAX_ROW_BYTES { Err(oversized(n)) } else { Ok(value) };
                Row { loc: format!("entry {}", i + 1), num: i + 1, value }
            })
            .collect());
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| Row {
            loc: format!("line {}", i + 1),
            num: i + 1,
            value: if l.len() > MAX_ROW_BYTES {
                Err(oversized(l.len()))
            } else {
                serde_json::from_str::<Value>(l).map_err(|e| format!("bad JSON: {e}"))
            },
        })
        .collect())
}

/// Collects malformed rows of one file, then either fails naming the first few or, in skip
/// mode, reports how many were skipped.
pub(crate) struct BadRows {
    path: PathBuf,
    rows: Vec<(String, String)>,
}

impl BadRows {
    /// An empty collector for `path`.
    pub fn new(path: &Path) -> Self {
        BadRows { path: path.to_path_buf(), rows: Vec::new() }
    }
    /// Records that the row at `loc` (`line 7`, `id 12345`) is malformed because of `msg`.
    pub fn push(&mut self, loc: impl Into<String>, msg: impl Into<String>) {
        self.rows.push((loc.into(), msg.into()));
    }
    /// `Ok(count)` when there are none or `skip` is set; otherwise an [`Error::Data`] naming the
    /// file and the first [`SHOWN_BAD_ROWS`] offending rows.
    pub fn finish(self, skip: bool) -> Result<usize> {
        if self.rows.is_empty() || skip {
            return Ok(self.rows.len());
        }
        let n = self.rows.len();
        let shown: Vec<String> = self
            .rows
            .iter()
            .take(SHOWN_BAD_ROWS)
            .map(|(loc, msg)| format!("{loc}: {msg}"))
            .collect();
        let more = if n > SHOWN_BAD_ROWS { format!("; ... and {} more", n - SHOWN_BAD_ROWS) } else { String::new() };
        Err(Error::data(
            self.path,
            format!(
                "{n} malformed row(s): {}{more} (set data.skip_bad_rows = true to skip them)",
                shown.join("; ")
            ),
        ))
    }
}

/// A non-empty trimmed string field of a JSON object, or why not.
pub(crate) fn str_field(obj: &serde_json::Map<String, Value>, key: &str) -> std::result::Result<String, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(format!("missing field `{key}`")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(format!("field `{key}` is empty")),
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(other) => Err(format!("field `{key}` must be a string, got {}", type_name(other))),
    }
}

/// An optional string field: `None` when absent, null or blank.
pub(crate) fn opt_str_field(
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> std::result::Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(other) => Err(format!("field `{key}` must be a string, got {}", type_name(other))),
    }
}

/// The JSON type name of a value, for messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A seed for one purpose derived from the run seed (FNV-1a of the purpose, mixed by SplitMix64),
/// so that splitting, limiting and generation draw from independent streams.
pub(crate) fn sub_seed(seed: u64, purpose: &str) -> u64 {
    splitmix(seed ^ fnv1a(purpose.as_bytes()))
}

/// A generator for `purpose` under `seed`.
pub(crate) fn rng_for(seed: u64, purpose: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(sub_seed(seed, purpose))
}

/// 64-bit FNV-1a hash.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64 finaliser.
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Number of dev items carved out of `n` for `fraction` (rounded, kept below `n` when n > 0).
#[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(f > 0.0)` also rejects NaN
pub(crate) fn dev_count(n: usize, fraction: f64) -> usize {
    if n == 0 || !(fraction > 0.0) {
        return 0;
    }
    let d = (n as f64 * fraction).round() as usize;
    d.min(n - 1)
}

/// Splits `items` into (train, dev) with a seeded choice of `dev_count(n, fraction)` dev items;
/// both keep the input order.
pub(crate) fn split_dev<T>(items: Vec<T>, fraction: f64, seed: u64, purpose: &str) -> (Vec<T>, Vec<T>) {
    let n = items.len();
    let d = dev_count(n, fraction);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rng_for(seed, purpose));
    let mut is_dev = vec![false; n];
    for &i in idx.iter().take(d) {
        is_dev[i] = true;
    }
    let (mut train, mut dev) = (Vec::with_capacity(n - d), Vec::with_capacity(d));
    for (i, it) in items.into_iter().enumerate() {
        if is_dev[i] {
            dev.push(it);
        } else {
            train.push(it);
        }
    }
    (train, dev)
}

/// Keeps the first `limit` items after a seeded shuffle (no-op when `limit` is `None`).
pub(crate) fn apply_limit<T>(items: &mut Vec<T>, limit: Option<usize>, seed: u64, purpose: &str) {
    if let Some(n) = limit {
        items.shuffle(&mut rng_for(seed, purpose));
        items.truncate(n);
    }
}
