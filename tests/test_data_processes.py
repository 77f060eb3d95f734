"""training.data.processes: the forked decode workers behind the scan and the stream scheme.

Every pixel they return must be ``edge.preprocess.decode_file``'s; a file that fails is masked and reported
with decode_file's reason; a bug or a dead worker is an error that says so, never a hang or a wrong batch.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from _support import png_with_corrupt_idat
from PIL import Image

from edge.errors import ShipyardError
from edge.manifest import InputContract
from edge.preprocess import decode_file
from training.config import DataConfig
from training.data import build_datasets, scan_dataset
from training.data import processes as procs
from training.data.processes import DecodeProcesses, decode_processes

CONTRACT = InputContract(height=16, width=16)


def _folder(root: Path, per_class: int = 6) -> Path:
    """Two classes of small JPEGs and PNGs, plus files the scan skips and one that only decoding catches."""
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, size=(20 + i, 24, 3), dtype=np.uint8)
            fmt, suffix = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.{suffix}", fmt)
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "text.png").write_bytes(b"not an image\n" * 8)
    good = (root / "cat" / "cat_1.jpg").read_bytes()
    (root / "dog" / "cut.jpg").write_bytes(good[: len(good) // 2])  # truncated: the scan decodes it to decide
    return root


def _reason(path: Path) -> str:
    with pytest.raises(ShipyardError) as info:
        decode_file(path, CONTRACT)
    return str(info.value)


def _pool() -> DecodeProcesses:
    pool = decode_processes(2)
    if pool is None:
        pytest.skip("decode worker processes need fork (Linux)")
    return pool


def test_the_scan_in_worker_processes_matches_the_scan_in_threads(tmp_path: Path, monkeypatch) -> None:
    root = _folder(tmp_path / "d")
    monkeypatch.setattr(procs, "MIN_ITEMS_FOR_PROCESSES", 10**9)
    threads = scan_dataset(root, DataConfig())
    monkeypatch.setattr(procs, "MIN_ITEMS_FOR_PROCESSES", 1)
    _pool()
    workers = scan_dataset(root, DataConfig())
    assert workers.skipped == threads.skipped and len(workers.skipped) == 3
    assert workers.splits == threads.splits
    assert workers.fingerprint() == threads.fingerprint()
    assert (workers.image_sizes, workers.image_modes, workers.formats) == (
        threads.image_sizes,
        threads.image_modes,
        threads.formats,
    )


def test_workers_return_decode_files_pixels_and_its_reasons(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    files = [*sorted((root / "cat").glob("cat_*")), root / "dog" / "text.png", root / "nope.jpg"]
    files.insert(2, root / "dog" / "cut.jpg")
    images, failed = _pool().decode([str(p) for p in files], CONTRACT, 10**8)
    split, split_failed = _pool().decode([str(p) for p in files], CONTRACT, 10**8, shares=2)
    np.testing.assert_array_equal(split, images)
    assert split_failed == failed
    bad = {2: files[2], len(files) - 2: files[-2], len(files) - 1: files[-1]}
    assert failed == [(row, _reason(path)) for row, path in sorted(bad.items())]
    good = [p for row, p in enumerate(files) if row not in bad]
    assert images.dtype == np.uint8 and images.shape == (len(good), 16, 16, 3)
    np.testing.assert_array_equal(images, np.stack([decode_file(p, CONTRACT) for p in good]))
    empty, none = _pool().decode([], CONTRACT, 10**8)
    assert empty.shape == (0, 16, 16, 3) and none == []


def test_a_bug_in_a_worker_is_raised_with_its_traceback_and_the_pool_goes_on(tmp_path: Path) -> None:
    pool = _pool()
    with pytest.raises(RuntimeError, match=r"(?s)decode worker \d raised.*ValueError: invalid literal"):
        pool.map(int, ["1", "x"], chunk=1)
    assert pool.map(int, ["1", "2", "3"], chunk=2) == [1, 2, 3]
    with pytest.raises(RuntimeError, match=r"(?s)raised.*ModuleNotFoundError"):  # a task it cannot unpickle
        pool.map(_defined_after_the_fork(), [1])
    assert pool.broken is None


def _defined_after_the_fork():
    import types

    module = types.ModuleType("shipyard_test_not_in_the_workers")
    exec("def f(x):\n    return x\n", module.__dict__)
    import sys

    sys.modules[module.__name__] = module
    return module.f


def test_a_dead_worker_fails_the_call_with_an_error_that_says_so(tmp_path: Path) -> None:
    if decode_processes(2) is None:
        pytest.skip("decode worker processes need fork (Linux)")
    pool = DecodeProcesses(2)  # its own pool: the process-wide one stays healthy
    try:
        os.kill(pool._procs[0].pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pool.broken is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.broken and "exited unexpectedly" in pool.broken and "-9" in pool.broken
        with pytest.raises(RuntimeError, match="exited unexpectedly"):
            pool.map(int, ["1", "2"], chunk=1)
    finally:
        pool.close()


def test_batches_are_views_that_give_their_block_back(tmp_path: Path, monkeypatch) -> None:
    root = _folder(tmp_path / "d")
    paths = [str(p) for p in sorted((root / "cat").glob("cat_*"))]
    pool = _pool()
    gc.collect()
    before = pool._blocks.leased
    images, _ = pool.decode(paths, CONTRACT, 10**8)
    assert pool._blocks.leased > before and not images.flags.owndata
    want = images.copy()
    del images
    gc.collect()
    assert pool._blocks.leased == before
    again, _ = pool.decode(paths, CONTRACT, 10**8)  # reuses the block
    np.testing.assert_array_equal(again, want)
    monkeypatch.setattr(procs, "LEASED_BYTES", 0)  # a consumer that keeps everything: copies from here on
    copied, _ = pool.decode(paths, CONTRACT, 10**8)
    assert copied.flags.owndata
    np.testing.assert_array_equal(copied, want)


@pytest.mark.parametrize("how", ["processes", "threads: no room on /dev/shm", "threads: no processes"])
def test_the_stream_scheme_yields_decode_files_pixels_and_reports_failures(
    tmp_path: Path, monkeypatch, how: str
) -> None:
    root = _folder(tmp_path / "d", per_class=5)
    corrupt = root / "dog" / "corrupt.png"  # passes the scan (valid CRCs), fails to decode
    _pool()
    if how == "threads: no room on /dev/shm":
        monkeypatch.setattr(procs, "_shm_has_room", lambda nbytes: False)
        monkeypatch.setattr(procs._POOL._blocks, "_free", [])
    elif how == "threads: no processes":
        monkeypatch.setattr("training.data.stream.decode_processes", lambda n: None)
    _corrupt_png(corrupt)
    config = DataConfig(path=root, loading="stream", batch_size=3, val_fraction=0.0, test_fraction=0.0)
    ds = build_datasets(config, CONTRACT, augment=False)
    assert corrupt in {s.path for s in ds.scan.splits["train"]}
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in ds.train), strict=True)
    images, labels = np.concatenate(xs), np.concatenate(ys)
    good = [s for s in ds.scan.splits["train"] if s.path != corrupt]
    want = {(s.label, decode_file(s.path, CONTRACT).tobytes()) for s in good}
    assert (
        len(labels) == len(good)
        and {(int(y), x.tobytes()) for x, y in zip(images, labels, strict=True)} == want
    )
    assert ds.decode_failures == {corrupt: _reason(corrupt)}


def _corrupt_png(path: Path) -> None:
    """A PNG whose chunk CRCs are valid but whose pixel data is garbage: passes verify(), fails decoding."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), 90, np.uint8)).save(buf, "PNG")
    path.write_bytes(png_with_corrupt_idat(buf.getvalue()))


def test_a_forked_copy_of_the_process_starts_its_own_workers() -> None:
    parent = _pool()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            child = decode_processes(2)
            code = 0 if child is not None and child is not parent and child.map(int, ["7"]) == [7] else 2
            if child is not None:
                child.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent.broken is None and parent.map(int, ["1", "2"], chunk=1) == [1, 2]


def test_a_file_name_that_is_not_utf8_streams(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", per_class=3)
    odd = Path(os.fsdecode(os.fsencode(root / "cat") + b"/caf\xe9.png"))  # Latin-1 bytes on disk
    Image.fromarray(np.full((9, 9, 3), 200, np.uint8)).save(odd, "PNG")
    config = DataConfig(path=root, loading="stream", batch_size=2, val_fraction=0.0, test_fraction=0.0)
    ds = build_datasets(config, CONTRACT, augment=False)
    assert odd in {s.path for s in ds.scan.splits["train"]}
    images = np.concatenate([x.numpy() for x, _ in ds.train])
    assert decode_file(odd, CONTRACT).tobytes() in {x.tobytes() for x in images}
    assert not ds.decode_failures


def test_the_stream_goes_on_in_threads_when_a_worker_dies(tmp_path: Path, monkeypatch, caplog) -> None:
    if decode_processes(2) is None:
        pytest.skip("decode worker processes need fork (Linux)")
    root = _folder(tmp_path / "d", per_class=5)
    pool = DecodeProcesses(2)  # its own pool: the process-wide one stays healthy
    monkeypatch.setattr("training.data.stream.decode_processes", lambda n: pool)
    try:
        config = DataConfig(path=root, loading="stream", batch_size=2, val_fraction=0.0, test_fraction=0.0)
        ds = build_datasets(config, CONTRACT, augment=False)
        os.kill(pool._procs[1].pid, signal.SIGKILL)
        images = np.concatenate([x.numpy() for x, _ in ds.train])
        want = {decode_file(s.path, CONTRACT).tobytes() for s in ds.scan.splits["train"]}
        assert len(images) == len(want) and {x.tobytes() for x in images} == want
        assert pool.broken and "decoding in threads from here on" in caplog.text
    finally:
        pool.close()


def _streamed(items: list, monkeypatch, threshold: int, fn=int) -> list:
    monkeypatch.setattr(procs, "MIN_ITEMS_FOR_PROCESSES", threshold)
    mapped = procs.StreamedMap(fn, chunk=3)
    for item in items:
        mapped.add(item)
    return list(mapped.results())


@pytest.mark.parametrize("threshold", [1, 5, 10**9])  # from the start, part-way, never (threads)
def test_a_streamed_map_returns_the_results_in_order(monkeypatch, threshold: int) -> None:
    _pool()
    items = [str(i) for i in range(20)]
    assert _streamed(items, monkeypatch, threshold) == list(range(20))
    with pytest.raises((RuntimeError, ValueError), match="invalid literal"):
        _streamed([*items, "x"], monkeypatch, threshold)


def test_a_streamed_map_goes_on_in_threads_when_a_worker_dies(monkeypatch) -> None:
    if decode_processes(2) is None:
        pytest.skip("decode worker processes need fork (Linux)")
    pool = DecodeProcesses(2)
    monkeypatch.setattr(procs, "decode_processes", lambda n: pool)
    monkeypatch.setattr(procs, "MIN_ITEMS_FOR_PROCESSES", 1)
    try:
        mapped = procs.StreamedMap(int, chunk=2)
        for i in range(6):
            mapped.add(str(i))
        os.kill(pool._procs[0].pid, signal.SIGKILL)
        os.kill(pool._procs[1].pid, signal.SIGKILL)
        for i in range(6, 12):
            mapped.add(str(i))
        assert list(mapped.results()) == list(range(12))
    finally:
        pool.close()
