//! The common item every dataset yields, and the response format that turns it into a target.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a prompt is built from. The template decides the layout; loaders only fill the parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PromptParts {
    /// An optional task instruction shown first (alpaca `instruction`).
    pub instruction: Option<String>,
    /// Supporting passages (PubMedQA abstract sections, a clinical vignette). The only part
    /// a template may shorten to fit the length budget.
    pub contexts: Vec<String>,
    /// The question itself (alpaca `input`, which may be empty). Never truncated.
    pub question: String,
    /// Answer options as `(label, text)`, e.g. `("A", "Stage 1 hypertension")`. Never truncated.
    pub options: Vec<(String, String)>,
}

/// One example of any dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Stable identifier (PubMed id, `file:line`, generated id).
    pub id: String,
    /// What the prompt is built from.
    pub parts: PromptParts,
    /// Labels the model output is parsed into: `["yes","no","maybe"]` or `["A","B",...]`;
    /// empty for free-form pairs.
    pub choices: Vec<String>,
    /// Index of the correct label in `choices`; `None` for free-form pairs.
    pub gold: Option<usize>,
    /// Free-form target (alpaca `output`); `None` for labelled items.
    pub response: Option<String>,
    /// An explanation of the answer (PubMedQA `LONG_ANSWER`, MedMCQA `exp`, a generated one).
    pub rationale: Option<String>,
}

/// What the model is trained to produce after the prompt, and how its output is read back.
///
/// | format | target (gold `C` = "Stage 2 hypertension") | parsed by |
/// |---|---|---|
/// | `answer` (alias `letter`) | `C` | [`parse_leading_label`]: the first word is a label |
/// | `category` | `Stage 2 hypertension` (the option's text; the label where there are no options) | the whole output equals one choice's text |
/// | `answer_with_rationale` | `C`, a newline, the rationale | the first word is a label |
/// | `rationale` | the rationale, then ` Answer: C` | the output ends with `Answer: <label>` |
///
/// Parsing is strict: what does not follow the format is invalid (counted wrong).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    /// The gold label alone, e.g. `yes` or `B`.
    #[default]
    #[serde(alias = "letter")]
    Answer,
    /// The gold choice's text (a multi-token answer), e.g. `Stage 2 hypertension`; for items
    /// without options (yes/no/maybe) the label itself.
    Category,
    /// The gold label, then a newline and the rationale where the item has one.
    AnswerWithRationale,
    /// The rationale (a short derivation), then ` Answer: <label>`: the label comes last, so a
    /// model must write the derivation before committing to it. Items without a rationale give
    /// `Answer: <label>` alone.
    Rationale,
}

/// The marker before the final label of the `rationale` format.
pub const ANSWER_MARKER: &str = "Answer:";

impl ResponseFormat {
    /// The config spelling: `answer`, `category`, `answer_with_rationale` or `rationale`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ResponseFormat::Answer => "answer",
            ResponseFormat::Category => "category",
            ResponseFormat::AnswerWithRationale => "answer_with_rationale",
            ResponseFormat::Rationale => "rationale",
        }
    }

    /// Every format, in config order (for messages and docs).
    pub const ALL: [ResponseFormat; 4] =
        [ResponseFormat::Answer, ResponseFormat::Category, ResponseFormat::AnswerWithRationale, ResponseFormat::Rationale];

    /// Parses the config spelling ([`ResponseFormat::as_str`], or the alias `letter` for
    /// `answer`); `None` for anything else.
    pub fn from_config(s: &str) -> Option<Self> {
        if s == "letter" {
            return Some(ResponseFormat::Answer);
        }
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// The valid spellings for an error message: `answer (or letter), category,
    /// answer_with_rationale or rationale`.
    pub fn expected() -> String {
        let names: Vec<String> = Self::ALL
            .iter()
            .map(|f| if *f == ResponseFormat::Answer { format!("{} (or letter)", f.as_str()) } else { f.as_str().to_string() })
            .collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.join(""),
        }
    }

    /// Whether the whole response is determined by the chosen option alone (so each choice's
    /// response can be scored by likelihood): `answer` and `category`. The rationale formats
    /// contain a derivation that only exists for the gold answer.
    pub fn scores_choices(&self) -> bool {
        matches!(self, ResponseFormat::Answer | ResponseFormat::Category)
    }

    /// Read a model output `text` back into a choice index of `item`, strictly (see the type's
    /// table); `None` = invalid.
    pub fn parse(&self, text: &str, item: &Item) -> Option<usize> {
        match self {
            ResponseFormat::Answer | ResponseFormat::AnswerWithRationale => parse_leading_label(text, &item.choices),
            ResponseFormat::Category => {
                // Both sides without one final period, so an option text that ends in one
                // ("Give aspirin.") matches with or without it.
                let t = strip_final_period(text.trim());
                (0..item.choices.len()).find(|&k| {
                    item.choice_text(k).is_some_and(|c| strip_final_period(c.trim()).eq_ignore_ascii_case(t))
                })
            }
            ResponseFormat::Rationale => {
                let at = text.rfind(ANSWER_MARKER)?;
                let rest = strip_final_period(text[at + ANSWER_MARKER.len()..].trim());
                item.choices.iter().position(|c| c.eq_ignore_ascii_case(rest))
            }
        }
    }
}

/// `text` without one trailing `.`.
fn strip_final_period(text: &str) -> &str {
    text.strip_suffix('.').unwrap_or(text).trim_end()
}

/// Strict leading-label parsing: the output's first word, with an optional leading `(`, must
/// equal one label case-insensitively and be followed by the end of the output, a newline, or one
/// of `.,;:)!`. "yes", "Yes.", "B", "(B)", "B. Stage 2", "no\nBecause" parse; "The answer is B"
/// and "A 54-year-old man" (an article followed by more words) do not.
pub fn parse_leading_label(text: &str, choices: &[String]) -> Option<usize> {
    let t = text.trim_start();
    let t = t.strip_prefix('(').unwrap_or(t);
    let end = t.find(|c: char| c.is_whitespace() || ".,;:)!".contains(c)).unwrap_or(t.len());
    let word = &t[..end];
    if word.is_empty() {
        return None;
    }
    // The word ends at punctuation, or at spaces/tabs followed by the end or a newline; a space
    // then more text ("A 54-year-old") is not a label.
    let after = &t[end..];
    let rest = after.trim_start_matches([' ', '\t']);
    let ends_word = after.starts_with(|c: char| ".,;:)!".contains(c)) || rest.is_empty() || rest.starts_with(['\n', '\r']);
    if !ends_word {
        return None;
    }
    choices.iter().position(|c| c.eq_ignore_ascii_case(word))
}

impl Item {
    /// Whether this is a free-form pair (no choices, a response).
    pub fn is_free_form(&self) -> bool {
        self.choices.is_empty()
    }

    /// The gold label, e.g. `yes` or `B`; `None` for free-form items or an out-of-range gold.
    pub fn gold_label(&self) -> Option<&str> {
        self.gold.and_then(|g| self.choices.get(g)).map(|s| s.as_str())
    }

    /// The text of choice `k`: the option's text where the item shows options (matched by
    /// label), else the label itself; `None` when `k` is out of range.
    pub fn choice_text(&self, k: usize) -> Option<&str> {
        let label = self.choices.get(k)?;
        match self.parts.options.iter().find(|(l, _)| l == label) {
            Some((_, text)) => Some(text.as_str()),
            None => Some(label.as_str()),
        }
    }

    /// The response the model is trained to produce if choice `k` were gold, for formats whose
    /// response is determined by the choice alone ([`ResponseFormat::scores_choices`]): the label
    /// (`answer`) or the choice's text (`category`); `None` for the rationale formats or an
    /// out-of-range `k`. Likelihood evaluation scores these (then eos).
    pub fn choice_response(&self, format: ResponseFormat, k: usize) -> Option<String> {
        match format {
            ResponseFormat::Answer => self.choices.get(k).cloned(),
            ResponseFormat::Category => self.choice_text(k).map(str::to_string),
            ResponseFormat::AnswerWithRationale | ResponseFormat::Rationale => None,
        }
    }

    /// The text the model is trained to produce (see [`ResponseFormat`]):
    /// - `answer`: the gold label alone;
    /// - `category`: the gold choice's text;
    /// - `answer_with_rationale`: the label, then `\n` and the rationale where there is one;
    /// - `rationale`: the rationale, then ` Answer: <label>` (`Answer: <label>` without one);
    /// - free-form items: the response, whatever the format.
    ///
    /// Fails when a labelled item has no valid gold index, or a free-form item no response.
    pub fn target_text(&self, format: ResponseFormat) -> Result<String> {
        if self.is_free_form() {
            return self
                .response
                .clone()
                .ok_or_else(|| Error::msg(format!("item {}: free-form item without a response", self.id)));
        }
        let label = self.gold_label().ok_or_else(|| {
            Error::msg(format!(
                "item {}: gold index {:?} is not among its {} choices",
                self.id,
                self.gold,
                self.choices.len()
            ))
        })?;
        let rationale = self.rationale.as_deref().map(str::trim).filter(|r| !r.is_empty());
        Ok(match (format, rationale) {
            (ResponseFormat::Answer, _) | (ResponseFormat::AnswerWithRationale, None) => label.to_string(),
            (ResponseFormat::Category, _) => self.choice_text(self.gold.unwrap_or(0)).unwrap_or(label).to_string(),
            (ResponseFormat::AnswerWithRationale, Some(r)) => format!("{label}\n{r}"),
            (ResponseFormat::Rationale, Some(r)) => format!("{r} {ANSWER_MARKER} {label}"),
            (ResponseFormat::Rationale, None) => format!("{ANSWER_MARKER} {label}"),
        })
    }
}
