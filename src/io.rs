//! Files users keep: written atomically (a temporary file in the same folder,
//! then a rename), so an interrupted run never leaves a half-written output.
use std::path::Path;

use crate::error::{Error, Result};

pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let err = |e| Error::Io { path: path.to_path_buf(), source: e };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, data).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
