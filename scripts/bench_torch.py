#!/usr/bin/env python3
"""PyTorch half of `just bench`: the workloads of `lesion-bench`, same JSON line.

    bench_torch.py {train-frozen,train-all,infer} [--batch-size 32] [--size 224]
                   [--warmup 1] [--iters 5] [--threads 2] [--device cpu] [--channels-last]

Model: torchvision's resnet18 (random init: only throughput is measured) with the notebook's
head, fc = Linear(512,256)-ReLU-Dropout(.25)-Linear(256,32)-ReLU-Dropout(.25)-Linear(32,1).
Input: one seeded batch of ImageNet-normalised uniform random pixels and random 0/1 labels,
reused every iteration (no data loading), as on the Rust side.

- train-frozen: the notebook's recipe. conv1/bn1/layer1/layer2 get requires_grad_(False), so
  autograd builds no graph through them, but the model is in train mode (their BatchNorm
  uses batch statistics and updates running stats, as in the notebook). Adam groups
  fc 1e-2, layer4 1e-3, layer3 1e-3; BCEWithLogitsLoss.
- train-all: every parameter trains; the same groups plus the rest at 1e-4 (lesion-train's
  `--trainable all`).
- infer: model.eval() under torch.inference_mode().
One training iteration = zero_grad + forward + loss + loss.item() + backward + Adam step.

Prints one line: {"impl", "workload", "images_per_s_median", "per_iter_s", "peak_rss_mib",
...}; peak RSS is the process's ru_maxrss (includes `import torch`).
"""
import argparse
import json
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torchvision

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
FROZEN = ["conv1", "bn1", "layer1", "layer2"]


def notebook_head():
    """The notebook's replacement for resnet18's fc."""
    return nn.Sequential(
        nn.Linear(512, 256), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(256, 32), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(32, 1),
    )


def build_model():
    model = torchvision.models.resnet18(weights=None)
    model.fc = notebook_head()
    return model


def optimizer(model, workload):
    """The notebook's Adam groups; with train-all the stem to layer2 join at 1e-4."""
    groups = [
        {"params": list(model.fc.parameters()), "lr": 1e-2},
        {"params": list(model.layer4.parameters()), "lr": 1e-3},
        {"params": list(model.layer3.parameters()), "lr": 1e-3},
    ]
    if workload == "train-all":
        rest = [p for n in FROZEN for p in getattr(model, n).parameters()]
        groups.append({"params": rest, "lr": 1e-4})
    return torch.optim.Adam(groups)


def synthetic_batch(batch, size, seed):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, 3, size, size), generator=g).float() / 255.0
    x = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    y = torch.randint(0, 2, (batch,), generator=g).float()
    return x, y


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workload", choices=["train-frozen", "train-all", "infer"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--channels-last", action="store_true",
                    help="model and input in torch.channels_last memory format")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    model = build_model().to(device=device, memory_format=fmt)
    x, y = synthetic_batch(args.batch_size, args.size, args.seed)
    x, y = x.to(device=device, memory_format=fmt), y.to(device)

    if args.workload == "infer":
        model.eval()

        def step():
            with torch.inference_mode():
                model(x).cpu()  # read back, as the Rust side does
    else:
        if args.workload == "train-frozen":
            for name in FROZEN:
                getattr(model, name).requires_grad_(False)
        model.train()  # the notebook's training mode, frozen BatchNorm layers included
        opt = optimizer(model, args.workload)
        loss_fn = nn.BCEWithLogitsLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x).squeeze(1), y)
            value = loss.item()
            if value != value:
                raise SystemExit("loss is NaN")
            loss.backward()
            opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    per_iter = []
    for _ in range(args.iters):
        start = time.perf_counter()
        step()
        sync()
        per_iter.append(time.perf_counter() - start)

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({
        "impl": "pytorch-cl" if args.channels_last else "pytorch",
        "workload": args.workload,
        "images_per_s_median": args.batch_size / statistics.median(per_iter),
        "per_iter_s": per_iter,
        "peak_rss_mib": rss_kib / 1024,
        "batch_size": args.batch_size,
        "size": args.size,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    sys.exit(main())
