//! Dense kernels: blocked f32 matrix products through `matrixmultiply` (the GEMM that
//! nalgebra itself uses), and the f64 helpers that make final scores exact. The one
//! module of the core with `unsafe`: matrixmultiply's raw-pointer GEMM.
#![allow(unsafe_code)]

/// Rows processed together; large enough for GEMM efficiency, small enough for cache.
pub(crate) const BLOCK_ROWS: usize = 256;

/// `out[i * k + j] = a_i · b_j` for `m` rows `a` and `k` rows `b`, all of length `d`.
pub(crate) fn dots(a: &[f32], m: usize, b: &[f32], k: usize, d: usize, out: &mut [f32]) {
    debug_assert!(a.len() >= m * d && b.len() >= k * d && out.len() >= m * k);
    if m == 0 || k == 0 {
        return;
    }
    if d == 0 {
        out[..m * k].fill(0.0);
        return;
    }
    if m == 1 {
        // one query (the edge's per-frame case): a plain GEMV, because sgemm allocates its
        // packing buffers on every call
        for (o, row) in out[..k].iter_mut().zip(b.chunks_exact(d)) {
            *o = dot8_f32(&a[..d], row);
        }
        return;
    }
    // SAFETY: the slices hold at least m*d, k*d and m*k elements (checked above in debug,
    // guaranteed by every caller), and the strides describe exactly those row-major layouts.
    unsafe {
        matrixmultiply::sgemm(
            m,
            d,
            k,
            1.0,
            a.as_ptr(),
            d as isize,
            1,
            b.as_ptr(),
            1,
            d as isize,
            0.0,
            out.as_mut_ptr(),
            k as isize,
            1,
        );
    }
}

/// `out = a · t` for `m` rows `a` of length `d` and a row-major `d x e` matrix `t`.
pub(crate) fn matmul(a: &[f32], m: usize, t: &[f32], d: usize, e: usize, out: &mut [f32]) {
    debug_assert!(a.len() >= m * d && t.len() >= d * e && out.len() >= m * e);
    if m == 0 || e == 0 {
        return;
    }
    if m == 1 {
        // as in `dots`: no per-call allocation for a single row
        let out = &mut out[..e];
        out.fill(0.0);
        for (&av, trow) in a[..d].iter().zip(t.chunks_exact(e)) {
            for (o, &tv) in out.iter_mut().zip(trow) {
                *o += av * tv;
            }
        }
        return;
    }
    // SAFETY: as in `dots`; `t` is d x e row-major.
    unsafe {
        matrixmultiply::sgemm(
            m,
            d,
            e,
            1.0,
            a.as_ptr(),
            d as isize,
            1,
            t.as_ptr(),
            e as isize,
            1,
            0.0,
            out.as_mut_ptr(),
            e as isize,
            1,
        );
    }
}

/// [`matmul`] with a square lower-triangular `t` (`d x d`, a Cholesky factor): one row
/// skips the zeros above the diagonal, half the matrix and half the memory traffic of the
/// per-frame product, with the same values (the skipped terms add exact zeros).
pub(crate) fn matmul_lower(a: &[f32], m: usize, t: &[f32], d: usize, out: &mut [f32]) {
    debug_assert!(a.len() >= m * d && t.len() >= d * d && out.len() >= m * d);
    if m != 1 {
        return matmul(a, m, t, d, d, out);
    }
    row_times_lower(a, t, d, out);
}

/// One row of [`matmul_lower`], compiled for AVX2 too (a separate multiply and add per
/// term either way: the same values at any vector width).
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn row_times_lower(a: &[f32], t: &[f32], d: usize, out: &mut [f32]) {
    let out = &mut out[..d];
    out.fill(0.0);
    for (i, (&av, trow)) in a[..d].iter().zip(t.chunks_exact(d)).enumerate() {
        for (o, &tv) in out[..=i].iter_mut().zip(&trow[..=i]) {
            *o += av * tv;
        }
    }
}

/// f32 dot product with eight independent accumulators.
#[inline]
pub(crate) fn dot8_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0f32; 8];
    let (ca, cb) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

/// Sums `f(a_i, b_i)` in f64 with eight independent accumulators, so that the loop
/// vectorises (a single f64 accumulator serialises on the add latency).
#[inline]
fn sum8(a: &[f32], b: &[f32], f: impl Fn(f64, f64) -> f64) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f64; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += f(x[l] as f64, y[l] as f64);
        }
    }
    let mut tail = 0f64;
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += f(x as f64, y as f64);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Squared L2 norm in f64.
#[inline]
pub(crate) fn norm2(x: &[f32]) -> f64 {
    sum8(x, x, |a, _| a * a)
}

/// Exact squared Euclidean distance in f64.
#[inline]
pub(crate) fn dist2(x: &[f32], c: &[f32]) -> f64 {
    sum8(x, c, |a, b| (a - b) * (a - b))
}

/// Dot product in f64.
#[inline]
pub(crate) fn dot64(x: &[f32], c: &[f32]) -> f64 {
    sum8(x, c, |a, b| a * b)
}

/// `row[j] = offset[j] - 2 row[j]` (turning dot products into squared distances up to a
/// per-row constant), returning the minimum and its first index. Written as two plain
/// passes so that both vectorise.
#[inline]
pub(crate) fn to_distances_argmin(row: &mut [f32], offset: &[f32]) -> (usize, f32) {
    for (v, &o) in row.iter_mut().zip(offset) {
        *v = o - 2.0 * *v;
    }
    let min = row.iter().copied().fold(f32::INFINITY, f32::min);
    let index = row.iter().position(|&v| v == min).unwrap_or(0);
    (index, min)
}

/// Relative error bound of an f32 dot product of length `d`, used to decide which
/// approximate candidates must be recomputed exactly.
#[inline]
pub(crate) fn dot_error_bound(d: usize) -> f64 {
    2.0 * (d.max(1) as f64) * f32::EPSILON as f64
}

/// `cov += X^T X` for the `m x d` row-major `x` into the `d x d` row-major `cov`.
pub(crate) fn add_gram(x: &[f64], m: usize, d: usize, cov: &mut [f64]) {
    assert!(
        x.len() >= m * d && cov.len() >= d * d,
        "add_gram: slices too short"
    );
    if m == 0 || d == 0 {
        return;
    }
    // SAFETY: `x` holds m x d values and `cov` d x d (asserted above); the strides describe
    // those row-major layouts.
    unsafe {
        matrixmultiply::dgemm(
            d,
            m,
            d,
            1.0,
            x.as_ptr(),
            1,
            d as isize,
            x.as_ptr(),
            d as isize,
            1,
            1.0,
            cov.as_mut_ptr(),
            d as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_times_a_lower_triangle_skips_only_zeros() {
        let d = 37;
        let t: Vec<f32> = (0..d * d)
            .map(|i| {
                let (r, c) = (i / d, i % d);
                if c <= r {
                    ((i * 7919) % 101) as f32 / 37.0 - 1.3
                } else {
                    0.0
                }
            })
            .collect();
        let a: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mut full, mut lower) = (vec![0f32; d], vec![1f32; d]);
        matmul(&a, 1, &t, d, d, &mut full);
        matmul_lower(&a, 1, &t, d, &mut lower);
        assert_eq!(full, lower);
        // more rows take the GEMM
        let a2: Vec<f32> = a.iter().chain(&a).copied().collect();
        let (mut full2, mut lower2) = (vec![0f32; 2 * d], vec![0f32; 2 * d]);
        matmul(&a2, 2, &t, d, d, &mut full2);
        matmul_lower(&a2, 2, &t, d, &mut lower2);
        assert_eq!(full2, lower2);
    }

    #[test]
    fn dots_and_matmul_match_naive() {
        let a: Vec<f32> = (0..12).map(|v| v as f32 * 0.5 - 2.0).collect(); // 3 x 4
        let b: Vec<f32> = (0..8).map(|v| 1.0 - v as f32 * 0.25).collect(); // 2 x 4
        let mut out = vec![0.0; 6];
        dots(&a, 3, &b, 2, 4, &mut out);
        for i in 0..3 {
            for j in 0..2 {
                let want = dot64(&a[i * 4..i * 4 + 4], &b[j * 4..j * 4 + 4]);
                assert!((out[i * 2 + j] as f64 - want).abs() < 1e-5);
            }
        }
        let t: Vec<f32> = (0..8).map(|v| v as f32).collect(); // 4 x 2
        let mut z = vec![0.0; 6];
        matmul(&a, 3, &t, 4, 2, &mut z);
        for i in 0..3 {
            for j in 0..2 {
                let want: f32 = (0..4).map(|p| a[i * 4 + p] * t[p * 2 + j]).sum();
                assert!((z[i * 2 + j] - want).abs() < 1e-4);
            }
        }
    }
}
