#!/usr/bin/env python3
"""Checks an N-class evaluation's metrics.json against scikit-learn computed from its own
predictions.csv; exits 1 naming every figure that differs by more than 1e-9.

Usage: check_multiclass_metrics.py EVAL_DIR

EVAL_DIR is a `<run>/eval-<split>/` folder written by lesion-eval for a run of more than two
classes. The reference figures are those of scripts/fixtures/make_multiclass_metrics.py
(`expect`): accuracy, balanced accuracy, per-class recall, specificity, precision, F1 and
one-vs-rest ROC AUC, macro/weighted F1 and AUC, top-k accuracy, log loss, the confusion
matrix (counts and row-normalised) and the top-class ECE. Needs numpy and scikit-learn.
"""
import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np

TOL = 1e-9


def load_expect():
    path = Path(__file__).resolve().parent / "fixtures" / "make_multiclass_metrics.py"
    spec = importlib.util.spec_from_file_location("make_multiclass_metrics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.expect


def close(a, b):
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=TOL)


def main(argv):
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    d = Path(argv[0])
    m = json.loads((d / "metrics.json").read_text())["multiclass"]
    names = m["class_names"]
    labels, probs = [], []
    with open(d / "predictions.csv", newline="") as f:
        for row in csv.DictReader(f):
            labels.append(int(row["label"]))
            probs.append([float(row[f"p_{c}"]) for c in names])
    want = load_expect()(np.array(labels), np.array(probs))
    per_class = m["per_class"]
    got = {
        "accuracy": m["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
        "confusion_matrix": m["confusion_matrix"],
        "confusion_normalized": m["confusion_normalized"],
        "support": [c["support"] for c in per_class],
        "recall": [c["recall"] for c in per_class],
        "precision": [c["precision"] for c in per_class],
        "f1": [c["f1"] for c in per_class],
        "specificity": [c["specificity"] for c in per_class],
        "roc_auc": [c["roc_auc"] for c in per_class],
        "macro_roc_auc": m["macro_roc_auc"],
        "weighted_roc_auc": m["weighted_roc_auc"],
        "macro_precision": m["macro_precision"],
        "macro_recall": m["macro_recall"],
        "macro_f1": m["macro_f1"],
        "weighted_f1": m["weighted_f1"],
        "top_k_accuracy": {str(t["k"]): t["accuracy"] for t in m["top_k_accuracy"]},
        "log_loss": m["log_loss"],
        "ece_top": m["top_class_calibration"]["ece"],
    }
    bad = []
    for key, value in got.items():
        expected = want[key]
        if isinstance(expected, dict):
            ok = expected.keys() == value.keys() and all(close(expected[k], value[k]) for k in expected)
        else:
            ok = close(expected, value)
        print(f"{'ok ' if ok else 'BAD'} {key}: lesion {value} scikit-learn {expected}")
        if not ok:
            bad.append(key)
    print(f"{len(labels)} images, {len(names)} classes ({', '.join(names)})")
    if bad:
        print(f"differ by more than {TOL}: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
