//! Embedding image data sets through the deployed encoder (tract) with the shared
//! preprocessing: every image goes from its stored size and format straight into the
//! encoder's input tensor, exactly as a camera frame does on the edge.

use crate::datasets::{visit, DataError, DataSpec, Split};
use crate::embeddings::Embeddings;
use crate::error::Result;
use crate::onnx::TractEncoder;
use crate::preprocess::{PixelFormat, PreprocessSpec, Preprocessor};

/// Embeddings, labels and class names of one split of a data set.
pub struct Embedded {
    pub embeddings: Embeddings,
    pub labels: Vec<i64>,
    pub class_names: Vec<String>,
}

/// Embeds up to `limit` images of a split (all when `None`).
pub fn embed_dataset(
    encoder: &TractEncoder,
    spec: &PreprocessSpec,
    data: &DataSpec,
    split: Split,
    limit: Option<usize>,
) -> std::result::Result<Embedded, DataError> {
    let dim = encoder.dim();
    let mut planned: Option<((usize, usize, PixelFormat), Preprocessor)> = None;
    let mut tensor = vec![0f32; 3 * spec.width as usize * spec.height as usize];
    let mut out = vec![0f32; dim];
    let mut values = Vec::new();
    let mut labels = Vec::new();
    let mut sink = |img: &[u8],
                    w: usize,
                    h: usize,
                    format: PixelFormat,
                    label: i64|
     -> std::result::Result<(), DataError> {
        if limit.is_some_and(|l| labels.len() >= l) {
            return Ok(());
        }
        let key = (w, h, format);
        let p = match &mut planned {
            Some((k, p)) if *k == key => p,
            _ => {
                &mut planned
                    .insert((key, Preprocessor::new(spec, w, h, format)?))
                    .1
            }
        };
        p.run(img, None, &mut tensor)?;
        encoder.embed(&tensor, &mut out)?;
        values.extend_from_slice(&out);
        labels.push(label);
        Ok(())
    };
    let class_names = visit(data, split, &mut sink)?;
    let rows = labels.len();
    Ok(Embedded {
        embeddings: Embeddings::new(rows, dim, values).map_err(DataError::from)?,
        labels,
        class_names,
    })
}

/// Preprocesses the images of a split into encoder input tensors (no encoder): the shared
/// entry point that tests compare against the edge's.
pub fn preprocess_dataset(
    spec: &PreprocessSpec,
    data: &DataSpec,
    split: Split,
) -> Result<Vec<f32>, DataError> {
    let mut all = Vec::new();
    let mut tensor = vec![0f32; 3 * spec.width as usize * spec.height as usize];
    let mut sink = |img: &[u8],
                    w: usize,
                    h: usize,
                    format: PixelFormat,
                    _label: i64|
     -> std::result::Result<(), DataError> {
        Preprocessor::new(spec, w, h, format)?.run(img, None, &mut tensor)?;
        all.extend_from_slice(&tensor);
        Ok(())
    };
    visit(data, split, &mut sink)?;
    Ok(all)
}
