//! The library's typed errors. Every failure a user can cause (bad input,
//! missing driver, oversized tensor, broken shader) has a variant whose message
//! says what is wrong and how to fix it.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no GPU adapter found: wgpu sees no Vulkan, Metal or DX12 device.\n\
         On Linux without a GPU install the software Vulkan driver: `apt-get install mesa-vulkan-drivers`"
    )]
    NoAdapter,

    #[error("no adapter matches {wanted:?}; available adapters: {available}")]
    AdapterNotFound { wanted: String, available: String },

    #[error("could not open the device on adapter {adapter}: {message}")]
    Device { adapter: String, message: String },

    #[error(
        "tensor {what} of shape {shape:?} ({dtype}) needs {bytes} bytes, over this adapter's \
         storage binding limit of {limit} bytes; split it into smaller tensors, use f16 storage, \
         or use a smaller batch / resolution"
    )]
    TooLarge { what: String, shape: Vec<usize>, dtype: &'static str, bytes: u64, limit: u64 },

    #[error("{0}")]
    OutOfMemory(Box<OutOfMemory>),

    #[error(
        "the GPU device was lost ({reason}): the driver reset it, it faulted or it was removed, and nothing more \
         can run on it in this process{then}"
    )]
    DeviceLost { reason: String, then: String },

    #[error("shader {file}: {message}")]
    Shader { file: String, message: String },

    #[error("the shader directory {0} does not exist or cannot be read")]
    ShaderDir(PathBuf),

    #[error("GPU validation error in {context}: {message}")]
    Validation { context: String, message: String },

    #[error("{op}: {message}")]
    Shape { op: &'static str, message: String },

    #[error("{what} needs the adapter feature {feature}, which this adapter lacks (or which was switched off); {hint}")]
    Unsupported { what: String, feature: &'static str, hint: &'static str },

    #[error("reading back a GPU buffer failed: {0}")]
    Readback(String),

    #[error("{0}")]
    Invalid(String),

    // `cause`, not `source`: the message already holds it, and a `source`
    // would print it twice in a chain of context (anyhow's `{:#}`).
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },

    #[error(
        "{path}: not written, the disk is full ({cause}). Files are replaced only once complete, so \
         nothing written before was lost or changed: free some space and run the command again (a \
         `generate` run continues from its last checkpoint with `fsd3d generate --resume <its folder>`)"
    )]
    DiskFull { path: PathBuf, cause: std::io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(op: &'static str, message: impl Into<String>) -> Self {
        Error::Shape { op, message: message.into() }
    }
}

/// What did not fit in GPU memory ([`Error::OutOfMemory`]; boxed, so that
/// every `Result` stays small).
#[derive(Debug)]
pub struct OutOfMemory {
    /// The tensor: a weight's name, or where in the code it was made.
    pub what: String,
    pub shape: Vec<usize>,
    pub dtype: &'static str,
    /// Its size, as printed ("3.0 MiB").
    pub bytes: String,
    /// What the engine held already.
    pub held: String,
    /// Which limit it hit: the budget or the device's refusal.
    pub limit: String,
    /// " in a training step": the work, or empty.
    pub doing: String,
    /// The settings that make that work smaller.
    pub smaller: &'static str,
}

impl std::fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "out of GPU memory{}: {} of shape {:?} ({}) needs {} more, with {} already held, and {}. To need less: {}",
            self.doing, self.what, self.shape, self.dtype, self.bytes, self.held, self.limit, self.smaller
        )
    }
}
