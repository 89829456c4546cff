#!/usr/bin/env python3
"""Summarise lesion-eval outputs of several runs as a recipe comparison table.

Usage: recipe_table.py EVAL_DIR [EVAL_DIR ...] [--resamples 2000] [--seed 0] [--times FILE]

Each EVAL_DIR is a `<run>/eval-test/` folder written by lesion-eval; its run folder's
config.json names the recipe, seed and classes. Per run the table gives balanced accuracy
and ROC AUC on the evaluated split with 95% percentile bootstrap intervals (resampling the
images, seeded), computed from predictions.csv:
- two classes: balanced accuracy of the `prediction` column (the threshold lesion-eval chose
  on validation), AUC of `probability`;
- N classes: balanced accuracy of the most probable class, macro one-vs-rest AUC of the
  `p_<class>` columns (scikit-learn's roc_auc_score(multi_class="ovr", average="macro")).
Then, per task and recipe, the mean and range over seeds. `--times FILE` reads lines
`<run dir> <wall seconds> [<CPU seconds>]` (training time) and adds columns.

Standard library only.
"""

import csv
import json
import math
import random
import statistics
import sys
from pathlib import Path


def auc(labels, scores):
    """Mann-Whitney AUC with average ranks for ties; None without both classes."""
    pairs = sorted(zip(scores, labels))
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j) / 2 + 1
        rank_sum += avg_rank * sum(1 for k in range(i, j + 1) if pairs[k][1] == 1)
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def balanced_accuracy(labels, predicted, n_classes):
    recalls = []
    for k in range(n_classes):
        idx = [i for i, y in enumerate(labels) if y == k]
        if idx:
            recalls.append(sum(1 for i in idx if predicted[i] == k) / len(idx))
    return sum(recalls) / len(recalls)


def figures(rows, classes):
    labels = [r["label"] for r in rows]
    if len(classes) == 2:
        predicted = [r["prediction"] for r in rows]
        a = auc(labels, [r["probability"] for r in rows])
    else:
        predicted = [max(range(len(classes)), key=lambda k: r["p"][k]) for r in rows]
        per_class = [
            auc([int(y == k) for y in labels], [r["p"][k] for r in rows])
            for k in range(len(classes))
        ]
        a = None if None in per_class else sum(per_class) / len(per_class)
    return balanced_accuracy(labels, predicted, len(classes)), a


def read_rows(path, classes):
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row = {"label": int(r["label"])}
            if len(classes) == 2:
                row["probability"] = float(r["probability"])
                row["prediction"] = int(r["prediction"])
            else:
                row["p"] = [float(r[f"p_{c}"]) for c in classes]
            rows.append(row)
    return rows


def interval(rows, classes, resamples, seed):
    rng = random.Random(seed)
    bal, aucs = [], []
    n = len(rows)
    for _ in range(resamples):
        sample = [rows[rng.randrange(n)] for _ in range(n)]
        b, a = figures(sample, classes)
        bal.append(b)
        if a is not None:
            aucs.append(a)

    def pct(xs):
        xs = sorted(xs)
        return xs[int(0.025 * (len(xs) - 1))], xs[int(0.975 * (len(xs) - 1))]

    return pct(bal), pct(aucs)


def read_times_line(line):
    """`<run> <wall> <cpu>` from scripts/recipe_compare.sh; older files have no CPU column."""
    parts = line.split()
    try:
        wall, cpu = float(parts[-2]), float(parts[-1])
        run = parts[:-2]
    except (ValueError, IndexError):
        wall, cpu = float(parts[-1]), math.nan
        run = parts[:-1]
    return {str(Path(" ".join(run)).resolve()): (wall, cpu)}


def fmt(secs):
    return "" if math.isnan(secs) else f"{secs:.0f}"


def main(argv):
    resamples, seed, times = 2000, 0, {}
    dirs = []
    it = iter(argv)
    for a in it:
        if a == "--resamples":
            resamples = int(next(it))
        elif a == "--seed":
            seed = int(next(it))
        elif a == "--times":
            for line in Path(next(it)).read_text().splitlines():
                times.update(read_times_line(line))
        else:
            dirs.append(Path(a))
    if not dirs:
        print(__doc__, file=sys.stderr)
        return 2
    results = []
    print("| task | recipe | seed | epoch kept | balanced acc [95% CI] | AUC [95% CI] | train wall s | train CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for d in dirs:
        run = d.parent
        cfg = json.loads((run / "config.json").read_text())
        metrics = json.loads((d / "metrics.json").read_text())
        classes = cfg["class_names"]
        recipe = cfg["train"].get("recipe", "notebook")
        task = "binary" if len(classes) == 2 else f"{len(classes)}-class"
        rows = read_rows(d / "predictions.csv", classes)
        b, a = figures(rows, classes)
        (bl, bh), (al, ah) = interval(rows, classes, resamples, seed)
        secs = times.get(str(run.resolve()), (float("nan"), float("nan")))
        results.append((task, recipe, b, a, secs))
        print(
            f"| {task} | {recipe} | {cfg['train']['seed']} | {metrics.get('checkpoint_epoch', '?')} "
            f"| {b:.3f} [{bl:.3f}, {bh:.3f}] | {a:.3f} [{al:.3f}, {ah:.3f}] "
            f"| {fmt(secs[0])} | {fmt(secs[1])} |"
        )
    print()
    print(
        "| task | recipe | runs | balanced acc mean (min-max) | AUC mean (min-max) "
        "| train wall s mean | train CPU s mean |"
    )
    print("|---|---|---|---|---|---|---|")
    groups = {}
    for task, recipe, b, a, secs in results:
        groups.setdefault((task, recipe), []).append((b, a, secs))
    for (task, recipe), xs in sorted(groups.items()):
        bs = [x[0] for x in xs]
        As = [x[1] for x in xs]
        wall = statistics.mean(x[2][0] for x in xs)
        cpu = statistics.mean(x[2][1] for x in xs)
        print(
            f"| {task} | {recipe} | {len(xs)} | {statistics.mean(bs):.3f} ({min(bs):.3f}-{max(bs):.3f}) "
            f"| {statistics.mean(As):.3f} ({min(As):.3f}-{max(As):.3f}) | {fmt(wall)} | {fmt(cpu)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
