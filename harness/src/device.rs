//! CUDA device settings for a training process, and device memory accounting.
//!
//! candle allocates through cudarc's stream-ordered allocator (`cuMemAllocAsync` on the
//! device's default memory pool). Two of cudarc's defaults cost a training step dearly and are
//! changed by `tune` (CUDA builds only) when [`crate::config::device`] opens a CUDA device:
//! - the pool hands its memory back to the driver at every synchronisation (release threshold
//!   0), so each step — which synchronises once, to read its loss — maps its whole working set
//!   (GiBs at batch 64) again; the threshold is raised to "never", as PyTorch's caching
//!   allocator behaves;
//! - with more than one stream in a context (candle makes its own), every buffer carries two
//!   CUDA events that are recorded and waited on around each kernel launch; candle launches all
//!   work on its one stream, so the tracking only costs host time and is turned off before any
//!   tensor of ours is allocated.
//!
//! `DDM_CUDA_DEFAULTS=1` keeps cudarc's defaults (for A/B measurements).

#[cfg(feature = "cuda")]
use candle_core::cuda_backend::{cudarc::driver::sys, CudaDevice};

/// The device's default memory pool (the one candle's allocations come from), or None when
/// cudarc allocates synchronously on this device.
#[cfg(feature = "cuda")]
fn default_pool(dev: &CudaDevice) -> candle_core::Result<Option<sys::CUmemoryPool>> {
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    if !ctx.has_async_alloc() {
        return Ok(None);
    }
    ctx.bind_to_thread().map_err(|e| candle_core::Error::Msg(format!("cuda: {e:?}")))?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: the driver writes the pool handle of a valid device.
    let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    if r != sys::CUresult::CUDA_SUCCESS {
        candle_core::bail!("cuda: no default memory pool: {r:?}")
    }
    Ok(Some(pool))
}

/// Apply the settings described in the module documentation to a freshly opened device. A
/// driver that refuses the pool setting leaves a warning, not an error: it only costs speed.
#[cfg(feature = "cuda")]
pub fn tune(dev: &CudaDevice) -> candle_core::Result<()> {
    if std::env::var("DDM_CUDA_DEFAULTS").is_ok_and(|v| v == "1") {
        return Ok(());
    }
    // SAFETY: all work of this process goes to `dev`'s single stream (candle's kernels, cuBLAS
    // bound to that stream, and our kernels launched on `dev.cuda_stream()`).
    unsafe { dev.disable_event_tracking() };
    let Some(pool) = default_pool(dev)? else { return Ok(()) };
    let mut threshold: u64 = u64::MAX;
    // SAFETY: a valid pool; the attribute takes a u64.
    let r = unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
    };
    if r != sys::CUresult::CUDA_SUCCESS {
        eprintln!("warning: cuda: the memory pool keeps its default release threshold ({r:?})");
    }
    Ok(())
}

/// Bytes allocated from the device's memory pool at its high-water mark since the last reset
/// (like `torch.cuda.max_memory_allocated`), and, with `reset`, start a new mark at the current
/// use. None on the CPU, without the `cuda` feature, or when the pool cannot be read.
pub fn peak_allocated(dev: &candle_core::Device, reset: bool) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(c) = dev {
        let pool = default_pool(c).ok()??;
        let mut high: u64 = 0;
        let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
        // SAFETY: a valid pool; the attribute is a u64 (reset by writing 0).
        unsafe {
            if sys::cuMemPoolGetAttribute(pool, attr, &mut high as *mut u64 as *mut std::ffi::c_void) != sys::CUresult::CUDA_SUCCESS {
                return None;
            }
            if reset {
                let mut zero: u64 = 0;
                sys::cuMemPoolSetAttribute(pool, attr, &mut zero as *mut u64 as *mut std::ffi::c_void);
            }
        }
        return Some(high);
    }
    let _ = (dev, reset);
    None
}

/// Device memory in use as the driver reports it (total − free: every process, the context and
/// the allocator's cache included), in bytes. None on the CPU or without the `cuda` feature.
pub fn driver_used(dev: &candle_core::Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(c) = dev {
        let (free, total) = c.cuda_stream().context().mem_get_info().ok()?;
        return Some((total - free) as u64);
    }
    let _ = dev;
    None
}

/// How many CUDA devices this process sees (0 without CUDA devices; an error in a binary built
/// without CUDA).
pub fn cuda_device_count() -> crate::Result<usize> {
    #[cfg(feature = "cuda")]
    {
        match candle_core::cuda_backend::cudarc::driver::CudaContext::device_count() {
            Ok(n) => Ok(n.max(0) as usize),
            Err(_) => Ok(0),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(crate::Error::config("devices", "`all` counts CUDA devices, but this binary was built without CUDA (build with `make cuda`, or list `cpu` workers)"))
    }
}
