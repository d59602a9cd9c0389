//! Reading and checking what the commands are given: embeddings and labels that must
//! agree in size, named OOD sets, preprocessing specs, class names, input checksums.

use std::path::{Path, PathBuf};

use oodmon_calibration::artifact::InputChecksum;
use oodmon_calibration::io::sha256_file;
use oodmon_calibration::{npy, CalibrationArtifact, Embeddings, PreprocessSpec};
use oodmon_data::Split;
use oodmon_runtime::Encoder;

use crate::error::{Error, Result};

pub fn load_embeddings(path: &Path) -> Result<Embeddings> {
    Ok(npy::read_embeddings(path)?)
}

/// Labels that must number `rows`, the rows of the embeddings in `of`.
pub fn load_labels(path: &Path, rows: usize, of: &Path) -> Result<Vec<i64>> {
    let labels = npy::read_labels(path)?;
    if labels.len() != rows {
        return Err(Error::input(format!(
            "{}: {} labels but {} has {rows} embeddings",
            path.display(),
            labels.len(),
            of.display()
        )));
    }
    Ok(labels)
}

/// Embeddings `e` (from `path`) must have dimension `dim`, the dimension of `of`.
pub fn same_dim(path: &Path, e: &Embeddings, dim: usize, of: &str) -> Result<()> {
    if e.dim() != dim {
        return Err(Error::input(format!(
            "{}: embeddings have dimension {}, but {of} has {dim}",
            path.display(),
            e.dim()
        )));
    }
    Ok(())
}

/// `FILE` or `NAME=FILE` sets of embeddings, each non-empty and of dimension `dim`.
pub fn named_sets(specs: &[String], dim: usize, of: &str) -> Result<Vec<(String, Embeddings)>> {
    specs
        .iter()
        .map(|spec| {
            let (name, path) = match spec.split_once('=') {
                Some((n, p)) if !n.is_empty() => (n.to_string(), PathBuf::from(p)),
                _ => {
                    let p = PathBuf::from(spec);
                    let stem = p
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| spec.clone());
                    (stem, p)
                }
            };
            let e = load_embeddings(&path)?;
            same_dim(&path, &e, dim, of)?;
            if e.is_empty() {
                return Err(Error::input(format!("{}: no embeddings", path.display())));
            }
            Ok((name, e))
        })
        .collect()
}

/// A calibration artifact, its errors naming the file.
pub fn load_artifact(path: &Path) -> Result<CalibrationArtifact> {
    CalibrationArtifact::load(path).map_err(|e| Error::from(e).context(path.display().to_string()))
}

/// One line per class name, in label order (blank lines skipped).
pub fn class_names(path: &Path) -> Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)
        .map_err(|e| Error::io(path, e))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// The preprocessing spec a calibration records: the JSON file given, checked, or else
/// the one in the encoder's metadata.
pub fn preprocessing_spec(
    file: Option<&Path>,
    encoder: Option<&Encoder>,
) -> Result<Option<PreprocessSpec>> {
    match file {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            let spec: PreprocessSpec = serde_json::from_str(&text).map_err(|e| {
                Error::input(format!("{}: not a preprocessing spec: {e}", p.display()))
            })?;
            spec.validate()
                .map_err(|e| Error::from(e).context(p.display().to_string()))?;
            Ok(Some(spec))
        }
        None => Ok(encoder.and_then(|e| e.preprocessing().cloned())),
    }
}

/// A file's role, path and SHA-256, for an artifact's provenance.
pub fn checksum(role: &str, path: &Path) -> Result<InputChecksum> {
    Ok(InputChecksum {
        role: role.into(),
        path: path.display().to_string(),
        sha256: sha256_file(path)?,
    })
}

/// `train` or `test`.
pub fn parse_split(s: &str) -> Result<Split> {
    match s {
        "train" => Ok(Split::Train),
        "test" => Ok(Split::Test),
        other => Err(Error::input(format!(
            "split {other:?}: expected train or test"
        ))),
    }
}

/// A comma-separated list, each item parsed by `parse`.
pub fn parse_list<T>(
    text: &str,
    parse: impl Fn(&str) -> oodmon_calibration::Result<T>,
) -> Result<Vec<T>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Ok(parse(s)?))
        .collect()
}
