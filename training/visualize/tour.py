"""The grand tour: a smooth sequence of random 2-D projections of the embeddings, as an animated GIF.

Where t-SNE and UMAP bend the space to keep neighbours together, the tour only rotates it: every frame
is a linear (orthonormal) projection, so distances along the screen are real distances in the embedding,
and watching the rotation shows the shape of the class clouds in many dimensions (Asimov, 1985). The
embeddings are first centred and reduced to their top principal components (:data:`TOUR_DIMS`), where
almost all of their spread lies; the tour moves between random 2-D planes of that space along shortest
(geodesic) paths, easing in and out at each, and returns to its start so the animation loops. Two
panels: coloured by true class, and right (green) or wrong (red).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.visualize.drawing import colors

#: Principal components the tour rotates through.
TOUR_DIMS = 8
#: Random planes visited (the tour returns to the first), and frames between two of them.
TOUR_STOPS = 5
FRAMES_PER_MOVE = 12
FRAME_MS = 90
PANEL = 260


def _orthonormal(m: np.ndarray) -> np.ndarray:
    """The orthonormal matrix nearest to ``m`` (``d x 2``), by its polar decomposition."""
    u, _, vt = np.linalg.svd(m, full_matrices=False)
    return u @ vt


def _rotation(theta: float) -> np.ndarray:
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def _geodesic(a: np.ndarray, b: np.ndarray, steps: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``steps`` frames along the shortest path from the frame ``a`` to the plane of ``b`` (through the
    principal angles between the planes, eased in and out), and the frame it arrives at."""
    u, cos, vt = np.linalg.svd(a.T @ b)
    angles = np.arccos(np.clip(cos, -1.0, 1.0))
    start, end = a @ u, b @ vt.T  # matched directions of the two planes
    away = end - start * cos
    norms = np.linalg.norm(away, axis=0)
    away = np.where(norms > 1e-9, away / np.maximum(norms, 1e-12), 0.0)

    def at(t: float) -> np.ndarray:  # in a's own in-plane coordinates, so the first frame is a itself
        return (start * np.cos(t * angles) + away * np.sin(t * angles)) @ u.T

    eased = [(i / steps) ** 2 * (3 - 2 * i / steps) for i in range(steps)]
    return [at(t) for t in eased], at(1.0)


def tour_bases(dims: int, *, stops: int = TOUR_STOPS, steps: int = FRAMES_PER_MOVE, seed: int = 0) -> np.ndarray:
    """The projection frames of a looping tour: ``(stops * steps, dims, 2)``, each orthonormal.

    The tour moves along shortest paths between ``stops`` random planes, ``steps`` frames per move, and back
    to the first. Coming back, the view is the first plane turned within itself by some angle; that turn is
    undone evenly over all frames, so that the last frame leads smoothly into the first (planes whose return
    would mirror the view are drawn again).
    """
    rng = np.random.default_rng(seed)
    planes = [_orthonormal(rng.normal(size=(dims, 2))) for _ in range(stops)]
    for _ in range(20):
        frames, current = [], planes[0]
        for target in [*planes[1:], planes[0]]:
            moved, current = _geodesic(current, target, steps)
            frames += moved
        gathered = planes[0].T @ current  # the first plane, turned (or mirrored) within itself
        if np.linalg.det(gathered) > 0 or stops < 2:
            break
        planes[1:] = [_orthonormal(rng.normal(size=(dims, 2))) for _ in planes[1:]]
    theta = float(np.arctan2(gathered[1, 0], gathered[0, 0]))
    return np.stack([_orthonormal(f @ _rotation(-theta * i / len(frames))) for i, f in enumerate(frames)])


def principal_space(embeddings: np.ndarray, dims: int = TOUR_DIMS) -> tuple[np.ndarray, float]:
    """The centred embeddings in their top ``dims`` principal components, and the share of variance kept."""
    x = np.asarray(embeddings, np.float64)
    x = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    d = max(2, min(dims, vt.shape[0]))
    reduced = x @ vt[:d].T
    if reduced.shape[1] < 2:
        reduced = np.pad(reduced, ((0, 0), (0, 2 - reduced.shape[1])))
    kept = float((s[:d] ** 2).sum() / max((s**2).sum(), 1e-12))
    return reduced, kept


def _rgb(color) -> tuple[int, int, int]:
    return tuple(round(255 * float(c)) for c in color[:3])


def _panel(points: np.ndarray, fills: list[tuple[int, int, int]], crosses: np.ndarray | None, title: str):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (PANEL, PANEL + 16), "white")
    draw = ImageDraw.Draw(img)
    draw.text((6, 2), title, fill=(31, 35, 40))
    centre = np.array([PANEL / 2, PANEL / 2 + 16])
    xy = centre + points * np.array([1, -1]) * (PANEL / 2 - 8)
    order = np.argsort(crosses) if crosses is not None else range(len(xy))  # wrong ones drawn last, on top
    for i in order:
        x, y = xy[i]
        if crosses is not None and crosses[i]:
            draw.line((x - 3, y - 3, x + 3, y + 3), fill=fills[i], width=2)
            draw.line((x - 3, y + 3, x + 3, y - 3), fill=fills[i], width=2)
        else:
            draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=fills[i])
    return img


def _legend(class_names: list[str], palette: list[tuple[int, int, int]], width: int):
    from PIL import Image, ImageDraw

    per_row = 5
    rows = -(-len(class_names) // per_row) + 1
    img = Image.new("RGB", (width, 14 * rows + 4), "white")
    draw = ImageDraw.Draw(img)
    step = width // per_row
    for i, name in enumerate(class_names):
        x, y = 6 + (i % per_row) * step, 2 + (i // per_row) * 14
        draw.ellipse((x, y + 3, x + 7, y + 10), fill=palette[i])
        draw.text((x + 11, y), name[:14], fill=(31, 35, 40))
    y = 2 + (rows - 1) * 14
    draw.ellipse((6, y + 3, 13, y + 10), fill=(45, 164, 78))
    draw.text((17, y), "right", fill=(31, 35, 40))
    draw.line((70, y + 3, 77, y + 10), fill=(207, 34, 46), width=2)
    draw.line((70, y + 10, 77, y + 3), fill=(207, 34, 46), width=2)
    draw.text((81, y), "wrong", fill=(31, 35, 40))
    return img


def plot_grand_tour(
    embeddings: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    class_names: list[str],
    path: Path,
    *,
    seed: int = 0,
    stops: int = TOUR_STOPS,
    steps: int = FRAMES_PER_MOVE,
) -> dict[str, Any]:
    """Write the grand tour of ``embeddings`` as an animated GIF at ``path`` (loops forever).

    Args:
        embeddings: ``(N, D)`` penultimate-layer embeddings.
        labels, predicted: ``(N,)`` true and predicted classes.
        class_names: the labels.
        path: the GIF to write.
        seed: chooses the random planes.
        stops, steps: random planes visited and frames between two.

    Returns:
        ``{"frames", "points", "dims", "variance_kept", "bases", "coords"}`` (``coords``: every frame's
        ``(N, 2)`` positions, scaled by one factor for all frames and clipped into [-1, 1]).
    """
    from PIL import Image

    labels, predicted = np.asarray(labels), np.asarray(predicted)
    space, kept = principal_space(embeddings)
    bases = tour_bases(space.shape[1], stops=stops, steps=steps, seed=seed)
    coords = np.einsum("nd,fdk->fnk", space, bases)
    # One scale for every frame (so that the motion is real): 99% of the positions fit, outliers sit at the edge.
    coords = np.clip(coords / max(float(np.quantile(np.abs(coords), 0.99)), 1e-12), -1, 1)
    palette = [_rgb(c) for c in colors(len(class_names))]
    by_class = [palette[int(c)] for c in labels]
    wrong = predicted != labels
    by_right = [(207, 34, 46) if w else (45, 164, 78) for w in wrong]
    legend = _legend(class_names, palette, 2 * PANEL)
    frames = []
    for f, xy in enumerate(coords):
        frame = Image.new("RGB", (2 * PANEL, PANEL + 16 + legend.height), "white")
        frame.paste(_panel(xy, by_class, None, f"by true class   (frame {f + 1}/{len(coords)})"), (0, 0))
        frame.paste(_panel(xy, by_right, wrong, f"right or wrong   ({int(wrong.sum())} wrong)"), (PANEL, 0))
        frame.paste(legend, (0, PANEL + 16))
        frames.append(frame.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=FRAME_MS, loop=0)
    return {
        "frames": len(frames),
        "points": len(space),
        "dims": int(space.shape[1]),
        "variance_kept": kept,
        "bases": bases,
        "coords": coords,
    }
