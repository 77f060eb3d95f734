"""``shipyard-edge``: run, benchmark and check a model on a device with no TensorFlow.

Verbs::

    shipyard-edge predict MODEL IMAGE... [--variant V] [--top-k K] [--labels FILE] [--batch-size N] [--json]
    shipyard-edge bench MODEL [--runs N] [--min-time S] [--threads T] [--batch-size N] [--mode M] [--json]
    shipyard-edge eval PACKAGE DATA_DIR [--variant V] [--split S] [--all-images] [--batch-size N] [--json]

MODEL is a model package (a folder with ``manifest.json``) or a bare ``.tflite``/``.onnx`` file. Every
error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelFileError, PackageError, ShipyardError
from edge.manifest import InputContract
from edge.runners import Runner
from edge.stdio import quiet_native_stderr
from edge.tables import format_table

EXIT_ERROR = 2


# ---------------------------------------------------------------------------------------------- helpers
def _number(cast: type, low: float, *, strict: bool) -> Any:
    """An argparse type: ``cast`` the text, finite, and above ``low`` (``strict``) or at least ``low``."""
    kind = "an integer" if cast is int else "a number"
    bound = f"> {low:g}" if strict else f">= {low:g}"

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"{value} must be {bound}")
        return value

    return parse


_positive_int = _number(int, 1, strict=False)
_non_negative_int = _number(int, 0, strict=False)
_non_negative_float = _number(float, 0, strict=False)
_positive_float = _number(float, 0, strict=True)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=_json_default))


def _show(data: dict[str, Any], as_json: bool, print_table: Callable[[dict[str, Any]], None]) -> int:
    """Print a verb's result as JSON or as the verb's tables; return exit status 0."""
    if as_json:
        _print_json(data)
    else:
        print_table(data)
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _table(rows: list[list[str]], header: list[str], right: set[int] | None = None) -> str:
    align = "".join("r" if i in (right or set()) else "l" for i in range(len(header)))
    return format_table(header, rows, align)


# ---------------------------------------------------------------------------------------------- labels
def read_label_file(path: str | Path) -> list[str]:
    """Read one label per line (blank lines at the end ignored).

    Raises:
        ModelFileError: the file is missing, unreadable, or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"label file {path} does not exist; pass a text file with one label per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(
            f"label file {path} cannot be read as UTF-8 text ({exc}); save it as UTF-8"
        ) from exc
    while lines and not lines[-1].strip():
        lines.pop()
    labels = [line.strip() for line in lines]
    if not labels:
        raise ModelFileError(f"label file {path} is empty; write one label per line, in class-index order")
    return labels


def _onnx_labels(runner: Runner) -> list[str] | None:
    raw = getattr(runner, "metadata", {}).get("labels")
    if not raw:
        return None
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return [str(x) for x in labels] if isinstance(labels, list) else None


def _tflite_labels(runner: Runner) -> list[str] | None:
    from edge.metadata import read_tflite_metadata

    if runner.path is None:
        return None
    meta = read_tflite_metadata(Path(runner.path).read_bytes())
    return meta.labels if meta is not None else None


#: Where a bare model file of each format keeps its labels, and how the CLI names that source.
EMBEDDED_LABELS = {
    "onnx": ("onnx metadata", _onnx_labels),
    "tflite": ("tflite metadata", _tflite_labels),
}


def _embedded_labels(runner: Runner) -> tuple[list[str], str] | None:
    source, read = EMBEDDED_LABELS.get(runner.format, ("", None))
    labels = read(runner) if read is not None else None
    return (labels, source) if labels else None


def check_classifier_outputs(runner: Runner, where: str) -> None:
    """Refuse a model whose output is not one ``[N, classes]`` score tensor (a detector, a segmenter...).

    The scores are the output named ``probabilities``, or the only output.

    Raises:
        ModelFileError: one line naming the outputs, and that ``bench`` still works on the model.
    """
    specs = list(runner.output_specs)
    named = [s for s in specs if s.name == "probabilities"]
    scores = named[0] if named else (specs[0] if len(specs) == 1 else None)
    if scores is not None and len(scores.shape) == 2:
        return
    described = "; ".join(
        f"{s.name} {s.dtype.name} {tuple('N' if d is None else d for d in s.shape)}" for s in specs
    )
    raise ModelFileError(
        f"{where} is not an image classifier: predict needs one [N, classes] score output, it has "
        f"{len(specs)} output(s): {described}; `shipyard-edge bench` still works on it"
    )


# ---------------------------------------------------------------------------------------------- opening
class OpenedModel:
    """A runner with what the CLI needs around it: labels, input contract, where they came from."""

    def __init__(
        self,
        runner: Runner,
        contract: InputContract,
        labels: list[str] | None,
        labels_source: str,
        variant: str | None,
        source: str,
    ):
        self.runner, self.contract, self.labels = runner, contract, labels
        self.labels_source, self.variant, self.source = labels_source, variant, source


def open_model(
    model: str | Path,
    *,
    variant: str | None = None,
    threads: int | None = None,
    labels_file: str | None = None,
) -> OpenedModel:
    """Open a package (verified variant) or a bare model file for prediction.

    Raises:
        PackageError, IntegrityError, ModelFileError: the model cannot be opened or used on RGB images,
            or a label file is missing or does not fit.
    """
    from edge.package import open_variant_runner
    from edge.runners import open_runner

    path = Path(model)
    if path.is_dir():
        if labels_file is not None:
            raise PackageError(f"--labels is for bare model files; the package {path} carries its own labels")
        runner, manifest, key = open_variant_runner(path, variant, num_threads=threads)
        return OpenedModel(runner, manifest.input, list(manifest.labels), "manifest", key, str(path))
    if variant is not None:
        raise ModelFileError(f"--variant {variant!r} needs a model package; {path} is a single model file")
    labels = read_label_file(labels_file) if labels_file is not None else None
    runner = open_runner(path, num_threads=threads)
    try:
        runner.check_image_input()
        if runner.height is None or runner.width is None:
            raise ModelFileError(
                f"{path} has an open input height/width {tuple(runner.input_shape)}; shipyard-edge needs a fixed "
                "input size to resize images to: export the model with a fixed height and width"
            )
        check_classifier_outputs(runner, str(path))
        contract = InputContract(height=runner.height, width=runner.width)
        source = "file" if labels is not None else "indices"
        if labels is None and (embedded := _embedded_labels(runner)) is not None:
            labels, source = embedded
        return OpenedModel(runner, contract, labels, source, None, str(path))
    except Exception:
        runner.close()
        raise


# ---------------------------------------------------------------------------------------------- predict
def _looks_like_probabilities(scores: np.ndarray) -> bool:
    if scores.size == 0:
        return True
    sums = scores.sum(axis=1)
    return bool(scores.min() >= -1e-6 and scores.max() <= 1 + 1e-6 and np.all(np.abs(sums - 1) < 0.1))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def predict_files(
    opened: OpenedModel, images: Sequence[str | Path], *, top_k: int = 5, batch_size: int | None = None
) -> dict[str, Any]:
    """Decode images with the model's contract, run them in batches and return the top-k of each.

    Args:
        opened: from :func:`open_model`.
        images: image files.
        top_k: labels per image (at most the number of classes).
        batch_size: images per inference; ``None`` runs all in one batch (or the model's fixed batch).

    Returns:
        A JSON-ready dict: model, variant, input, labels source, and per image its top-k.

    Raises:
        ImageError: an image is missing, corrupt or of an unsupported format.
        ModelFileError: the label file's length does not fit the model's outputs, or the runtime fails.
    """
    from edge.preprocess import decode_file

    runner = opened.runner
    scores = _run_in_batches(runner, [decode_file(p, opened.contract) for p in images], batch_size)
    classes = scores.shape[1]
    labels = opened.labels
    if labels is not None and len(labels) != classes:
        raise ModelFileError(
            f"the labels ({opened.labels_source}) name {len(labels)} classes but the model outputs {classes}; "
            "pass a label file with one line per output class"
        )
    normalized = "probabilities"
    if not _looks_like_probabilities(scores):
        scores, normalized = _softmax(scores), "softmax of the model's outputs (they were not probabilities)"
    k = min(top_k, classes)
    return {
        "model": opened.source,
        "variant": opened.variant,
        "format": runner.format,
        "input": {
            "height": opened.contract.height,
            "width": opened.contract.width,
            "dtype": runner.input_dtype.name,
            "quantization": list(runner.input_quant) if runner.input_quant else None,
        },
        "labels_source": opened.labels_source,
        "scores": normalized,
        "predictions": [
            {"image": str(path), "top_k": _top_k(row, k, labels)}
            for path, row in zip(images, scores, strict=True)
        ],
    }


def _run_in_batches(runner: Runner, pixels: list[np.ndarray], batch_size: int | None) -> np.ndarray:
    """The model's scores for decoded images, ``N x classes`` float32, in batches of ``batch_size``."""
    step = batch_size or len(pixels)
    if runner.max_batch:
        step = min(step, runner.max_batch)
    outputs = [runner.predict(np.stack(pixels[i : i + step])) for i in range(0, len(pixels), step)]
    scores = np.concatenate(outputs).astype(np.float32)
    if scores.ndim != 2:
        scores = scores.reshape(len(pixels), -1)
    return scores


def _top_k(row: np.ndarray, k: int, labels: list[str] | None) -> list[dict[str, Any]]:
    """The ``k`` highest scores of one image, best first (ties in class order)."""
    order = np.argsort(-row, kind="stable")[:k]
    return [
        {
            "rank": r + 1,
            "index": int(i),
            "label": labels[i] if labels is not None else str(int(i)),
            "probability": float(row[i]),
        }
        for r, i in enumerate(order)
    ]


def _print_predictions(result: dict[str, Any]) -> None:
    inp = result["input"]
    variant = f" variant {result['variant']}" if result["variant"] else ""
    print(
        f"model {result['model']}{variant} ({result['format']}, {inp['height']}x{inp['width']} {inp['dtype']} input), "
        f"labels from {result['labels_source']}"
    )
    if result["scores"] != "probabilities":
        print(f"scores: {result['scores']}")
    rows = []
    for pred in result["predictions"]:
        for item in pred["top_k"]:
            rows.append(
                [
                    pred["image"] if item["rank"] == 1 else "",
                    str(item["rank"]),
                    item["label"],
                    f"{item['probability']:.4f}",
                ]
            )
    print(_table(rows, ["image", "rank", "label", "probability"], right={1, 3}))


def cmd_predict(args: argparse.Namespace) -> int:
    opened = open_model(args.model, variant=args.variant, threads=args.threads, labels_file=args.labels)
    try:
        result = predict_files(opened, args.images, top_k=args.top_k, batch_size=args.batch_size)
    finally:
        opened.runner.close()
    return _show(result, args.json, _print_predictions)


# ---------------------------------------------------------------------------------------------- bench
def _print_bench(r: dict[str, Any]) -> None:
    variant = f" variant {r['variant']}" if r["variant"] else ""
    print(
        f"model {r['model']}{variant} ({r['format']}), {r['threads']} thread(s), batch {r['batch_size']}, mode {r['mode']}"
    )
    for spec in r["inputs"]:
        q = f" quant {spec['quantization']}" if spec["quantization"] else ""
        print(f"  input  {spec['name']}: {spec['dtype']} {tuple(spec['shape'])}{q}")
    for spec in r["outputs"]:
        print(f"  output {spec['name']}: {spec['dtype']} {tuple(spec['shape'])}")
    load = f"{r['load_ms']:.2f} ms" if r["load_ms"] is not None else "n/a"
    delta = f"{r['rss_delta_mib']:+.1f} MiB" if r["rss_delta_mib"] is not None else "n/a"
    rows = [
        ["model load", load],
        ["first inference", f"{r['first_ms']:.3f} ms"],
        ["warm-up", f"{r['warmup_runs']} runs, mean {r['warmup_mean_ms']:.3f} ms"],
        ["timed runs", f"{r['runs']} in {r['total_s']:.2f} s"],
        ["p50", f"{r['p50_ms']:.3f} ms"],
        ["p90", f"{r['p90_ms']:.3f} ms"],
        ["p99", f"{r['p99_ms']:.3f} ms"],
        ["mean +- std", f"{r['mean_ms']:.3f} +- {r['std_ms']:.3f} ms"],
        ["min / max", f"{r['min_ms']:.3f} / {r['max_ms']:.3f} ms"],
        ["throughput", f"{r['throughput_ips']:.1f} images/s ({r['inferences_per_s']:.1f} inferences/s)"],
        ["peak RSS (ru_maxrss)", f"{r['peak_rss_mib']:.1f} MiB"],
        ["RSS delta since load", delta],
    ]
    print(_table(rows, ["metric", "value"]))


def cmd_bench(args: argparse.Namespace) -> int:
    from edge.bench import bench_model

    result = bench_model(
        args.model,
        variant=args.variant,
        threads=args.threads,
        batch_size=args.batch_size,
        runs=args.runs,
        min_time=args.min_time,
        max_time=args.max_time,
        warmup_runs=args.warmup,
        mode=args.mode,
    )
    return _show(result.to_dict(include_times=args.times), args.json, _print_bench)


# ---------------------------------------------------------------------------------------------- eval
def _print_eval(r: dict[str, Any]) -> None:
    print(
        f"package {r['package']} variant {r['variant']} ({r['variant_file']}), data {r['data_dir']} "
        f"(split {r['split']}): {r['images']} images, {r['ms_per_image']:.2f} ms/image"
    )
    print(f"scored: {r['scope']}")
    if r["skipped"]:
        first = r["skipped"][0]
        print(f"skipped {len(r['skipped'])} file(s), first: {first['path']}: {first['reason']}")
    if r["unknown_classes"]:
        named = ", ".join(f"{k} ({v})" for k, v in sorted(r["unknown_classes"].items()))
        print(f"ignored folders that are not labels of the model: {named}")
    print(
        f"accuracy {r['accuracy']:.4f}   macro F1 {r['macro']['f1']:.4f}   weighted F1 {r['weighted']['f1']:.4f}"
    )
    rows = [
        [c["label"], f"{c['precision']:.4f}", f"{c['recall']:.4f}", f"{c['f1']:.4f}", str(c["support"])]
        for c in r["per_class"]
    ]
    m = r["macro"]
    rows.append(
        ["macro avg", f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", str(r["images"])]
    )
    print(_table(rows, ["label", "precision", "recall", "f1", "support"], right={1, 2, 3, 4}))
    print("confusion matrix (rows: true label, columns: predicted)")
    labels = r["labels"]
    conf_rows = [[labels[i], *(str(v) for v in row)] for i, row in enumerate(r["confusion"])]
    print(_table(conf_rows, ["", *labels], right=set(range(1, len(labels) + 1))))
    ref = r["reference"]
    if ref["top1_agreement"] is not None:
        print(
            f"reference: {ref['matched']} of {ref['total']} reference images matched; top-1 agreement "
            f"{ref['top1_agreement']:.4f}; max |p - p_ref| {ref['max_abs_diff']:.4g}; mean {ref['mean_abs_diff']:.4g}"
            + (f"; {ref['label_mismatches']} label mismatch(es)" if ref["label_mismatches"] else "")
        )
    else:
        print(f"reference: {ref['message']}")


def cmd_eval(args: argparse.Namespace) -> int:
    from edge.evaluate import evaluate_package

    if not Path(args.package).is_dir():
        raise PackageError(
            f"{args.package} is not a model package folder; eval needs a package (with manifest.json)"
        )
    result = evaluate_package(
        args.package,
        args.data_dir,
        variant=args.variant,
        threads=args.threads,
        batch_size=args.batch_size,
        split=args.split,
        all_images=args.all_images,
    )
    return _show(result.to_dict(), args.json, _print_eval)


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``shipyard-edge`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="shipyard-edge",
        description="Run, benchmark and check a Shipyard model on this device (no TensorFlow needed).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{predict,bench,eval}")
    _add_predict_parser(sub)
    _add_bench_parser(sub)
    _add_eval_parser(sub)
    return parser


def _add_common(p: argparse.ArgumentParser) -> None:
    """The options every verb takes: --variant, --threads, --json, --verbose."""
    p.add_argument("--variant", help="package variant, e.g. int8.tflite, fp32.tflite, model.onnx")
    p.add_argument("--threads", type=_positive_int, help="inference threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--verbose", action="store_true", help="keep the runtimes' own log lines on stderr")


def _add_predict_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="top-k labels of images")
    p.add_argument("model", help="a model package folder or a .tflite/.onnx file")
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, WebP, BMP)")
    p.add_argument("--top-k", type=_positive_int, default=5, help="labels per image (default 5)")
    p.add_argument("--labels", help="label file for a bare model: one label per line, in class order")
    p.add_argument(
        "--batch-size", type=_positive_int, help="images per inference (default: all in one batch)"
    )
    _add_common(p)
    p.set_defaults(func=cmd_predict)


def _add_bench_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="latency, throughput and memory, like TFLite's benchmark_model")
    p.add_argument("model", help="a model package folder or a .tflite/.onnx file")
    p.add_argument(
        "--runs", type=_positive_int, default=50, help="at least this many timed runs (default 50)"
    )
    p.add_argument(
        "--min-time", type=_non_negative_float, default=1.0, help="and at least this many seconds (1.0)"
    )
    p.add_argument(
        "--max-time", type=_positive_float, default=150.0, help="stop after this many seconds (150)"
    )
    p.add_argument(
        "--warmup",
        type=_non_negative_int,
        default=5,
        help="warm-up runs after the first inference (default 5)",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=1, help="batch size of every input (default 1)"
    )
    p.add_argument(
        "--mode",
        choices=("invoke", "predict"),
        default="invoke",
        help="invoke: time the runtime alone, inputs set once (default); predict: the runner's full predict",
    )
    p.add_argument("--times", action="store_true", help="with --json, include every run's time")
    _add_common(p)
    p.set_defaults(func=cmd_bench)


def _add_eval_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="accuracy and agreement with the package's reference, on this device")
    p.add_argument("package", help="a model package folder")
    p.add_argument("data_dir", help="class folders, or train/ val/ test/ holding class folders")
    p.add_argument("--split", help="with split folders: test (default when present), val, train or all")
    p.add_argument(
        "--all-images",
        action="store_true",
        help="score every image found, not only the package's held-out test split (the output says so)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per inference (default 32)")
    _add_common(p)
    p.set_defaults(func=cmd_eval)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``shipyard-edge``; returns the exit status (2 for every handled error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with quiet_native_stderr(not args.verbose):  # LiteRT prints INFO lines to fd 2
            return int(args.func(args))
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as Unix tools do
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ShipyardError, OSError) as exc:
        message = " ".join(str(exc).split())
        print(f"shipyard-edge {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
