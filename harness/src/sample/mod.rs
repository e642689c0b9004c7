//! Decoding: diffusion iterative denoising and AR decoding.
//!
//! - [`Denoiser`]: "give me logits for every position of these ids" (or for some positions only,
//!   [`Denoiser::logits_at`]). Samplers only talk to this trait, so tests can drive them with a
//!   hand-set logit function; [`ModelDenoiser`] implements it for a [`Llama`] with a chosen
//!   attention mode (full for diffusion models, causal for AR), running its LM head only on the
//!   positions asked for.
//! - [`diffusion`]: iterative denoising from a fully masked canvas ([`DiffusionSampler`]).
//!   With `eval.cache = "prefix"` it keeps a [`PrefixCache`] (Fast-dLLM's prefix KV cache) and
//!   asks [`Denoiser::logits_at_prefix`], which a model answers by running only the columns from
//!   the current block on, most steps.
//! - [`autoregressive`]: greedy / sampled left-to-right decoding, batched with the KV cache
//!   ([`ArSampler::generate_batched`]; [`ArSampler::generate_cached`] for one prompt) or, one
//!   prompt at a time, by full recomputation through a [`Denoiser`] ([`ArSampler::generate`]).
//! - [`pick_token`]: the shared per-position choice (argmax at temperature 0, else temperature,
//!   top-k and top-p, drawn from a seeded generator), on the host; [`greedy_rows`] is its
//!   temperature-0 case on the device, for many rows at once (the samplers' greedy path: only the
//!   chosen ids and their confidences come back to the host).
//!
//! ## Padding
//! Both samplers batch prompts of different lengths by **left padding** (right-aligning the
//! prompts), and a key-padding mask hides the pad columns from every query (a pad query's output is
//! unused: it sees no key, [`EmptyRow::Hidden`], except under the full attention of a diffusion
//! reading, where it sees the real keys so that the bias stays (B, 1, 1, L)). Diffusion: every row of a batch is
//! `pad… prompt canvas`, so the generated region starts at the same column in every row. AR with
//! the KV cache: every row is `pad… prompt generated…`; all rows share one column offset in the
//! cache ([`crate::model::KvCache::left_padded`]), the prompt pass gets a causal bias with the pad
//! keys hidden and each decode step a (B, 1, 1, T) bias hiding them
//! ([`crate::model::mask::padded_cache_bias`]). The model uses RoPE, whose attention scores depend
//! only on relative positions, so a left-padded row computes the same logits as the same row without
//! padding (up to floating-point rounding); tests check this for both samplers (token for token
//! against one-at-a-time decoding). A [`Denoiser`] that cannot take a padding mask
//! ([`Denoiser::supports_padding`] is false, the default) is only ever called with batches of
//! equal-length prompts.

pub mod autoregressive;
pub mod diffusion;

pub use autoregressive::{ArOutput, ArSampler};
pub use diffusion::{CacheKind, DiffusionOutput, DiffusionSampler, Strategy, StrategyKind};

use crate::model::params::Fwd;
use crate::model::mask::{additive_bias, attention_bias, split_bias, visibility, AttentionMode, EmptyRow, ReadAttention};
use crate::model::{KvCache, Llama};
use crate::{Error, Result};
use candle_core::{DType, Tensor, D};
use rand::Rng;

/// Something that returns logits for every position of a batch of token ids.
pub trait Denoiser {
    /// `ids`: (B, L) u32 → logits (B, L, V) f32.
    fn logits(&self, ids: &Tensor) -> Result<Tensor>;

    /// Vocabulary size V.
    fn vocab_size(&self) -> usize;

    /// Whether [`Denoiser::logits_padded`] honours a key-padding mask. When false (the default),
    /// samplers never batch prompts of different lengths together.
    fn supports_padding(&self) -> bool {
        false
    }

    /// Logits with a key-padding mask: `key_valid[b][j]` is false where column j of row b is
    /// padding, which no query may attend to. `ids`: (B, L) u32 → (B, L, V) f32.
    ///
    /// The default implementation accepts only masks without padding (or none) and otherwise
    /// returns an error.
    fn logits_padded(&self, ids: &Tensor, key_valid: Option<&[Vec<bool>]>) -> Result<Tensor> {
        let has_pad = key_valid.is_some_and(|kv| kv.iter().any(|row| row.iter().any(|&v| !v)));
        if has_pad {
            return Err(Error::msg("this denoiser does not support padded batches"));
        }
        self.logits(ids)
    }

    /// [`Denoiser::logits_padded`] of the columns `from..L` only: (B, L − from, V). The default
    /// narrows the full logits; a model runs its LM head on those columns alone (the diffusion
    /// sampler reads only canvas columns, so a long prompt costs no head computation).
    fn logits_padded_from(&self, ids: &Tensor, key_valid: Option<&[Vec<bool>]>, from: usize) -> Result<Tensor> {
        let full = self.logits_padded(ids, key_valid)?; // (B, L, V)
        let l = full.dim(1)?;
        if from > l {
            return Err(Error::msg(format!("logits from column {from} of a length-{l} batch")));
        }
        Ok(full.narrow(1, from, l - from)?)
    }

    /// Logits (R, V) f32 at the `positions` of a batch `ids` (B, L), in their order:
    /// `positions[r] = (b, j)` is row b, column j. This is what the diffusion sampler asks for:
    /// the columns that predict the eligible masked positions, not the whole canvas. The default
    /// picks them out of [`Denoiser::logits_padded_from`] (from the least column asked for); a
    /// model gathers those positions' hidden states and runs its LM head on them alone.
    fn logits_at(&self, ids: &Tensor, key_valid: Option<&[Vec<bool>]>, positions: &[(usize, usize)]) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        check_positions(positions, b, l)?;
        let v = self.vocab_size();
        let Some(from) = positions.iter().map(|p| p.1).min() else {
            return Ok(Tensor::zeros((0, v), DType::F32, ids.device())?);
        };
        let lt = l - from;
        let full = self.logits_padded_from(ids, key_valid, from)?; // (B, L − from, V)
        let dims = full.dims3()?;
        if dims != (b, lt, v) {
            return Err(Error::msg(format!("denoiser returned logits of shape {dims:?}, expected ({b}, {lt}, {v})")));
        }
        let idx: Vec<u32> = positions.iter().map(|&(r, j)| (r * lt + j - from) as u32).collect();
        let idx = Tensor::from_vec(idx, positions.len(), full.device())?;
        Ok(full.reshape((b * lt, v))?.index_select(&idx, 0)?.to_dtype(DType::F32)?) // (R, V)
    }

    /// [`Denoiser::logits_at`] with a prefix KV cache (diffusion decoding with
    /// `eval.cache = "prefix"`): columns `0..prefix[b]` of row b (its padding, prompt and committed
    /// earlier blocks) are its cacheable prefix. A row whose prefix differs from the one `cache`
    /// holds for it (the first step of a block) is run whole and its prefix's keys and values
    /// kept; any other row runs only its columns from the prefix on (and any asked for before
    /// it), attending to its cached prefix keys. See [`PrefixCache`] for what this approximates.
    /// The rows of `cache` are the rows of `ids`: drop finished rows with
    /// [`PrefixCache::select_rows`]. The default ignores the cache: every row is run whole
    /// ([`Denoiser::logits_at`], exact).
    fn logits_at_prefix(&self, ids: &Tensor, key_valid: Option<&[Vec<bool>]>, positions: &[(usize, usize)], prefix: &[usize], cache: &mut PrefixCache) -> Result<Tensor> {
        let _ = (prefix, cache);
        self.logits_at(ids, key_valid, positions)
    }
}

/// The prefix KV cache of one decoding batch for [`Denoiser::logits_at_prefix`]
/// (`eval.cache = "prefix"`, Fast-dLLM's prefix cache): per row b, the keys and values of its
/// columns `0..cached[b]` as the pass that last refreshed the row computed them.
///
/// Reusing them is **exact** when no prefix column attends to a later one (a causal reading, or
/// a block-causal model whose prefix never sees the block), and **approximate** for a
/// full-attention model, whose prefix keys and values would change as the canvas fills in, and
/// for a time-conditioned model under any reading (every column carries the row's t, which
/// falls as the canvas fills in: the prefix was computed at the t of its refresh); the
/// cache is refreshed at the first step of every block. [`ModelDenoiser`] holds the keys and
/// values; a denoiser without a cache leaves it empty.
#[derive(Debug, Clone, Default)]
pub struct PrefixCache {
    /// Keys and values of every row, (B, Hkv, C, Dh) per layer, C = the longest cached prefix;
    /// the columns of row b from `cached[b]` on are stale or zero and hidden from its queries.
    kv: Option<KvCache>,
    /// Per row, the cached prefix length; None before its first pass.
    cached: Vec<Option<usize>>,
    /// Query columns (rows × columns) run through the model under this cache.
    query_columns: usize,
    /// Rows run whole so far (a refreshed prefix each).
    refreshes: usize,
    /// Rows whose cache was extended by a committed block instead (block decoding).
    extensions: usize,
}

impl PrefixCache {
    /// Per row, the prefix length cached (None: nothing yet).
    pub fn cached(&self) -> &[Option<usize>] {
        &self.cached
    }

    /// Query columns (rows × columns of the chunks) the model has run under this cache: B·L
    /// for each whole-row pass, B·(L − first column) for a cached one. A measure of the work the
    /// cache saves (0 for a denoiser without a cache).
    pub fn query_columns(&self) -> usize {
        self.query_columns
    }

    /// Rows run whole (their prefix computed and cached) so far.
    pub fn refreshes(&self) -> usize {
        self.refreshes
    }

    /// Rows whose cache was extended by a committed block rather than refreshed (block
    /// decoding in lockstep; see [`ModelDenoiser`]'s `logits_at_prefix`).
    pub fn extensions(&self) -> usize {
        self.extensions
    }

    /// Keep only the rows `rows`, in that order (the batch's rows after finished items leave).
    pub fn select_rows(&mut self, rows: &[usize]) -> Result<()> {
        if self.cached.is_empty() {
            return Ok(());
        }
        if let Some(&r) = rows.iter().find(|&&r| r >= self.cached.len()) {
            return Err(Error::msg(format!("prefix cache: row {r} of a batch of {}", self.cached.len())));
        }
        self.cached = rows.iter().map(|&r| self.cached[r]).collect();
        if let Some(kv) = &self.kv {
            self.kv = Some(kv.select_rows(rows)?);
        }
        Ok(())
    }
}

/// Check that every (row, column) of `positions` lies in a (b, l) batch.
fn check_positions(positions: &[(usize, usize)], b: usize, l: usize) -> Result<()> {
    match positions.iter().find(|&&(r, j)| r >= b || j >= l) {
        Some(&(r, j)) => Err(Error::msg(format!("logits asked at ({r}, {j}) of a ({b}, {l}) batch"))),
        None => Ok(()),
    }
}

/// A [`Llama`] seen as a [`Denoiser`]: inference forward pass (no dropout) under a
/// [`ReadAttention`].
///
/// Full attention for diffusion models, causal for AR models; an `Annealed` mode is taken at the
/// reading's step with the mask drawn from its (seed, step) — the Bernoulli future-key mask at
/// this padded batch length: the same law as training's mask at that step, not its exact draw,
/// and shifted by each row's left padding, so a partly annealed reading depends on how prompts
/// are batched (full and causal readings do not).
///
/// A time-conditioned model ([`Llama::time_conditioned`]) is given each row's diffusion time
/// when [`ModelDenoiser::time`] is set ([`ModelDenoiser::timed`]): t = (mask tokens among the
/// row's last `canvas` columns) / `canvas` ([`ModelDenoiser::row_times`]), recomputed from the ids
/// at every call and given to every column of the row (a chunk pass too).
#[derive(Debug, Clone, Copy)]
pub struct ModelDenoiser<'a> {
    /// The model.
    pub model: &'a Llama,
    /// How queries attend to keys.
    pub read: ReadAttention,
    /// (mask id, canvas length): give the model each row's time from its mask count; None: no
    /// time input.
    pub time: Option<(u32, usize)>,
}

impl<'a> ModelDenoiser<'a> {
    /// Wrap `model` with attention `mode` at its end state (an annealed mode: full attention).
    pub fn new(model: &'a Llama, mode: AttentionMode) -> Self {
        Self { model, read: ReadAttention::end_of(mode), time: None }
    }

    /// Wrap `model` read under `read`.
    pub fn reading(model: &'a Llama, read: ReadAttention) -> Self {
        Self { model, read, time: None }
    }

    /// The same denoiser giving the model each row's diffusion time: the fraction of `mask_id`
    /// tokens among its last `canvas` columns (a time-conditioned model's decoding).
    pub fn timed(self, mask_id: u32, canvas: usize) -> Self {
        Self { time: Some((mask_id, canvas)), ..self }
    }

    /// The diffusion time of each row of `ids` (B, L): the mask tokens among its last `canvas`
    /// columns (all L when `canvas` ≥ L) over their number; 0 for an empty canvas.
    pub fn row_times(ids: &Tensor, mask_id: u32, canvas: usize) -> Result<Vec<f32>> {
        let rows: Vec<Vec<u32>> = ids.to_vec2()?;
        Ok(rows
            .iter()
            .map(|r| {
                let c = canvas.min(r.len());
                let masked = r[r.len() - c..].iter().filter(|&&x| x == mask_id).count();
                if c == 0 {
                    0.0
                } else {
                    masked as f32 / c as f32
                }
            })
            .collect())
    }
}

impl ModelDenoiser<'_> {
    /// The time input (B, `cols`) f32 on the model's device for rows with times `t`: every
    /// column of row b carries `t[b]`.
    fn time_tensor(t: &[f32], cols: usize, dev: &candle_core::Device) -> Result<Tensor> {
        let b = t.len();
        Ok(Tensor::from_vec(t.to_vec(), (b, 1), dev)?.broadcast_as((b, cols))?.contiguous()?) // (B, cols)
    }

    /// The per-row times of `ids` when this denoiser gives them ([`ModelDenoiser::time`]).
    fn times_of(&self, ids: &Tensor) -> Result<Option<Vec<f32>>> {
        self.time.map(|(mask_id, canvas)| Self::row_times(ids, mask_id, canvas)).transpose()
    }

    /// Check a (b, l) batch and its key-padding mask against the model.
    fn check(&self, b: usize, l: usize, key_valid: Option<&[Vec<bool>]>) -> Result<()> {
        if l > self.model.cfg.max_position_embeddings {
            return Err(Error::msg(format!(
                "sequence of {l} tokens exceeds the model's {} positions",
                self.model.cfg.max_position_embeddings
            )));
        }
        if let Some(kv) = key_valid {
            if kv.len() != b || kv.iter().any(|row| row.len() != l) {
                return Err(Error::msg(format!("key-padding mask does not match the ({b}, {l}) batch")));
            }
        }
        Ok(())
    }

    /// The attention bias of a whole-sequence pass of length `l` under the reading, with the pad
    /// keys of `key_valid` hidden, or None when nothing is hidden. With padding under full
    /// attention the bias is (B, 1, 1, L): the pad keys are hidden from every query, and a pad
    /// query (whose output is unused, and which no real query sees) attends to the real keys
    /// instead of to nothing, so every real position computes what it would with the (B, 1, L, L)
    /// bias, built and copied at B·L entries instead of B·L². Other readings: (B, 1, L, L), a pad
    /// query seeing nothing ([`EmptyRow::Hidden`]), assembled on the device from the reading's
    /// (L, L) visibility and the (B, L) key mask ([`split_bias`]).
    fn full_bias(&self, l: usize, key_valid: Option<&[Vec<bool>]>) -> Result<Option<Tensor>> {
        let (step, seed) = (self.read.step, self.read.seed);
        let mode = self.read.mode.at_step(step);
        let has_pad = key_valid.is_some_and(|kv| kv.iter().any(|row| row.iter().any(|&v| !v)));
        let (dtype, dev) = (self.model.dtype, &self.model.device);
        Ok(match key_valid {
            // left-padded prompts: no key is exempt, unlike training's right padding
            Some(kv) if has_pad && mode == AttentionMode::Full => Some(additive_bias(&vec![true; l], (1, l), Some(kv), EmptyRow::Hidden, dtype, dev)?),
            Some(kv) if has_pad => Some(split_bias(&visibility(mode, l, step, seed), (l, l), kv, dtype, dev)?),
            _ => attention_bias(mode, step, seed, l, None, dtype, dev)?,
        }) // (B|1, 1, L|1, L)
    }

    /// The hidden states (B, L, D) of a whole-row pass over `ids` under the reading, its pad keys
    /// hidden, each row given its time when this denoiser gives times.
    fn hidden_whole(&self, ids: &Tensor, key_valid: Option<&[Vec<bool>]>) -> Result<Tensor> {
        let l = ids.dim(1)?;
        let bias = self.full_bias(l, key_valid)?;
        let time = self.times_of(ids)?.map(|t| Self::time_tensor(&t, l, &self.model.device)).transpose()?; // (B, L)
        let ids = ids.to_device(&self.model.device)?;
        Ok(self.model.hidden_at(&ids, bias.as_ref(), None, time.as_ref(), &Fwd::default())?) // (B, L, D)
    }

    /// The LM head on the rows `idx` of the hidden states `h` (N, D): (R, V) f32.
    fn head_rows(&self, h: &Tensor, idx: Vec<u32>) -> Result<Tensor> {
        let n = idx.len();
        let idx = Tensor::from_vec(idx, n, h.device())?;
        let rows = h.index_select(&idx, 0)?; // (R, D)
        Ok(self.model.logits(&rows, &Fwd::default())?.to_dtype(DType::F32)?) // (R, V)
    }
}

impl Denoiser for ModelDenoiser<'_> {
    fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        self.logits_padded(ids, None)
    }

    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }

    fn supports_padding(&self) -> bool {
        true
    }

    fn logits_padded(&self, ids: &Tensor, key_valid: Option<&[Vec<bool>]>) -> Result<Tensor> {
        self.logits_padded_from(ids, key_valid, 0)
    }

    fn logits_padded_from(&self, ids: &Tensor, key_valid: Option<&[Vec<bool>]>, from: usize) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        if from > l {
            return Err(Error::msg(format!("logits from column {from} of a length-{l} batch")));
        }
        self.check(b, l, key_valid)?;
        let h = self.hidden_whole(ids, key_valid)?; // (B, L, D)
        let h = if from == 0 { h } else { h.narrow(1, from, l - from)?.contiguous()? }; // (B, L − from, D)
        let out = self.model.logits(&h, &Fwd::default())?; // (B, L − from, V)
        Ok(out.to_dtype(DType::F32)?)
    }

    /// The hidden states of the asked positions only go through the LM head: R rows, not B·L.
    fn logits_at(&self, ids: &Tensor, key_valid: Option<&[Vec<bool>]>, positions: &[(usize, usize)]) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        self.check(b, l, key_valid)?;
        check_positions(positions, b, l)?;
        let h = self.hidden_whole(ids, key_valid)?.reshape((b * l, ()))?; // (B·L, D)
        self.head_rows(&h, positions.iter().map(|&(r, j)| (r * l + j) as u32).collect())
    }

    /// Rows whose prefix moved (or that have none cached) run whole through
    /// [`Llama::hidden_capture`], and their prefix columns' keys and values are kept; the other
    /// rows run, through [`Llama::hidden_over_prefix`], only the columns from q0 = the least of
    /// their prefix starts and asked columns, each row b attending to its cached columns
    /// `0..prefix[b]` (minus padding) and to the chunk's columns from `prefix[b]` on, under the
    /// reading's visibility between the absolute columns. The LM head runs on the asked rows only.
    fn logits_at_prefix(&self, ids: &Tensor, key_valid: Option<&[Vec<bool>]>, positions: &[(usize, usize)], prefix: &[usize], cache: &mut PrefixCache) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        self.check(b, l, key_valid)?;
        check_positions(positions, b, l)?;
        if prefix.len() != b || prefix.iter().any(|&p| p > l) {
            return Err(Error::msg(format!("prefix lengths {prefix:?} do not fit a ({b}, {l}) batch")));
        }
        // Under a block reading the prompt is one group with the first block and attends to it,
        // so its keys move while that block fills in: nothing is cached before the first block
        // is committed, and from then on the cache is exact (no group sees a later one).
        let prefix: Vec<usize> = match self.read.mode {
            AttentionMode::Blocks { size, canvas } => {
                let first_group_end = l.saturating_sub(canvas) + size;
                prefix.iter().map(|&p| if p < first_group_end { 0 } else { p }).collect()
            }
            _ => prefix.to_vec(),
        };
        let prefix = &prefix[..];
        if cache.cached.is_empty() {
            cache.cached = vec![None; b];
        }
        if cache.cached.len() != b {
            return Err(Error::msg(format!("prefix cache of {} rows for a batch of {b}", cache.cached.len())));
        }
        let (dtype, dev) = (self.model.dtype, &self.model.device);
        // each row's time from its whole row, whichever columns of it run
        let times = self.times_of(ids)?;
        let time_of = |rows: &[usize], cols: usize| -> Result<Option<Tensor>> {
            times.as_ref().map(|t| Self::time_tensor(&rows.iter().map(|&r| t[r]).collect::<Vec<_>>(), cols, dev)).transpose() // (rows, cols)
        };
        let ids = ids.to_device(dev)?;
        let rows_of = |rows: &[usize]| -> Result<Tensor> {
            Ok(if rows.len() == b { ids.clone() } else { ids.index_select(&Tensor::from_vec(rows.iter().map(|&r| r as u32).collect(), rows.len(), dev)?, 0)? })
        };
        // Block decoding appends the newly committed block to the cache instead of rerunning the
        // whole row: when every row's cache ends at the same column c > 0 and every row's prefix
        // moved on to the same p > c (a batch decoding in lockstep), columns c..p run over the
        // cache under the reading and their keys and values are appended — exact, since no
        // column sees a later group. Otherwise a moved prefix is refreshed by a whole-row pass.
        if let (AttentionMode::Blocks { .. }, Some(Some(c)), Some(old)) = (self.read.mode, cache.cached.first().copied(), cache.kv.as_ref()) {
            let p = prefix[0];
            if c > 0 && p > c && old.len == c && cache.cached.iter().all(|&x| x == Some(c)) && prefix.iter().all(|&x| x == p) {
                let n = p - c;
                let (step, seed) = (self.read.step, self.read.seed);
                let full = visibility(self.read.mode.at_step(step), l, step, seed);
                let vis: Vec<bool> = (c..p).flat_map(|i| (0..p).map(move |j| (i, j))).map(|(i, j)| full[i * l + j]).collect(); // (n, p)
                let bias = match key_valid {
                    Some(kv) => split_bias(&vis, (n, p), &kv.iter().map(|row| row[..p].to_vec()).collect::<Vec<_>>(), dtype, dev)?,
                    None => additive_bias(&vis, (n, p), None, EmptyRow::Hidden, dtype, dev)?,
                }; // (B | 1, 1, n, p)
                let all: Vec<usize> = (0..b).collect();
                let chunk = ids.narrow(1, c, n)?.contiguous()?; // (B, n)
                let (_, extended) = self.model.hidden_extending(&chunk, old, Some(&bias), time_of(&all, n)?.as_ref())?;
                cache.kv = Some(extended);
                cache.cached = vec![Some(p); b];
                cache.query_columns += b * n;
                cache.extensions += b;
            }
        }
        let (fresh, kept): (Vec<usize>, Vec<usize>) = (0..b).partition(|&r| cache.cached[r] != Some(prefix[r]));
        // slot[r]: row r's index among the fresh rows (Ok) or among the kept rows (Err).
        let mut slot: Vec<std::result::Result<usize, usize>> = vec![Ok(0); b];
        fresh.iter().enumerate().for_each(|(f, &r)| slot[r] = Ok(f));
        kept.iter().enumerate().for_each(|(k, &r)| slot[r] = Err(k));
        // Each position's row in the stacked hidden states [whole rows (L each); chunk rows (lq each)].
        let mut at: Vec<Option<u32>> = vec![None; positions.len()];
        let mut hidden: Vec<Tensor> = Vec::with_capacity(2);
        let mut new_kv: Option<KvCache> = None;
        if !fresh.is_empty() {
            let kv: Option<Vec<Vec<bool>>> = key_valid.map(|kv| fresh.iter().map(|&r| kv[r].clone()).collect());
            let bias = self.full_bias(l, kv.as_deref())?;
            let time = time_of(&fresh, l)?; // (F, L)
            let (h, kvc) = self.model.hidden_capture(&rows_of(&fresh)?, bias.as_ref(), time.as_ref())?; // (F, L, D)
            let c = fresh.iter().map(|&r| prefix[r]).max().unwrap_or(0);
            new_kv = Some(kvc.narrow_columns(c)?);
            for (p, &(r, j)) in positions.iter().enumerate() {
                if let Ok(f) = slot[r] {
                    at[p] = Some((f * l + j) as u32);
                }
            }
            hidden.push(h.reshape((fresh.len() * l, ()))?);
            cache.query_columns += fresh.len() * l;
            cache.refreshes += fresh.len();
        }
        if !kept.is_empty() {
            let old = cache.kv.as_ref().ok_or_else(|| Error::msg("prefix cache: rows marked cached but no keys held"))?;
            let past = if kept.len() == b { old.clone() } else { old.select_rows(&kept)? };
            let c = past.len;
            // The chunk starts at the least prefix start or asked column of the kept rows.
            let mut q0 = kept.iter().map(|&r| prefix[r]).min().unwrap_or(l);
            q0 = positions.iter().filter(|p| slot[p.0].is_err()).map(|p| p.1).fold(q0, usize::min);
            let lq = l - q0;
            if lq > 0 {
                let t = c + lq;
                // Row r sees its cached columns before prefix[r] and the chunk's from prefix[r] on (pads hidden).
                let valid: Vec<Vec<bool>> = kept
                    .iter()
                    .map(|&r| {
                        let real = |j: usize| key_valid.is_none_or(|kv| kv[r][j]);
                        let cached = (0..c).map(|j| j < prefix[r] && real(j));
                        cached.chain((q0..l).map(|j| j >= prefix[r] && real(j))).collect()
                    })
                    .collect();
                let (step, seed) = (self.read.step, self.read.seed);
                let mode = self.read.mode.at_step(step);
                let bias = if mode == AttentionMode::Full {
                    additive_bias(&vec![true; t], (1, t), Some(&valid), EmptyRow::Hidden, dtype, dev)? // (K, 1, 1, T)
                } else {
                    // The reading's visibility between absolute columns: query q0 + i, key j (cached) or q0 + j' (chunk).
                    let full = visibility(mode, l, step, seed);
                    let mut vis = Vec::with_capacity(lq * t);
                    for i in q0..l {
                        vis.extend((0..c).map(|j| full[i * l + j]));
                        vis.extend((q0..l).map(|j| full[i * l + j]));
                    }
                    split_bias(&vis, (lq, t), &valid, dtype, dev)? // (K, 1, lq, T)
                };
                let chunk = rows_of(&kept)?.narrow(1, q0, lq)?.contiguous()?; // (K, lq)
                let time = time_of(&kept, lq)?; // (K, lq)
                let h = self.model.hidden_over_prefix(&chunk, &past, q0, Some(&bias), time.as_ref())?; // (K, lq, D)
                let base = fresh.len() * l;
                for (p, &(r, j)) in positions.iter().enumerate() {
                    if let Err(k) = slot[r] {
                        at[p] = Some((base + k * lq + j - q0) as u32);
                    }
                }
                hidden.push(h.reshape((kept.len() * lq, ()))?);
                cache.query_columns += kept.len() * lq;
            }
        }
        // The cache after this pass: the fresh rows' new prefixes, the kept rows' old ones.
        if let Some(fkv) = new_kv {
            cache.kv = Some(match (&cache.kv, kept.is_empty()) {
                (Some(old), false) => {
                    let c = old.len.max(fkv.len);
                    let stacked = KvCache::cat_rows(&old.pad_columns(c)?, &fkv.pad_columns(c)?)?; // (B + F) rows
                    let order: Vec<usize> = (0..b).map(|r| slot[r].map_or(r, |f| b + f)).collect();
                    stacked.select_rows(&order)?
                }
                _ => fkv,
            });
            for &r in &fresh {
                cache.cached[r] = Some(prefix[r]);
            }
        }
        let v = self.model.cfg.vocab_size;
        if positions.is_empty() {
            return Ok(Tensor::zeros((0, v), DType::F32, dev)?);
        }
        let idx: Vec<u32> = at.into_iter().collect::<Option<_>>().ok_or_else(|| Error::msg("prefix cache: a position was not computed"))?;
        let h = if hidden.len() == 1 { hidden.remove(0) } else { Tensor::cat(&hidden, 0)? }; // (N, D)
        self.head_rows(&h, idx)
    }
}

/// Check the sampling knobs shared by every sampler.
pub(crate) fn validate_sampling(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> Result<()> {
    if !temperature.is_finite() || temperature < 0.0 {
        return Err(Error::config("eval.temperature", format!("must be finite and ≥ 0, got {temperature}")));
    }
    if top_k == Some(0) {
        return Err(Error::config("eval.top_k", "must be ≥ 1 when set"));
    }
    if let Some(p) = top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(Error::config("eval.top_p", format!("must be in (0, 1], got {p}")));
        }
    }
    Ok(())
}

/// Choose a token from one row of logits (length V).
///
/// Temperature 0: the argmax (lowest index on ties). Otherwise: softmax(logits / temperature),
/// keep the `top_k` most probable tokens (ties broken by lower index), then the smallest prefix of
/// those, by decreasing probability, whose mass reaches `top_p` (at least one token), renormalise
/// and draw one with a single `rng.random::<f64>()`.
///
/// Returns the token and its **confidence**: its probability under the model's plain softmax
/// (temperature 1, no filtering), as LLaDA does, so a confidence threshold means the same thing at
/// every temperature. Errors on an empty row or non-finite logits.
pub fn pick_token<R: Rng>(
    row: &[f32],
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
    rng: &mut R,
) -> Result<(u32, f32)> {
    if row.is_empty() {
        return Err(Error::msg("empty logits row"));
    }
    if row.iter().any(|x| !x.is_finite()) {
        return Err(Error::msg("non-finite logits"));
    }
    if top_k == Some(0) {
        return Err(Error::config("eval.top_k", "must be ≥ 1 when set"));
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let prob_of = |tok: usize| (((row[tok] - max) as f64).exp() / z) as f32;
    if temperature == 0.0 {
        // First index of the maximum.
        let tok = row.iter().position(|&x| x == max).unwrap_or(0);
        return Ok((tok as u32, prob_of(tok)));
    }
    // Scaled, unnormalised weights exp((x - max) / T) ∈ (0, 1].
    let w: Vec<f64> = row.iter().map(|&x| ((x - max) as f64 / temperature).exp()).collect();
    // Order: higher weight first, then lower index (a total order, so the result is deterministic).
    let cmp = |a: &usize, b: &usize| w[*b].total_cmp(&w[*a]).then(a.cmp(b));
    let mut cand: Vec<usize> = (0..row.len()).collect();
    if let Some(k) = top_k {
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, cmp);
            cand.truncate(k);
        }
    }
    if let Some(p) = top_p {
        if p < 1.0 {
            cand.sort_by(cmp);
            let total: f64 = cand.iter().map(|&i| w[i]).sum();
            let mut acc = 0.0;
            let mut keep = cand.len();
            for (n, &i) in cand.iter().enumerate() {
                acc += w[i] / total;
                if acc >= p {
                    keep = n + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
    }
    cand.sort_unstable();
    let total: f64 = cand.iter().map(|&i| w[i]).sum();
    let u = rng.random::<f64>() * total;
    let mut acc = 0.0;
    let mut tok = cand[cand.len() - 1];
    for &i in &cand {
        acc += w[i];
        if u < acc {
            tok = i;
            break;
        }
    }
    Ok((tok as u32, prob_of(tok)))
}

/// [`pick_token`] at temperature 0 for every row of `logits` (R, V) (any float dtype, on any
/// device), computed on the device in f32: the argmax (**first** index of the maximum, as
/// `pick_token`, whatever order the device reduces in) and its confidence, the plain-softmax
/// probability 1 / Σ exp(x − max). Only the (R,) ids and (R,) confidences are copied to the host,
/// in one copy. Agrees with `pick_token` on the same f32 rows: same ids, confidences within
/// f32 rounding of its f64 sum. Errors on a non-finite confidence (NaN or infinite logits).
pub fn greedy_rows(logits: &Tensor) -> Result<Vec<(u32, f32)>> {
    let (r, v) = logits.dims2()?;
    if r == 0 {
        return Ok(Vec::new());
    }
    if v == 0 {
        return Err(Error::msg("empty logits row"));
    }
    if v > 1 << 24 {
        return Err(Error::msg(format!("greedy_rows: a vocabulary of {v} does not fit f32 indices")));
    }
    let dev = logits.device();
    let x = logits.to_dtype(DType::F32)?; // (R, V)
    let max = x.max_keepdim(D::Minus1)?; // (R, 1)
    let conf = x.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.recip()?; // (R, 1)
    // The first index of the maximum: the least column index among those equal to it.
    let cols = Tensor::arange(0f32, v as f32, dev)?.reshape((1, v))?.broadcast_as((r, v))?; // (R, V)
    let past = Tensor::new(&[v as f32], dev)?.reshape((1, 1))?.broadcast_as((r, v))?; // (R, V)
    let first = x.broadcast_eq(&max)?.where_cond(&cols, &past)?.min_keepdim(D::Minus1)?; // (R, 1)
    let both = Tensor::cat(&[&first, &conf], 1)?.to_vec2::<f32>()?; // R rows of (id, confidence)
    both.into_iter()
        .map(|row| {
            let (id, c) = (row[0], row[1]);
            if !c.is_finite() || id >= v as f32 {
                return Err(Error::msg(format!("non-finite confidence {c}: the logits hold NaN or infinity")));
            }
            Ok((id as u32, c))
        })
        .collect()
}
