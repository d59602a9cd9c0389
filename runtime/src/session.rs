//! An ONNX encoder optimised once for a fixed `[1, 3, H, W]` input, and the session that
//! runs it frame after frame with one preallocated input tensor.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use oodmon_calibration::preprocess::ONNX_METADATA_KEY;
use oodmon_calibration::PreprocessSpec;
use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::backend::Backend;
use crate::error::{Error, InferenceError, Result};
use crate::kernels::{self, Kernels, Swapped};
use crate::split::Cut;

/// An encoder loaded and prepared for one [`Backend`]; cheap to share, each user runs it
/// through its own [`Session`].
#[derive(Clone)]
pub struct Encoder {
    model: Model,
    path: PathBuf,
    height: usize,
    width: usize,
    dim: usize,
    preprocessing: Option<PreprocessSpec>,
    /// The input tensor's shape: `[1, 3, H, W]`, or the cut's for a tail.
    input_shape: Vec<usize>,
    part: Part,
}

/// Which part of the network an [`Encoder`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Whole,
    /// From the image to a cut: its output is an intermediate tensor, not an embedding.
    Head,
    /// From a cut to the embedding.
    Tail,
}

/// An encoder cut in two at one tensor, for two threads (see [`crate::split`]).
#[derive(Debug, Clone)]
pub struct SplitEncoder {
    pub head: Encoder,
    pub tail: Encoder,
    pub cut: Cut,
}

/// The encoder as its backend holds it.
#[derive(Clone)]
enum Model {
    /// tract, on the CPU or on its CUDA runtime: a plan that spawns run states.
    Tract {
        runnable: Arc<dyn Runnable>,
        backend: Backend,
        /// The operators oodmon's own kernels took over (CPU plan only).
        swapped: Swapped,
        /// The decluttered graph the CPU plan was made from, kept to cut it in two.
        graph: Option<Arc<TypedModel>>,
    },
    /// ONNX Runtime: the file's bytes; each session builds its own ORT session.
    #[cfg(feature = "onnxruntime")]
    Onnxruntime { bytes: Arc<[u8]> },
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Encoder({} on {}: [1, 3, {}, {}] -> [1, {}])",
            self.path.display(),
            self.backend(),
            self.height,
            self.width,
            self.dim
        )
    }
}

impl Encoder {
    /// Loads an ONNX encoder for tract on the CPU, fixes its input to `[1, 3, H, W]` and
    /// optimises it. A corrupt or truncated file, or a graph that is not an image encoder,
    /// is an error naming the file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_on(path, Backend::Tract)
    }

    /// [`Encoder::load`] for the given backend.
    pub fn load_on(path: &Path, backend: Backend) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|cause| Error::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::from_bytes_on(&bytes, path, backend)
    }

    /// An encoder from its bytes, for tract on the CPU; `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        Self::from_bytes_on(bytes, path, Backend::Tract)
    }

    /// [`Encoder::from_bytes`] for the given backend. Every backend gets the same checks
    /// (tract reads the graph and its shapes); one not compiled into this build, or whose
    /// library or device cannot be used here, is an [`Error::Backend`].
    pub fn from_bytes_on(bytes: &[u8], path: &Path, backend: Backend) -> Result<Self> {
        let kernels = Kernels::from_env().map_err(|problem| Error::Backend { backend, problem })?;
        Self::from_bytes_with(bytes, path, backend, kernels)
    }

    /// [`Encoder::from_bytes_on`] with the CPU plan's operators chosen here rather than by
    /// `OODMON_TRACT_KERNELS` (the other backends ignore `kernels`).
    pub fn from_bytes_with(
        bytes: &[u8],
        path: &Path,
        backend: Backend,
        kernels: Kernels,
    ) -> Result<Self> {
        if !backend.compiled_in() {
            return Err(Error::Backend {
                backend,
                problem: format!(
                    "not in this build (cargo feature `{}`; this build has {})",
                    backend.feature().unwrap_or_default(),
                    Backend::available()
                        .iter()
                        .map(|b| b.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let proto = pb::ModelProto::decode(bytes).map_err(|e| Error::model(path, e))?;
        let preprocessing = proto
            .metadata_props
            .iter()
            .find(|m| m.key == ONNX_METADATA_KEY)
            .map(|m| serde_json::from_str::<PreprocessSpec>(&m.value))
            .transpose()
            .map_err(|e| Error::model(path, format!("bad {ONNX_METADATA_KEY} metadata: {e}")))?;
        let (height, width) = match input_dims(&proto)[..] {
            [_, Some(3), Some(h), Some(w)] => (h, w),
            ref dims => {
                return Err(Error::model(
                    path,
                    format!("input shape {dims:?} is not [batch, 3, H, W]"),
                ))
            }
        };
        let typed = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .and_then(|m| m.with_input_fact(0, f32::fact([1, 3, height, width]).into()))
            .and_then(|m| m.into_typed())
            .and_then(|m| m.into_decluttered())
            .map_err(|e| Error::model(path, e))?;
        let out = typed
            .output_fact(0)
            .map_err(|e| Error::model(path, e))?
            .clone();
        let dim = match out.shape.as_concrete() {
            Some([1, d]) => *d,
            other => {
                return Err(Error::model(
                    path,
                    format!("output shape {other:?} is not [1, D]"),
                ))
            }
        };
        let model = Model::prepare(typed, bytes, path, backend, kernels)?;
        Ok(Self {
            model,
            path: path.to_path_buf(),
            height,
            width,
            dim,
            preprocessing,
            input_shape: vec![1, 3, height, width],
            part: Part::Whole,
        })
    }

    /// The encoder cut in two at the tensor nearest to `head_share` of its multiply-adds
    /// (see [`crate::split`]); `None` where it cannot be: not tract on the CPU, a part
    /// already, or no tensor the whole model goes through.
    pub fn split(&self, head_share: f64) -> Result<Option<SplitEncoder>> {
        let Model::Tract {
            graph: Some(graph),
            backend,
            swapped,
            ..
        } = &self.model
        else {
            return Ok(None);
        };
        if self.part != Part::Whole {
            return Ok(None);
        }
        let error = |e| Error::model(&self.path, e);
        let cuts = crate::split::cuts(graph).map_err(error)?;
        let Some(cut) = crate::split::nearest(&cuts, head_share).cloned() else {
            return Ok(None);
        };
        let (head, tail) = crate::split::halves(graph, &cut).map_err(error)?;
        let part = |plan: Arc<TypedSimplePlan>, input_shape: Vec<usize>, dim, part| Encoder {
            model: Model::Tract {
                runnable: Arc::new(plan),
                backend: *backend,
                swapped: *swapped,
                graph: None,
            },
            path: self.path.clone(),
            height: self.height,
            width: self.width,
            dim,
            preprocessing: self.preprocessing.clone(),
            input_shape,
            part,
        };
        Ok(Some(SplitEncoder {
            head: part(
                head,
                self.input_shape.clone(),
                cut.shape.iter().product(),
                Part::Head,
            ),
            tail: part(tail, cut.shape.clone(), self.dim, Part::Tail),
            cut,
        }))
    }

    /// Which part of the network this runs.
    pub fn part(&self) -> Part {
        self.part
    }

    /// Input width and height.
    pub fn input_size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Values in one input tensor (`3 x H x W`; a tail's: the cut's).
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Embedding size (a head's: the cut's values).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The file (or name) the encoder was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The preprocessing spec stored in the model's metadata, if any.
    pub fn preprocessing(&self) -> Option<&PreprocessSpec> {
        self.preprocessing.as_ref()
    }

    /// The backend that runs it.
    pub fn backend(&self) -> Backend {
        match &self.model {
            Model::Tract { backend, .. } => *backend,
            #[cfg(feature = "onnxruntime")]
            Model::Onnxruntime { .. } => Backend::Onnxruntime,
        }
    }

    /// The operators oodmon's own kernels run in tract's CPU plan (none on the other
    /// backends, or with `OODMON_TRACT_KERNELS=tract`).
    pub fn own_kernels(&self) -> Swapped {
        match &self.model {
            Model::Tract { swapped, .. } => *swapped,
            #[cfg(feature = "onnxruntime")]
            Model::Onnxruntime { .. } => Swapped::default(),
        }
    }

    /// A session with its own state and preallocated input and output.
    pub fn session(&self) -> Result<Session, InferenceError> {
        let runner = match &self.model {
            Model::Tract { runnable, .. } => Runner::Tract {
                state: runnable.spawn().map_err(InferenceError::tract)?,
                input: Arc::new(
                    Tensor::zero::<f32>(&self.input_shape).map_err(InferenceError::tract)?,
                ),
            },
            #[cfg(feature = "onnxruntime")]
            Model::Onnxruntime { bytes } => {
                let shape = [1, 3, self.height, self.width];
                Runner::Onnxruntime(ort_runner::OrtRunner::new(bytes, shape)?)
            }
        };
        Ok(Session {
            runner,
            embedding: vec![0.0; self.dim],
            // a head's output is an intermediate tensor: the tail's output is checked
            checks_finite: self.part != Part::Head,
        })
    }

    /// tract's optimised CPU plan, for profiling its operators (`examples/profile_ops.rs`);
    /// `None` on the other backends.
    pub fn plan(&self) -> Option<&Arc<TypedSimplePlan>> {
        match &self.model {
            Model::Tract { runnable, .. } => runnable.typed_plan(),
            #[cfg(feature = "onnxruntime")]
            Model::Onnxruntime { .. } => None,
        }
    }
}

impl Model {
    fn prepare(
        mut typed: TypedModel,
        bytes: &[u8],
        path: &Path,
        backend: Backend,
        kernels: Kernels,
    ) -> Result<Self> {
        let unusable = |problem: String| Error::Backend { backend, problem };
        match backend {
            Backend::Tract => {
                let swapped =
                    kernels::swap_in(&mut typed, kernels).map_err(|e| Error::model(path, e))?;
                let graph = Arc::new(typed.clone());
                let plan = typed
                    .into_optimized()
                    .and_then(|m| m.into_runnable())
                    .map_err(|e| Error::model(path, e))?;
                Ok(Model::Tract {
                    runnable: Arc::new(plan),
                    backend,
                    swapped,
                    graph: Some(graph),
                })
            }
            Backend::TractCuda => {
                #[cfg(any(feature = "tract-cuda", feature = "tract-cuda-13"))]
                {
                    let cuda = tract_cuda_runtime().map_err(unusable)?;
                    cuda.check().map_err(|e| unusable(format!("{e:#}")))?;
                    let runnable = cuda
                        .prepare(typed)
                        .map_err(|e| unusable(format!("{e:#}")))?;
                    Ok(Model::Tract {
                        runnable: Arc::from(runnable),
                        backend,
                        swapped: Swapped::default(),
                        graph: None,
                    })
                }
                #[cfg(not(any(feature = "tract-cuda", feature = "tract-cuda-13")))]
                Err(unusable("not in this build".into()))
            }
            Backend::Onnxruntime => {
                #[cfg(feature = "onnxruntime")]
                {
                    drop(typed);
                    crate::backend::onnxruntime::environment().map_err(unusable)?;
                    // one session now, so that a model ONNX Runtime refuses fails here
                    ort_runner::OrtRunner::new(bytes, [1, 1, 1, 1]).map_err(|e| match e {
                        InferenceError::Onnxruntime(p) => Error::model(path, p),
                        other => Error::from(other),
                    })?;
                    Ok(Model::Onnxruntime {
                        bytes: Arc::from(bytes),
                    })
                }
                #[cfg(not(feature = "onnxruntime"))]
                {
                    let _ = (bytes, path);
                    Err(unusable("not in this build".into()))
                }
            }
        }
    }
}

/// tract's CUDA runtime, which `tract-cuda` registers under the name `cuda` when linked.
#[cfg(any(feature = "tract-cuda", feature = "tract-cuda-13"))]
fn tract_cuda_runtime() -> Result<&'static dyn tract_onnx::tract_core::runtime::Runtime, String> {
    // a use of the crate, so that it is linked and its runtime registered
    let _ = std::any::type_name::<tract_cuda::CudaTransform>();
    tract_onnx::tract_core::runtime::runtime_for_name("cuda")
        .map_err(|e| format!("{e:#}"))?
        .ok_or_else(|| "tract's CUDA runtime is not registered in this build".to_string())
}

/// The declared dimensions of the graph's first non-initializer input (`None` for symbolic).
fn input_dims(proto: &pb::ModelProto) -> Vec<Option<usize>> {
    use pb::tensor_shape_proto::dimension::Value;
    proto
        .graph
        .as_ref()
        .and_then(|g| {
            g.input
                .iter()
                .find(|i| !g.initializer.iter().any(|t| t.name == i.name))
        })
        .and_then(|i| i.r#type.as_ref())
        .and_then(|t| match &t.value {
            Some(pb::type_proto::Value::TensorType(t)) => t.shape.as_ref(),
            _ => None,
        })
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(Value::DimValue(v)) if v > 0 => Some(v as usize),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One running instance of an [`Encoder`]: the preprocessing writes straight into its
/// input tensor ([`Session::with_input`]) and [`Session::run`] leaves the embedding in a
/// buffer allocated once. Only the backend's own run allocates.
pub struct Session {
    runner: Runner,
    embedding: Vec<f32>,
    /// Whether a value that is not finite in the output is an error (not for a head).
    checks_finite: bool,
}

/// A backend's run state and its input tensor, allocated once.
enum Runner {
    Tract {
        state: Box<dyn State>,
        input: Arc<Tensor>,
    },
    #[cfg(feature = "onnxruntime")]
    Onnxruntime(ort_runner::OrtRunner),
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Session({} -> {})",
            self.input().len(),
            self.embedding.len()
        )
    }
}

impl Runner {
    /// Hands the input tensor to `write`, which fills it in place.
    fn with_input<R>(&mut self, write: impl FnOnce(&mut [f32]) -> R) -> Result<R, InferenceError> {
        match self {
            Runner::Tract { input, .. } => {
                // tract has released the previous input after its run; if anything still
                // holds it, a fresh tensor is made rather than writing under a reader
                if Arc::get_mut(input).is_none() {
                    *input = Arc::new((**input).clone());
                }
                let tensor = Arc::get_mut(input).ok_or_else(|| {
                    InferenceError::Tract("the input tensor is still shared after a copy".into())
                })?;
                let mut view = tensor
                    .try_as_plain_ram_mut()
                    .map_err(InferenceError::tract)?;
                let slice = view.as_slice_mut::<f32>().map_err(InferenceError::tract)?;
                Ok(write(slice))
            }
            #[cfg(feature = "onnxruntime")]
            Runner::Onnxruntime(r) => Ok(write(r.input_mut())),
        }
    }

    fn input(&self) -> &[f32] {
        match self {
            Runner::Tract { input, .. } => input
                .try_as_plain_ram()
                .ok()
                .and_then(|v| v.as_slice::<f32>().ok())
                .unwrap_or(&[]),
            #[cfg(feature = "onnxruntime")]
            Runner::Onnxruntime(r) => r.input(),
        }
    }

    /// One run; the output is handed to `read`.
    fn run<R>(
        &mut self,
        read: impl FnOnce(&[f32]) -> Result<R, InferenceError>,
    ) -> Result<R, InferenceError> {
        match self {
            Runner::Tract { state, input } => {
                let out = state
                    .run(tvec!(TValue::from_const(input.clone())))
                    .map_err(InferenceError::tract)?;
                let first = out.first().ok_or_else(|| {
                    InferenceError::Tract("the encoder produced no output".into())
                })?;
                let view = first.try_as_plain_ram().map_err(InferenceError::tract)?;
                read(view.as_slice::<f32>().map_err(InferenceError::tract)?)
            }
            #[cfg(feature = "onnxruntime")]
            Runner::Onnxruntime(r) => r.run(read),
        }
    }
}

impl Session {
    /// Hands the input tensor (`3 x H x W`, as the preprocessing lays it out) to `write`,
    /// which fills it in place; returns what `write` returns.
    pub fn with_input<R>(
        &mut self,
        write: impl FnOnce(&mut [f32]) -> R,
    ) -> Result<R, InferenceError> {
        self.runner.with_input(write)
    }

    /// The input tensor as last written.
    pub fn input(&self) -> &[f32] {
        self.runner.input()
    }

    /// Runs the encoder on the input tensor; the embedding stays in the session.
    pub fn run(&mut self) -> Result<&[f32], InferenceError> {
        let embedding = &mut self.embedding;
        self.runner.run(|values| {
            if values.len() != embedding.len() {
                return Err(InferenceError::OutputSize {
                    expected: embedding.len(),
                    found: values.len(),
                });
            }
            embedding.copy_from_slice(values);
            Ok(())
        })?;
        if let Some((index, &value)) = self
            .embedding
            .iter()
            .enumerate()
            .find(|(_, v)| self.checks_finite && !v.is_finite())
        {
            return Err(InferenceError::NonFinite { index, value });
        }
        Ok(&self.embedding)
    }

    /// Copies `input` into the input tensor and runs the encoder.
    /// Copies `input` into the input tensor (a wrong length is an error).
    pub fn set_input(&mut self, input: &[f32]) -> Result<(), InferenceError> {
        self.with_input(|slot| {
            if slot.len() != input.len() {
                return Err(InferenceError::InputSize {
                    expected: slot.len(),
                    found: input.len(),
                });
            }
            slot.copy_from_slice(input);
            Ok(())
        })?
    }

    pub fn embed(&mut self, input: &[f32]) -> Result<&[f32], InferenceError> {
        self.set_input(input)?;
        self.run()
    }

    /// The last embedding.
    pub fn embedding(&self) -> &[f32] {
        &self.embedding
    }

    /// Times `runs` inferences after `warmup` untimed ones, on a fixed non-trivial input
    /// (zeros can take shortcuts in some kernels); microseconds per run.
    pub fn time(&mut self, warmup: usize, runs: usize) -> Result<Vec<u32>, InferenceError> {
        self.with_input(|values| {
            for (i, v) in values.iter_mut().enumerate() {
                *v = ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
            }
        })?;
        let mut times = Vec::with_capacity(runs);
        for i in 0..warmup + runs {
            let t = Instant::now();
            self.runner.run(|_| Ok(()))?;
            if i >= warmup {
                times.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
        }
        Ok(times)
    }
}

/// A session of ONNX Runtime: its own `ort` session (one intra-op thread: the edge's second
/// core goes to the overlapped frame loop) and an input tensor allocated once.
#[cfg(feature = "onnxruntime")]
mod ort_runner {
    use ort::session::builder::GraphOptimizationLevel;
    use ort::session::Session;
    use ort::value::Tensor;

    use crate::error::InferenceError;

    pub(super) struct OrtRunner {
        session: Session,
        input: Tensor<f32>,
    }

    fn ort_error(e: impl std::fmt::Display) -> InferenceError {
        InferenceError::Onnxruntime(e.to_string())
    }

    impl OrtRunner {
        pub(super) fn new(bytes: &[u8], shape: [usize; 4]) -> Result<Self, InferenceError> {
            use crate::backend::onnxruntime::{environment, providers, Provider};
            let environment = environment().map_err(InferenceError::Onnxruntime)?;
            let asked = providers().map_err(InferenceError::Onnxruntime)?;
            // each asked-for provider must register (no silent fall back to the CPU); the
            // CPU provider takes what the others leave
            let dispatch: Vec<ort::ep::ExecutionProviderDispatch> = asked
                .iter()
                .filter_map(|p| match p {
                    Provider::Cpu => None,
                    Provider::Cuda => Some(ort::ep::CUDA::default().build().error_on_failure()),
                    Provider::TensorRt => {
                        Some(ort::ep::TensorRT::default().build().error_on_failure())
                    }
                })
                .collect();
            log::info!(
                "onnxruntime providers: {}",
                asked
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let session = Session::builder(environment)
                .map_err(ort_error)?
                .with_execution_providers(dispatch)
                .map_err(ort_error)?
                .with_optimization_level(GraphOptimizationLevel::All)
                .map_err(ort_error)?
                .with_intra_threads(1)
                .map_err(ort_error)?
                .with_inter_threads(1)
                .map_err(ort_error)?
                .with_intra_op_spinning(false)
                .map_err(ort_error)?
                .commit_from_memory(bytes)
                .map_err(ort_error)?;
            let n = shape.iter().product::<usize>();
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let input = Tensor::from_array((dims, vec![0f32; n])).map_err(ort_error)?;
            Ok(Self { session, input })
        }

        pub(super) fn input_mut(&mut self) -> &mut [f32] {
            self.input.extract_tensor_mut().1
        }

        pub(super) fn input(&self) -> &[f32] {
            self.input.extract_tensor().1
        }

        pub(super) fn run<R>(
            &mut self,
            read: impl FnOnce(&[f32]) -> Result<R, InferenceError>,
        ) -> Result<R, InferenceError> {
            let outputs = self
                .session
                .run(ort::inputs![&self.input])
                .map_err(ort_error)?;
            if outputs.len() == 0 {
                return Err(InferenceError::Onnxruntime(
                    "the encoder produced no output".into(),
                ));
            }
            let (_, values) = outputs[0].try_extract_tensor::<f32>().map_err(ort_error)?;
            read(values)
        }
    }
}
