#!/usr/bin/env python3
"""Builds one folder per diagnosis from an ISIC-style folder, for multi-class training.

    python3 scripts/isic_classes.py ../shared/data/isic2017-256 OUT_DIR
    lesion-prep OUT_DIR --out data/isic3 --malignant melanoma

DATA_DIR holds `labels.csv` (columns `image_id` and `diagnosis`; other columns are ignored)
and the images in sub-folders (ISIC 2017 at 256 px: `Benign/` and `Malignant/`), each file
named by its image id (`ISIC_0000000.jpg`). OUT_DIR gets one folder per diagnosis as
written in the CSV (`melanoma/`, `nevus/`, `seborrheic_keratosis/`) holding the images of
that diagnosis under their own file names.

No image data is duplicated when it can be avoided: each file is a hard link to the
original, else (another file system, or links to files of another user refused) a
symbolic link to its absolute path (lesion-prep follows links to files), else a copy. The
counts per diagnosis and per method are printed.

OUT_DIR must not exist, be empty, or be a folder this script made (it leaves a hidden
`.isic_classes.json` listing what it wrote, which lesion-prep skips); then only the files
it wrote are replaced. Anything else in OUT_DIR makes it refuse and change nothing.
Plain Python 3 standard library.
"""

import argparse
import csv
import json
import os
import shutil
import sys

MARKER = ".isic_classes.json"
MARKER_FORMAT = "lesion-isic-classes"


class Refusal(Exception):
    """An input or output this script will not use; the message says why."""


def read_labels(data_dir):
    """[(image_id, diagnosis)] from DATA_DIR/labels.csv, in file order."""
    path = os.path.join(data_dir, "labels.csv")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = {"image_id", "diagnosis"} - set(reader.fieldnames or [])
            if missing:
                raise Refusal(f"{path}: no column {', '.join(sorted(missing))} "
                              f"(columns: {', '.join(reader.fieldnames or [])})")
            rows = []
            for line, row in enumerate(reader, start=2):
                image_id = (row["image_id"] or "").strip()
                diagnosis = (row["diagnosis"] or "").strip()
                if not image_id or not diagnosis:
                    raise Refusal(f"{path} line {line}: empty image_id or diagnosis")
                if not safe_name(diagnosis):
                    raise Refusal(f"{path} line {line}: diagnosis {diagnosis!r} cannot be "
                                  "a folder name")
                rows.append((image_id, diagnosis))
    except OSError as e:
        raise Refusal(f"{path}: {e.strerror or e}") from e
    except (UnicodeDecodeError, csv.Error) as e:
        raise Refusal(f"{path}: not a readable CSV file ({e})") from e
    if not rows:
        raise Refusal(f"{path}: no rows")
    return rows


def safe_name(name):
    return (name not in (".", "..") and not name.startswith(".")
            and "/" not in name and "\\" not in name and "\0" not in name)


def index_images(data_dir):
    """{image id: path} of every file in the sub-folders of DATA_DIR (ids must be unique)."""
    found = {}
    for entry in sorted(os.scandir(data_dir), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        for root, dirs, files in os.walk(entry.path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                stem = os.path.splitext(name)[0]
                path = os.path.join(root, name)
                if stem in found:
                    raise Refusal(f"two files for image {stem}: {found[stem]} and {path}")
                found[stem] = path
    return found


def check_out_dir(out_dir):
    """The files a previous run wrote into OUT_DIR (to replace), or [] for a new folder.
    Refuses a folder holding anything else."""
    if not os.path.lexists(out_dir):
        return []
    if not os.path.isdir(out_dir) or os.path.islink(out_dir):
        raise Refusal(f"{out_dir}: exists and is not a folder")
    entries = os.listdir(out_dir)
    if not entries:
        return []
    marker = os.path.join(out_dir, MARKER)
    if MARKER not in entries:
        raise Refusal(f"{out_dir}: not empty and not made by this script; "
                      "give a new or empty folder")
    try:
        with open(marker, encoding="utf-8") as f:
            record = json.load(f)
        assert record["format"] == MARKER_FORMAT
        written = [str(p) for p in record["files"]]
        folders = {p.split("/")[0] for p in written}
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
        raise Refusal(f"{marker}: unreadable ({e}); remove {out_dir} by hand") from e
    ours = set(written)
    for top in entries:
        if top == MARKER:
            continue
        if top not in folders:
            raise Refusal(f"{out_dir}: holds {top}, which this script did not write")
        for root, dirs, files in os.walk(os.path.join(out_dir, top)):
            for name in dirs + files:
                rel = os.path.relpath(os.path.join(root, name), out_dir).replace(os.sep, "/")
                if rel not in ours:
                    raise Refusal(f"{out_dir}: holds {rel}, which this script did not write")
    return written


def place(src, dst):
    """Makes dst a hard link to src, else a symbolic link, else a copy; returns which."""
    try:
        os.link(src, dst)
        return "hard link"
    except OSError:
        pass
    try:
        os.symlink(os.path.realpath(src), dst)
        return "symbolic link"
    except OSError:
        pass
    shutil.copyfile(src, dst)
    return "copy"


def build(data_dir, out_dir):
    rows = read_labels(data_dir)
    images = index_images(data_dir)
    missing = [image_id for image_id, _ in rows if image_id not in images]
    if missing:
        raise Refusal(f"{len(missing)} image(s) of labels.csv not found under {data_dir} "
                      f"(first: {', '.join(missing[:5])})")
    previous = check_out_dir(out_dir)
    for rel in sorted(previous, key=lambda p: -p.count("/")):
        path = os.path.join(out_dir, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        elif os.path.lexists(path):
            os.remove(path)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    counts = {}
    methods = {}
    for image_id, diagnosis in rows:
        folder = os.path.join(out_dir, diagnosis)
        if diagnosis not in counts:
            os.makedirs(folder, exist_ok=True)
            written.append(diagnosis)
            counts[diagnosis] = 0
        src = images[image_id]
        name = os.path.basename(src)
        dst = os.path.join(folder, name)
        if os.path.lexists(dst):
            raise Refusal(f"image {image_id} is listed twice in labels.csv")
        how = place(src, dst)
        written.append(f"{diagnosis}/{name}")
        counts[diagnosis] += 1
        methods[how] = methods.get(how, 0) + 1
        # Record as we go, so that a run stopped half-way can be rerun.
        if len(written) % 500 == 0:
            write_marker(out_dir, written)
    write_marker(out_dir, written)
    return counts, methods


def write_marker(out_dir, written):
    tmp = os.path.join(out_dir, MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"format": MARKER_FORMAT, "files": written}, f, indent=0)
        f.write("\n")
    os.replace(tmp, os.path.join(out_dir, MARKER))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Build one folder per diagnosis (labels.csv `diagnosis` column) from an "
                    "ISIC-style folder, with links instead of copies where possible.")
    parser.add_argument("data_dir", help="folder with labels.csv and the images in sub-folders")
    parser.add_argument("out_dir", help="folder to create (new, empty, or made by this script)")
    args = parser.parse_args(argv)
    try:
        counts, methods = build(args.data_dir, args.out_dir)
    except Refusal as e:
        print(f"isic_classes: {e}", file=sys.stderr)
        return 2
    width = max(len(d) for d in counts)
    for diagnosis in sorted(counts):
        print(f"{diagnosis:<{width}} {counts[diagnosis]:>6}")
    print(f"{'total':<{width}} {sum(counts.values()):>6}")
    plural = {"hard link": "hard links", "symbolic link": "symbolic links", "copy": "copies"}
    how = ", ".join(f"{n} {m if n == 1 else plural[m]}" for m, n in sorted(methods.items()))
    print(f"wrote {len(counts)} class folders into {args.out_dir} ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
