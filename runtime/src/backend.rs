//! The engines an encoder can run on. A bundle is one ONNX file and one calibration, and
//! runs unchanged on each: the engine is chosen when the encoder is loaded, and the session
//! API (write the input in place, run, read the embedding) is the same on all of them.
//!
//! - `tract`: tract on the CPU; pure Rust, static, always compiled in; the default.
//! - `tract-cuda`: tract's own CUDA runtime (cargo feature `tract-cuda` for CUDA 12, as on
//!   JetPack 6, or `tract-cuda-13` for CUDA 13 libraries). CUDA is loaded at run time, so
//!   the build needs no toolkit; loading the encoder fails with a clear error on a machine
//!   without a usable driver or libraries.
//! - `onnxruntime`: ONNX Runtime through the `ort` crate (cargo feature `onnxruntime`),
//!   loaded at run time from `libonnxruntime.so` (`ORT_DYLIB_PATH`, or the library search
//!   path): the Python wheel's library on a workstation, JetPack's on a Jetson. Nothing is
//!   downloaded at build time.

use std::fmt;
use std::str::FromStr;

/// Which engine runs the encoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    #[default]
    Tract,
    TractCuda,
    Onnxruntime,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Tract, Backend::TractCuda, Backend::Onnxruntime];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Tract => "tract",
            Backend::TractCuda => "tract-cuda",
            Backend::Onnxruntime => "onnxruntime",
        }
    }

    /// Whether this build has the backend (its cargo feature).
    pub fn compiled_in(self) -> bool {
        match self {
            Backend::Tract => true,
            Backend::TractCuda => cfg!(any(feature = "tract-cuda", feature = "tract-cuda-13")),
            Backend::Onnxruntime => cfg!(feature = "onnxruntime"),
        }
    }

    /// The backends this build has.
    pub fn available() -> Vec<Backend> {
        Self::ALL.into_iter().filter(|b| b.compiled_in()).collect()
    }

    /// The cargo feature that compiles the backend in.
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Backend::Tract => None,
            Backend::TractCuda => Some("tract-cuda"),
            Backend::Onnxruntime => Some("onnxruntime"),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend name that is not one of [`Backend::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a backend (tract, tract-cuda, onnxruntime)")]
pub struct UnknownBackend(pub String);

impl FromStr for Backend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .or(match s {
                "ort" => Some(Backend::Onnxruntime),
                "cuda" => Some(Backend::TractCuda),
                _ => None,
            })
            .ok_or_else(|| UnknownBackend(s.to_string()))
    }
}

impl<'de> serde::Deserialize<'de> for Backend {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Backend {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// ONNX Runtime, loaded once per process from its shared library, and the execution
/// providers asked of it.
#[cfg(feature = "onnxruntime")]
pub mod onnxruntime {
    use std::sync::OnceLock;

    /// Loads `libonnxruntime` (once; its version is checked) and makes the process's ONNX
    /// Runtime environment, or says why it could not be used.
    pub(crate) fn environment() -> Result<&'static ort::environment::Environment, String> {
        static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> =
            OnceLock::new();
        ENVIRONMENT
            .get_or_init(|| {
                let path = std::env::var("ORT_DYLIB_PATH")
                    .ok()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "libonnxruntime.so".into());
                ort::init_from(&path)
                    .map_err(|e| {
                        format!(
                            "{e} (set ORT_DYLIB_PATH to a libonnxruntime.so: the onnxruntime \
                             Python wheel's onnxruntime/capi/libonnxruntime.so.*, or JetPack's)"
                        )
                    })?
                    .with_name("oodmon")
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The variable naming the execution providers to ask ONNX Runtime for, in order.
    pub const PROVIDERS_VARIABLE: &str = "OODMON_ORT_PROVIDERS";

    /// An ONNX Runtime execution provider oodmon can ask for; the CPU provider is always
    /// there, behind the others, for the nodes they do not take.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Provider {
        Cpu,
        Cuda,
        TensorRt,
    }

    impl Provider {
        pub fn name(self) -> &'static str {
            match self {
                Provider::Cpu => "cpu",
                Provider::Cuda => "cuda",
                Provider::TensorRt => "tensorrt",
            }
        }
    }

    /// The providers `OODMON_ORT_PROVIDERS` asks for (`cpu` when unset), as
    /// [`parse_providers`] reads them.
    pub fn providers() -> Result<Vec<Provider>, String> {
        parse_providers(&std::env::var(PROVIDERS_VARIABLE).unwrap_or_default())
    }

    /// Execution providers from a comma-separated list (e.g. `tensorrt,cuda`; `cpu` when
    /// empty), each checked against the loaded library: a provider it was built without is
    /// an error, not a silent fall back to the CPU.
    pub fn parse_providers(text: &str) -> Result<Vec<Provider>, String> {
        use ort::ep::ExecutionProvider;
        // the provider list is the library's: load it first
        environment()?;
        let mut out = Vec::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let p = match name.to_ascii_lowercase().as_str() {
                "cpu" => Provider::Cpu,
                "cuda" => Provider::Cuda,
                "tensorrt" | "trt" => Provider::TensorRt,
                other => {
                    return Err(format!(
                        "{PROVIDERS_VARIABLE}: unknown provider {other:?} (cpu, cuda, tensorrt)"
                    ))
                }
            };
            let (ort_name, available) = match p {
                Provider::Cpu => ("CPUExecutionProvider", Ok(true)),
                Provider::Cuda => (
                    ort::ep::CUDA::NAME,
                    ort::ep::CUDA::is_available().map_err(|e| e.to_string()),
                ),
                Provider::TensorRt => (
                    ort::ep::TensorRT::NAME,
                    ort::ep::TensorRT::is_available().map_err(|e| e.to_string()),
                ),
            };
            if !available? {
                return Err(format!(
                    "{PROVIDERS_VARIABLE} asks for {name}, but this libonnxruntime was built \
                     without {ort_name} (the onnxruntime wheel has the CPU provider only; \
                     JetPack's onnxruntime has CUDA and TensorRT)"
                ));
            }
            if !out.contains(&p) {
                out.push(p);
            }
        }
        if out.is_empty() {
            out.push(Provider::Cpu);
        }
        Ok(out)
    }
}
