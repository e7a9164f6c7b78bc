//! Claims on units of work (an eval unit, an asset of a `generate` batch),
//! so that workers of one sweep (shards on a cluster, or two calls by hand)
//! never work on the same unit at once: a worker claims a unit by creating
//! its lock file (`OUT/locks/<unit>.lock`) exclusively, holding its host,
//! pid and start time, refreshes the lock's time while it works, and removes
//! it when done. A claim whose worker is gone is taken over: on the same
//! host when its pid no longer exists, from any host when the lock has not
//! been refreshed for `stale_after` (a killed job, a lost node). Taking over
//! first renames the stale lock away, which only one worker can do, so two
//! workers that find it stale at once do not both win.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How long a lock may go unrefreshed before another host takes it over.
pub const STALE_AFTER: Duration = Duration::from_secs(10 * 60);
/// How often a working claim refreshes its lock.
const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// What a lock file holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// Seconds since the Unix epoch when the claim was made.
    pub since: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} on {}", self.pid, self.host)
    }
}

/// A unit this worker holds; dropping it releases the unit.
pub struct Claim {
    path: PathBuf,
    refreshed: std::cell::Cell<std::time::Instant>,
}

/// The outcome of [`claim`].
pub enum Claimed {
    Mine(Claim),
    /// Another live worker holds it.
    Busy(Holder),
}

/// This machine's name (Linux: the kernel's hostname).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Is process `pid` alive on this host? (Without /proc: assumed alive, so
/// only staleness frees its locks.)
fn alive(pid: u32) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The folder of the locks under an output folder.
pub const LOCKS: &str = "locks";

/// The lock file of the unit `id` (slashes become `__`) under `out`.
pub fn lock_path(out: &Path, id: &str) -> PathBuf {
    out.join(LOCKS).join(format!("{}.lock", id.replace('/', "__")))
}

/// Claims the unit whose lock file is `path` for this process, taking over a stale claim.
pub fn claim(path: &Path, stale_after: Duration) -> Result<Claimed> {
    let path = path.to_path_buf();
    let dir = path.parent().expect("a lock has a folder");
    std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), cause: e })?;
    let me = Holder {
        host: host_name(),
        pid: std::process::id(),
        since: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    for _ in 0..3 {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                let json = serde_json::to_string(&me).expect("a holder serialises");
                f.write_all(json.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| Error::Io { path: path.clone(), cause: e })?;
                return Ok(Claimed::Mine(Claim { path, refreshed: std::cell::Cell::new(std::time::Instant::now()) }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str::<Holder>(&t).ok());
                let age = std::fs::metadata(&path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).unwrap_or_default();
                let stale = match &holder {
                    Some(h) if h.host == me.host => !alive(h.pid),
                    // Unreadable: a claim cut short while being written, or a stranger's file.
                    _ => age > stale_after,
                };
                if !stale {
                    return Ok(Claimed::Busy(holder.unwrap_or(Holder { host: "?".into(), pid: 0, since: 0 })));
                }
                // Only one worker can rename the stale lock away.
                let tomb = path.with_extension(format!("stale-{}-{}", me.pid, me.since));
                if std::fs::rename(&path, &tomb).is_ok() {
                    let _ = std::fs::remove_file(&tomb);
                }
            }
            Err(e) => return Err(Error::Io { path, cause: e }),
        }
    }
    // Another worker took it over between our tries.
    let holder = std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str::<Holder>(&t).ok());
    Ok(Claimed::Busy(holder.unwrap_or(Holder { host: "?".into(), pid: 0, since: 0 })))
}

impl Claim {
    /// Marks the claim alive (at most once a minute): other hosts take over
    /// locks left unrefreshed for [`STALE_AFTER`].
    pub fn refresh(&self) {
        if self.refreshed.get().elapsed() < REFRESH_EVERY {
            return;
        }
        self.refreshed.set(std::time::Instant::now());
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&self.path) {
            let _ = f.set_modified(SystemTime::now());
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
