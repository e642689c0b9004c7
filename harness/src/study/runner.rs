//! Running a study into `results/<study>/<UTC stamp>-<sha>[-dirty]/`, resumably.
//!
//! The folder is created with `manifest.json` (no end time); each run goes to `runs/<id>/`
//! through [`crate::run::execute`] or, for a zero-shot point, [`crate::run::execute_zero_shot`]
//! (both write `DONE` last, through `RunDir::mark_done`), `summary.csv` is rewritten after
//! every run, and when every run is done or failed the manifest gets its end time, `latest`
//! names the folder and `results/index.csv` is rebuilt. A rerun with the same commit, dirty flag
//! and resolved study resumes the newest such folder while it is unfinished: `DONE` and
//! `FAILED` runs are kept, a half-written run folder is deleted and redone. Finished folders are
//! never touched again.
//!
//! Locks (`ddm_schema::Lock`): the study's `results/<study>/LOCK` is taken before any folder is
//! looked at, and held while the folder is chosen (or created, with its own `LOCK` taken before
//! its manifest is written); the folder's `LOCK` is then held until the study returns. So two
//! invocations at the same second cannot both create a folder, and a second invocation of a
//! running study refuses, naming the holder (pid, host, start time), or with
//! [`StudyOpts::wait`] waits for it and then resumes (a folder the first one finished is
//! reported as it is, nothing redone). A stale lock (dead pid on this host, or no heartbeat for
//! [`ddm_schema::lock::STALE_AFTER`]) is taken over with a message.
//!
//! Each point runs under its run folder's own `LOCK` (`runs/<id>/LOCK`), so processes that share
//! a folder never run the same point: the workers of `--devices` (child processes `harness
//! study-worker`, one per entry, started and waited for by the study process, which keeps the
//! folder's `LOCK`), and the shards of `--shard I/N` (which hold the folder's `LOCK` only while
//! joining it; [`merge_study`] ends a sharded folder).

use super::manifest::{self, Manifest};
use super::spec::{self, Point, Study};
use super::summary::{self, Failure, RunStatus};
use crate::{run, Error, Result};
use ddm_schema::{RunDir, StudyDir};
use ddm_schema::lock::{self, Lock, LockInfo, TryLock};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often a waiting invocation looks at a busy lock again.
const POLL: Duration = Duration::from_millis(500);

/// Options of [`run_study`].
pub struct StudyOpts<'a> {
    /// Results root (`results`): the study writes into `<results>/<study>/<folder>/`.
    pub results: PathBuf,
    /// Checkpoint cache root (`.cache/checkpoints`, git-ignored): checkpoints of run `<id>` go
    /// to `<cache>/<study>/<folder>/<id>`.
    pub cache: PathBuf,
    /// Where a bare study name is looked up (`studies`).
    pub studies_dir: PathBuf,
    /// `key=value` overrides of the base run config.
    pub sets: Vec<String>,
    /// Ctrl-C flag: the current run stops at its next step and the study stops, resumable.
    pub stop: Option<&'a AtomicBool>,
    /// Show a progress bar over the runs.
    pub progress: bool,
    /// When another process holds the study: wait for it (polling) instead of refusing.
    pub wait: bool,
    /// The command line, for the manifest.
    pub command: Vec<String>,
    /// Where `git` runs to find the commit (default: the working directory).
    pub git_dir: Option<PathBuf>,
    /// Run the points in worker processes, one per entry (`--devices`; default: the study
    /// file's `devices`, else in this process). `Some(vec![])` runs in this process.
    pub devices: Option<Vec<WorkerDevice>>,
    /// The `harness` executable the workers run (default: this process's executable).
    pub worker_exe: Option<PathBuf>,
    /// Run only this shard's points (`--shard I/N`), sharing the folder with the other shards;
    /// the folder is ended by [`merge_study`].
    pub shard: Option<Shard>,
}

impl Default for StudyOpts<'_> {
    fn default() -> Self {
        Self {
            results: PathBuf::from("results"),
            cache: PathBuf::from(".cache/checkpoints"),
            studies_dir: PathBuf::from("studies"),
            sets: Vec::new(),
            stop: None,
            progress: false,
            wait: false,
            command: std::env::args().collect(),
            git_dir: None,
            devices: None,
            worker_exe: None,
            shard: None,
        }
    }
}

/// What [`run_study`] did.
#[derive(Debug, Clone)]
pub struct StudyOutcome {
    /// The result folder.
    pub folder: PathBuf,
    /// An unfinished folder was resumed.
    pub resumed: bool,
    /// Runs done (including those done before a resume).
    pub done: usize,
    /// Runs failed.
    pub failed: usize,
    /// Runs in the study.
    pub total: usize,
    /// Runs skipped because an earlier invocation had finished them.
    pub skipped: usize,
    /// Stopped by Ctrl-C before the end: rerun to resume.
    pub interrupted: bool,
}

/// The newest folder of `study_dir` made by the same study, commit and dirty flag.
fn newest_folder(study_dir: &Path, fingerprint: &str, git: &manifest::GitInfo) -> Option<(PathBuf, Manifest)> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(study_dir).ok()?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    folders.sort();
    folders.into_iter().rev().find_map(|f| {
        let m = manifest::read(&f).ok()?;
        (m.fingerprint == fingerprint && m.git.commit == git.commit && m.git.dirty == git.dirty).then_some((f, m))
    })
}

/// [`newest_folder`], if it is unfinished.
fn resumable(study_dir: &Path, fingerprint: &str, git: &manifest::GitInfo) -> Option<(PathBuf, Manifest)> {
    newest_folder(study_dir, fingerprint, git).filter(|(_, m)| m.end.is_none())
}

/// What `run_study` and `merge_study` start from: the study file, its loaded study and
/// fingerprint, the git state, and `<results>/<study>/`.
struct Located {
    path: PathBuf,
    study: Study,
    fingerprint: String,
    git: manifest::GitInfo,
    study_dir: PathBuf,
}

fn locate(name_or_path: &str, opts: &StudyOpts) -> Result<Located> {
    let path = spec::resolve_path(name_or_path, &opts.studies_dir);
    let study: Study = spec::load(&path, &opts.sets)?;
    let fingerprint = study.fingerprint()?;
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    let git = manifest::git_info(opts.git_dir.as_deref().unwrap_or(&cwd), &opts.results);
    let study_dir = opts.results.join(&study.name);
    Ok(Located { path, study, fingerprint, git, study_dir })
}

/// Ids of the points of `man` that `shard` runs (every point without one), in manifest order.
fn shard_ids(man: &Manifest, shard: Option<Shard>) -> Vec<&str> {
    man.points.iter().enumerate().filter(|(k, _)| shard.is_none_or(|s| s.contains(*k))).map(|(_, p)| p.id.as_str()).collect()
}

/// Create a new, never-used folder `<study_dir>/<stamp>-<suffix>[-k]`.
fn new_folder(study_dir: &Path, suffix: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(study_dir).map_err(|e| Error::io(study_dir, e))?;
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
    for k in 1..1000 {
        let name = if k == 1 { format!("{stamp}-{suffix}") } else { format!("{stamp}-{suffix}-{k}") };
        let dir = study_dir.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    Err(Error::msg(format!("{}: could not find a free folder name", study_dir.display())))
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Take the lock file `path` of `what` once; a stale holder is taken over with a message.
/// `Err(holder)` inside when someone else holds it.
fn try_take(path: &Path, what: &str) -> Result<std::result::Result<Lock, LockInfo>> {
    match Lock::try_acquire(path, lock::STALE_AFTER)? {
        TryLock::Acquired { lock, replaced } => {
            if let Some((holder, why)) = replaced {
                eprintln!("taking over the stale lock of {what} ({}): it was held by {}, but {why}", path.display(), holder.describe());
            }
            Ok(Ok(lock))
        }
        TryLock::Busy(holder) => Ok(Err(holder)),
    }
}

/// The error of a refused invocation.
fn busy(path: &Path, what: &str, holder: &LockInfo) -> Error {
    Error::msg(format!(
        "{what} is being run by another process: {} holds {} (pass --wait to wait for it, or remove that file if the process is gone)",
        holder.describe(),
        path.display()
    ))
}

/// Take the lock file `path` of `what`: refuse when it is held, unless `wait` (then poll until
/// it is free; Ctrl-C stops the wait).
fn take(path: &Path, what: &str, wait: bool, stop: Option<&AtomicBool>) -> Result<Lock> {
    let mut said = false;
    loop {
        match try_take(path, what)? {
            Ok(lock) => return Ok(lock),
            Err(holder) if !wait => return Err(busy(path, what, &holder)),
            Err(holder) => {
                if !said {
                    eprintln!("waiting for {what}: {} holds {}", holder.describe(), path.display());
                    said = true;
                }
            }
        }
        if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            return Err(Error::Interrupted);
        }
        std::thread::sleep(POLL);
    }
}

/// What a folder finished by another invocation holds: every run counted as finished earlier.
fn finished_outcome(folder: PathBuf, man: &Manifest) -> StudyOutcome {
    let study = StudyDir::new(&folder);
    let (done, failed) = study.finished_counts(man.points.iter().map(|p| p.id.as_str()));
    StudyOutcome { folder, resumed: true, done, failed, total: man.points.len(), skipped: done + failed, interrupted: false }
}

/// Run one point into `run_dir`; when its loss diverged, `FAILED` is written and returned.
fn run_point(p: &Point, run_dir: &RunDir, ckpt: PathBuf, stop: Option<&AtomicBool>) -> Result<Option<Failure>> {
    let mut raw = p.config.clone();
    raw.train.checkpoint_dir = Some(ckpt);
    let res = if p.zero_shot {
        run::execute_zero_shot(raw, run_dir.path()).map(|_| ())
    } else {
        run::execute(raw, run_dir.path(), run::RunOpts { stop, hook: None }).map(|_| ())
    };
    match res {
        Ok(()) => Ok(None),
        Err(e @ Error::Diverged { step, .. }) => Ok(Some(run_dir.mark_failed(Some(step), &e.to_string(), &chrono::Utc::now().to_rfc3339())?)),
        Err(e) => Err(e),
    }
}

/// Where a study worker runs: the CPU, or one GPU (its index on the host, handed to the worker
/// as `CUDA_VISIBLE_DEVICES`, so that its runs see it as `cuda:0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerDevice {
    /// The CPU (the worker's runs use `model.device = "cpu"`).
    Cpu,
    /// GPU `i` of the host (the worker's runs use `model.device = "cuda:0"`).
    Gpu(usize),
}

impl WorkerDevice {
    /// `cpu` or the GPU index: the spelling `--devices` and `study-worker --device` read.
    pub fn spec(&self) -> String {
        match self {
            WorkerDevice::Cpu => "cpu".into(),
            WorkerDevice::Gpu(i) => i.to_string(),
        }
    }

    /// The `model.device` the worker's runs use.
    fn model_device(&self) -> &'static str {
        match self {
            WorkerDevice::Cpu => "cpu",
            WorkerDevice::Gpu(_) => "cuda:0",
        }
    }
}

/// Parse a device list: `all` (one worker per visible GPU), or comma-separated GPU indices and
/// `cpu`; an entry may repeat (`0,0`: two workers share GPU 0; `cpu,cpu`: two CPU workers).
pub fn parse_devices(spec: &str) -> Result<Vec<WorkerDevice>> {
    let spec = spec.trim();
    if spec == "all" {
        let n = crate::device::cuda_device_count()?;
        if n == 0 {
            return Err(Error::config("devices", "`all`: no CUDA device is visible"));
        }
        return Ok((0..n).map(WorkerDevice::Gpu).collect());
    }
    spec.split(',')
        .map(|d| match d.trim() {
            "cpu" => Ok(WorkerDevice::Cpu),
            d => d.parse::<usize>().map(WorkerDevice::Gpu).map_err(|_| Error::config("devices", format!("`{d}` is not `all`, `cpu` or a GPU index (e.g. `0,1,3`)"))),
        })
        .collect()
}

/// One of N deterministic parts of a study's points (`--shard I/N`, I from 1): point k (0-based, in
/// manifest order) belongs to shard `k mod N + 1`. Shards share the study folder through the run
/// locks; `--merge` ends the folder once every point is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, 1..=count.
    pub index: usize,
    /// How many shards.
    pub count: usize,
}

impl Shard {
    /// Parse `I/N` (1 ≤ I ≤ N).
    pub fn parse(spec: &str) -> Result<Shard> {
        let bad = || Error::config("shard", format!("`{spec}` is not I/N with 1 <= I <= N (e.g. `2/4`)"));
        let (i, n) = spec.trim().split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse::<usize>().map_err(|_| bad())?, n.trim().parse::<usize>().map_err(|_| bad())?);
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// Whether point `k` (0-based) is this shard's.
    pub fn contains(&self, k: usize) -> bool {
        k % self.count + 1 == self.index
    }

    /// `I/N`.
    pub fn spec(&self) -> String {
        format!("{}/{}", self.index, self.count)
    }
}

/// The `CUDA_VISIBLE_DEVICES` of a worker on `d`: empty for the CPU; for GPU i, entry i of this
/// process's own `CUDA_VISIBLE_DEVICES` when it has one (a Slurm task's GPUs, say `3,5`: index 0
/// is GPU 3), else `i`.
fn visible_device(d: WorkerDevice, parent: Option<&str>) -> Result<String> {
    let WorkerDevice::Gpu(i) = d else { return Ok(String::new()) };
    match parent.map(str::trim).filter(|p| !p.is_empty()) {
        None => Ok(i.to_string()),
        Some(list) => {
            let ids: Vec<&str> = list.split(',').map(str::trim).collect();
            ids.get(i).map(|s| s.to_string()).ok_or_else(|| {
                Error::config("devices", format!("GPU index {i}, but this process sees {} GPU(s) (CUDA_VISIBLE_DEVICES={list}); indices count within it", ids.len()))
            })
        }
    }
}

/// Remove everything in run folder `dir` but its `LOCK` (a half-written run starts again from
/// scratch under the lock its worker holds).
fn clear_run(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries.flatten() {
        if e.file_name() == RunDir::LOCK {
            continue;
        }
        let p = e.path();
        let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        r.map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// Print `line` above the progress bar, or to stderr when there is none (not a terminal, or a
/// worker process: its study process relays it).
fn say(bar: &indicatif::ProgressBar, line: impl AsRef<str>) {
    if bar.is_hidden() {
        eprintln!("{}", line.as_ref());
    } else {
        bar.println(line);
    }
}

/// What one worker did in a study folder.
#[derive(Debug, Clone, Copy, Default)]
pub struct Worked {
    /// Runs it ran to the end (done or failed).
    pub ran: usize,
    /// It stopped on Ctrl-C before the end.
    pub interrupted: bool,
}

/// Run the unfinished points of study folder `folder` (manifest `man`) one after another, each
/// under its run folder's `LOCK` (taken before the run is looked at again; a point another
/// worker holds is passed over, a stale holder's is taken over and its half-written run redone).
/// `device` overrides every run's `model.device`; `shard` keeps its points only; `tag` is printed
/// after each run id. Without `device` and `shard` (the study's own process, running every
/// point), `summary.csv` is rewritten after every run.
#[allow(clippy::too_many_arguments)]
fn work(
    folder: &Path,
    man: &Manifest,
    ckpt_root: &Path,
    device: Option<WorkerDevice>,
    shard: Option<Shard>,
    stop: Option<&AtomicBool>,
    bar: &indicatif::ProgressBar,
    tag: &str,
) -> Result<Worked> {
    let study_folder = StudyDir::new(folder);
    let total = man.points.len();
    let mut w = Worked::default();
    for (i, p) in man.points.iter().enumerate() {
        if shard.is_some_and(|s| !s.contains(i)) {
            continue;
        }
        let run_dir = study_folder.run(&p.id);
        let dir = run_dir.path().to_path_buf();
        if run_dir.status() != RunStatus::Pending {
            continue;
        }
        if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            w.interrupted = true;
            break;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let claim = match Lock::try_acquire(&run_dir.lock_file(), lock::STALE_AFTER)? {
            TryLock::Acquired { lock, replaced } => {
                if let Some((holder, why)) = replaced {
                    say(bar, format!("taking over the stale lock of run {} ({}): it was held by {}, but {why}", p.id, run_dir.lock_file().display(), holder.describe()));
                }
                lock
            }
            TryLock::Busy(_) => continue, // another worker runs it
        };
        // It may have been finished between the look and the claim.
        if run_dir.status() != RunStatus::Pending {
            continue;
        }
        // A half-written run (killed mid-way) starts again from scratch.
        let ckpt = ckpt_root.join(&p.id);
        clear_run(&dir)?;
        remove_dir(&ckpt)?;
        bar.set_message(p.id.clone());
        say(bar, format!("[{}/{}] {}{tag}", i + 1, total, p.id));
        let mut point = p.clone();
        if let Some(d) = device {
            point.config.model.device = d.model_device().to_string();
        }
        match bar.suspend(|| run_point(&point, &run_dir, ckpt.clone(), stop)) {
            Ok(None) => {}
            Ok(Some(f)) => say(bar, format!("  failed: {}{tag}", f.message)),
            Err(Error::Interrupted) => {
                // Leave nothing half-written behind.
                clear_run(&dir)?;
                drop(claim);
                let _ = std::fs::remove_dir(&dir);
                w.interrupted = true;
                break;
            }
            Err(e) => return Err(Error::msg(format!("study {}, run {}: {e} (rerun to resume; the run starts again)", man.study, p.id))),
        }
        drop(claim);
        w.ran += 1;
        if device.is_none() {
            bar.inc(1);
        }
        if device.is_none() && shard.is_none() {
            summary::write_csv(folder, man, &summary::collect(folder, &man.points)?)?;
        }
    }
    Ok(w)
}

/// A worker process (`harness study-worker`): run the unfinished points of the study folder
/// `folder` on `device`, sharing the folder with the study's other workers through the run
/// locks (see [`work`]). Checkpoints go under `ckpt_root/<run id>`. The folder's manifest,
/// summary and `latest` are the study process's to write.
pub fn work_folder(folder: &Path, ckpt_root: &Path, device: WorkerDevice, shard: Option<Shard>, worker: usize, stop: Option<&AtomicBool>) -> Result<Worked> {
    let man = manifest::read(folder)?;
    let tag = format!(" (worker {worker}, {})", if device == WorkerDevice::Cpu { "cpu".to_string() } else { format!("gpu {}", device.spec()) });
    work(folder, &man, ckpt_root, Some(device), shard, stop, &indicatif::ProgressBar::hidden(), &tag)
}

/// Run the folder's points in one `harness study-worker` process per entry of `devices`, relay
/// their output above the progress bar, count every worker's finished runs on it (and rewrite
/// `summary.csv` as they finish), and wait for all. Ctrl-C is passed on to the workers once;
/// each stops after its current step, leaving nothing half-written. A worker that exits with an
/// error (or is killed) is an error naming it; what the others finished is kept, and a rerun
/// redoes only the unfinished runs.
fn run_workers(folder: &Path, man: &Manifest, ckpt_root: &Path, devices: &[WorkerDevice], opts: &StudyOpts, bar: &indicatif::ProgressBar) -> Result<Worked> {
    use std::io::BufRead;
    let exe = match &opts.worker_exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().map_err(|e| Error::io("the harness executable", e))?,
    };
    let study_folder = StudyDir::new(folder);
    let parent_visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let mut children = Vec::with_capacity(devices.len());
    let mut relays = Vec::new();
    for (k, d) in devices.iter().enumerate() {
        let mut c = std::process::Command::new(&exe);
        c.arg("study-worker").arg(folder).arg("--checkpoints").arg(ckpt_root).arg("--device").arg(d.spec()).arg("--worker").arg(k.to_string());
        if let Some(sh) = opts.shard {
            c.arg("--shard").arg(sh.spec());
        }
        c.env("CUDA_VISIBLE_DEVICES", visible_device(*d, parent_visible.as_deref())?);
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = c.spawn().map_err(|e| Error::io(&exe, e))?;
        for out in [child.stdout.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>), child.stderr.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>)].into_iter().flatten() {
            let b = bar.clone();
            relays.push(std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines().map_while(|l| l.ok()) {
                    say(&b, line);
                }
            }));
        }
        children.push((k, *d, child));
    }
    let mine = shard_ids(man, opts.shard);
    let ids = || mine.iter().copied();
    let mut finished = study_folder.finished_counts(ids());
    let at_start = finished.0 + finished.1;
    let mut forwarded = false;
    let mut statuses: Vec<Option<std::process::ExitStatus>> = vec![None; children.len()];
    loop {
        for (j, (_, _, child)) in children.iter_mut().enumerate() {
            if statuses[j].is_none() {
                statuses[j] = child.try_wait().map_err(|e| Error::io(&exe, e))?;
            }
        }
        let now = study_folder.finished_counts(ids());
        if now != finished {
            finished = now;
            bar.set_position((now.0 + now.1) as u64);
            if opts.shard.is_none() {
                summary::write_csv(folder, man, &summary::collect(folder, &man.points)?)?;
            }
        }
        if statuses.iter().all(|s| s.is_some()) {
            break;
        }
        if !forwarded && opts.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            // A terminal's Ctrl-C reaches the workers too; a signal sent to this process alone
            // does not. Either way each worker stops once (a second SIGINT is ignored there).
            forwarded = true;
            for (j, (_, _, child)) in children.iter().enumerate() {
                if statuses[j].is_none() {
                    let _ = std::process::Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
                }
            }
        }
        std::thread::sleep(POLL);
    }
    for r in relays {
        let _ = r.join();
    }
    let bad: Vec<String> = children
        .iter()
        .zip(&statuses)
        .filter(|(_, s)| !s.is_some_and(|s| s.success()))
        .map(|((k, d, child), s)| format!("worker {k} ({}, pid {}) {}", d.spec(), child.id(), s.map(|s| format!("exited with {s}")).unwrap_or_default()))
        .collect();
    let (done, failed) = study_folder.finished_counts(ids());
    if !bad.is_empty() && done + failed == mine.len() {
        // The others took over what the lost worker held: nothing is missing.
        say(bar, format!("warning: {}; its runs were taken over and every run is finished", bad.join("; ")));
    } else if !bad.is_empty() {
        if opts.shard.is_none() {
            summary::write_csv(folder, man, &summary::collect(folder, &man.points)?)?;
        }
        let _ = summary::write_index(&opts.results);
        return Err(Error::msg(format!(
            "study {}: {} (what the workers finished is kept; rerun the same command to resume, the unfinished runs start again)",
            man.study,
            bad.join("; ")
        )));
    }
    Ok(Worked { ran: (done + failed).saturating_sub(at_start), interrupted: done + failed < mine.len() })
}

/// Load the study `name_or_path` (a file, or `<studies_dir>/<name>.toml`), validate every
/// point, and run it into a new or resumed result folder (see the module doc).
pub fn run_study(name_or_path: &str, opts: StudyOpts) -> Result<StudyOutcome> {
    let Located { path, study, fingerprint, git, study_dir } = locate(name_or_path, &opts)?;
    std::fs::create_dir_all(&study_dir).map_err(|e| Error::io(&study_dir, e))?;
    // Nothing in the study's folders is looked at before this lock is held.
    let what = format!("study {}", study.name);
    // A shard waits for the folder another shard is choosing or creating, then shares it.
    let wait = opts.wait || opts.shard.is_some();
    let mut study_lock = Some(take(&StudyDir::study_lock_file(&study_dir), &what, wait, opts.stop)?);
    let resume = |folder: PathBuf, mut m: Manifest, folder_lock: Lock| -> Result<(PathBuf, Manifest, bool, Lock)> {
        m.resumed.push(manifest::Resumption { time: chrono::Utc::now().to_rfc3339(), command: opts.command.clone() });
        manifest::write(&m, &folder)?;
        Ok((folder, m, true, folder_lock))
    };
    let (folder, mut man, resumed, folder_lock) = match resumable(&study_dir, &fingerprint, &git) {
        Some((folder, m)) => {
            let lock_path = StudyDir::new(&folder).lock_file();
            let what = format!("study folder {}", folder.display());
            match try_take(&lock_path, &what)? {
                Ok(folder_lock) => resume(folder, m, folder_lock)?,
                Err(holder) if !wait => return Err(busy(&lock_path, &what, &holder)),
                Err(_) => {
                    // Let other invocations (of other folders of this study) go on while we wait.
                    study_lock = None;
                    let folder_lock = take(&lock_path, &what, true, opts.stop)?;
                    let m = manifest::read(&folder)?;
                    if m.end.is_some() {
                        // The holder finished it: nothing is left to do, and it is not touched.
                        return Ok(finished_outcome(folder, &m));
                    }
                    resume(folder, m, folder_lock)?
                }
            }
        }
        None => {
            let first = study.points.first().ok_or_else(|| Error::config("study", format!("{}: the study has no points", path.display())))?;
            let device = manifest::device_info(&first.config.model.device)?;
            // Loads every model and dataset once: missing files fail before anything runs.
            let hashes = manifest::hashes(&study.points)?;
            let folder = new_folder(&study_dir, &git.suffix())?;
            // Locked before its manifest makes it resumable.
            let lock_path = StudyDir::new(&folder).lock_file();
            let folder_lock = try_take(&lock_path, &format!("study folder {}", folder.display()))?
                .map_err(|holder| busy(&lock_path, &format!("study folder {}", folder.display()), &holder))?;
            let name = folder.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            let m = manifest::new(&study, &name, git.clone(), device, hashes, opts.command.clone())?;
            manifest::write(&m, &folder)?;
            (folder, m, false, folder_lock)
        }
    };
    // The folder is ours: other folders of this study may be chosen and run meanwhile.
    drop(study_lock);
    // A shard holds the folder only while joining it: the other shards join too, and the run
    // locks keep them apart; `--merge` ends the folder.
    let _folder_lock = if opts.shard.is_some() {
        drop(folder_lock);
        None
    } else {
        Some(folder_lock)
    };
    let shard = opts.shard;
    let mine = shard_ids(&man, shard);
    let study_folder = StudyDir::new(&folder);
    let runs_dir = study_folder.runs();
    std::fs::create_dir_all(&runs_dir).map_err(|e| Error::io(&runs_dir, e))?;
    let ckpt_root = opts.cache.join(&man.study).join(&man.folder);
    let total = mine.len();
    let bar = if opts.progress { indicatif::ProgressBar::new(total as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("study {prefix} {bar:30.green/white} {pos}/{len} runs {msg} [{elapsed_precise}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(man.study.clone());
    let ids = || mine.iter().copied();
    let (done0, failed0) = study_folder.finished_counts(ids());
    bar.set_position((done0 + failed0) as u64);
    if shard.is_none() {
        summary::write_csv(&folder, &man, &summary::collect(&folder, &man.points)?)?;
    }
    let devices = match &opts.devices {
        Some(d) => d.clone(),
        None => match &study.file.devices {
            Some(spec) => parse_devices(spec).map_err(|e| Error::config("devices", format!("{}: {e}", path.display())))?,
            None => Vec::new(),
        },
    };
    let worked = if devices.is_empty() {
        let tag = shard.map(|s| format!(" (shard {})", s.spec())).unwrap_or_default();
        let w = work(&folder, &man, &ckpt_root, None, shard, opts.stop, &bar, &tag);
        if w.is_err() && shard.is_none() {
            summary::write_csv(&folder, &man, &summary::collect(&folder, &man.points)?)?;
            let _ = summary::write_index(&opts.results);
        }
        w?
    } else {
        run_workers(&folder, &man, &ckpt_root, &devices, &opts, &bar)?
    };
    let (done, failed) = study_folder.finished_counts(ids());
    let out = StudyOutcome {
        folder: folder.clone(),
        resumed,
        done,
        failed,
        total,
        skipped: done0 + failed0,
        interrupted: worked.interrupted || (done + failed < total && opts.stop.is_some_and(|s| s.load(Ordering::SeqCst))),
    };
    bar.finish_and_clear();
    if shard.is_some() {
        return Ok(out);
    }
    summary::write_csv(&folder, &man, &summary::collect(&folder, &man.points)?)?;
    if out.done + out.failed == total {
        man.end = Some(chrono::Utc::now().to_rfc3339());
        manifest::write(&man, &folder)?;
        study_folder.mark_latest()?;
    }
    summary::write_index(&opts.results)?;
    Ok(out)
}

/// `harness study NAME --merge`: end the newest folder of the study at this commit once every
/// point is finished (done or failed) — by shards, workers or hosts sharing it — writing
/// `summary.csv`, the manifest's end, `latest` and `results/index.csv`. A folder that is already
/// ended is reported as it is; one with unfinished points is an error naming how many and which.
pub fn merge_study(name_or_path: &str, opts: StudyOpts) -> Result<StudyOutcome> {
    let Located { study, fingerprint, git, study_dir, .. } = locate(name_or_path, &opts)?;
    let what = format!("study {}", study.name);
    let _study_lock = take(&StudyDir::study_lock_file(&study_dir), &what, true, opts.stop)?;
    let (folder, _) = newest_folder(&study_dir, &fingerprint, &git)
        .ok_or_else(|| Error::msg(format!("study {}: no folder of this study at commit {} to merge in {}", study.name, git.suffix(), study_dir.display())))?;
    let lock_path = StudyDir::new(&folder).lock_file();
    let _folder_lock = take(&lock_path, &format!("study folder {}", folder.display()), true, opts.stop)?;
    let mut man = manifest::read(&folder)?;
    let study_folder = StudyDir::new(&folder);
    let total = man.points.len();
    let (done, failed) = study_folder.finished_counts(man.points.iter().map(|p| p.id.as_str()));
    let out = StudyOutcome { folder: folder.clone(), resumed: true, done, failed, total, skipped: done + failed, interrupted: false };
    if man.end.is_some() {
        return Ok(out);
    }
    if done + failed < total {
        let left: Vec<&str> = man.points.iter().filter(|p| study_folder.run(&p.id).status() == RunStatus::Pending).map(|p| p.id.as_str()).collect();
        let shown = left.iter().take(5).copied().collect::<Vec<_>>().join(", ");
        return Err(Error::msg(format!(
            "study {}: {} of {total} runs are not finished in {} ({shown}{}): run the missing shards (or the study) first",
            study.name,
            left.len(),
            folder.display(),
            if left.len() > 5 { ", ..." } else { "" }
        )));
    }
    summary::write_csv(&folder, &man, &summary::collect(&folder, &man.points)?)?;
    man.end = Some(chrono::Utc::now().to_rfc3339());
    manifest::write(&man, &folder)?;
    study_folder.mark_latest()?;
    summary::write_index(&opts.results)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_gpus_index_within_the_visible_ones() {
        assert_eq!(visible_device(WorkerDevice::Gpu(1), None).unwrap(), "1");
        assert_eq!(visible_device(WorkerDevice::Gpu(1), Some("3,5")).unwrap(), "5");
        assert_eq!(visible_device(WorkerDevice::Gpu(0), Some("")).unwrap(), "0");
        assert_eq!(visible_device(WorkerDevice::Cpu, Some("3,5")).unwrap(), "");
        let e = visible_device(WorkerDevice::Gpu(2), Some("3,5")).unwrap_err().to_string();
        assert!(e.contains("sees 2 GPU(s)"), "{e}");
        assert_eq!(parse_devices("0, 0,cpu").unwrap(), vec![WorkerDevice::Gpu(0), WorkerDevice::Gpu(0), WorkerDevice::Cpu]);
        assert_eq!(Shard::parse("2/4").unwrap(), Shard { index: 2, count: 4 });
        let s = Shard { index: 2, count: 3 };
        assert_eq!((0..7).filter(|&k| s.contains(k)).collect::<Vec<_>>(), vec![1, 4]);
    }
}
