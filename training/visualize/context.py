"""What the pictures are made from: a package's manifest, config, model, data scan and predictions,
each loaded lazily and once (thread-safe, so a worker can compute one while the main thread draws)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.manifest import InputContract, Manifest, read_manifest
from training.config import TrainingConfig, saved_training_config
from training.visualize.common import PlotSkipped, read_json
from training.visualize.embedding import project_2d
from training.visualize.network import maximize_activation


class _Once:
    """A value computed by the first caller of :meth:`get`; later callers wait for it (or its error)."""

    def __init__(self, make: Callable[[], Any]):
        self.make = make
        self.lock = threading.Lock()
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None

    def get(self) -> Any:
        with self.lock:
            if not self.done:
                try:
                    self.value = self.make()
                except Exception as exc:
                    self.error = exc
                self.done = True
        if self.error is not None:
            raise self.error
        return self.value


class PlotContext:
    """What the pictures are made from, loaded lazily from a package (or handed over by training).

    Args:
        package: the package folder.
        manifest: its manifest (read when not given).
        config: the pipeline config (default: the package's training config).
        model: the trained Keras model (default: loaded from the package, sha256 verified).
        scan: the dataset scan of the training run (default: a new scan of ``data`` or the package's
            data path, refused when its fingerprint differs from the manifest's).
        data: the training data folder, if it moved since training.
    """

    def __init__(
        self,
        package: Path | str,
        manifest: Manifest | None = None,
        config: TrainingConfig | None = None,
        *,
        model=None,
        scan=None,
        data: Path | str | None = None,
    ):
        self.package = Path(package)
        self.manifest = manifest or read_manifest(self.package)
        self.config = config or saved_training_config(self.manifest.training_config)
        self._model = model
        self._scan = scan
        self._data = Path(data) if data is not None else None
        self._cache: dict[str, _Once] = {}
        self._lock = threading.Lock()

    @property
    def report(self):
        """The ``report`` section of the config."""
        return self.config.report

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    @property
    def contract(self) -> InputContract:
        return self.manifest.input

    @property
    def model(self):
        """The Keras model (loaded from the package on first use)."""
        if self._model is None:
            from training.package import load_package_model

            self._model = self.cached("model", lambda: load_package_model(self.package)[0])
        return self._model

    @property
    def scan(self):
        """The dataset scan; raises :class:`PlotSkipped` when the data is not here or changed."""
        if self._scan is None:
            self._scan = self.cached("scan", self._new_scan)
        return self._scan

    def _new_scan(self):
        from training.data import scan_dataset

        path = self._data or self.config.data.path
        if path is None or not Path(path).is_dir():
            raise PlotSkipped(f"the training data ({path}) is not here; pass --data DIR")
        scan = scan_dataset(path, self.config.data)
        recorded = self.manifest.dataset.fingerprint if self.manifest.dataset else None
        if recorded and scan.fingerprint() != recorded:
            raise PlotSkipped(
                f"the data at {path} changed since training (fingerprint differs); pass --data DIR"
            )
        return scan

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per context (thread-safe: a second caller waits; an error is raised to each)."""
        with self._lock:
            once = self._cache.setdefault(key, _Once(make))
        return once.get()

    def maximized(self) -> dict[str, Any]:
        """:func:`maximize_activation` as configured, with a name per unit."""

        def make():
            r = self.report
            units = r.maximize_units
            if units is None and r.maximize_layer is None:
                units = list(range(min(len(self.labels), r.max_classes)))
            result = maximize_activation(
                self.model, layer=r.maximize_layer, units=units, steps=r.maximize_steps, seed=r.seed
            )
            by_class = r.maximize_layer is None
            result["names"] = [self.labels[u] if by_class else str(u) for u in result["units"]]
            return result

        return self.cached("maximized", make)

    def predictions(self) -> dict[str, np.ndarray]:
        """The test-split predictions saved by training (``reference/predictions.npz``)."""

        def load():
            path = self.package / "reference" / "predictions.npz"
            if not path.is_file():
                raise PlotSkipped("the package has no reference/predictions.npz")
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in ("paths", "labels", "probabilities")}

        return self.cached("predictions", load)

    @property
    def eval_split(self) -> str:
        return str(self.manifest.metrics.get("evaluated_on", "test"))

    def eval_images(self) -> np.ndarray:
        """The images of the evaluation split, in the order of :meth:`predictions`."""

        def load():
            from training.data import Sample, load_split_arrays

            pred = self.predictions()
            root = self.scan.root
            samples = [
                Sample(root / str(p), int(y)) for p, y in zip(pred["paths"], pred["labels"], strict=True)
            ]
            missing = [s.path for s in samples if not s.path.is_file()]
            if missing:
                raise PlotSkipped(
                    f"{len(missing)} test images are missing (e.g. {missing[0]}); pass --data DIR"
                )
            images, _ = load_split_arrays(samples, self.contract, max_pixels=self.config.data.max_pixels)
            return images

        return self.cached("eval_images", load)

    def embedding(self) -> dict[str, Any]:
        """The penultimate-layer embeddings of (at most ``embedding_points``) test images and their 2-D map."""

        def make():
            from training.models import embedding_model

            images = self.eval_images()
            labels = np.asarray(self.predictions()["labels"], dtype=np.int64)
            keep = np.arange(len(images))
            if len(keep) > self.report.embedding_points:
                rng = np.random.default_rng(self.report.seed)
                keep = np.sort(rng.choice(len(keep), self.report.embedding_points, replace=False))
            probs, emb = embedding_model(self.model).predict(
                images[keep].astype(np.float32), verbose=0, batch_size=64
            )
            coords, method = project_2d(emb, self.report.embedding_method, self.report.seed)
            return {
                "coords": coords,
                "labels": labels[keep],
                "predicted": probs.argmax(axis=1),
                "embeddings": emb,
                "method": method,
                "indices": keep,
                "of": len(images),
            }

        return self.cached("embedding", make)

    def sample_grid(self) -> dict[str, Any]:
        """``samples_per_class`` training images of each class (at most ``max_classes``), seeded choice."""

        def make():
            from training.data import load_split_arrays

            k = self.report.samples_per_class
            n = min(len(self.labels), self.report.max_classes)
            rng = np.random.default_rng(self.report.seed)
            train = self.scan.splits["train"]
            chosen, mask = [], np.zeros((n, k), dtype=bool)
            for c in range(n):
                own = [s for s in train if s.label == c]
                pick = [own[i] for i in sorted(rng.permutation(len(own))[:k])]
                mask[c, : len(pick)] = True
                chosen.append(pick)
            flat = [s for row in chosen for s in row]
            images, _ = load_split_arrays(flat, self.contract, max_pixels=self.config.data.max_pixels)
            h, w = self.contract.height, self.contract.width
            grid = np.full((n, k, h, w, 3), 255, dtype=np.uint8)
            it = iter(images)
            for c in range(n):
                for j in range(int(mask[c].sum())):
                    grid[c, j] = next(it)
            paths = [[s.path.relative_to(self.scan.root).as_posix() for s in row] for row in chosen]
            return {"images": grid, "mask": mask, "paths": paths, "names": self.labels[:n]}

        return self.cached("samples", make)

    def recording(self, relpath: str, what: str) -> dict[str, Any]:
        """A file recorded while training (``logs/histograms.json`` or ``logs/val_predictions.json``)."""
        data = read_json(self.package / relpath)
        if not data:
            raise PlotSkipped(
                f"no {what} were recorded ({relpath} is missing); train with report.record=true"
            )
        return data
