//! Matrices as they are stored in the artifact: shape plus little-endian bytes in base64,
//! which is exact, compact and still plain JSON. Symmetric `f64` matrices (the precision
//! matrices of files before schema 6) keep only their upper triangle (`dtype`
//! `f64-symmetric`), and the `f32` Cholesky factors stored since only their lower one
//! (`f32-lower`): at 1280 dimensions 3.3 MB against 13 MB of doubles in full.

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A row-major matrix of `f32` (centroids, k-NN banks).
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixF32 {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

/// A row-major matrix of `f64` (precision matrices, kept in full precision).
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixF64 {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    rows: usize,
    cols: usize,
    dtype: String,
    /// Little-endian element bytes, standard base64.
    data: String,
}

macro_rules! stored_matrix {
    ($t:ty, $elem:ty, $dtype:literal, $size:literal, $symmetric:literal) => {
        impl $t {
            pub fn new(rows: usize, cols: usize, data: Vec<$elem>) -> Self {
                debug_assert_eq!(data.len(), rows * cols);
                Self { rows, cols, data }
            }

            pub fn row(&self, i: usize) -> &[$elem] {
                &self.data[i * self.cols..(i + 1) * self.cols]
            }

            pub fn all_finite(&self) -> bool {
                self.data.iter().all(|v| v.is_finite())
            }

            /// Square and exactly symmetric (bit for bit, NaN never).
            pub fn is_symmetric(&self) -> bool {
                let n = self.cols;
                self.rows == n
                    && n > 1
                    && (0..n).all(|i| (0..i).all(|j| self.data[i * n + j] == self.data[j * n + i]))
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let symmetric = $symmetric && self.is_symmetric();
                let n = self.cols;
                let bytes: Vec<u8> = if symmetric {
                    (0..n)
                        .flat_map(|i| self.data[i * n + i..(i + 1) * n].iter())
                        .flat_map(|v| v.to_le_bytes())
                        .collect()
                } else {
                    self.data.iter().flat_map(|v| v.to_le_bytes()).collect()
                };
                Stored {
                    rows: self.rows,
                    cols: self.cols,
                    dtype: if symmetric {
                        concat!($dtype, "-symmetric")
                    } else {
                        $dtype
                    }
                    .into(),
                    data: base64::engine::general_purpose::STANDARD.encode(bytes),
                }
                .serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                use serde::de::Error;
                let st = Stored::deserialize(d)?;
                let symmetric = $symmetric && st.dtype == concat!($dtype, "-symmetric");
                if st.dtype != $dtype && !symmetric {
                    return Err(D::Error::custom(format!(
                        "matrix dtype {:?}, expected {:?}",
                        st.dtype, $dtype
                    )));
                }
                if symmetric && st.rows != st.cols {
                    return Err(D::Error::custom(format!(
                        "a symmetric matrix of {}x{}",
                        st.rows, st.cols
                    )));
                }
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(st.data.as_bytes())
                    .map_err(|e| D::Error::custom(format!("matrix data is not base64: {e}")))?;
                let elements = if symmetric {
                    st.rows
                        .checked_add(1)
                        .and_then(|m| m.checked_mul(st.rows))
                        .map(|m| m / 2)
                } else {
                    st.rows.checked_mul(st.cols)
                };
                let want = elements
                    .and_then(|n| n.checked_mul($size))
                    .ok_or_else(|| D::Error::custom("matrix shape overflows"))?;
                if bytes.len() != want {
                    return Err(D::Error::custom(format!(
                        "matrix {}x{} needs {want} bytes, found {}",
                        st.rows,
                        st.cols,
                        bytes.len()
                    )));
                }
                // chunks_exact yields slices of exactly $size bytes: the conversion cannot fail
                #[allow(clippy::expect_used)]
                let values = bytes
                    .chunks_exact($size)
                    .map(|c| <$elem>::from_le_bytes(c.try_into().expect("chunk size")));
                let data = if symmetric {
                    let n = st.rows;
                    let mut full = vec![<$elem>::default(); n * n];
                    let mut upper = values;
                    for i in 0..n {
                        for j in i..n {
                            let v = upper.next().unwrap_or_default();
                            full[i * n + j] = v;
                            full[j * n + i] = v;
                        }
                    }
                    full
                } else {
                    values.collect()
                };
                Ok(Self {
                    rows: st.rows,
                    cols: st.cols,
                    data,
                })
            }
        }
    };
}

stored_matrix!(MatrixF32, f32, "f32", 4, false);
stored_matrix!(MatrixF64, f64, "f64", 8, true);

/// A square lower-triangular `f32` matrix (a Cholesky factor, as the scorer multiplies by
/// it), row-major with zeros above the diagonal in memory; stored as its lower triangle
/// only (`dtype` `f32-lower`): a quarter of the bytes of the `f64` matrix it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LowerF32 {
    pub n: usize,
    pub data: Vec<f32>,
}

impl LowerF32 {
    /// From a full row-major `n x n` matrix; what is above the diagonal is dropped.
    pub fn from_full(n: usize, full: &[f32]) -> Self {
        let mut data = vec![0f32; n * n];
        for i in 0..n {
            data[i * n..i * n + i + 1].copy_from_slice(&full[i * n..i * n + i + 1]);
        }
        Self { n, data }
    }
}

impl Serialize for LowerF32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.n;
        let bytes: Vec<u8> = (0..n)
            .flat_map(|i| self.data[i * n..i * n + i + 1].iter())
            .flat_map(|v| v.to_le_bytes())
            .collect();
        Stored {
            rows: n,
            cols: n,
            dtype: "f32-lower".into(),
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for LowerF32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let st = Stored::deserialize(d)?;
        if st.dtype != "f32-lower" || st.rows != st.cols {
            return Err(D::Error::custom(format!(
                "a {} matrix of {}x{}, expected a square \"f32-lower\" one",
                st.dtype, st.rows, st.cols
            )));
        }
        let n = st.rows;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(st.data.as_bytes())
            .map_err(|e| D::Error::custom(format!("matrix data is not base64: {e}")))?;
        let want = n
            .checked_add(1)
            .and_then(|m| m.checked_mul(n))
            .and_then(|m| (m / 2).checked_mul(4))
            .ok_or_else(|| D::Error::custom("matrix shape overflows"))?;
        if bytes.len() != want {
            return Err(D::Error::custom(format!(
                "lower-triangular {n}x{n} matrix needs {want} bytes, found {}",
                bytes.len()
            )));
        }
        let mut values = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let mut data = vec![0f32; n * n];
        for i in 0..n {
            for v in &mut data[i * n..i * n + i + 1] {
                *v = values.next().unwrap_or_default();
            }
        }
        Ok(Self { n, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_exactly_and_rejects_bad_lengths() {
        let m = MatrixF32::new(2, 2, vec![1.0, -0.1, f32::MIN_POSITIVE, 3.25]);
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<MatrixF32>(&s).unwrap(), m);
        let bad = s.replace("\"rows\":2", "\"rows\":3");
        assert!(serde_json::from_str::<MatrixF32>(&bad).is_err());
        assert!(serde_json::from_str::<MatrixF64>(&s).is_err());
    }

    #[test]
    fn lower_f32_keeps_the_triangle_and_round_trips_exactly() {
        let n = 4;
        let full: Vec<f32> = (0..n * n).map(|i| i as f32 * 0.37 - 1.0).collect();
        let m = LowerF32::from_full(n, &full);
        assert_eq!(m.data[1], 0.0); // above the diagonal
        assert_eq!(m.data[n + 1], full[n + 1]);
        let s = serde_json::to_string(&m).unwrap();
        assert!(s.contains("f32-lower"), "{s}");
        assert_eq!(serde_json::from_str::<LowerF32>(&s).unwrap(), m);
        assert!(serde_json::from_str::<LowerF32>(&s.replace("\"rows\":4", "\"rows\":3")).is_err());
        assert!(serde_json::from_str::<LowerF32>(&s.replace("f32-lower", "f32")).is_err());
    }

    #[test]
    fn symmetric_f64_keeps_half_and_round_trips_exactly() {
        let n = 5;
        let mut data = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                data[i * n + j] = 1.0 / (1.0 + i as f64 + j as f64) + (i == j) as u8 as f64;
            }
        }
        let m = MatrixF64::new(n, n, data.clone());
        let s = serde_json::to_string(&m).unwrap();
        assert!(s.contains("f64-symmetric"), "{s}");
        assert_eq!(serde_json::from_str::<MatrixF64>(&s).unwrap(), m);
        let full = serde_json::to_string(&MatrixF64::new(n, n, {
            let mut d = data.clone();
            d[1] += 1.0; // no longer symmetric: stored in full
            d
        }))
        .unwrap();
        assert!(full.len() > s.len() + 40 && full.contains("\"f64\""));
        // the full form of a symmetric matrix (older files) still reads
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let old = format!(
            r#"{{"rows":5,"cols":5,"dtype":"f64","data":"{}"}}"#,
            base64::engine::general_purpose::STANDARD.encode(bytes)
        );
        assert_eq!(serde_json::from_str::<MatrixF64>(&old).unwrap(), m);
        // a wrong length, a non-square symmetric matrix, symmetric f32: refused
        assert!(serde_json::from_str::<MatrixF64>(&s.replace("\"rows\":5", "\"rows\":4")).is_err());
        let sym32 = serde_json::to_string(&MatrixF32::new(2, 2, vec![1.0, 0.5, 0.5, 1.0]))
            .unwrap()
            .replace("\"f32\"", "\"f32-symmetric\"");
        assert!(serde_json::from_str::<MatrixF32>(&sym32).is_err());
    }
}
