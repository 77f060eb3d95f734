"""Pictures of the data, the network and the training: PNG files (a GIF for the grand tour's animation) in the
package's ``plots/`` folder.

One registry, :data:`PLOTS`, names every picture; :func:`write_plots` (called at the end of
``shipyard train``), ``shipyard plot`` and ``shipyard report`` loop over it and look entries up by
name. Each entry's ``make(ctx, path)`` draws one picture (matplotlib, Agg backend) and returns the
data it plotted (the confusion matrix, the 2-D embedding coordinates, the histograms...), so that tests
and the report can check what a picture shows. A picture that cannot be made is a row with the reason
(``skipped``: something it needs is not there; ``failed``: an error), never a crash.

Three pictures need data recorded while training, by :func:`recording_callbacks` (on by default, see
``report.record``), which stays cheap:

* :class:`HistogramRecorder`: every ``report.record_every`` epochs (and before the first and after the
  last epoch of each phase) histograms of a few layers' weights and biases, of their activations on a
  fixed batch of validation images and of the loss gradients for those weights (inference mode, so
  the model's state and the random streams of training are untouched); also written to TensorBoard
  (``logs/tensorboard/histograms``, the HISTOGRAMS tab). Saved as ``logs/histograms.json``.
* :class:`PredictionRecorder`: every epoch, the histogram of predicted classes on (at most
  ``report.val_prediction_images`` of) the validation split, in ``logs/val_predictions.json``.

Both save their file after every record (atomically), so a killed run keeps what it recorded and a
resumed run continues it.

Modules: :mod:`.drawing` (matplotlib helpers, data and training pictures, shared with the evaluation),
:mod:`.embedding` (the 2-D embedding map), :mod:`.tour` (the grand tour), :mod:`.explain` (Grad-CAM),
:mod:`.network` (structure, filters, activation maximization, recorded histograms), :mod:`.recording`
(the recorders and their callback), :mod:`.context` (:class:`PlotContext`), :mod:`.registry`
(:data:`PLOTS`, :func:`make_plot`, :func:`write_plots`).
"""

from training.visualize.common import PlotSkipped
from training.visualize.context import PlotContext
from training.visualize.drawing import (
    DEMO_AUGMENT,
    plot_class_histogram,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_misclassified,
    plot_per_class,
    plot_val_predictions,
)
from training.visualize.embedding import plot_embedding, project_2d
from training.visualize.explain import explain_predictions, explanation_layers, grad_cam
from training.visualize.network import (
    graphviz_available,
    maximize_activation,
    plot_filters,
    plot_recorded_histograms,
    plot_structure,
)
from training.visualize.recording import (
    HistogramRecorder,
    PredictionRecorder,
    ValidationSample,
    recording_callbacks,
)
from training.visualize.registry import (
    PLOTS,
    PlotResult,
    PlotSpec,
    check_kinds,
    make_plot,
    read_index,
    write_plots,
)
from training.visualize.tour import plot_grand_tour, tour_bases

__all__ = [
    "DEMO_AUGMENT",
    "PLOTS",
    "HistogramRecorder",
    "PlotContext",
    "PlotResult",
    "PlotSkipped",
    "PlotSpec",
    "PredictionRecorder",
    "ValidationSample",
    "check_kinds",
    "explain_predictions",
    "explanation_layers",
    "grad_cam",
    "graphviz_available",
    "make_plot",
    "maximize_activation",
    "plot_class_histogram",
    "plot_confusion_matrix",
    "plot_embedding",
    "plot_filters",
    "plot_grand_tour",
    "plot_learning_curves",
    "plot_misclassified",
    "plot_per_class",
    "plot_recorded_histograms",
    "plot_structure",
    "plot_val_predictions",
    "project_2d",
    "read_index",
    "recording_callbacks",
    "tour_bases",
    "write_plots",
]
