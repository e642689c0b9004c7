//! The scored loss of a prepared micro-batch: Σ w·CE / total normaliser over the rows the
//! objective scores, with the logged numbers (unweighted CE, argmax hits, CE per diffusion-time
//! bucket) beside it in one detached stats tensor.
//!
//! It runs in two stages, so that a training step can be captured once as a CUDA graph and
//! replayed ([`crate::train::graph`]):
//! - [`HostBatch`] lays a [`Prepared`] out as the arrays the device reads: token ids, the additive
//!   attention bias, the scored rows with their targets and weights, the bucket one-hots and the
//!   normaliser's inverse. [`HostBatch::new`] keeps the micro-batch's own shape;
//!   [`HostBatch::padded`] pads it to a run-wide [`FixedShape`]: extra positions are hidden keys
//!   (and their own queries see only themselves), extra scored rows are distinct unscored
//!   positions with weight 0 and validity 0, so the loss, its gradient and the logged numbers are
//!   those of the unpadded micro-batch (a micro-batch with its own visibility, positions or
//!   time input runs eagerly and is refused here);
//! - [`DeviceBatch`] holds the arrays on the device, uploaded ([`HostBatch::upload`]) or copied
//!   into the buffers a captured graph reads ([`DeviceBatch::write`]); [`loss_on`] computes the
//!   loss from a [`DeviceBatch`] without any host round trip.
//!
//! [`scored_loss`] is both stages at the micro-batch's own shape: what evaluation, the dev loss
//! and the eager training step run.

use super::{Example, Prepared, TBuckets, T_BUCKETS};
use crate::model::mask::{attention_bias_values, RowMask, MASKED_BIAS};
use crate::model::params::Fwd;
use crate::model::Llama;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// The shape every training micro-batch of a run is padded to when its step runs as a CUDA
/// graph: `b` sequences of `l` positions, `n` rows through the LM head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FixedShape {
    /// Sequences per micro-batch.
    pub b: usize,
    /// Positions per sequence: the longest training example.
    pub l: usize,
    /// Rows through the LM head: `b` × (l − shortest prompt + 1), at most `b` × `l`. No
    /// objective scores a prompt position other than the last one (AR's shifted first target),
    /// so every micro-batch's scored rows fit.
    pub n: usize,
}

impl FixedShape {
    /// The fixed shape of micro-batches of `b` drawn from `examples`; None when there are none.
    pub fn for_examples(examples: &[Example], b: usize) -> Option<Self> {
        let l = examples.iter().map(|e| e.prompt.len() + e.response.len()).max()?;
        let min_prompt = examples.iter().map(|e| e.prompt.len()).min()?;
        let per_row = (l + 1).saturating_sub(min_prompt).clamp(1, l.max(1));
        Some(Self { b, l, n: b * per_row })
    }
}

/// The scored rows of a micro-batch on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostScored {
    /// Flat output rows (`i * l + pos`), distinct.
    pub rows: Vec<u32>,
    /// Target of each row.
    pub targets: Vec<u32>,
    /// Loss weight of each row (0 for padding rows).
    pub weights: Vec<f32>,
    /// 1 for a scored row, 0 for a padding row; None when every row is scored.
    pub valid: Option<Vec<f32>>,
    /// Bucket one-hot of each row, (N, [`T_BUCKETS`]) row-major (zeros for padding rows); None
    /// for an objective without buckets.
    pub onehot: Option<Vec<f32>>,
    /// 1 / the step's total normaliser (0 when the normaliser is 0: nothing is scored).
    pub inv_denom: f32,
    /// Scored rows (padding rows excluded).
    pub n_scored: usize,
    /// Scored rows per bucket.
    pub bucket_n: Option<[usize; T_BUCKETS]>,
}

impl HostScored {
    /// The scored rows of `p` as they are, with the step's `total_denom`; `vocab` checks the
    /// targets.
    pub fn new(p: &Prepared, total_denom: f64, vocab: usize) -> Result<Self> {
        if let Some(&bad) = p.targets.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::msg(format!("target token {bad} is outside the vocabulary of {vocab}")));
        }
        let n = p.rows.len();
        if p.targets.len() != n || p.weights.len() != n {
            return Err(Error::msg(format!("{n} scored rows with {} targets and {} weights", p.targets.len(), p.weights.len())));
        }
        let (mut onehot, mut bucket_n) = (None, None);
        if let Some(buckets) = &p.buckets {
            if buckets.len() != n {
                return Err(Error::msg(format!("{} bucket tags for {n} scored rows", buckets.len())));
            }
            let mut oh = vec![0f32; n * T_BUCKETS];
            let mut counts = [0usize; T_BUCKETS];
            for (r, &k) in buckets.iter().enumerate() {
                let k = k.min(T_BUCKETS - 1);
                oh[r * T_BUCKETS + k] = 1.0;
                counts[k] += 1;
            }
            onehot = Some(oh);
            bucket_n = Some(counts);
        }
        let inv_denom = if total_denom > 0.0 { (1.0 / total_denom) as f32 } else { 0.0 };
        Ok(Self { rows: p.rows.clone(), targets: p.targets.clone(), weights: p.weights.clone(), valid: None, onehot, inv_denom, n_scored: n, bucket_n })
    }

    /// These rows of a (B, `l`) batch moved into a (B, `lf`) layout and padded to `n` rows with
    /// distinct unscored positions (weight 0, validity 0). With a zero normaliser every row is
    /// padding, as [`scored_loss`] scores nothing then.
    fn padded(mut self, b: usize, l: usize, lf: usize, n: usize) -> Result<Self> {
        if self.inv_denom == 0.0 {
            self.rows.clear();
            self.targets.clear();
            self.weights.clear();
            self.onehot = self.onehot.map(|_| Vec::new());
            self.bucket_n = self.bucket_n.map(|_| [0; T_BUCKETS]);
            self.n_scored = 0;
        }
        let k = self.rows.len();
        if k > n {
            return Err(Error::msg(format!("{k} scored rows do not fit the run's fixed shape of {n} rows")));
        }
        let mut taken = vec![false; b * lf];
        for r in self.rows.iter_mut() {
            let (i, pos) = (*r as usize / l, *r as usize % l);
            *r = (i * lf + pos) as u32;
            taken[*r as usize] = true;
        }
        let fill: Vec<u32> = (0..b * lf).filter(|&r| !taken[r]).take(n - k).map(|r| r as u32).collect();
        self.rows.extend(fill);
        self.targets.resize(n, 0);
        self.weights.resize(n, 0.0);
        let mut valid = vec![1f32; k];
        valid.resize(n, 0.0);
        self.valid = Some(valid);
        if let Some(oh) = self.onehot.as_mut() {
            oh.resize(n * T_BUCKETS, 0.0);
        }
        Ok(self)
    }

    fn upload(&self, dev: &Device) -> Result<DeviceScored> {
        let n = self.rows.len();
        let vec_f32 = |v: &Vec<f32>| Tensor::from_vec(v.clone(), n, dev);
        Ok(DeviceScored {
            rows: Tensor::from_vec(self.rows.clone(), n, dev)?,
            targets: Tensor::from_vec(self.targets.clone(), n, dev)?,
            weights: vec_f32(&self.weights)?,
            valid: self.valid.as_ref().map(vec_f32).transpose()?,
            onehot: self.onehot.as_ref().map(|o| Tensor::from_vec(o.clone(), (n, T_BUCKETS), dev)).transpose()?,
            inv_denom: Tensor::new(self.inv_denom, dev)?,
            n_scored: self.n_scored,
            bucket_n: self.bucket_n,
        })
    }
}

/// A micro-batch laid out for the device, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// Sequences.
    pub b: usize,
    /// Positions per sequence.
    pub l: usize,
    /// Model input, `b * l`.
    pub ids: Vec<u32>,
    /// Additive attention bias, (R, L, L) row-major with R = 1 or `b`, and R; None when every
    /// query sees every key.
    pub bias: Option<(Vec<f32>, usize)>,
    /// RoPE position of each column, `b * l`; None: 0..l in every row.
    pub positions: Option<Vec<u32>>,
    /// Each row's own attention, built into the bias by [`HostBatch::upload`] (then `bias` is
    /// None).
    pub mask: Option<RowMask>,
    /// The diffusion time of each column, `b * l` (a time-conditioned model's); None: no time input.
    pub time: Option<Vec<f32>>,
    /// The scored rows.
    pub scored: HostScored,
}

/// The additive bias of `p` on the host, the annealed mask drawn from `seed`; None when nothing
/// is hidden or when `p` has its own [`RowMask`] (built at upload).
fn prepared_bias(p: &Prepared, seed: u64) -> Option<(Vec<f32>, usize)> {
    match &p.mask {
        Some(_) => None,
        None => attention_bias_values(p.attention, p.step, seed, p.l, p.key_valid.as_deref()),
    }
}

impl HostBatch {
    /// `p` at its own shape; the annealed mask is drawn from the run `seed`.
    pub fn new(p: &Prepared, total_denom: f64, seed: u64, vocab: usize) -> Result<Self> {
        if p.positions.as_ref().is_some_and(|pos| pos.len() != p.b * p.l) {
            return Err(Error::msg(format!("RoPE positions do not cover the {} × {} micro-batch", p.b, p.l)));
        }
        let bias = prepared_bias(p, seed);
        if let Some(RowMask::Packed(s)) = &p.mask {
            if s.pair.len() != p.b * p.l || s.local.len() != p.b * p.l {
                return Err(Error::msg(format!("packed segments do not cover the {} × {} micro-batch", p.b, p.l)));
            }
        }
        if p.time.as_ref().is_some_and(|t| t.len() != p.b * p.l) {
            return Err(Error::msg(format!("diffusion times do not cover the {} × {} micro-batch", p.b, p.l)));
        }
        Ok(Self { b: p.b, l: p.l, ids: p.input.clone(), bias, positions: p.positions.clone(), mask: p.mask.clone(), time: p.time.clone(), scored: HostScored::new(p, total_denom, vocab)? })
    }

    /// `p` padded to `shape` with `pad_id` (see the module documentation): the same loss,
    /// gradient and logged numbers as [`HostBatch::new`]. The bias is None only when `p`
    /// already fills `shape.l` and every query sees every key.
    pub fn padded(p: &Prepared, total_denom: f64, seed: u64, vocab: usize, shape: FixedShape, pad_id: u32) -> Result<Self> {
        let (b, l, lf) = (p.b, p.l, shape.l);
        if p.mask.is_some() || p.positions.is_some() {
            return Err(Error::msg("a micro-batch with its own visibility or positions (block diffusion, packing) runs eagerly (train.launch = \"eager\")"));
        }
        if p.time.is_some() {
            return Err(Error::msg("a micro-batch with a time input (objective.time_conditioning) runs eagerly (train.launch = \"eager\")"));
        }
        if b != shape.b || l > lf {
            return Err(Error::msg(format!("a micro-batch of {b} × {l} does not fit the run's fixed shape {} × {lf}", shape.b)));
        }
        let mut ids = vec![pad_id; b * lf];
        for i in 0..b {
            ids[i * lf..i * lf + l].copy_from_slice(&p.input[i * l..(i + 1) * l]);
        }
        let base = attention_bias_values(p.attention, p.step, seed, l, p.key_valid.as_deref());
        let bias = if l == lf {
            base
        } else {
            let mut out = vec![MASKED_BIAS; b * lf * lf];
            for bi in 0..b {
                for i in 0..lf {
                    let row = &mut out[(bi * lf + i) * lf..(bi * lf + i + 1) * lf];
                    if i >= l {
                        row[i] = 0.0; // a padding query sees only itself: finite, unscored
                        continue;
                    }
                    match &base {
                        Some((v, r)) => {
                            let src = ((bi.min(r - 1)) * l + i) * l;
                            row[..l].copy_from_slice(&v[src..src + l]);
                        }
                        None => row[..l].iter_mut().for_each(|x| *x = 0.0),
                    }
                }
            }
            Some((out, b))
        };
        let scored = HostScored::new(p, total_denom, vocab)?.padded(b, l, lf, shape.n)?;
        Ok(Self { b, l: lf, ids, bias, positions: None, mask: None, time: None, scored })
    }

    /// The arrays on `dev`, the bias in `dtype`.
    pub fn upload(&self, dtype: DType, dev: &Device) -> Result<DeviceBatch> {
        let ids = Tensor::from_vec(self.ids.clone(), (self.b, self.l), dev)?; // (B, L)
        let bias = match (&self.bias, &self.mask) {
            (Some((v, r)), _) => Some(Tensor::from_vec(v.clone(), (*r, 1, self.l, self.l), dev)?.to_dtype(dtype)?), // (R, 1, L, L)
            (None, Some(m)) => Some(m.bias(self.b, self.l, dtype, dev)?), // (B, 1, L, L)
            (None, None) => None,
        };
        let positions = self.positions.as_ref().map(|p| Tensor::from_vec(p.clone(), (self.b, self.l), dev)).transpose()?; // (B, L)
        let time = self.time.as_ref().map(|t| Tensor::from_vec(t.clone(), (self.b, self.l), dev)).transpose()?; // (B, L) f32
        Ok(DeviceBatch { ids, bias, positions, time, scored: self.scored.upload(dev)? })
    }
}

/// The scored rows on the device.
#[derive(Debug)]
pub struct DeviceScored {
    rows: Tensor,           // (N,) u32
    targets: Tensor,        // (N,) u32
    weights: Tensor,        // (N,) f32
    valid: Option<Tensor>,  // (N,) f32
    onehot: Option<Tensor>, // (N, K) f32
    inv_denom: Tensor,      // () f32
    /// Scored rows (padding excluded).
    pub n_scored: usize,
    /// Scored rows per bucket.
    pub bucket_n: Option<[usize; T_BUCKETS]>,
}

/// A micro-batch on the device: what [`loss_on`] reads.
#[derive(Debug)]
pub struct DeviceBatch {
    ids: Tensor,          // (B, L) u32
    bias: Option<Tensor>, // (R, 1, L, L)
    positions: Option<Tensor>, // (B, L) u32
    time: Option<Tensor>,      // (B, L) f32
    /// The scored rows.
    pub scored: DeviceScored,
}

impl DeviceBatch {
    /// Copy `src` into these tensors in place (the buffers a captured graph reads). `src` must
    /// have this batch's shapes, and a bias exactly when this batch has one.
    pub fn write(&mut self, src: &HostBatch) -> Result<()> {
        let dev = self.ids.device().clone();
        let fresh = src.upload(self.bias.as_ref().map_or(DType::BF16, |b| b.dtype()), &dev)?;
        let same = |a: &Tensor, b: &Tensor| a.dims() == b.dims() && a.dtype() == b.dtype();
        let (s, f) = (&self.scored, &fresh.scored);
        let shapes_ok = same(&self.ids, &fresh.ids)
            && same(&s.rows, &f.rows)
            && same(&s.weights, &f.weights)
            && match (&self.bias, &fresh.bias) {
                (Some(a), Some(b)) => same(a, b),
                (None, None) => true,
                _ => false,
            }
            && self.positions.is_none()
            && fresh.positions.is_none()
            && src.mask.is_none()
            && self.time.is_none()
            && fresh.time.is_none()
            && s.valid.is_some() == f.valid.is_some()
            && s.onehot.as_ref().map(|t| t.dims().to_vec()) == f.onehot.as_ref().map(|t| t.dims().to_vec());
        if !shapes_ok {
            return Err(Error::msg("a micro-batch does not match the shapes of the captured training step"));
        }
        let set = |dst: &Tensor, src: &Tensor| dst.slice_set(src, 0, 0);
        set(&self.ids, &fresh.ids)?;
        if let (Some(a), Some(b)) = (&self.bias, &fresh.bias) {
            set(a, b)?;
        }
        set(&s.rows, &f.rows)?;
        set(&s.targets, &f.targets)?;
        set(&s.weights, &f.weights)?;
        if let (Some(a), Some(b)) = (&s.valid, &f.valid) {
            set(a, b)?;
        }
        if let (Some(a), Some(b)) = (&s.onehot, &f.onehot) {
            set(a, b)?;
        }
        set(&s.inv_denom.reshape(1)?, &f.inv_denom.reshape(1)?)?;
        self.scored.n_scored = f.n_scored;
        self.scored.bucket_n = f.bucket_n;
        Ok(())
    }

    /// Whether this batch carries an attention bias.
    pub fn has_bias(&self) -> bool {
        self.bias.is_some()
    }
}

/// Loss of one micro-batch and the numbers logged beside it.
///
/// The logged numbers stay on the device until [`LossParts::read`]: reading them forces a
/// device synchronisation, which the training loop does only after the backward pass.
#[derive(Debug)]
pub struct LossParts {
    /// Σ w·CE / total normaliser: the tensor to differentiate (scalar f32).
    pub loss: Tensor,
    /// (3,) f32, detached: loss, Σ CE over scored tokens (unweighted), argmax hits; with
    /// buckets (3 + [`T_BUCKETS`],): then Σ CE per bucket.
    pub stats: Tensor,
    /// Scored tokens.
    pub n_scored: usize,
    /// Scored tokens per bucket (counted on the host), when the step has buckets.
    pub bucket_n: Option<[usize; T_BUCKETS]>,
}

/// The numbers of [`LossParts`], on the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossValues {
    /// Value of the loss.
    pub loss: f64,
    /// Σ CE over scored tokens (unweighted).
    pub ce_sum: f64,
    /// Scored tokens.
    pub n_scored: usize,
    /// Scored tokens whose target has the highest logit.
    pub n_correct: usize,
    /// Unweighted CE per diffusion-time bucket, when the step has buckets (their `ce_sum`s add
    /// up to `ce_sum`).
    pub buckets: Option<TBuckets>,
}

impl LossParts {
    /// Copy the logged numbers to the host (synchronises the device once).
    pub fn read(&self) -> Result<LossValues> {
        LossValues::from_stats(&self.stats, self.n_scored, self.bucket_n)
    }
}

impl LossValues {
    /// The values of a stats tensor laid out as [`LossParts::stats`] (synchronises once).
    pub fn from_stats(stats: &Tensor, n_scored: usize, bucket_n: Option<[usize; T_BUCKETS]>) -> Result<Self> {
        let v: Vec<f32> = stats.to_vec1()?;
        let buckets = match bucket_n {
            Some(n) if v.len() == 3 + T_BUCKETS => {
                let mut ce_sum = [0.0; T_BUCKETS];
                for (k, c) in ce_sum.iter_mut().enumerate() {
                    *c = v[3 + k] as f64;
                }
                Some(TBuckets { ce_sum, n })
            }
            Some(n) => Some(TBuckets { ce_sum: [0.0; T_BUCKETS], n }),
            None => None,
        };
        Ok(Self { loss: v[0] as f64, ce_sum: v[1] as f64, n_scored, n_correct: v[2].round() as usize, buckets })
    }
}

/// Forward `p` through `model` and return Σ w·CE / `total_denom`, with unweighted CE and accuracy.
///
/// Only scored rows go through the LM head: hidden (B·L, D) → rows (N, D) → logits (N, V).
pub fn scored_loss(model: &Llama, p: &Prepared, total_denom: f64, seed: u64, ctx: &Fwd) -> Result<LossParts> {
    let host = HostBatch::new(p, total_denom, seed, model.cfg.vocab_size)?;
    if let Some(&top) = p.positions.as_ref().and_then(|pos| pos.iter().max()) {
        if top as usize >= model.cfg.max_position_embeddings {
            return Err(Error::msg(format!("RoPE position {top} exceeds the model's {} positions", model.cfg.max_position_embeddings)));
        }
    }
    if p.rows.is_empty() || total_denom <= 0.0 {
        // Nothing scored: a zero loss that still depends on the graph (no gradient flows).
        let db = host.upload(model.dtype, &model.device)?;
        let h = model.hidden_at(&db.ids, db.bias.as_ref(), db.positions.as_ref(), db.time.as_ref(), ctx)?; // (B, L, D)
        let zero = (h.sum_all()?.to_dtype(DType::F32)? * 0.0)?;
        let stats = Tensor::zeros(3, DType::F32, &model.device)?;
        let bucket_n = p.buckets.as_ref().map(|_| [0; T_BUCKETS]);
        return Ok(LossParts { loss: zero, stats, n_scored: 0, bucket_n });
    }
    loss_on(model, &host.upload(model.dtype, &model.device)?, ctx)
}

/// [`scored_loss`] of a batch already on the device: no host data is read or written, so a CUDA
/// graph can capture it. The batch must score at least one row.
pub fn loss_on(model: &Llama, db: &DeviceBatch, ctx: &Fwd) -> Result<LossParts> {
    weighted_ce(&scored_logits(model, db, ctx)?, &db.scored)
}

/// The logits (N, V) of the scored rows of `db`: the forward pass, then the LM head on those rows
/// only (hidden (B·L, D) → rows (N, D)).
fn scored_logits(model: &Llama, db: &DeviceBatch, ctx: &Fwd) -> Result<Tensor> {
    let h = model.hidden_at(&db.ids, db.bias.as_ref(), db.positions.as_ref(), db.time.as_ref(), ctx)?; // (B, L, D)
    let (b, l, d) = h.dims3()?;
    // (N, D); the rows are distinct, so the gradient is a scatter (no index_add)
    let hs = crate::kernels::layout::gather_rows(&h.reshape((b * l, d))?, &db.scored.rows)?;
    Ok(model.logits(&hs, ctx)?) // (N, V)
}

/// The unweighted cross-entropy of each scored row of `p` (inference, no graph), in `p.rows`
/// order: the per-sequence sums likelihood scoring needs, through the same forward as
/// [`scored_loss`].
pub fn row_ce(model: &Llama, p: &Prepared, seed: u64) -> Result<Vec<f32>> {
    if p.rows.is_empty() {
        return Ok(Vec::new());
    }
    let db = HostBatch::new(p, 1.0, seed, model.cfg.vocab_size)?.upload(model.dtype, &model.device)?;
    let logits = scored_logits(model, &db, &Fwd::default())?; // (N, V)
    let (ce, _) = crate::kernels::ce::cross_entropy(&logits, &db.scored.targets)?; // (N,)
    Ok(ce.to_dtype(DType::F32)?.to_vec1()?)
}

/// [`scored_loss`] from full logits (B, L, V) already computed: picks the scored rows, then
/// Σ w·CE / `total_denom`. Used by tests with hand-set logits.
pub fn loss_from_logits(logits: &Tensor, p: &Prepared, total_denom: f64) -> Result<LossParts> {
    let (b, l, v) = logits.dims3()?;
    let scored = HostScored::new(p, total_denom, v)?.upload(logits.device())?;
    let picked = logits.reshape((b * l, v))?.index_select(&scored.rows, 0)?; // (N, V)
    weighted_ce(&picked, &scored)
}

/// Σ w·CE / total over the scored rows' logits (N, V), in f32, with the unweighted CE sum and
/// the argmax hits of the valid rows beside it, and, with bucket one-hots, the unweighted CE
/// sum per bucket: a (1, N) × (N, K) matmul on the device, in the same stats tensor (no extra
/// sync).
fn weighted_ce(logits: &Tensor, s: &DeviceScored) -> Result<LossParts> {
    let (ce, hits) = crate::kernels::ce::cross_entropy(logits, &s.targets)?; // (N,), (N,)
    let loss = (&ce * &s.weights)?.sum_all()?.mul(&s.inv_denom)?; // ()
    let (ce, hits) = match &s.valid {
        Some(v) => ((ce.detach() * v)?, (hits * v)?),
        None => (ce.detach(), hits),
    };
    let mut stats = Tensor::stack(&[loss.detach(), ce.sum_all()?, hits.sum_all()?], 0)?; // (3,)
    if let Some(onehot) = &s.onehot {
        let n = ce.dim(0)?;
        let per_bucket = ce.to_dtype(DType::F32)?.reshape((1, n))?.matmul(onehot)?.reshape(T_BUCKETS)?; // (K,)
        stats = Tensor::cat(&[&stats, &per_bucket], 0)?; // (3 + K,)
    }
    Ok(LossParts { loss, stats, n_scored: s.n_scored, bucket_n: s.bucket_n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::mask::AttentionMode;

    fn prepared() -> Prepared {
        // 2 rows × 3 positions; row 1 is padded at position 2; rows scored: (0, 1), (0, 2), (1, 1).
        Prepared {
            input: vec![5, 6, 7, 5, 8, 0],
            b: 2,
            l: 3,
            attention: AttentionMode::Annealed { anneal_steps: 4 },
            step: 1,
            key_valid: Some(vec![vec![true; 3], vec![true, true, false]]),
            mask: None,
            positions: None,
            time: None,
            rows: vec![1, 2, 4],
            targets: vec![6, 7, 8],
            weights: vec![2.0, 2.0, 4.0],
            denom: 3.0,
            buckets: Some(vec![2, 2, 1]),
        }
    }

    #[test]
    fn padding_moves_rows_hides_extra_keys_and_fills_with_distinct_unscored_rows() {
        let p = prepared();
        let plain = HostBatch::new(&p, 3.0, 9, 10).unwrap();
        let shape = FixedShape { b: 2, l: 5, n: 7 };
        let h = HostBatch::padded(&p, 3.0, 9, 10, shape, 0).unwrap();
        assert_eq!(h.ids, vec![5, 6, 7, 0, 0, 5, 8, 0, 0, 0]);
        let s = &h.scored;
        assert_eq!(&s.rows[..3], &[1, 2, 6], "i·l + pos moved to i·lf + pos");
        let mut distinct = s.rows.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 7, "padding rows are distinct from each other and the scored rows");
        assert_eq!(s.weights, vec![2.0, 2.0, 4.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(s.valid.as_deref(), Some(&[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0][..]));
        assert_eq!((s.n_scored, s.bucket_n), (3, Some([0, 1, 2, 0, 0])));
        assert_eq!(s.onehot.as_ref().unwrap()[3 * T_BUCKETS..].iter().sum::<f32>(), 0.0);
        // the bias: the unpadded one in the top-left corner, extra keys hidden, extra queries self only
        let (pb, pr) = plain.bias.clone().unwrap();
        let (fb, fr) = h.bias.clone().unwrap();
        assert_eq!((pr, fr), (2, 2));
        for bi in 0..2 {
            for i in 0..5 {
                for j in 0..5 {
                    let got = fb[(bi * 5 + i) * 5 + j];
                    let want = if i < 3 && j < 3 {
                        pb[(bi * 3 + i) * 3 + j]
                    } else if i >= 3 && i == j {
                        0.0
                    } else {
                        MASKED_BIAS
                    };
                    assert_eq!(got, want, "row {bi} query {i} key {j}");
                }
            }
        }
        // too many rows, or a longer batch, is an error that names the fixed shape
        let e = HostBatch::padded(&p, 3.0, 9, 10, FixedShape { b: 2, l: 5, n: 2 }, 0).unwrap_err().to_string();
        assert!(e.contains("fixed shape"), "{e}");
        assert!(HostBatch::padded(&p, 3.0, 9, 10, FixedShape { b: 2, l: 2, n: 6 }, 0).is_err());
        // a zero normaliser scores nothing
        let z = HostBatch::padded(&p, 0.0, 9, 10, shape, 0).unwrap();
        assert_eq!((z.scored.n_scored, z.scored.valid.as_ref().unwrap().iter().sum::<f32>()), (0, 0.0));
    }

    #[test]
    fn the_fixed_shape_covers_every_scored_row() {
        let ex = |p: usize, r: usize| Example { prompt: vec![1; p], response: vec![2; r] };
        let s = FixedShape::for_examples(&[ex(3, 2), ex(5, 4), ex(4, 1)], 8).unwrap();
        assert_eq!((s.b, s.l, s.n), (8, 9, 8 * 7));
        assert!(FixedShape::for_examples(&[], 8).is_none());
        assert_eq!(FixedShape::for_examples(&[ex(0, 3)], 2).unwrap().n, 6, "at most b × l rows");
    }
}
