"""Reference face detections from facenet-pytorch 2.6.0's MTCNN, for tests/faces.rs to compare against.

Runs the wheel's own code (facenet_pytorch/models/mtcnn.py and models/utils/detect_face.py), imported
straight from the wheel file with the project's torch; nothing is installed. The package's __init__ is
skipped because it imports the face-recognition network and `requests`, which MTCNN does not need.
Weights come from the wheel's data/{pnet,rnet,onet}.pt, as in facenet-pytorch itself.

Each image is read with PIL, turned upright by its EXIF orientation and converted to RGB; detection
runs on it as given (no downscaling), on the CPU, with min_face_size, thresholds and factor as passed.
To compare detectors rather than JPEG decoders, tests/faces.rs passes the pixels Veil decoded, as PPM
files, which PIL reads losslessly.

Usage: python tests/mtcnn_reference.py --wheel WHEEL --out OUT.json [--min-face 40]
           [--thresholds 0.6 0.7 0.7] [--factor 0.709] IMAGE_OR_DIR...
A directory stands for the .jpg/.jpeg/.png/.ppm files directly inside it, sorted by name. OUT.json maps each
image path, as given or joined to its directory, to
{"width": W, "height": H, "faces": [{"box": [x1, y1, x2, y2], "score": p, "landmarks": [[x, y] x5]}]}.
"""

import argparse
import io
import json
import os
import sys
import types
import zipfile

import torch
from PIL import Image, ImageOps


def import_mtcnn(wheel):
    """Imports facenet_pytorch.models.mtcnn from the wheel without running the package __init__."""
    for name, sub in (("facenet_pytorch", "facenet_pytorch"),
                      ("facenet_pytorch.models", "facenet_pytorch/models"),
                      ("facenet_pytorch.models.utils", "facenet_pytorch/models/utils")):
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(wheel, sub)]
        sys.modules[name] = module
    sys.path.insert(0, wheel)
    import facenet_pytorch.models.mtcnn as mtcnn  # noqa: E402  (zipimport from the wheel)
    return mtcnn


def load_nets(mtcnn, wheel):
    nets = []
    with zipfile.ZipFile(wheel) as zf:
        for cls, stage in ((mtcnn.PNet, "pnet"), (mtcnn.RNet, "rnet"), (mtcnn.ONet, "onet")):
            net = cls(pretrained=False)
            raw = zf.read(f"facenet_pytorch/data/{stage}.pt")
            net.load_state_dict(torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True))
            net.eval()
            nets.append(net)
    return nets


def images(args):
    for item in args:
        if os.path.isdir(item):
            for name in sorted(os.listdir(item)):
                if name.lower().endswith((".jpg", ".jpeg", ".png", ".ppm")):
                    yield os.path.join(item, name)
        else:
            yield item


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheel", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--min-face", type=float, default=40)
    parser.add_argument("--thresholds", type=float, nargs=3, default=[0.6, 0.7, 0.7])
    parser.add_argument("--factor", type=float, default=0.709)
    parser.add_argument("inputs", nargs="+")
    args = parser.parse_args()

    mtcnn = import_mtcnn(args.wheel)
    detect_face = sys.modules["facenet_pytorch.models.utils.detect_face"].detect_face
    pnet, rnet, onet = load_nets(mtcnn, args.wheel)

    result = {}
    with torch.no_grad():
        for path in images(args.inputs):
            with Image.open(path) as im:
                img = ImageOps.exif_transpose(im).convert("RGB")
            boxes, points = detect_face(img, args.min_face, pnet, rnet, onet, args.thresholds,
                                        args.factor, torch.device("cpu"))
            faces = [
                {"box": [float(v) for v in b[:4]], "score": float(b[4]),
                 "landmarks": [[float(x), float(y)] for x, y in p]}
                for b, p in zip(boxes[0], points[0])
            ]
            result[path] = {"width": img.width, "height": img.height, "faces": faces}

    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
