//! Matrices as they are stored in the artifact: shape plus little-endian bytes in base64,
//! which is exact, compact and still plain JSON.

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
    ($t:ty, $elem:ty, $dtype:literal, $size:literal) => {
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
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let bytes: Vec<u8> = self.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                Stored {
                    rows: self.rows,
                    cols: self.cols,
                    dtype: $dtype.into(),
                    data: base64::engine::general_purpose::STANDARD.encode(bytes),
                }
                .serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                use serde::de::Error;
                let st = Stored::deserialize(d)?;
                if st.dtype != $dtype {
                    return Err(D::Error::custom(format!(
                        "matrix dtype {:?}, expected {:?}",
                        st.dtype, $dtype
                    )));
                }
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(st.data.as_bytes())
                    .map_err(|e| D::Error::custom(format!("matrix data is not base64: {e}")))?;
                let want = st
                    .rows
                    .checked_mul(st.cols)
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
                let data = bytes
                    .chunks_exact($size)
                    .map(|c| <$elem>::from_le_bytes(c.try_into().expect("chunk size")))
                    .collect();
                Ok(Self {
                    rows: st.rows,
                    cols: st.cols,
                    data,
                })
            }
        }
    };
}

stored_matrix!(MatrixF32, f32, "f32", 4);
stored_matrix!(MatrixF64, f64, "f64", 8);

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
}
