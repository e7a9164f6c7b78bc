//! Files users keep: written atomically (a temporary file in the same folder,
//! flushed to the disk, then renamed over the target, and the folder's entry
//! flushed too), so an interrupted run, a killed process or a power cut
//! leaves either the old file or the new one, never a half-written one.
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// The error of a failed write to `path`: [`Error::DiskFull`] when the disk
/// (or the user's quota, or the file size limit) has no room, which says
/// what was kept and how to go on; [`Error::Io`] otherwise.
pub fn write_error(path: &Path, e: std::io::Error) -> Error {
    use std::io::ErrorKind::{FileTooLarge, QuotaExceeded, StorageFull};
    match e.kind() {
        StorageFull | QuotaExceeded | FileTooLarge => Error::DiskFull { path: path.to_path_buf(), cause: e },
        _ => Error::Io { path: path.to_path_buf(), cause: e },
    }
}

/// Writes `data` to `path` atomically and durably; creates missing folders.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let err = |e| write_error(path, e);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        // The data must be on the disk before the rename makes it the file:
        // otherwise a crash can leave the new name pointing at nothing.
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    sync_dir(dir.unwrap_or(Path::new("."))).map_err(err)
}

/// Removes the temporary files [`write_atomic`] leaves in `dir` when its
/// process is killed mid-write (`.NAME.tmpPID`, from other processes than
/// this one); returns how many. A run calls it when it starts in its folder.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    let own = format!(".tmp{}", std::process::id());
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = name.starts_with('.')
            && !name.ends_with(&own)
            && name.rfind(".tmp").is_some_and(|i| {
                let pid = &name[i + 4..];
                !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
            });
        if stale && entry.path().is_file() {
            std::fs::remove_file(entry.path()).map_err(|e| Error::Io { path: entry.path(), cause: e })?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// FNV-1a, 64 bits: the checksum of what fsd3d writes and reads back
/// (checkpoints), to tell a damaged file from a good one. Not a defence
/// against tampering.
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Flushes a folder's entries (the rename) to the disk. Folders cannot be
/// opened for syncing on Windows; there the rename is as durable as the
/// file system makes it.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("fsd3d-io-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn writes_replaces_and_leaves_no_temporary_file() {
        let d = scratch("replace");
        let p = d.join("sub").join("out.bin");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.bin")], "only the file itself is left");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stale_temporaries_of_other_processes_are_removed() {
        let d = scratch("stale");
        std::fs::create_dir_all(&d).unwrap();
        let own = format!(".log.csv.tmp{}", std::process::id());
        for n in [".checkpoint.safetensors.tmp12345", ".config.toml.tmp7", own.as_str(), "keep.tmp1", ".hidden", ".x.tmp", "checkpoint.safetensors"] {
            std::fs::write(d.join(n), b"x").unwrap();
        }
        assert_eq!(remove_stale_temporaries(&d).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        let mut want = vec![own.clone(), "keep.tmp1".into(), ".hidden".into(), ".x.tmp".into(), "checkpoint.safetensors".into()];
        want.sort();
        assert_eq!(left, want);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_write_names_the_file_and_keeps_the_old_one() {
        let d = scratch("fail");
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("out.bin");
        write_atomic(&p, b"kept").unwrap();
        // A folder where the temporary file must go: the rename onto it fails.
        let blocked = d.join("dir-target");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        let e = write_atomic(&blocked, b"new").unwrap_err().to_string();
        assert!(e.contains("dir-target"), "{e}");
        assert!(blocked.join("inside").is_dir(), "the folder was not replaced");
        assert_eq!(std::fs::read(&p).unwrap(), b"kept");
        let tmp_left = std::fs::read_dir(&d).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains(".tmp"));
        assert!(!tmp_left, "no temporary file is left after a failed write");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_full_disk_is_told_apart_from_other_write_errors() {
        let p = Path::new("runs/x/renders.png");
        for kind in [std::io::ErrorKind::StorageFull, std::io::ErrorKind::QuotaExceeded, std::io::ErrorKind::FileTooLarge] {
            let e = write_error(p, std::io::Error::from(kind));
            assert!(matches!(e, Error::DiskFull { .. }), "{kind:?} -> {e}");
            let text = e.to_string();
            assert!(text.contains("runs/x/renders.png") && text.contains("disk is full") && text.contains("--resume"), "{text}");
        }
        let e = write_error(p, std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }
}
