//! The GGUF tokenizer rebuild: a GPT-2 style byte-level BPE [`tokenizers::Tokenizer`] built from
//! a GGUF file's own `tokenizer.ggml.*` metadata, so a GGUF model needs no separate tokenizer
//! download. [`Tok::from_gguf`](super::tokenizer::Tok::from_gguf) wraps it with the mask token.
//!
//! ## GGUF pre-tokenizers
//! `tokenizer.ggml.pre` names llama.cpp's pre-tokenizer (the regex that splits text before
//! BPE). The names supported, and what they map to:
//!
//! | `tokenizer.ggml.pre`     | pre-tokenizer built                                                   |
//! |--------------------------|-----------------------------------------------------------------------|
//! | `smollm`, `codeshell`    | `Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false, use_regex=true)]` |
//! | `gpt-2`, `gpt2`          | `ByteLevel(add_prefix_space=false, use_regex=true)`                    |
//!
//! `smollm` is exactly SmolLM2's Hugging Face `tokenizer.json` pre-tokenizer; llama.cpp
//! implements it as the regex list `["\p{N}", <GPT-2 regex>]`, which splits the same way. Any
//! other value, or a missing key, is an error naming the value and this list: silently
//! falling back to another regex would produce different token ids than the model was
//! trained with.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use super::tokenizer::SpecialIds;
use crate::error::{Error, Result};

/// GGUF `tokenizer.ggml.token_type` value of an ordinary token.
pub const TOKEN_TYPE_NORMAL: i64 = 1;
/// GGUF `tokenizer.ggml.token_type` value of a control (special) token, e.g. `<|im_end|>`.
pub const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF `tokenizer.ggml.token_type` value of a user-defined token (matched whole in text,
/// but not special).
pub const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Reads an integer-typed GGUF value as `u64` (any signed or unsigned width; negatives fail).
fn value_as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(u64::from(*x)),
        Value::U16(x) => Some(u64::from(*x)),
        Value::U32(x) => Some(u64::from(*x)),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

fn value_as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::U8(x) => Some(i64::from(*x)),
        Value::U16(x) => Some(i64::from(*x)),
        Value::U32(x) => Some(i64::from(*x)),
        Value::U64(x) => i64::try_from(*x).ok(),
        Value::I8(x) => Some(i64::from(*x)),
        Value::I16(x) => Some(i64::from(*x)),
        Value::I32(x) => Some(i64::from(*x)),
        Value::I64(x) => Some(*x),
        _ => None,
    }
}

/// Typed access to a GGUF file's metadata with errors naming the file and key.
struct Meta<'a> {
    md: &'a HashMap<String, Value>,
    path: &'a Path,
}

impl<'a> Meta<'a> {
    fn get(&self, key: &str) -> Result<&'a Value> {
        self.md.get(key).ok_or_else(|| {
            Error::model(self.path, format!("missing tokenizer metadata key `{key}`"))
        })
    }
    fn string(&self, key: &str) -> Result<&'a str> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            v => Err(self.bad(key, "a string", v)),
        }
    }
    fn opt_string(&self, key: &str) -> Result<Option<&'a str>> {
        if self.md.contains_key(key) {
            self.string(key).map(Some)
        } else {
            Ok(None)
        }
    }
    fn array(&self, key: &str) -> Result<&'a [Value]> {
        match self.get(key)? {
            Value::Array(a) => Ok(a),
            v => Err(self.bad(key, "an array", v)),
        }
    }
    fn string_array(&self, key: &str) -> Result<Vec<&'a str>> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(self.bad(&format!("{key}[{i}]"), "a string", v)),
            })
            .collect()
    }
    /// An optional token id; it must be `< n_vocab`.
    fn opt_id(&self, key: &str, n_vocab: usize) -> Result<Option<u32>> {
        let Some(v) = self.md.get(key) else {
            return Ok(None);
        };
        let id = value_as_u64(v).ok_or_else(|| self.bad(key, "a non-negative integer", v))?;
        if id >= n_vocab as u64 {
            return Err(Error::model(
                self.path,
                format!("`{key}` = {id} is out of range for a vocabulary of {n_vocab} tokens"),
            ));
        }
        u32::try_from(id)
            .map(Some)
            .map_err(|_| self.bad(key, "a u32 token id", v))
    }
    fn bad(&self, key: &str, want: &str, got: &Value) -> Error {
        Error::model(
            self.path,
            format!(
                "tokenizer metadata `{key}` should be {want}, found {:?}",
                got.value_type()
            ),
        )
    }
}

/// The pre-tokenizer for a GGUF `tokenizer.ggml.pre` name (see the module docs).
fn pre_tokenizer_for(pre: &str, path: &Path) -> Result<PreTokenizerWrapper> {
    let byte_level = ByteLevel::default()
        .add_prefix_space(false)
        .trim_offsets(true)
        .use_regex(true);
    match pre {
        "smollm" | "codeshell" => Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(byte_level),
        ]))),
        "gpt-2" | "gpt2" => Ok(PreTokenizerWrapper::ByteLevel(byte_level)),
        other => Err(Error::model(
            path,
            format!(
                "unsupported `tokenizer.ggml.pre` = {other:?} (supported: \"smollm\", \"codeshell\", \
                 \"gpt-2\"); use a tokenizer.json instead"
            ),
        )),
    }
}

/// A tokenizer rebuilt from GGUF metadata, before the mask token is chosen.
pub(crate) struct Rebuilt<'a> {
    /// The byte-level BPE with the control and user-defined tokens added.
    pub(crate) inner: tokenizers::Tokenizer,
    /// Number of tokens (`tokenizer.ggml.tokens`), added tokens included.
    pub(crate) n_vocab: usize,
    /// eos / bos / pad / unk ids from the `tokenizer.ggml.*_token_id` keys.
    pub(crate) ids: SpecialIds,
    /// Ids of the control tokens, ascending.
    pub(crate) control_ids: Vec<u32>,
    /// `tokenizer.chat_template`, when present.
    pub(crate) chat_template: Option<&'a str>,
}

/// Builds a byte-level BPE tokenizer from a GGUF file's `tokenizer.ggml.*` metadata (the keys
/// are listed at [`Tok::from_gguf`](super::tokenizer::Tok::from_gguf)). `path` only labels
/// errors.
pub(crate) fn rebuild<'a>(content: &'a gguf_file::Content, path: &'a Path) -> Result<Rebuilt<'a>> {
    let meta = Meta {
        md: &content.metadata,
        path,
    };
    let model = meta.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(Error::model(
            path,
            format!(
                "unsupported `tokenizer.ggml.model` = {model:?}: only \"gpt2\" (byte-level BPE) \
                 is supported; use a tokenizer.json instead"
            ),
        ));
    }
    let pre = pre_tokenizer_for(meta.string("tokenizer.ggml.pre")?, path)?;
    let tokens = meta.string_array("tokenizer.ggml.tokens")?;
    let n_vocab = tokens.len();
    if n_vocab == 0 || u32::try_from(n_vocab).is_err() {
        return Err(Error::model(
            path,
            format!("`tokenizer.ggml.tokens` has {n_vocab} entries"),
        ));
    }
    let types: Vec<i64> = if content.metadata.contains_key("tokenizer.ggml.token_type") {
        let raw = meta.array("tokenizer.ggml.token_type")?;
        if raw.len() != n_vocab {
            return Err(Error::model(
                path,
                format!(
                    "`tokenizer.ggml.token_type` has {} entries but `tokenizer.ggml.tokens` has {n_vocab}",
                    raw.len()
                ),
            ));
        }
        raw.iter()
            .enumerate()
            .map(|(i, v)| {
                value_as_i64(v).ok_or_else(|| {
                    meta.bad(&format!("tokenizer.ggml.token_type[{i}]"), "an integer", v)
                })
            })
            .collect::<Result<_>>()?
    } else {
        vec![TOKEN_TYPE_NORMAL; n_vocab]
    };

    let mut vocab = Vocab::default();
    for (id, tok) in tokens.iter().enumerate() {
        // n_vocab fits in u32 (checked above), so every index does.
        let id = id as u32;
        if let Some(prev) = vocab.insert((*tok).to_string(), id) {
            return Err(Error::model(
                path,
                format!("`tokenizer.ggml.tokens` repeats {tok:?} (ids {prev} and {id})"),
            ));
        }
    }
    let merges = meta
        .string_array("tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                Ok((a.to_string(), b.to_string()))
            }
            _ => Err(Error::model(
                path,
                format!("`tokenizer.ggml.merges[{i}]` = {m:?} is not two tokens separated by one space"),
            )),
        })
        .collect::<Result<Vec<_>>>()?;

    meta.get("tokenizer.ggml.eos_token_id")?;
    let eos = meta
        .opt_id("tokenizer.ggml.eos_token_id", n_vocab)?
        .ok_or_else(|| {
            Error::model(
                path,
                "missing tokenizer metadata key `tokenizer.ggml.eos_token_id`",
            )
        })?;
    let bos = meta.opt_id("tokenizer.ggml.bos_token_id", n_vocab)?;
    let pad = meta
        .opt_id("tokenizer.ggml.padding_token_id", n_vocab)?
        .unwrap_or(eos);
    let unk = meta.opt_id("tokenizer.ggml.unknown_token_id", n_vocab)?;
    let chat_template = meta.opt_string("tokenizer.chat_template")?;

    // No unk token in the BPE model: byte-level BPE covers every byte, so it never needs
    // one (SmolLM2's tokenizer.json has `unk_token: null` too).
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::model(path, format!("cannot build BPE from GGUF metadata: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    inner.with_post_processor(Some(
        ByteLevel::default()
            .add_prefix_space(false)
            .trim_offsets(false)
            .use_regex(true),
    ));

    let mut control_ids = Vec::new();
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (id, (tok, ty)) in tokens.iter().zip(&types).enumerate() {
        match *ty {
            TOKEN_TYPE_CONTROL => {
                control_ids.push(id as u32);
                special.push(AddedToken::from(*tok, true).normalized(false));
            }
            TOKEN_TYPE_USER_DEFINED => {
                user.push(AddedToken::from(*tok, false).normalized(false))
            }
            _ => {}
        }
    }
    inner
        .add_special_tokens(special)
        .map_err(|e| Error::model(path, format!("cannot add control tokens: {e}")))?;
    inner
        .add_tokens(user)
        .map_err(|e| Error::model(path, format!("cannot add user-defined tokens: {e}")))?;
    // Added tokens already in the BPE vocabulary keep their ids; check nothing moved.
    if inner.get_vocab_size(true) != n_vocab {
        return Err(Error::model(
            path,
            format!(
                "tokenizer has {} tokens after adding special tokens, expected {n_vocab}",
                inner.get_vocab_size(true)
            ),
        ));
    }
    let ids = SpecialIds { eos, bos, pad, unk };
    Ok(Rebuilt { inner, n_vocab, ids, control_ids, chat_template })
}
