//! Seeded random generators.
//!
//! Every random draw in the harness comes from a [`ChaCha8Rng`] seeded from the run seed, a
//! purpose tag and a counter (usually the optimizer step). Two runs with the same seed and config
//! therefore draw the same numbers, and a draw for one purpose (say the attention mask of step 7)
//! does not depend on how many numbers another purpose consumed before it.

use rand::SeedableRng;
pub use rand_chacha::ChaCha8Rng;

/// What a generator is used for; part of its seed. New purposes go last: the discriminant is
/// part of the seed, so reordering would change every earlier draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The annealed attention mask of a step.
    AnnealMask,
    /// Diffusion times t of a micro-batch.
    Time,
    /// Which response tokens get masked.
    NoiseMask,
    /// Order of training examples in an epoch.
    DataOrder,
    /// Initial values of adapters (LoRA A) or random models.
    Init,
    /// LoRA dropout.
    Dropout,
    /// Decoding (random unmasking order, temperature sampling).
    Sampler,
    /// Monte Carlo likelihood estimates.
    Likelihood,
    /// Evaluation-time losses on the dev split.
    EvalLoss,
    /// Which test items `eval.limit` keeps (a seeded shuffle of the labelled items).
    EvalSample,
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 64-bit seed of the generator for (`seed`, `purpose`, `counter`, `sub`).
pub fn derive_seed(seed: u64, purpose: Purpose, counter: u64, sub: u64) -> u64 {
    let mut h = splitmix64(seed);
    h = splitmix64(h ^ (purpose as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    h = splitmix64(h ^ counter);
    splitmix64(h ^ sub.wrapping_mul(0x9FB2_1C65_1E98_DF25))
}

/// A generator for (`seed`, `purpose`, `counter`, `sub`): `counter` is usually the optimizer step,
/// `sub` the micro-batch or layer index.
pub fn rng_for(seed: u64, purpose: Purpose, counter: u64, sub: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive_seed(seed, purpose, counter, sub))
}
