//! Embedding image data sets through the deployed encoder (tract) with the shared
//! preprocessing: every image goes from its stored size and format straight into the
//! encoder's input tensor, exactly as a camera frame does on the edge.

use crate::datasets::{visit, DataError, DataSpec, Split};
use crate::embeddings::Embeddings;
use crate::onnx::TractEncoder;
use crate::preprocess::{PixelFormat, PreprocessSpec, Preprocessor};

/// Embeddings, labels and class names of one split of a data set.
pub struct Embedded {
    pub embeddings: Embeddings,
    pub labels: Vec<i64>,
    pub class_names: Vec<String>,
}

/// Hands each image of a split to `f` as the encoder's input tensor (`3 x H x W`, laid out
/// as the spec says), computed by the shared [`Preprocessor`] straight from the stored
/// image, exactly as a camera frame is on the edge; stops after `limit` images.
pub fn for_each_input(
    spec: &PreprocessSpec,
    data: &DataSpec,
    split: Split,
    limit: Option<usize>,
    mut f: impl FnMut(&[f32], i64) -> std::result::Result<(), DataError>,
) -> std::result::Result<Vec<String>, DataError> {
    let mut planned: Option<((usize, usize, PixelFormat), Preprocessor)> = None;
    let mut tensor = vec![0f32; 3 * spec.width as usize * spec.height as usize];
    let mut seen = 0usize;
    let mut sink = |img: &[u8], w: usize, h: usize, format: PixelFormat, label: i64| {
        if limit.is_some_and(|l| seen >= l) {
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
        seen += 1;
        f(&tensor, label)
    };
    visit(data, split, &mut sink)
}

/// Embeds up to `limit` images of a split (all when `None`) through the encoder.
pub fn embed_dataset(
    encoder: &TractEncoder,
    spec: &PreprocessSpec,
    data: &DataSpec,
    split: Split,
    limit: Option<usize>,
) -> std::result::Result<Embedded, DataError> {
    let dim = encoder.dim();
    let mut out = vec![0f32; dim];
    let mut values = Vec::new();
    let mut labels = Vec::new();
    let class_names = for_each_input(spec, data, split, limit, |tensor, label| {
        encoder.embed(tensor, &mut out)?;
        values.extend_from_slice(&out);
        labels.push(label);
        Ok(())
    })?;
    let rows = labels.len();
    Ok(Embedded {
        embeddings: Embeddings::new(rows, dim, values).map_err(DataError::from)?,
        labels,
        class_names,
    })
}
