"""The optimization report: ``report.md``, ``report.html`` (self-contained, inline SVG charts) and ``report.json``.

One row per variant of :data:`edge.variants.VARIANTS` that was requested: status (passed, exported
but failed a gate, failed to export, not checked) with the reason, size, gzip size, measured sparsity,
accuracy and macro F1 on the test split, top-1 agreement with the Keras float reference, the largest
probability difference, and latency p50/p90/p99 with one thread and with all cores.
"""

from __future__ import annotations

import html
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.files import write_bytes_atomic
from edge.manifest import Manifest
from edge.tables import format_table, markdown_table

STATUS_TEXT = {
    "passed": "passed",
    "failed_gate": "exported, failed a gate",
    "failed_export": "failed to export",
    "not_checked": "exported, not checked",
}
STATUS_COLOR = {
    "passed": "#1a7f37",
    "failed_gate": "#bf8700",
    "failed_export": "#cf222e",
    "not_checked": "#6e7781",
}


def _pct(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{100 * v:.{digits}f}%"


def _num(v: float | None, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def _lat(result: Any, which: str) -> str:
    lat = result.latency.get(which)
    if not lat:
        return ""
    return f"{lat['p50']:.2f} / {lat['p90']:.2f} / {lat['p99']:.2f}"


def _kb(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def report_rows(results: list[Any]) -> list[dict[str, str]]:
    """The table's cells (strings) per variant, shared by the Markdown, HTML and terminal tables."""
    rows = []
    for r in results:
        m = r.metrics
        rows.append(
            {
                "variant": r.key + (" *" if r.earlier_run else ""),
                "status": STATUS_TEXT[r.status],
                "bytes": _kb(r.bytes),
                "gzip bytes": _kb(r.gzip_bytes),
                "sparsity": _pct(r.sparsity, 1),
                "accuracy": _pct(m.get("accuracy")),
                "macro F1": _num(m.get("macro_f1"), ".4f"),
                "agreement": _pct(m.get("agreement")),
                "agreement w/ fine-tuned": _pct(m.get("agreement_parent")) if r.spec.needs_fine_tuning else "",
                "max |Δp|": _num(m.get("max_prob_diff"), ".2e"),
                "p50/p90/p99 ms (1 thread)": _lat(r, "1"),
                "p50/p90/p99 ms (all cores)": _lat(r, "all"),
                "reason": r.reason or "",
            }
        )
    return rows


def terminal_table(results: list[Any], reference: Any) -> str:
    """A plain-text table for the terminal."""
    rows = report_rows(results)
    headers = [h for h in rows[0] if h != "reason"] if rows else []
    table = format_table(headers, [[row[h] for h in headers] for row in rows])
    ref = f"Keras reference: accuracy {_pct(reference.accuracy)}, macro F1 {_num(reference.macro_f1, '.4f')}"
    problems = [f"- {r.key}: {r.reason}" for r in results if r.reason]
    return "\n".join([ref, "", table, *(["", *problems] if problems else [])])


def _gate_text(result: Any) -> str:
    if not result.checks:
        return ""
    return "; ".join(
        f"{'✔' if c.passed else ('✘' if c.passed is False else '?')} {c.describe()}" for c in result.checks
    )


def render_markdown(
    manifest: Manifest, results: list[Any], reference: Any, notes: list[str], config: Any, created: str
) -> str:
    """``report.md``."""
    rows = report_rows(results)
    headers = [h for h in rows[0] if h != "reason"] if rows else []
    lines = [
        f"# Optimization report: {manifest.tag}",
        "",
        f"Created {created}. Input: {manifest.input.height}x{manifest.input.width} RGB uint8, "
        f"{len(manifest.labels)} classes. Keras float reference on the test split: accuracy "
        f"{_pct(reference.accuracy)}, macro F1 {_num(reference.macro_f1, '.4f')}, "
        f"{len(reference.probabilities)} images.",
        "",
        markdown_table(headers, [[row[h] for h in headers] for row in rows]),
    ]
    lines += ["", "## Gates and reasons", ""]
    for r in results:
        gate = _gate_text(r)
        lines.append(
            f"- **{r.key}** ({STATUS_TEXT[r.status]}, gate `{r.spec.gate}`): {gate or r.reason or ''}"
        )
        if r.reason and gate:
            lines.append(f"  - {r.reason}")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += [
        "",
        "Sparsity is the fraction of exact zeros in the file's convolution and dense weights. Agreement is the",
        "share of test images whose top-1 class matches the Keras model; max |Δp| the largest difference of any",
        f"class probability. Latency: one image per run, {config.latency_warmup_runs} warm-up runs, then at least "
        f"{config.latency_runs} runs and {config.latency_min_time_s:g} s, with the edge runners "
        "(the SavedModel with TensorFlow, all cores only).",
        "",
    ]
    return "\n".join(lines)


def _svg_scatter(points: list[dict[str, Any]], *, x_label: str, y_label: str, log_x: bool) -> str:
    """A small self-contained SVG scatter plot with labelled points."""
    width, height, left, right, top, bottom = 560, 340, 64, 140, 16, 48
    pts = [p for p in points if p["x"] is not None and p["y"] is not None and (p["x"] > 0 or not log_x)]
    if not pts:
        return "<p><em>nothing to plot</em></p>"

    def tx(v: float) -> float:
        return math.log10(v) if log_x else v

    xs = [tx(p["x"]) for p in pts]
    ys = [p["y"] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 - x0 < 1e-9:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.01, y1 + 0.01
    padx, pady = (x1 - x0) * 0.08, (y1 - y0) * 0.12
    x0, x1, y0, y1 = x0 - padx, x1 + padx, y0 - pady, y1 + pady
    pw, ph = width - left - right, height - top - bottom

    def px(v: float) -> float:
        return left + (tx(v) - x0) / (x1 - x0) * pw

    def py(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" font-family="sans-serif" font-size="11">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>',
    ]
    out += _svg_grid((x0, x1, y0, y1), (left, top, pw, ph), height, log_x, x_label, y_label)
    placed: list[tuple[float, float, float, float]] = []
    for p in sorted(pts, key=lambda p: (px(p["x"]), py(p["y"]))):
        out += _svg_point(p, px(p["x"]), py(p["y"]), placed, width, height)
    out.append("</svg>")
    return "".join(out)


def _svg_grid(
    ranges: tuple[float, float, float, float],
    frame: tuple[float, float, float, float],
    height: float,
    log_x: bool,
    x_label: str,
    y_label: str,
) -> list[str]:
    """Grid lines, tick labels (x in k/M, y in percent) and the axis titles of :func:`_svg_scatter`."""
    x0, x1, y0, y1 = ranges
    left, top, pw, ph = frame
    out = []
    for i in range(5):
        fx = x0 + (x1 - x0) * i / 4
        fy = y0 + (y1 - y0) * i / 4
        gx = left + pw * i / 4
        gy = top + ph * (1 - i / 4)
        xv = 10**fx if log_x else fx
        xt = f"{xv / 1e6:.2f}M" if xv >= 1e6 else (f"{xv / 1e3:.1f}k" if xv >= 1e3 else f"{xv:.3g}")
        out.append(f'<line x1="{gx:.1f}" y1="{top}" x2="{gx:.1f}" y2="{top + ph}" stroke="#e5e5e5"/>')
        out.append(f'<line x1="{left}" y1="{gy:.1f}" x2="{left + pw}" y2="{gy:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{gx:.1f}" y="{top + ph + 14}" text-anchor="middle">{html.escape(xt)}</text>')
        out.append(f'<text x="{left - 4}" y="{gy + 4:.1f}" text-anchor="end">{100 * fy:.1f}%</text>')
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 10}" text-anchor="middle">{html.escape(x_label)}</text>'
    )
    out.append(
        f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2})">'
        f"{html.escape(y_label)}</text>"
    )
    return out


def _svg_point(
    p: dict[str, Any],
    cx: float,
    cy: float,
    placed: list[tuple[float, float, float, float]],
    width: float,
    height: float,
) -> list[str]:
    """One point of :func:`_svg_scatter` with its label (and a leader line when the label had to move)."""
    color = STATUS_COLOR.get(p["status"], "#333")
    out = [
        f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{color}" fill-opacity="0.8">'
        f"<title>{html.escape(p['label'])}</title></circle>"
    ]
    lx, ly = _place_label(cx, cy, 6.2 * len(p["label"]), placed, width, height)
    if abs(ly - (cy + 4)) > 1:
        out.append(f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{lx - 2:.1f}" y2="{ly - 4:.1f}" stroke="#bbb"/>')
    out.append(f'<text x="{lx:.1f}" y="{ly:.1f}" fill="#222">{html.escape(p["label"])}</text>')
    return out


def _place_label(
    cx: float,
    cy: float,
    w: float,
    placed: list[tuple[float, float, float, float]],
    width: float,
    height: float,
) -> tuple[float, float]:
    """A label position right of (or else left of) a point, stepping up and down until it overlaps no other."""
    h = 12.0
    for dy in (0, -13, 13, -26, 26, -39, 39, -52, 52, -65, 65, -78, 78):
        for x in (cx + 7, cx - 7 - w):
            y = cy + 4 + dy
            box = (x, y - h + 2, x + w, y + 2)
            if x < 0 or box[2] > width or box[1] < 0 or box[3] > height:
                continue
            if all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in placed):
                placed.append(box)
                return x, y
    return cx + 7, cy + 4


_STYLE = (
    "<style>body{font-family:system-ui,sans-serif;margin:24px;color:#1f2328}"
    "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #d0d7de;padding:4px 8px;"
    "text-align:right;vertical-align:top}th{background:#f6f8fa}td:first-child,td:nth-child(2),"
    "td:last-child{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:24px}"
    ".s-passed{color:#1a7f37}.s-failed_gate{color:#bf8700}.s-failed_export{color:#cf222e}"
    ".s-not_checked{color:#6e7781}code{background:#f6f8fa;padding:1px 4px}</style></head><body>"
)


def _chart_points(
    manifest: Manifest, results: list[Any], reference: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """The size and latency charts' points (accuracy, or agreement without labels) and the y-axis title."""
    use_acc = reference.accuracy is not None
    y_label = "test accuracy" if use_acc else "top-1 agreement with Keras"
    ref_size = manifest.files.get("keras/model.keras")
    shown = [r for r in results if r.status != "failed_export"]

    def point(r: Any, x: float | None) -> dict[str, Any]:
        return {
            "x": x,
            "y": r.metrics.get("accuracy" if use_acc else "agreement"),
            "label": r.key,
            "status": r.status,
        }

    size_points = [point(r, r.bytes) for r in shown]
    if ref_size is not None and use_acc:
        size_points.append(
            {"x": ref_size.bytes, "y": reference.accuracy, "label": "keras", "status": "passed"}
        )
    lat_points = [point(r, (r.latency.get("1") or r.latency.get("all") or {}).get("p50")) for r in shown]
    return size_points, lat_points, y_label


def _html_table(results: list[Any]) -> list[str]:
    rows = report_rows(results)
    headers = list(rows[0]) if rows else []
    body = [
        "<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr></thead><tbody>"
    ]
    for r, row in zip(results, rows, strict=True):
        cells = []
        for h in headers:
            cls = f" class='s-{r.status}'" if h == "status" else ""
            cells.append(f"<td{cls}>{html.escape(row[h])}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    body.append("</tbody></table>")
    return body


def _html_charts(manifest: Manifest, results: list[Any], reference: Any) -> list[str]:
    size_points, lat_points, y_label = _chart_points(manifest, results, reference)
    size_chart = _svg_scatter(
        size_points, x_label="file size (bytes, log scale)", y_label=y_label, log_x=True
    )
    lat_chart = _svg_scatter(
        lat_points, x_label="p50 latency, 1 thread (ms, log scale)", y_label=y_label, log_x=True
    )
    return [
        "<h2>Trade-offs</h2><div class='charts'>",
        "<figure>" + size_chart + "<figcaption>Size against accuracy</figcaption></figure>",
        "<figure>" + lat_chart + "<figcaption>Latency against accuracy</figcaption></figure>",
    ]


def _html_gates(results: list[Any]) -> list[str]:
    body = ["</div><h2>Gates</h2><ul>"]
    for r in results:
        gate = _gate_text(r)
        reason = f"<br>{html.escape(r.reason)}" if r.reason and gate else ""
        body.append(
            f"<li><b>{html.escape(r.key)}</b> <span class='s-{r.status}'>({STATUS_TEXT[r.status]})</span>, "
            f"gate <code>{r.spec.gate}</code>: {html.escape(gate or r.reason or '')}{reason}</li>"
        )
    body.append("</ul>")
    return body


def render_html(
    manifest: Manifest, results: list[Any], reference: Any, notes: list[str], config: Any, created: str
) -> str:
    """``report.html``: the table, the gates and two trade-off charts, with no external resources."""
    body = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Optimization report: {html.escape(manifest.tag)}</title>",
        _STYLE,
        f"<h1>Optimization report: {html.escape(manifest.tag)}</h1>",
        f"<p>Created {html.escape(created)}. Input {manifest.input.height}x{manifest.input.width} RGB uint8, "
        f"{len(manifest.labels)} classes. Keras float reference: accuracy {_pct(reference.accuracy)}, "
        f"macro F1 {_num(reference.macro_f1, '.4f')} on {len(reference.probabilities)} test images.</p>",
        *_html_table(results),
        *_html_charts(manifest, results, reference),
        *_html_gates(results),
    ]
    if notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    body.append(
        f"<p><small>Latency: one image per run, {config.latency_warmup_runs} warm-up runs, then at least "
        f"{config.latency_runs} runs and {config.latency_min_time_s:g} s with the edge runners. Sparsity: exact zeros "
        "in the file's convolution and dense weights.</small></p></body></html>"
    )
    return "\n".join(body)


def render_json(
    manifest: Manifest,
    results: list[Any],
    reference: Any,
    notes: list[str],
    config: Any,
    created: str,
    seconds: float,
) -> str:
    """``report.json``."""
    payload = {
        "package": manifest.tag,
        "created": created,
        "seconds": round(seconds, 2),
        "input": manifest.input.model_dump(),
        "labels": manifest.labels,
        "reference": {
            "accuracy": reference.accuracy,
            "macro_f1": reference.macro_f1,
            "count": len(reference.probabilities),
            "bytes": manifest.files["keras/model.keras"].bytes
            if "keras/model.keras" in manifest.files
            else None,
        },
        "config": json.loads(config.model_dump_json()),
        "notes": notes,
        "variants": [r.to_dict() for r in results],
        "passed": all(r.passed for r in results),
    }
    return json.dumps(payload, indent=2, default=str)


def write_report(
    package: Path,
    manifest: Manifest,
    results: list[Any],
    reference: Any,
    *,
    notes: list[str],
    config: Any,
    seconds: float,
) -> list[str]:
    """Write report.md, report.html and report.json into the package; return their relative paths."""
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    package = Path(package)
    texts = {
        "report.md": render_markdown(manifest, results, reference, notes, config, created),
        "report.html": render_html(manifest, results, reference, notes, config, created),
        "report.json": render_json(manifest, results, reference, notes, config, created, seconds),
    }
    for name, text in texts.items():
        write_bytes_atomic(package / name, text.encode("utf-8"))
    return list(texts)
