//! FlashAttention-2-style attention on CUDA (harness/kernels/flash.cu): the forward and backward
//! of softmax(q kᵀ·scale + bias) v without ever writing the (B, H, L, T) score matrix, for head
//! width 64 in bf16 with f32 accumulation on the tensor cores (`mma.sync` m16n8k16, operands
//! loaded with `ldmatrix` from XOR-swizzled shared memory).
//!
//! Shapes: q (B, H, L, 64); k, v (B, Hkv, T, 64) with H % Hkv == 0, query head h reading kv head
//! h / (H/Hkv) (grouped-query attention, k and v never repeated); bias None or (B | 1, 1, L, T),
//! added to the scaled scores (causal, annealed and padding masks alike). L ≠ T is allowed in both
//! directions (queries over a KV cache).
//!
//! Forward ([`flash_fwd`]): one block of 4 warps per (64-query tile, query head, batch row); each
//! warp owns 16 query rows and keeps Q's fragments, the output accumulator (16 × 64 f32), the
//! running row max m and the running sum ℓ in registers. The block walks the key tiles (64 keys;
//! K and V tiles in shared memory, 24 KiB with Q's): S = Q Kᵀ, x = S·scale + bias,
//! m' = max(m, rowmax x), O ← O e^(m−m') + e^(x−m') V, ℓ ← ℓ e^(m−m') + Σ e^(x−m'); finally O/ℓ.
//! Besides O it returns the row statistics `lse` = (m, log ℓ) per row, f32 (B, H, L, 2): kept
//! as a pair rather than the sum m + log ℓ because a row that sees no key (all bias −1e9) has
//! m ≈ −1e9, where f32 cannot hold m + log ℓ apart from m; with the pair, backward recovers
//! P = e^((x − m) − log ℓ) exactly, the uniform 1/T the composite softmax gives such a row.
//!
//! Backward ([`flash_bwd`]), three launches: D = rowsum(dO ⊙ O) (f32, (B, H, L)); then one block
//! of 4 warps per (64-key tile, kv head, batch row) holding K_j, V_j in shared memory (41 KiB
//! with the Q, dO and dS tiles), each warp owning 16 keys and accumulating their dK, dV in
//! registers over the query heads of the group and every query tile, recomputing
//! Pᵀ = e^(Sᵀ·scale + biasᵀ − m − log ℓ), then dV += Pᵀ dO, dPᵀ = V dOᵀ, dSᵀ = Pᵀ ⊙ (dPᵀ − D),
//! dK += dSᵀ Q; dS goes through shared memory so each warp forms dQ for 16 query rows, added into
//! an f32 buffer with atomics; last, dq = bf16(buffer · scale). dK, dV are summed over the group
//! without atomics (one block owns a key tile of a kv head).
//!
//! Output layouts, chosen to save transposes downstream: o is (B, L, H·64), the heads already
//! merged; dq (B, H, L, 64) and dk, dv (B, Hkv, T, 64) are returned as transposed views of
//! (B, L, H, 64) and (B, T, Hkv, 64) storage, so the `transpose(1, 2).contiguous()` that RoPE's
//! backward and the v projection apply next is free.
//!
//! [`flash_ok`] says when the kernels serve; `DDM_ATTENTION=composite` (read once) or
//! [`with_composite`] forces the composite path of [`crate::model::attention`] instead.

use candle_core::{DType, Result, Tensor};
use std::sync::atomic::{AtomicU8, Ordering};

/// The head width the kernels are written for.
pub const HEAD_DIM: usize = 64;

/// 0: not read yet; 1: flash allowed; 2: composite forced.
static MODE: AtomicU8 = AtomicU8::new(0);

fn composite_forced() -> bool {
    match MODE.load(Ordering::Relaxed) {
        0 => {
            let forced = std::env::var("DDM_ATTENTION").is_ok_and(|v| v.eq_ignore_ascii_case("composite"));
            MODE.store(if forced { 2 } else { 1 }, Ordering::Relaxed);
            forced
        }
        m => m == 2,
    }
}

/// Run `f` with the flash kernels switched off (the composite attention everywhere), then restore
/// the previous setting. Process-wide: meant for checks, not for concurrent use.
pub fn with_composite<R>(f: impl FnOnce() -> R) -> R {
    let before = composite_forced();
    MODE.store(2, Ordering::Relaxed);
    let out = f();
    MODE.store(if before { 2 } else { 1 }, Ordering::Relaxed);
    out
}

/// Whether the flash kernels serve attention of `q` (B, H, L, Dh) over `k` (B, Hkv, T, Dh) with
/// `bias`: a `cuda` build, q and k bf16 on a CUDA device, Dh = 64, H % Hkv == 0, and bias None
/// or bf16 of shape (B | 1, 1, L, T) (any layout: the wrapper makes it contiguous); not when
/// `DDM_ATTENTION=composite` or inside [`with_composite`]. (v must match k; [`flash_fwd`] checks.)
pub fn flash_ok(q: &Tensor, k: &Tensor, bias: Option<&Tensor>) -> bool {
    !composite_forced() && servable(q, k, bias)
}

/// [`flash_ok`] without the switch: what the kernels can take.
fn servable(q: &Tensor, k: &Tensor, bias: Option<&Tensor>) -> bool {
    if !cfg!(feature = "cuda") {
        return false;
    }
    let (Ok((b, h, l, dh)), Ok((bk, hkv, t, dhk))) = (q.dims4(), k.dims4()) else { return false };
    let bias_ok = bias.is_none_or(|x| x.dtype() == DType::BF16 && x.dims4().is_ok_and(|(bb, bh, bl, bt)| (bb == 1 || bb == b) && bh == 1 && bl == l && bt == t));
    q.device().is_cuda()
        && k.device().same_device(q.device())
        && q.dtype() == DType::BF16
        && k.dtype() == DType::BF16
        && dh == HEAD_DIM
        && dhk == HEAD_DIM
        && bk == b
        && hkv > 0
        && h % hkv == 0
        && l > 0
        && t > 0
        && b <= 65_535
        && h <= 65_535
        && bias_ok
}

/// Attention forward: `q` (B, H, L, 64), `k`, `v` (B, Hkv, T, 64) bf16, `bias` (B | 1, 1, L, T)
/// bf16 or None → (o (B, L, H·64) bf16, lse (B, H, L, 2) f32 = (row max m, log ℓ)) for
/// [`flash_bwd`]. Requires what [`flash_ok`] checks, the `DDM_ATTENTION` switch aside (this
/// function always runs the kernel).
pub fn flash_fwd(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, scale: f64) -> Result<(Tensor, Tensor)> {
    check(q, k, v, bias)?;
    imp::fwd(q, k, v, bias, scale)
}

/// Attention backward for the output gradient `d_o` (B, L, H·64) bf16, with `o` and `lse` from
/// [`flash_fwd`] on the same q, k, v, bias: (dq (B, H, L, 64), dk, dv (B, Hkv, T, 64)), bf16,
/// as transposed views (see the module doc).
#[allow(clippy::too_many_arguments)]
pub fn flash_bwd(q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, lse: &Tensor, d_o: &Tensor, bias: Option<&Tensor>, scale: f64) -> Result<(Tensor, Tensor, Tensor)> {
    check(q, k, v, bias)?;
    let (b, h, l, dh) = q.dims4()?;
    if o.dims() != [b, l, h * dh] || d_o.dims() != [b, l, h * dh] || lse.dims() != [b, h, l, 2] {
        candle_core::bail!("flash_bwd: o {:?}, d_o {:?}, lse {:?} do not fit q {:?}", o.dims(), d_o.dims(), lse.dims(), q.dims())
    }
    if o.dtype() != DType::BF16 || d_o.dtype() != DType::BF16 || lse.dtype() != DType::F32 {
        candle_core::bail!("flash_bwd: o, d_o must be bf16 and lse f32")
    }
    imp::bwd(q, k, v, o, lse, d_o, bias, scale)
}

fn check(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<()> {
    if !servable(q, k, bias) || v.dims() != k.dims() || v.dtype() != DType::BF16 || !v.device().same_device(q.device()) {
        candle_core::bail!(
            "flash attention does not serve q {:?} {:?}, k {:?}, v {:?} {:?}, bias {:?}",
            q.dims(),
            q.dtype(),
            k.dims(),
            v.dims(),
            v.dtype(),
            bias.map(|b| (b.dims().to_vec(), b.dtype()))
        )
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use candle_core::{Result, Tensor};
    fn no() -> candle_core::Error {
        candle_core::Error::Msg("flash attention needs the `cuda` feature".into())
    }
    pub fn fwd(_: &Tensor, _: &Tensor, _: &Tensor, _: Option<&Tensor>, _: f64) -> Result<(Tensor, Tensor)> {
        Err(no())
    }
    #[allow(clippy::too_many_arguments)]
    pub fn bwd(_: &Tensor, _: &Tensor, _: &Tensor, _: &Tensor, _: &Tensor, _: &Tensor, _: Option<&Tensor>, _: f64) -> Result<(Tensor, Tensor, Tensor)> {
        Err(no())
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use super::HEAD_DIM;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, CudaDevice};
    use candle_core::op::BackpropOp;
    use candle_core::{CudaStorage, Layout, Result, Storage, StorageRef, Tensor};
    use half::bf16;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/flash.ptx"));
    const MODULE: &str = "ddm_flash";
    /// Threads of the attention kernels (4 warps) and rows of their tiles.
    const THREADS: u32 = 128;
    const TILE: usize = 64;

    fn err(e: impl std::fmt::Debug) -> candle_core::Error {
        candle_core::Error::Msg(format!("flash kernel: {e:?}"))
    }

    /// Contiguous, starting on a 16-byte boundary (the kernels copy rows with 16-byte `cp.async`).
    fn prep(t: &Tensor) -> Result<Tensor> {
        let t = t.contiguous()?;
        if (t.layout().start_offset() * t.dtype().size_in_bytes()) % 16 != 0 {
            return t.affine(1.0, 0.0); // a fresh (aligned) buffer, same values
        }
        Ok(t)
    }

    fn cuda<'a>(s: &'a StorageRef<'_>) -> Result<&'a CudaStorage> {
        match &**s {
            Storage::Cuda(c) => Ok(c),
            _ => candle_core::bail!("flash kernel: tensor not on CUDA"),
        }
    }

    fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
        let n = l.shape().elem_count();
        Ok(s.as_cuda_slice::<T>()?.slice(l.start_offset()..l.start_offset() + n))
    }

    fn wrap<T: CudaDType>(s: candle_core::cuda_backend::cudarc::driver::CudaSlice<T>, dev: &CudaDevice, shape: &[usize]) -> Tensor {
        Tensor::from_storage(Storage::Cuda(CudaStorage::wrap_cuda_slice(s, dev.clone())), shape, BackpropOp::none(), false)
    }

    fn u32_of(x: usize) -> u32 {
        x as u32
    }

    pub fn fwd(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, scale: f64) -> Result<(Tensor, Tensor)> {
        let (q, k, v) = (prep(q)?, prep(k)?, prep(v)?);
        let bias = bias.map(|b| b.contiguous()).transpose()?;
        let (b, h, l, dh) = q.dims4()?;
        let (_, hkv, t, _) = k.dims4()?;
        debug_assert_eq!(dh, HEAD_DIM);
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (qs, ks, vs) = (cuda(&qs)?, cuda(&ks)?, cuda(&vs)?);
        let dev = qs.device().clone();
        let (qv, kv, vv) = (view::<bf16>(qs, ql)?, view::<bf16>(ks, kl)?, view::<bf16>(vs, vl)?);
        let mut o = unsafe { dev.alloc::<bf16>(b * l * h * dh)? };
        let mut lse = unsafe { dev.alloc::<f32>(b * h * l * 2)? };
        let func = dev.get_or_load_custom_func("flash_fwd_bf16", MODULE, PTX)?;
        let bias_guard = bias.as_ref().map(|x| x.storage_and_layout());
        let bias_view = match &bias_guard {
            Some((s, bl)) => Some(view::<bf16>(cuda(s)?, bl)?),
            None => None,
        };
        let batched = u32::from(bias.as_ref().is_some_and(|x| x.dim(0).unwrap_or(1) > 1));
        let null = 0u64;
        let (h32, hkv32, l32, t32, sc) = (u32_of(h), u32_of(hkv), u32_of(l), u32_of(t), scale as f32);
        let mut a = func.builder();
        a.arg(&qv);
        a.arg(&kv);
        a.arg(&vv);
        match &bias_view {
            Some(bv) => a.arg(bv),
            None => a.arg(&null),
        };
        a.arg(&mut o);
        a.arg(&mut lse);
        a.arg(&h32);
        a.arg(&hkv32);
        a.arg(&l32);
        a.arg(&t32);
        a.arg(&batched);
        a.arg(&sc);
        let cfg = LaunchConfig { grid_dim: (l.div_ceil(TILE) as u32, h as u32, b as u32), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: q holds B·H·L·64, k and v B·Hkv·T·64, bias (B|1)·L·T elements (shapes checked by
        // flash_ok / check); o (B·L·H·64) and lse (B·H·L·2) are fresh and fully written.
        unsafe { a.launch(cfg) }.map_err(err)?;
        Ok((wrap(o, &dev, &[b, l, h * dh]), wrap(lse, &dev, &[b, h, l, 2])))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn bwd(q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, lse: &Tensor, d_o: &Tensor, bias: Option<&Tensor>, scale: f64) -> Result<(Tensor, Tensor, Tensor)> {
        let (q, k, v, o, d_o) = (prep(q)?, prep(k)?, prep(v)?, prep(o)?, prep(d_o)?);
        let lse = lse.contiguous()?;
        let bias = bias.map(|b| b.contiguous()).transpose()?;
        let (b, h, l, dh) = q.dims4()?;
        let (_, hkv, t, _) = k.dims4()?;
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (os, ol) = o.storage_and_layout();
        let (gs, gl) = d_o.storage_and_layout();
        let (ls, ll) = lse.storage_and_layout();
        let (qs, ks, vs, os, gs, ls) = (cuda(&qs)?, cuda(&ks)?, cuda(&vs)?, cuda(&os)?, cuda(&gs)?, cuda(&ls)?);
        let dev = qs.device().clone();
        let (qv, kv, vv) = (view::<bf16>(qs, ql)?, view::<bf16>(ks, kl)?, view::<bf16>(vs, vl)?);
        let (ov, gv, lv) = (view::<bf16>(os, ol)?, view::<bf16>(gs, gl)?, view::<f32>(ls, ll)?);
        let bias_guard = bias.as_ref().map(|x| x.storage_and_layout());
        let bias_view = match &bias_guard {
            Some((s, bl)) => Some(view::<bf16>(cuda(s)?, bl)?),
            None => None,
        };
        let batched = u32::from(bias.as_ref().is_some_and(|x| x.dim(0).unwrap_or(1) > 1));
        let null = 0u64;
        let (h32, hkv32, l32, t32, sc) = (u32_of(h), u32_of(hkv), u32_of(l), u32_of(t), scale as f32);

        // 1. D = rowsum(dO ⊙ O): (B, H, L) f32, one warp per (b, i, h) row
        let rows = b * l * h;
        let rows32 = u32_of(rows);
        let mut dsum = unsafe { dev.alloc::<f32>(rows)? };
        let func = dev.get_or_load_custom_func("flash_bwd_dot_bf16", MODULE, PTX)?;
        let mut a = func.builder();
        a.arg(&ov);
        a.arg(&gv);
        a.arg(&mut dsum);
        a.arg(&rows32);
        a.arg(&h32);
        a.arg(&l32);
        let cfg = LaunchConfig { grid_dim: (rows.div_ceil(8) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: o and d_o hold rows × 64 elements; dsum holds rows and is fully written.
        unsafe { a.launch(cfg) }.map_err(err)?;

        // 2. dK, dV per key tile and kv head; dQ added into an f32 buffer (B, L, H, 64)
        let mut dq_acc = dev.alloc_zeros::<f32>(b * l * h * dh)?;
        let mut dk = unsafe { dev.alloc::<bf16>(b * t * hkv * dh)? };
        let mut dv = unsafe { dev.alloc::<bf16>(b * t * hkv * dh)? };
        let func = dev.get_or_load_custom_func("flash_bwd_bf16", MODULE, PTX)?;
        let mut a = func.builder();
        a.arg(&qv);
        a.arg(&kv);
        a.arg(&vv);
        a.arg(&gv);
        a.arg(&lv);
        a.arg(&dsum);
        match &bias_view {
            Some(bv) => a.arg(bv),
            None => a.arg(&null),
        };
        a.arg(&mut dq_acc);
        a.arg(&mut dk);
        a.arg(&mut dv);
        a.arg(&h32);
        a.arg(&hkv32);
        a.arg(&l32);
        a.arg(&t32);
        a.arg(&batched);
        a.arg(&sc);
        let cfg = LaunchConfig { grid_dim: (t.div_ceil(TILE) as u32, hkv as u32, b as u32), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: inputs as in the forward plus d_o (B·L·H·64), lse (B·H·L·2), dsum (B·H·L);
        // dq_acc (zeroed) receives atomic adds within B·L·H·64; dk, dv (B·T·Hkv·64) are fresh and
        // every element is written by the block owning its key tile.
        unsafe { a.launch(cfg) }.map_err(err)?;

        // 3. dq = bf16(dq_acc · scale)
        let n = b * l * h * dh;
        let n64 = n as u64;
        let mut dq = unsafe { dev.alloc::<bf16>(n)? };
        let func = dev.get_or_load_custom_func("flash_dq_convert_bf16", MODULE, PTX)?;
        let mut a = func.builder();
        a.arg(&dq_acc);
        a.arg(&mut dq);
        a.arg(&sc);
        a.arg(&n64);
        let blocks = (n as u64).div_ceil(256).clamp(1, 65_536) as u32;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: dq_acc and dq hold n elements.
        unsafe { a.launch(cfg) }.map_err(err)?;

        let dq = wrap(dq, &dev, &[b, l, h, dh]).transpose(1, 2)?; // (B, H, L, 64) view
        let dk = wrap(dk, &dev, &[b, t, hkv, dh]).transpose(1, 2)?; // (B, Hkv, T, 64) view
        let dv = wrap(dv, &dev, &[b, t, hkv, dh]).transpose(1, 2)?;
        Ok((dq, dk, dv))
    }
}
