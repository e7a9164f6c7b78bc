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

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(op: &'static str, message: impl Into<String>) -> Self {
        Error::Shape { op, message: message.into() }
    }
}
