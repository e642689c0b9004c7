//! Packing with document masks (LLaMA-Factory's `neat_packing`, NeMo's packed SFT):
//! `train.pack_to = C` lays the sequences of a prepared micro-batch end to end in rows of at most
//! C columns, so short pairs stop paying for padding.
//!
//! Packing acts on a [`Prepared`] micro-batch, after the objective has drawn its times and masks
//! and chosen its scored rows, targets, weights and normaliser for the unpacked batch: so every
//! pair is masked, weighted and normalised exactly as it would be unpacked, whatever the
//! objective. Each pair keeps its own columns (the real ones: right padding is dropped), its
//! own RoPE positions (restarting at 0, or the two-copy layout's), its own diffusion time per
//! column (a time-conditioned model's), and its own visibility —
//! annealed, causal, full or block-diffusion — inside a block-diagonal mask: no query sees
//! another pair. The columns after the last pair of a row are spare: hidden from every pair,
//! never scored. The mask travels as [`Segments`] (pair and column ids per column, built into
//! the bias on the device), or explicitly for a batch that has a visibility per row. So the packed micro-batch gives the same loss and gradients as the
//! unpacked one, up to floating-point rounding (`tests/packing.rs`).
//!
//! Pairs go to rows first-fit in batch order (deterministic); a pair longer than C gets a row of
//! its own. The packed width is the fullest row's, so the shape changes from step to step and
//! the step runs eagerly.

use super::Prepared;
use crate::model::mask::{pair_visibility, visibility, RowMask, Segments};
use crate::{Error, Result};

/// Where one sequence of the unpacked micro-batch went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Packed row.
    pub row: usize,
    /// First column in that row.
    pub offset: usize,
    /// Columns (the sequence's real ones).
    pub len: usize,
}

/// The real columns of each row of `p`: up to its last valid key (right padding dropped), or all
/// `l` when every key is real.
fn real_lengths(p: &Prepared) -> Vec<usize> {
    match &p.key_valid {
        Some(kv) => kv.iter().map(|row| row.iter().rposition(|&v| v).map_or(0, |j| j + 1)).collect(),
        None => vec![p.l; p.b],
    }
}

/// First-fit of sequences of `lens` into rows of `capacity` columns, in order.
pub fn place(lens: &[usize], capacity: usize) -> Vec<Placement> {
    let mut fill: Vec<usize> = Vec::new();
    lens.iter()
        .map(|&n| {
            let row = fill.iter().position(|&f| f + n <= capacity).unwrap_or_else(|| {
                fill.push(0);
                fill.len() - 1
            });
            let offset = fill[row];
            fill[row] += n;
            Placement { row, offset, len: n }
        })
        .collect()
}

/// `p` packed into rows of at most `capacity` columns (see the module documentation); `seed` is
/// the run seed an annealed mask of `p` is drawn from. Returns the packed micro-batch and where
/// each sequence went.
pub fn pack(p: &Prepared, capacity: usize, seed: u64) -> Result<(Prepared, Vec<Placement>)> {
    if capacity == 0 {
        return Err(Error::config("train.pack_to", "must be ≥ 1 (0 turns packing off)"));
    }
    let (b, l) = (p.b, p.l);
    let lens = real_lengths(p);
    let places = place(&lens, capacity);
    let rows = places.iter().map(|q| q.row + 1).max().unwrap_or(0);
    let lp = places.iter().map(|q| q.offset + q.len).max().unwrap_or(0).max(1);
    let mut input = vec![p.input.first().copied().unwrap_or(0); rows * lp];
    let mut positions = vec![0u32; rows * lp];
    let mut pair = vec![Segments::SPARE; rows * lp];
    let mut local = vec![0u32; rows * lp];
    let mut time = p.time.as_ref().map(|_| vec![0f32; rows * lp]); // spare columns: t = 0, unread
    for (i, q) in places.iter().enumerate() {
        let base = q.row * lp + q.offset;
        input[base..base + q.len].copy_from_slice(&p.input[i * l..i * l + q.len]);
        for c in 0..q.len {
            positions[base + c] = p.positions.as_ref().map_or(c as u32, |pos| pos[i * l + c]);
            pair[base + c] = i as u32;
            local[base + c] = c as u32;
        }
        if let (Some(dst), Some(src)) = (time.as_mut(), p.time.as_ref()) {
            dst[base..base + q.len].copy_from_slice(&src[i * l..i * l + q.len]);
        }
    }
    // One visibility for every pair (the unpacked batch's mode and draw), built on the device; a
    // batch whose rows have their own mask (block diffusion's two copies) is packed explicitly.
    let mask = match &p.mask {
        None => RowMask::Packed(Segments { pair, local, base: visibility(p.attention, l, p.step, seed), base_l: l }),
        Some(m) => {
            let v = m.visibility(p.b, l); // (B, L, L)
            RowMask::Explicit(pair_visibility(&pair, &local, lp, |i, a, b| v[(i * l + a) * l + b]))
        }
    };
    let mut out_rows = Vec::with_capacity(p.rows.len());
    for &r in &p.rows {
        let (i, c) = (r as usize / l, r as usize % l);
        let q = places.get(i).ok_or_else(|| Error::msg(format!("scored row {r} outside the {b} × {l} micro-batch")))?;
        if c >= q.len {
            return Err(Error::msg(format!("scored column {c} of sequence {i} lies in its padding (length {}): it cannot be packed", q.len)));
        }
        out_rows.push((q.row * lp + q.offset + c) as u32);
    }
    let packed = Prepared {
        input,
        b: rows,
        l: lp,
        key_valid: None,
        mask: Some(mask),
        positions: Some(positions),
        time,
        rows: out_rows,
        targets: p.targets.clone(),
        weights: p.weights.clone(),
        buckets: p.buckets.clone(),
        ..p.clone()
    };
    Ok((packed, places))
}
