//! Where a training step's time goes, host and device, through CUPTI's activity API
//! (`harness bench --ops`).
//!
//! CUPTI (NVIDIA's profiling interface, `libcupti.so`, shipped with PyTorch's CUDA wheels and
//! with the toolkit) is loaded at run time only when a profile is asked for (`DDM_CUPTI` names
//! the library when it is not on the loader's path), so no build or run of the harness depends on
//! it. While a [`Session`] is open it records, with the device's own timestamps:
//! - every **kernel** (name, start, end): device time per kernel name, launches per step, and the
//!   device's busy time (the union of kernel, copy and memset intervals) against the wall time of
//!   the steps — when busy ≈ wall the step is bound by the device, when busy ≪ wall by the host;
//! - every **driver API call** (cuLaunchKernel, cuMemAllocAsync, cuMemcpy*, cuStreamSynchronize,
//!   …): calls per step and host time per call — a launch that blocks because the device's queue
//!   is full shows up as long launch calls, an allocation storm as many cuMemAllocAsync;
//! - every **copy and memset** (direction, bytes).
//!
//! The aggregation ([`Aggregate`]) is plain data and tested on the CPU; the CUPTI side is only in
//! CUDA builds.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Device time of one kernel name over the profiled steps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KernelRow {
    /// Kernel name as the driver reports it (C++ names mangled).
    pub name: String,
    /// Launches per step.
    pub launches_per_step: f64,
    /// Device milliseconds per step.
    pub ms_per_step: f64,
    /// Share of all kernel time.
    pub share: f64,
}

/// Host time of one driver API function over the profiled steps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiRow {
    /// Driver function (`cuLaunchKernel`, `cuMemAllocAsync`, …).
    pub name: String,
    /// Calls per step.
    pub calls_per_step: f64,
    /// Host milliseconds per step inside the call.
    pub ms_per_step: f64,
    /// Longest single call, microseconds.
    pub max_us: f64,
}

/// Copies or memsets of one kind over the profiled steps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CopyRow {
    /// `HtoD`, `DtoH`, `DtoD`, `memset`, … .
    pub kind: String,
    /// Operations per step.
    pub count_per_step: f64,
    /// MiB per step.
    pub mib_per_step: f64,
    /// Device milliseconds per step.
    pub ms_per_step: f64,
}

/// The profile of `steps` training steps of one configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepProfile {
    /// What was profiled (objective, adapter, batch × seq).
    pub config: String,
    /// Steps profiled.
    pub steps: usize,
    /// Wall milliseconds per step with the profiler on (it adds about a microsecond per call).
    pub wall_ms_per_step: f64,
    /// Milliseconds per step the device was busy (union of kernel, copy and memset intervals).
    pub device_busy_ms_per_step: f64,
    /// Sum of kernel durations per step (≥ busy only when kernels overlap).
    pub kernel_ms_per_step: f64,
    /// Kernel launches per step.
    pub launches_per_step: f64,
    /// Host milliseconds per step inside driver calls.
    pub driver_ms_per_step: f64,
    /// Kernels by device time, largest first.
    pub kernels: Vec<KernelRow>,
    /// Driver functions by host time, largest first.
    pub driver: Vec<ApiRow>,
    /// Copies and memsets by kind.
    pub copies: Vec<CopyRow>,
    /// Activity records CUPTI dropped (0 unless its buffers overflowed).
    pub dropped_records: u64,
}

/// Activity records summed by name, kind and interval.
#[derive(Debug, Default, Clone)]
pub struct Aggregate {
    kernels: HashMap<String, (u64, u64)>,
    driver: HashMap<String, (u64, u64, u64)>,
    copies: HashMap<String, (u64, u64, u64)>,
    /// Device-side intervals (start, end) in ns, of kernels, copies and memsets.
    intervals: Vec<(u64, u64)>,
    dropped: u64,
}

impl Aggregate {
    /// A kernel ran from `start` to `end` (ns).
    pub fn kernel(&mut self, name: &str, start: u64, end: u64) {
        let e = self.kernels.entry(name.to_string()).or_default();
        e.0 += 1;
        e.1 += end.saturating_sub(start);
        self.intervals.push((start, end));
    }

    /// The host spent `start..end` (ns) in driver function `name`.
    pub fn driver_call(&mut self, name: &str, start: u64, end: u64) {
        let d = end.saturating_sub(start);
        let e = self.driver.entry(name.to_string()).or_default();
        e.0 += 1;
        e.1 += d;
        e.2 = e.2.max(d);
    }

    /// A copy or memset of `bytes` ran on the device from `start` to `end` (ns).
    pub fn copy(&mut self, kind: &str, bytes: u64, start: u64, end: u64) {
        let e = self.copies.entry(kind.to_string()).or_default();
        e.0 += 1;
        e.1 += bytes;
        e.2 += end.saturating_sub(start);
        self.intervals.push((start, end));
    }

    /// CUPTI dropped `n` records.
    pub fn dropped(&mut self, n: u64) {
        self.dropped += n;
    }

    /// Length of the union of the device intervals, ns.
    pub fn busy_ns(&self) -> u64 {
        let mut iv = self.intervals.clone();
        iv.sort_unstable();
        let (mut total, mut cur): (u64, Option<(u64, u64)>) = (0, None);
        for (s, e) in iv {
            cur = match cur {
                Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    total += ce - cs;
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        total + cur.map_or(0, |(s, e)| e - s)
    }

    /// The profile of `steps` steps that took `wall_s` seconds.
    pub fn finish(&self, config: &str, steps: usize, wall_s: f64) -> StepProfile {
        let n = steps.max(1) as f64;
        let ms = |ns: u64| ns as f64 / 1e6 / n;
        let kernel_ns: u64 = self.kernels.values().map(|v| v.1).sum();
        let mut kernels: Vec<KernelRow> = self
            .kernels
            .iter()
            .map(|(k, &(c, t))| KernelRow { name: k.clone(), launches_per_step: c as f64 / n, ms_per_step: ms(t), share: t as f64 / kernel_ns.max(1) as f64 })
            .collect();
        kernels.sort_by(|a, b| b.ms_per_step.total_cmp(&a.ms_per_step).then_with(|| a.name.cmp(&b.name)));
        let mut driver: Vec<ApiRow> = self
            .driver
            .iter()
            .map(|(k, &(c, t, mx))| ApiRow { name: k.clone(), calls_per_step: c as f64 / n, ms_per_step: ms(t), max_us: mx as f64 / 1e3 })
            .collect();
        driver.sort_by(|a, b| b.ms_per_step.total_cmp(&a.ms_per_step).then_with(|| a.name.cmp(&b.name)));
        let mut copies: Vec<CopyRow> = self
            .copies
            .iter()
            .map(|(k, &(c, b, t))| CopyRow { kind: k.clone(), count_per_step: c as f64 / n, mib_per_step: b as f64 / (1u64 << 20) as f64 / n, ms_per_step: ms(t) })
            .collect();
        copies.sort_by(|a, b| a.kind.cmp(&b.kind));
        StepProfile {
            config: config.to_string(),
            steps,
            wall_ms_per_step: wall_s * 1e3 / n,
            device_busy_ms_per_step: ms(self.busy_ns()),
            kernel_ms_per_step: ms(kernel_ns),
            launches_per_step: self.kernels.values().map(|v| v.0).sum::<u64>() as f64 / n,
            driver_ms_per_step: ms(self.driver.values().map(|v| v.1).sum()),
            kernels,
            driver,
            copies,
            dropped_records: self.dropped,
        }
    }
}

/// The name CUPTI's memcpy records give a copy direction.
pub fn copy_kind_name(kind: u8) -> &'static str {
    match kind {
        1 => "HtoD",
        2 => "DtoH",
        3 => "HtoA",
        4 => "AtoH",
        5 => "AtoA",
        6 => "AtoD",
        7 => "DtoA",
        8 => "DtoD",
        9 => "HtoH",
        10 => "PtoP",
        _ => "unknown",
    }
}

#[cfg(feature = "cuda")]
pub use imp::Session;

#[cfg(not(feature = "cuda"))]
/// Without the `cuda` feature there is nothing to profile.
pub struct Session;

#[cfg(not(feature = "cuda"))]
impl Session {
    /// Always an error: profiling needs a CUDA build.
    pub fn start() -> crate::Result<Self> {
        Err(crate::Error::msg("profiling needs a CUDA build (make cuda)"))
    }
    /// Never reached.
    pub fn stop(self) -> crate::Result<Aggregate> {
        Ok(Aggregate::default())
    }
}

#[cfg(feature = "cuda")]
mod imp {
    //! CUPTI loaded with libloading. Record layouts (CUPTI 13; the fields read here sit at the
    //! same offsets in every record version since CUDA 11):
    //! - kernel (`CUpti_ActivityKernel4`…`13`): start u64 @16, end u64 @24, name *const c_char @104;
    //! - API (`CUpti_ActivityAPI`): cbid u32 @4, start u64 @8, end u64 @16;
    //! - memcpy (`CUpti_ActivityMemcpy5`…`7`): copyKind u8 @4, bytes u64 @8, start @16, end @24;
    //! - memset (`CUpti_ActivityMemset2`…`4`): bytes u64 @8, start @16, end @24.
    use super::{copy_kind_name, Aggregate};
    use crate::{Error, Result};
    use std::ffi::{c_char, c_void, CStr};
    use std::sync::{Mutex, OnceLock};

    const KIND_MEMCPY: u32 = 1;
    const KIND_MEMSET: u32 = 2;
    const KIND_DRIVER: u32 = 4;
    const KIND_CONCURRENT_KERNEL: u32 = 10;
    const DOMAIN_DRIVER_API: u32 = 1;
    const FLUSH_FORCED: u32 = 1;
    const BUFFER: usize = 16 << 20;

    type Request = unsafe extern "C" fn(*mut *mut u8, *mut usize, *mut usize);
    type Complete = unsafe extern "C" fn(*mut c_void, u32, *mut u8, usize, usize);

    struct Api {
        _lib: libloading::Library,
        enable: unsafe extern "C" fn(u32) -> u32,
        disable: unsafe extern "C" fn(u32) -> u32,
        flush_all: unsafe extern "C" fn(u32) -> u32,
        next: unsafe extern "C" fn(*mut u8, usize, *mut *mut u8) -> u32,
        dropped: unsafe extern "C" fn(*mut c_void, u32, *mut usize) -> u32,
        callback_name: unsafe extern "C" fn(u32, u32, *mut *const c_char) -> u32,
        register: unsafe extern "C" fn(Option<Request>, Option<Complete>) -> u32,
    }

    static API: OnceLock<Api> = OnceLock::new();
    static AGG: Mutex<Option<Aggregate>> = Mutex::new(None);
    static NAMES: Mutex<Option<std::collections::HashMap<u32, String>>> = Mutex::new(None);

    fn load() -> Result<&'static Api> {
        if let Some(a) = API.get() {
            return Ok(a);
        }
        let names: Vec<String> = match std::env::var("DDM_CUPTI") {
            Ok(p) => vec![p],
            Err(_) => vec!["libcupti.so.13".into(), "libcupti.so.12".into(), "libcupti.so".into()],
        };
        let mut last = String::new();
        for n in &names {
            // SAFETY: loading CUPTI runs its initialisers, which only register with the driver.
            match unsafe { libloading::Library::new(n) } {
                Ok(lib) => {
                    // SAFETY: the symbols have these C signatures in CUPTI's headers.
                    let api = unsafe {
                        macro_rules! sym {
                            ($name:literal) => {
                                *lib.get($name).map_err(|e| Error::msg(format!("{n}: {e}")))?
                            };
                        }
                        Api {
                            enable: sym!(b"cuptiActivityEnable\0"),
                            disable: sym!(b"cuptiActivityDisable\0"),
                            flush_all: sym!(b"cuptiActivityFlushAll\0"),
                            next: sym!(b"cuptiActivityGetNextRecord\0"),
                            dropped: sym!(b"cuptiActivityGetNumDroppedRecords\0"),
                            callback_name: sym!(b"cuptiGetCallbackName\0"),
                            register: sym!(b"cuptiActivityRegisterCallbacks\0"),
                            _lib: lib,
                        }
                    };
                    return Ok(API.get_or_init(|| api));
                }
                Err(e) => last = format!("{n}: {e}"),
            }
        }
        Err(Error::msg(format!("CUPTI not found ({last}); put libcupti.so.13 on LD_LIBRARY_PATH or name it in DDM_CUPTI")))
    }

    fn check(what: &str, r: u32) -> Result<()> {
        if r == 0 {
            Ok(())
        } else {
            Err(Error::msg(format!("CUPTI {what} failed with code {r}")))
        }
    }

    unsafe extern "C" fn request(buf: *mut *mut u8, size: *mut usize, max: *mut usize) {
        let layout = std::alloc::Layout::from_size_align(BUFFER, 8).expect("valid layout");
        // SAFETY: CUPTI passes valid out-pointers; the buffer is freed in `complete`.
        unsafe {
            *buf = std::alloc::alloc(layout);
            *size = if (*buf).is_null() { 0 } else { BUFFER };
            *max = 0;
        }
    }

    fn driver_name(api: &Api, cbid: u32) -> String {
        let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
        let names = names.get_or_insert_with(Default::default);
        names
            .entry(cbid)
            .or_insert_with(|| {
                let mut p: *const c_char = std::ptr::null();
                // SAFETY: CUPTI writes a static string for a valid callback id.
                let ok = unsafe { (api.callback_name)(DOMAIN_DRIVER_API, cbid, &mut p) } == 0 && !p.is_null();
                if ok {
                    // SAFETY: a NUL-terminated static string.
                    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
                } else {
                    format!("driver#{cbid}")
                }
            })
            .clone()
    }

    unsafe extern "C" fn complete(_ctx: *mut c_void, _stream: u32, buf: *mut u8, _size: usize, valid: usize) {
        if let Some(api) = API.get() {
            let mut agg = AGG.lock().unwrap_or_else(|p| p.into_inner());
            let mut rec: *mut u8 = std::ptr::null_mut();
            // SAFETY: `buf` holds `valid` bytes of records; each read below stays inside the
            // record of the kind it names (offsets in the module documentation).
            unsafe {
                while (api.next)(buf, valid, &mut rec) == 0 {
                    let kind = *(rec as *const u32);
                    let u64_at = |off: usize| std::ptr::read_unaligned(rec.add(off) as *const u64);
                    let Some(agg) = agg.as_mut() else { continue };
                    match kind {
                        KIND_CONCURRENT_KERNEL => {
                            let name = *(rec.add(104) as *const *const c_char);
                            let name = if name.is_null() { "?".into() } else { CStr::from_ptr(name).to_string_lossy() };
                            agg.kernel(&name, u64_at(16), u64_at(24));
                        }
                        KIND_DRIVER => {
                            let cbid = std::ptr::read_unaligned(rec.add(4) as *const u32);
                            agg.driver_call(&driver_name(api, cbid), u64_at(8), u64_at(16));
                        }
                        KIND_MEMCPY => agg.copy(copy_kind_name(*rec.add(4)), u64_at(8), u64_at(16), u64_at(24)),
                        KIND_MEMSET => agg.copy("memset", u64_at(8), u64_at(16), u64_at(24)),
                        _ => {}
                    }
                }
                let mut n: usize = 0;
                if (api.dropped)(_ctx, _stream, &mut n) == 0 && n > 0 {
                    if let Some(agg) = agg.as_mut() {
                        agg.dropped(n as u64);
                    }
                }
            }
        }
        let layout = std::alloc::Layout::from_size_align(BUFFER, 8).expect("valid layout");
        // SAFETY: allocated in `request` with this layout.
        unsafe { std::alloc::dealloc(buf, layout) };
    }

    /// An open profiling session: activity is recorded from [`Session::start`] to
    /// [`Session::stop`]. One at a time per process.
    pub struct Session {
        api: &'static Api,
    }

    impl Session {
        /// Load CUPTI and start recording kernels, driver calls, copies and memsets.
        pub fn start() -> Result<Self> {
            let api = load()?;
            *AGG.lock().unwrap_or_else(|p| p.into_inner()) = Some(Aggregate::default());
            // SAFETY: registering plain C callbacks and enabling activity kinds.
            unsafe {
                check("register callbacks", (api.register)(Some(request), Some(complete)))?;
                for k in [KIND_CONCURRENT_KERNEL, KIND_DRIVER, KIND_MEMCPY, KIND_MEMSET] {
                    check("enable", (api.enable)(k))?;
                }
            }
            Ok(Self { api })
        }

        /// Stop recording (synchronise the device first), flush CUPTI's buffers and return the
        /// summed records.
        pub fn stop(self) -> Result<Aggregate> {
            // SAFETY: disabling kinds enabled in `start`, then a forced flush.
            unsafe {
                for k in [KIND_CONCURRENT_KERNEL, KIND_DRIVER, KIND_MEMCPY, KIND_MEMSET] {
                    check("disable", (self.api.disable)(k))?;
                }
                check("flush", (self.api.flush_all)(FLUSH_FORCED))?;
            }
            Ok(AGG.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_is_the_union_of_device_intervals() {
        let mut a = Aggregate::default();
        a.kernel("gemm", 0, 10);
        a.kernel("gemm", 5, 15); // overlaps the first: union 0..15
        a.kernel("softmax", 20, 30);
        a.copy("HtoD", 1 << 20, 29, 35); // overlaps softmax: 20..35
        a.driver_call("cuLaunchKernel", 0, 4);
        a.driver_call("cuLaunchKernel", 10, 11);
        assert_eq!(a.busy_ns(), 15 + 15);
        let p = a.finish("x", 2, 100e-9);
        assert_eq!(p.launches_per_step, 1.5);
        assert_eq!(p.kernels[0].name, "gemm");
        assert!((p.kernels[0].share - 20.0 / 30.0).abs() < 1e-12);
        assert!((p.device_busy_ms_per_step - 15e-6).abs() < 1e-12);
        assert_eq!(p.driver[0].calls_per_step, 1.0);
        assert!((p.driver[0].max_us - 0.004).abs() < 1e-12);
        assert!((p.copies[0].mib_per_step - 0.5).abs() < 1e-12);
        assert!((p.wall_ms_per_step - 50e-6).abs() < 1e-12);
    }
}
