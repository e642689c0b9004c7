//! The rules: each a pure function citing its source, with its categories in the rule's order
//! and the thresholds that the generated rationales quote.

/// Biological sex, as the rules that depend on it use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sex {
    /// Female.
    Female,
    /// Male.
    Male,
}

/// Rounds to tenths as an integer (7.25 → 73), the resolution every rule compares at.
pub(super) fn tenths(x: f64) -> i64 {
    (x * 10.0).round() as i64
}

/// Blood-pressure categories (ACC/AHA 2017), in increasing order.
pub const BP_CATEGORIES: [&str; 4] =
    ["Normal blood pressure", "Elevated blood pressure", "Stage 1 hypertension", "Stage 2 hypertension"];

/// The systolic range (mmHg) of each [`BP_CATEGORIES`] entry, as a rationale states it.
pub const BP_SYSTOLIC_RANGES: [&str; 4] = ["< 120", "120-129", "130-139", ">= 140"];

/// The diastolic range (mmHg) behind each [`BP_CATEGORIES`] entry (a diastolic value never
/// gives "Elevated": below 80 it is normal, 80-89 stage 1).
pub const BP_DIASTOLIC_RANGES: [&str; 4] = ["< 80", "(not defined by diastolic)", "80-89", ">= 90"];

/// The category the systolic pressure alone gives (ACC/AHA 2017): < 120 normal, 120-129
/// elevated, 130-139 stage 1, >= 140 stage 2.
pub fn bp_systolic_category(sbp: u32) -> &'static str {
    BP_CATEGORIES[match sbp {
        0..=119 => 0,
        120..=129 => 1,
        130..=139 => 2,
        _ => 3,
    }]
}

/// The category the diastolic pressure alone gives (ACC/AHA 2017): < 80 normal, 80-89 stage 1,
/// >= 90 stage 2.
pub fn bp_diastolic_category(dbp: u32) -> &'static str {
    BP_CATEGORIES[match dbp {
        0..=79 => 0,
        80..=89 => 2,
        _ => 3,
    }]
}

/// Blood-pressure category of an office reading in mmHg: the higher of
/// [`bp_systolic_category`] and [`bp_diastolic_category`].
///
/// Source: Whelton PK et al., 2017 ACC/AHA guideline for high blood pressure in adults
/// (Hypertension 2018;71:e13). Normal: SBP < 120 and DBP < 80; elevated: SBP 120-129 and
/// DBP < 80; stage 1: SBP 130-139 or DBP 80-89; stage 2: SBP >= 140 or DBP >= 90. When the two
/// fall in different categories the higher one applies.
pub fn bp_category(sbp: u32, dbp: u32) -> &'static str {
    let by_s = rank(&BP_CATEGORIES, bp_systolic_category(sbp));
    let by_d = rank(&BP_CATEGORIES, bp_diastolic_category(dbp));
    BP_CATEGORIES[by_s.max(by_d)]
}

/// WHO body-mass-index classes, in increasing order.
pub const BMI_CLASSES: [&str; 6] = [
    "Underweight",
    "Normal weight",
    "Overweight (pre-obesity)",
    "Obesity class I",
    "Obesity class II",
    "Obesity class III",
];

/// The BMI range (kg/m²) of each [`BMI_CLASSES`] entry.
pub const BMI_RANGES: [&str; 6] = ["< 18.5", "18.5-24.9", "25-29.9", "30-34.9", "35-39.9", ">= 40"];

/// Body-mass index in kg/m² from height (cm) and weight (kg), rounded to one decimal.
pub fn bmi(height_cm: u32, weight_kg: u32) -> f64 {
    if height_cm == 0 {
        return f64::INFINITY;
    }
    let m = f64::from(height_cm) / 100.0;
    (f64::from(weight_kg) / (m * m) * 10.0).round() / 10.0
}

/// WHO adult BMI class of a BMI (compared at one decimal).
///
/// Source: WHO, Obesity: preventing and managing the global epidemic (TRS 894, 2000):
/// underweight < 18.5; normal 18.5-24.9; pre-obesity 25.0-29.9; obesity class I 30.0-34.9,
/// class II 35.0-39.9, class III >= 40.0.
pub fn bmi_class(bmi: f64) -> &'static str {
    let t = tenths(bmi);
    let i = match t {
        i64::MIN..=184 => 0,
        185..=249 => 1,
        250..=299 => 2,
        300..=349 => 3,
        350..=399 => 4,
        _ => 5,
    };
    BMI_CLASSES[i]
}

/// KDIGO GFR categories, from best to worst.
pub const CKD_STAGES: [&str; 6] = [
    "G1: normal or high GFR",
    "G2: mildly decreased GFR",
    "G3a: mildly to moderately decreased GFR",
    "G3b: moderately to severely decreased GFR",
    "G4: severely decreased GFR",
    "G5: kidney failure",
];

/// The eGFR range (mL/min/1.73 m²) of each [`CKD_STAGES`] entry.
pub const CKD_RANGES: [&str; 6] = [">= 90", "60-89", "45-59", "30-44", "15-29", "< 15"];

/// KDIGO GFR category of an eGFR in mL/min/1.73 m².
///
/// Source: KDIGO 2012 Clinical Practice Guideline for the Evaluation and Management of CKD
/// (Kidney Int Suppl 2013;3:1-150): G1 >= 90, G2 60-89, G3a 45-59, G3b 30-44, G4 15-29, G5 < 15.
pub fn ckd_g_stage(egfr: u32) -> &'static str {
    let i = match egfr {
        90.. => 0,
        60..=89 => 1,
        45..=59 => 2,
        30..=44 => 3,
        15..=29 => 4,
        _ => 5,
    };
    CKD_STAGES[i]
}

/// WHO anemia severities.
pub const ANEMIA_SEVERITIES: [&str; 4] = ["No anemia", "Mild anemia", "Moderate anemia", "Severe anemia"];

/// The hemoglobin range (g/dL) of each [`ANEMIA_SEVERITIES`] entry in a non-pregnant woman.
pub const ANEMIA_RANGES_FEMALE: [&str; 4] = [">= 12.0", "11.0-11.9", "8.0-10.9", "< 8.0"];

/// The hemoglobin range (g/dL) of each [`ANEMIA_SEVERITIES`] entry in a man.
pub const ANEMIA_RANGES_MALE: [&str; 4] = [">= 13.0", "11.0-12.9", "8.0-10.9", "< 8.0"];

/// WHO anemia severity of a hemoglobin (g/dL, compared at one decimal) in a non-pregnant adult.
///
/// Source: WHO, Haemoglobin concentrations for the diagnosis of anaemia and assessment of
/// severity (WHO/NMH/NHD/MNM/11.1, 2011). Women: none >= 12.0, mild 11.0-11.9; men: none >= 13.0,
/// mild 11.0-12.9; both: moderate 8.0-10.9, severe < 8.0.
pub fn anemia_severity(hb_g_dl: f64, sex: Sex) -> &'static str {
    let t = tenths(hb_g_dl);
    let normal_from = if sex == Sex::Female { 120 } else { 130 };
    let i = if t >= normal_from {
        0
    } else if t >= 110 {
        1
    } else if t >= 80 {
        2
    } else {
        3
    };
    ANEMIA_SEVERITIES[i]
}

/// Glycemic categories.
pub const GLYCEMIA_CATEGORIES: [&str; 4] = ["Hypoglycemia", "Normoglycemia", "Prediabetes range", "Diabetes range"];

/// The fasting plasma glucose range (mg/dL) of each [`GLYCEMIA_CATEGORIES`] entry.
pub const FPG_RANGES: [&str; 4] = ["< 70", "70-99", "100-125", ">= 126"];

/// The HbA1c range (%) of each [`GLYCEMIA_CATEGORIES`] entry (HbA1c never gives the first).
pub const HBA1C_RANGES: [&str; 4] = ["(not defined by HbA1c)", "< 5.7", "5.7-6.4", ">= 6.5"];

/// Glycemic category of a fasting plasma glucose in mg/dL.
///
/// Source: American Diabetes Association, Standards of Care in Diabetes 2024, section 2
/// (normal < 100, prediabetes 100-125, diabetes >= 126 mg/dL) and section 6 (hypoglycemia:
/// glucose < 70 mg/dL).
pub fn glycemia_from_fpg(mg_dl: u32) -> &'static str {
    let i = match mg_dl {
        0..=69 => 0,
        70..=99 => 1,
        100..=125 => 2,
        _ => 3,
    };
    GLYCEMIA_CATEGORIES[i]
}

/// Glycemic category of an HbA1c in percent (compared at one decimal).
///
/// Source: ADA Standards of Care in Diabetes 2024, section 2: normal < 5.7%, prediabetes
/// 5.7-6.4%, diabetes >= 6.5%. (HbA1c cannot show hypoglycemia.)
pub fn glycemia_from_hba1c(percent: f64) -> &'static str {
    let t = tenths(percent);
    GLYCEMIA_CATEGORIES[if t >= 65 {
        3
    } else if t >= 57 {
        2
    } else {
        1
    }]
}

/// The findings CURB-65 reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Curb65 {
    /// New mental confusion.
    pub confused: bool,
    /// Serum urea in mmol/L.
    pub urea_mmol_l: f64,
    /// Respiratory rate per minute.
    pub resp_rate: u32,
    /// Systolic blood pressure, mmHg.
    pub sbp: u32,
    /// Diastolic blood pressure, mmHg.
    pub dbp: u32,
    /// Age in years.
    pub age: u32,
}

/// CURB-65 score (0-5) of community-acquired pneumonia.
///
/// Source: Lim WS et al., Thorax 2003;58:377-382; BTS CAP guideline 2009. One point each for
/// confusion, urea > 7 mmol/L, respiratory rate >= 30/min, SBP < 90 or DBP <= 60 mmHg, age >= 65.
pub fn curb65_score(f: &Curb65) -> u32 {
    u32::from(f.confused)
        + u32::from(tenths(f.urea_mmol_l) > 70)
        + u32::from(f.resp_rate >= 30)
        + u32::from(f.sbp < 90 || f.dbp <= 60)
        + u32::from(f.age >= 65)
}

/// CURB-65 severity groups and management.
pub const CURB65_CATEGORIES: [&str; 4] = [
    "Low severity: consider treatment at home",
    "Moderate severity: consider hospital treatment",
    "High severity: urgent hospital admission",
    "High severity: admit and assess for intensive care",
];

/// CURB-65 group of a score.
///
/// Source: BTS guidelines for CAP in adults, 2009 update (Thorax 2009;64 Suppl 3): 0-1 low
/// severity (home treatment), 2 moderate (hospital), 3-5 high (urgent admission), with 4-5
/// to be assessed for critical care.
pub fn curb65_category(score: u32) -> &'static str {
    CURB65_CATEGORIES[match score {
        0 | 1 => 0,
        2 => 1,
        3 => 2,
        _ => 3,
    }]
}

/// The findings CHA2DS2-VASc reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cha2ds2Vasc {
    /// Age in years.
    pub age: u32,
    /// Sex.
    pub sex: Sex,
    /// Congestive heart failure.
    pub heart_failure: bool,
    /// Hypertension.
    pub hypertension: bool,
    /// Diabetes mellitus.
    pub diabetes: bool,
    /// Prior stroke, TIA or thromboembolism.
    pub stroke: bool,
    /// Vascular disease (prior MI, peripheral artery disease, aortic plaque).
    pub vascular: bool,
}

/// CHA2DS2-VASc score (0-9).
///
/// Source: Lip GYH et al., Chest 2010;137:263-272. C 1, H 1, A2 (age >= 75) 2, D 1, S2 2, V 1,
/// A (65-74) 1, Sc (female) 1.
pub fn cha2ds2_vasc_score(f: &Cha2ds2Vasc) -> u32 {
    let age = if f.age >= 75 { 2 } else { u32::from(f.age >= 65) };
    u32::from(f.heart_failure)
        + u32::from(f.hypertension)
        + age
        + u32::from(f.diabetes)
        + 2 * u32::from(f.stroke)
        + u32::from(f.vascular)
        + u32::from(f.sex == Sex::Female)
}

/// Stroke-prevention recommendations in atrial fibrillation (the first three are outcomes of
/// [`cha2ds2_vasc_recommendation`]; the last is a distractor only).
pub const CHA2DS2_VASC_CATEGORIES: [&str; 4] = [
    "No antithrombotic therapy",
    "Oral anticoagulation should be considered",
    "Oral anticoagulation is recommended",
    "Aspirin monotherapy",
];

/// Stroke-prevention recommendation for non-valvular AF from the CHA2DS2-VASc score and sex.
///
/// Source: Hindricks G et al., 2020 ESC Guidelines for atrial fibrillation (Eur Heart J
/// 2021;42:373-498): score 0 in men / 1 in women: no antithrombotic therapy; 1 in men / 2 in
/// women: OAC should be considered; >= 2 in men / >= 3 in women: OAC recommended.
pub fn cha2ds2_vasc_recommendation(score: u32, sex: Sex) -> &'static str {
    let s = if sex == Sex::Female { score.saturating_sub(1) } else { score };
    CHA2DS2_VASC_CATEGORIES[s.min(2) as usize]
}

/// Sodium categories, in increasing order.
pub const SODIUM_CATEGORIES: [&str; 5] =
    ["Profound hyponatremia", "Moderate hyponatremia", "Mild hyponatremia", "Normal sodium", "Hypernatremia"];

/// The sodium range (mmol/L) of each [`SODIUM_CATEGORIES`] entry.
pub const SODIUM_RANGES: [&str; 5] = ["< 125", "125-129", "130-134", "135-145", "> 145"];

/// Serum sodium category (mmol/L).
///
/// Source: Spasovski G et al., Clinical practice guideline on diagnosis and treatment of
/// hyponatraemia (Eur J Endocrinol 2014;170:G1-G47): mild 130-134, moderate 125-129, profound
/// < 125; reference range 135-145; hypernatremia > 145.
pub fn sodium_category(mmol_l: u32) -> &'static str {
    SODIUM_CATEGORIES[match mmol_l {
        0..=124 => 0,
        125..=129 => 1,
        130..=134 => 2,
        135..=145 => 3,
        _ => 4,
    }]
}

/// Potassium categories, in increasing order.
pub const POTASSIUM_CATEGORIES: [&str; 7] = [
    "Severe hypokalemia",
    "Moderate hypokalemia",
    "Mild hypokalemia",
    "Normal potassium",
    "Mild hyperkalemia",
    "Moderate hyperkalemia",
    "Severe hyperkalemia",
];

/// The potassium range (mmol/L) of each [`POTASSIUM_CATEGORIES`] entry.
pub const POTASSIUM_RANGES: [&str; 7] = ["< 2.5", "2.5-2.9", "3.0-3.4", "3.5-5.4", "5.5-5.9", "6.0-6.4", ">= 6.5"];

/// Serum potassium category (mmol/L, compared at one decimal).
///
/// Sources: hypokalaemia grades mild 3.0-3.4, moderate 2.5-2.9, severe < 2.5 (as in the
/// Society for Endocrinology emergency guidance); UK Kidney Association clinical practice
/// guideline on hyperkalaemia (2020): mild 5.5-5.9, moderate 6.0-6.4, severe >= 6.5. Normal
/// 3.5-5.4.
pub fn potassium_category(mmol_l: f64) -> &'static str {
    let t = tenths(mmol_l);
    POTASSIUM_CATEGORIES[match t {
        i64::MIN..=24 => 0,
        25..=29 => 1,
        30..=34 => 2,
        35..=54 => 3,
        55..=59 => 4,
        60..=64 => 5,
        _ => 6,
    }]
}

/// KDIGO AKI stages by creatinine.
pub const AKI_STAGES: [&str; 4] = ["No AKI by creatinine criteria", "AKI stage 1", "AKI stage 2", "AKI stage 3"];

/// KDIGO AKI stage from a baseline and a current serum creatinine (mg/dL, compared at one
/// decimal) measured within 48 hours of each other.
///
/// Source: KDIGO 2012 Clinical Practice Guideline for Acute Kidney Injury (Kidney Int Suppl
/// 2012;2:1-138): stage 1: 1.5-1.9 × baseline or a rise >= 0.3 mg/dL; stage 2: 2.0-2.9 ×;
/// stage 3: >= 3.0 × or creatinine >= 4.0 mg/dL. (Urine-output criteria are not used.)
pub fn aki_stage(baseline_mg_dl: f64, current_mg_dl: f64) -> &'static str {
    let (b, c) = (tenths(baseline_mg_dl), tenths(current_mg_dl));
    let i = if c >= 3 * b || c >= 40 {
        3
    } else if c >= 2 * b {
        2
    } else if 10 * c >= 15 * b || c - b >= 3 {
        1
    } else {
        0
    };
    AKI_STAGES[i]
}

/// The index of `category` in `categories` (the rule's order); the last index when absent.
pub(super) fn rank(categories: &[&str], category: &str) -> usize {
    categories.iter().position(|c| *c == category).unwrap_or(categories.len().saturating_sub(1))
}
