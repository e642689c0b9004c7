//! Learning-rate schedule: linear warmup, then cosine decay to `min_lr_ratio · lr`.

/// Learning rate at 0-based optimizer step `step` of `total` steps.
pub fn lr_at(step: u64, total: u64, lr: f64, warmup: u64, min_lr_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup.min(step)) as f64 / decay_steps as f64).min(1.0);
    let min_lr = lr * min_lr_ratio;
    min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}
