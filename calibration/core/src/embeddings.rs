//! A dense row-major matrix of embeddings, the one data type every stage shares.

use crate::error::{Error, Result};

/// `rows` embeddings of dimension `dim`, row-major, all finite.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    rows: usize,
    dim: usize,
    data: Vec<f32>,
}

impl Embeddings {
    /// Takes ownership of row-major data; refuses a wrong length and non-finite values.
    pub fn new(rows: usize, dim: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != rows * dim {
            return Err(Error::param(
                "embeddings",
                format!("{} values cannot form {rows} rows of {dim}", data.len()),
            ));
        }
        if let Some(bad) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "embeddings".into(),
                row: bad / dim.max(1),
            });
        }
        Ok(Self { rows, dim, data })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    pub fn iter_rows(&self) -> impl ExactSizeIterator<Item = &[f32]> + '_ {
        self.data.chunks_exact(self.dim.max(1)).take(self.rows)
    }

    /// The rows whose indices are given, in that order.
    pub fn select(&self, indices: &[usize]) -> Self {
        let mut data = Vec::with_capacity(indices.len() * self.dim);
        for &i in indices {
            data.extend_from_slice(self.row(i));
        }
        Self {
            rows: indices.len(),
            dim: self.dim,
            data,
        }
    }

    /// Each row scaled to unit L2 norm (a zero row stays zero).
    pub fn l2_normalized(&self) -> Self {
        let mut data = self.data.clone();
        for row in data.chunks_exact_mut(self.dim.max(1)) {
            normalize_in_place(row);
        }
        Self {
            rows: self.rows,
            dim: self.dim,
            data,
        }
    }
}

/// Scales a vector to unit L2 norm in place (norm computed in f64); a zero vector stays zero.
pub fn normalize_in_place(row: &mut [f32]) {
    let norm = crate::linalg::norm2(row).sqrt();
    if norm > 0.0 {
        let inv = (1.0 / norm) as f32;
        for v in row {
            *v *= inv;
        }
    }
}
