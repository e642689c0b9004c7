//! The vignette templates: for each family, a function that draws the decisive parameters and
//! writes the vignette, the question and the rationale around them. Each consumes the random
//! stream in a fixed order, so for one seed the items never change.

use rand::seq::IndexedRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::generate::scalar_side;
use super::rules::*;

/// How a draw's side of the train/test partition is decided (see the module doc of
/// [`clinical_rules`](super)).
pub(super) enum Side {
    /// From the deciding values, each sided by [`scalar_in_test`](super::scalar_in_test):
    /// `Some(test)` when they all agree, `None` when they do not (the draw is on neither side
    /// and is rejected).
    Values(Option<bool>),
    /// [`hashed_in_test`](super::hashed_in_test) of the family's name and the key.
    Hashed,
}

impl Side {
    /// The side of a draw whose deciding values have the sides `sides`: all test, all train,
    /// or neither.
    fn all(sides: &[bool]) -> Side {
        let first = sides.first().copied().unwrap_or(false);
        Side::Values(sides.iter().all(|&t| t == first).then_some(first))
    }
}

/// A drawn vignette before it becomes an item.
pub(super) struct Draw {
    /// The split key: canonical form of the values the side is decided on, e.g. `egfr=38`.
    pub(super) key: String,
    /// Canonical form of every parameter the rule reads, e.g. `sbp=128,dbp=76`.
    pub(super) params: String,
    /// How its side of the train/test partition is decided.
    pub(super) side: Side,
    /// The gold category.
    pub(super) category: &'static str,
    /// The vignette.
    pub(super) context: String,
    /// The question.
    pub(super) question: String,
    /// The rationale: a short derivation that ends in `: <category>.`, the category written
    /// exactly as its option, e.g. `eGFR 38 in 30-44: G3b: moderately to severely decreased GFR.`.
    pub(super) explanation: String,
}

const FEMALE_NAMES: [&str; 12] =
    ["Maria", "Aisha", "Elena", "Grace", "Priya", "Sofia", "Hannah", "Mei", "Fatima", "Olga", "Chloe", "Amara"];
const MALE_NAMES: [&str; 12] =
    ["James", "Omar", "Luis", "Chen", "David", "Ravi", "Tom", "Kwame", "Ivan", "Hiroshi", "Samuel", "Ali"];

fn pick<'a>(rng: &mut ChaCha8Rng, xs: &[&'a str]) -> &'a str {
    xs.choose(rng).copied().unwrap_or("")
}

fn draw_sex(rng: &mut ChaCha8Rng) -> Sex {
    if rng.random_bool(0.5) {
        Sex::Female
    } else {
        Sex::Male
    }
}

/// A value placed in a range, as a rationale writes it: `38 in 30-44`, `148 >= 140`, `76 < 80`.
fn placed(value: impl std::fmt::Display, range: &str) -> String {
    if range.starts_with(|c: char| c.is_ascii_digit()) {
        format!("{value} in {range}")
    } else {
        format!("{value} {range}")
    }
}

/// The subject of a vignette's first sentence, e.g. `Maria, a 54-year-old woman,`.
fn subject(rng: &mut ChaCha8Rng, sex: Sex, age: u32) -> String {
    let (name, noun, word) = match sex {
        Sex::Female => (pick(rng, &FEMALE_NAMES), "woman", "female"),
        Sex::Male => (pick(rng, &MALE_NAMES), "man", "male"),
    };
    match rng.random_range(0..4) {
        0 => format!("{name}, a {age}-year-old {noun},"),
        1 => {
            let spoken_vowel = matches!(age, 8 | 11 | 18 | 80..=89);
            format!("{} {age}-year-old {noun}", if spoken_vowel { "An" } else { "A" })
        }
        2 => format!("{name} ({age} years, {word})"),
        _ => format!("The patient, a {noun} aged {age},"),
    }
}

pub(super) fn draw_bp(rng: &mut ChaCha8Rng) -> Draw {
    let sbp: u32 = rng.random_range(95..=175);
    let dbp: u32 = rng.random_range(55..=110).min(sbp - 25);
    let (sex, age) = (draw_sex(rng), rng.random_range(25..=80));
    let s = subject(rng, sex, age);
    let context = match rng.random_range(0..4) {
        0 => format!("{s} has a seated office blood pressure of {sbp}/{dbp} mmHg, averaged over two readings."),
        1 => format!("{s} attends a check-up. Blood pressure: systolic {sbp} mmHg, diastolic {dbp} mmHg."),
        2 => format!("{s} is seen in clinic; the average of repeated readings is {sbp}/{dbp} mmHg."),
        _ => format!("{s} has no symptoms. Measured blood pressure is {sbp}/{dbp} mmHg on two occasions."),
    };
    let question = pick(rng, &[
        "According to the ACC/AHA 2017 guideline, how is this blood pressure classified?",
        "Which blood pressure category applies?",
        "What is the blood pressure category of this patient?",
    ]);
    let category = bp_category(sbp, dbp);
    let (by_s, by_d) = (bp_systolic_category(sbp), bp_diastolic_category(dbp));
    // The deciding numbers: those whose own category is the reading's (both when they tie).
    let mut key = Vec::new();
    let mut sides = Vec::new();
    if by_s == category {
        key.push(format!("sbp={sbp}"));
        sides.push(scalar_side(i64::from(sbp), |v| bp_systolic_category(v.max(0) as u32)));
    }
    if by_d == category {
        key.push(format!("dbp={dbp}"));
        sides.push(scalar_side(i64::from(dbp), |v| bp_diastolic_category(v.max(0) as u32)));
    }
    let s_range = BP_SYSTOLIC_RANGES[rank(&BP_CATEGORIES, by_s)];
    let d_range = BP_DIASTOLIC_RANGES[rank(&BP_CATEGORIES, by_d)];
    Draw {
        side: Side::all(&sides),
        key: key.join(","),
        params: format!("sbp={sbp},dbp={dbp}"),
        category,
        context,
        question: question.to_string(),
        explanation: format!("SBP {}, DBP {}: {category}.", placed(sbp, s_range), placed(dbp, d_range)),
    }
}

pub(super) fn draw_bmi(rng: &mut ChaCha8Rng) -> Draw {
    let h: u32 = rng.random_range(148..=200);
    let w: u32 = rng.random_range(38..=175);
    let b = bmi(h, w);
    let (sex, age) = (draw_sex(rng), rng.random_range(20..=80));
    let s = subject(rng, sex, age);
    let m = f64::from(h) / 100.0;
    let context = match rng.random_range(0..3) {
        0 => format!("{s} is {h} cm tall and weighs {w} kg."),
        1 => format!("{s} has a height of {h} cm and a weight of {w} kg (BMI {b:.1} kg/m2)."),
        _ => format!("{s} presents for a health check. Weight {w} kg, height {m:.2} m, body-mass index {b:.1}."),
    };
    let question = pick(rng, &[
        "What is the WHO weight category?",
        "How is this body-mass index classified by the WHO?",
        "Which WHO BMI class applies?",
    ]);
    let category = bmi_class(b);
    let range = BMI_RANGES[rank(&BMI_CLASSES, category)];
    // The deciding number is the BMI itself (in tenths), not the height and weight behind it.
    let t = tenths(b);
    Draw {
        side: Side::all(&[scalar_side(t, |v| bmi_class(v as f64 / 10.0))]),
        key: format!("bmi={t}"),
        params: format!("h={h},w={w}"),
        category,
        context,
        question: question.to_string(),
        explanation: format!("BMI {w}/{m:.2}^2 = {}: {category}.", placed(format!("{b:.1}"), range)),
    }
}

pub(super) fn draw_ckd(rng: &mut ChaCha8Rng) -> Draw {
    let e: u32 = rng.random_range(4..=130);
    let (sex, age) = (draw_sex(rng), rng.random_range(30..=90));
    let s = subject(rng, sex, age);
    let context = match rng.random_range(0..3) {
        0 => format!("{s} has an eGFR of {e} mL/min/1.73 m2, stable over more than three months."),
        1 => format!("{s} is followed for chronic kidney disease. The latest eGFR is {e} mL/min/1.73 m2."),
        _ => format!(
            "{s} has had abnormal kidney tests for six months; estimated glomerular filtration rate: {e} mL/min/1.73 m2."
        ),
    };
    let question = pick(rng, &[
        "What is the KDIGO GFR category?",
        "Which CKD G-stage (KDIGO 2012) applies?",
        "How is this kidney function categorised by KDIGO?",
    ]);
    let category = ckd_g_stage(e);
    let range = CKD_RANGES[rank(&CKD_STAGES, category)];
    Draw {
        side: Side::all(&[scalar_side(i64::from(e), |v| ckd_g_stage(v.max(0) as u32))]),
        key: format!("egfr={e}"),
        params: format!("egfr={e}"),
        category,
        context,
        question: question.to_string(),
        explanation: format!("eGFR {}: {category}.", placed(e, range)),
    }
}

pub(super) fn draw_anemia(rng: &mut ChaCha8Rng) -> Draw {
    let hb: u32 = rng.random_range(50..=170); // g/L
    let (sex, age) = (draw_sex(rng), rng.random_range(18..=85));
    let s = subject(rng, sex, age);
    let dl = f64::from(hb) / 10.0;
    let preg = if sex == Sex::Female { " She is not pregnant." } else { "" };
    let context = match rng.random_range(0..3) {
        0 => format!("{s} has a hemoglobin of {dl:.1} g/dL.{preg}"),
        1 => format!("{s} has a full blood count: hemoglobin {hb} g/L.{preg}"),
        _ => format!("{s} reports tiredness. Hemoglobin is {dl:.1} g/dL; other indices are pending.{preg}"),
    };
    let question = pick(rng, &[
        "Using the WHO hemoglobin thresholds, how severe is the anemia?",
        "What is the WHO anemia severity?",
        "How should this hemoglobin level be classified?",
    ]);
    let category = anemia_severity(dl, sex);
    let who = if sex == Sex::Female { "woman" } else { "man" };
    let ranges = if sex == Sex::Female { &ANEMIA_RANGES_FEMALE } else { &ANEMIA_RANGES_MALE };
    let range = ranges[rank(&ANEMIA_SEVERITIES, category)];
    let key = format!("sex={},hb={hb}", if sex == Sex::Female { "f" } else { "m" });
    Draw {
        side: Side::all(&[scalar_side(i64::from(hb), |v| anemia_severity(v as f64 / 10.0, sex))]),
        params: key.clone(),
        key,
        category,
        context,
        question: question.to_string(),
        explanation: format!("Hb {} ({who}): {category}.", placed(format!("{dl:.1}"), range)),
    }
}

pub(super) fn draw_glycemia(rng: &mut ChaCha8Rng) -> Draw {
    let (sex, age) = (draw_sex(rng), rng.random_range(20..=80));
    let s = subject(rng, sex, age);
    let question = pick(rng, &[
        "How is this result classified by ADA criteria?",
        "What does this result indicate?",
        "Which glycemic category applies?",
    ])
    .to_string();
    if rng.random_bool(0.5) {
        let g: u32 = rng.random_range(40..=260);
        let context = match rng.random_range(0..3) {
            0 => format!("{s} has a fasting plasma glucose of {g} mg/dL after an overnight fast."),
            1 => format!("{s} comes for screening. Fasting glucose: {g} mg/dL."),
            _ => format!("{s} has no symptoms. A fasting plasma glucose drawn this morning is {g} mg/dL."),
        };
        let category = glycemia_from_fpg(g);
        let range = FPG_RANGES[rank(&GLYCEMIA_CATEGORIES, category)];
        Draw {
            side: Side::all(&[scalar_side(i64::from(g), |v| glycemia_from_fpg(v.max(0) as u32))]),
            key: format!("fpg={g}"),
            params: format!("fpg={g}"),
            category,
            context,
            question,
            explanation: format!("Glucose {}: {category}.", placed(g, range)),
        }
    } else {
        let t: u32 = rng.random_range(40..=130);
        let a = f64::from(t) / 10.0;
        let context = match rng.random_range(0..3) {
            0 => format!("{s} has an HbA1c of {a:.1}%."),
            1 => format!("{s} is screened for diabetes; glycated hemoglobin (HbA1c) is {a:.1}%."),
            _ => format!("{s} has routine blood tests. HbA1c: {a:.1}%."),
        };
        let category = glycemia_from_hba1c(a);
        let range = HBA1C_RANGES[rank(&GLYCEMIA_CATEGORIES, category)];
        Draw {
            side: Side::all(&[scalar_side(i64::from(t), |v| glycemia_from_hba1c(v as f64 / 10.0))]),
            key: format!("a1c={t}"),
            params: format!("a1c={t}"),
            category,
            context,
            question,
            explanation: format!("HbA1c {}: {category}.", placed(format!("{a:.1}"), range)),
        }
    }
}

pub(super) fn draw_curb65(rng: &mut ChaCha8Rng) -> Draw {
    let sbp: u32 = rng.random_range(75..=165);
    let f = Curb65 {
        confused: rng.random_bool(0.5),
        urea_mmol_l: f64::from(rng.random_range(30u32..=160)) / 10.0,
        resp_rate: rng.random_range(12..=40),
        sbp,
        dbp: rng.random_range(40..=100).min(sbp - 15),
        age: rng.random_range(20..=95),
    };
    let sex = draw_sex(rng);
    let s = subject(rng, sex, f.age);
    let conf = if f.confused {
        pick(rng, &["The patient is newly confused.", "There is new disorientation to time and place."])
    } else {
        pick(rng, &["The patient is alert and fully oriented.", "Mental status is normal."])
    };
    let (u, rr, d) = (f.urea_mmol_l, f.resp_rate, f.dbp);
    let context = match rng.random_range(0..3) {
        0 => format!(
            "{s} presents with community-acquired pneumonia. {conf} Respiratory rate {rr}/min, blood pressure {sbp}/{d} mmHg, serum urea {u:.1} mmol/L."
        ),
        1 => format!(
            "{s} has a chest X-ray confirming pneumonia. Observations: respiratory rate {rr} breaths/min, BP {sbp}/{d} mmHg. Urea {u:.1} mmol/L. {conf}"
        ),
        _ => format!(
            "{s} is assessed in the emergency department for pneumonia. Urea is {u:.1} mmol/L, respiratory rate {rr}/min and blood pressure {sbp}/{d} mmHg. {conf}"
        ),
    };
    let question = pick(rng, &[
        "Based on the CURB-65 score, what is the severity and recommended management?",
        "What does CURB-65 indicate for this patient?",
        "How severe is this pneumonia by CURB-65?",
    ]);
    let score = curb65_score(&f);
    let category = curb65_category(score);
    let b = |x: bool| u32::from(x);
    let key = format!("c={},u={},rr={rr},sbp={sbp},dbp={d},age={}", b(f.confused), tenths(u), f.age);
    Draw {
        side: Side::Hashed,
        params: key.clone(),
        key,
        category,
        context,
        question: question.to_string(),
        // C U R B 65: one point each, then the sum.
        explanation: format!(
            "CURB-65 {}+{}+{}+{}+{} = {score}: {category}.",
            b(f.confused),
            b(tenths(u) > 70),
            b(rr >= 30),
            b(sbp < 90 || d <= 60),
            b(f.age >= 65)
        ),
    }
}

pub(super) fn draw_cha2ds2_vasc(rng: &mut ChaCha8Rng) -> Draw {
    let f = Cha2ds2Vasc {
        age: rng.random_range(35..=90),
        sex: draw_sex(rng),
        heart_failure: rng.random_bool(0.2),
        hypertension: rng.random_bool(0.3),
        diabetes: rng.random_bool(0.2),
        stroke: rng.random_bool(0.15),
        vascular: rng.random_bool(0.2),
    };
    let s = subject(rng, f.sex, f.age);
    let conds = [
        (f.heart_failure, "heart failure"),
        (f.hypertension, "treated hypertension"),
        (f.diabetes, "type 2 diabetes"),
        (f.stroke, pick(rng, &["a previous transient ischemic attack", "a prior ischemic stroke"])),
        (f.vascular, pick(rng, &["peripheral artery disease", "a prior myocardial infarction"])),
    ];
    let present: Vec<&str> = conds.iter().filter(|c| c.0).map(|c| c.1).collect();
    let absent: Vec<&str> = conds.iter().filter(|c| !c.0).map(|c| c.1).collect();
    let history = if present.is_empty() { "no relevant past history".to_string() } else { present.join(", ") };
    let context = match rng.random_range(0..3) {
        0 => {
            let none = if absent.is_empty() { String::new() } else { format!(" No {}.", absent.join(", no ")) };
            format!("{s} is found to have non-valvular atrial fibrillation. History: {history}.{none}")
        }
        1 => format!(
            "{s} presents with palpitations; the ECG shows atrial fibrillation (no mechanical valve, no mitral stenosis). Past history: {history}."
        ),
        _ => format!("{s} has paroxysmal non-valvular atrial fibrillation. Comorbidities: {history}."),
    };
    let question = pick(rng, &[
        "According to CHA2DS2-VASc (ESC 2020), what stroke prevention is indicated?",
        "What is the recommended antithrombotic strategy?",
        "Which recommendation follows from the CHA2DS2-VASc score?",
    ]);
    let score = cha2ds2_vasc_score(&f);
    let category = cha2ds2_vasc_recommendation(score, f.sex);
    // The points present, by the score's letters (C H A2 D S2 V A Sc).
    let mut parts: Vec<&str> = Vec::new();
    if f.heart_failure {
        parts.push("C1");
    }
    if f.hypertension {
        parts.push("H1");
    }
    if f.age >= 75 {
        parts.push("A2");
    }
    if f.diabetes {
        parts.push("D1");
    }
    if f.stroke {
        parts.push("S2");
    }
    if f.vascular {
        parts.push("V1");
    }
    if (65..75).contains(&f.age) {
        parts.push("A1");
    }
    if f.sex == Sex::Female {
        parts.push("Sc1");
    }
    let sum = if parts.is_empty() { format!("{score}") } else { format!("{} = {score}", parts.join("+")) };
    let b = |x: bool| u32::from(x);
    let key = format!(
        "age={},sex={},c={},h={},d={},s={},v={}",
        f.age,
        if f.sex == Sex::Female { "f" } else { "m" },
        b(f.heart_failure),
        b(f.hypertension),
        b(f.diabetes),
        b(f.stroke),
        b(f.vascular)
    );
    Draw {
        side: Side::Hashed,
        params: key.clone(),
        key,
        category,
        context,
        question: question.to_string(),
        explanation: format!(
            "CHA2DS2-VASc {sum} ({}): {category}.",
            if f.sex == Sex::Female { "woman" } else { "man" }
        ),
    }
}

pub(super) fn draw_sodium(rng: &mut ChaCha8Rng) -> Draw {
    let na: u32 = rng.random_range(108..=165);
    let (sex, age) = (draw_sex(rng), rng.random_range(20..=90));
    let s = subject(rng, sex, age);
    let context = match rng.random_range(0..3) {
        0 => format!("{s} has a serum sodium of {na} mmol/L."),
        1 => format!("{s} is admitted with nausea and headache. Serum sodium is {na} mmol/L."),
        _ => format!("{s} has routine blood tests: sodium {na} mmol/L."),
    };
    let question = pick(rng, &[
        "How is the serum sodium classified?",
        "What is the sodium disorder, if any?",
        "Which category describes this sodium level?",
    ]);
    let category = sodium_category(na);
    let range = SODIUM_RANGES[rank(&SODIUM_CATEGORIES, category)];
    Draw {
        side: Side::all(&[scalar_side(i64::from(na), |v| sodium_category(v.max(0) as u32))]),
        key: format!("na={na}"),
        params: format!("na={na}"),
        category,
        context,
        question: question.to_string(),
        explanation: format!("Na {}: {category}.", placed(na, range)),
    }
}

pub(super) fn draw_potassium(rng: &mut ChaCha8Rng) -> Draw {
    let t: u32 = rng.random_range(15..=85);
    let k = f64::from(t) / 10.0;
    let (sex, age) = (draw_sex(rng), rng.random_range(20..=90));
    let s = subject(rng, sex, age);
    let context = match rng.random_range(0..3) {
        0 => format!("{s} has a serum potassium of {k:.1} mmol/L."),
        1 => format!("{s} has blood tests before elective surgery; potassium is {k:.1} mmol/L."),
        _ => format!("{s} feels weak. Serum K+ is {k:.1} mmol/L on today's laboratory results."),
    };
    let question = pick(rng, &[
        "How is the serum potassium classified?",
        "What is the potassium disorder, if any?",
        "Which category describes this potassium level?",
    ]);
    let category = potassium_category(k);
    let range = POTASSIUM_RANGES[rank(&POTASSIUM_CATEGORIES, category)];
    Draw {
        side: Side::all(&[scalar_side(i64::from(t), |v| potassium_category(v as f64 / 10.0))]),
        key: format!("k={t}"),
        params: format!("k={t}"),
        category,
        context,
        question: question.to_string(),
        explanation: format!("K {}: {category}.", placed(format!("{k:.1}"), range)),
    }
}

pub(super) fn draw_aki(rng: &mut ChaCha8Rng) -> Draw {
    let bt: u32 = rng.random_range(5..=20);
    let ct: u32 = rng.random_range(bt - 1..=70);
    let (b, c) = (f64::from(bt) / 10.0, f64::from(ct) / 10.0);
    let (sex, age) = (draw_sex(rng), rng.random_range(20..=90));
    let s = subject(rng, sex, age);
    let context = match rng.random_range(0..3) {
        0 => format!("{s} has a baseline serum creatinine of {b:.1} mg/dL; 48 hours after contrast imaging it is {c:.1} mg/dL."),
        1 => format!("{s} is in hospital after surgery. Creatinine: {b:.1} mg/dL before surgery, {c:.1} mg/dL two days later."),
        _ => format!(
            "{s} is monitored in intensive care. Serum creatinine changed from {b:.1} to {c:.1} mg/dL over 48 hours. Urine output was not recorded."
        ),
    };
    let question = pick(rng, &[
        "What is the KDIGO AKI stage by creatinine criteria?",
        "How is this acute kidney injury staged (KDIGO 2012)?",
        "Which KDIGO stage applies, using creatinine only?",
    ]);
    let category = aki_stage(b, c);
    let ratio = f64::from(ct) / f64::from(bt);
    // The criterion that set the stage (the same integer comparisons as `aki_stage`).
    let reason = match rank(&AKI_STAGES, category) {
        3 if ct >= 3 * bt => ">= 3.0x",
        3 => "Cr >= 4.0",
        2 => "2.0-2.9x",
        1 if 10 * ct >= 15 * bt => "1.5-1.9x",
        1 => "rise >= 0.3",
        _ => "under 1.5x and 0.3",
    };
    // The split key is the ratio to baseline as a reduced fraction (current/baseline in
    // tenths), the number most stages are read from.
    let g = gcd(ct, bt);
    Draw {
        side: Side::Hashed,
        key: format!("ratio={}/{}", ct / g, bt / g),
        params: format!("b={bt},c={ct}"),
        category,
        context,
        question: question.to_string(),
        explanation: format!("Cr {c:.1}/{b:.1} = {ratio:.2}x, rise {:+.1}, {reason}: {category}.", c - b),
    }
}

/// Greatest common divisor (`gcd(0, 0) = 1`, so dividing by it is always defined).
fn gcd(a: u32, b: u32) -> u32 {
    let (mut a, mut b) = (a, b);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}
