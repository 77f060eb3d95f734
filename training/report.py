"""The model report: one self-contained HTML page per package (``shipyard report PACKAGE``).

The page holds the model card (base, input, classes, training settings, dataset sizes and
fingerprint), the metrics, every picture of :data:`training.visualize.PLOTS` (PNG embedded as base64)
and, when ``shipyard optimize`` ran, its variant table (read from ``report.json``). It loads nothing
from anywhere: a Content-Security-Policy forbids every request except ``data:`` images, and a small
inline script records images that failed to load and script errors into attributes of ``<body>``
(``data-images``, ``data-images-loaded``, ``data-errors``), which a headless browser's
``--dump-dom`` can read.

The page is ``<package>/index.html``: ``report.md``/``report.html``/``report.json`` in the package
root belong to the optimization report.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.errors import IntegrityError
from edge.manifest import Manifest, read_manifest

PAGE_FILE = "index.html"
OPTIMIZATION_JSON = "report.json"
GROUPS = {
    "data": "The data",
    "network": "The network",
    "training": "The training",
    "explanations": "Explanations",
}
#: The media type of each picture file type (``PlotSpec.suffix``).
MEDIA_TYPES = {"png": "image/png", "gif": "image/gif"}

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

# Runs first: collects errors (script errors, failed resources, CSP violations, console.error) and,
# on load, counts the images that decoded; the results land on <body> for --dump-dom to read.
_RECORDER = """
(function () {
  var errors = [];
  function note(text) { errors.push(String(text).slice(0, 300)); }
  window.addEventListener('error', function (e) {
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) { note('failed to load ' + (t.tagName || '') + ' ' + String(t.src || t.href).slice(0, 80)); }
    else { note('error: ' + (e.message || e)); }
  }, true);
  window.addEventListener('unhandledrejection', function (e) { note('unhandled rejection: ' + e.reason); });
  document.addEventListener('securitypolicyviolation', function (e) { note('blocked ' + e.blockedURI + ' (' + e.violatedDirective + ')'); });
  var original = console.error;
  console.error = function () { note('console.error: ' + Array.prototype.join.call(arguments, ' ')); return original.apply(console, arguments); };
  window.addEventListener('load', function () {
    var images = document.images, loaded = 0, broken = [];
    for (var i = 0; i < images.length; i++) {
      if (images[i].complete && images[i].naturalWidth > 0) { loaded++; } else { broken.push(images[i].alt || String(i)); }
    }
    var body = document.body;
    body.setAttribute('data-images', String(images.length));
    body.setAttribute('data-images-loaded', String(loaded));
    body.setAttribute('data-broken-images', broken.join(','));
    body.setAttribute('data-errors', JSON.stringify(errors));
    body.setAttribute('data-check', 'done');
  });
})();
"""

_STYLE = """
body{font-family:system-ui,-apple-system,sans-serif;margin:0;color:#1f2328;background:#fff}
header{background:#0d1117;color:#f0f6fc;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#9198a1;font-size:13px}nav{font-size:13px;margin-top:8px}
nav a{color:#58a6ff;margin-right:14px;text-decoration:none}main{padding:8px 28px 40px;max-width:1280px}
h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:32px}h3{margin:22px 0 4px;font-size:16px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #d0d7de;padding:3px 8px;
text-align:right;vertical-align:top}th{background:#f6f8fa}td.l,th.l{text-align:left}
.card td:first-child{font-weight:600;text-align:left;background:#f6f8fa;white-space:nowrap}.card td{text-align:left}
figure{margin:6px 0 18px}figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{font-size:12px;color:#59636e;margin-top:2px}.note{color:#9a6700}.skip{color:#9a6700;font-size:13px}
.fail{color:#cf222e;font-size:13px}.mono{font-family:ui-monospace,monospace;font-size:12px}
.s-passed{color:#1a7f37}.s-failed_gate{color:#bf8700}.s-failed_export{color:#cf222e}.s-not_checked{color:#6e7781}
details{margin:6px 0}summary{cursor:pointer;font-size:13px;color:#0969da}.good{color:#1a7f37}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _pct(value: Any) -> str:
    return "" if not isinstance(value, int | float) else f"{100 * value:.2f}%"


def _num(value: Any, fmt: str = ".4f") -> str:
    return "" if not isinstance(value, int | float) else format(value, fmt)


def _table(
    headers: list[str], rows: list[list[Any]], *, left: int = 1, cls: str = "", raw: bool = False
) -> str:
    """An HTML table; the first ``left`` columns left-aligned; cells escaped unless ``raw``."""
    head = "".join(
        f"<th class='l'>{_e(h)}</th>" if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = str(cell) if raw else _e(cell)
            cells.append(f"<td class='l'>{text}</td>" if i < left else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _card(rows: list[tuple[str, str]]) -> str:
    """A two-column key/value table; values are HTML already."""
    return (
        "<table class='card'>"
        + "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in rows)
        + "</table>"
    )


# ---------------------------------------------------------------------------------------------- sections


def model_card(manifest: Manifest) -> str:
    """The model card: identity, base, input, classes, training settings and the dataset."""
    cfg = manifest.training_config or {}
    data = cfg.get("data", {})
    augment = {k: v for k, v in (data.get("augment") or {}).items() if v}
    rows = [
        *_model_rows(manifest),
        ("Training", _training_text(cfg.get("train", {}), manifest.metrics or {})),
        (
            "Augmentation",
            _e(", ".join(f"{k} {v}" if v is not True else k for k, v in augment.items()) or "none"),
        ),
    ]
    ds = manifest.dataset
    if ds is not None:
        rows += [
            ("Dataset", f"<span class='mono'>{_e(ds.path)}</span>"),
            ("Fingerprint", f"<span class='mono'>{_e(ds.fingerprint)}</span>"),
            (
                "Splits",
                ", ".join(f"{_e(k)} {v:,}" for k, v in ds.split_counts.items())
                + f"; {ds.skipped_files} file(s) skipped; batch size {ds.batch_size}",
            ),
            ("Loading", f"{_e(ds.loading)}: {_e(ds.loading_reason)}"),
        ]
    out = _card(rows)
    if ds is not None and ds.class_counts:
        out += _class_counts_details(ds.class_counts, manifest.labels)
    return out


def _model_rows(manifest: Manifest) -> list[tuple[str, str]]:
    """The card's rows about the model itself: tag, base, parameters, input and classes."""
    base = manifest.base_model or {}
    params = base.get("parameters") or {}
    inp = manifest.input
    return [
        (
            "Model",
            f"<b>{_e(manifest.tag)}</b>, created {_e(manifest.created.strftime('%Y-%m-%d %H:%M UTC'))}",
        ),
        (
            "Base",
            f"{_e(base.get('name'))}, weights {_e(base.get('weights'))}, cut at {_e(base.get('cut_at') or 'the default')}, "
            f"freeze {_e(base.get('freeze'))}"
            + (f", alpha {_e(base.get('alpha'))}" if base.get("alpha") else ""),
        ),
        (
            "Parameters",
            f"{params.get('total', 0):,} ({params.get('trainable', 0):,} trainable, "
            f"{params.get('non_trainable', 0):,} frozen)"
            if params
            else "",
        ),
        (
            "Input",
            f"{inp.height}x{inp.width}x{inp.channels} {inp.dtype} {inp.color}, {inp.resize} resize, {inp.layout}",
        ),
        ("Classes", f"{manifest.num_classes}: " + ", ".join(_e(x) for x in manifest.labels)),
    ]


def _training_text(train: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The card's training row: epochs run per phase, optimizer, loss, fine-tuning, early stopping, time."""
    ft = train.get("fine_tune") or {}
    phases = metrics.get("phase_epochs") or {}
    return (
        f"{_e(metrics.get('epochs'))} epochs run ("
        + ", ".join(f"{_e(k)} {_e(v)}" for k, v in phases.items())
        + f") of {_e(train.get('epochs'))} configured; optimizer {_e(train.get('optimizer'))}, learning rate "
        f"{_e(train.get('learning_rate'))}, loss {_e(train.get('loss'))}"
        + (f" (label smoothing {_e(train.get('label_smoothing'))})" if train.get("label_smoothing") else "")
        + (
            f"; fine-tuning {_e(ft.get('epochs'))} epochs of the top {_e(ft.get('unfreeze_layers'))} base layers "
            f"at {_e(ft.get('learning_rate'))}"
            if ft.get("enabled")
            else "; no fine-tuning"
        )
        + f"; early stopping patience {_e(train.get('early_stopping_patience'))}, seed {_e(train.get('seed'))}"
        + (
            f"; {_num(metrics.get('train_seconds'), '.1f')} s"
            if metrics.get("train_seconds") is not None
            else ""
        )
    )


def _class_counts_details(class_counts: dict[str, dict[str, int]], labels: list[str]) -> str:
    """A folded table of images per class and split."""
    splits = [s for s in class_counts if sum(class_counts[s].values())]
    body = [[label, *(class_counts[s].get(label, 0) for s in splits)] for label in labels]
    body.append(["total", *(sum(class_counts[s].values()) for s in splits)])
    return (
        "<details><summary>Images per class and split</summary>"
        + _table(["class", *splits], body)
        + "</details>"
    )


def metrics_section(package: Path, manifest: Manifest) -> str:
    """Headline metrics against the majority baseline, and the per-class table (from ``eval/metrics.json``)."""
    path = package / "eval" / "metrics.json"
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        summary = manifest.metrics or {}
        rows = [[k, _num(v)] for k, v in summary.items() if isinstance(v, int | float)]
        return "<p class='skip'>eval/metrics.json is missing; the manifest's numbers:</p>" + _table(
            ["metric", "value"], rows
        )
    model, base = payload["metrics"], payload.get("majority_baseline", {})
    split = manifest.metrics.get("evaluated_on", "test")
    keys = ["accuracy", *[k for k in model if k.startswith("top") and k.endswith("_accuracy")], "loss"]
    rows = [
        [k, _num(model.get(k)), _num(base.get(k)), _num((model.get(k) or 0) - (base.get(k) or 0), "+.4f")]
        for k in keys
    ]
    for avg in ("macro", "weighted"):
        for m in ("precision", "recall", "f1"):
            mine, theirs = model.get(avg, {}).get(m), base.get(avg, {}).get(m)
            rows.append([f"{avg} {m}", _num(mine), _num(theirs), _num((mine or 0) - (theirs or 0), "+.4f")])
    per_class = [
        [name, _num(v["precision"], ".3f"), _num(v["recall"], ".3f"), _num(v["f1"], ".3f"), v["support"]]
        for name, v in model.get("per_class", {}).items()
    ]
    return (
        f"<p>On the {_e(split)} split ({_e(model.get('count'))} images), against always predicting the most "
        "frequent training class:</p>"
        + _table(["metric", "model", "majority baseline", "difference"], rows)
        + "<h3>Per class</h3>"
        + _table(["class", "precision", "recall", "F1", "support"], per_class)
    )


def ensemble_section(package: Path) -> str:
    """The ensemble beside its members (``eval/ensemble.json`` of ``shipyard ensemble``), or ``""``."""
    try:
        payload = json.loads((package / "eval" / "ensemble.json").read_text())
        metrics = payload["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    names = list(metrics)
    keys = ["accuracy", "loss"] + [f"{avg} {m}" for avg in ("macro", "weighted") for m in ("precision", "recall", "f1")]

    def value(name: str, key: str) -> str:
        avg, _, m = key.partition(" ")
        return _num(metrics[name].get(avg, {}).get(m) if m else metrics[name].get(key))

    rows = [[key, *(value(n, key) for n in names)] for key in keys]
    return (
        f"<h3>The ensemble and its {len(names) - 1} members</h3><p>Averaged probabilities against each member on "
        "the same test images.</p>" + _table(["metric", *names], rows)
    )


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    media = MEDIA_TYPES.get(path.suffix.lstrip(".").lower(), "image/png")
    return f"<img alt='{_e(alt)}' src='data:{media};base64,{data}'>"


def _layer_details(summary: dict[str, Any]) -> str:
    layers = summary.get("layers") or []
    if not layers:
        return ""
    rows = [
        [r["name"], r["type"], r["output_shape"], f"{r['params']:,}", "yes" if r["trainable"] else "no"]
        for r in layers
    ]
    return (
        f"<details><summary>Layer table ({len(layers)} layers)</summary>"
        + _table(["layer", "type", "output shape", "parameters", "trainable"], rows, left=3)
        + "</details>"
    )


def pictures_section(package: Path, manifest: Manifest, rows: list[dict[str, Any]]) -> tuple[str, int]:
    """Every picture, grouped (data, network, training, explanations), each embedded as a base64 image.

    Returns:
        (the HTML, the number of images embedded).
    """
    from edge.manifest import verify_file

    out, embedded = [], 0
    for group, heading in GROUPS.items():
        items = [r for r in rows if r.get("group") == group]
        if not items:
            continue
        out.append(f"<h2 id='{group}'>{_e(heading)}</h2>")
        for r in items:
            out.append(f"<h3 id='plot-{_e(r['kind'])}'>{_e(r.get('title') or r['kind'])}</h3>")
            if r.get("status") != "ok":
                cls = "skip" if r.get("status") == "skipped" else "fail"
                out.append(f"<p class='{cls}'>Not made ({_e(r.get('status'))}): {_e(r.get('reason'))}</p>")
                continue
            rel = r.get("file") or ""
            try:
                path = verify_file(package, manifest, rel) if rel in manifest.files else package / rel
                if not path.is_file():
                    raise IntegrityError(f"{rel} is missing")
                image = _img(path, r["kind"])
            except IntegrityError as exc:
                out.append(f"<p class='fail'>Cannot show {_e(rel)}: {_e(exc)}</p>")
                continue
            embedded += 1
            note = f" <span class='note'>{_e(r['note'])}</span>" if r.get("note") else ""
            out.append(f"<figure>{image}<figcaption>{_e(r.get('description'))}{note}</figcaption></figure>")
            if r["kind"] == "structure":
                out.append(_layer_details(r.get("summary") or {}))
    return "\n".join(out), embedded


def optimization_section(package: Path) -> str | None:
    """The variant table of ``shipyard optimize`` (from ``report.json``), or ``None`` when there is none."""
    path = package / OPTIMIZATION_JSON
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
        variants = report["variants"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"<p class='fail'>{OPTIMIZATION_JSON} could not be read ({_e(type(exc).__name__)}: {_e(exc)}).</p>"
    ref = report.get("reference") or {}
    rows = []
    for v in variants:
        m = v.get("metrics") or {}
        lat = (v.get("latency_ms") or {}).get("1") or (v.get("latency_ms") or {}).get("all") or {}
        status = _e(v.get("status"))
        rows.append(
            [
                _e(v.get("variant")),
                f"<span class='s-{status}'>{status}</span>",
                _e(f"{v['bytes']:,}" if isinstance(v.get("bytes"), int) else ""),
                _e(_pct(m.get("accuracy"))),
                _e(_num(m.get("macro_f1"))),
                _e(_pct(m.get("agreement"))),
                _e(_num(m.get("max_prob_diff"), ".2e")),
                _e(_num(lat.get("p50"), ".2f")),
                _e(v.get("reason") or ""),
            ]
        )
    passed = sum(1 for v in variants if v.get("status") == "passed")
    ref_bytes = f"{ref['bytes']:,}" if isinstance(ref.get("bytes"), int) else "?"
    head = (
        f"<p>From <span class='mono'>{OPTIMIZATION_JSON}</span> ({_e(report.get('created'))}): {passed} of "
        f"{len(variants)} variants passed their gates. Keras reference: accuracy {_pct(ref.get('accuracy'))}, "
        f"macro F1 {_num(ref.get('macro_f1'))} on {_e(ref.get('count'))} images, "
        f"{_e(ref_bytes)} bytes. "
        "The full optimization report with its charts is <span class='mono'>report.html</span> beside this page.</p>"
    )
    table = _table(
        [
            "variant",
            "status",
            "bytes",
            "accuracy",
            "macro F1",
            "agreement",
            "max |Δp|",
            "p50 ms (1 thread)",
            "reason",
        ],
        rows,
        left=2,
        raw=True,
    )
    notes = report.get("notes") or []
    extra = ("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>") if notes else ""
    return head + table + extra


def render_page(package: Path, manifest: Manifest, rows: list[dict[str, Any]]) -> tuple[str, int]:
    """The whole page as a string.

    Args:
        package: the package folder (pictures, ``eval/metrics.json`` and ``report.json`` are read from it).
        manifest: its manifest.
        rows: the picture rows (``plots/index.json``), in :data:`training.visualize.PLOTS` order.

    Returns:
        (the HTML, the number of pictures embedded).
    """
    pictures, embedded = pictures_section(package, manifest, rows)
    optimization = optimization_section(package)
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    nav = ["<a href='#card'>Model card</a>", "<a href='#metrics'>Metrics</a>"]
    nav += [
        f"<a href='#{g}'>{_e(h)}</a>" for g, h in GROUPS.items() if any(r.get("group") == g for r in rows)
    ]
    if optimization is not None:
        nav.append("<a href='#optimization'>Optimization</a>")
    made = [r for r in rows if r.get("status") == "ok"]
    missing = [r for r in rows if r.get("status") != "ok"]
    body = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Model report: {_e(manifest.tag)}</title>",
        f"<script>{_RECORDER}</script>",
        f"<style>{_STYLE}</style></head><body>",
        f"<header><h1>Model report: {_e(manifest.tag)}</h1><p>Written {_e(created)} by shipyard report; "
        f"{len(made)} pictures" + (f", {len(missing)} not made" if missing else "") + "</p>",
        "<nav>" + "".join(nav) + "</nav></header><main>",
        "<h2 id='card'>Model card</h2>",
        model_card(manifest),
        "<h2 id='metrics'>Metrics</h2>",
        metrics_section(package, manifest),
        ensemble_section(package),
        pictures,
    ]
    if optimization is not None:
        body += ["<h2 id='optimization'>Optimization</h2>", optimization]
    body.append("</main></body></html>")
    return "\n".join(body), embedded


# -------------------------------------------------------------------------------------------- the verb


@dataclass
class ReportOutcome:
    """What ``shipyard report`` did: where the page is, which pictures it shows and which it (re)made."""

    path: Path
    rows: list[dict[str, Any]]
    made: list[Any]
    embedded: int
    optimization: bool


def config_for(manifest: Manifest, overrides: list[str] | None = None):
    """The package's training config with ``--set`` overrides (e.g. ``report.embedding_method=pca``).

    Raises:
        ConfigError: a bad key or value.
    """
    from edge.config import deep_merge, parse_overrides, validate_config
    from training.config import TrainingConfig, saved_sections

    raw = deep_merge(saved_sections(manifest.training_config), parse_overrides(overrides))
    return validate_config(TrainingConfig, raw, "package config")


def write_report(
    package: Path | str,
    *,
    only: list[str] | None = None,
    refresh: bool = False,
    data: Path | str | None = None,
    overrides: list[str] | None = None,
    out: Path | str | None = None,
    progress: Callable[[Any], None] | None = None,
) -> ReportOutcome:
    """Write the report page of a package, making the pictures it lacks first.

    Pictures already in ``plots/index.json`` (made at the end of training) are reused unless
    ``refresh``; missing ones, and ones that were skipped or failed, are made now (this needs the
    training data for the data pictures; ``data`` points at it if it moved).

    Args:
        package: the package folder.
        only: show only these pictures (keys of :data:`training.visualize.PLOTS`).
        refresh: remake every picture shown.
        data: the training data folder, if it moved since training.
        overrides: ``--set`` overrides of the package's config (``report.*`` keys matter).
        out: write the page here instead of ``<package>/index.html`` (then the manifest is left alone).
        progress: called with each picture made.

    Returns:
        A :class:`ReportOutcome`.

    Raises:
        PackageError: not a package. ConfigError: an unknown picture or a bad override.
    """
    from edge.manifest import record_file, write_manifest
    from training.visualize import check_kinds, read_index, write_plots

    package = Path(package)
    manifest = read_manifest(package)
    config = config_for(manifest, overrides)
    kinds = check_kinds(only)
    index = read_index(package)
    todo = [k for k in kinds if refresh or not _picture_is_there(package, index.get(k))]
    made = []
    if todo:
        made = write_plots(package, manifest, config, kinds=todo, data=data, progress=progress)
        index = read_index(package)
    rows = [index[k] for k in kinds if k in index]
    page, embedded = render_page(package, manifest, rows)
    target = Path(out) if out is not None else package / PAGE_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    if out is None:
        record_file(package, manifest, PAGE_FILE)
        write_manifest(package, manifest)
    return ReportOutcome(target, rows, made, embedded, (package / OPTIMIZATION_JSON).is_file())


def _picture_is_there(package: Path, row: dict[str, Any] | None) -> bool:
    """Whether an index row says its picture was made and the file is still there."""
    return row is not None and row.get("status") == "ok" and (package / (row.get("file") or "")).is_file()


__all__ = ["PAGE_FILE", "ReportOutcome", "config_for", "model_card", "render_page", "write_report"]
