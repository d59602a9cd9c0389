//! Intermediate activations of a model, for the quantizer's range calibration: the graph's
//! outputs are replaced by the named tensors and each input is run through tract, the same
//! runtime that will run the quantized model.

use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::error::{InferenceError, Result};

/// A model whose outputs are the named intermediate tensors, optimised for `[1, 3, H, W]`.
pub struct ActivationProbe {
    plan: std::sync::Arc<TypedSimplePlan>,
    input: (usize, usize),
}

impl std::fmt::Debug for ActivationProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActivationProbe({:?})", self.input)
    }
}

impl ActivationProbe {
    /// Rewires `model`'s outputs to `names` and optimises it for `height x width` input.
    pub fn new(
        model: &pb::ModelProto,
        names: &[String],
        height: usize,
        width: usize,
    ) -> Result<Self> {
        let mut probe = model.clone();
        let graph = probe.graph.get_or_insert_with(Default::default);
        graph.output = names
            .iter()
            .map(|n| pb::ValueInfoProto {
                name: n.clone(),
                ..Default::default()
            })
            .collect();
        let bytes = probe.encode_to_vec();
        let path = std::path::Path::new("<model being quantized>");
        let plan = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(&bytes))
            .and_then(|m| m.with_input_fact(0, f32::fact([1, 3, height, width]).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| crate::Error::model(path, e))?;
        Ok(Self {
            plan,
            input: (height, width),
        })
    }

    /// Runs one `3 x H x W` input and hands each probed tensor's values to `visit`, in the
    /// order of the names.
    pub fn run(
        &self,
        input: &[f32],
        mut visit: impl FnMut(usize, &[f32]),
    ) -> Result<(), InferenceError> {
        let (h, w) = self.input;
        if input.len() != 3 * h * w {
            return Err(InferenceError::InputSize {
                expected: 3 * h * w,
                found: input.len(),
            });
        }
        let tensor = Tensor::from_shape(&[1, 3, h, w], input).map_err(InferenceError::tract)?;
        let outputs = self
            .plan
            .run(tvec!(tensor.into()))
            .map_err(InferenceError::tract)?;
        for (i, out) in outputs.iter().enumerate() {
            let view = out.try_as_plain_ram().map_err(InferenceError::tract)?;
            visit(i, view.as_slice::<f32>().map_err(InferenceError::tract)?);
        }
        Ok(())
    }
}
