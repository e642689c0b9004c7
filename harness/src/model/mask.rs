//! Attention masks: causal, full, and annealed from causal to full.
//!
//! A mask is a visibility matrix `visible[i][j]` (query `i` may attend to key `j`). Three schedules
//! take attention from causal to full over `anneal_steps` optimizer steps, with
//! `p = min(1, (s+1)/anneal_steps)` at step `s`; each keeps the causal part (j ≤ i):
//! - `Annealed` (DiffuLLaMA's): each future key j > i is visible with probability `p`, one
//!   Bernoulli draw per (i, j) per step, shared across the batch and heads, from a generator
//!   seeded by (run seed, step);
//! - `Window`: deterministic, future key j visible when `j − i ≤ p·L` (no sampling noise);
//! - `Switch`: causal until step `anneal_steps − 1`, then full ("gradually transition or switch").
//!
//! `anneal_steps = 1` is full attention from step 0 under each. Padding is handled by a separate
//! key mask.

use crate::rng::{rng_for, Purpose};
use candle_core::{DType, Device, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Additive bias for a hidden key: large and finite so a row never becomes NaN.
pub const MASKED_BIAS: f32 = -1e9;

/// How queries may attend to keys.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum AttentionMode {
    /// Each query sees itself and earlier positions.
    Causal,
    /// Each query sees every position.
    Full,
    /// Causal plus each future position with probability min(1, (step+1)/anneal_steps).
    Annealed {
        /// Optimizer steps over which visibility of future positions rises to 1.
        anneal_steps: u64,
    },
    /// Causal plus the future positions within p·L of the query, p = min(1, (step+1)/anneal_steps).
    Window {
        /// Optimizer steps over which the window grows to the whole sequence.
        anneal_steps: u64,
    },
    /// Causal until step `anneal_steps − 1`, full from then on.
    Switch {
        /// The first optimizer step (1-based) of full attention.
        anneal_steps: u64,
    },
    /// Block-causal (block diffusion's reading, [`block_group`]): the last `canvas` columns are
    /// cut into blocks of `size` from their start; everything before the canvas (padding, prompt)
    /// is one group with the first block, each later block its own group, and a query sees the
    /// keys of its own group and of every earlier one, never a later block.
    Blocks {
        /// Block length B.
        size: usize,
        /// Canvas length N (the generated columns at the end of the sequence).
        canvas: usize,
    },
}

/// How `objective.anneal_steps` takes attention from causal to full (`objective.anneal`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnnealSchedule {
    /// A fresh Bernoulli(p) mask of the future keys every step (DiffuLLaMA).
    #[default]
    Bernoulli,
    /// The future keys within p·L of each query, deterministically.
    Window,
    /// Causal, then full at once.
    Switch,
}

impl AnnealSchedule {
    /// The attention mode of this schedule over `anneal_steps`.
    pub fn mode(self, anneal_steps: u64) -> AttentionMode {
        match self {
            AnnealSchedule::Bernoulli => AttentionMode::Annealed { anneal_steps },
            AnnealSchedule::Window => AttentionMode::Window { anneal_steps },
            AnnealSchedule::Switch => AttentionMode::Switch { anneal_steps },
        }
    }
}

impl AttentionMode {
    /// Probability that a future key is visible at optimizer step `step`.
    /// (`Window`: the window's reach as a share of the sequence length.)
    pub fn future_visibility(&self, step: u64) -> f64 {
        let p = |anneal_steps: u64| ((step as f64 + 1.0) / anneal_steps.max(1) as f64).min(1.0);
        match *self {
            AttentionMode::Causal => 0.0,
            AttentionMode::Full | AttentionMode::Blocks { .. } => 1.0,
            AttentionMode::Annealed { anneal_steps } | AttentionMode::Window { anneal_steps } => p(anneal_steps),
            AttentionMode::Switch { anneal_steps } => {
                if p(anneal_steps) >= 1.0 {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }

    /// The mode in effect at `step`: a schedule that reached full visibility is `Full`; a switch
    /// before its step is `Causal`.
    pub fn at_step(&self, step: u64) -> AttentionMode {
        match self {
            AttentionMode::Annealed { .. } | AttentionMode::Window { .. } | AttentionMode::Switch { .. } if self.future_visibility(step) >= 1.0 => AttentionMode::Full,
            AttentionMode::Switch { .. } => AttentionMode::Causal,
            m => *m,
        }
    }

    /// Whether the visibility changes with the optimizer step (an annealing schedule).
    pub fn depends_on_step(&self) -> bool {
        matches!(self, AttentionMode::Annealed { .. } | AttentionMode::Window { .. } | AttentionMode::Switch { .. })
    }
}

/// The attention a trained model is read under at evaluation time: `mode` taken at optimizer
/// step `step`, an annealed mask drawn from (`seed`, `step`) at the evaluated sequence length, as
/// training drew it at that step. What `eval.attention` resolves to is
/// `ReadAttention::resolve` (in [`crate::objective::diffusion`]); the samplers and the likelihood
/// take a reading through [`crate::sample::ModelDenoiser`] and [`attention_bias`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadAttention {
    /// The attention mode (annealed for a partly annealed model).
    pub mode: AttentionMode,
    /// The optimizer step (0-based) the mode is taken at.
    pub step: u64,
    /// The run seed of the annealed mask's draws.
    pub seed: u64,
}

impl ReadAttention {
    /// Full attention.
    pub const FULL: Self = Self { mode: AttentionMode::Full, step: u64::MAX, seed: 0 };
    /// Causal attention.
    pub const CAUSAL: Self = Self { mode: AttentionMode::Causal, step: u64::MAX, seed: 0 };

    /// Probability that a query sees a given future key (1 full, 0 causal).
    pub fn future_visibility(&self) -> f64 {
        self.mode.future_visibility(self.step)
    }

    /// `mode` at its end state (an annealed mode: full attention).
    pub fn end_of(mode: AttentionMode) -> Self {
        Self { mode, step: u64::MAX, seed: 0 }
    }
}

/// Visibility matrix, row-major `(L, L)`: `v[i * l + j]` is true when query i sees key j.
pub fn visibility(mode: AttentionMode, l: usize, step: u64, seed: u64) -> Vec<bool> {
    let mut v = vec![false; l * l];
    match mode.at_step(step) {
        AttentionMode::Full => v.iter_mut().for_each(|x| *x = true),
        AttentionMode::Blocks { size, canvas } => {
            let start = l.saturating_sub(canvas);
            for i in 0..l {
                for j in 0..l {
                    v[i * l + j] = block_group(j, start, size) <= block_group(i, start, size);
                }
            }
        }
        AttentionMode::Causal | AttentionMode::Switch { .. } => {
            for i in 0..l {
                for j in 0..=i {
                    v[i * l + j] = true;
                }
            }
        }
        AttentionMode::Window { .. } => {
            let reach = mode.future_visibility(step) * l as f64;
            for i in 0..l {
                for j in 0..l {
                    v[i * l + j] = j <= i || (j - i) as f64 <= reach;
                }
            }
        }
        AttentionMode::Annealed { .. } => {
            let p = mode.future_visibility(step);
            let mut rng = rng_for(seed, Purpose::AnnealMask, step, 0);
            for i in 0..l {
                for j in 0..l {
                    // Draw for every future pair in row-major order, so the mask of a shorter
                    // sequence is not a prefix of a longer one but is reproducible for (seed, step, L).
                    v[i * l + j] = j <= i || rng.random::<f64>() < p;
                }
            }
        }
    }
    v
}

/// Render a visibility matrix as text: `#` visible, `.` hidden, one row per query.
pub fn picture(v: &[bool], l: usize) -> String {
    let mut s = String::with_capacity(l * (l + 1));
    for i in 0..l {
        for j in 0..l {
            s.push(if v[i * l + j] { '#' } else { '.' });
        }
        s.push('\n');
    }
    s
}

/// Block diffusion's group of column `c` when blocks of `size` start at column `start` (the end
/// of the prompt): the columns before `start + size` — the prompt and the first block — are
/// group 0, then one group per block. The one definition the two-copy training layout
/// ([`two_copy_visibility`]) and the block reading ([`AttentionMode::Blocks`]) share.
pub fn block_group(c: usize, start: usize, size: usize) -> usize {
    if c < start + size {
        0
    } else {
        (c - start) / size.max(1)
    }
}

/// The visibility of block diffusion's two-copy layout (BD3-LM), row-major (2L, 2L): columns
/// 0..L hold the noised sequence, L..2L the clean one, both at RoPE positions 0..L; blocks of
/// `size` start at the end of the prompt (`prompt_len`), and only the first `valid` columns of
/// each copy are real keys (right padding after them is hidden). In groups of [`block_group`]:
/// a noised query of group g sees the noised keys of group g (bidirectionally) and the clean
/// keys of groups < g (for g ≥ 1: the clean prompt and the clean earlier blocks); a clean query
/// of group g sees the clean keys of groups ≤ g. So no block ever sees a later one, and with one
/// block (size ≥ the response) the noised copy is plain full attention over prompt + response.
pub fn two_copy_visibility(l: usize, prompt_len: usize, size: usize, valid: usize) -> Vec<bool> {
    let n = 2 * l;
    let mut v = vec![false; n * n];
    for q in 0..n {
        let (qi, q_clean) = (q % l, q >= l);
        let gq = block_group(qi, prompt_len, size);
        for k in 0..n {
            let (ki, k_clean) = (k % l, k >= l);
            if ki >= valid {
                continue;
            }
            let gk = block_group(ki, prompt_len, size);
            v[q * n + k] = match (q_clean, k_clean) {
                (false, false) => gk == gq,
                (false, true) => gk < gq,
                (true, true) => gk <= gq,
                (true, false) => false,
            };
        }
    }
    v
}

/// What [`additive_bias`] does with a query that would see no key at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyRow {
    /// It keeps its own position (query i, key i), so its softmax stays finite: for right-padded
    /// training batches, where such a row is a pad row and never scored.
    KeepSelf,
    /// Its bias stays uniformly [`MASKED_BIAS`] (finite, so its softmax stays finite): for
    /// left-padded prompts, where such a row is a pad row whose output is unused.
    Hidden,
}

/// The one builder of additive attention biases. Query i (of `l`) of sequence b sees key j (of
/// `t`) iff `visible[i * t + j]` and, with `key_valid`, `key_valid[b][j]` (false = padding);
/// hidden keys get [`MASKED_BIAS`], visible ones 0. Returns (B, 1, L, T) with `key_valid`, else
/// (1, 1, L, T), in `dtype`.
pub fn additive_bias(
    visible: &[bool],
    (l, t): (usize, usize),
    key_valid: Option<&[Vec<bool>]>,
    empty: EmptyRow,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let (out, rows) = additive_bias_values(visible, (l, t), key_valid, empty);
    Tensor::from_vec(out, (rows, 1, l, t), device)?.to_dtype(dtype)
}

/// [`additive_bias`] with [`EmptyRow::Hidden`] for a visibility shared by every row and a key
/// mask per row, assembled on the device: the (1, 1, L, T) visibility bias plus the (B, 1, 1, T)
/// key bias, floored at [`MASKED_BIAS`] — the same values, but O(L·T + B·T) host work and upload
/// instead of O(B·L·T) (the samplers' readings of left-padded batches). Returns (B, 1, L, T).
pub fn split_bias(visible: &[bool], (l, t): (usize, usize), key_valid: &[Vec<bool>], dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let vis: Vec<f32> = visible.iter().map(|&v| if v { 0.0 } else { MASKED_BIAS }).collect();
    let keys: Vec<f32> = key_valid.iter().flat_map(|row| (0..t).map(|j| if row.get(j).copied().unwrap_or(false) { 0.0 } else { MASKED_BIAS })).collect();
    let vis = Tensor::from_vec(vis, (1, 1, l, t), device)?; // (1, 1, L, T)
    let keys = Tensor::from_vec(keys, (key_valid.len(), 1, 1, t), device)?; // (B, 1, 1, T)
    vis.broadcast_add(&keys)?.maximum(MASKED_BIAS)?.to_dtype(dtype) // (B, 1, L, T)
}

/// The values of [`additive_bias`] on the host, row-major (R, L, T), and R (B with `key_valid`,
/// else 1). `visible` is one (L, T) matrix shared by every row, or (R, L, T), one per row (block
/// diffusion's two-copy layout, packed rows); `key_valid`, when given, has one entry per row.
pub fn additive_bias_values(visible: &[bool], (l, t): (usize, usize), key_valid: Option<&[Vec<bool>]>, empty: EmptyRow) -> (Vec<f32>, usize) {
    let per_row = l * t > 0 && visible.len() > l * t;
    let n = if per_row { visible.len() / (l * t) } else { key_valid.map_or(1, |kv| kv.len()) };
    let mut out = vec![0f32; n * l * t];
    for bi in 0..n {
        let row = key_valid.and_then(|kv| kv.get(bi));
        let vis = if per_row { &visible[bi * l * t..(bi + 1) * l * t] } else { visible };
        for i in 0..l {
            let r = &mut out[(bi * l + i) * t..(bi * l + i + 1) * t];
            for (j, x) in r.iter_mut().enumerate() {
                let ok = vis[i * t + j] && row.is_none_or(|kv| kv.get(j).copied().unwrap_or(false));
                if !ok {
                    *x = MASKED_BIAS;
                }
            }
            if empty == EmptyRow::KeepSelf && i < t && r.iter().all(|&x| x == MASKED_BIAS) {
                r[i] = 0.0;
            }
        }
    }
    (out, n)
}

/// A micro-batch whose rows each have their own attention (beyond one [`AttentionMode`] shared
/// by every row), in the form its bias is built from.
#[derive(Debug, Clone, PartialEq)]
pub enum RowMask {
    /// Explicit visibility, (B, L, L) row-major: its bias is built on the host.
    Explicit(Vec<bool>),
    /// Packed pairs ([`Segments`]): bias built on the device.
    Packed(Segments),
    /// Block diffusion's two copies ([`TwoCopy`]): bias built on the device.
    TwoCopy(TwoCopy),
}

impl RowMask {
    /// The visibility, (B, L, L) row-major, for `b` rows of `l` columns (host; tests, packing).
    pub fn visibility(&self, b: usize, l: usize) -> Vec<bool> {
        match self {
            RowMask::Explicit(v) => v.clone(),
            RowMask::Packed(s) => s.visibility(l),
            RowMask::TwoCopy(t) => (0..b).flat_map(|i| two_copy_visibility(l / 2, t.prompt_len[i], t.size, t.valid[i])).collect(),
        }
    }

    /// The additive bias (B, 1, L, L) in `dtype` on `device`: the values [`additive_bias_values`]
    /// gives [`RowMask::visibility`] with [`EmptyRow::KeepSelf`].
    pub fn bias(&self, b: usize, l: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            RowMask::Explicit(v) => {
                if v.len() != b * l * l {
                    candle_core::bail!("a visibility of {} entries for a {b} × {l} micro-batch", v.len())
                }
                let (vals, _) = additive_bias_values(v, (l, l), None, EmptyRow::KeepSelf);
                Tensor::from_vec(vals, (b, 1, l, l), device)?.to_dtype(dtype)
            }
            RowMask::Packed(s) => s.bias(l, dtype, device),
            RowMask::TwoCopy(t) => t.bias(b, l, dtype, device),
        }
    }
}

/// Block diffusion's two-copy layout ([`two_copy_visibility`]) in compact form: rows of 2L
/// columns, row i's blocks of `size` starting at `prompt_len[i]`, its first `valid[i]` columns of
/// each copy real.
#[derive(Debug, Clone, PartialEq)]
pub struct TwoCopy {
    /// Block length.
    pub size: usize,
    /// Prompt length of each row.
    pub prompt_len: Vec<usize>,
    /// Real columns of each copy of each row.
    pub valid: Vec<usize>,
}

impl TwoCopy {
    /// The bias (B, 1, 2L, 2L) for rows of `l2` = 2L columns, built on the device from each
    /// column's copy, group and validity (O(B·L) host work).
    fn bias(&self, b: usize, l2: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let l = l2 / 2;
        let (mut clean, mut group, mut valid) = (Vec::with_capacity(b * l2), Vec::with_capacity(b * l2), Vec::with_capacity(b * l2));
        for i in 0..b {
            for c in 0..l2 {
                clean.push((c >= l) as u8 as f32);
                group.push(block_group(c % l, self.prompt_len[i], self.size) as f32);
                valid.push(((c % l) < self.valid[i]) as u8 as f32);
            }
        }
        let col = |v: Vec<f32>| Tensor::from_vec(v, (b, l2), device); // (B, 2L)
        let (clean, group, valid) = (col(clean)?, col(group)?, col(valid)?);
        let (qc, kc) = (clean.unsqueeze(2)?, clean.unsqueeze(1)?); // (B, 2L, 1), (B, 1, 2L)
        let (gq, gk) = (group.unsqueeze(2)?, group.unsqueeze(1)?);
        let f = |t: Tensor| t.to_dtype(DType::F32);
        let (qn, kn) = (qc.affine(-1.0, 1.0)?, kc.affine(-1.0, 1.0)?); // noised = 1 − clean
        let nn = qn.broadcast_mul(&kn)?.broadcast_mul(&f(gk.broadcast_eq(&gq)?)?)?; // noised → noised, same group
        let nc = qn.broadcast_mul(&kc)?.broadcast_mul(&f(gk.broadcast_lt(&gq)?)?)?; // noised → clean, earlier groups
        let cc = qc.broadcast_mul(&kc)?.broadcast_mul(&f(gk.broadcast_le(&gq)?)?)?; // clean → clean, this and earlier
        let ok = ((nn + nc)? + cc)?.broadcast_mul(&valid.unsqueeze(1)?)?; // (B, 2L, 2L)
        // a query that sees nothing keeps its own position (EmptyRow::KeepSelf)
        let empty = f(ok.sum_keepdim(2)?.eq(0f32)?)?; // (B, 2L, 1)
        let eye = Tensor::eye(l2, DType::F32, device)?.unsqueeze(0)?; // (1, 2L, 2L)
        bias_of_visible(&ok.broadcast_maximum(&eye.broadcast_mul(&empty)?)?, dtype) // (B, 1, 2L, 2L)
    }
}

/// A packed micro-batch's attention ([`crate::objective::pack`]) in compact form: which pair each
/// column holds and its column in that pair's unpacked row, plus the unpacked batch's visibility
/// (shared by every pair). Query column i sees key column j of its row iff both hold the same
/// pair and `base[local[i] · base_l + local[j]]`; spare columns (pair [`Segments::SPARE`]) see
/// each other only. [`Segments::bias`] builds the additive bias on the device from it, so a row
/// of C columns costs O(C) host work, not O(C²).
#[derive(Debug, Clone, PartialEq)]
pub struct Segments {
    /// The pair of each column, `b * l` (row-major); [`Segments::SPARE`] after a row's last pair.
    pub pair: Vec<u32>,
    /// Each column's column in its pair's unpacked row, `b * l` (0 for spare columns).
    pub local: Vec<u32>,
    /// The unpacked batch's visibility, (base_l, base_l) row-major.
    pub base: Vec<bool>,
    /// The unpacked batch's length.
    pub base_l: usize,
}

impl Segments {
    /// The pair id of a spare column.
    pub const SPARE: u32 = u32::MAX;

    /// The explicit visibility, (B, L, L) row-major for rows of `l` columns (tests, pictures).
    pub fn visibility(&self, l: usize) -> Vec<bool> {
        pair_visibility(&self.pair, &self.local, l, |_, a, b| self.base[a * self.base_l + b])
    }

    /// The additive bias (B, 1, L, L) in `dtype` for rows of `l` columns, built on `device`:
    /// the values of [`additive_bias_values`] on [`Segments::visibility`] (no query of a packed
    /// batch sees nothing: a pair's column sees at least itself, a spare column the spares).
    pub fn bias(&self, l: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        if self.base_l > 4096 {
            candle_core::bail!("packed attention: pairs of {} columns exceed the 4096 the device index can address", self.base_l)
        }
        let b = self.pair.len() / l.max(1);
        let pair = Tensor::from_vec(self.pair.clone(), (b, l), device)?; // (B, L)
        let same = pair.unsqueeze(2)?.broadcast_eq(&pair.unsqueeze(1)?)?; // (B, L, L) u8
        let local = Tensor::from_vec(self.local.clone(), (b, l), device)?.to_dtype(DType::F32)?; // (B, L)
        let idx = local.affine(self.base_l as f64, 0.0)?.unsqueeze(2)?.broadcast_add(&local.unsqueeze(1)?)?.to_dtype(DType::U32)?; // (B, L, L)
        let base: Vec<f32> = self.base.iter().map(|&v| v as u8 as f32).collect();
        let base = Tensor::from_vec(base, self.base.len(), device)?;
        let seen = base.index_select(&idx.flatten_all()?, 0)?.reshape((b, l, l))?; // (B, L, L) 1 = visible
        let spare = pair.eq(Self::SPARE)?.to_dtype(DType::F32)?.unsqueeze(2)?; // (B, L, 1)
        let ok = (same.to_dtype(DType::F32)? * seen.broadcast_maximum(&spare)?)?; // (B, L, L)
        bias_of_visible(&ok, dtype) // (B, 1, L, L)
    }
}

/// A visibility (B, L, T) of 1s and 0s as the additive bias (B, 1, L, T) in `dtype`: 0 where
/// visible, [`MASKED_BIAS`] where hidden.
fn bias_of_visible(ok: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    ((ok - 1.0)? * (-(MASKED_BIAS as f64)))?.unsqueeze(1)?.to_dtype(dtype)
}

/// The visibility, (B, L, L) row-major, of rows of `l` columns holding pairs: `pair` and `local`
/// give each column's pair and its column in that pair (as in [`Segments`]); a column sees
/// another of its row iff both hold the same pair `p` and `sees(p, local_i, local_j)`, and spare
/// columns ([`Segments::SPARE`]) see each other.
pub fn pair_visibility(pair: &[u32], local: &[u32], l: usize, sees: impl Fn(usize, usize, usize) -> bool) -> Vec<bool> {
    let b = pair.len() / l.max(1);
    let mut v = vec![false; b * l * l];
    for r in 0..b {
        for i in 0..l {
            let ci = r * l + i;
            for j in 0..l {
                let cj = r * l + j;
                v[ci * l + j] = pair[ci] == pair[cj] && (pair[ci] == Segments::SPARE || sees(pair[ci] as usize, local[ci] as usize, local[cj] as usize));
            }
        }
    }
    v
}

/// Additive attention bias for a training batch, or `None` when nothing is hidden (full
/// attention, no padding): the visibility of `mode` at `step`, right padding from `key_valid`
/// (a query that sees no key keeps its own position, [`EmptyRow::KeepSelf`]).
///
/// `key_valid`: per sequence, which key positions hold real tokens (false = padding).
/// Returns `(B, 1, L, L)` when there is padding, else `(1, 1, L, L)`, in `dtype`.
pub fn attention_bias(
    mode: AttentionMode,
    step: u64,
    seed: u64,
    l: usize,
    key_valid: Option<&[Vec<bool>]>,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    match attention_bias_values(mode, step, seed, l, key_valid) {
        Some((v, rows)) => Ok(Some(Tensor::from_vec(v, (rows, 1, l, l), device)?.to_dtype(dtype)?)),
        None => Ok(None),
    }
}

/// The values of [`attention_bias`] on the host, (R, L, L) row-major with R as there, or None.
pub fn attention_bias_values(mode: AttentionMode, step: u64, seed: u64, l: usize, key_valid: Option<&[Vec<bool>]>) -> Option<(Vec<f32>, usize)> {
    let mode = mode.at_step(step);
    let has_pad = key_valid.is_some_and(|kv| kv.iter().any(|row| row.iter().take(l).any(|&x| !x)));
    if mode == AttentionMode::Full && !has_pad {
        return None;
    }
    let vis = visibility(mode, l, step, seed);
    let kv = key_valid.filter(|_| has_pad);
    Some(additive_bias_values(&vis, (l, l), kv, EmptyRow::KeepSelf))
}

/// Causal bias of a chunk of `l` new queries continuing `cached` positions of a KV cache: new
/// query i (absolute position cached + i) sees keys 0..=cached + i. (1, 1, l, cached + l), or
/// None for a single query (it sees every key). [`padded_cache_bias`] without padding.
pub fn cache_bias(l: usize, cached: usize, dtype: DType, device: &Device) -> candle_core::Result<Option<Tensor>> {
    padded_cache_bias(l, cached, &[], dtype, device)
}

/// [`cache_bias`] for a left-padded batch: row b's first `pad[b]` key columns are padding, hidden
/// from every query (`pad` empty or all zero: no padding). New query i of row b sees keys
/// `pad[b]..=cached + i`; a pad query (one that sees no key) stays hidden ([`EmptyRow::Hidden`]),
/// its output is unused. Returns (B, 1, l, cached + l) with padding, else as [`cache_bias`]:
/// (1, 1, l, cached + l), or None for a single query. In `dtype`.
pub fn padded_cache_bias(l: usize, cached: usize, pad: &[usize], dtype: DType, device: &Device) -> candle_core::Result<Option<Tensor>> {
    let has_pad = pad.iter().any(|&p| p > 0);
    if l <= 1 && !has_pad {
        return Ok(None);
    }
    let t = cached + l;
    let vis: Vec<bool> = (0..l * t).map(|k| k % t <= cached + k / t).collect();
    let key_valid: Option<Vec<Vec<bool>>> = has_pad.then(|| pad.iter().map(|&p| (0..t).map(|j| j >= p).collect()).collect());
    Ok(Some(additive_bias(&vis, (l, t), key_valid.as_deref(), EmptyRow::Hidden, dtype, device)?))
}
