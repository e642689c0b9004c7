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
    /// One decisive number: its side, from [`scalar_in_test`](super::scalar_in_test).
    Scalar(bool),
    /// Several decisive numbers: [`hashed_in_test`](super::hashed_in_test) of the family's
    /// name and the key.
    Hashed,
}

/// A drawn vignette before it becomes an item.
pub(super) struct Draw {
    /// Canonical key of the decisive parameters, e.g. `egfr=38`.
    pub(super) key: String,
    /// How its side of the train/test partition is decided.
    pub(super) side: Side,
    /// The gold category.
    pub(super) category: &'static str,
    /// The vignette.
    pub(super) context: String,
    /// The question.
    pub(super) question: String,
    /// The rationale, e.g. `eGFR 38 is in 30-44: G3b.`.
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
    let why = BP_CRITERIA[rank(&BP_CATEGORIES, category)];
    Draw {
        side: Side::Hashed,
        key: format!("sbp={sbp},dbp={dbp}"),
        category,
        context,
        question: question.to_string(),
        explanation: format!("BP {sbp}/{dbp}: {why}: {category}."),
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
    Draw {
        side: Side::Hashed,
        key: format!("h={h},w={w}"),
        category,
        context,
        question: question.to_string(),
        explanation: format!("BMI = {w} / {m:.2}^2 = {b:.1} kg/m2, in {range}: {category}."),
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
    // The stage's code is its name up to the colon (`G3b: moderately ...` → `G3b`).
    let code = category.split(':').next().unwrap_or(category);
    Draw {
        side: Side::Scalar(scalar_side(i64::from(e), |v| ckd_g_stage(v.max(0) as u32))),
        key: format!("egfr={e}"),
        category,
        context,
        question: question.to_string(),
        explanation: format!("eGFR {e} is in {range}: {code}."),
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
    let who = if sex == Sex::Female { "a non-pregnant woman" } else { "a man" };
    let ranges = if sex == Sex::Female { &ANEMIA_RANGES_FEMALE } else { &ANEMIA_RANGES_MALE };
    let range = ranges[rank(&ANEMIA_SEVERITIES, category)];
    Draw {
        side: Side::Scalar(scalar_side(i64::from(hb), |v| anemia_severity(v as f64 / 10.0, sex))),
        key: format!("sex={},hb={hb}", if sex == Sex::Female { "f" } else { "m" }),
        category,
        context,
        question: question.to_string(),
        explanation: format!("Hb {dl:.1} g/dL in {who} is in {range}: {category}."),
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
            side: Side::Scalar(scalar_side(i64::from(g), |v| glycemia_from_fpg(v.max(0) as u32))),
            key: format!("fpg={g}"),
            category,
            context,
            question,
            explanation: format!("Fasting glucose {g} mg/dL is in {range}: {category}."),
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
            side: Side::Scalar(scalar_side(i64::from(t), |v| glycemia_from_hba1c(v as f64 / 10.0))),
            key: format!("a1c={t}"),
            category,
            context,
            question,
            explanation: format!("HbA1c {a:.1}% is in {range}: {category}."),
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
        key,
        category,
        context,
        question: question.to_string(),
        explanation: format!(
            "CURB-65 = {score} (confusion {}, urea > 7 {}, RR >= 30 {}, SBP < 90 or DBP <= 60 {}, age >= 65 {}): {category}.",
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
    let mut parts: Vec<String> = Vec::new();
    if f.heart_failure {
        parts.push("heart failure +1".into());
    }
    if f.hypertension {
        parts.push("hypertension +1".into());
    }
    if f.age >= 75 {
        parts.push("age >= 75 +2".into());
    } else if f.age >= 65 {
        parts.push("age 65-74 +1".into());
    }
    if f.diabetes {
        parts.push("diabetes +1".into());
    }
    if f.stroke {
        parts.push("stroke/TIA +2".into());
    }
    if f.vascular {
        parts.push("vascular disease +1".into());
    }
    if f.sex == Sex::Female {
        parts.push("female +1".into());
    }
    let parts = if parts.is_empty() { "no points".to_string() } else { parts.join(", ") };
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
        key,
        category,
        context,
        question: question.to_string(),
        explanation: format!(
            "CHA2DS2-VASc = {score} ({parts}) in a {}: {category}.",
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
        side: Side::Scalar(scalar_side(i64::from(na), |v| sodium_category(v.max(0) as u32))),
        key: format!("na={na}"),
        category,
        context,
        question: question.to_string(),
        explanation: format!("Na {na} mmol/L is in {range}: {category}."),
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
        side: Side::Scalar(scalar_side(i64::from(t), |v| potassium_category(v as f64 / 10.0))),
        key: format!("k={t}"),
        category,
        context,
        question: question.to_string(),
        explanation: format!("K {k:.1} mmol/L is in {range}: {category}."),
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
    let why = AKI_CRITERIA[rank(&AKI_STAGES, category)];
    let ratio = f64::from(ct) / f64::from(bt);
    Draw {
        side: Side::Hashed,
        key: format!("b={bt},c={ct}"),
        category,
        context,
        question: question.to_string(),
        explanation: format!(
            "Creatinine {c:.1} / {b:.1} = {ratio:.2}x baseline (change {:+.1} mg/dL), {why}: {category}.",
            c - b
        ),
    }
}
