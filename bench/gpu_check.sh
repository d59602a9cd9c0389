#!/usr/bin/env bash
# The checks that need an NVIDIA GPU (issue 16): tract's CUDA runtime against tract on the
# CPU (the runtime's agreement test and the shipped bundle, decisions frame by frame), and
# its speed beside PyTorch on the same GPU running the same ONNX file (bench/onnx_torch.py),
# inference alone and the whole pipeline.
#
#   bench/gpu_check.sh prepare   # here: build the binaries into .gpu/ (ignored by git)
#   bench/gpu_check.sh run       # on the GPU machine, from the repository root
#   bench/gpu_check.sh agreement # the same, the agreement checks only
#   bench/gpu_check.sh float-speed # the float network's timings only
#
# `prepare` builds with `--features tract-cuda-13` (CUDA 13 libraries, as PyTorch's cu130
# wheels bring; a JetPack 6 build takes `tract-cuda`). `run` needs python3 with torch
# (CUDA), onnx, onnxruntime, opencv and numpy, an NVIDIA driver, and the CUDA toolkit's
# headers (NVRTC compiles tract's kernels at run time: CUDA_HOME, /usr/local/cuda by
# default). Results go to $OUT (default /tmp/gpu-check): the log and JSON lines.
set -u
BIN=${BIN:-.gpu}
CORE=${CORE:-3}

prepare() {
    set -e
    local target=${CARGO_TARGET_DIR:-target} python=${OODMON_PYTHON:-python3}
    cargo build --release -p oodmon-edge --features tract-cuda-13
    local test_bin
    test_bin=$(cargo test --release -p oodmon-runtime --features tract-cuda-13 --test backends \
        --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "backends" and m.get("executable"):
        print(m["executable"])')
    mkdir -p "$BIN"
    # stripped and compressed: the device tool carries at most 64 MiB with the tree
    strip -o "$BIN/oodmon-edge" "$target/release/oodmon-edge"
    strip -o "$BIN/backends" "$test_bin"
    xz -f -T2 -9 "$BIN/oodmon-edge" "$BIN/backends"
    # the float network inside the shipped int8 encoder (needs onnx in $OODMON_PYTHON)
    "$python" bench/float_from_qdq.py edge/demo/bundle "$BIN/float-bundle"
    # the street video of issue 15, when this checkout sits beside the project's data
    if [ -f ../shared/data/video/vtest_first100_mjpeg.avi ]; then
        cp ../shared/data/video/vtest_first100_mjpeg.avi "$BIN/"
    fi
    ls -la "$BIN"
}

run_checks() {
    OUT=${OUT:-/tmp/gpu-check}
    mkdir -p "$OUT"
    exec > >(tee "$OUT/gpu_check.log") 2>&1
    section() { echo; echo "=== $* ($(date +%T))"; }
    pin() { taskset -c "$CORE" "$@"; }

    for f in oodmon-edge backends; do
        [ -x "$BIN/$f" ] || [ ! -f "$BIN/$f.xz" ] || python3 -c 'import lzma, os, shutil, sys
with lzma.open(sys.argv[1] + ".xz") as src, open(sys.argv[1], "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(sys.argv[1], 0o755)' "$BIN/$f"
    done
    command -v taskset > /dev/null || pin() { "$@"; }

    section machine
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    ldd --version | head -1
    echo "cores: $(nproc), pinned to core $CORE"
    python3 -c 'import torch, onnxruntime, cv2
print("torch", torch.__version__, "cuda", torch.version.cuda, "onnxruntime",
      onnxruntime.__version__, "opencv", cv2.__version__)'
    # CUDA's libraries from the Python wheels (PyTorch's), then the toolkit's
    local libs
    libs=$(python3 -c 'import glob, os, site
dirs = {os.path.dirname(f) for sp in site.getsitepackages()
        for f in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True)}
print(":".join(sorted(dirs)))')
    export LD_LIBRARY_PATH="$libs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
    ls "$CUDA_HOME"/include/cuda_fp16.h || echo "no CUDA headers under $CUDA_HOME"

    float_speed() {
        [ -d "$BIN/float-bundle" ] || return 0
        section "the float network (float-bundle): inference alone, then the scenario's pipeline"
        for b in tract tract-cuda; do
            pin "$BIN/oodmon-edge" bench --model "$BIN/float-bundle/encoder.onnx" --backend "$b" \
                --frames 500 --json | tee -a "$OUT/inference-float.jsonl"
            pin "$BIN/oodmon-edge" bench --bundle "$BIN/float-bundle" --backend "$b" \
                --frames 500 --json | tee -a "$OUT/pipeline-float.jsonl"
        done
        for engine in torch-cuda torch-cuda-graph; do
            pin python3 bench/python_pipeline.py "$BIN/float-bundle" avi:edge/demo/scenario.avi \
                500 --engine "$engine" --precision float | tee -a "$OUT/pipeline-float.jsonl"
        done
    }
    if [ "${MODE:-}" = float-speed ]; then
        float_speed
        section done
        return
    fi

    if [ "${MODE:-}" != agreement ]; then
        section "runtime test: tract-cuda embeds like tract (a failure here if it cannot run)"
        OODMON_REQUIRE_GPU=1 RUST_LOG=tract_cuda=info timeout 300 "$BIN/backends" \
            --test-threads=1 --nocapture
        echo "exit $?"
    fi

    # cuBLAS and cuDNN may run float32 products in TF32 (10-bit mantissa) on Ampere and
    # newer unless NVIDIA_TF32_OVERRIDE=0; an int8 graph rounds every activation, so a
    # small error moves some roundings
    local bundles=(edge/demo/bundle)
    [ -d "$BIN/float-bundle" ] && bundles+=("$BIN/float-bundle")
    for bundle in "${bundles[@]}"; do
        for tf32 in default 0; do
            section "$bundle on tract-cuda against tract, NVIDIA_TF32_OVERRIDE=$tf32"
            if [ "$tf32" = default ]; then
                timeout 300 "$BIN/oodmon-edge" check --bundle "$bundle" --backend tract-cuda
            else
                NVIDIA_TF32_OVERRIDE=0 timeout 300 "$BIN/oodmon-edge" check --bundle "$bundle" \
                    --backend tract-cuda
            fi
            echo "exit $?"
        done
    done
    [ "${MODE:-}" = agreement ] && { section done; return; }

    section "the demo scenario's records on both backends: the same decisions?"
    for b in tract tract-cuda; do
        timeout 300 "$BIN/oodmon-edge" run --bundle edge/demo/bundle \
            --source avi:edge/demo/scenario.avi --backend "$b" --overlap off \
            --records "$OUT/records-$b.jsonl" > /dev/null
        echo "$b: exit $?, $(wc -l < "$OUT/records-$b.jsonl") records"
    done
    python3 - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
load = lambda b: [json.loads(l) for l in open(f"{out}/records-{b}.jsonl")]
a, b = load("tract"), load("tract-cuda")
dec = lambda r: (r["ood"], r["nearest"])
diff = sum(dec(x) != dec(y) for x, y in zip(a, b))
rel = max(abs(x["score"] - y["score"]) / max(abs(x["score"]), 1e-9) for x, y in zip(a, b)
          if x.get("score") is not None and y.get("score") is not None)
print(f"OOD frames: tract {sum(r['ood'] for r in a)}, tract-cuda {sum(r['ood'] for r in b)}")
print(f"{len(a)} frames: decisions or nearest cluster differ on {diff}; "
      f"largest relative score difference {rel:.2e}")
EOF

    section "inference alone (500 runs, one CPU core)"
    for b in tract tract-cuda; do
        pin "$BIN/oodmon-edge" bench --model edge/demo/bundle/encoder.onnx --backend "$b" \
            --frames 500 --json | tee -a "$OUT/inference.jsonl"
    done
    for precision in qdq float; do
        for graph in "" --graph; do
            pin python3 bench/onnx_torch.py edge/demo/bundle/encoder.onnx --device cuda \
                --precision "$precision" --runs 500 $graph | tee -a "$OUT/inference.jsonl"
        done
    done

    section "the whole pipeline (500 frames, one CPU core)"
    local sources=("scenario:" "yuyv:640x480")
    [ -f "$BIN/vtest_first100_mjpeg.avi" ] && sources+=("vtest:$BIN/vtest_first100_mjpeg.avi")
    for s in "${sources[@]}"; do
        local name=${s%%:*} arg=${s#*:} edge_src=() py_src
        case $name in
            scenario) py_src=avi:edge/demo/scenario.avi ;;
            yuyv) edge_src=(--yuyv "$arg"); py_src=yuyv:$arg ;;
            vtest) edge_src=(--source "avi:$arg"); py_src=avi:$arg ;;
        esac
        for b in tract tract-cuda; do
            echo "-- $name, oodmon-edge on $b"
            pin "$BIN/oodmon-edge" bench "${edge_src[@]}" --backend "$b" --frames 500 --json |
                python3 -c "import json,sys; d=json.load(sys.stdin); d['input']='$name'; d['backend']='$b'; print(json.dumps(d))" |
                tee -a "$OUT/pipeline.jsonl"
        done
        for engine in onnxruntime torch-cuda torch-cuda-graph; do
            echo "-- $name, Python with $engine"
            pin python3 bench/python_pipeline.py edge/demo/bundle "$py_src" 500 \
                --engine "$engine" |
                python3 -c "import json,sys; d=json.load(sys.stdin); d['input']='$name'; print(json.dumps(d))" |
                tee -a "$OUT/pipeline.jsonl"
        done
    done
    float_speed
    section done
}

case ${1:-} in
    prepare) prepare ;;
    run) run_checks ;;
    agreement | float-speed) MODE=$1 run_checks ;;
    *) echo "usage: $0 prepare|run|agreement|float-speed" >&2; exit 2 ;;
esac
