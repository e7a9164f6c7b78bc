//! Model folders with synthesised weights, for timing models whose
//! checkpoints are not at hand: a temporary folder holding each component's
//! `config.json` and the random-weights marker ([`RANDOM_WEIGHTS_FILE`]),
//! which the ordinary loaders read as they read a checkpoint
//! (`models::weights`), so what is timed is the code users run. The folder
//! is removed when dropped; the loaded models do not need it.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};
use crate::models::weights::{RANDOM_WEIGHTS_FILE, RandomWeights};

/// A temporary model folder, removed on drop.
pub struct RandomFolder {
    path: PathBuf,
}

impl RandomFolder {
    /// An empty folder in the temp directory, unique to this process and call.
    pub fn new(tag: &str) -> Result<RandomFolder> {
        static FOLDERS: AtomicU32 = AtomicU32::new(0);
        let n = FOLDERS.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("fsd3d-random-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| Error::Io { path: path.clone(), cause: e })?;
        Ok(RandomFolder { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `text` to `rel` inside the folder, creating its parent folders.
    pub fn write(&self, rel: &str, text: &str) -> Result<()> {
        let path = self.path.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::Io { path: parent.to_path_buf(), cause: e })?;
        }
        std::fs::write(&path, text).map_err(|e| Error::Io { path, cause: e })
    }

    /// A component with random weights in `sub` ("" for the folder itself):
    /// its `config.json` and the marker that makes its weights `spec`'s.
    pub fn component(&self, sub: &str, config_json: &str, spec: RandomWeights) -> Result<()> {
        let at = |name: &str| if sub.is_empty() { name.to_string() } else { format!("{sub}/{name}") };
        self.write(&at("config.json"), config_json)?;
        self.write(&at(RANDOM_WEIGHTS_FILE), &serde_json::to_string(&spec).expect("the spec serialises"))
    }

    /// Copies the files (not subfolders) of `from` into `sub`: a tokenizer, a scheduler.
    pub fn copy_files(&self, from: &Path, sub: &str) -> Result<()> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |e| Error::Io { path, cause: e }
        };
        let to = self.path.join(sub);
        std::fs::create_dir_all(&to).map_err(io(&to))?;
        for entry in std::fs::read_dir(from).map_err(io(from))? {
            let src = entry.map_err(io(from))?.path();
            if src.is_file() {
                let dst = to.join(src.file_name().expect("a file has a name"));
                std::fs::copy(&src, &dst).map_err(io(&src))?;
            }
        }
        Ok(())
    }
}

impl Drop for RandomFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
