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

/// What the model is trained to produce after the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    /// The gold label alone, e.g. `yes` or `B`.
    #[default]
    Answer,
    /// The gold label, then a newline and the rationale where the item has one.
    AnswerWithRationale,
}

impl ResponseFormat {
    /// The config spelling: `answer` or `answer_with_rationale`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ResponseFormat::Answer => "answer",
            ResponseFormat::AnswerWithRationale => "answer_with_rationale",
        }
    }
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

    /// The text the model is trained to produce:
    /// - `answer`: the gold label alone;
    /// - `answer_with_rationale`: the label, then `\n` and the rationale where there is one;
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
        match (format, self.rationale.as_deref().map(str::trim)) {
            (ResponseFormat::AnswerWithRationale, Some(r)) if !r.is_empty() => Ok(format!("{label}\n{r}")),
            _ => Ok(label.to_string()),
        }
    }
}
