#!/usr/bin/env python3
"""The original PyTorch notebook as one script: the end-to-end baseline of `just bench`.

    notebook_torch.py IMAGE_DIR [--epochs 3] [--patience 5] [--threads 2] [--seed 42]
                      [--weights PATH] [--device cpu|cuda]

IMAGE_DIR holds Benign/ and Malignant/ (any case). Steps, as in the notebook:
1. list the images; stratified split with scikit-learn's train_test_split twice, seed 42
   (test 0.2, then val 0.25 of the rest: 60/20/20); an equivalent per-class split when
   scikit-learn is missing;
2. prep: Pillow + torchvision transforms, applied once, tensors held in RAM. Train: the
   notebook's RandomCenterCropResize(112 -> 224, p=.5), RandomRotation(30),
   RandomVerticalFlip(.2), RandomHorizontalFlip(.2), ToTensor, Normalize(ImageNet).
   Val/test: ToTensor, Normalize. The notebook's images were 224x224 already; other sizes
   are first resized to 224x224 (bilinear). The notebook also torch.save'd the tensors and
   loaded them back; that round trip is skipped here (it would only add to PyTorch's time);
3. DataLoaders of batch 128 (train shuffled), in the main process as in the notebook;
4. torchvision resnet18 with the notebook's head; stem, layer1 and layer2 frozen
   (requires_grad False); BCEWithLogitsLoss; Adam groups fc 1e-2, layer4 1e-3, layer3 1e-3;
5. --epochs epochs (the notebook: 50) keeping the weights of the best validation accuracy,
   early stopping after --patience epochs without improvement; then test accuracy.

--device: the notebook moved the model and each batch to CUDA when one was available; the
default here is the CPU, so that a benchmark says which device it measured.

The notebook used ImageNet (IMAGENET1K_V1) weights. They cannot be downloaded on an offline
machine, so the default here is weights=None (random init): the timing and memory are those
of the notebook, the accuracy is not. `--weights PATH` loads a torchvision resnet18 state
dict (.pth) instead.

Prints one summary per epoch, then `wall_s`, `peak_rss_mib`, `test_acc` lines and a final
JSON line. Peak RSS is the process's ru_maxrss.
"""
import argparse
import copy
import json
import math
import os
import random
import resource
import sys
import time

import torch
import torch.nn as nn
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
CLASSES = ["Benign", "Malignant"]
SIZE = 224


class RandomCenterCropResize:
    """The notebook's custom transform: with probability p, crop the centre crop_size square
    and resize it back to resize_size (bilinear)."""

    def __init__(self, crop_size=112, resize_size=224, p=0.5):
        self.crop_size, self.resize_size, self.p = crop_size, resize_size, p

    def __call__(self, img):
        if random.random() < self.p:
            img = F.center_crop(img, [self.crop_size, self.crop_size])
            img = F.resize(img, [self.resize_size, self.resize_size],
                           interpolation=T.InterpolationMode.BILINEAR)
        return img


def notebook_transforms():
    """(train, val/test) transforms of the notebook. The leading Resize is a no-op on the
    notebook's 224x224 images."""
    resize = T.Resize((SIZE, SIZE), interpolation=T.InterpolationMode.BILINEAR)
    train_tf = T.Compose([
        resize,
        RandomCenterCropResize(crop_size=112, resize_size=SIZE, p=0.5),
        T.RandomRotation(30),
        T.RandomVerticalFlip(0.2),
        T.RandomHorizontalFlip(0.2),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])
    plain_tf = T.Compose([resize, T.ToTensor(), T.Normalize(MEAN, STD)])
    return train_tf, plain_tf


def list_images(root):
    """(path, label) for every file of Benign/ (0) and Malignant/ (1), sorted by name."""
    items = []
    for label, cls in enumerate(CLASSES):
        folder = next(d for d in os.listdir(root) if d.lower() == cls.lower())
        for name in sorted(os.listdir(os.path.join(root, folder))):
            items.append((os.path.join(root, folder, name), label))
    return items


def split(items, seed):
    """The notebook's two stratified train_test_split calls: 20% test, then 25% of the rest
    as validation."""
    labels = [l for _, l in items]
    try:
        from sklearn.model_selection import train_test_split
    except ImportError:
        # Same per-class sizes as scikit-learn (test and val rounded up), different members.
        rng = random.Random(seed)
        train, val, test = [], [], []
        for label in sorted(set(labels)):
            cls = [it for it in items if it[1] == label]
            rng.shuffle(cls)
            n_test = math.ceil(0.2 * len(cls))
            n_val = math.ceil(0.25 * (len(cls) - n_test))
            test += cls[:n_test]
            val += cls[n_test:n_test + n_val]
            train += cls[n_test + n_val:]
        return train, val, test
    rest, test = train_test_split(items, test_size=0.2, random_state=seed, stratify=labels)
    train, val = train_test_split(rest, test_size=0.25, random_state=seed,
                                  stratify=[l for _, l in rest])
    return train, val, test


def to_tensors(part, transform):
    """The notebook's prep loop: every image through the transform once, stacked in RAM."""
    xs = [transform(Image.open(path).convert("RGB")) for path, _ in part]
    return torch.stack(xs), torch.tensor([l for _, l in part], dtype=torch.float32)


def build_model(weights):
    model = torchvision.models.resnet18(weights=None)  # the notebook: IMAGENET1K_V1
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu"))
    # The notebook's head.
    model.fc = nn.Sequential(
        nn.Linear(512, 256), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(256, 32), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(32, 1),
    )
    # Stem, layer1 and layer2 are in no optimizer group: frozen.
    for part in [model.conv1, model.bn1, model.layer1, model.layer2]:
        part.requires_grad_(False)
    return model


def run_epoch(model, loader, loss_fn, device, opt=None):
    """Mean loss and accuracy over a loader; trains when an optimizer is given.

    Faithful to the notebook, evaluation does NOT call model.eval(): dropout stays active and
    BatchNorm uses (and updates its running statistics with) the batch's statistics. The Rust
    pipeline evaluates in eval mode; this flaw is kept here on purpose, so that the baseline
    costs what the notebook costs."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    with torch.set_grad_enabled(opt is not None):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x).squeeze(1)
            loss = loss_fn(logits, y)
            if opt is not None:
                opt.zero_grad()
                loss.backward()
                opt.step()
            total_loss += loss.item() * len(y)
            correct += ((logits >= 0).float() == y).sum().item()
            seen += len(y)
    return total_loss / seen, correct / seen


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", help="folder with Benign/ and Malignant/")
    ap.add_argument("--epochs", type=int, default=3, help="the notebook: 50")
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--weights", help="torchvision resnet18 state dict (.pth); default none")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the notebook: cuda if any)")
    args = ap.parse_args()

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    # 1. Split.
    items = list_images(args.input)
    train, val, test = split(items, args.seed)
    print(f"images: {len(items)} (train {len(train)}, val {len(val)}, test {len(test)})",
          flush=True)

    # 2. Prep, once.
    train_tf, plain_tf = notebook_transforms()
    x_train, y_train = to_tensors(train, train_tf)
    x_val, y_val = to_tensors(val, plain_tf)
    x_test, y_test = to_tensors(test, plain_tf)
    prep_s = time.perf_counter() - start
    print(f"prep: {prep_s:.1f} s", flush=True)

    # 3. Loaders.
    train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size,
                              shuffle=True)
    val_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=args.batch_size)
    test_loader = DataLoader(TensorDataset(x_test, y_test), batch_size=args.batch_size)

    # 4. Model, loss, optimizer.
    device = torch.device(args.device)
    model = build_model(args.weights).to(device)
    loss_fn = nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam([
        {"params": model.fc.parameters(), "lr": 1e-2},
        {"params": model.layer4.parameters(), "lr": 1e-3},
        {"params": model.layer3.parameters(), "lr": 1e-3},
    ])

    # 5. Train, keep the best validation accuracy, early stopping.
    best_acc, best_state, stale = -1.0, None, 0
    train_start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        train_loss, train_acc = run_epoch(model, train_loader, loss_fn, device, opt)
        t_train = time.perf_counter() - t0
        val_loss, val_acc = run_epoch(model, val_loader, loss_fn, device)
        print(f"epoch {epoch}/{args.epochs}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
              f"val loss {val_loss:.4f} acc {val_acc:.4f} | "
              f"{len(train) / t_train:.1f} img/s, {time.perf_counter() - t0:.0f} s", flush=True)
        if val_acc > best_acc:
            best_acc, best_state, stale = val_acc, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= args.patience:
                print(f"early stopping after {epoch} epochs", flush=True)
                break
    train_s = time.perf_counter() - train_start

    model.load_state_dict(best_state)
    test_start = time.perf_counter()
    _, test_acc = run_epoch(model, test_loader, loss_fn, device)  # no model.eval(), as the notebook
    test_s = time.perf_counter() - test_start

    wall = time.perf_counter() - start
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"test_acc {test_acc:.4f}")
    print(f"wall_s {wall:.1f} (prep {prep_s:.1f}, train+val {train_s:.1f}, test {test_s:.1f})")
    print(f"peak_rss_mib {rss_mib:.0f}")
    print(json.dumps({
        "impl": "pytorch-notebook", "workload": "end-to-end", "wall_s": wall,
        "prep_s": prep_s, "train_s": train_s, "test_s": test_s, "peak_rss_mib": rss_mib,
        "test_acc": test_acc, "best_val_acc": best_acc, "epochs": args.epochs,
        "weights": args.weights or "none", "torch": torch.__version__, "device": str(device),
    }))


if __name__ == "__main__":
    sys.exit(main())
