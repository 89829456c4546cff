#!/usr/bin/env python3
"""Baseline for `scripts/bench-prep.sh`: the original notebook's own prep path.

Pillow opens every image; torchvision transforms build the tensors (train: the notebook's
RandomCenterCropResize(112 -> 224, p=0.5), RandomRotation(30), RandomVerticalFlip(0.2),
RandomHorizontalFlip(0.2), ToTensor, Normalize; val/test: ToTensor, Normalize); the split
is 60/20/20 stratified (scikit-learn's train_test_split twice when installed, else a simple
stratified split with the same per-class sizes rule); each split's float tensors are saved
with torch.save. Images are first resized to 224x224 (the notebook's inputs already were).

Prints `images/s <N>` (input images over the in-process time from listing to the last save).
"""
import argparse
import os
import random
import sys
import time

import torch
from PIL import Image

# The notebook's transforms, listing and split, shared with the end-to-end benchmark.
from notebook_torch import list_images, notebook_transforms, split


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    start = time.perf_counter()
    items = list_images(args.input)
    train, val, test = split(items, args.seed)
    train_tf, plain_tf = notebook_transforms()
    os.makedirs(args.out, exist_ok=True)
    for name, part, tf in [("train", train, train_tf), ("val", val, plain_tf), ("test", test, plain_tf)]:
        xs = [tf(Image.open(path).convert("RGB")) for path, _ in part]
        x = torch.stack(xs)
        y = torch.tensor([l for _, l in part], dtype=torch.float32)
        torch.save({"x": x, "y": y}, os.path.join(args.out, f"{name}.pt"))
        del xs, x
    elapsed = time.perf_counter() - start
    print(f"images {len(items)}")
    print(f"seconds {elapsed:.3f}")
    print(f"images/s {len(items) / elapsed:.1f}")


if __name__ == "__main__":
    sys.exit(main())
