//! PubMedQA PQA-L (1000 expert-labelled yes/no/maybe questions).
//!
//! Reads a folder with the original release files: `ori_pqal.json` (an object id →
//! `{QUESTION, CONTEXTS, LONG_ANSWER, final_decision, ...}`) and `test_ground_truth.json` (an
//! object whose keys are the 500 official test ids). Splits: `test` = the official ids; the
//! other ids are divided into `train` and `dev`, dev being a seeded `dev_fraction` of them.
//! Every split is in ascending id order (numeric ids compare numerically). `LONG_ANSWER` is the
//! item's rationale: the `rationale` response format trains `<long answer> Answer: yes`,
//! `answer_with_rationale` `yes` then the long answer on the next line, and `category` (there
//! are no options) the label itself.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::item::{Item, PromptParts};
use super::rows::{self, BadRows};
use crate::error::{Error, Result};

/// The Hugging Face dataset repository tried by [`fetch_from_hub`].
pub const HUB_REPO: &str = "qiaojin/PubMedQA";
/// File name of the labelled questions.
pub const ORI_PQAL: &str = "ori_pqal.json";
/// File name of the official test split.
pub const TEST_GROUND_TRUTH: &str = "test_ground_truth.json";
/// The three labels, in choice order.
pub const CHOICES: [&str; 3] = ["yes", "no", "maybe"];

/// PubMedQA PQA-L split into train, dev and the official test set.
#[derive(Debug, Clone, PartialEq)]
pub struct PubMedQa {
    /// Non-test items not drawn for dev.
    pub train: Vec<Item>,
    /// A seeded `dev_fraction` of the non-test items.
    pub dev: Vec<Item>,
    /// The 500 official test items.
    pub test: Vec<Item>,
    /// Malformed entries skipped (only non-zero with `skip_bad_rows`).
    pub bad_rows: usize,
}

/// Sort key making numeric ids compare numerically.
fn id_key(id: &str) -> (usize, &str) {
    (id.len(), id)
}

/// Loads PQA-L from `dir` (see the module doc). Malformed entries (missing or empty question,
/// a decision other than yes/no/maybe, contexts not a list of strings) fail naming the first
/// few ids, unless `skip_bad_rows`.
pub fn load_dir(dir: &Path, dev_fraction: f64, seed: u64, skip_bad_rows: bool) -> Result<PubMedQa> {
    if !dir.is_dir() {
        return Err(Error::data(dir, format!("expected a folder holding {ORI_PQAL} and {TEST_GROUND_TRUTH}")));
    }
    load_files(&dir.join(ORI_PQAL), &dir.join(TEST_GROUND_TRUTH), dev_fraction, seed, skip_bad_rows)
}

fn read_object(path: &Path) -> Result<serde_json::Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(Error::data(path, format!("expected a JSON object keyed by id, got {}", rows::type_name(&other)))),
        Err(e) => Err(Error::data(path, format!("not valid JSON: {e}"))),
    }
}

/// Loads PQA-L from the two files directly.
pub fn load_files(ori: &Path, truth: &Path, dev_fraction: f64, seed: u64, skip_bad_rows: bool) -> Result<PubMedQa> {
    let data = read_object(ori)?;
    if data.is_empty() {
        return Err(Error::data(ori, "no entries: the file holds an empty JSON object"));
    }
    let test_ids: BTreeSet<String> = read_object(truth)?.into_iter().map(|(k, _)| k).collect();
    let missing: Vec<&String> = test_ids.iter().filter(|id| !data.contains_key(id.as_str())).collect();
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(rows::SHOWN_BAD_ROWS).map(|s| s.as_str()).collect();
        return Err(Error::data(
            truth,
            format!("{} test id(s) not found in {}: {}", missing.len(), ori.display(), shown.join(", ")),
        ));
    }
    let mut ids: Vec<&String> = data.keys().collect();
    ids.sort_by(|a, b| id_key(a).cmp(&id_key(b)));
    let mut bad = BadRows::new(ori);
    let (mut pool, mut test) = (Vec::new(), Vec::new());
    for id in ids {
        let v = &data[id.as_str()];
        // the same per-row bound as the line-oriented formats, before anything is tokenized
        let n = rows::text_bytes(v);
        if n > rows::MAX_ROW_BYTES {
            bad.push(format!("id {id}"), rows::oversized(n));
            continue;
        }
        match parse_entry(id, v) {
            Ok(item) if test_ids.contains(id) => test.push(item),
            Ok(item) => pool.push(item),
            Err(msg) => bad.push(format!("id {id}"), msg),
        }
    }
    let bad_rows = bad.finish(skip_bad_rows)?;
    let (train, dev) = rows::split_dev(pool, dev_fraction, seed, "pubmedqa/dev");
    Ok(PubMedQa { train, dev, test, bad_rows })
}

fn parse_entry(id: &str, v: &Value) -> std::result::Result<Item, String> {
    let Value::Object(obj) = v else {
        return Err(format!("expected an object, got {}", rows::type_name(v)));
    };
    let question = rows::str_field(obj, "QUESTION")?;
    let contexts = match obj.get("CONTEXTS") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|c| c.as_str().map(|s| s.trim().to_string()).ok_or_else(|| "CONTEXTS must be a list of strings".to_string()))
            .collect::<std::result::Result<Vec<_>, _>>()?,
        Some(other) => return Err(format!("CONTEXTS must be a list, got {}", rows::type_name(other))),
    };
    let decision = rows::str_field(obj, "final_decision")?.to_lowercase();
    let gold = CHOICES
        .iter()
        .position(|c| *c == decision)
        .ok_or_else(|| format!("final_decision `{decision}` is not one of yes, no, maybe"))?;
    let rationale = rows::opt_str_field(obj, "LONG_ANSWER")?;
    Ok(Item {
        id: id.to_string(),
        parts: PromptParts { instruction: None, contexts, question, options: Vec::new() },
        choices: CHOICES.iter().map(|s| s.to_string()).collect(),
        gold: Some(gold),
        response: None,
        rationale,
    })
}

/// Tries to fetch the original release files from the Hugging Face hub ([`HUB_REPO`]) into the
/// hf-hub cache and returns the folder holding both.
///
/// That repository publishes parquet shards, which the harness cannot read, so this usually
/// fails; and it needs network. Either way the error tells the user to download
/// `ori_pqal.json` and `test_ground_truth.json` (from the PubMedQA GitHub release) and pass the
/// folder as `data.path`.
pub fn fetch_from_hub() -> Result<PathBuf> {
    let advice = format!(
        "data.source = \"hub\" needs network access and the files {ORI_PQAL} and {TEST_GROUND_TRUTH} in the hub \
         repository {HUB_REPO} (which publishes parquet shards the harness cannot read); download those two files \
         from the PubMedQA release and pass their folder as data.path (e.g. pubmedqa:../shared/data/pubmedqa)"
    );
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| Error::config("data.source", format!("{advice}: hub client: {e}")))?;
    let repo = api.dataset(HUB_REPO.to_string());
    let ori = repo
        .get(ORI_PQAL)
        .map_err(|e| Error::config("data.source", format!("{advice}: fetching {ORI_PQAL}: {e}")))?;
    let truth = repo
        .get(TEST_GROUND_TRUTH)
        .map_err(|e| Error::config("data.source", format!("{advice}: fetching {TEST_GROUND_TRUTH}: {e}")))?;
    match (ori.parent(), truth.parent()) {
        (Some(a), Some(b)) if a == b => Ok(a.to_path_buf()),
        _ => Err(Error::config("data.source", format!("{advice}: hub files landed in different folders"))),
    }
}
