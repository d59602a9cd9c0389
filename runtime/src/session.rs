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

use crate::error::{Error, InferenceError, Result};

/// An encoder loaded and optimised by tract; cheap to share, each user runs it through
/// its own [`Session`].
#[derive(Clone)]
pub struct Encoder {
    plan: Arc<TypedSimplePlan>,
    path: PathBuf,
    height: usize,
    width: usize,
    dim: usize,
    preprocessing: Option<PreprocessSpec>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Encoder({}: [1, 3, {}, {}] -> [1, {}])",
            self.path.display(),
            self.height,
            self.width,
            self.dim
        )
    }
}

impl Encoder {
    /// Loads an ONNX encoder, fixes its input to `[1, 3, H, W]` and optimises it. A corrupt or
    /// truncated file, or a graph that is not an image encoder, is an error naming the file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|cause| Error::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// An encoder from its bytes; `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
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
        let plan = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .and_then(|m| m.with_input_fact(0, f32::fact([1, 3, height, width]).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| Error::model(path, e))?;
        let out = plan
            .model()
            .output_fact(0)
            .map_err(|e| Error::model(path, e))?;
        let dim = match out.shape.as_concrete() {
            Some([1, d]) => *d,
            other => {
                return Err(Error::model(
                    path,
                    format!("output shape {other:?} is not [1, D]"),
                ))
            }
        };
        Ok(Self {
            plan,
            path: path.to_path_buf(),
            height,
            width,
            dim,
            preprocessing,
        })
    }

    /// Input width and height.
    pub fn input_size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Values in one input tensor (`3 x H x W`).
    pub fn input_len(&self) -> usize {
        3 * self.height * self.width
    }

    /// Embedding size.
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

    /// A session with its own state and preallocated input and output.
    pub fn session(&self) -> Result<Session, InferenceError> {
        let state = self.plan.spawn().map_err(InferenceError::tract)?;
        let input =
            Tensor::zero::<f32>(&[1, 3, self.height, self.width]).map_err(InferenceError::tract)?;
        Ok(Session {
            state,
            input: Arc::new(input),
            embedding: vec![0.0; self.dim],
        })
    }

    /// The optimised plan, for profiling tract's operators (`examples/profile_ops.rs`).
    pub fn plan(&self) -> &Arc<TypedSimplePlan> {
        &self.plan
    }
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
/// buffer allocated once. Only tract's own run allocates.
pub struct Session {
    state: TypedSimpleState,
    input: Arc<Tensor>,
    embedding: Vec<f32>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Session({:?} -> {})",
            self.input.shape(),
            self.embedding.len()
        )
    }
}

impl Session {
    /// Hands the input tensor (`3 x H x W`, as the preprocessing lays it out) to `write`,
    /// which fills it in place; returns what `write` returns.
    pub fn with_input<R>(
        &mut self,
        write: impl FnOnce(&mut [f32]) -> R,
    ) -> Result<R, InferenceError> {
        // tract has released the previous input after its run; if anything still holds it,
        // a fresh tensor is made rather than writing under a reader
        if Arc::get_mut(&mut self.input).is_none() {
            self.input = Arc::new((*self.input).clone());
        }
        let tensor = Arc::get_mut(&mut self.input).ok_or_else(|| {
            InferenceError::Tract("the input tensor is still shared after a copy".into())
        })?;
        let mut view = tensor
            .try_as_plain_ram_mut()
            .map_err(InferenceError::tract)?;
        let slice = view.as_slice_mut::<f32>().map_err(InferenceError::tract)?;
        Ok(write(slice))
    }

    /// The input tensor as last written.
    pub fn input(&self) -> &[f32] {
        self.input
            .try_as_plain_ram()
            .ok()
            .and_then(|v| v.as_slice::<f32>().ok())
            .unwrap_or(&[])
    }

    /// Runs the encoder on the input tensor; the embedding stays in the session.
    pub fn run(&mut self) -> Result<&[f32], InferenceError> {
        let out = self
            .state
            .run(tvec!(TValue::from_const(self.input.clone())))
            .map_err(InferenceError::tract)?;
        let first = out
            .first()
            .ok_or_else(|| InferenceError::Tract("the encoder produced no output".into()))?;
        let view = first.try_as_plain_ram().map_err(InferenceError::tract)?;
        let values = view.as_slice::<f32>().map_err(InferenceError::tract)?;
        if values.len() != self.embedding.len() {
            return Err(InferenceError::OutputSize {
                expected: self.embedding.len(),
                found: values.len(),
            });
        }
        self.embedding.copy_from_slice(values);
        if let Some((index, &value)) = self
            .embedding
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite())
        {
            return Err(InferenceError::NonFinite { index, value });
        }
        Ok(&self.embedding)
    }

    /// Copies `input` into the input tensor and runs the encoder.
    pub fn embed(&mut self, input: &[f32]) -> Result<&[f32], InferenceError> {
        self.with_input(|slot| {
            if slot.len() != input.len() {
                return Err(InferenceError::InputSize {
                    expected: slot.len(),
                    found: input.len(),
                });
            }
            slot.copy_from_slice(input);
            Ok(())
        })??;
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
            self.state
                .run(tvec!(TValue::from_const(self.input.clone())))
                .map_err(InferenceError::tract)?;
            if i >= warmup {
                times.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
        }
        Ok(times)
    }
}
