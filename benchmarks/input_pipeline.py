"""Input-pipeline throughput: training.data against tf_keras' ImageDataGenerator and the raw PIL limit.

Generates (once, cached) a folder of ~2,000 smooth random 224 px JPEGs in 10 classes, then measures
images per second over one training epoch for:

(a) ``training.data.build_datasets`` (batch 32, no augmentation, every image in the training split):
    epoch 1 cold (build: scan + decode when it caches in memory, plus the first pass) and the steady
    state (median of the later epochs), for the scheme it chooses and for the other scheme forced;
(b) the Keras idiom ``tf.keras.utils.image_dataset_from_directory(image_size=224, batch_size=32)`` over the
    same folder, prefetched, without and with ``.cache()`` (epoch 1 includes its directory walk), and
    ``ImageDataGenerator().flow_from_directory(target_size=224, batch_size=32)``;
(c) the raw limit: PIL decoding the files to ``uint8`` RGB arrays in a tight loop in one thread,
    ``edge.preprocess.decode_file`` (the preprocessing contract every row of ours uses) in one thread, and
    in one process per core at once (the cores' real limit: two busy cores each decode slower than one).

Each row also records the CPU time per image in the steady state (this process and its children, e.g. the
stream scheme's decode workers), all cores together: on a machine whose cores are all busy, throughput is
the cores divided by it.

The TensorFlow runtime is started before measuring, as it is in a training run. The pipelines are measured
in interleaved rounds (``--rounds``, each round runs every pipeline once) and each figure is the median over
the rounds, so that a change in the machine's load hits every row alike; the 1-minute load average is
recorded with each round. The targets of issue 17: the stream scheme's epoch 1 and steady state at least
1.0x and 1.2x the Keras idiom without cache.

Every file is read once before measuring, so all rows see the OS page cache warm. Prints a table and
writes ``benchmarks/results/input_pipeline.json``.

    .venv/bin/python benchmarks/input_pipeline.py            # 2,000 images, 5 epochs of ours
    .venv/bin/python benchmarks/input_pipeline.py --quick    # 400 images, 3 epochs, 2 rounds
"""

from __future__ import annotations

import argparse
import contextlib
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


def _cpu_s() -> float:
    """CPU seconds of this process and its live children (the stream scheme's decode workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # gone meanwhile
            total += sum(child.cpu_times()[:2])
    return total


def _epochs(ds, epochs: int, n: int | None = None) -> tuple[list[float], int, list[float]]:
    """Iterate ``ds`` ``epochs`` times; the seconds of each epoch, the images of the last and the CPU
    seconds of each epoch (this process and its children)."""
    epoch_s, cpu_s = [], []
    seen = 0
    for _ in range(epochs):
        start, cpu = time.perf_counter(), _cpu_s()
        seen = 0
        for x, _y in ds:
            seen += int(x.shape[0])
        epoch_s.append(time.perf_counter() - start)
        cpu_s.append(_cpu_s() - cpu)
        if n is not None and seen != n:
            raise RuntimeError(f"an epoch yielded {seen} images, expected {n}")
    return epoch_s, seen, cpu_s


def _rates(n: int, build_s: float, epoch_s: list[float], cpu_s: list[float]) -> dict:
    """Epoch 1 cold (build + first pass) and steady (median of the later epochs) images per second, and
    the steady CPU microseconds per image (all cores, this process and its children)."""
    steady = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]
    steady_cpu = statistics.median(cpu_s[1:]) if len(cpu_s) > 1 else cpu_s[0]
    return {
        "images": n,
        "build_s": round(build_s, 3),
        "epoch_s": [round(t, 3) for t in epoch_s],
        "epoch1_cold_ips": round(_rate(n, build_s + epoch_s[0]), 1),
        "steady_ips": round(_rate(n, steady), 1),
        "steady_cpu_us_per_image": round(steady_cpu / n * 1e6, 1) if n else None,
    }


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
    epoch_s, _, cpu_s = _epochs(ds.train, epochs, n)
    result = {"scheme": ds.plan.scheme, "reason": ds.plan.reason, "batch_size": ds.plan.batch_size}
    result.update(_rates(n, build_s, epoch_s, cpu_s))
    del ds
    gc.collect()
    return result


def bench_keras_idiom(folder: Path, size: int, epochs: int, cache: bool) -> dict:
    """Time ``tf.keras.utils.image_dataset_from_directory`` (shuffled, prefetched; ``.cache()`` when asked):
    what a Keras user writes. Its pixels are TensorFlow's decode and resize, not the contract's."""
    from training._tf import keras, tf

    start = time.perf_counter()
    ds = keras.utils.image_dataset_from_directory(
        str(folder), image_size=(size, size), batch_size=BATCH, shuffle=True, seed=0
    )
    if cache:
        ds = ds.cache()
    ds = ds.prefetch(tf.data.AUTOTUNE)
    build_s = time.perf_counter() - start
    epoch_s, n, cpu_s = _epochs(ds, epochs)
    result = {"cache": cache, **_rates(n, build_s, epoch_s, cpu_s)}
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


def _decode_share(files: list[Path], size: int, start, done) -> None:
    """In a forked child: wait for ``start``, decode ``files`` with ``decode_file``, set ``done``."""
    from edge.manifest import InputContract
    from edge.preprocess import decode_file

    contract = InputContract(height=size, width=size)
    start.wait()
    for path in files:
        decode_file(path, contract)
    done.set()


def bench_decode_processes(files: list[Path], size: int, processes: int) -> dict:
    """The raw limit of the cores: ``processes`` forked processes each run ``decode_file`` over its share
    of the files in a tight loop, all at once (two busy cores run slower each than one: shared caches and
    memory bandwidth). Forked before TensorFlow starts; timed from the start signal to the last done."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    start = ctx.Event()
    shares = [(files[k::processes], ctx.Event()) for k in range(processes)]
    procs = [ctx.Process(target=_decode_share, args=(share, size, start, done)) for share, done in shares]
    for proc in procs:
        proc.start()
    time.sleep(0.2)  # every child is waiting
    began = time.perf_counter()
    start.set()
    for _, done in shares:
        done.wait()
    seconds = time.perf_counter() - began
    for proc in procs:
        proc.join()
    return {
        "images": len(files),
        "processes": processes,
        "seconds": round(seconds, 3),
        "ips": round(_rate(len(files), seconds), 1),
    }


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


#: The pipelines measured in every round: row name -> how to run it (folder, size, epochs).
PIPELINES = {
    "ours, stream": lambda folder, size, epochs: bench_ours(folder, size, epochs, "stream"),
    "ours, memory": lambda folder, size, epochs: bench_ours(folder, size, epochs, "memory"),
    "Keras image_dataset_from_directory": lambda folder, size, epochs: bench_keras_idiom(
        folder, size, epochs, cache=False
    ),
    "Keras image_dataset_from_directory + cache()": lambda folder, size, epochs: bench_keras_idiom(
        folder, size, epochs, cache=True
    ),
}
KERAS = "Keras image_dataset_from_directory"


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def run_rounds(folder: Path, size: int, epochs: int, rounds: int) -> dict[str, dict]:
    """Every pipeline once per round, interleaved; per row the runs and the medians over the rounds."""
    runs: dict[str, list[dict]] = {name: [] for name in PIPELINES}
    for r in range(rounds):
        for name, bench in PIPELINES.items():
            result = {**bench(folder, size, epochs), "load_1m_after": _load()}
            runs[name].append(result)
            print(
                f"round {r + 1}/{rounds} {name}: epoch 1 {result['epoch1_cold_ips']:,.0f} img/s, "
                f"steady {result['steady_ips']:,.0f} img/s (load {result['load_1m_after']})",
                flush=True,
            )
    return {
        name: {
            "epoch1_cold_ips": round(statistics.median(x["epoch1_cold_ips"] for x in rs), 1),
            "steady_ips": round(statistics.median(x["steady_ips"] for x in rs), 1),
            "runs": rs,
        }
        for name, rs in runs.items()
    }


def _cores() -> int:
    from edge.runners import default_threads

    return default_threads()


def _ratios(rows: dict[str, dict], decode_1t: float, decode_all: float) -> dict:
    """The stream scheme against the Keras idiom (no cache) and against the decode limit of the cores: the
    cores times one thread's rate, and the rate measured with one process per core decoding at once."""
    stream, keras = rows["ours, stream"], rows[KERAS]
    cores = _cores()
    return {
        "stream_over_keras_epoch1": round(stream["epoch1_cold_ips"] / keras["epoch1_cold_ips"], 2),
        "stream_over_keras_steady": round(stream["steady_ips"] / keras["steady_ips"], 2),
        "stream_steady_over_decode_limit": round(stream["steady_ips"] / (cores * decode_1t), 2),
        "decode_limit_ips": round(cores * decode_1t, 1),
        "stream_steady_over_measured_decode_limit": round(stream["steady_ips"] / decode_all, 2),
        "measured_decode_limit_ips": round(decode_all, 1),
        "targets": {"stream_over_keras_epoch1": 1.0, "stream_over_keras_steady": 1.2},
    }


def _print_table(rows: dict[str, dict], idg: dict, raw: dict[str, dict]) -> None:
    head = [
        "pipeline",
        "epoch 1 (cold) img/s",
        "steady img/s",
        "steady CPU us/img",
        "runs (epoch 1 / steady)",
    ]
    table = [head]
    for name, row in rows.items():
        runs = " ".join(f"{x['epoch1_cold_ips']:.0f}/{x['steady_ips']:.0f}" for x in row["runs"])
        cpu = statistics.median(x["steady_cpu_us_per_image"] for x in row["runs"])
        table.append(
            [name, f"{row['epoch1_cold_ips']:,.0f}", f"{row['steady_ips']:,.0f}", f"{cpu:.0f}", runs]
        )
    table.append(
        ["ImageDataGenerator", f"{idg['epoch1_cold_ips']:,.0f}", f"{idg['median_ips']:,.0f}", "", ""]
    )
    for name, one in raw.items():
        table.append([name, f"{one['ips']:,.0f}", f"{one['ips']:,.0f}", "", f"{one['seconds']:.2f} s"])
    print()
    print(_table(table))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="images to generate (default 2000)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per pipeline and round (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians (default 3)")
    parser.add_argument("--quick", action="store_true", help="400 images, 3 epochs, 2 rounds")
    parser.add_argument("--data", type=Path, default=None, help="cache folder for the generated images")
    parser.add_argument("--out", type=Path, default=RESULTS / "input_pipeline.json")
    return parser


def _machine(load_before: float | None) -> dict:
    from training._tf import tf

    return {
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "load_average_1m": {"before": load_before, "after": _load()},
    }


def _summary(ratios: dict, load_before: float | None) -> str:
    cores = _cores()
    return (
        f"stream / Keras idiom (no cache): epoch 1 {ratios['stream_over_keras_epoch1']}x (target >= 1.0), "
        f"steady {ratios['stream_over_keras_steady']}x (target >= 1.2); stream steady / decode limit "
        f"({cores} x 1 thread {ratios['decode_limit_ips']:,.0f} img/s): "
        f"{ratios['stream_steady_over_decode_limit']}x, "
        f"(measured, {cores} processes at once {ratios['measured_decode_limit_ips']:,.0f} img/s): "
        f"{ratios['stream_steady_over_measured_decode_limit']}x; load average {load_before} -> {_load()}"
    )


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print a table and write the JSON results. Returns the results dict."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.rounds = (
            min(args.images, 400),
            min(args.epochs, 3),
            min(args.rounds, 2),
        )
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (epoch 1 is cold, the rest give the steady state)")

    load_before = _load()
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

    raw = {
        "raw PIL decode, 1 thread": bench_pil(files, args.size),
        "edge decode_file, 1 thread": bench_decode_file(files, args.size),
        f"edge decode_file, {_cores()} processes at once": bench_decode_processes(files, args.size, _cores()),
    }
    pil, contract_1t, contract_all = raw.values()
    print("; ".join(f"{name}: {one['ips']} img/s" for name, one in raw.items()))
    warm_up_tf()
    idg = bench_idg(folder, args.size)
    rows = run_rounds(folder, args.size, args.epochs, args.rounds)
    ratios = _ratios(rows, contract_1t["ips"], contract_all["ips"])
    results = {
        "images": len(files),
        "image_size": args.size,
        "bytes_on_disk": disk,
        "batch_size": BATCH,
        "epochs_per_run": args.epochs,
        "rounds": args.rounds,
        "page_cache": "warm (every file read once before measuring)",
        "machine": _machine(load_before),
        "tf_runtime": "started before measuring (as in a training run)",
        "raw_pil_1_thread": pil,
        "decode_file_1_thread": contract_1t,
        "decode_file_processes_at_once": contract_all,
        "image_data_generator": idg,
        "pipelines": rows,
        "ratios": ratios,
    }
    _print_table(rows, idg, raw)
    print("\n" + _summary(ratios, load_before))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
