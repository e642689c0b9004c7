//! The tokenizer: a thin wrapper over [`tokenizers::Tokenizer`] that also knows the ids the
//! harness needs (end of sequence, padding, beginning of sequence, and the diffusion mask).
//!
//! Two sources are supported:
//! - a Hugging Face `tokenizer.json` ([`Tok::from_file`]), with an optional sibling
//!   `tokenizer_config.json` naming the eos / bos / pad tokens;
//! - the tokenizer metadata of a GGUF model file ([`Tok::from_gguf`], [`Tok::from_gguf_path`]),
//!   rebuilt as a GPT-2 style byte-level BPE from the file's own `tokenizer.ggml.*` keys
//!   ([`gguf_tokenizer`], which lists the supported pre-tokenizers), so
//!   a GGUF model needs no separate tokenizer download.
//!
//! ## The mask token
//! Masked diffusion needs one token id that stands for "masked". See [`MaskToken`] for how it
//! is chosen and [`Tok::contains_mask_literal`] for how data code keeps it out of inputs.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::quantized::gguf_file;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::gguf_tokenizer;
use crate::error::{Error, Result};

/// Token names that chat templates and end-of-text conventions use; never picked by
/// [`MaskToken::Auto`] even when the file does not name them as eos / bos / pad.
const RESERVED_NAMES: &[&str] = &[
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<s>",
    "</s>",
    "<unk>",
    "<pad>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
];

/// Which token serves as the diffusion mask.
///
/// In TOML / JSON it is an integer (a token id), the string `"auto"`, or any other string (a
/// token's text, e.g. `"<empty_output>"`). The string `"auto"` always means [`MaskToken::Auto`].
///
/// Resolution (done by the [`Tok`] constructors):
/// - [`MaskToken::Id`]: the id must be `< vocab_size`.
/// - [`MaskToken::Token`]: the text must be a token of the vocabulary. Choosing an ordinary
///   (non-special) token is allowed but unwise: ordinary text then encodes to the mask id.
/// - [`MaskToken::Auto`]: the control (special) token with the highest id that is not eos,
///   bos, pad or unk, not a well-known chat / end-of-text marker (`<|im_start|>`,
///   `<|im_end|>`, `<|endoftext|>`, ...), and whose text does not occur in the model's chat
///   template (when the GGUF has one). For SmolLM2 this is `<empty_output>` (id 16), a
///   StarCoder-era Jupyter marker that chat data never uses.
///
///   Why such a token is safe as a mask: special tokens are matched only as whole added
///   tokens before BPE runs, and SmolLM2's merges never build a special token's text, so BPE
///   on ordinary text cannot produce its id. The only way text can yield it is by containing
///   the literal string (e.g. `"<empty_output>"`); data loaders reject such text with
///   [`Tok::contains_mask_literal`].
///
///   A vocabulary with no spare control token makes `Auto` an error asking the user to set
///   `model.mask_token`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MaskToken {
    /// A token id.
    Id(u32),
    /// A token's text.
    Token(String),
    /// Pick a spare control token (see the enum's documentation).
    #[default]
    Auto,
}

impl MaskToken {
    fn from_text(s: &str) -> MaskToken {
        if s == "auto" {
            MaskToken::Auto
        } else {
            MaskToken::Token(s.to_string())
        }
    }
}

impl fmt::Display for MaskToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaskToken::Id(id) => write!(f, "{id}"),
            MaskToken::Token(s) => write!(f, "{s}"),
            MaskToken::Auto => write!(f, "auto"),
        }
    }
}

impl FromStr for MaskToken {
    type Err = std::convert::Infallible;
    /// An integer parses as [`MaskToken::Id`], `"auto"` as [`MaskToken::Auto`], anything else
    /// as [`MaskToken::Token`] (for command-line flags).
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s.trim().parse::<u32>() {
            Ok(id) => MaskToken::Id(id),
            Err(_) => MaskToken::from_text(s),
        })
    }
}

impl Serialize for MaskToken {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            MaskToken::Id(id) => s.serialize_u32(*id),
            MaskToken::Token(t) => s.serialize_str(t),
            MaskToken::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for MaskToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Id(u32),
            Text(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Id(id)) => Ok(MaskToken::Id(id)),
            Ok(Raw::Text(s)) => Ok(MaskToken::from_text(&s)),
            Err(_) => Err(serde::de::Error::custom(
                "mask_token must be a token id (non-negative integer), \"auto\", or a token's text",
            )),
        }
    }
}

/// A tokenizer with the harness's special ids.
///
/// The id fields are fixed at construction and always `< vocab_size()`.
#[derive(Clone)]
pub struct Tok {
    inner: tokenizers::Tokenizer,
    /// End-of-sequence id (for SmolLM2-Instruct: `<|im_end|>`, 2).
    pub eos_id: u32,
    /// Padding id (the file's pad token, else eos).
    pub pad_id: u32,
    /// Beginning-of-sequence id, when the tokenizer has one. [`Tok::encode`] never adds it.
    pub bos_id: Option<u32>,
    /// The diffusion mask id, resolved from a [`MaskToken`].
    pub mask_id: u32,
    mask_text: String,
    control_ids: Vec<u32>,
}

impl fmt::Debug for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tok")
            .field("vocab_size", &self.vocab_size())
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("bos_id", &self.bos_id)
            .field("mask_id", &self.mask_id)
            .field("mask", &self.mask_text)
            .finish()
    }
}

fn tok_err(e: impl fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// Reads the `eos_token` / `bos_token` / `pad_token` entries of a `tokenizer_config.json`
/// (each a string or an object with a `content` field).
fn read_tokenizer_config(path: &Path) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::model(path, format!("invalid JSON: {e}")))?;
    let mut out = HashMap::new();
    for key in ["eos_token", "bos_token", "pad_token"] {
        let content = match json.get(key) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Object(o)) => o
                .get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string),
            _ => None,
        };
        if let Some(c) = content {
            out.insert(key.to_string(), c);
        }
    }
    Ok(out)
}

impl Tok {
    /// Loads a Hugging Face `tokenizer.json`.
    ///
    /// The eos / bos / pad tokens come from a `tokenizer_config.json` in the same folder when
    /// there is one (as in a Hugging Face model folder, or as written by [`Tok::save`]);
    /// without it, eos is the first of `<|endoftext|>`, `</s>`, `<|end_of_text|>`, `<eos>`
    /// found in the vocabulary, bos is `None` and pad is eos. Control tokens are the added
    /// tokens marked `special`.
    pub fn from_file(tokenizer_json: &Path, mask: &MaskToken) -> Result<Tok> {
        if !tokenizer_json.is_file() {
            return Err(Error::model(tokenizer_json, "tokenizer file not found"));
        }
        let inner = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|e| Error::model(tokenizer_json, format!("cannot load tokenizer: {e}")))?;
        let n_vocab = inner.get_vocab_size(true);
        let config_path = tokenizer_json.with_file_name("tokenizer_config.json");
        let config = if config_path.is_file() {
            read_tokenizer_config(&config_path)?
        } else {
            HashMap::new()
        };
        let lookup = |key: &str| -> Result<Option<u32>> {
            match config.get(key) {
                None => Ok(None),
                Some(t) => inner.token_to_id(t).map(Some).ok_or_else(|| {
                    Error::model(
                        &config_path,
                        format!(
                            "`{key}` = {t:?} is not in the vocabulary of {}",
                            tokenizer_json.display()
                        ),
                    )
                }),
            }
        };
        let eos_id = match lookup("eos_token")? {
            Some(id) => id,
            None => ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"]
                .iter()
                .find_map(|t| inner.token_to_id(t))
                .ok_or_else(|| {
                    Error::model(
                        tokenizer_json,
                        "cannot tell the eos token: add a tokenizer_config.json with `eos_token`",
                    )
                })?,
        };
        let bos_id = lookup("bos_token")?;
        let pad_id = lookup("pad_token")?.unwrap_or(eos_id);
        let mut control_ids: Vec<u32> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        control_ids.sort_unstable();
        let ids = SpecialIds {
            eos: eos_id,
            bos: bos_id,
            pad: pad_id,
            unk: None,
        };
        Self::finish(inner, n_vocab, ids, control_ids, None, mask, tokenizer_json)
    }

    /// Opens a GGUF file and builds its tokenizer (see [`Tok::from_gguf`]).
    pub fn from_gguf_path(path: &Path, mask: &MaskToken) -> Result<Tok> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| Error::model(path, format!("cannot read GGUF header: {e}")))?;
        Self::from_gguf(&content, path, mask)
    }

    /// Builds a byte-level BPE tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    ///
    /// Required keys: `tokenizer.ggml.model` (must be `"gpt2"`), `tokenizer.ggml.pre` (see
    /// [`gguf_tokenizer`]), `tokenizer.ggml.tokens`, `tokenizer.ggml.merges`,
    /// `tokenizer.ggml.eos_token_id`. Optional: `tokenizer.ggml.token_type` (3 = control →
    /// special added token, 4 = user-defined → non-special added token),
    /// `tokenizer.ggml.bos_token_id`, `tokenizer.ggml.padding_token_id` (default: eos),
    /// `tokenizer.ggml.unknown_token_id`, `tokenizer.chat_template` (used by
    /// [`MaskToken::Auto`]). `path` only labels errors.
    pub fn from_gguf(content: &gguf_file::Content, path: &Path, mask: &MaskToken) -> Result<Tok> {
        let g = gguf_tokenizer::rebuild(content, path)?;
        Self::finish(g.inner, g.n_vocab, g.ids, g.control_ids, g.chat_template, mask, path)
    }

    fn finish(
        inner: tokenizers::Tokenizer,
        n_vocab: usize,
        ids: SpecialIds,
        control_ids: Vec<u32>,
        chat_template: Option<&str>,
        mask: &MaskToken,
        path: &Path,
    ) -> Result<Tok> {
        let mask_id = match mask {
            MaskToken::Id(id) => {
                if (*id as usize) >= n_vocab {
                    return Err(Error::model(
                        path,
                        format!(
                            "mask token id {id} is out of range (vocabulary has {n_vocab} tokens)"
                        ),
                    ));
                }
                *id
            }
            MaskToken::Token(t) => inner.token_to_id(t).ok_or_else(|| {
                Error::model(path, format!("mask token {t:?} is not in the vocabulary"))
            })?,
            MaskToken::Auto => {
                auto_mask(&inner, &ids, &control_ids, chat_template).ok_or_else(|| {
                    Error::model(
                    path,
                    "mask_token = \"auto\" found no spare control token (one that is not eos, bos, \
                     pad, unk or used by the chat template); set `model.mask_token` to a token id \
                     or token text",
                )
                })?
            }
        };
        let mask_text = inner
            .id_to_token(mask_id)
            .ok_or_else(|| Error::model(path, format!("mask id {mask_id} has no token text")))?;
        Ok(Tok {
            inner,
            eos_id: ids.eos,
            pad_id: ids.pad,
            bos_id: ids.bos,
            mask_id,
            mask_text,
            control_ids,
        })
    }

    /// Number of tokens, added tokens included (SmolLM2: 49152).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes `text` into ids without adding any special token (no bos). Control tokens
    /// written literally in `text` (e.g. `<|im_start|>`) are matched and encoded as their ids,
    /// like llama.cpp's `tokenize(..., special=true)`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text; `skip_special` drops control tokens. An id `>= vocab_size()` is an
    /// error.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let n = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= n) {
            return Err(Error::Tokenizer(format!(
                "cannot decode id {bad}: vocabulary has {n} tokens"
            )));
        }
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// Decodes generated ids: like [`Tok::decode`], but ids `>= vocab_size()` are dropped. They
    /// are the rows a checkpoint pads its embedding with past the tokenizer (Qwen2.5: 151,936
    /// rows for 151,665 tokens), which name no text; a sampler may still pick one.
    pub fn decode_generated(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let n = self.vocab_size();
        let kept: Vec<u32> = ids.iter().copied().filter(|&id| (id as usize) < n).collect();
        self.inner.decode(&kept, skip_special).map_err(tok_err)
    }

    /// The id of a token given its vocabulary text (byte-level form, e.g. `"Ġthe"`), if any.
    pub fn token_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    /// The vocabulary text of an id (byte-level form), if the id exists.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The mask token's text (SmolLM2 with `Auto`: `"<empty_output>"`).
    pub fn mask_token(&self) -> &str {
        &self.mask_text
    }

    /// Whether `text` contains the mask token's literal text, so that encoding it could yield
    /// the mask id. Data loaders reject (or report) such items.
    pub fn contains_mask_literal(&self, text: &str) -> bool {
        text.contains(self.mask_text.as_str())
    }

    /// Ids of the control (special) tokens, ascending.
    pub fn control_ids(&self) -> &[u32] {
        &self.control_ids
    }

    /// Whether `id` is a control (special) token.
    pub fn is_control(&self, id: u32) -> bool {
        self.control_ids.binary_search(&id).is_ok()
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Writes `tokenizer.json` and a `tokenizer_config.json` naming the eos / bos / pad tokens
    /// into `dir`, so that [`Tok::from_file`] on `dir/tokenizer.json` rebuilds the same
    /// tokenizer. Returns the path of `tokenizer.json`.
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json_path = dir.join("tokenizer.json");
        self.inner
            .save(&json_path, false)
            .map_err(|e| Error::model(&json_path, format!("cannot save tokenizer: {e}")))?;
        let mut config = serde_json::Map::new();
        let name = |id: u32| self.inner.id_to_token(id).map(serde_json::Value::String);
        if let Some(v) = name(self.eos_id) {
            config.insert("eos_token".into(), v);
        }
        if let Some(v) = name(self.pad_id) {
            config.insert("pad_token".into(), v);
        }
        if let Some(v) = self.bos_id.and_then(name) {
            config.insert("bos_token".into(), v);
        }
        let config_path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(config))
            .map_err(|e| Error::model(&config_path, e.to_string()))?;
        std::fs::write(&config_path, text).map_err(|e| Error::io(&config_path, e))?;
        Ok(json_path)
    }
}

/// The ids a tokenizer source names: end of sequence, beginning of sequence, padding, unknown.
pub(crate) struct SpecialIds {
    /// End of sequence.
    pub(crate) eos: u32,
    /// Beginning of sequence, if any.
    pub(crate) bos: Option<u32>,
    /// Padding.
    pub(crate) pad: u32,
    /// Unknown token, if any.
    pub(crate) unk: Option<u32>,
}

/// The [`MaskToken::Auto`] rule: the highest-id control token that is not eos / bos / pad /
/// unk, not a reserved chat or end-of-text name, and not used by the chat template.
fn auto_mask(
    inner: &tokenizers::Tokenizer,
    ids: &SpecialIds,
    control_ids: &[u32],
    chat_template: Option<&str>,
) -> Option<u32> {
    control_ids
        .iter()
        .rev()
        .copied()
        .filter(|&id| id != ids.eos && Some(id) != ids.bos && id != ids.pad && Some(id) != ids.unk)
        .find(|&id| match inner.id_to_token(id) {
            None => false,
            Some(t) => {
                !t.is_empty()
                    && !RESERVED_NAMES.contains(&t.as_str())
                    && !chat_template.is_some_and(|tpl| tpl.contains(t.as_str()))
            }
        })
}
