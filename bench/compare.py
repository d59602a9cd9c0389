"""Prints the calibration benchmark as a Markdown table of ratios: oodmon (criterion
medians) against NumPy / scikit-learn measured in the same run.

Usage: compare.py CRITERION_DIR PYTHON.json RUST_KMEANS.json
"""
import json
import sys
from pathlib import Path


def criterion_medians(root):
    out = {}
    for bench in Path(root).rglob("new/benchmark.json"):
        full_id = json.loads(bench.read_text())["full_id"]
        est = json.loads((bench.parent / "estimates.json").read_text())
        out[full_id] = est["median"]["point_estimate"]
    return out


def ms(ns):
    return f"{ns / 1e6:,.1f}"


def main():
    ours = criterion_medians(sys.argv[1])
    ref = json.loads(Path(sys.argv[2]).read_text())
    rust_km = json.loads(Path(sys.argv[3]).read_text())
    print("| benchmark | oodmon (ms) | NumPy (ms) | scikit-learn (ms) | speed-up vs NumPy | speed-up vs scikit-learn |")
    print("|---|---|---|---|---|---|")
    names = sorted(set(ref["numpy"]) | set(ref["sklearn"]))
    for name in names:
        if name not in ours:
            continue
        o = ours[name]
        npy = ref["numpy"].get(name)
        skl = ref["sklearn"].get(name)
        cell = lambda v: ms(v) if v else "-"
        ratio = lambda v: f"{v / o:.2f}x" if v else "-"
        print(f"| {name} | {ms(o)} | {cell(npy)} | {cell(skl)} | {ratio(npy)} | {ratio(skl)} |")
    print()
    print("| k-means | oodmon inertia | scikit-learn inertia | inertia ratio | oodmon iterations | scikit-learn iterations |")
    print("|---|---|---|---|---|---|")
    for k, r in ref["kmeans"].items():
        o = rust_km[k]
        print(f"| {k} | {o['inertia']:,.0f} | {r['inertia']:,.0f} | {o['inertia'] / r['inertia']:.4f} | {o['iterations']} | {r['iterations']} |")
    print()
    print(f"NumPy {ref['numpy_version']}; BLAS: {ref['threadpools']}")


if __name__ == "__main__":
    main()
