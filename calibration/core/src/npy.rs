//! NumPy `.npy` reading and writing, so embeddings from PyTorch, ONNX or anything else can
//! be calibrated. Written here rather than taken from a crate because every malformed input
//! must become a typed error naming the file and the exact problem, and because labels
//! arrive in whatever integer dtype the producer used.

use std::path::Path;

use crate::embeddings::Embeddings;
use crate::error::{Error, Result};
use crate::io::write_atomic;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Element types found in `.npy` headers that we know how to convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Float,
    Int,
    Uint,
    Bool,
}

#[derive(Debug)]
struct Header {
    kind: Kind,
    size: usize,
    big_endian: bool,
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
    data_offset: usize,
}

/// A parsed `.npy` array: its shape and its elements converted to `f64` or `i64`.
#[derive(Debug)]
struct RawArray {
    header: Header,
    bytes: Vec<u8>,
}

fn bad(path: &Path, problem: impl Into<String>) -> Error {
    Error::Npy {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(path, "missing the \\x93NUMPY magic (not a .npy file)"));
    }
    let major = bytes[6];
    let (len, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad(path, "truncated header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(path, format!("unsupported format version {v}"))),
    };
    let end = start
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad(path, "truncated header"))?;
    let text = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| bad(path, "header is not valid text"))?;
    let descr = dict_value(text, "descr")
        .and_then(|v| strip_quotes(v.trim()))
        .ok_or_else(|| bad(path, "header has no 'descr'"))?;
    let fortran = match dict_value(text, "fortran_order").map(str::trim) {
        Some("False") => false,
        Some("True") => true,
        _ => return Err(bad(path, "header has no valid 'fortran_order'")),
    };
    let shape_text = dict_value(text, "shape")
        .map(str::trim)
        .filter(|s| s.starts_with('(') && s.ends_with(')'))
        .ok_or_else(|| bad(path, "header has no valid 'shape'"))?;
    let mut shape = Vec::new();
    for part in shape_text[1..shape_text.len() - 1].split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        shape.push(
            part.parse::<usize>()
                .map_err(|_| bad(path, format!("bad shape entry {part:?}")))?,
        );
    }
    // the first character, whatever its UTF-8 length (a fuzzed header had a 2-byte one)
    let (endian, rest) = descr.split_at(descr.chars().next().map_or(0, char::len_utf8));
    let big_endian = match endian {
        "<" | "|" | "=" => cfg!(target_endian = "big") && endian == "=",
        ">" => true,
        _ => return Err(bad(path, format!("unsupported dtype {descr:?}"))),
    };
    let (kind, size) = match rest {
        "f4" => (Kind::Float, 4),
        "f8" => (Kind::Float, 8),
        "i1" => (Kind::Int, 1),
        "i2" => (Kind::Int, 2),
        "i4" => (Kind::Int, 4),
        "i8" => (Kind::Int, 8),
        "u1" => (Kind::Uint, 1),
        "u2" => (Kind::Uint, 2),
        "u4" => (Kind::Uint, 4),
        "u8" => (Kind::Uint, 8),
        "b1" => (Kind::Bool, 1),
        _ => (Kind::Bool, 0),
    };
    Ok(Header {
        kind,
        size,
        big_endian,
        descr: descr.to_string(),
        fortran_order: fortran,
        shape,
        data_offset: end,
    })
}

/// Finds `'key': value` in a Python dict literal; the value ends at the next top-level comma.
fn dict_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("'{key}'");
    let at = text.find(&pattern)? + pattern.len();
    let rest = text[at..].trim_start().strip_prefix(':')?;
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

fn strip_quotes(s: &str) -> Option<&str> {
    s.strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
}

fn read_raw(path: &Path) -> Result<RawArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    raw_from_bytes(path, bytes)
}

/// Parses a whole `.npy` file's bytes; `path` only names it in errors.
fn raw_from_bytes(path: &Path, bytes: Vec<u8>) -> Result<RawArray> {
    let header = parse_header(path, &bytes)?;
    if header.size == 0 {
        return Err(bad(
            path,
            format!("unsupported dtype {:?} (numbers only)", header.descr),
        ));
    }
    let count = header
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(path, "shape overflows"))?;
    let need = count
        .checked_mul(header.size)
        .ok_or_else(|| bad(path, "shape overflows"))?;
    let have = bytes.len() - header.data_offset;
    if have < need {
        return Err(bad(
            path,
            format!("truncated: the header promises {need} data bytes, the file holds {have}"),
        ));
    }
    if have > need {
        return Err(bad(
            path,
            format!("{} unexpected bytes after the data", have - need),
        ));
    }
    let data_offset = header.data_offset;
    let mut bytes = bytes;
    bytes.drain(..data_offset);
    Ok(RawArray { header, bytes })
}

impl RawArray {
    fn element_bytes(&self, i: usize) -> [u8; 8] {
        let size = self.header.size;
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(&self.bytes[i * size..(i + 1) * size]);
        if self.header.big_endian {
            b[..size].reverse();
        }
        b
    }

    fn float(&self, i: usize) -> f64 {
        let b = self.element_bytes(i);
        match self.header.size {
            4 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            _ => f64::from_le_bytes(b),
        }
    }

    /// An integer element, or `None` for an unsigned 64-bit value beyond `i64`.
    fn int(&self, i: usize) -> Option<i64> {
        let b = self.element_bytes(i);
        let size = self.header.size;
        Some(match self.header.kind {
            Kind::Int => {
                // sign-extend from `size` bytes
                let shift = 64 - 8 * size as u32;
                (i64::from_le_bytes(b) << shift) >> shift
            }
            _ => {
                let v = u64::from_le_bytes(b);
                i64::try_from(v).ok()?
            }
        })
    }

    fn len(&self) -> usize {
        self.bytes.len() / self.header.size
    }
}

/// Reads an `[n, d]` float array (`f4`, or `f8` converted to `f32`). Rows with NaN or
/// infinite values are refused, naming the row.
pub fn read_embeddings(path: impl AsRef<Path>) -> Result<Embeddings> {
    let path = path.as_ref();
    embeddings_from_raw(path, read_raw(path)?)
}

/// [`read_embeddings`] on a file's bytes already in memory (`name` labels errors).
pub fn parse_embeddings(name: &Path, bytes: Vec<u8>) -> Result<Embeddings> {
    embeddings_from_raw(name, raw_from_bytes(name, bytes)?)
}

fn embeddings_from_raw(path: &Path, raw: RawArray) -> Result<Embeddings> {
    if raw.header.kind != Kind::Float {
        return Err(Error::WrongDtype {
            what: path.display().to_string(),
            expected: "float32 or float64 embeddings",
            found: raw.header.descr.clone(),
        });
    }
    let (rows, dim) = match raw.header.shape[..] {
        [n, d] => (n, d),
        [d] => (1, d),
        _ => {
            return Err(bad(
                path,
                format!(
                    "expected a 2-D array [n, d] of embeddings, found shape {:?}",
                    raw.header.shape
                ),
            ))
        }
    };
    let mut data = vec![0f32; rows * dim];
    for r in 0..rows {
        for c in 0..dim {
            let src = if raw.header.fortran_order {
                c * rows + r
            } else {
                r * dim + c
            };
            data[r * dim + c] = raw.float(src) as f32;
        }
    }
    Embeddings::new(rows, dim, data).map_err(|e| match e {
        Error::NonFinite { row, .. } => Error::NonFinite {
            what: path.display().to_string(),
            row,
        },
        other => other,
    })
}

/// Reads integer class labels `[n]` (or `[n, 1]`) of any integer dtype. Float arrays holding
/// whole numbers are accepted too, since some tools save labels as floats.
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<i64>> {
    let path = path.as_ref();
    labels_from_raw(path, read_raw(path)?)
}

/// [`read_labels`] on a file's bytes already in memory (`name` labels errors).
pub fn parse_labels(name: &Path, bytes: Vec<u8>) -> Result<Vec<i64>> {
    labels_from_raw(name, raw_from_bytes(name, bytes)?)
}

fn labels_from_raw(path: &Path, raw: RawArray) -> Result<Vec<i64>> {
    match raw.header.shape[..] {
        [_] | [_, 1] => {}
        _ => {
            return Err(bad(
                path,
                format!(
                    "expected a 1-D array of labels, found shape {:?}",
                    raw.header.shape
                ),
            ))
        }
    }
    let mut out = Vec::with_capacity(raw.len());
    for i in 0..raw.len() {
        let v = match raw.header.kind {
            Kind::Int | Kind::Uint => raw.int(i),
            Kind::Float => {
                let f = raw.float(i);
                (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
            }
            Kind::Bool => None,
        };
        match v {
            Some(v) => out.push(v),
            None if raw.header.kind == Kind::Bool => {
                return Err(Error::WrongDtype {
                    what: path.display().to_string(),
                    expected: "integer labels",
                    found: raw.header.descr.clone(),
                })
            }
            None => {
                return Err(bad(
                    path,
                    format!("label at row {i} is not a representable whole number"),
                ))
            }
        }
    }
    Ok(out)
}

/// Reads a 1-D float array (e.g. scores written by `oodmon-calibrate score`).
pub fn read_f64_vector(path: impl AsRef<Path>) -> Result<Vec<f64>> {
    let path = path.as_ref();
    let raw = read_raw(path)?;
    if raw.header.kind != Kind::Float || raw.header.shape.len() != 1 {
        return Err(bad(
            path,
            format!(
                "expected a 1-D float array, found {} {:?}",
                raw.header.descr, raw.header.shape
            ),
        ));
    }
    Ok((0..raw.len()).map(|i| raw.float(i)).collect())
}

fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_text = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending in a newline.
    let total = MAGIC.len() + 4 + dict.len() + 1;
    dict.extend(std::iter::repeat_n(' ', (64 - total % 64) % 64));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

fn write_array(path: &Path, descr: &str, shape: &[usize], body: &[u8]) -> Result<()> {
    write_atomic(path, |w| {
        w.write_all(&header_bytes(descr, shape))?;
        w.write_all(body)
    })
}

/// Writes an `[n, d]` little-endian `f4` array, atomically.
pub fn write_embeddings(path: impl AsRef<Path>, embeddings: &Embeddings) -> Result<()> {
    let body: Vec<u8> = embeddings
        .as_slice()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write_array(
        path.as_ref(),
        "<f4",
        &[embeddings.rows(), embeddings.dim()],
        &body,
    )
}

/// Writes a 1-D little-endian `i8` (int64) label array, atomically.
pub fn write_labels(path: impl AsRef<Path>, labels: &[i64]) -> Result<()> {
    let body: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_array(path.as_ref(), "<i8", &[labels.len()], &body)
}

/// Writes a `u1` array of any shape (images: `[n, h, w, 3]`), atomically, for NumPy
/// prototypes and trainers outside Rust.
pub fn write_u8(path: impl AsRef<Path>, shape: &[usize], values: &[u8]) -> Result<()> {
    debug_assert_eq!(shape.iter().product::<usize>(), values.len());
    write_array(path.as_ref(), "|u1", shape, values)
}

/// Writes a 1-D little-endian `f8` array, atomically.
pub fn write_f64_vector(path: impl AsRef<Path>, values: &[f64]) -> Result<()> {
    let body: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_array(path.as_ref(), "<f8", &[values.len()], &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `npy` fuzz target: a dtype whose first character is two bytes long
    /// panicked on a split inside that character.
    #[test]
    fn a_dtype_starting_with_a_multibyte_character_is_an_error() {
        let header = "{'descr': '\u{299}4', 'fortran_order': False, 'shape': (2,), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend([0u8; 8]);
        let err = parse_embeddings(Path::new("x.npy"), bytes.clone()).unwrap_err();
        assert!(err.to_string().contains("unsupported dtype"), "{err}");
        assert!(parse_labels(Path::new("x.npy"), bytes).is_err());
    }

    #[test]
    fn round_trip_embeddings_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let e = Embeddings::new(3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.5, -6.0]).unwrap();
        let p = dir.path().join("e.npy");
        write_embeddings(&p, &e).unwrap();
        let back = read_embeddings(&p).unwrap();
        assert_eq!(back, e);
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(parse_header(&p, &bytes).unwrap().data_offset % 64, 0);
        let l = dir.path().join("l.npy");
        write_labels(&l, &[0, 3, -1]).unwrap();
        assert_eq!(read_labels(&l).unwrap(), vec![0, 3, -1]);
        // images for NumPy: `u1` of any shape, the body as given
        let u = dir.path().join("u.npy");
        let pixels: Vec<u8> = (0..24).collect();
        write_u8(&u, &[2, 2, 2, 3], &pixels).unwrap();
        let bytes = std::fs::read(&u).unwrap();
        let header = parse_header(&u, &bytes).unwrap();
        assert_eq!(header.shape, vec![2, 2, 2, 3]);
        assert_eq!(&bytes[header.data_offset..], &pixels[..]);
    }

    #[test]
    fn reads_big_endian_fortran_and_small_ints() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.npy");
        // shape (2, 3), Fortran order, big-endian f8: column-major values 1..6
        let mut body = Vec::new();
        for v in [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0] {
            body.extend_from_slice(&v.to_be_bytes());
        }
        let mut bytes = header_bytes(">f8", &[2, 3]);
        let pos = bytes.windows(5).position(|w| w == b"False").unwrap();
        bytes.splice(pos..pos + 5, b"True ".iter().copied());
        bytes.extend_from_slice(&body);
        std::fs::write(&p, &bytes).unwrap();
        let e = read_embeddings(&p).unwrap();
        assert_eq!(e.as_slice(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

        let l = dir.path().join("i1.npy");
        let mut bytes = header_bytes("|i1", &[3]);
        bytes.extend_from_slice(&[0u8, 9, 0xff]);
        std::fs::write(&l, &bytes).unwrap();
        assert_eq!(read_labels(&l).unwrap(), vec![0, 9, -1]);
    }

    #[test]
    fn malformed_files_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        std::fs::write(&p, b"hello").unwrap();
        assert!(matches!(read_embeddings(&p), Err(Error::Npy { .. })));

        let e = Embeddings::new(4, 4, vec![0.5; 16]).unwrap();
        write_embeddings(&p, &e).unwrap();
        let full = std::fs::read(&p).unwrap();
        std::fs::write(&p, &full[..full.len() - 3]).unwrap();
        let err = read_embeddings(&p).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");

        write_labels(&p, &[1, 2]).unwrap();
        assert!(matches!(read_embeddings(&p), Err(Error::WrongDtype { .. })));

        let mut nan = [0.0f32; 6];
        nan[4] = f32::NAN;
        let body: Vec<u8> = nan.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_array(&p, "<f4", &[3, 2], &body).unwrap();
        match read_embeddings(&p) {
            Err(Error::NonFinite { row, what }) => {
                assert_eq!(row, 2);
                assert!(what.contains("x.npy"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_embeddings(dir.path().join("missing.npy")),
            Err(Error::Io { .. })
        ));
    }
}
