"""Classify images with MediaPipe Tasks' ImageClassifier. Runs INSIDE the isolated MediaPipe environment.

Usage: ``python -I mediapipe_classify.py MODEL.tflite IMAGE...``; prints one JSON object: per image the
top category (index, name, score) and the number of categories. Imports nothing of Shipyard.
"""

import json
import sys


def main(model: str, images: list[str]) -> None:
    import mediapipe as mp
    import numpy as np
    from mediapipe.tasks.python import BaseOptions, vision
    from PIL import Image

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=model), max_results=-1)
    out = []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for path in images:
            pixels = np.asarray(Image.open(path).convert("RGB"))
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels))
            categories = result.classifications[0].categories
            top = categories[0]
            out.append(
                {
                    "image": path,
                    "index": top.index,
                    "name": top.category_name,
                    "score": top.score,
                    "names": sorted((c.index, c.category_name) for c in categories),
                }
            )
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
