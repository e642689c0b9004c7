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

/// The newest folder of `study_dir` made by the same study, commit and dirty flag, if it is
/// unfinished.
fn resumable(study_dir: &Path, fingerprint: &str, git: &manifest::GitInfo) -> Option<(PathBuf, Manifest)> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(study_dir).ok()?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    folders.sort();
    folders.into_iter().rev().find_map(|f| {
        let m = manifest::read(&f).ok()?;
        (m.fingerprint == fingerprint && m.git.commit == git.commit && m.git.dirty == git.dirty).then_some((f, m))
    })
    .filter(|(_, m)| m.end.is_none())
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

/// Load the study `name_or_path` (a file, or `<studies_dir>/<name>.toml`), validate every
/// point, and run it into a new or resumed result folder (see the module doc).
pub fn run_study(name_or_path: &str, opts: StudyOpts) -> Result<StudyOutcome> {
    let path = spec::resolve_path(name_or_path, &opts.studies_dir);
    let study: Study = spec::load(&path, &opts.sets)?;
    let fingerprint = study.fingerprint()?;
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    let git = manifest::git_info(opts.git_dir.as_deref().unwrap_or(&cwd), &opts.results);
    let study_dir = opts.results.join(&study.name);
    std::fs::create_dir_all(&study_dir).map_err(|e| Error::io(&study_dir, e))?;
    // Nothing in the study's folders is looked at before this lock is held.
    let what = format!("study {}", study.name);
    let mut study_lock = Some(take(&StudyDir::study_lock_file(&study_dir), &what, opts.wait, opts.stop)?);
    let resume = |folder: PathBuf, mut m: Manifest, folder_lock: Lock| -> Result<(PathBuf, Manifest, bool, Lock)> {
        m.resumed.push(manifest::Resumption { time: chrono::Utc::now().to_rfc3339(), command: opts.command.clone() });
        manifest::write(&m, &folder)?;
        Ok((folder, m, true, folder_lock))
    };
    let (folder, mut man, resumed, _folder_lock) = match resumable(&study_dir, &fingerprint, &git) {
        Some((folder, m)) => {
            let lock_path = StudyDir::new(&folder).lock_file();
            let what = format!("study folder {}", folder.display());
            match try_take(&lock_path, &what)? {
                Ok(folder_lock) => resume(folder, m, folder_lock)?,
                Err(holder) if !opts.wait => return Err(busy(&lock_path, &what, &holder)),
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
    let study_folder = StudyDir::new(&folder);
    let runs_dir = study_folder.runs();
    std::fs::create_dir_all(&runs_dir).map_err(|e| Error::io(&runs_dir, e))?;
    let ckpt_root = opts.cache.join(&man.study).join(&man.folder);
    let total = man.points.len();
    let bar = if opts.progress { indicatif::ProgressBar::new(total as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("study {prefix} {bar:30.green/white} {pos}/{len} runs {msg} [{elapsed_precise}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(man.study.clone());
    let mut out = StudyOutcome { folder: folder.clone(), resumed, done: 0, failed: 0, total, skipped: 0, interrupted: false };
    summary::write_csv(&folder, &man, &summary::collect(&folder, &man.points)?)?;
    let points = man.points.clone();
    for (i, p) in points.iter().enumerate() {
        let run_dir = study_folder.run(&p.id);
        let dir = run_dir.path().to_path_buf();
        match run_dir.status() {
            RunStatus::Done => {
                out.done += 1;
                out.skipped += 1;
                bar.inc(1);
                continue;
            }
            RunStatus::Failed => {
                out.failed += 1;
                out.skipped += 1;
                bar.inc(1);
                continue;
            }
            RunStatus::Pending => {}
        }
        if opts.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            out.interrupted = true;
            break;
        }
        // A half-written run (killed mid-way) starts again from scratch.
        let ckpt = ckpt_root.join(&p.id);
        remove_dir(&dir)?;
        remove_dir(&ckpt)?;
        bar.set_message(p.id.clone());
        bar.println(format!("[{}/{}] {}", i + 1, total, p.id));
        let res = bar.suspend(|| run_point(p, &run_dir, ckpt.clone(), opts.stop));
        match res {
            Ok(None) => out.done += 1,
            Ok(Some(f)) => {
                bar.println(format!("  failed: {}", f.message));
                out.failed += 1;
            }
            Err(Error::Interrupted) => {
                // Leave nothing half-written behind.
                remove_dir(&dir)?;
                out.interrupted = true;
                break;
            }
            Err(e) => {
                summary::write_csv(&folder, &man, &summary::collect(&folder, &man.points)?)?;
                let _ = summary::write_index(&opts.results);
                return Err(Error::msg(format!("study {}, run {}: {e} (rerun to resume; the run starts again)", man.study, p.id)));
            }
        }
        bar.inc(1);
        summary::write_csv(&folder, &man, &summary::collect(&folder, &man.points)?)?;
    }
    bar.finish_and_clear();
    if !out.interrupted && out.done + out.failed == total {
        man.end = Some(chrono::Utc::now().to_rfc3339());
        manifest::write(&man, &folder)?;
        study_folder.mark_latest()?;
    }
    summary::write_index(&opts.results)?;
    Ok(out)
}
