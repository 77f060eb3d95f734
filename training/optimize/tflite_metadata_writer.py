"""Write TFLite metadata with MediaPipe's metadata writer. Runs INSIDE the isolated MediaPipe environment.

Usage: ``python -I tflite_metadata_writer.py SPEC.json``. The spec names the input model, the output
file, the labels, the input normalization and the general info (name, version, description, author,
license). Imports nothing of Shipyard (it runs where Shipyard is not installed); see
:mod:`training.optimize.metadata` for the caller.
"""

import json
import sys


def main(spec_path: str) -> None:
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_info
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer as mw

    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    with open(spec["model"], "rb") as fh:
        model = bytearray(fh.read())
    writer = mw.MetadataWriter.create(model)
    # add_general_info() takes a name and a description only; GeneralMd also carries version, author, license
    writer._general_md = metadata_info.GeneralMd(
        name=spec["name"],
        version=spec["version"],
        description=spec["description"],
        author=spec.get("author"),
        licenses=spec.get("license"),
    )
    writer.add_image_input(
        norm_mean=spec["norm_mean"],
        norm_std=spec["norm_std"],
        color_space_type=mw.metadata_fb.ColorSpaceType.RGB,
        description=spec["input_description"],
    )
    writer.add_classification_output(mw.Labels().add(spec["labels"], exported_filename=spec["label_file"]))
    content, metadata_json = writer.populate()
    with open(spec["out"], "wb") as fh:
        fh.write(content)
    with open(spec["out"] + ".json", "w", encoding="utf-8") as fh:
        fh.write(metadata_json)


if __name__ == "__main__":
    main(sys.argv[1])
