#!/usr/bin/env python3
"""Make a detection model for ADetailer offline: YOLOv8n built from the yolov8n.yaml that ultralytics
bundles, seeded random weights, whose Detect head finds one region on any image.

    WEBUI/venv/bin/python tests/support/adetailer_model.py OUT.pt [--seed N] [--region F]

ADetailer runs `YOLO(path)(image, conf=...)` and inpaints each box found. Trained weights cannot be
downloaded here, and random ones find nothing (or boxes anywhere), so the Detect head is set by hand:
the class convolutions give a constant score (a high bias, zero weights), 0.99995 for class 0 at the
stride-32 level and 0.00005 everywhere else; the box convolutions give the same distances from every
anchor; and the checkpoint's `train_args` (which ultralytics keeps as the predictor's `imgsz`) make
the input 32 pixels, so the stride-32 level has one anchor, at the centre. The result: on any image,
whatever its content or size, one box of conf 0.99995, F (default 0.5) of its width and height,
centred (on an image that is not square, near the centre: the letterbox rounds).

Written in float16 as ultralytics saves its models (about 6 MB); the same bytes for the same seed,
ultralytics version and file name (torch.save names its archive after the file). webui_host.py
(`extensions --extension adetailer`) runs this with the host venv's python and links the file as
face_yolov8n.pt into each instance's models/adetailer.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

IMGSZ = 32  # the largest stride: one anchor at stride 32, 2x2 at 16, 4x4 at 8
LEVEL = 2  # Detect's stride-32 level
SCORE_LOGIT = 10.0  # sigmoid(10) = 0.99995; sigmoid(-10) for the rest
NAMES = {0: "face"}


def build(seed: int = 0, region: float = 0.5) -> torch.nn.Module:
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    # ultralytics/cfg/models/v8/yolov8.yaml at scale n, from the package
    model = DetectionModel("yolov8n.yaml", nc=len(NAMES), verbose=False)
    detect = model.model[-1]
    stride = float(detect.stride[LEVEL])
    # distance of each box side from its anchor, in bins of the stride (DFL: expectation over reg_max bins)
    distance = region * IMGSZ / 2 / stride
    low = math.floor(distance)
    if not 0 <= low < detect.reg_max - 1:
        raise ValueError(f"--region {region}: box sides must lie within {detect.reg_max - 1} bins of {stride:g} px")
    frac = distance - low
    with torch.no_grad():
        for level, (box_head, cls_head) in enumerate(zip(detect.cv2, detect.cv3)):
            cls_conv, box_conv = cls_head[-1], box_head[-1]
            cls_conv.weight.zero_()
            cls_conv.bias.fill_(-SCORE_LOGIT)
            if level == LEVEL:
                cls_conv.bias[0] = SCORE_LOGIT
            box_conv.weight.zero_()
            logits = torch.full((detect.reg_max,), -30.0)
            logits[low] = 0.0
            if frac > 0:  # p(low) = 1 - frac, p(low + 1) = frac
                logits[low] = math.log(1 - frac)
                logits[low + 1] = math.log(frac)
            box_conv.bias.copy_(logits.repeat(4))  # left, top, right, bottom
    model.names = dict(NAMES)
    return model


def save(model: torch.nn.Module, out: Path) -> Path:
    import ultralytics

    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "model": model.half(),
        "train_args": {"imgsz": IMGSZ, "task": "detect"},
        "version": ultralytics.__version__,
    }
    torch.save(ckpt, out)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the .pt to write, e.g. MODELS/adetailer/face_yolov8n.pt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--region", type=float, default=0.5, help="box width and height as a fraction of the image's")
    args = parser.parse_args(argv)
    print(f"adetailer model: {save(build(args.seed, args.region), args.out)}")


if __name__ == "__main__":
    main()
