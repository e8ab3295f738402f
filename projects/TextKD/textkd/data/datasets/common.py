"""Shared helpers of the dataset loaders and prepare scripts (framework-free).

A loader returns detectron2-style records ``{"file_name", "sem_seg_file_name"[, "height",
"width"]}``. Prepared label maps are single-channel 8-bit PNGs of contiguous train ids with
ignore = 255; the prepare scripts write them with :func:`convert_many`, which skips finished
outputs, runs on a process pool with a progress bar and returns a :class:`SplitReport`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing import Pool

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255


class DatasetNotPreparedError(FileNotFoundError):
    """The raw dataset is there but the prepared labels are not: the message names the prepare
    script to run. A FileNotFoundError so callers can treat both cases alike."""


def datasets_root(root: str | None = None) -> str:
    """The dataset root: ``root`` when given, else ``$DETECTRON2_DATASETS``, else ``./datasets``."""
    if root:
        return root
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def prepare_command(script: str, root: str) -> str:
    """The shell command that prepares a dataset, e.g. ``python datasets/prepare_voc.py --root R``."""
    return f"python datasets/{script} --root {root}"


def require_dir(path: str, what: str, hint: str = "") -> str:
    """Return ``path`` if it is a directory, else raise FileNotFoundError naming it and ``hint``."""
    if not os.path.isdir(path):
        msg = f"{what}: expected directory {path} does not exist"
        raise FileNotFoundError(msg + (f". {hint}" if hint else ""))
    return path


def require_file(path: str, what: str, hint: str = "") -> str:
    """Return ``path`` if it is a file, else raise FileNotFoundError naming it and ``hint``."""
    if not os.path.isfile(path):
        msg = f"{what}: expected file {path} does not exist"
        raise FileNotFoundError(msg + (f". {hint}" if hint else ""))
    return path


def require_dirs(*checks: tuple[str, str, str]) -> None:
    """Like :func:`require_dir` for several ``(path, what, hint)`` at once: one
    FileNotFoundError naming every missing directory, then each distinct hint once."""
    missing = [(p, what, hint) for p, what, hint in checks if not os.path.isdir(p)]
    if not missing:
        return
    lines = [f"{what}: expected directory {p} does not exist" for p, what, _ in missing]
    hints = list(dict.fromkeys(h for _, _, h in missing if h))
    raise FileNotFoundError("; ".join(lines) + "".join(f". {h}" for h in hints))


def read_split_list(path: str, hint: str = "") -> list[str]:
    """Read an official split list: one entry per line (the first whitespace-separated token),
    blank lines and ``#`` comments skipped, order kept, duplicates removed."""
    require_file(path, "split list", hint)
    seen: dict[str, None] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            seen.setdefault(line.split()[0], None)
    return list(seen)


def write_split_list(path: str, names: Iterable[str]) -> None:
    """Write one name per line (atomically: a temporary file renamed into place)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(f"{n}\n" for n in names)
    os.replace(tmp, path)


def list_files(directory: str, suffix: str) -> list[str]:
    """Sorted file names in ``directory`` (not recursive) that end with ``suffix`` (hidden files,
    e.g. temporary outputs of an interrupted run, are skipped)."""
    return sorted(n for n in os.listdir(directory) if n.endswith(suffix) and not n.startswith("."))


def check_split_size(dataset: str, split: str, found: int, expected: int | None) -> bool:
    """Compare the number of images of a split with the official count; log a warning saying how
    many are missing (or extra) when they differ. Returns True when they match."""
    if expected is None or found == expected:
        return True
    if found < expected:
        logger.warning(
            "%s %s: found %d images, the official split has %d (%d missing); "
            "the download may be incomplete",
            dataset,
            split,
            found,
            expected,
            expected - found,
        )
    else:
        logger.warning(
            "%s %s: found %d images, the official split has %d (%d extra)",
            dataset,
            split,
            found,
            expected,
            found - expected,
        )
    return False


def build_lut(mapping: dict[int, int], default: int = IGNORE_LABEL) -> np.ndarray:
    """A 256-entry uint8 look-up table: ``lut[v] = mapping.get(v, default)``."""
    lut = np.full(256, default, dtype=np.uint8)
    for src, dst in mapping.items():
        if 0 <= src < 256:
            lut[src] = IGNORE_LABEL if dst < 0 else dst
    return lut


def read_label_png(path: str) -> np.ndarray:
    """Read a label PNG as a 2-D array of its stored values: palette images keep their palette
    indices (never converted to luminance). Raises FileNotFoundError / ValueError naming ``path``
    when it is missing, unreadable or not single-channel."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label file {path} does not exist")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except Exception as e:  # PIL raises several types for corrupt files
        raise ValueError(f"cannot read label file {path}: {e}") from e
    if arr.ndim != 2:
        raise ValueError(
            f"label file {path} has shape {arr.shape}: a label map must be a single-channel "
            f"image of class ids"
        )
    return arr


def read_label(path: str) -> np.ndarray:
    """Read a prepared label map (train ids, ignore = :data:`IGNORE_LABEL`) as a uint8 array of
    its stored values (:func:`read_label_png`); a wider-typed PNG is accepted when its values fit
    0..255. Errors name the file."""
    label = read_label_png(path)
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise ValueError(f"label file {path} has values outside 0..255 (dtype {label.dtype})")
        label = label.astype(np.uint8)
    return label


def write_label_png(path: str, label: np.ndarray, palette: Sequence[int] | None = None) -> None:
    """Write a label map as a single-channel 8-bit PNG (palette PNG when ``palette`` is given),
    atomically: a temporary file is renamed into place so an interrupted run leaves no partial
    output behind."""
    if label.ndim != 2:
        raise ValueError(f"label for {path} must be 2-D, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label for {path} has values outside 0..255")
    im = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8))  # mode "L"
    if palette is not None:
        im.putpalette(list(palette))  # becomes a "P" image with the same indices
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # hidden temporary name: directory listings skip it if a run is interrupted
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp{os.getpid()}.png")
    im.save(tmp)
    os.replace(tmp, path)


def unexpected_values(label: np.ndarray, valid: Iterable[int]) -> list[int]:
    """The sorted distinct values of ``label`` that are not in ``valid``."""
    values = np.unique(label)
    valid_set = set(int(v) for v in valid)
    return [int(v) for v in values if int(v) not in valid_set]


def convert_png_with_lut(
    src: str,
    dst: str,
    lut: np.ndarray,
    valid: Iterable[int],
    expected: str = "8-bit class ids",
) -> list[int]:
    """Write the label map ``dst = lut[src]`` of the 8-bit label PNG ``src`` (a table look-up per
    pixel). Returns the values of ``src`` not in ``valid``; ValueError ``{src}: expected
    {expected}, got dtype ...`` when ``src`` is not 8-bit."""
    raw = read_label_png(src)
    if raw.dtype != np.uint8:
        raise ValueError(f"{src}: expected {expected}, got dtype {raw.dtype}")
    write_label_png(dst, lut[raw])
    return unexpected_values(raw, valid)


# ---------------------------------------------------------------- conversion with a report


@dataclass
class Conversion:
    """One label conversion job: read ``src``, write ``dst`` (``name`` is shown in reports)."""

    src: str
    dst: str
    name: str = ""


@dataclass
class SplitReport:
    """Integrity report of one prepared split."""

    dataset: str
    split: str
    expected: int | None = None
    images: int = 0
    written: int = 0
    skipped: int = 0
    missing: list[str] = field(default_factory=list)  # images without a label source, or reverse
    bad_values: dict[str, list[int]] = field(default_factory=dict)  # file -> unexpected values
    failed: dict[str, str] = field(default_factory=dict)  # file -> error
    absent: str = ""  # why the split could not be prepared at all (what to download)

    @property
    def ok(self) -> bool:
        """True when the split is complete and clean."""
        if self.absent:
            return False
        complete = self.expected is None or self.images == self.expected
        return complete and not self.missing and not self.bad_values and not self.failed

    def format(self) -> str:
        """A few human-readable lines: counts, then what is missing or wrong (first 10 each)."""
        if self.absent:
            return f"{self.dataset} {self.split}: not found -> MISSING\n  {self.absent}"
        exp = "?" if self.expected is None else str(self.expected)
        lines = [
            f"{self.dataset} {self.split}: {self.images}/{exp} images, labels written "
            f"{self.written}, already done {self.skipped} -> {'OK' if self.ok else 'PROBLEMS'}"
        ]
        if self.expected is not None and self.images != self.expected:
            diff = self.expected - self.images
            lines.append(f"  {abs(diff)} images {'missing' if diff > 0 else 'more than expected'}")
        for title, items in (
            ("missing files", self.missing),
            (
                "unexpected label values (mapped to 255)",
                [f"{k}: {v}" for k, v in self.bad_values.items()],
            ),
            ("failed", [f"{k}: {v}" for k, v in self.failed.items()]),
        ):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines.extend(f"    {it}" for it in items[:10])
                if len(items) > 10:
                    lines.append(f"    ... and {len(items) - 10} more")
        return "\n".join(lines)


def _run_one(args: tuple[Callable[[str, str], list[int]], Conversion, bool]):
    fn, job, verify = args
    try:
        if os.path.isfile(job.dst):
            bad: list[int] = []
            if verify:
                # a finished output is only re-read, never rewritten
                read_label_png(job.dst)
            return job, "skipped", bad, ""
        bad = fn(job.src, job.dst)
        return job, "written", bad, ""
    except Exception as e:  # reported per file, the run goes on
        return job, "failed", [], f"{type(e).__name__}: {e}"


def convert_many(
    fn: Callable[[str, str], list[int]],
    jobs: Sequence[Conversion],
    report: SplitReport,
    workers: int | None = None,
    verify: bool = True,
) -> SplitReport:
    """Run ``fn(src, dst) -> unexpected source values`` for every job whose ``dst`` does not
    exist yet (idempotent), on ``workers`` processes (default: all cores) with a tqdm progress
    bar; fill ``report`` with written/skipped counts, bad values and failures."""
    from tqdm import tqdm

    workers = workers or os.cpu_count() or 1
    args = [(fn, j, verify) for j in jobs]
    desc = f"{report.dataset} {report.split}"
    if workers <= 1 or len(jobs) < 2:
        results = (_run_one(a) for a in args)
        it = tqdm(results, total=len(args), desc=desc, unit="img")
        outs = list(it)
    else:
        with Pool(workers) as pool:
            outs = list(
                tqdm(
                    pool.imap_unordered(_run_one, args, chunksize=16),
                    total=len(args),
                    desc=desc,
                    unit="img",
                )
            )
    for job, status, bad, err in outs:
        name = job.name or job.src
        if status == "written":
            report.written += 1
        elif status == "skipped":
            report.skipped += 1
        else:
            report.failed[name] = err
        if bad:
            report.bad_values[name] = bad
    return report


def stem_conversions(
    image_dir: str, raw_dir: str, out_dir: str, report: SplitReport, image_suffix: str = ".jpg"
) -> list[Conversion]:
    """The jobs ``raw_dir/{stem}.png -> out_dir/{stem}.png`` of a split whose images
    ``image_dir/{stem}{image_suffix}`` and labels pair by file stem (ADE20K, COCO-Stuff-164K).
    Sets ``report.images`` and lists in ``report.missing`` the labels an image lacks and the
    labels without an image (marked ``(no image)``)."""
    stems = [n[: -len(image_suffix)] for n in list_files(image_dir, image_suffix)]
    report.images = len(stems)
    raw = {n[:-4] for n in list_files(raw_dir, ".png")}
    jobs = []
    for s in stems:
        if s not in raw:
            report.missing.append(os.path.join(raw_dir, s + ".png"))
            continue
        src = os.path.join(raw_dir, s + ".png")
        jobs.append(Conversion(src, os.path.join(out_dir, s + ".png"), src))
    report.missing.extend(
        f"{os.path.join(raw_dir, s + '.png')} (no image)" for s in sorted(raw - set(stems))
    )
    return jobs


# ---------------------------------------------------------------- loader helpers


def missing_label_error(
    dataset: str, image: str, label: str, raw: str | None, script: str, root: str
) -> FileNotFoundError:
    """The error for an image whose prepared label is absent: DatasetNotPreparedError naming the
    prepare command when the raw label ``raw`` exists, else a FileNotFoundError naming both."""
    if raw is not None and os.path.isfile(raw):
        return DatasetNotPreparedError(
            f"{dataset} labels are not prepared: {label} is missing but the raw label {raw} "
            f"exists; run `{prepare_command(script, root)}`"
        )
    return FileNotFoundError(f"{dataset}: image {image} has no label file {label}")


def orphan_label_error(dataset: str, label: str, image: str) -> FileNotFoundError:
    """The error for a label file whose image is absent."""
    return FileNotFoundError(f"{dataset}: label file {label} has no image {image}")


def make_record(
    image: str, label: str | None, height: int | None = None, width: int | None = None
) -> dict:
    """A detectron2-style record; ``sem_seg_file_name`` only when there is a label, ``height`` /
    ``width`` only when known without opening the image."""
    rec: dict = {"file_name": image}
    if label is not None:
        rec["sem_seg_file_name"] = label
    if height is not None and width is not None:
        rec["height"] = height
        rec["width"] = width
    return rec


def not_prepared_error(
    dataset: str, missing: str, raw: str, script: str, root: str
) -> DatasetNotPreparedError:
    """The error for a dataset whose prepared output ``missing`` is absent while the raw data
    ``raw`` is present: it names the prepare command to run."""
    return DatasetNotPreparedError(
        f"{dataset} labels are not prepared: {missing} does not exist but the raw labels {raw} "
        f"do; run `{prepare_command(script, root)}`"
    )


def check_split(dataset: str, split: str, splits: Collection[str]) -> None:
    """KeyError ``unknown {dataset} split '{split}'; choose from [...]`` unless ``split`` is one
    of ``splits`` (a dict's keys count)."""
    if split not in splits:
        raise KeyError(f"unknown {dataset} split '{split}'; choose from {list(splits)}")


def require_prepared_dir(
    dataset: str, label_dir: str, raw_dir: str, what: str, hint: str, script: str, root: str
) -> str:
    """Return ``label_dir`` (the prepared labels) if it is a directory; else raise
    :func:`not_prepared_error` naming the prepare command when the raw labels ``raw_dir`` exist,
    or FileNotFoundError (``what: expected directory ...``, ``hint``) when neither does."""
    if not os.path.isdir(label_dir):
        if os.path.isdir(raw_dir):
            raise not_prepared_error(dataset, label_dir, raw_dir, script, root)
        require_dir(label_dir, what, hint)
    return label_dir


def stem_records(
    dataset: str,
    image_dir: str,
    label_dir: str,
    raw_dir: str | None,
    script: str,
    root: str,
    image_suffix: str = ".jpg",
) -> list[dict]:
    """Records pairing every image ``image_dir/{stem}{image_suffix}`` with its label
    ``label_dir/{stem}.png`` (ADE20K, COCO-Stuff-164K). An image without a label raises
    :func:`missing_label_error` (naming the prepare script when the raw label
    ``raw_dir/{stem}.png`` exists; ``raw_dir`` None: labels are used raw), a label without an
    image :func:`orphan_label_error`."""
    stems = [n[: -len(image_suffix)] for n in list_files(image_dir, image_suffix)]
    labels = {n[:-4] for n in list_files(label_dir, ".png")}
    records = []
    for s in stems:
        image = os.path.join(image_dir, s + image_suffix)
        label = os.path.join(label_dir, s + ".png")
        if s not in labels:
            raw = os.path.join(raw_dir, s + ".png") if raw_dir is not None else None
            raise missing_label_error(dataset, image, label, raw, script, root)
        records.append(make_record(image, label))
    for s in sorted(labels - set(stems)):
        raise orphan_label_error(
            dataset, os.path.join(label_dir, s + ".png"), os.path.join(image_dir, s + image_suffix)
        )
    return records


# ---------------------------------------------------------------- prepare-script entry point


def parse_prepare_args(
    description: str | None, argv: Sequence[str] | None = None, splits: Sequence[str] = ()
) -> tuple[str, int, list[str]]:
    """Parse the command line shared by every ``datasets/prepare_*.py``:
    ``[--root R] [--workers N] [--splits S ...]`` (``S`` one of ``splits``, default all of them);
    returns ``(root, workers, selected splits in the order of splits)`` and sets up INFO
    logging."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--root", default=None, help="datasets root (default: $DETECTRON2_DATASETS or ./datasets)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: all cores)"
    )
    if splits:
        parser.add_argument(
            "--splits",
            nargs="+",
            choices=list(splits),
            default=None,
            metavar="SPLIT",
            help=f"prepare and check only these splits, from {list(splits)} (default: all); "
            "the exit status is 0 when they are complete",
        )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    chosen = set(getattr(args, "splits", None) or splits)
    selected = [s for s in splits if s in chosen]
    return datasets_root(args.root), args.workers or os.cpu_count() or 1, selected


def format_reports(reports: Sequence[SplitReport]) -> str:
    """The integrity report of several splits as text."""
    return "\n".join(["integrity report:"] + [r.format() for r in reports])


def exit_status(reports: Sequence[SplitReport]) -> int:
    """0 when every split is complete and clean, 1 otherwise."""
    return 0 if all(r.ok for r in reports) else 1


def prepare_split(dataset: str, split: str, fn: Callable[[], SplitReport]) -> SplitReport:
    """``fn()``, the report of one split; a split whose folders or lists are absent
    (FileNotFoundError, whose message says what to download) gives a report marked MISSING
    instead, so the other splits are still prepared."""
    try:
        return fn()
    except FileNotFoundError as e:
        logger.warning("%s %s: not found: %s", dataset, split, e)
        return SplitReport(dataset, split, absent=str(e))


def prepare_splits(
    dataset: str,
    conversions_fn: Callable[[str, str], tuple[Sequence[Conversion], SplitReport]],
    convert_fn: Callable[[str, str], list[int]],
    splits: Sequence[str],
    root: str,
    workers: int | None = None,
) -> list[SplitReport]:
    """Prepare every split in ``splits`` that is present, in order: ``jobs, report =
    conversions_fn(root, split)``, then :func:`convert_many` runs ``convert_fn`` on the jobs; one
    report per split (see :func:`prepare_split` for absent splits)."""

    def one(split: str) -> SplitReport:
        jobs, report = conversions_fn(root, split)
        return convert_many(convert_fn, jobs, report, workers)

    return [prepare_split(dataset, s, lambda s=s: one(s)) for s in splits]


def summary(reports: Sequence[SplitReport], script: str, root: str) -> str:
    """The last lines of a prepare run: which requested splits are complete, which are missing
    or incomplete, and (when some are complete and others not) the command that accepts the
    complete ones alone."""
    ok = [r.split for r in reports if r.ok]
    if len(ok) == len(reports):
        return f"complete: {', '.join(ok)}"
    lines = []
    absent = [r.split for r in reports if r.absent]
    bad = [r.split for r in reports if not r.ok and not r.absent]
    if absent:
        lines.append(f"not found: {', '.join(absent)} (download what is named above)")
    if bad:
        lines.append(f"incomplete or with problems: {', '.join(bad)} (see above)")
    if ok:
        lines.append(
            f"complete: {', '.join(ok)}; to accept these splits alone, run "
            f"`{prepare_command(script, root)} --splits {' '.join(ok)}`"
        )
    return "\n".join(lines)


def prepare_main(
    doc: str | None,
    prepare_fn: Callable[[str, int | None, Sequence[str]], Sequence[SplitReport]],
    splits: Sequence[str],
    script: str,
    argv: Sequence[str] | None = None,
) -> int:
    """The ``main()`` of ``datasets/<script>`` (``doc`` is its help text): parse ``[--root R]
    [--workers N] [--splits S ...]``, run ``prepare_fn(root, workers, selected splits)`` and
    write the integrity report and :func:`summary` to stdout. Returns the exit status: 0 when
    every requested split is complete and clean, else 1; 2 (after ``error: ...`` on stderr)
    when the dataset is malformed (KeyError / ValueError) or the command line is wrong."""
    root, workers, selected = parse_prepare_args(doc, argv, splits)
    try:
        reports = prepare_fn(root, workers, selected)
    except (FileNotFoundError, KeyError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    sys.stdout.write(format_reports(reports) + "\n" + summary(reports, script, root) + "\n")
    return exit_status(reports)
