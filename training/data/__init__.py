"""From a folder of labelled images to batched ``tf.data`` pipelines of ``uint8`` pixels.

Three steps, each a plain function that returns a new object:

1. :func:`scan_dataset` walks the folder (one subfolder per class, or ``train/ val/ test/`` each
   holding class subfolders), reads every file's header with :func:`edge.preprocess.open_image`,
   skips and reports bad files, and splits the samples (stratified and seeded when the folder has
   no split folders).
2. :func:`plan_loading` decides how to load (decode everything once into memory, or stream from the
   files with parallel decoding) and the batch size, each with a sentence that says why.
3. :func:`build_datasets` builds the ``tf.data`` pipelines. Every pixel goes through
   :func:`edge.preprocess.decode_file`, the one preprocessing contract shared with the edge runner
   and the server; nothing here scales pixels (the model does).

Truncated files. A full decode costs 0.3 ms (224 px JPEG) to 1.2 ms (224 px PNG) per image, the header
read 20-40 us, so the scan does not decode. It runs cheap structural checks instead: PNG
``verify()`` (chunk CRCs up to ``IEND``, +20 us), the JPEG end-of-image marker, the RIFF length of a
WebP and the file size in a BMP header. A file that fails a cheap check is fully decoded to decide
(valid JPEGs with trailers after the marker pass there). Decoding is the backstop: in the memory
scheme a file that fails to decode is moved to ``scan.skipped``; in the stream scheme it is dropped

Modules: ``scan`` (layout, class folders, the split), ``files`` (checks on one file), ``plan`` (loading
scheme and batch size), ``memory`` (decode once, gather batches), ``stream`` (decode batches on the fly),
``augment`` (the tf_keras augmentation), ``datasets`` (:func:`build_datasets`), ``inspect``
(``shipyard data inspect``), ``processes`` (decode worker processes, one per core, pixels in shared memory:
what the stream scheme and the scan use on Linux) and ``threads`` (the thread pools they fall back to).
"""

from edge.errors import DataError
from training.data.augment import make_augmenter
from training.data.datasets import Datasets, balanced_class_weights, build_datasets
from training.data.inspect import InspectReport, inspect_dataset
from training.data.memory import load_split_arrays
from training.data.plan import LoadingPlan, plan_loading
from training.data.scan import DatasetScan, Sample, scan_dataset, stratified_split

__all__ = [
    "DataError",
    "DatasetScan",
    "Datasets",
    "InspectReport",
    "LoadingPlan",
    "Sample",
    "balanced_class_weights",
    "build_datasets",
    "inspect_dataset",
    "load_split_arrays",
    "make_augmenter",
    "plan_loading",
    "scan_dataset",
    "stratified_split",
]
