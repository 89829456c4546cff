#!/usr/bin/env python3
"""Checks an evaluation's metrics.json against scikit-learn computed from its own
predictions.csv; exits 1 naming every figure that differs by more than 1e-9.

Usage: check_multiclass_metrics.py EVAL_DIR

EVAL_DIR is a folder written by lesion-eval: `<run>/eval-<split>/`, or the `CV_DIR/eval/` of
`lesion-eval --cv`.
- N classes (metrics.json has `multiclass`): the reference figures are those of
  scripts/fixtures/make_multiclass_metrics.py (`expect`): accuracy, balanced accuracy,
  per-class recall, specificity, precision, F1 and one-vs-rest ROC AUC, macro/weighted F1
  and AUC, top-k accuracy, log loss, the confusion matrix (counts and row-normalised) and
  the top-class ECE.
- Two classes (no `multiclass`): at each of `at_default_threshold` and `at_chosen_threshold`,
  ROC AUC, average precision, Brier score, log loss, ECE (10 uniform bins), accuracy,
  balanced accuracy, sensitivity, specificity, precision, F1, MCC and the confusion counts,
  from the `label` and `probability` columns.
- Cross-validation (metrics.json has `cv`): each fold's figures from the rows of
  predictions.csv with that `fold`, their mean and sample SD (`np.std(ddof=1)`), and with a
  test split, the same from test-predictions.csv plus the figures of the fold-averaged
  probabilities (mean over folds per `source_index`).
Needs numpy and scikit-learn.
"""
import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
from sklearn import metrics

TOL = 1e-9


def load_expect():
    path = Path(__file__).resolve().parent / "fixtures" / "make_multiclass_metrics.py"
    spec = importlib.util.spec_from_file_location("make_multiclass_metrics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.expect


def close(a, b):
    if isinstance(a, (np.integer, np.floating)):
        a = a.item()
    if isinstance(b, (np.integer, np.floating)):
        b = b.item()
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=TOL)


def read_predictions(path, names):
    """(labels, probabilities, folds, source indices) of a predictions.csv: the probability
    of the positive class for two classes (`names` None), the rows of `p_<class>` for N."""
    labels, probs, folds, sources = [], [], [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            labels.append(int(row["label"]))
            if names is None:
                probs.append(float(row["probability"]))
            else:
                probs.append([float(row[f"p_{c}"]) for c in names])
            folds.append(int(row["fold"]) if "fold" in row else None)
            sources.append(int(row["source_index"]))
    return np.array(labels), np.array(probs), folds, sources


def binary_figures(y, p, threshold):
    """Every scalar of lesion's BinaryMetrics at `threshold` (predicted malignant: p >= it)."""
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = metrics.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    edges = np.linspace(0.0, 1.0, 11)
    ids = np.searchsorted(edges[1:-1], p)
    ece = 0.0
    for b in range(10):
        m = ids == b
        if m.any():
            ece += m.sum() / len(y) * abs(p[m].mean() - y[m].mean())
    return {
        "roc_auc": metrics.roc_auc_score(y, p),
        "average_precision": metrics.average_precision_score(y, p),
        "brier": metrics.brier_score_loss(y, p),
        "log_loss": metrics.log_loss(y, p, labels=[0, 1]),
        "ece": ece,
        "accuracy": metrics.accuracy_score(y, pred),
        "balanced_accuracy": metrics.balanced_accuracy_score(y, pred),
        "sensitivity": metrics.recall_score(y, pred, zero_division=0),
        "specificity": metrics.recall_score(y, pred, pos_label=0, zero_division=0),
        "precision": metrics.precision_score(y, pred, zero_division=0),
        "f1": metrics.f1_score(y, pred, zero_division=0),
        "mcc": metrics.matthews_corrcoef(y, pred),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def check_binary(m, y, p, report):
    for column in ["at_default_threshold", "at_chosen_threshold"]:
        got = m[column]
        want = binary_figures(y, p, got["threshold"])
        cm = got["confusion_matrix"]
        for key, expected in want.items():
            value = cm[key] if key in ("tp", "fp", "fn", "tn") else got[key]
            report(f"{column}.{key}", value, expected)


def fold_figures(y, p, binary):
    """lesion's cv fold figures: ROC AUC (macro one-vs-rest for N), balanced accuracy,
    accuracy, log loss, and sensitivity/specificity at 0.5 or per-class figures."""
    if binary:
        f = binary_figures(y, p, 0.5)
        return {k: f[k] for k in
                ["roc_auc", "balanced_accuracy", "accuracy", "log_loss", "sensitivity",
                 "specificity"]}
    e = load_expect()(y, p)
    return {
        "roc_auc": e["macro_roc_auc"],
        "balanced_accuracy": e["balanced_accuracy"],
        "accuracy": e["accuracy"],
        "log_loss": e["log_loss"],
        "per_class": [{"recall": r, "precision": pr, "f1": f1, "roc_auc": auc}
                      for r, pr, f1, auc in zip(e["recall"], e["precision"], e["f1"],
                                                e["roc_auc"])],
    }


def flatten(figures):
    """{"roc_auc": x, "per_class.0.recall": y, ...} of a figures object."""
    out = {}
    for key, value in figures.items():
        if key == "per_class":
            for k, c in enumerate(value):
                for name, v in c.items():
                    out[f"per_class.{k}.{name}"] = v
        elif key not in ("fold", "n"):
            out[key] = value
    return out


def check_folds(prefix, got_folds, got_mean_sd, y, p, folds, binary, report):
    """Each fold's figures from its rows, and their mean and sample SD."""
    per_fold = {}
    for got in got_folds:
        k = got["fold"]
        rows = [i for i, f in enumerate(folds) if f == k]
        report(f"{prefix}folds[{k}].n", got["n"], len(rows))
        want = flatten(fold_figures(y[rows], p[rows], binary))
        mine = flatten(got)
        for key, expected in want.items():
            report(f"{prefix}folds[{k}].{key}", mine.get(key), expected)
        per_fold[k] = want
    report(f"{prefix}folds", sorted(per_fold), sorted(set(folds)))
    got_ms = flatten(got_mean_sd)
    for key in next(iter(per_fold.values())):
        values = np.array([f[key] for f in per_fold.values()], dtype=float)
        values = values[~np.isnan(values)]
        g = got_ms.get(key)
        report(f"{prefix}mean_sd.{key}.mean", g["mean"], float(np.mean(values)))
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
        report(f"{prefix}mean_sd.{key}.sd", g["sd"], sd)


def check_cv(d, cv, names, report):
    binary = names is None
    y, p, folds, _ = read_predictions(d / "predictions.csv", names)
    report("cv.k", cv["k"], len(set(folds)))
    check_folds("cv.", cv["folds"], cv["mean_sd"], y, p, folds, binary, report)
    test = cv.get("test")
    if test is None:
        return
    y, p, folds, sources = read_predictions(d / "test-predictions.csv", names)
    check_folds("cv.test.", test["folds"], test["mean_sd"], y, p, folds, binary, report)
    order = [s for s, f in zip(sources, folds) if f == folds[0]]
    by_source = {}
    for i, s in enumerate(sources):
        by_source.setdefault(s, []).append(i)
    avg_p = np.array([np.mean(p[by_source[s]], axis=0) for s in order])
    avg_y = np.array([y[by_source[s][0]] for s in order])
    got = flatten(test["fold_average"])
    report("cv.test.fold_average.n", test["fold_average"]["n"], len(order))
    for key, expected in flatten(fold_figures(avg_y, avg_p, binary)).items():
        report(f"cv.test.fold_average.{key}", got.get(key), expected)


def main(argv):
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    d = Path(argv[0])
    doc = json.loads((d / "metrics.json").read_text())
    bad = []

    def report(key, value, expected):
        ok = close(value, expected)
        print(f"{'ok ' if ok else 'BAD'} {key}: lesion {value} scikit-learn {expected}")
        if not ok:
            bad.append(key)

    if "multiclass" not in doc:
        y, p, _, _ = read_predictions(d / "predictions.csv", None)
        check_binary(doc, y, p, report)
        if "cv" in doc:
            check_cv(d, doc["cv"], None, report)
        print(f"{len(y)} images, two classes ({', '.join(doc['class_names'])})")
        if bad:
            print(f"differ by more than {TOL}: {', '.join(bad)}", file=sys.stderr)
            return 1
        return 0
    m = doc["multiclass"]
    names = m["class_names"]
    labels, probs, _, _ = read_predictions(d / "predictions.csv", names)
    want = load_expect()(labels, probs)
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
    if "cv" in doc:
        check_cv(d, doc["cv"], names, report)
    print(f"{len(labels)} images, {len(names)} classes ({', '.join(names)})")
    if bad:
        print(f"differ by more than {TOL}: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
