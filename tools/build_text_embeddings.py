#!/usr/bin/env python
"""Precompute the CLIP text bank cache of a dataset's classes (METHODS.md section 2).

Run this where the CLIP weights are available (a pretrained tag already in the local Hugging Face
hub cache, or a local checkpoint file); nothing is downloaded. Then either leave the file in the
cache dir (it is found automatically for a pretrained tag) or copy it to the training machine and
pass it as ``MODEL.TEXT_BANK.CACHE_FILE``.

Examples::

    python tools/build_text_embeddings.py --dataset cityscapes_train_sem_seg
    python tools/build_text_embeddings.py --classes road,sidewalk,building \\
        --clip-model ViT-B-16 --clip-pretrained /weights/ViT-B-16.pt --output bank.pt

``--dataset`` reads ``stuff_classes`` from detectron2's MetadataCatalog after importing
``textkd.d2.register``; ``--classes`` / ``--classes-file`` work without detectron2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from textkd.text import (
    DEFAULT_TEMPLATES,
    load_text_bank,
    text_bank_cache_path,
)


def _read_lines(path: str, what: str) -> list[str]:
    """Non-empty, stripped lines of a text file (a ``.json`` file may hold a list instead)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            items = json.load(f)
            if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
                raise ValueError(f"{what} file '{path}' must hold a JSON list of strings")
            return items
        return [line.strip() for line in f if line.strip()]


def dataset_class_names(dataset: str) -> list[str]:
    """``stuff_classes`` of a registered detectron2 dataset (imports detectron2 lazily)."""
    try:
        import textkd.d2.register  # noqa: F401  (registers the TextKD datasets)
        from detectron2.data import MetadataCatalog
    except ImportError as e:
        raise SystemExit(
            f"--dataset needs detectron2 and textkd.d2.register ({e}); use --classes instead"
        ) from e
    if dataset not in MetadataCatalog.list():
        raise SystemExit(
            f"dataset '{dataset}' is not registered; registered: {MetadataCatalog.list()}"
        )
    classes = MetadataCatalog.get(dataset).get("stuff_classes", None)
    if not classes:
        raise SystemExit(f"dataset '{dataset}' has no stuff_classes in its metadata")
    return list(classes)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="registered dataset name (uses its stuff_classes)")
    src.add_argument("--classes", help="comma-separated class names")
    src.add_argument("--classes-file", help="text file with one class name per line (or JSON list)")
    p.add_argument("--clip-model", default="ViT-B-16", help="open_clip architecture name")
    p.add_argument(
        "--clip-pretrained", default="openai", help="open_clip pretrained tag or checkpoint path"
    )
    p.add_argument("--templates-file", default="", help="prompt templates, one per line with {}")
    p.add_argument("--cache-dir", default="", help="$TEXTKD_CACHE or ~/.cache/textkd/text_bank")
    p.add_argument("--output", default="", help="explicit cache file (default: derived name)")
    p.add_argument("--no-clean-names", action="store_true", help="prompt with the raw names")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="recompute even if the cache exists")
    return p


def main(argv: list[str] | None = None) -> str:
    """Build (or find) the cache file and print its path; returns the path."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = get_parser().parse_args(argv)
    if args.dataset:
        names = dataset_class_names(args.dataset)
    elif args.classes is not None:
        names = [c.strip() for c in args.classes.split(",")]
    else:
        names = _read_lines(args.classes_file, "classes")
    templates = (
        _read_lines(args.templates_file, "templates") if args.templates_file else DEFAULT_TEMPLATES
    )
    clean = not args.no_clean_names
    if args.output:
        path = os.path.abspath(os.path.expanduser(args.output))
    else:
        path = text_bank_cache_path(
            names, args.clip_model, args.clip_pretrained, templates, args.cache_dir, clean
        )
    if args.overwrite and os.path.isfile(path):
        os.remove(path)
    bank = load_text_bank(
        names,
        source="clip",
        clip_model=args.clip_model,
        clip_pretrained=args.clip_pretrained,
        templates=templates,
        cache_file=path,
        clean_names=clean,
        device=args.device,
    )
    logging.getLogger("build_text_embeddings").info(
        "text bank %s for %d classes", tuple(bank.shape), len(names)
    )
    print(path)
    return path


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
