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
import math
import os
import random
import sys
import time

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


class RandomCenterCropResize:
    """The notebook's custom transform: with probability p, crop the centre and resize back."""

    def __init__(self, crop=112, size=224, p=0.5):
        self.crop, self.size, self.p = crop, size, p

    def __call__(self, img):
        if random.random() < self.p:
            img = F.center_crop(img, [self.crop, self.crop])
            img = F.resize(img, [self.size, self.size], interpolation=T.InterpolationMode.BILINEAR)
        return img


def list_images(root):
    items = []
    for label, cls in enumerate(["Benign", "Malignant"]):
        folder = next(d for d in os.listdir(root) if d.lower() == cls.lower())
        for name in sorted(os.listdir(os.path.join(root, folder))):
            items.append((os.path.join(root, folder, name), label))
    return items


def split(items, seed):
    labels = [l for _, l in items]
    try:
        from sklearn.model_selection import train_test_split

        rest, test = train_test_split(items, test_size=0.2, random_state=seed, stratify=labels)
        train, val = train_test_split(
            rest, test_size=0.25, random_state=seed, stratify=[l for _, l in rest]
        )
        return train, val, test
    except ImportError:
        rng = random.Random(seed)
        train, val, test = [], [], []
        for label in sorted(set(labels)):
            cls = [it for it in items if it[1] == label]
            rng.shuffle(cls)
            n_test = math.ceil(0.2 * len(cls))
            n_val = math.ceil(0.25 * (len(cls) - n_test))
            test += cls[:n_test]
            val += cls[n_test : n_test + n_val]
            train += cls[n_test + n_val :]
        return train, val, test


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
    resize = T.Resize((224, 224), interpolation=T.InterpolationMode.BILINEAR)
    train_tf = T.Compose(
        [
            resize,
            RandomCenterCropResize(112, 224, 0.5),
            T.RandomRotation(30),
            T.RandomVerticalFlip(0.2),
            T.RandomHorizontalFlip(0.2),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    plain_tf = T.Compose([resize, T.ToTensor(), T.Normalize(MEAN, STD)])
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
