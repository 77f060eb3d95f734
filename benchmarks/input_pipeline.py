"""Input-pipeline throughput: training.data against tf_keras' ImageDataGenerator and the raw PIL limit.

Generates (once, cached) a folder of ~2,000 smooth random 224 px JPEGs in 10 classes, then measures
images per second over one training epoch for:

(a) ``training.data.build_datasets`` (batch 32, no augmentation, every image in the training split):
    epoch 1 cold (build: scan + decode when it caches in memory, plus the first pass) and the steady
    state (median of the later epochs), for the scheme it chooses and for the other scheme forced;
(b) ``ImageDataGenerator().flow_from_directory(target_size=224, batch_size=32)`` over the same folder,
    epoch 1 (with the directory walk) and epoch 2;
(c) the raw limit: PIL decoding the files to ``uint8`` RGB arrays in a tight loop in one thread, and
    ``edge.preprocess.decode_file`` (the preprocessing contract every row of ours uses) in one thread.

The TensorFlow runtime is started before measuring, as it is in a training run.

Every file is read once before measuring, so all rows see the OS page cache warm. Prints a table and
writes ``benchmarks/results/input_pipeline.json``.

    .venv/bin/python benchmarks/input_pipeline.py            # 2,000 images, 5 epochs of ours
    .venv/bin/python benchmarks/input_pipeline.py --quick    # 400 images, 3 epochs
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
CLASSES = 10
BATCH = 32


def generate(folder: Path, images: int, size: int, seed: int = 0) -> Path:
    """Write ``images`` smooth random JPEGs of ``size`` px in 10 class folders (skipped when cached).

    Args:
        folder: where to write; reused when ``<folder>.json`` beside it matches.
        images: total number of images.
        size: side in pixels.
        seed: seeds the pixels.

    Returns:
        ``folder``.
    """
    meta = {"images": images, "size": size, "seed": seed, "classes": CLASSES}
    marker = folder.parent / f"{folder.name}.json"  # beside the folder: inside, the scan would report it
    if marker.is_file() and json.loads(marker.read_text()) == meta:
        return folder
    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        (folder / f"class_{c}").mkdir(parents=True, exist_ok=True)
    tints = rng.uniform(40, 215, size=(CLASSES, 3))
    for i in range(images):
        c = i % CLASSES
        coarse = np.clip(tints[c] + rng.normal(0, 45, size=(6, 6, 3)), 0, 255).astype(np.uint8)
        smooth = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        noisy = np.asarray(smooth, dtype=np.int16) + rng.integers(-6, 7, size=(size, size, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            folder / f"class_{c}" / f"img_{i:05d}.jpg", "JPEG", quality=90
        )
    marker.write_text(json.dumps(meta))
    return folder


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("class_*/*.jpg"))


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_ours(folder: Path, size: int, epochs: int, loading: str) -> dict:
    """Time training.data over ``epochs`` epochs; epoch 1 includes building (scan and, in memory, decode)."""
    from edge.manifest import InputContract
    from training.config import DataConfig
    from training.data import build_datasets

    config = DataConfig(
        path=folder, batch_size=BATCH, val_fraction=0.0, test_fraction=0.0, loading=loading, seed=0
    )
    contract = InputContract(height=size, width=size)
    start = time.perf_counter()
    ds = build_datasets(config, contract, augment=False)
    build_s = time.perf_counter() - start
    n = len(ds.scan.splits["train"])
    epoch_s = []
    for _ in range(epochs):
        start = time.perf_counter()
        seen = 0
        for x, _y in ds.train:
            seen += int(x.shape[0])
        epoch_s.append(time.perf_counter() - start)
        if seen != n:
            raise RuntimeError(f"an epoch yielded {seen} images, expected {n}")
    steady = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]
    result = {
        "scheme": ds.plan.scheme,
        "reason": ds.plan.reason,
        "batch_size": ds.plan.batch_size,
        "images": n,
        "build_s": round(build_s, 3),
        "epoch_s": [round(t, 3) for t in epoch_s],
        "epoch1_cold_ips": round(_rate(n, build_s + epoch_s[0]), 1),
        "steady_ips": round(_rate(n, steady), 1),
    }
    del ds
    gc.collect()
    return result


def bench_idg(folder: Path, size: int, epochs: int = 2) -> dict:
    """Time ``ImageDataGenerator().flow_from_directory`` for ``epochs`` epochs; epoch 1 includes its walk."""
    from training._tf import keras

    start = time.perf_counter()
    gen = keras.preprocessing.image.ImageDataGenerator().flow_from_directory(
        str(folder), target_size=(size, size), batch_size=BATCH, class_mode="sparse", shuffle=True, seed=0
    )
    build_s = time.perf_counter() - start
    n = gen.samples
    epoch_s = []
    for _ in range(epochs):
        start = time.perf_counter()
        seen = 0
        for _ in range(len(gen)):
            x, _y = next(gen)
            seen += len(x)
        epoch_s.append(time.perf_counter() - start)
        if seen != n:
            raise RuntimeError(f"an IDG epoch yielded {seen} images, expected {n}")
    return {
        "images": n,
        "build_s": round(build_s, 3),
        "epoch_s": [round(t, 3) for t in epoch_s],
        "epoch1_cold_ips": round(_rate(n, build_s + epoch_s[0]), 1),
        "epoch2_ips": round(_rate(n, epoch_s[1] if len(epoch_s) > 1 else epoch_s[0]), 1),
        "median_ips": round(_rate(n, statistics.median(epoch_s)), 1),
    }


def bench_decode_file(files: list[Path], size: int) -> dict:
    """One thread: ``edge.preprocess.decode_file`` (the contract: EXIF, modes, bilinear resize)."""
    from edge.manifest import InputContract
    from edge.preprocess import decode_file

    contract = InputContract(height=size, width=size)
    start = time.perf_counter()
    for path in files:
        decode_file(path, contract)
    seconds = time.perf_counter() - start
    return {"images": len(files), "seconds": round(seconds, 3), "ips": round(_rate(len(files), seconds), 1)}


def warm_up_tf() -> None:
    """Start the TensorFlow runtime (devices, thread pools) once, as a training run has before loading data."""
    from training._tf import tf

    ds = tf.data.Dataset.range(64).batch(8).map(lambda x: x * 2, num_parallel_calls=tf.data.AUTOTUNE)
    for _ in ds:
        pass


def bench_pil(files: list[Path], size: int) -> dict:
    """One thread: open, decode to RGB, resize when needed, ``np.asarray``."""
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            np.asarray(rgb)
    seconds = time.perf_counter() - start
    return {"images": len(files), "seconds": round(seconds, 3), "ips": round(_rate(len(files), seconds), 1)}


def _table(rows: list[list[str]]) -> str:
    from edge.tables import format_table

    return format_table(rows[0], rows[1:], "l" + "r" * (len(rows[0]) - 1))


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print a table and write the JSON results. Returns the results dict."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="images to generate (default 2000)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of our pipeline (default 5)")
    parser.add_argument("--quick", action="store_true", help="400 images and 3 epochs")
    parser.add_argument("--data", type=Path, default=None, help="cache folder for the generated images")
    parser.add_argument("--out", type=Path, default=RESULTS / "input_pipeline.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.epochs = min(args.images, 400), min(args.epochs, 3)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (epoch 1 is cold, the rest give the steady state)")

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    folder = args.data or RESULTS / f"input_data_{args.size}px_{args.images}"
    start = time.perf_counter()
    generate(folder, args.images, args.size)
    print(
        f"data: {folder} ({args.images} JPEGs, {args.size} px) ready in {time.perf_counter() - start:.1f} s"
    )
    files = _files(folder)
    disk = sum(p.stat().st_size for p in files)  # also warms the page cache for every row below
    for p in files:
        p.read_bytes()

    pil = bench_pil(files, args.size)
    print(f"raw PIL, 1 thread: {pil['ips']} img/s")
    contract_1t = bench_decode_file(files, args.size)
    print(f"edge.preprocess.decode_file, 1 thread: {contract_1t['ips']} img/s")
    warm_up_tf()
    idg = bench_idg(folder, args.size)
    print(f"ImageDataGenerator: epoch 1 {idg['epoch1_cold_ips']} img/s, epoch 2 {idg['epoch2_ips']} img/s")
    auto = bench_ours(folder, args.size, args.epochs, "auto")
    print(
        f"ours ({auto['scheme']}): epoch 1 {auto['epoch1_cold_ips']} img/s, steady {auto['steady_ips']} img/s"
    )
    other = "stream" if auto["scheme"] == "memory" else "memory"
    forced = bench_ours(folder, args.size, args.epochs, other)
    print(
        f"ours ({other}, forced): epoch 1 {forced['epoch1_cold_ips']} img/s, steady {forced['steady_ips']} img/s"
    )

    from training._tf import tf

    results = {
        "images": len(files),
        "image_size": args.size,
        "bytes_on_disk": disk,
        "batch_size": BATCH,
        "epochs_ours": args.epochs,
        "page_cache": "warm (every file read once before measuring)",
        "machine": {
            "cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "load_average_1m": {
                "before": load_before,
                "after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            },
        },
        "tf_runtime": "started before measuring (as in a training run)",
        "raw_pil_1_thread": pil,
        "decode_file_1_thread": contract_1t,
        "image_data_generator": idg,
        "ours": auto,
        f"ours_forced_{other}": forced,
        "ratio_ours_over_idg": {
            "steady": round(auto["steady_ips"] / idg["median_ips"], 2),
            "epoch1_cold": round(auto["epoch1_cold_ips"] / idg["epoch1_cold_ips"], 2),
            f"{other}_forced_steady": round(forced["steady_ips"] / idg["median_ips"], 2),
        },
        "target_ratio": 3.0,
    }
    rows = [
        ["pipeline", "epoch 1 (cold) img/s", "steady img/s", "epochs (s)"],
        [
            f"ours, {auto['scheme']} (auto)",
            f"{auto['epoch1_cold_ips']:,.0f}",
            f"{auto['steady_ips']:,.0f}",
            " ".join(f"{t:.2f}" for t in auto["epoch_s"]) + f" + build {auto['build_s']:.2f}",
        ],
        [
            f"ours, {other} (forced)",
            f"{forced['epoch1_cold_ips']:,.0f}",
            f"{forced['steady_ips']:,.0f}",
            " ".join(f"{t:.2f}" for t in forced["epoch_s"]) + f" + build {forced['build_s']:.2f}",
        ],
        [
            "ImageDataGenerator",
            f"{idg['epoch1_cold_ips']:,.0f}",
            f"{idg['median_ips']:,.0f}",
            " ".join(f"{t:.2f}" for t in idg["epoch_s"]) + f" + build {idg['build_s']:.2f}",
        ],
        ["raw PIL decode, 1 thread", f"{pil['ips']:,.0f}", f"{pil['ips']:,.0f}", f"{pil['seconds']:.2f}"],
        [
            "edge decode_file, 1 thread",
            f"{contract_1t['ips']:,.0f}",
            f"{contract_1t['ips']:,.0f}",
            f"{contract_1t['seconds']:.2f}",
        ],
    ]
    print()
    print(_table(rows))
    r = results["ratio_ours_over_idg"]
    print(
        f"\nours/IDG: steady {r['steady']}x, epoch 1 {r['epoch1_cold']}x (target >= 3x); "
        f"ours chose '{auto['scheme']}': {auto['reason']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
