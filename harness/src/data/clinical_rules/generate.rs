//! Generation: families cycled in order, gold categories dealt from seeded decks, parameters
//! drawn until they fall in the wanted category and side of the train/test partition, options
//! chosen and ordered.

use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::vignettes::{Draw, Side};
use super::{resolve, Family, OptionOrder};
use crate::data::item::{Item, PromptParts};
use crate::data::rows;
use crate::error::{Error, Result};

/// Option labels of every item.
pub const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// Draws allowed to find parameters of a wanted category and partition side.
const MAX_TRIES: usize = 200_000;

/// Test side of a key of several decisive parameters: `splitmix64(fnv1a("<family>|<key>")) % 4 == 0`.
pub fn hashed_in_test(family: &str, key: &str) -> bool {
    rows::splitmix(rows::fnv1a(format!("{family}|{key}").as_bytes())).is_multiple_of(4)
}

/// Test side of a single decisive integer value (in the family's units, e.g. eGFR or tenths of
/// mmol/L): `value % 4 == 2`, except the lowest value of a category (`boundary`), kept in train.
pub fn scalar_in_test(value: i64, boundary: bool) -> bool {
    !boundary && value.rem_euclid(4) == 2
}

/// Side of a scalar value `v` under `rule` (boundary: the category changes between v-1 and v).
pub(super) fn scalar_side(v: i64, rule: impl Fn(i64) -> &'static str) -> bool {
    scalar_in_test(v, rule(v) != rule(v - 1))
}

/// One generated item with its provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// The item (4 options A-D, gold letter, the derivation as rationale).
    pub item: Item,
    /// Its family.
    pub family: &'static str,
    /// Its split key: canonical form of the values its side of the train/test partition is
    /// decided on (see the module doc), e.g. `egfr=38`, `sbp=142` or `bmi=261`.
    pub key: String,
    /// Canonical form of every parameter its rule reads, e.g. `sbp=142,dbp=76` or `h=175,w=80`
    /// (the same as `key` for the one-number families).
    pub params: String,
    /// The gold category text.
    pub category: &'static str,
}

/// Generates `n` items of `families` ([`resolve_families`](super::resolve_families): the
/// default set when empty) on the test side of the partition when `test` is set, else the
/// train side, with the options in `order`. Deterministic in (`families`, `n`, `test`, `seed`,
/// `order`); the two orders give the same vignettes and option sets.
pub fn generate(families: &[String], n: usize, test: bool, seed: u64, order: OptionOrder) -> Result<Vec<Case>> {
    let fams = resolve(families)?;
    let split = if test { "test" } else { "train" };
    let mut rng = rows::rng_for(seed, &format!("clinical-rules/{split}"));
    let mut decks: Vec<Vec<&'static str>> = vec![Vec::new(); fams.len()];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let fi = i % fams.len();
        let family = fams[fi];
        if decks[fi].is_empty() {
            let mut deck = family.gold().to_vec();
            deck.shuffle(&mut rng);
            deck.reverse();
            decks[fi] = deck;
        }
        let name = family.name;
        let Some(want) = decks[fi].pop() else {
            return Err(Error::msg(format!("clinical-rules: family {name} has no categories")));
        };
        let mut found = None;
        for _ in 0..MAX_TRIES {
            let d = (family.draw)(&mut rng);
            let test_side = match d.side {
                Side::Values(t) => t,
                Side::Hashed => Some(hashed_in_test(name, &d.key)),
            };
            if d.category == want && test_side == Some(test) {
                found = Some(d);
                break;
            }
        }
        let d = found.ok_or_else(|| {
            Error::msg(format!("clinical-rules: could not draw a {split} item of {name} with answer `{want}`"))
        })?;
        out.push(to_case(family, d, format!("cr-{split}-{i:05}"), order, &mut rng));
    }
    Ok(out)
}

/// The item of a drawn vignette: three distractors of the family drawn at random beside the
/// gold, in `order`.
fn to_case(family: &'static Family, d: Draw, id: String, order: OptionOrder, rng: &mut ChaCha8Rng) -> Case {
    let pool = family.options;
    let mut texts: Vec<&'static str> = pool.iter().copied().filter(|c| *c != d.category).collect();
    texts.shuffle(rng);
    texts.truncate(3);
    texts.push(d.category);
    // Both orders consume the same random numbers, so they differ only in the order below.
    texts.shuffle(rng);
    if order == OptionOrder::Rule {
        texts.sort_by_key(|t| pool.iter().position(|p| p == t));
    }
    let gold = texts.iter().position(|t| *t == d.category);
    let options = LETTERS.iter().zip(&texts).map(|(l, t)| (l.to_string(), t.to_string())).collect();
    Case {
        item: Item {
            id,
            parts: PromptParts { instruction: None, contexts: vec![d.context], question: d.question, options },
            choices: LETTERS[..texts.len()].iter().map(|s| s.to_string()).collect(),
            gold,
            response: None,
            rationale: Some(d.explanation),
        },
        family: family.name,
        key: d.key,
        params: d.params,
        category: d.category,
    }
}
