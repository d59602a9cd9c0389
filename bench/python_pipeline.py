"""The pipeline a user would write in Python: the peer of `oodmon-edge bench` (issue 16).
Same frames, same bundle (encoder and calibration), one thread; OpenCV decodes and
resizes, onnxruntime runs the encoder, NumPy scores.

Usage: python_pipeline.py BUNDLE_DIR SOURCE FRAMES [--threads N] [--warmup N]
           [--resize opencv|exact] [--graph-opt all|extended|basic|disable] [--records FILE]

BUNDLE_DIR holds encoder.onnx and calib.json (as edge/demo/bundle/). SOURCE is
  avi:FILE   an MJPEG AVI: its RIFF chunks are walked here (the first video stream's
             ##dc / ##db chunks in the movi list, as edge/src/source/avi.rs does), one
             chunk read from the file per frame, looping at the end of the file;
  yuyv:WxH   synthetic YUYV 4:2:2 camera frames, the moving gradient of oodmon's
             `demo::synthetic_yuyv` (edge/src/app/demo.rs), byte for byte, made per frame.
FRAMES frames are timed after --warmup (20, as oodmon-edge bench) untimed ones, the source
looping as needed. Prints one JSON object: frames/s over the timed loop (source reads
included, as oodmon's), p50/p99 per stage and of the sum of the stages per frame (us,
oodmon's nearest-rank percentiles), the number of frames flagged OOD, the scores of the
first 24 timed frames (after the warm-up: the AVI's frames 20-43 for the demo) and the
process's peak RSS. --records FILE also writes one JSON line per timed
frame (sequence, index in the AVI, score, nearest cluster, p-value, threshold, decision),
for comparing decisions with `oodmon-edge run --records`.

Stages, each timed with time.perf_counter_ns:
- decode: cv2.imdecode of the JPEG to BGR; for YUYV, cv2.cvtColor(COLOR_YUV2RGB_YUYV) of
  the whole frame (BT.601 limited range, the conversion oodmon uses).
- preprocess: calib.json's `preprocessing`: centre crop of the shorter side (the largest
  centred region with the input's aspect ratio), resize, channel order,
  (x / 255 - mean) / std, NCHW float32. With `detail_size` D the frame first becomes D x D
  bytes (same resize policy) and only then the input size, as oodmon's Preprocessor does.
- inference: onnxruntime InferenceSession, CPUExecutionProvider, intra_op_num_threads =
  --threads (1), inter_op 1, ORT_ENABLE_ALL (--graph-opt picks another level, to study
  the int8 difference below); the first output is the embedding.
- scoring: the calibration's metric in NumPy, oodmon's formulas
  (calibration/core/src/model.rs): euclidean, cosine, mahalanobis (tied or per cluster),
  mahalanobis++, relative Mahalanobis and k-NN; the minimum over clusters; then the
  decision of calib.json's threshold mode (global, per-cluster, conformal) and the
  split-conformal p-value, as oodmon's record carries it.
NumPy's BLAS and OpenCV are held to one thread; --threads only sets onnxruntime's.

How it differs from oodmon:
- Resizing (default --resize opencv): oodmon resamples with an antialiased triangle
  (bilinear) filter whose support widens with the reduction (as Pillow's BILINEAR), at
  fractional crop offsets, reading straight from the frame (YUYV included: it averages
  Y, U, V and converts only the output pixels). Here the crop is whole pixels and the
  resize is cv2.INTER_AREA when reducing (a box filter: the antialiasing OpenCV offers,
  sharper than the triangle) and cv2.INTER_LINEAR when enlarging (equal to oodmon's
  filter there: both sample at pixel centres, clamped at the edges). Without a detail
  stage the resize also runs on bytes, so its result is rounded, which oodmon's is not.
  --resize exact replaces the resize by oodmon's own filter weights (dense NumPy
  matrices, planned once per geometry): a check that the remaining differences are not
  the filter's, far too slow (whole frame in float) to time.
- YUYV: converted to RGB at full resolution before resizing (rounded to bytes per pixel;
  oodmon converts only its resampled output, which makes its decode stage free).
- JPEG: always decoded at full size; oodmon decodes frames far larger than the input at
  1/4 or 1/8 scale from the DCT (edge/src/source/decode.rs). The demo's 320x240 frames
  are decoded at full size by both. The JPEG decoders differ (libjpeg-turbo in OpenCV,
  zune-jpeg in oodmon): pixel values may differ by a level or two.
- Inference: onnxruntime instead of tract. For an int8 QDQ encoder (the demo bundle's)
  this is the largest difference: from ORT_ENABLE_EXTENDED up, onnxruntime fuses the
  QuantizeLinear/DequantizeLinear pairs into integer QLinearConv kernels, whose
  embeddings differ from tract's far more than rounding does (on the demo scenario by
  27% of the embedding's norm at the median), while with ORT_DISABLE_ALL half of the
  demo's embeddings equal tract's bit for bit (the others differ where one rounding to
  int8 falls the other way). The calibration was fitted on tract's embeddings, so
  scores and decisions move with the fused kernels.
- Scoring: the Mahalanobis kinds whiten with the Cholesky factor of the precision as
  oodmon does ((x - c)^T P (x - c) = ||(x - c)^T L||^2), in float32 with float64 sums,
  without oodmon's exact float64 recomputation of the nearest candidates; the same score
  up to rounding.
"""
import argparse
import base64
import json
import math
import os
import resource
import struct
import sys
import time
import zlib
from pathlib import Path

# one thread for NumPy's BLAS (set before NumPy loads it): the comparison is on one core
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

cv2.setNumThreads(1)


# --- frame sources ----------------------------------------------------------------------

class AviFrames:
    """MJPEG frames of an AVI file: the headers once, then one frame chunk per call,
    from the start of the movi list again at the end of the file."""

    def __init__(self, path):
        self.file = open(path, "rb")
        self.size = os.path.getsize(path)
        head = self.file.read(12)
        if head[:4] != b"RIFF" or head[8:] != b"AVI ":
            raise SystemExit(f"{path}: not an AVI file")
        self.width = self.height = 0
        stream, codec = None, None
        while True:
            ch = self.file.read(8)
            if len(ch) < 8:
                raise SystemExit(f"{path}: no movi list")
            cid, size = ch[:4], struct.unpack("<I", ch[4:])[0]
            pos = self.file.tell()
            if cid == b"LIST":
                kind = self.file.read(4)
                if kind == b"movi":
                    self.movi = pos + 4
                    break
                if kind == b"hdrl":
                    stream, codec = self._hdrl(self.file.read(size - 4))
            self.file.seek(pos + size + (size & 1))
        if stream is None or codec.upper() not in (b"MJPG", b"JPEG"):
            raise SystemExit(f"{path}: no MJPEG video stream (codec {codec!r})")
        self.ids = (b"%02ddc" % stream, b"%02ddb" % stream)
        self.count = 0

    def _hdrl(self, hdrl):
        """Frame size from avih; index and codec of the first video stream."""
        at, index, video = 0, 0, (None, None)
        while at + 8 <= len(hdrl):
            cid, size = hdrl[at:at + 4], struct.unpack_from("<I", hdrl, at + 4)[0]
            body = hdrl[at + 8:at + 8 + size]
            if cid == b"avih":
                self.width, self.height = struct.unpack_from("<II", body, 32)
            elif cid == b"LIST" and body[:4] == b"strl":
                inner, kind, handler, compression = 4, b"", b"", b"\0\0\0\0"
                while inner + 8 <= len(body):
                    sid, ssize = body[inner:inner + 4], struct.unpack_from("<I", body, inner + 4)[0]
                    c = body[inner + 8:inner + 8 + ssize]
                    if sid == b"strh" and len(c) >= 8:
                        kind, handler = c[:4], c[4:8]
                    elif sid == b"strf" and len(c) >= 20:
                        compression = c[16:20]
                    inner += 8 + ssize + (ssize & 1)
                if kind == b"vids" and video[0] is None:
                    video = (index, compression if compression != b"\0\0\0\0" else handler)
                index += 1
            at += 8 + size + (size & 1)
        return video

    def _next_chunk(self):
        while True:
            ch = self.file.read(8)
            if len(ch) < 8:
                return None
            cid, size = ch[:4], struct.unpack("<I", ch[4:])[0]
            pos = self.file.tell()
            if cid in (b"LIST", b"RIFF"):
                # descend into movi / rec / AVIX lists, skip any other list
                if self.file.read(4) in (b"movi", b"rec ", b"AVIX"):
                    continue
            elif cid in self.ids:
                if pos + size > self.size:
                    return None
                data = self.file.read(size)
                if size & 1:
                    self.file.seek(1, os.SEEK_CUR)
                return data
            self.file.seek(pos + size + (size & 1))

    def read(self):
        """The next frame's JPEG bytes and its index in the file."""
        data = self._next_chunk()
        if data is None:
            if self.count == 0:
                raise SystemExit("the AVI holds no video frames")
            self.file.seek(self.movi)
            self.count = 0
            data = self._next_chunk()
        self.count += 1
        return data, self.count - 1


class SyntheticYuyv:
    """oodmon's synthetic YUYV stream: Y = (x + y + shift) % 220 + 16 and both chroma
    bytes of pixel x (3 x + shift) % 200 + 28, shift growing by 3 per frame."""

    def __init__(self, width, height):
        x = np.arange(width)
        # the patterns reduced once, in 16 bits: a frame is then two cheap passes
        self.luma = ((x + np.arange(height)[:, None]) % 220).astype(np.uint16)
        self.chroma = np.broadcast_to(3 * x % 200, (height, width)).astype(np.uint16)
        self.shape = (height, width, 2)
        self.shift = 0
        self.count = 0

    def read(self):
        frame = np.empty(self.shape, np.uint8)
        frame[..., 0] = (self.luma + self.shift % 220) % 220 + 16
        frame[..., 1] = (self.chroma + self.shift % 200) % 200 + 28
        self.shift += 3
        self.count += 1
        return frame, None


# --- preprocessing ----------------------------------------------------------------------

def center_crop(img, width, height):
    """The largest centred region of the image with the aspect ratio of width x height,
    in whole pixels (oodmon's crop offsets are fractional: they are not here for frames
    whose crop is a whole number of pixels, such as 320x240 to a square)."""
    sh, sw = img.shape[:2]
    s = max(width / sw, height / sh)
    cw, ch = min(sw, round(width / s)), min(sh, round(height / s))
    x0, y0 = (sw - cw) // 2, (sh - ch) // 2
    return img[y0:y0 + ch, x0:x0 + cw]


def cv_resize(img, width, height, spec):
    """Resize with OpenCV: the closest filter to oodmon's antialiased bilinear (see the
    module's notes)."""
    if spec["resize"] == "shorter_side_center_crop":
        img = center_crop(img, width, height)
    if spec["filter"] == "nearest":
        interp = cv2.INTER_NEAREST_EXACT  # the pixel under the output pixel's centre, as oodmon
    elif img.shape[1] > width or img.shape[0] > height:
        interp = cv2.INTER_AREA  # box filter; oodmon: triangle widened by the reduction
    else:
        interp = cv2.INTER_LINEAR  # identical to oodmon's filter when enlarging
    return cv2.resize(img, (width, height), interpolation=interp)


_plans = {}


def axis_weights(out, src, scale, offset, filt):
    """oodmon's resampling weights along one axis (calibration/core/src/preprocess.rs,
    Axis::new) as a dense out x src matrix."""
    w = np.zeros((out, src))
    for o in range(out):
        centre = (o + offset + 0.5) / scale
        if filt == "nearest":
            w[o, min(max(math.floor(centre), 0), src - 1)] = 1.0
            continue
        support = max(1.0 / scale, 1.0)
        row = np.maximum(0.0, 1.0 - np.abs((np.arange(src) + 0.5 - centre) / support))
        total = row.sum()
        if total <= 0.0:
            row[:] = 0.0
            row[0 if centre < 0 else src - 1] = 1.0
            total = 1.0
        w[o] = row / total
    return w.astype(np.float32)


def exact_resize(img, width, height, spec):
    """oodmon's resize (fractional centre crop, antialiased triangle filter) in float."""
    sh, sw = img.shape[:2]
    key = (sw, sh, width, height, spec["resize"], spec["filter"])
    if key not in _plans:
        if spec["resize"] == "stretch":
            sx, sy, ox, oy = width / sw, height / sh, 0.0, 0.0
        else:
            s = max(width / sw, height / sh)
            sx, sy, ox, oy = s, s, (sw * s - width) / 2, (sh * s - height) / 2
        _plans[key] = (axis_weights(height, sh, sy, oy, spec["filter"]),
                       axis_weights(width, sw, sx, ox, spec["filter"]))
    wy, wx = _plans[key]
    rows = np.tensordot(wy, img.astype(np.float32), axes=(1, 0))  # height x sw x 3
    return np.einsum("xw,ywc->yxc", wx, rows)


def preprocess(img, order, spec, exact=False):
    """A decoded frame (H x W x 3 bytes in `order`) to the encoder's input tensor."""
    resize = exact_resize if exact else cv_resize
    detail = spec.get("detail_size")
    if detail:
        # the frame to detail x detail bytes, rounded as a stored image is (oodmon too)
        small = resize(img, detail, detail, spec)
        if exact:
            small = np.clip(np.floor(small + 0.5), 0, 255).astype(np.uint8)
        # then in float to the input size: oodmon does not round this stage
        img = resize(small.astype(np.float32), spec["width"], spec["height"], spec)
    else:
        # OpenCV: bytes in, bytes out (rounded, which oodmon's result is not)
        img = resize(img, spec["width"], spec["height"], spec)
    if order != spec["channel_order"]:
        img = img[..., ::-1]
    x = (img.astype(np.float32) / 255.0 - spec["mean"]) / spec["std"]
    if spec["layout"] == "nchw":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None])


# --- scoring ----------------------------------------------------------------------------

def matrix(stored):
    """A matrix of the artifact: shape, dtype, little-endian bytes in base64; `-symmetric`
    holds the upper triangle row by row, `f32-lower` the lower one (a Cholesky factor), and
    `f32-lower-shuffle-zlib` that triangle's bytes grouped by significance, zlib-compressed."""
    raw = base64.b64decode(stored["data"])
    n, m = stored["rows"], stored["cols"]
    if stored["dtype"] == "f32-lower-shuffle-zlib":
        want = n * (n + 1) // 2 * 4
        z = zlib.decompressobj()
        raw = z.decompress(raw, want + 1)  # no more than the shape holds (a bomb stops here)
        if len(raw) != want or not z.eof or z.unused_data:
            sys.exit(f"calib.json: a {n}x{n} whitening factor needs {want} bytes of one zlib "
                     f"stream; found {len(raw)} (stream ended: {z.eof}, "
                     f"{len(z.unused_data)} bytes after it)")
        planes = np.frombuffer(raw, np.uint8).reshape(4, -1)
        raw = np.ascontiguousarray(planes.T).tobytes()
    if stored["dtype"] in ("f32-lower", "f32-lower-shuffle-zlib"):
        full = np.zeros((n, n), np.float32)
        full[np.tril_indices(n)] = np.frombuffer(raw, "<f4")
        return full
    if stored["dtype"] == "f64-symmetric":
        full = np.zeros((n, n))
        iu = np.triu_indices(n)
        full[iu] = np.frombuffer(raw, "<f8")
        full.T[iu] = full[iu]
        return full
    dtype = {"f32": "<f4", "f64": "<f8"}[stored["dtype"]]
    return np.frombuffer(raw, dtype).reshape(n, m).copy()


def unit(v):
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 0, n, 1)


class Scorer:
    """calib.json's model and thresholds: score = distance to the nearest cluster
    (higher = more OOD), then the decision."""

    def __init__(self, calib):
        model, t = calib["model"], calib["thresholds"]
        self.kind = model["metric"]["kind"]
        self.normalize = model["normalize"]
        centres = matrix(model["centroids"])
        if self.normalize and self.kind != "mahalanobis_plus_plus":
            centres = unit(centres)
        if self.kind == "cosine":
            centres = unit(centres)
        # P = L L^T, so (x - c)^T P (x - c) = ||x L - c L||^2; schema 6 stores L
        # ("whitening"), older files P ("precision")
        factors = [matrix(w) for w in model.get("whitening", [])] or [
            np.linalg.cholesky(matrix(p)).astype(np.float32) for p in model.get("precision", [])
        ]
        per_cluster = self.kind == "mahalanobis" and model["metric"]["covariance"] == "per_cluster"
        self.subspace = None
        if model.get("subspace"):
            # mahalanobis++:R (schema 10): [V^T x / sqrt(l), (x - V V^T x) / s] makes the
            # low-rank distance Euclidean
            sub = model["subspace"]
            self.subspace = (
                matrix(sub["basis"]),
                (1.0 / np.sqrt(np.asarray(sub["variances"]))).astype(np.float32),
                np.float32(math.sqrt(sub["residual_precision"])),
            )
            centres = np.stack([self.project(c) for c in centres.astype(np.float32)])
        elif self.kind in ("mahalanobis", "mahalanobis_plus_plus", "relative_mahalanobis"):
            if per_cluster:
                self.factors = factors
            else:
                self.factor = factors[0]
                centres = centres @ self.factor
        if self.kind == "relative_mahalanobis":
            bg = model["background"]
            self.bg_factor = (
                matrix(bg["whitening"]) if "whitening" in bg
                else np.linalg.cholesky(matrix(bg["precision"])).astype(np.float32)
            )
            self.bg_centre = np.asarray(bg["mean"], np.float32) @ self.bg_factor
        if self.kind == "knn":
            self.k = model["metric"]["k"]
            self.bank = unit(matrix(model["knn_bank"]["vectors"]))
            self.bank_cluster = np.asarray(model["knn_bank"]["cluster"])
        self.per_cluster = per_cluster
        self.centres = centres.astype(np.float32)
        self.mode = t["mode"]
        self.global_threshold = t["global"]
        self.thresholds = t.get("per_cluster", [])
        self.calibration_scores = np.asarray(t["calibration_scores"])

    def project(self, x):
        basis, inv_sd, scale = self.subspace
        p = x @ basis
        return np.concatenate([p * inv_sd, scale * (x - basis @ p)])

    def score(self, x):
        """Score and nearest cluster of one embedding (oodmon's Scorer::score_one)."""
        if self.normalize or self.kind in ("cosine", "knn"):
            x = unit(x)
        if self.kind == "knn":
            # distance to the k-th nearest bank vector; nearest cluster: the first's
            d2 = ((self.bank - x) ** 2).sum(1, dtype=np.float64)
            order = np.argsort(d2, kind="stable")
            return math.sqrt(max(d2[order[self.k - 1]], 0.0)), int(self.bank_cluster[order[0]])
        if self.kind == "cosine":
            # unit centres, a unit (or zero: cosine 0) embedding; 1 - cos, not squared
            d = 1.0 - (self.centres @ x).astype(np.float64)
            j = int(np.argmin(d))
            return float(d[j]), j
        if self.per_cluster:
            d2 = np.array([(((x - c) @ f) ** 2).sum(dtype=np.float64)
                           for c, f in zip(self.centres, self.factors)])
        else:
            # whitened once, then plain squared distances to the whitened centres
            if self.subspace is not None:
                z = self.project(x)
            else:
                z = x if self.kind == "euclidean" else x @ self.factor
            d2 = ((self.centres - z) ** 2).sum(1, dtype=np.float64)
        j = int(np.argmin(d2))
        if self.kind == "relative_mahalanobis":
            # squared, minus the squared distance to the background Gaussian
            bg = ((x @ self.bg_factor - self.bg_centre) ** 2).sum(dtype=np.float64)
            return float(d2[j] - bg), j
        return math.sqrt(max(d2[j], 0.0)), j

    def decide(self, score, nearest):
        """p-value, threshold and OOD flag (oodmon's Thresholds::is_ood)."""
        n = len(self.calibration_scores)
        below = int(np.searchsorted(self.calibration_scores, score, side="left"))
        p_value = (1.0 + n - below) / (n + 1.0)
        threshold = self.global_threshold
        if self.mode["kind"] == "per_cluster" and nearest < len(self.thresholds):
            threshold = self.thresholds[nearest]
        if not math.isfinite(score):
            ood = True
        elif self.mode["kind"] == "conformal":
            ood = p_value <= self.mode["alpha"]
        else:
            ood = score > threshold
        return p_value, threshold, ood


# --- the loop ---------------------------------------------------------------------------

GRAPH_OPT = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


ENGINES = ("onnxruntime", "torch-cpu", "torch-cuda", "torch-cuda-graph")


def encoder_engine(args):
    """A function from the NCHW float32 input to the embedding (NumPy, float32)."""
    path = args.bundle / "encoder.onnx"
    if args.engine == "onnxruntime":
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = GRAPH_OPT[args.graph_opt]
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        input_name = sess.get_inputs()[0].name
        output_name = sess.get_outputs()[0].name
        return lambda x: sess.run([output_name], {input_name: x})[0][0]
    import torch
    from onnx_torch import OnnxTorch, cuda_graph_runner, input_shape
    torch.set_num_threads(args.threads)
    device = "cpu" if args.engine == "torch-cpu" else "cuda"
    net = OnnxTorch(path, device, args.precision)
    if args.engine != "torch-cuda-graph":
        # .cpu() waits for the GPU: the embedding is on the host when the call returns
        return lambda x: net(torch.from_numpy(x).to(device)).cpu().numpy()[0]
    replay = cuda_graph_runner(net, input_shape(path), device)
    return lambda x: replay(torch.from_numpy(x)).cpu().numpy()[0]


def engine_versions(engine):
    if engine == "onnxruntime":
        return {}
    import torch
    out = {"torch": torch.__version__}
    if engine != "torch-cpu":
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def percentiles(us):
    """oodmon's: the nearest rank, over integer microseconds."""
    v = sorted(us)
    at = lambda q: v[int(math.floor((len(v) - 1) * q + 0.5))]
    return {"p50_us": at(0.5), "p99_us": at(0.99)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("source")
    ap.add_argument("frames", type=int)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--resize", choices=("opencv", "exact"), default="opencv")
    ap.add_argument("--records", type=Path)
    ap.add_argument("--graph-opt", choices=tuple(GRAPH_OPT), default="all",
                    help="onnxruntime graph optimisation level (all: ORT_ENABLE_ALL)")
    ap.add_argument("--engine", choices=ENGINES, default="onnxruntime",
                    help="what runs the encoder: onnxruntime on the CPU, or PyTorch "
                         "(bench/onnx_torch.py) on the CPU, a GPU, or a GPU replaying a "
                         "captured CUDA graph")
    ap.add_argument("--precision", choices=("qdq", "float"), default="qdq",
                    help="PyTorch engines: follow the int8 file's activation rounding "
                         "(qdq) or run the network in float")
    args = ap.parse_args()

    calib = json.loads((args.bundle / "calib.json").read_text())
    spec = dict(calib["preprocessing"])
    spec["mean"] = np.asarray(spec["mean"], np.float32)
    spec["std"] = np.asarray(spec["std"], np.float32)
    scorer = Scorer(calib)
    embed = encoder_engine(args)

    kind, _, arg = args.source.partition(":")
    if kind == "avi":
        source = AviFrames(arg)

        def decode(data):
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                raise SystemExit("a frame is not a decodable JPEG")
            return img, "bgr"
    elif kind == "yuyv":
        w, h = (int(v) for v in arg.split("x"))
        if w % 2:
            raise SystemExit("yuyv:WxH needs an even width")
        source = SyntheticYuyv(w, h)
        to_rgb = spec["channel_order"] == "rgb"
        code = cv2.COLOR_YUV2RGB_YUYV if to_rgb else cv2.COLOR_YUV2BGR_YUYV

        def decode(frame):
            return cv2.cvtColor(frame, code), spec["channel_order"]
    else:
        raise SystemExit(f"source {args.source!r}: expected avi:FILE or yuyv:WxH")

    exact = args.resize == "exact"
    clock = time.perf_counter_ns
    stages = {k: [] for k in ("decode", "preprocess", "inference", "scoring", "total")}
    records = []
    ood_frames = 0
    sequence = 0
    for timed in (False, True):
        start = clock()
        for _ in range(args.frames if timed else args.warmup):
            data, index = source.read()
            t0 = clock()
            img, order = decode(data)
            t1 = clock()
            x = preprocess(img, order, spec, exact)
            t2 = clock()
            emb = embed(x)
            t3 = clock()
            score, nearest = scorer.score(emb)
            p_value, threshold, ood = scorer.decide(score, nearest)
            t4 = clock()
            if timed:
                for name, a, b in (("decode", t0, t1), ("preprocess", t1, t2),
                                   ("inference", t2, t3), ("scoring", t3, t4),
                                   ("total", t0, t4)):
                    stages[name].append((b - a) // 1000)
                ood_frames += ood
                records.append({"sequence": sequence, "index": index, "score": score,
                                "nearest": nearest, "p_value": p_value,
                                "threshold": threshold, "ood": ood})
            sequence += 1
        elapsed = (clock() - start) / 1e9

    if args.records:
        args.records.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = {
        "source": args.source,
        "frames": args.frames,
        "threads": args.threads,
        "resize": args.resize,
        "graph_opt": args.graph_opt,
        "engine": args.engine,
        "precision": args.precision if args.engine != "onnxruntime" else None,
        "elapsed_s": elapsed,
        "frames_per_second": args.frames / max(elapsed, 1e-9),
        **{name: percentiles(v) for name, v in stages.items()},
        "ood_frames": ood_frames,
        "scores": [r["score"] for r in records[:24]],
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "versions": {"python": sys.version.split()[0], "numpy": np.__version__,
                     "opencv": cv2.__version__, "onnxruntime": ort.__version__,
                     **engine_versions(args.engine)},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
