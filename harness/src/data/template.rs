//! Prompt templates: `plain` and `chat` (SmolLM2's ChatML), and length-budgeted rendering.
//!
//! The user message is built from [`PromptParts`] in this order: instruction, contexts,
//! question, options as `A. text` lines, then an answer instruction derived from the item's
//! choices and the [`ResponseFormat`] (none for free-form items):
//!
//! | format | with options | without (yes/no/maybe) |
//! |---|---|---|
//! | `answer` | `Answer with the letter of the correct option.` | `Answer with yes, no or maybe.` |
//! | `category` | `Answer with the text of the correct option.` | `Answer with yes, no or maybe.` |
//! | `answer_with_rationale` | `Answer with the letter of the correct option, then explain briefly on the next line.` | `Answer with yes, no or maybe, then explain briefly on the next line.` |
//! | `rationale` | `Explain briefly, then end with "Answer: <letter>".` | `Explain briefly, then end with "Answer: <yes, no or maybe>".` |
//!
//! Prompt and target are tokenized separately: the target (e.g. `yes`) starts right after the
//! prompt (after the assistant header for `chat`, after `Answer: ` for `plain`; under the
//! `rationale` format a `plain` target thus reads `Answer: <derivation> Answer: C`, and only the
//! last marker is parsed). The caller
//! appends one end-of-sequence token after the target; for `chat` that token stands for
//! [`CHATML_END_OF_TURN`].

use serde::{Deserialize, Serialize};

use super::item::{Item, PromptParts, ResponseFormat, ANSWER_MARKER};
use crate::error::{Error, Result};

/// ChatML end-of-turn marker that follows the assistant's response; the caller maps it to eos.
pub const CHATML_END_OF_TURN: &str = "<|im_end|>";

/// Default system message of the `chat` template.
pub const DEFAULT_SYSTEM: &str = "You are a careful medical assistant. Answer the question.";

/// Turns text into token ids. Implemented by the model tokenizer; tests use a whitespace one.
pub trait TextEncoder {
    /// Token ids of `text`, without special tokens added.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
}

/// Which prompt layout to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TemplateKind {
    /// ChatML as used by SmolLM2-Instruct: system, user, assistant header.
    #[default]
    Chat,
    /// The user message followed by `\n\nAnswer: `.
    Plain,
}

impl TemplateKind {
    /// The config spelling: `chat` or `plain`.
    pub fn as_str(&self) -> &'static str {
        match self {
            TemplateKind::Chat => "chat",
            TemplateKind::Plain => "plain",
        }
    }
}

/// A prompt template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// The layout.
    pub kind: TemplateKind,
    /// System message for `chat` (ignored by `plain`).
    pub system: String,
}

/// A rendered, tokenized example.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// Prompt text, ending where the target begins.
    pub prompt: String,
    /// Token ids of `prompt`.
    pub prompt_ids: Vec<u32>,
    /// Target text (the untruncated target, even when `target_ids` was cut).
    pub target: String,
    /// Token ids of `target` (no eos; the caller appends one).
    pub target_ids: Vec<u32>,
    /// Whether contexts were shortened or (free-form only) the target cut to fit `max_len`.
    pub truncated: bool,
}

/// The outcome of [`Template::render_fit`]: a rendered example, or an item too long for the
/// budget even with its contexts dropped.
#[derive(Debug, Clone, PartialEq)]
pub enum Fit {
    /// The example fits `max_len` (possibly after shortening).
    Fits(Rendered),
    /// A labelled item whose prompt without any context plus target and eos exceeds `max_len`.
    Overlong {
        /// Tokens of the prompt with every context dropped.
        prompt_tokens: usize,
        /// Tokens of the target.
        target_tokens: usize,
    },
}

impl Template {
    /// A template of `kind` with the default system message.
    pub fn new(kind: TemplateKind) -> Self {
        Template { kind, system: DEFAULT_SYSTEM.to_string() }
    }

    /// The end-of-turn string that follows a response (`<|im_end|>` for chat, none for plain).
    pub fn end_of_turn(&self) -> Option<&'static str> {
        match self.kind {
            TemplateKind::Chat => Some(CHATML_END_OF_TURN),
            TemplateKind::Plain => None,
        }
    }

    /// The user message of `parts` with `choices`, asking for `format` (see the module doc for
    /// the layout).
    pub fn user_message(parts: &PromptParts, choices: &[String], format: ResponseFormat) -> String {
        let mut blocks: Vec<String> = Vec::new();
        if let Some(ins) = parts.instruction.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            blocks.push(ins.to_string());
        }
        let ctx: Vec<&str> = parts.contexts.iter().map(|c| c.trim()).filter(|c| !c.is_empty()).collect();
        if !ctx.is_empty() {
            blocks.push(ctx.join("\n"));
        }
        let q = parts.question.trim();
        if !q.is_empty() {
            blocks.push(q.to_string());
        }
        if !parts.options.is_empty() {
            let lines: Vec<String> = parts.options.iter().map(|(l, t)| format!("{l}. {t}")).collect();
            blocks.push(lines.join("\n"));
        }
        if let Some(a) = answer_instruction(parts, choices, format) {
            blocks.push(a);
        }
        blocks.join("\n\n")
    }

    /// The full prompt text for `parts` asking for `format` (everything before the target).
    pub fn prompt(&self, parts: &PromptParts, choices: &[String], format: ResponseFormat) -> String {
        let user = Self::user_message(parts, choices, format);
        match self.kind {
            TemplateKind::Chat => format!(
                "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n",
                self.system
            ),
            TemplateKind::Plain => format!("{user}\n\nAnswer: "),
        }
    }

    /// Renders and tokenizes `item` so that `prompt_ids.len() + target_ids.len() + 1` (eos)
    /// is at most `max_len`.
    ///
    /// When too long, contexts are shortened first: trailing words are dropped from the last
    /// context, then the one before, and so on (the longest fitting prefix of the context words
    /// is kept, found by bisection). The instruction, question and options are never cut. If the
    /// prompt still does not fit with no context at all, labelled items fail with an error;
    /// free-form items (alpaca) have their target ids cut at the end instead, as long as at
    /// least one target token fits. `truncated` is set whenever anything was cut.
    pub fn render(&self, item: &Item, format: ResponseFormat, enc: &dyn TextEncoder, max_len: usize) -> Result<Rendered> {
        match self.render_fit(item, format, enc, max_len)? {
            Fit::Fits(r) => Ok(r),
            Fit::Overlong { prompt_tokens, target_tokens } => Err(Error::msg(format!(
                "item {}: prompt without any context is {prompt_tokens} tokens and the target {target_tokens} tokens; \
                 with 1 for eos that exceeds max_len = {max_len} (question and options are never cut: raise data.max_len)",
                item.id
            ))),
        }
    }

    /// [`Template::render`], with an over-long labelled item as [`Fit::Overlong`] instead of an
    /// error, so that callers can count and skip such items.
    pub fn render_fit(&self, item: &Item, format: ResponseFormat, enc: &dyn TextEncoder, max_len: usize) -> Result<Fit> {
        let target = item.target_text(format)?;
        let target_ids = enc.encode(&target)?;
        let budget = max_len.saturating_sub(1);
        let full_prompt = self.prompt(&item.parts, &item.choices, format);
        let full_ids = enc.encode(&full_prompt)?;
        if full_ids.len() + target_ids.len() <= budget {
            return Ok(Fit::Fits(Rendered { prompt: full_prompt, prompt_ids: full_ids, target, target_ids, truncated: false }));
        }
        // Word units of the contexts, in order; keep the longest fitting prefix.
        let words: Vec<Vec<&str>> = item.parts.contexts.iter().map(|c| c.split_whitespace().collect()).collect();
        let total: usize = words.iter().map(Vec::len).sum();
        let with_prefix = |k: usize| -> PromptParts {
            let mut parts = item.parts.clone();
            let mut left = k;
            parts.contexts = words
                .iter()
                .map(|w| {
                    let take = left.min(w.len());
                    left -= take;
                    w[..take].join(" ")
                })
                .filter(|c| !c.is_empty())
                .collect();
            parts
        };
        let render_k = |k: usize| -> Result<(String, Vec<u32>)> {
            let p = self.prompt(&with_prefix(k), &item.choices, format);
            let ids = enc.encode(&p)?;
            Ok((p, ids))
        };
        let (p0, ids0) = render_k(0)?;
        if ids0.len() + target_ids.len() > budget {
            if item.is_free_form() && ids0.len() < budget {
                let mut t = target_ids;
                t.truncate(budget - ids0.len());
                return Ok(Fit::Fits(Rendered { prompt: p0, prompt_ids: ids0, target, target_ids: t, truncated: true }));
            }
            return Ok(Fit::Overlong { prompt_tokens: ids0.len(), target_tokens: target_ids.len() });
        }
        // Bisection: lo always fits, hi never does.
        let (mut lo, mut hi) = (0usize, total);
        let (mut best_p, mut best_ids) = (p0, ids0);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let (p, ids) = render_k(mid)?;
            if ids.len() + target_ids.len() <= budget {
                lo = mid;
                best_p = p;
                best_ids = ids;
            } else {
                hi = mid;
            }
        }
        Ok(Fit::Fits(Rendered { prompt: best_p, prompt_ids: best_ids, target, target_ids, truncated: true }))
    }
}

/// The closing answer instruction for an item's choices under `format` (the module doc's
/// table); `None` for free-form items.
fn answer_instruction(parts: &PromptParts, choices: &[String], format: ResponseFormat) -> Option<String> {
    if choices.is_empty() {
        return None;
    }
    let labels = match choices.len() {
        1 => choices[0].clone(),
        n => format!("{} or {}", choices[..n - 1].join(", "), choices[n - 1]),
    };
    let options = !parts.options.is_empty();
    Some(match (format, options) {
        (ResponseFormat::Answer, true) => "Answer with the letter of the correct option.".to_string(),
        (ResponseFormat::Category, true) => "Answer with the text of the correct option.".to_string(),
        (ResponseFormat::Answer | ResponseFormat::Category, false) => format!("Answer with {labels}."),
        (ResponseFormat::AnswerWithRationale, true) => {
            "Answer with the letter of the correct option, then explain briefly on the next line.".to_string()
        }
        (ResponseFormat::AnswerWithRationale, false) => {
            format!("Answer with {labels}, then explain briefly on the next line.")
        }
        (ResponseFormat::Rationale, true) => format!("Explain briefly, then end with \"{ANSWER_MARKER} <letter>\"."),
        (ResponseFormat::Rationale, false) => format!("Explain briefly, then end with \"{ANSWER_MARKER} <{labels}>\"."),
    })
}
