//! Data-parallel training of one run: one process per GPU, gradients summed over NCCL.
//!
//! A process learns its place from torchrun-style environment variables: `RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK` (which visible GPU it uses: `cuda:LOCAL_RANK` unless `CUDA_VISIBLE_DEVICES`
//! leaves it one), `MASTER_ADDR` and `MASTER_PORT` (where rank 0 hands out the NCCL unique id;
//! default `127.0.0.1:29500`). `harness train --nproc N` ([`launch`]) starts N such processes
//! on one host; torchrun, Slurm's `srun` or any launcher that sets the variables works too.
//! Without them (or with `WORLD_SIZE = 1`) a run is one process and none of this is used.
//!
//! What the ranks share, so that they hold the same weights after every step:
//! - **data**: every rank draws the same global order; micro-batch `m` of a step is the next
//!   `world × micro_batch` examples, and rank r takes rows `r·micro_batch ..` of them — a 2-GPU
//!   run with micro-batch 8 reads the batches of a 1-GPU run with micro-batch 16;
//! - **the loss normaliser**: the step's denominator is summed over micro-batches and ranks
//!   before any backward ([`Dist::sum_scalars`]), so each rank's loss is its share of the
//!   global mean;
//! - **gradients**: the accumulated sums are all-reduced in buckets of [`BUCKET_BYTES`]
//!   ([`Dist::sum_tensors`]) before clipping, so the norm, the clip and the AdamW update are the
//!   same everywhere;
//! - **randomness**: masks and t are drawn per rank (`micro · world + rank` is the micro index the
//!   objective is seeded with), like any data-parallel sampler.
//!
//! Rank 0 alone writes the run folder's metrics, evaluations and checkpoints; the others train
//! into `<run>/ranks/rank-N/` without evaluating. At the end every rank checks that its
//! parameters' checksum equals every other's ([`Dist::same_everywhere`]); `summary.json` records it.
//!
//! Needs the binary built with the `nccl` feature (`make cuda NCCL=1`: it links libnccl.so.2, which
//! the GPU machines' PyTorch wheels provide). NCCL multicast (NVLS) is switched off (`NCCL_NVLS_ENABLE=0`) unless the environment sets it:
//! the GPUs of shared hosts can be taken out of service by it.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// Gradients are all-reduced in buckets of about this many bytes of f32.
pub const BUCKET_BYTES: usize = 64 << 20;

/// This process's place in a data-parallel run.
pub struct Dist {
    /// Global rank, 0-based.
    pub rank: usize,
    /// Number of processes.
    pub world: usize,
    /// Rank within the host (the GPU it uses).
    pub local_rank: usize,
    #[cfg(feature = "nccl")]
    comm: Option<std::sync::Arc<nccl::Comm>>,
}

/// `name` from the environment as a number; `default` when unset.
fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v.trim().parse().map_err(|_| Error::config(name, format!("environment variable {name} = {v:?} is not a number"))),
    }
}

impl Dist {
    /// One process, no communication.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world: 1,
            local_rank: 0,
            #[cfg(feature = "nccl")]
            comm: None,
        }
    }

    /// `(rank, world, local_rank)` from the environment: `(0, 1, 0)` without it.
    pub fn place() -> Result<(usize, usize, usize)> {
        let world = env_usize("WORLD_SIZE", 1)?;
        let rank = env_usize("RANK", 0)?;
        let local = env_usize("LOCAL_RANK", rank)?;
        if world == 0 || rank >= world {
            return Err(Error::config("RANK", format!("RANK = {rank} with WORLD_SIZE = {world}")));
        }
        Ok((rank, world, local))
    }

    /// Join the run the environment describes, on `device` (a world of one needs nothing).
    pub fn from_env(device: &Device) -> Result<Self> {
        let (rank, world, local_rank) = Self::place()?;
        if world == 1 {
            return Ok(Self { local_rank, ..Self::single() });
        }
        if !device.is_cuda() {
            return Err(Error::config("WORLD_SIZE", format!("data-parallel training (WORLD_SIZE = {world}) needs CUDA devices and NCCL; this run is on {:?}", device.location())));
        }
        #[cfg(feature = "nccl")]
        {
            let comm = nccl::join(device, rank, world)?;
            Ok(Self { rank, world, local_rank, comm: Some(std::sync::Arc::new(comm)) })
        }
        #[cfg(not(feature = "nccl"))]
        {
            let _ = rank;
            Err(Error::config("WORLD_SIZE", "this binary was built without NCCL: build it with `make cuda NCCL=1`"))
        }
    }

    /// Whether this process talks to others (has a communicator).
    pub fn communicates(&self) -> bool {
        #[cfg(feature = "nccl")]
        return self.comm.is_some();
        #[cfg(not(feature = "nccl"))]
        false
    }

    /// A communicator of one rank on `device`, through the same rendezvous and NCCL calls as a
    /// real run (on `MASTER_ADDR:MASTER_PORT`): what `harness selfcheck` checks the bindings
    /// with on a one-GPU machine.
    #[cfg(feature = "nccl")]
    pub fn world_of_one(device: &Device) -> Result<Self> {
        let comm = nccl::join(device, 0, 1)?;
        Ok(Self { rank: 0, world: 1, local_rank: 0, comm: Some(std::sync::Arc::new(comm)) })
    }

    /// Whether this process writes the run folder.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// The rows of a global micro-batch of `rows` that this rank trains on, for a per-rank
    /// micro-batch of `per_rank`.
    pub fn share(&self, rows: usize, per_rank: usize) -> std::ops::Range<usize> {
        Self::rows_of(self.rank, rows, per_rank)
    }

    /// The rows of a global micro-batch of `rows` that rank `rank` trains on ([`Dist::share`]).
    pub fn rows_of(rank: usize, rows: usize, per_rank: usize) -> std::ops::Range<usize> {
        let lo = (rank * per_rank).min(rows);
        lo..(lo + per_rank).min(rows)
    }

    /// Element-wise sums over the ranks of the numbers `xs` (each rank passes its own).
    pub fn sum_scalars(&self, xs: &[f64], device: &Device) -> Result<Vec<f64>> {
        if !self.communicates() {
            return Ok(xs.to_vec());
        }
        let t = Tensor::from_vec(xs.to_vec(), xs.len(), device)?;
        Ok(self.all_reduce(&t, Reduce::Sum)?.to_vec1::<f64>()?)
    }

    /// Each tensor summed over the ranks, in buckets of about [`BUCKET_BYTES`]: the tensors of a
    /// bucket are flattened into one f32 buffer, all-reduced, and cut back into their shapes and
    /// dtypes.
    pub fn sum_tensors(&self, ts: Vec<Tensor>) -> Result<Vec<Tensor>> {
        if !self.communicates() || ts.is_empty() {
            return Ok(ts);
        }
        let mut out = Vec::with_capacity(ts.len());
        let mut bucket: Vec<Tensor> = Vec::new();
        let mut bytes = 0;
        let n = ts.len();
        for (i, t) in ts.into_iter().enumerate() {
            bytes += t.elem_count() * 4;
            bucket.push(t);
            if bytes >= BUCKET_BYTES || i + 1 == n {
                let flat: Vec<Tensor> = bucket.iter().map(|t| t.to_dtype(DType::F32)?.flatten_all()).collect::<candle_core::Result<_>>()?;
                let summed = self.all_reduce(&Tensor::cat(&flat, 0)?, Reduce::Sum)?; // (Σ elements,)
                let mut at = 0;
                for t in bucket.drain(..) {
                    let k = t.elem_count();
                    out.push(summed.narrow(0, at, k)?.reshape(t.shape())?.to_dtype(t.dtype())?);
                    at += k;
                }
                bytes = 0;
            }
        }
        Ok(out)
    }

    /// Whether `x` (a checksum) is the same on every rank: its maximum and minimum over the
    /// ranks agree.
    pub fn same_everywhere(&self, x: f64, device: &Device) -> Result<bool> {
        if !self.communicates() {
            return Ok(true);
        }
        let t = Tensor::from_vec(vec![x], 1, device)?;
        let hi = self.all_reduce(&t, Reduce::Max)?.to_vec1::<f64>()?[0];
        let lo = self.all_reduce(&t, Reduce::Min)?.to_vec1::<f64>()?[0];
        Ok(hi == lo)
    }

    fn all_reduce(&self, t: &Tensor, op: Reduce) -> Result<Tensor> {
        #[cfg(feature = "nccl")]
        if let Some(comm) = &self.comm {
            return Ok(t.contiguous()?.apply_op1_no_bwd(&nccl::AllReduce { comm: comm.clone(), op })?);
        }
        let _ = op;
        Ok(t.clone())
    }
}

/// A reduction of [`Dist::all_reduce`].
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
enum Reduce {
    Sum,
    Max,
    Min,
}

/// A checksum of `params`: the sum over every element of p·(1 + index mod 7), in f64, so that a
/// permutation or a sign flip changes it.
pub fn checksum(params: &[candle_core::Var]) -> Result<f64> {
    let mut s = 0.0;
    for (i, p) in params.iter().enumerate() {
        let v = p.as_tensor().to_dtype(DType::F64)?.flatten_all()?.sum_all()?.to_scalar::<f64>()?;
        s += v * (1 + i % 7) as f64;
    }
    Ok(s)
}

/// `harness train --nproc N`: run `args` (the same command without `--nproc` and `--out`) with
/// `--out out` as N processes of this binary on this host, rank r on GPU r of the visible ones,
/// and wait for all of them; each finds its folder with [`rank_folder`]. The first failing rank's
/// exit is the launcher's error.
pub fn launch(nproc: usize, args: &[String], out: &std::path::Path) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| Error::msg(format!("cannot find this binary: {e}")))?;
    let visible: Vec<String> = match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
        _ => (0..gpu_count().unwrap_or(nproc)).map(|i| i.to_string()).collect(),
    };
    if visible.len() < nproc {
        return Err(Error::config("--nproc", format!("{nproc} processes, but this host shows {} GPU(s) (CUDA_VISIBLE_DEVICES or the driver)", visible.len())));
    }
    let port = std::env::var("MASTER_PORT").unwrap_or_else(|_| free_port().to_string());
    let mut children = Vec::with_capacity(nproc);
    for r in 0..nproc {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(args).args(["--out", &out.display().to_string()]);
        cmd.env("RANK", r.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_RANK", "0")
            .env("CUDA_VISIBLE_DEVICES", &visible[r])
            .env("MASTER_ADDR", std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into()))
            .env("MASTER_PORT", &port);
        children.push(cmd.spawn().map_err(|e| Error::msg(format!("rank {r}: cannot start {}: {e}", exe.display())))?);
    }
    // the first rank to fail stops the others: they would wait for it forever
    let mut done = vec![false; nproc];
    loop {
        for (r, c) in children.iter_mut().enumerate() {
            if done[r] {
                continue;
            }
            match c.try_wait().map_err(|e| Error::msg(format!("rank {r}: {e}")))? {
                Some(status) if !status.success() => {
                    for (k, other) in children.iter_mut().enumerate() {
                        if k != r {
                            let _ = other.kill();
                            let _ = other.wait();
                        }
                    }
                    return Err(Error::msg(format!("rank {r} of {nproc} failed ({status}); the other ranks were stopped")));
                }
                Some(_) => done[r] = true,
                None => {}
            }
        }
        if done.iter().all(|&d| d) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Where rank `rank` of a run whose folder is `out` writes, and the overrides it trains with:
/// rank 0 writes `out` as given; rank r > 0 writes `out/ranks/rank-r` (config, metrics,
/// `ranks.json`) without evaluating, dev loss or progress bar.
pub fn rank_folder(rank: usize, out: &std::path::Path) -> (std::path::PathBuf, Vec<String>) {
    if rank == 0 {
        return (out.to_path_buf(), Vec::new());
    }
    let sets = ["eval.at_end=false", "eval.during_training=false", "train.dev_loss_batches=0", "train.progress=false"];
    (out.join("ranks").join(format!("rank-{rank}")), sets.iter().map(|s| s.to_string()).collect())
}

/// The GPUs the driver reports, when this binary has CUDA and a driver answers.
fn gpu_count() -> Option<usize> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda::cudarc::driver::result;
        result::init().ok()?;
        result::device::get_count().ok().map(|n| n.max(0) as usize)
    }
    #[cfg(not(feature = "cuda"))]
    None
}

/// A TCP port free on this host now (the launcher's default `MASTER_PORT`).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(29500)
}

#[cfg(feature = "nccl")]
mod nccl {
    //! The NCCL communicator (cudarc's bindings, loaded at run time from libnccl.so.2) and the
    //! rendezvous that hands rank 0's unique id to the others over TCP.
    use super::Reduce;
    use crate::{Error, Result};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda::cudarc::nccl::safe::{Comm as NcclComm, Id, ReduceOp};
    use candle_core::{CudaStorage, Device, Layout, Shape};
    use std::io::{Read, Write};
    use std::sync::Arc;

    /// How long the rendezvous waits for the other ranks.
    const RENDEZVOUS: std::time::Duration = std::time::Duration::from_secs(120);

    /// NCCL's own words for an error code.
    fn describe(e: &candle_core::cuda::cudarc::nccl::result::NcclError) -> String {
        let s = unsafe { candle_core::cuda::cudarc::nccl::sys::ncclGetErrorString(e.0) };
        if s.is_null() {
            return format!("error code {}", e.0 as i32);
        }
        unsafe { std::ffi::CStr::from_ptr(s) }.to_string_lossy().into_owned()
    }

    /// The communicator of this rank.
    pub struct Comm(pub NcclComm);
    // One communicator per process, used from the training thread only; NCCL calls are
    // thread-safe for distinct communicators.
    unsafe impl Send for Comm {}
    unsafe impl Sync for Comm {}

    /// Join the run: rank 0 creates the id and serves it on MASTER_ADDR:MASTER_PORT, the others
    /// fetch it (retrying for a minute), then every rank initialises on `device`'s stream.
    pub fn join(device: &Device, rank: usize, world: usize) -> Result<Comm> {
        if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
            std::env::set_var("NCCL_NVLS_ENABLE", "0");
        }
        let addr = format!(
            "{}:{}",
            std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into()),
            std::env::var("MASTER_PORT").unwrap_or_else(|_| "29500".into())
        );
        let nerr = |e: candle_core::cuda::cudarc::nccl::result::NcclError| Error::msg(format!("NCCL: {} ", describe(&e)));
        let id = if rank == 0 {
            let id = Id::new().map_err(nerr)?;
            let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
            let listener = std::net::TcpListener::bind(&addr).map_err(|e| Error::msg(format!("rank 0: cannot listen on {addr}: {e}")))?;
            // a rank that never comes (it failed before joining) must not hang rank 0
            listener.set_nonblocking(true).map_err(|e| Error::msg(format!("rank 0: {addr}: {e}")))?;
            let deadline = std::time::Instant::now() + RENDEZVOUS;
            let mut served = 1;
            while served < world {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).and_then(|_| s.write_all(&bytes)).map_err(|e| Error::msg(format!("rank 0: rendezvous on {addr}: {e}")))?;
                        served += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(100))
                    }
                    Err(e) => return Err(Error::msg(format!("rank 0: {served} of {world} ranks joined on {addr} within {} s ({e})", RENDEZVOUS.as_secs()))),
                }
            }
            id
        } else {
            let deadline = std::time::Instant::now() + RENDEZVOUS;
            let mut s = loop {
                match std::net::TcpStream::connect(&addr) {
                    Ok(s) => break s,
                    Err(e) if std::time::Instant::now() > deadline => return Err(Error::msg(format!("rank {rank}: no rendezvous at {addr}: {e}"))),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
                }
            };
            let mut bytes = [0u8; 128];
            s.read_exact(&mut bytes).map_err(|e| Error::msg(format!("rank {rank}: rendezvous at {addr}: {e}")))?;
            let mut internal = [0 as std::ffi::c_char; 128];
            for (d, b) in internal.iter_mut().zip(bytes) {
                *d = b as std::ffi::c_char;
            }
            Id::uninit(internal)
        };
        let cuda = device.as_cuda_device()?;
        let comm = NcclComm::from_rank(cuda.cuda_stream(), rank, world, id).map_err(nerr)?;
        Ok(Comm(comm))
    }

    /// All-reduce of an f32 or f64 tensor on the communicator's stream (candle's device stream, so
    /// it is ordered with the kernels around it).
    pub struct AllReduce {
        pub comm: Arc<Comm>,
        pub op: Reduce,
    }

    impl candle_core::CustomOp1 for AllReduce {
        fn name(&self) -> &'static str {
            "nccl-all-reduce"
        }

        fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
            candle_core::bail!("NCCL all-reduce needs a CUDA tensor")
        }

        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
            let op = match self.op {
                Reduce::Sum => ReduceOp::Sum,
                Reduce::Max => ReduceOp::Max,
                Reduce::Min => ReduceOp::Min,
            };
            let (o1, o2) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("all-reduce of a non-contiguous tensor".into()))?;
            let dev = s.device().clone();
            let err = |e| candle_core::Error::Msg(format!("NCCL all-reduce: {}", describe(&e)));
            let out = match s.dtype() {
                candle_core::DType::F32 => {
                    let src = s.as_cuda_slice::<f32>()?.slice(o1..o2);
                    let mut dst = unsafe { dev.alloc::<f32>(o2 - o1)? };
                    self.comm.0.all_reduce(&src, &mut dst, &op).map_err(err)?;
                    CudaStorage::wrap_cuda_slice(dst, dev)
                }
                candle_core::DType::F64 => {
                    let src = s.as_cuda_slice::<f64>()?.slice(o1..o2);
                    let mut dst = unsafe { dev.alloc::<f64>(o2 - o1)? };
                    self.comm.0.all_reduce(&src, &mut dst, &op).map_err(err)?;
                    CudaStorage::wrap_cuda_slice(dst, dev)
                }
                d => candle_core::bail!("NCCL all-reduce of {d:?}: only f32 and f64"),
            };
            Ok((out, l.shape().clone()))
        }
    }
}
