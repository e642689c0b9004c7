//! Exclusive locks on result folders: a `LOCK` file (JSON [`LockInfo`]: pid, host, start and
//! heartbeat time) created with `O_EXCL`, refreshed by a heartbeat thread while held, removed
//! when the [`Lock`] guard is dropped (success, error, Ctrl-C that unwinds, panic).
//!
//! One type serves every level: a study's `results/<study>/LOCK` (held while a folder is chosen
//! or created), a study folder's `LOCK` (held while it runs) and a run folder's `LOCK`
//! ([`crate::RunDir::lock_file`], for workers that share a study folder). A lock whose holder is
//! gone — a dead pid on this host, or a heartbeat older than the stale timeout — is taken over;
//! [`TryLock::Acquired`] then names the holder it replaced so the caller can say so.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often a held lock's heartbeat is refreshed.
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// A lock whose heartbeat is older than this is stale (its holder is hung or on a lost host).
pub const STALE_AFTER: Duration = Duration::from_secs(600);

/// The content of a `LOCK` file: who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Process id of the holder.
    pub pid: u32,
    /// Host name of the holder.
    pub host: String,
    /// When the lock was taken, seconds since the Unix epoch.
    pub start_unix: u64,
    /// The holder's last heartbeat, seconds since the Unix epoch.
    pub heartbeat_unix: u64,
}

impl LockInfo {
    /// The current process, now.
    fn current() -> LockInfo {
        let now = unix_now();
        LockInfo { pid: std::process::id(), host: host_name(), start_unix: now, heartbeat_unix: now }
    }

    /// Why this holder is gone, or `None` when it may still be running: a pid that no longer
    /// exists on this host, or a heartbeat older than `stale_after`.
    pub fn stale_reason(&self, stale_after: Duration) -> Option<String> {
        if self.host == host_name() && !pid_alive(self.pid) {
            return Some(format!("process {} is not running on {}", self.pid, self.host));
        }
        let age = unix_now().saturating_sub(self.heartbeat_unix);
        (age > stale_after.as_secs()).then(|| format!("its last heartbeat was {age} s ago (timeout {} s)", stale_after.as_secs()))
    }

    /// `pid 123 on host h since 2026-12-01T22:00:00Z (heartbeat 2026-12-01T22:05:00Z)`.
    pub fn describe(&self) -> String {
        format!("pid {} on host {} since {} (heartbeat {})", self.pid, self.host, utc_rfc3339(self.start_unix), utc_rfc3339(self.heartbeat_unix))
    }
}

/// What [`Lock::try_acquire`] found.
#[derive(Debug)]
pub enum TryLock {
    /// The lock is ours; `replaced` names a stale holder it was taken over from, and why.
    Acquired {
        /// The guard: the lock is released when it is dropped.
        lock: Lock,
        /// The stale holder that was replaced, and why it was stale.
        replaced: Option<(LockInfo, String)>,
    },
    /// Someone else holds it.
    Busy(LockInfo),
}

/// A held lock: refreshes its heartbeat from a thread, removes the `LOCK` file when dropped.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    info: LockInfo,
    stop: Option<mpsc::Sender<()>>,
    beat: Option<std::thread::JoinHandle<()>>,
}

impl Lock {
    /// Try once to take the lock file `path` (its folder must exist): create it exclusively,
    /// or take it over when its holder is stale (see [`LockInfo::stale_reason`]).
    pub fn try_acquire(path: &Path, stale_after: Duration) -> Result<TryLock> {
        // Bounded: each pass either creates the file, reports a live holder, or removes a
        // stale/vanished one; a loop only repeats when another process raced us.
        for _ in 0..100 {
            let info = LockInfo::current();
            if create_exclusive(path, &info)? {
                return Ok(TryLock::Acquired { lock: Lock::start(path, info), replaced: None });
            }
            let Some(holder) = read_holder(path)? else { continue };
            let Some(reason) = holder.stale_reason(stale_after) else { return Ok(TryLock::Busy(holder)) };
            // Take over under a short-lived guard file, so that two processes that both saw
            // the stale lock cannot both remove it and each create their own.
            let guard = path.with_file_name(format!("{}.takeover", file_name(path)));
            if !create_exclusive(&guard, &info)? {
                clear_stale_guard(&guard);
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let still = read_holder(path);
            let outcome = match still {
                Ok(Some(h)) if h == holder => {
                    remove_file(path).and_then(|()| create_exclusive(path, &info)).map(|made| made.then(|| Lock::start(path, info)))
                }
                Ok(_) => Ok(None),
                Err(e) => Err(e),
            };
            let _ = std::fs::remove_file(&guard);
            if let Some(lock) = outcome? {
                return Ok(TryLock::Acquired { lock, replaced: Some((holder, reason)) });
            }
        }
        Err(Error::parse(path, "could not take the lock: it kept changing hands"))
    }

    fn start(path: &Path, info: LockInfo) -> Lock {
        let (tx, rx) = mpsc::channel::<()>();
        let (p, mut beat_info) = (path.to_path_buf(), info.clone());
        let beat = std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(HEARTBEAT) {
                // Only refresh a file that is still ours.
                if read_holder(&p).ok().flatten().is_some_and(|h| h.pid == beat_info.pid && h.host == beat_info.host && h.start_unix == beat_info.start_unix) {
                    beat_info.heartbeat_unix = unix_now();
                    if let Ok(text) = serde_json::to_string_pretty(&beat_info) {
                        let _ = crate::layout::write_atomic(&p, format!("{text}\n").as_bytes());
                    }
                }
            }
        });
        Lock { path: path.to_path_buf(), info, stop: Some(tx), beat: Some(beat) }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the lock file says about us.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(b) = self.beat.take() {
            let _ = b.join();
        }
        // Remove the file only while it still names us (a taken-over lock is not ours).
        if read_holder(&self.path).ok().flatten().is_some_and(|h| h.pid == self.info.pid && h.host == self.info.host && h.start_unix == self.info.start_unix) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
}

/// Create `path` holding `info` if it does not exist; `false` when it already does. The content
/// is written to a temporary file first and hard-linked into place, so a reader never sees an
/// empty or half-written lock.
fn create_exclusive(path: &Path, info: &LockInfo) -> Result<bool> {
    let text = serde_json::to_string_pretty(info).map_err(|e| Error::parse(path, e))? + "\n";
    // Not `write_atomic`'s `.<name>.<pid>.tmp`: the heartbeat thread may be writing that one.
    let tmp = path.with_file_name(format!(".{}.{}.new", file_name(path), std::process::id()));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(text.as_bytes()).map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    // `link` fails with AlreadyExists exactly like `create_new` would.
    let res = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match res {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) => {
            // A file system without hard links: fall back to an exclusive create.
            match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut f) => f.write_all(text.as_bytes()).map(|()| true).map_err(|e| Error::io(path, e)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(Error::io(path, e)),
            }
        }
    }
}

/// The holder named in `path`; `None` when the file vanished meanwhile. An unreadable lock
/// (e.g. empty after a crash mid-write on a file system without links) counts as a holder with
/// pid 0 and heartbeat 0, i.e. stale.
fn read_holder(path: &Path) -> Result<Option<LockInfo>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).unwrap_or(LockInfo { pid: 0, host: String::new(), start_unix: 0, heartbeat_unix: 0 }))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A takeover guard left by a process that died mid-takeover (a minute old) is removed.
fn clear_stale_guard(guard: &Path) {
    let old = std::fs::metadata(guard).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > Duration::from_secs(60));
    if old {
        let _ = std::fs::remove_file(guard);
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// This machine's host name (`/proc/sys/kernel/hostname`, `/etc/hostname`, `$HOSTNAME`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Whether process `pid` runs on this machine. Without `/proc` (not Linux) every pid counts as
/// alive and only the heartbeat timeout makes a lock stale. A zombie counts as dead.
pub fn pid_alive(pid: u32) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last ')'.
        Ok(stat) => stat.rsplit_once(')').map(|(_, rest)| rest.trim_start()).is_none_or(|rest| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// `secs` since the Unix epoch as `yyyy-mm-ddThh:mm:ssZ`.
pub fn utc_rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (H. Hinnant's algorithm), days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquired(t: TryLock) -> (Lock, Option<(LockInfo, String)>) {
        match t {
            TryLock::Acquired { lock, replaced } => (lock, replaced),
            TryLock::Busy(h) => panic!("busy: {h:?}"),
        }
    }

    #[test]
    fn a_lock_is_exclusive_released_on_drop_and_a_stale_one_is_taken_over() {
        let tmp = std::env::temp_dir().join(format!("ddm-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let p = tmp.join("LOCK");
        let _ = std::fs::remove_file(&p);
        let (lock, replaced) = acquired(Lock::try_acquire(&p, STALE_AFTER).unwrap());
        assert!(replaced.is_none());
        let on_disk: LockInfo = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(on_disk.pid, std::process::id());
        match Lock::try_acquire(&p, STALE_AFTER).unwrap() {
            TryLock::Busy(h) => assert_eq!(h, on_disk),
            TryLock::Acquired { .. } => panic!("a held lock was taken twice"),
        }
        drop(lock);
        assert!(!p.exists(), "released on drop");
        // A holder that is long gone: a heartbeat an hour old.
        let old = LockInfo { pid: std::process::id(), host: "elsewhere".into(), start_unix: 1, heartbeat_unix: unix_now() - 3600 };
        std::fs::write(&p, serde_json::to_string(&old).unwrap()).unwrap();
        let (lock, replaced) = acquired(Lock::try_acquire(&p, STALE_AFTER).unwrap());
        let (who, why) = replaced.unwrap();
        assert_eq!(who, old);
        assert!(why.contains("heartbeat"), "{why}");
        drop(lock);
        assert!(!p.exists());
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn liveness_and_time_formatting() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX - 1));
        assert_eq!(utc_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_rfc3339(1_796_162_400), "2026-12-01T22:00:00Z");
        assert_eq!(utc_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
