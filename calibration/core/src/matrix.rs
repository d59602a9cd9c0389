//! Matrices as they are stored in the artifact: shape plus little-endian bytes in base64,
//! which is exact, compact and still plain JSON. Symmetric `f64` matrices (the precision
//! matrices of files before schema 6) keep only their upper triangle (`dtype`
//! `f64-symmetric`), and the `f32` Cholesky factors stored since only their lower one
//! (`f32-lower`): at 1280 dimensions 3.3 MB against 13 MB of doubles in full, and since
//! schema 11 that triangle byte-shuffled and zlib-compressed (`f32-lower-shuffle-zlib`,
//! 2.8 MB).

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
/// only, a quarter of the bytes of the `f64` matrix it came from, and since schema 11
/// compressed (`dtype` `f32-lower-shuffle-zlib`, see [`LOWER_SHUFFLE_ZLIB`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LowerF32 {
    pub n: usize,
    pub data: Vec<f32>,
}

/// The lower triangle's little-endian bytes as they are (schemas 6 to 10; still read).
const LOWER_RAW: &str = "f32-lower";
/// The lower triangle's little-endian bytes regrouped by significance (every value's first
/// byte, then every second byte, ...: HDF5's and Blosc's "shuffle") and then zlib-compressed,
/// so that the runs of alike exponent bytes compress: exact, with zlib's Adler-32 over the
/// bytes, and at 1280 dimensions 2.8 MB instead of 3.3 MB (calib.json 3.9 MiB instead of
/// 4.5). The mantissa bytes of a Cholesky factor are noise and do not compress.
pub const LOWER_SHUFFLE_ZLIB: &str = "f32-lower-shuffle-zlib";

impl LowerF32 {
    /// From a full row-major `n x n` matrix; what is above the diagonal is dropped.
    pub fn from_full(n: usize, full: &[f32]) -> Self {
        let mut data = vec![0f32; n * n];
        for i in 0..n {
            data[i * n..i * n + i + 1].copy_from_slice(&full[i * n..i * n + i + 1]);
        }
        Self { n, data }
    }

    fn triangle(&self) -> impl Iterator<Item = f32> + '_ {
        let n = self.n;
        (0..n).flat_map(move |i| self.data[i * n..i * n + i + 1].iter().copied())
    }
}

/// The widest whitening factor a file may hold. Embeddings are 128 to 4096 wide (1280 for
/// EfficientNet-Lite); the bound keeps a small hostile file (deflate inflates zeros 1000-fold)
/// from making the loader allocate gigabytes before the factor is checked against the
/// embedding, and `n * n` floats within a 32-bit target's address space.
pub const MAX_FACTOR_DIM: usize = 8192;

/// Regroups 4-byte values by significance: every value's byte 0, then every byte 1, ...
fn shuffle4(bytes: &[u8]) -> Vec<u8> {
    let count = bytes.len() / 4;
    let mut out = vec![0u8; bytes.len()];
    for (i, value) in bytes.chunks_exact(4).enumerate() {
        for (k, &b) in value.iter().enumerate() {
            out[k * count + i] = b;
        }
    }
    out
}

/// The inverse of [`shuffle4`].
fn unshuffle4(planes: &[u8]) -> Vec<u8> {
    let count = planes.len() / 4;
    (0..count)
        .flat_map(|i| (0..4).map(move |k| planes[k * count + i]))
        .collect()
}

/// Bytes of a lower triangle of `n x n` `f32`s, or `None` above [`MAX_FACTOR_DIM`].
fn lower_bytes(n: usize) -> Option<usize> {
    (n <= MAX_FACTOR_DIM).then(|| n * (n + 1) / 2 * 4)
}

impl Serialize for LowerF32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        use std::io::Write;
        let raw: Vec<u8> = self.triangle().flat_map(f32::to_le_bytes).collect();
        let shuffled = shuffle4(&raw);
        let mut z = flate2::write::ZlibEncoder::new(
            Vec::with_capacity(shuffled.len() / 2),
            flate2::Compression::default(),
        );
        let compressed = z
            .write_all(&shuffled)
            .and_then(|()| z.finish())
            .map_err(|e| S::Error::custom(format!("compressing a matrix: {e}")))?;
        Stored {
            rows: self.n,
            cols: self.n,
            dtype: LOWER_SHUFFLE_ZLIB.into(),
            data: base64::engine::general_purpose::STANDARD.encode(compressed),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for LowerF32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use std::io::Read;
        let st = Stored::deserialize(d)?;
        let shuffled = st.dtype == LOWER_SHUFFLE_ZLIB;
        if !(shuffled || st.dtype == LOWER_RAW) || st.rows != st.cols {
            return Err(D::Error::custom(format!(
                "a whitening factor stored as a {} matrix of {}x{}, expected a square {LOWER_SHUFFLE_ZLIB:?} or {LOWER_RAW:?} one",
                st.dtype, st.rows, st.cols
            )));
        }
        let n = st.rows;
        let want = lower_bytes(n).ok_or_else(|| {
            D::Error::custom(format!(
                "a whitening factor of {n}x{n}: wider than the {MAX_FACTOR_DIM} dimensions supported"
            ))
        })?;
        let stored = base64::engine::general_purpose::STANDARD
            .decode(st.data.as_bytes())
            .map_err(|e| D::Error::custom(format!("whitening factor data is not base64: {e}")))?;
        let bytes = if shuffled {
            // Read at most one byte more than the shape needs, so that a corrupt or hostile
            // stream cannot inflate without bound; zlib checks its Adler-32 at the end.
            let mut out = Vec::with_capacity(want.min(stored.len().saturating_mul(4)));
            let mut z = flate2::read::ZlibDecoder::new(stored.as_slice());
            (&mut z)
                .take(want as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    D::Error::custom(format!("whitening factor data does not inflate: {e}"))
                })?;
            // one encoding per factor: nothing may follow the end of the stream
            if out.len() == want && z.total_in() != stored.len() as u64 {
                return Err(D::Error::custom(format!(
                    "whitening factor data: {} bytes after the end of the compressed stream",
                    stored.len() as u64 - z.total_in()
                )));
            }
            out
        } else {
            stored
        };
        if bytes.len() != want {
            let found = if bytes.len() > want {
                "more".to_string()
            } else {
                bytes.len().to_string()
            };
            return Err(D::Error::custom(format!(
                "a lower-triangular {n}x{n} whitening factor needs {want} bytes, found {found}"
            )));
        }
        let bytes = if shuffled { unshuffle4(&bytes) } else { bytes };
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
        assert!(s.contains(LOWER_SHUFFLE_ZLIB), "{s}");
        assert_eq!(serde_json::from_str::<LowerF32>(&s).unwrap(), m);
        assert!(serde_json::from_str::<LowerF32>(&s.replace("\"rows\":4", "\"rows\":3")).is_err());
        assert!(serde_json::from_str::<LowerF32>(&s.replace(LOWER_SHUFFLE_ZLIB, "f32")).is_err());
    }

    /// A stored `n x n` factor of `dtype` whose payload is `bytes` (already encoded).
    fn stored(n: usize, dtype: &str, bytes: &[u8]) -> String {
        format!(
            r#"{{"rows":{n},"cols":{n},"dtype":"{dtype}","data":"{}"}}"#,
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    fn zlib(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(bytes).unwrap();
        z.finish().unwrap()
    }

    #[test]
    fn lower_f32_compressed_is_bit_exact_reads_the_raw_form_and_refuses_corruption() {
        // every bit pattern a factor can hold, subnormals and signed zeros included
        let n = 37;
        let mut state = 0x9e37_79b9_u32;
        let full: Vec<f32> = (0..n * n)
            .map(|i| match i % 7 {
                0 => -0.0,
                1 => f32::from_bits(1 + i as u32), // subnormal
                _ => {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    (state as f32 / u32::MAX as f32 - 0.5) * 3.0
                }
            })
            .collect();
        let m = LowerF32::from_full(n, &full);
        let s = serde_json::to_string(&m).unwrap();
        let back = serde_json::from_str::<LowerF32>(&s).unwrap();
        let bits = |m: &LowerF32| m.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&m));

        // the uncompressed triangle of schemas 6-10 reads to the same matrix
        let raw: Vec<u8> = m.triangle().flat_map(|v| v.to_le_bytes()).collect();
        let old = serde_json::from_str::<LowerF32>(&stored(n, LOWER_RAW, &raw)).unwrap();
        assert_eq!(bits(&old), bits(&m));

        // a flipped byte in zlib's Adler-32 (the last four bytes) or in the stream itself
        let st: Stored = serde_json::from_str(&s).unwrap();
        let z = base64::engine::general_purpose::STANDARD
            .decode(st.data)
            .unwrap();
        let flipped = |at: usize| {
            let mut z = z.clone();
            z[at] ^= 0x40;
            serde_json::from_str::<LowerF32>(&stored(n, LOWER_SHUFFLE_ZLIB, &z))
        };
        let err = flipped(z.len() - 2).unwrap_err().to_string();
        assert!(err.contains("does not inflate"), "{err}");
        assert!(flipped(z.len() / 2).is_err());

        // a stream that inflates to more than the shape holds (a bomb) or to less: refused
        let bomb = zlib(&vec![0u8; 1 << 20]);
        let err = serde_json::from_str::<LowerF32>(&stored(n, LOWER_SHUFFLE_ZLIB, &bomb))
            .unwrap_err()
            .to_string();
        assert!(err.contains("found more"), "{err}");
        let short = zlib(&raw[..raw.len() - 4]);
        let err = serde_json::from_str::<LowerF32>(&stored(n, LOWER_SHUFFLE_ZLIB, &short))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("found {}", raw.len() - 4)), "{err}");
        // bytes after the end of a good stream
        let mut trailing = z.clone();
        trailing.extend_from_slice(b"junk");
        let err = serde_json::from_str::<LowerF32>(&stored(n, LOWER_SHUFFLE_ZLIB, &trailing))
            .unwrap_err()
            .to_string();
        assert!(err.contains("4 bytes after the end"), "{err}");
        // a shape wider than any embedding, however small the file: refused before inflating
        let wide = MAX_FACTOR_DIM + 1;
        let err = serde_json::from_str::<LowerF32>(&stored(wide, LOWER_SHUFFLE_ZLIB, &bomb))
            .unwrap_err()
            .to_string();
        assert!(err.contains("wider than the 8192"), "{err}");
        // bytes that are not zlib at all
        assert!(serde_json::from_str::<LowerF32>(&stored(n, LOWER_SHUFFLE_ZLIB, &raw)).is_err());
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
