#!/usr/bin/env python3
"""Table and RATIO lines of `scripts/bench.sh` (standard library only).

    bench_summary.py RESULTS_JSONL [E2E_JSON]

RESULTS_JSONL: one JSON line per benchmark process (`lesion-bench`, `bench_torch.py`), with
at least impl (lesion | pytorch | pytorch-cl), workload, images_per_s_median, peak_rss_mib.
Each figure in the table is the median over the repeats of that process's own median.
E2E_JSON (optional): one line per end-to-end repeat, {"ours": {"wall_s", "peak_rss_mib",
...} or null, "pytorch": {...} or null}.

Ends with `RATIO <workload> <ours / PyTorch NCHW>` per workload (`RATIO end-to-end` is
PyTorch's wall time / ours, the median over the repeats where both sides ran),
`RATIO_CL <workload> <ours / PyTorch channels-last>` and `RSS_RATIO end-to-end <ours /
PyTorch>` (median likewise); ratios whose PyTorch side did not run are left out. Ratios
have three decimals, so that one just short of a goal (1.995 against 2) does not print as
meeting it.
"""
import json
import statistics
import sys

WORKLOADS = ["train-frozen", "train-all", "infer"]
IMPLS = ["lesion", "pytorch", "pytorch-cl"]


def load(path):
    runs = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            runs.setdefault((r["impl"], r["workload"]), []).append(r)
    return runs


def med(runs, key, field):
    vals = [r[field] for r in runs.get(key, []) if r.get(field) is not None]
    return statistics.median(vals) if vals else None


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def main():
    runs = load(sys.argv[1]) if len(sys.argv) > 1 else {}
    e2e = []
    if len(sys.argv) > 2:
        with open(sys.argv[2]) as f:
            e2e = [json.loads(line) for line in f if line.strip().startswith("{")]

    ratios, ratios_cl, rss_ratio = [], [], None
    head = (f"{'workload':<14} {'ours img/s':>10} {'PyTorch':>9} {'PyT CL':>9} "
            f"{'ours/PyT':>9} {'ours/CL':>8} {'RSS ours':>9} {'RSS PyT':>8} {'RSS CL':>8} {'n':>3}")
    print(head)
    print("-" * len(head))
    for w in WORKLOADS:
        if not any((i, w) in runs for i in IMPLS):
            continue
        ips = {i: med(runs, (i, w), "images_per_s_median") for i in IMPLS}
        rss = {i: med(runs, (i, w), "peak_rss_mib") for i in IMPLS}
        n = len(runs.get(("lesion", w), []))
        r = ips["lesion"] / ips["pytorch"] if ips["lesion"] and ips["pytorch"] else None
        rc = ips["lesion"] / ips["pytorch-cl"] if ips["lesion"] and ips["pytorch-cl"] else None
        if r is not None:
            ratios.append((w, r))
        if rc is not None:
            ratios_cl.append((w, rc))
        print(f"{w:<14} {fmt(ips['lesion']):>10} {fmt(ips['pytorch']):>9} "
              f"{fmt(ips['pytorch-cl']):>9} {fmt(r, '.2f'):>9} {fmt(rc, '.2f'):>8} "
              f"{fmt(rss['lesion'], '.0f'):>9} {fmt(rss['pytorch'], '.0f'):>8} "
              f"{fmt(rss['pytorch-cl'], '.0f'):>8} {n:>3}")

    if e2e:
        print()
        print(f"{'end to end':<14} {'wall s':>8} {'peak RSS MiB':>13}  detail")
        walls, rsss = [], []
        for k, rep in enumerate(e2e):
            ours, pt = rep.get("ours"), rep.get("pytorch")
            tag = f" #{k + 1}" if len(e2e) > 1 else ""
            for name, side in (("ours", ours), ("PyTorch", pt)):
                if side:
                    print(f"{name + tag:<14} {side['wall_s']:>8.1f} "
                          f"{side['peak_rss_mib']:>13.0f}  {side.get('detail', '')}")
            if ours and pt:
                walls.append(pt["wall_s"] / ours["wall_s"])
                rsss.append(ours["peak_rss_mib"] / pt["peak_rss_mib"])
        if len(e2e) > 1:
            for name, key in (("ours", "ours"), ("PyTorch", "pytorch")):
                w = [r[key]["wall_s"] for r in e2e if r.get(key)]
                if w:
                    print(f"{name + ' median':<14} {statistics.median(w):>8.1f}")
            if walls:
                print("per-pair ratios (PyTorch wall / ours): "
                      + " ".join(f"{r:.3f}" for r in walls))
        if walls:
            ratios.append(("end-to-end", statistics.median(walls)))
            rss_ratio = statistics.median(rsss)

    print()
    if not any(i != "lesion" for i, _ in runs) and not any(r.get("pytorch") for r in e2e):
        print("PyTorch did not run (not installed, or it failed): our figures alone, no RATIO lines")
    for w, r in ratios:
        print(f"RATIO {w} {r:.3f}")
    for w, r in ratios_cl:
        print(f"RATIO_CL {w} {r:.3f}")
    if rss_ratio is not None:
        print(f"RSS_RATIO end-to-end {rss_ratio:.3f}")


if __name__ == "__main__":
    sys.exit(main())
