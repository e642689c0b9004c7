//! Iterative denoising for masked diffusion LMs (LLaDA / DiffuLLaMA / Fast-dLLM style).
//!
//! Start from `prompt + N` mask tokens (N = `max_new_tokens`, the canvas). Each step runs one
//! forward pass, predicts a candidate token for every eligible masked canvas position, and commits
//! some of them; committed tokens are never changed again, and the prompt is never changed.
//!
//! ## Rules
//! - **shift**: with `shift = true` the candidate for position p is read from output row p − 1
//!   (the model was trained to predict token i+1 at output i); without shift from row p. A shifted
//!   sampler needs a non-empty prompt. Run a sampler with the convention its model was trained with.
//! - **Candidates**: argmax at temperature 0 (first index of the maximum, chosen on the device:
//!   [`super::greedy_rows`]), else drawn after temperature, top-k and top-p on the host
//!   ([`super::pick_token`]). The mask token is excluded (its logit is set to −1e30).
//!   **Confidence** = the candidate's probability under the model's plain softmax (temperature 1,
//!   unfiltered, mask token excluded). The output reports each token's confidence at the step
//!   that committed it ([`DiffusionOutput::confidence`]).
//! - **Blocks** (semi-autoregressive, LLaDA): with `block_len = Some(b)` the canvas is cut into
//!   ⌈N/b⌉ blocks (the last may be shorter); only masked positions of the current block are
//!   eligible, and block k is finished before block k+1 starts. Without it there is one block.
//! - **Step schedule** (LLaDA): the `steps` T are split over the blocks, T / n_blocks each, the
//!   remainder going one extra step to the first blocks (T ≥ n_blocks is required). A block of
//!   length n with s steps commits k = n / s tokens per step, the remainder n mod s one extra to
//!   the first steps. If s > n the block uses only n steps (a step that would commit nothing is
//!   skipped, so it costs no forward pass). See [`plan`].
//! - **Strategies**: `LowConfidence` commits the k most confident eligible positions (ties: leftmost
//!   first); `Random` k eligible positions drawn uniformly without replacement from the seeded
//!   generator; `Threshold(τ)` (Fast-dLLM) every eligible position with confidence > τ, and the most
//!   confident one when none is — it ignores the step schedule and runs until the block is done,
//!   so it costs at most one forward pass per canvas token.
//! - **eos**: the output is the canvas up to, not including, the first eos. With `early_stop`
//!   (default) an item stops as soon as an eos is committed and every canvas position before it is
//!   committed: the output is then fixed, so this changes only the number of forward passes and the
//!   commit order, never the tokens.
//! - **Randomness**: item `first_item + i` of a call draws, at its s-th forward pass, from
//!   `rng_for(seed, Purpose::Sampler, first_item + i, s)`: first the candidates of its eligible
//!   positions in increasing position order (temperature > 0 only), then the `Random` choice. The
//!   draws do not depend on how items are batched.
//! - **Prefix cache** (`cache = CacheKind::Prefix`, `eval.cache = "prefix"`; Fast-dLLM's prefix
//!   cache): at the first step of each block an item's row runs whole, as without the cache, and
//!   the keys and values of its columns before the block (padding, prompt, earlier committed
//!   blocks) are kept; the block's other steps run only the columns from the block start to the
//!   end of the canvas (with shift also the column before the block while the block's first
//!   position is masked), attending to the cached prefix keys (pad columns hidden) and to each
//!   other under the model's reading (full attention for a diffusion model; a causal or annealed
//!   reading keeps its visibility between the absolute columns).
//!   [`super::Denoiser::logits_at_prefix`], [`super::PrefixCache`]. Exact when the prefix
//!   never attends to later columns (a causal reading: the outputs equal the uncached ones up to
//!   rounding); approximate under full attention, where the prefix's keys and values would change
//!   as the canvas fills in, and for a time-conditioned model (`objective.time_conditioning`:
//!   the prefix columns carry the row's t, which falls as the canvas fills in) — its accuracy cost is measured by evaluating with and without it.
//!   With one block only the first step runs whole. A refresh is per item, so items of a batch
//!   at different blocks (the `threshold` strategy) are decoded as they would be alone. Under a
//!   block-diffusion model's block-causal reading the cache is exact, and when the batch moves to
//!   its next block together the committed block's columns are appended to the cache (one pass
//!   over those columns) instead of rerunning the whole row.
//! - **Batching**: items are processed in groups of at most `batch_size`, in order. When the
//!   denoiser supports padding ([`super::Denoiser::supports_padding`]) a group is any `batch_size`
//!   consecutive items, left-padded to the longest prompt; otherwise items are first grouped by
//!   prompt length (equal lengths only, no padding). An item that finishes leaves the batch.

use super::{greedy_rows, pick_token, validate_sampling, Denoiser, PrefixCache};
use crate::config::EvalConfig;
use crate::rng::{rng_for, ChaCha8Rng, Purpose};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Logit added to the mask token so it is never a candidate (finite: `pick_token` rejects infinities).
const MASK_LOGIT: f32 = -1e30;

/// How the positions to commit at a step are chosen among the eligible masked positions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    /// The k most confident (LLaDA's `low_confidence` remasking).
    LowConfidence,
    /// k positions uniformly at random (seeded).
    Random,
    /// Every position with confidence > τ, at least the most confident one (Fast-dLLM).
    Threshold(f64),
}

impl Strategy {
    /// The strategy a config names; `threshold` takes τ (`eval.threshold`).
    pub fn from_config(kind: StrategyKind, threshold: f64) -> Self {
        match kind {
            StrategyKind::LowConfidence => Strategy::LowConfidence,
            StrategyKind::Random => Strategy::Random,
            StrategyKind::Threshold => Strategy::Threshold(threshold),
        }
    }
}

/// The config spelling of a [`Strategy`] (`eval.strategy`): `low_confidence`, `random` or
/// `threshold` (whose τ is `eval.threshold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// [`Strategy::LowConfidence`].
    #[default]
    LowConfidence,
    /// [`Strategy::Random`].
    Random,
    /// [`Strategy::Threshold`].
    Threshold,
}

/// Whether diffusion decoding keeps a KV cache of the prefix (`eval.cache`): `none` (every step
/// runs the whole sequence) or `prefix` (Fast-dLLM's prefix cache: the first step of each block
/// runs the whole sequence and keeps the keys and values of the columns before the block —
/// padding, prompt, earlier committed blocks; the block's other steps run only the columns from
/// the block on, attending to those cached keys). See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheKind {
    /// No cache: every step runs every column.
    #[default]
    None,
    /// The prefix KV cache ([`super::PrefixCache`]).
    Prefix,
}

impl CacheKind {
    /// The config spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheKind::None => "none",
            CacheKind::Prefix => "prefix",
        }
    }
}

/// One semi-autoregressive block of the canvas and its commit schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPlan {
    /// First canvas position (0-based, relative to the end of the prompt).
    pub start: usize,
    /// Number of canvas positions.
    pub len: usize,
    /// Tokens committed at each step of this block (sums to `len`); ignored by `Threshold`.
    pub commits: Vec<usize>,
}

/// The block and step schedule for a canvas of `n` tokens, `steps` denoising steps and optional
/// block length (see the module docs for the rule). Errors when `steps` or `block_len` is 0 or
/// when there are fewer steps than blocks.
pub fn plan(n: usize, steps: usize, block_len: Option<usize>) -> Result<Vec<BlockPlan>> {
    if steps == 0 {
        return Err(Error::config("eval.steps", "must be ≥ 1"));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let b = match block_len {
        Some(0) => return Err(Error::config("eval.block_len", "must be ≥ 1 when set")),
        Some(b) => b.min(n),
        None => n,
    };
    let n_blocks = n.div_ceil(b);
    if steps < n_blocks {
        return Err(Error::config(
            "eval.steps",
            format!("{steps} steps cannot cover {n_blocks} blocks of {b} tokens (need ≥ 1 step per block)"),
        ));
    }
    let mut out = Vec::with_capacity(n_blocks);
    for k in 0..n_blocks {
        let start = k * b;
        let len = b.min(n - start);
        let s = (steps / n_blocks + usize::from(k < steps % n_blocks)).min(len);
        let (base, rem) = (len / s, len % s);
        let commits = (0..s).map(|i| base + usize::from(i < rem)).collect();
        out.push(BlockPlan { start, len, commits });
    }
    Ok(out)
}

/// Iterative-denoising sampler; see the module docs for every rule.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffusionSampler {
    /// Denoising steps T (≥ 1; ≥ the number of blocks).
    pub steps: usize,
    /// Canvas length N: mask tokens appended to the prompt.
    pub max_new_tokens: usize,
    /// Which positions to commit at each step.
    pub strategy: Strategy,
    /// Semi-autoregressive block length; `None` = one block.
    pub block_len: Option<usize>,
    /// Sampling temperature (0 = argmax).
    pub temperature: f64,
    /// Keep only the k most probable tokens when sampling.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most probable tokens with mass ≥ p when sampling.
    pub top_p: Option<f64>,
    /// Read the prediction for position p from output p − 1.
    pub shift: bool,
    /// The mask token id.
    pub mask_id: u32,
    /// The end-of-sequence token id.
    pub eos_id: u32,
    /// Seed of every random draw.
    pub seed: u64,
    /// Stop an item once its output is fixed by a committed eos (default true).
    pub early_stop: bool,
    /// Items per forward pass (≥ 1).
    pub batch_size: usize,
    /// The prefix KV cache (default [`CacheKind::None`]).
    pub cache: CacheKind,
}

/// What the sampler returns for one item.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffusionOutput {
    /// Generated ids, up to and excluding the first eos.
    pub tokens: Vec<u32>,
    /// The commit confidence of each token of `tokens`, in output order: the candidate's
    /// probability under the plain softmax (mask token excluded) at the step that committed it.
    pub confidence: Vec<f32>,
    /// Whether an eos ended the output.
    pub hit_eos: bool,
    /// Forward passes this item took part in (NFE).
    pub nfe: usize,
    /// Per step, the positions committed (indices into `sequence`, i.e. prompt length + canvas
    /// offset), in the order the strategy ranked them.
    pub order: Vec<Vec<usize>>,
    /// Final prompt + canvas (positions never committed still hold `mask_id`).
    pub sequence: Vec<u32>,
}

/// Per-item decoding state inside a group.
struct ItemState {
    /// Index into the caller's prompt slice.
    idx: usize,
    /// Prompt length.
    plen: usize,
    /// Left padding columns.
    pad: usize,
    /// Padded row: pad, prompt, canvas (length L).
    row: Vec<u32>,
    /// Canvas positions committed so far (length N).
    committed: Vec<bool>,
    /// Commit confidence of each canvas position (length N; 0 until committed).
    conf: Vec<f32>,
    /// Current block and step within it.
    block: usize,
    step: usize,
    /// Forward passes so far.
    nfe: usize,
    order: Vec<Vec<usize>>,
    done: bool,
}

impl DiffusionSampler {
    /// A greedy, low-confidence, single-block, unshifted sampler of `max_new_tokens` tokens in
    /// `steps` steps, seed 0, early stop on, one item per forward pass.
    pub fn new(max_new_tokens: usize, steps: usize, mask_id: u32, eos_id: u32) -> Self {
        Self {
            steps,
            max_new_tokens,
            strategy: Strategy::LowConfidence,
            block_len: None,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            shift: false,
            mask_id,
            eos_id,
            seed: 0,
            early_stop: true,
            batch_size: 1,
            cache: CacheKind::None,
        }
    }

    /// The sampler `eval` configures for a model trained with `shift`: steps, canvas length,
    /// strategy, blocks (0 = one block), temperature, top-k/top-p (0 / 1 = off), batch size, cache;
    /// early stop on.
    pub fn from_eval(eval: &EvalConfig, shift: bool, mask_id: u32, eos_id: u32, seed: u64) -> Self {
        Self {
            steps: eval.steps,
            max_new_tokens: eval.max_new_tokens,
            strategy: Strategy::from_config(eval.strategy, eval.threshold),
            block_len: (eval.block_len > 0).then_some(eval.block_len),
            temperature: eval.temperature,
            top_k: (eval.top_k > 0).then_some(eval.top_k),
            top_p: (eval.top_p < 1.0).then_some(eval.top_p),
            shift,
            mask_id,
            eos_id,
            seed,
            early_stop: true,
            batch_size: eval.batch_size,
            cache: eval.cache,
        }
    }

    /// Check the settings (not the prompts).
    pub fn validate(&self) -> Result<()> {
        validate_sampling(self.temperature, self.top_k, self.top_p)?;
        if self.batch_size == 0 {
            return Err(Error::config("eval.batch_size", "must be ≥ 1"));
        }
        if let Strategy::Threshold(tau) = self.strategy {
            if !(0.0..=1.0).contains(&tau) {
                return Err(Error::config("eval.threshold", format!("must be in [0, 1], got {tau}")));
            }
        }
        plan(self.max_new_tokens, self.steps, self.block_len).map(|_| ())
    }

    /// Decode one prompt (item key `item` for the random draws).
    pub fn generate_one<Dn: Denoiser + ?Sized>(&self, d: &Dn, prompt: &[u32], item: u64) -> Result<DiffusionOutput> {
        let mut out = self.generate(d, &[prompt.to_vec()], item)?;
        out.pop().ok_or_else(|| Error::msg("sampler returned no output"))
    }

    /// Decode every prompt; item i uses key `first_item + i` for its random draws. Outputs are in
    /// the order of `prompts`.
    pub fn generate<Dn: Denoiser + ?Sized>(&self, d: &Dn, prompts: &[Vec<u32>], first_item: u64) -> Result<Vec<DiffusionOutput>> {
        self.validate()?;
        let v = d.vocab_size();
        for (name, id) in [("mask_id", self.mask_id), ("eos_id", self.eos_id)] {
            if id as usize >= v {
                return Err(Error::config(format!("model.{name}"), format!("{id} is outside the vocabulary of {v}")));
            }
        }
        for (i, p) in prompts.iter().enumerate() {
            if let Some(&t) = p.iter().find(|&&t| t as usize >= v) {
                return Err(Error::msg(format!("prompt {i}: token {t} is outside the vocabulary of {v}")));
            }
            if self.shift && p.is_empty() {
                return Err(Error::msg(format!("prompt {i} is empty; a shifted sampler needs at least one prompt token")));
            }
        }
        let blocks = plan(self.max_new_tokens, self.steps, self.block_len)?;
        // Groups of item indices.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        if d.supports_padding() {
            let all: Vec<usize> = (0..prompts.len()).collect();
            groups.extend(all.chunks(self.batch_size).map(<[usize]>::to_vec));
        } else {
            let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for (i, p) in prompts.iter().enumerate() {
                by_len.entry(p.len()).or_default().push(i);
            }
            for idxs in by_len.values() {
                groups.extend(idxs.chunks(self.batch_size).map(<[usize]>::to_vec));
            }
        }
        let mut outs: Vec<Option<DiffusionOutput>> = vec![None; prompts.len()];
        for g in &groups {
            for (idx, out) in self.run_group(d, prompts, g, first_item, &blocks)? {
                outs[idx] = Some(out);
            }
        }
        outs.into_iter()
            .enumerate()
            .map(|(i, o)| o.ok_or_else(|| Error::msg(format!("item {i} was not decoded"))))
            .collect()
    }

    /// Is the item's output fixed? (All blocks done, or with early stop: an eos committed with
    /// every canvas position before it committed.)
    fn finished(&self, st: &ItemState, pmax: usize, n_blocks: usize) -> bool {
        if st.block >= n_blocks {
            return true;
        }
        if self.early_stop {
            for c in 0..st.committed.len() {
                if !st.committed[c] {
                    return false;
                }
                if st.row[pmax + c] == self.eos_id {
                    return true;
                }
            }
            return true;
        }
        false
    }

    fn run_group<Dn: Denoiser + ?Sized>(
        &self,
        d: &Dn,
        prompts: &[Vec<u32>],
        group: &[usize],
        first_item: u64,
        blocks: &[BlockPlan],
    ) -> Result<Vec<(usize, DiffusionOutput)>> {
        let n = self.max_new_tokens;
        let v = d.vocab_size();
        let pmax = group.iter().map(|&i| prompts[i].len()).max().unwrap_or(0);
        let l = pmax + n;
        let mut states: Vec<ItemState> = group
            .iter()
            .map(|&idx| {
                let p = &prompts[idx];
                let pad = pmax - p.len();
                // Pad columns hold eos (any in-vocabulary id works: they are hidden from every query).
                let mut row = vec![self.eos_id; pad];
                row.extend_from_slice(p);
                row.extend(std::iter::repeat_n(self.mask_id, n));
                ItemState {
                    idx,
                    plen: p.len(),
                    pad,
                    row,
                    committed: vec![false; n],
                    conf: vec![0.0; n],
                    block: 0,
                    step: 0,
                    nfe: 0,
                    order: Vec::new(),
                    done: blocks.is_empty(),
                }
            })
            .collect();

        let mut no_mask: Option<Tensor> = None;
        let mut cache = PrefixCache::default();
        let mut cached_rows: Vec<usize> = Vec::new(); // the states whose rows `cache` holds, in order
        loop {
            let active: Vec<usize> = (0..states.len()).filter(|&s| !states[s].done).collect();
            if active.is_empty() {
                break;
            }
            if self.cache == CacheKind::Prefix && !cached_rows.is_empty() && cached_rows != active {
                // Items that finished left the batch: drop their rows (`active` ⊆ `cached_rows`, in order).
                let keep: Vec<usize> = active.iter().map(|s| cached_rows.iter().position(|c| c == s).unwrap_or(usize::MAX)).collect();
                cache.select_rows(&keep)?;
            }
            cached_rows.clone_from(&active);
            let a = active.len();
            let flat_ids: Vec<u32> = active.iter().flat_map(|&s| states[s].row.iter().copied()).collect();
            let ids = Tensor::from_vec(flat_ids, (a, l), &Device::Cpu)?; // (A, L)
            let key_valid: Option<Vec<Vec<bool>>> = if active.iter().any(|&s| states[s].pad > 0) {
                Some(active.iter().map(|&s| (0..l).map(|j| j >= states[s].pad).collect()).collect())
            } else {
                None
            };
            // Eligible positions (canvas offsets) per active item, and the (row, column) of the
            // output each reads: column pmax + c, one column left with shift (pmax ≥ 1 is
            // guaranteed then: shifted prompts are non-empty).
            let mut eligible: Vec<Vec<usize>> = Vec::with_capacity(a);
            let mut positions: Vec<(usize, usize)> = Vec::new();
            for (ai, &s) in active.iter().enumerate() {
                let st = &states[s];
                let bp = &blocks[st.block];
                let e: Vec<usize> = (bp.start..bp.start + bp.len).filter(|&c| !st.committed[c]).collect();
                positions.extend(e.iter().map(|&c| (ai, pmax + c - usize::from(self.shift))));
                eligible.push(e);
            }
            // Logits of those positions only: (R, V).
            let sel = match self.cache {
                CacheKind::None => d.logits_at(&ids, key_valid.as_deref(), &positions)?,
                CacheKind::Prefix => {
                    // Each row's prefix: everything before its current block.
                    let prefix: Vec<usize> = active.iter().map(|&s| pmax + blocks[states[s].block].start).collect();
                    d.logits_at_prefix(&ids, key_valid.as_deref(), &positions, &prefix, &mut cache)?
                }
            };
            let dims = sel.dims2()?;
            if dims != (positions.len(), v) {
                return Err(Error::msg(format!("denoiser returned logits of shape {dims:?}, expected ({}, {v})", positions.len())));
            }
            let sel = sel.to_dtype(DType::F32)?;
            // The mask token is never a candidate: committing it would leave the position masked.
            let no_mask = match &no_mask {
                Some(t) => t,
                None => {
                    let mut row = vec![0f32; v];
                    row[self.mask_id as usize] = MASK_LOGIT;
                    no_mask.insert(Tensor::from_vec(row, (1, v), sel.device())?) // (1, V), once per group
                }
            };
            let sel = sel.broadcast_add(no_mask)?.contiguous()?; // (R, V)

            // One generator per active item for this step.
            let mut rngs: Vec<ChaCha8Rng> = active
                .iter()
                .map(|&s| rng_for(self.seed, Purpose::Sampler, first_item + states[s].idx as u64, states[s].nfe as u64))
                .collect();
            let cands: Vec<(u32, f32)> = if self.temperature == 0.0 {
                greedy_rows(&sel)? // on the device; (R,) ids and confidences come back
            } else {
                let table = sel.to_vec2::<f32>()?; // R rows of V
                let mut out = Vec::with_capacity(table.len());
                let mut r = 0usize;
                for (ai, e) in eligible.iter().enumerate() {
                    for _ in e {
                        out.push(pick_token(&table[r], self.temperature, self.top_k, self.top_p, &mut rngs[ai])?);
                        r += 1;
                    }
                }
                out
            };

            let mut r = 0usize;
            for (ai, &s) in active.iter().enumerate() {
                let e = &eligible[ai];
                let c_here = &cands[r..r + e.len()];
                r += e.len();
                let chosen = self.choose(e, c_here, &blocks[states[s].block], states[s].step, &mut rngs[ai]);
                let st = &mut states[s];
                let mut step_order = Vec::with_capacity(chosen.len());
                for &j in &chosen {
                    let c = e[j];
                    st.row[pmax + c] = c_here[j].0;
                    st.conf[c] = c_here[j].1;
                    st.committed[c] = true;
                    step_order.push(st.plen + c);
                }
                st.order.push(step_order);
                st.nfe += 1;
                let bp = &blocks[st.block];
                if (bp.start..bp.start + bp.len).all(|c| st.committed[c]) {
                    st.block += 1;
                    st.step = 0;
                } else {
                    st.step += 1;
                }
                st.done = self.finished(st, pmax, blocks.len());
            }
        }

        Ok(states
            .into_iter()
            .map(|st| {
                let canvas = &st.row[pmax..];
                let mut tokens = Vec::new();
                let mut confidence = Vec::new();
                let mut hit_eos = false;
                for (c, &t) in canvas.iter().enumerate() {
                    if !st.committed[c] {
                        break;
                    }
                    if t == self.eos_id {
                        hit_eos = true;
                        break;
                    }
                    tokens.push(t);
                    confidence.push(st.conf[c]);
                }
                let sequence = st.row[st.pad..].to_vec();
                (st.idx, DiffusionOutput { tokens, confidence, hit_eos, nfe: st.nfe, order: st.order, sequence })
            })
            .collect())
    }

    /// Which of the eligible positions (indices into `e`) to commit this step, ranked.
    fn choose(&self, e: &[usize], cands: &[(u32, f32)], bp: &BlockPlan, step: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
        if e.is_empty() {
            return Vec::new();
        }
        // Most confident first, leftmost on ties.
        let ranked = || {
            let mut r: Vec<usize> = (0..e.len()).collect();
            r.sort_by(|&x, &y| cands[y].1.total_cmp(&cands[x].1).then(e[x].cmp(&e[y])));
            r
        };
        // The scheduled count; the block's last scheduled step takes whatever is left.
        let k = if step + 1 >= bp.commits.len() { e.len() } else { bp.commits[step].clamp(1, e.len()) };
        match self.strategy {
            Strategy::LowConfidence => {
                let mut r = ranked();
                r.truncate(k);
                r
            }
            Strategy::Random => {
                let mut r: Vec<usize> = (0..e.len()).collect();
                for i in 0..k {
                    let j = rng.random_range(i..r.len());
                    r.swap(i, j);
                }
                r.truncate(k);
                r
            }
            Strategy::Threshold(tau) => {
                let r = ranked();
                let above: Vec<usize> = r.iter().copied().filter(|&j| cands[j].1 as f64 > tau).collect();
                if above.is_empty() {
                    r.into_iter().take(1).collect()
                } else {
                    above
                }
            }
        }
    }
}
