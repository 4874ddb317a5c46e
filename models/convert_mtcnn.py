"""Convert the MTCNN face-detector weights shipped in the facenet-pytorch wheel into safetensors.

The wheel's facenet_pytorch/data/{pnet,rnet,onet}.pt are legacy (pre-zip) torch.save state dicts whose
conv weights are not contiguous; libtorch's loaders reject them as shipped. This script reads them with
PyTorch, makes every tensor contiguous fp32, and writes OUT_DIR/{pnet,rnet,onet}.safetensors with the
state-dict names unchanged (e.g. conv1.weight, prelu1.weight, conv4_1.weight).

Usage: python models/convert_mtcnn.py WHEEL OUT_DIR
The weights are MIT licensed (facenet-pytorch, Tim Esler), ported from the original MTCNN release.
"""

import io
import os
import sys
import zipfile

import torch
from safetensors.torch import save_file

STAGES = ("pnet", "rnet", "onet")


def convert(wheel: str, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for stage in STAGES:
            name = f"facenet_pytorch/data/{stage}.pt"
            try:
                raw = zf.read(name)
            except KeyError:
                sys.exit(f"error: {wheel} has no {name}: is it the facenet-pytorch 2.6.0 wheel?")
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
            tensors = {k: v.detach().float().contiguous().clone() for k, v in state.items()}
            target = os.path.join(out_dir, f"{stage}.safetensors")
            tmp = target + ".tmp"
            save_file(tensors, tmp, metadata={"source": f"facenet-pytorch 2.6.0 {name}", "license": "MIT"})
            os.replace(tmp, target)
            print(f"{target}: {len(tensors)} tensors")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    convert(sys.argv[1], sys.argv[2])
