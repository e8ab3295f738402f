#!/usr/bin/env python
"""Run a trained model on image files, folders or videos; write colour overlays or label PNGs.

A distillation config + checkpoint runs its student. Overlays use the dataset's ``stuff_colors``
with a legend of the classes present; ``--format label`` writes the class ids as 8-bit PNGs
(``<name>.png``, same size as the image). ``--compare TEACHER_CONFIG TEACHER_WEIGHTS`` writes
teacher | student | ground truth (from ``--labels DIR``, same file name as the image with
``.png``, when it exists) | the pixels where teacher and student disagree, side by side.

    python tools/predict.py --config-file CFG --weights model_final.pth \\
        --input img.jpg folder/ clip.mp4 --output out/ [--format label] \\
        [--compare TEACHER_CFG TEACHER_WEIGHTS --labels gt_folder/]

Outputs keep the input's name (``<stem>.png``; files found in a folder keep their path under
it; a video gives ``<stem>.mp4``, or ``<stem>/frame_<n>.png`` label PNGs). A folder with
unreadable images processes the rest and lists the failures at the end (exit code 1).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "TextKD")
)

import numpy as np  # noqa: E402

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Za-z0-9_]+)+$")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def collect_inputs(paths: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """``([(image_path, output_stem)], [video_path])``; a missing path is an error naming it."""
    images, videos = [], []
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"input path not found: {p}")
        if os.path.isdir(p):
            found = []
            for root, _, files in os.walk(p):
                for f in files:
                    if f.lower().endswith(IMAGE_EXTS):
                        full = os.path.join(root, f)
                        found.append((full, os.path.splitext(os.path.relpath(full, p))[0]))
            if not found:
                raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTS)}) in folder {p}")
            images += sorted(found)
        elif p.lower().endswith(VIDEO_EXTS):
            videos.append(p)
        else:
            images.append((p, os.path.splitext(os.path.basename(p))[0]))
    stems = [s for _, s in images]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise ValueError(
            f"several inputs would write the same output name(s) {dup[:5]}: give them separately"
        )
    return images, videos


def read_rgb(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - reported with the file name
        raise ValueError(f"cannot read image {path}: {e}") from None


class Predictor:
    """The student (and teacher) and the class names/colours; writes one input's outputs."""

    def __init__(self, args):
        import torch
        from textkd.predictor import build_deployable, class_info

        self.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.cfg, self.student = build_deployable(
            args.config_file, args.weights, args.opts, self.device
        )
        self.teacher = None
        if args.compare:
            tcfg_file, tweights = args.compare
            tcfg, self.teacher = build_deployable(tcfg_file, tweights, (), self.device)
            if self.teacher.num_classes != self.student.num_classes:
                raise ValueError(
                    f"teacher {tcfg_file} predicts {self.teacher.num_classes} classes, the "
                    f"student {self.student.num_classes}: they cannot be compared"
                )
            self.teacher_bgr = tcfg.INPUT.FORMAT == "BGR"
        self.bgr = self.cfg.INPUT.FORMAT == "BGR"
        self.names, self.colors = class_info(self.cfg, self.student.num_classes)
        self.args = args

    def labels(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], list | None]:
        bs = self.args.batch_size
        s = self.student.predict([im[..., ::-1] if self.bgr else im for im in images], bs)
        t = None
        if self.teacher is not None:
            t = self.teacher.predict(
                [im[..., ::-1] if self.teacher_bgr else im for im in images], bs
            )
        return s, t

    def render(self, image, student, teacher, gt) -> np.ndarray:
        from textkd.visualize import comparison, overlay, with_legend

        if self.args.format == "label":
            if self.student.num_classes > 255:
                raise ValueError("more than 255 classes do not fit an 8-bit label PNG")
            return student.astype(np.uint8)
        if teacher is not None:
            return comparison(image, teacher, student, self.names, self.colors, gt, self.args.alpha)
        over = overlay(image, student, self.colors, self.args.alpha)
        return with_legend(over, [student], self.names, self.colors)

    def ground_truth(self, stem: str, path: str, shape) -> np.ndarray | None:
        """The label PNG of an image in ``--labels`` (same name), or None when there is none;
        a label of another size than the image is an error naming both."""
        if not self.args.labels:
            return None
        for cand in (stem, os.path.splitext(os.path.basename(path))[0]):
            f = os.path.join(self.args.labels, cand + ".png")
            if os.path.isfile(f):
                from textkd.data.datasets.common import read_label

                gt = read_label(f)
                if gt.shape != tuple(shape):
                    raise ValueError(
                        f"label {f} is {gt.shape[1]}x{gt.shape[0]} but image {path} is "
                        f"{shape[1]}x{shape[0]}: not its ground truth"
                    )
                return gt
        return None


def write_png(array: np.ndarray, path: str) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(array).save(path)


def run_images(pred: Predictor, images, out_dir: str, failures: list[str]) -> int:
    from tqdm import tqdm

    done = 0
    bs = max(1, pred.args.batch_size)
    bar = tqdm(total=len(images), desc="images", unit="img")
    for s in range(0, len(images), bs):
        chunk = []
        for path, stem in images[s : s + bs]:
            try:
                chunk.append((read_rgb(path), path, stem))
            except ValueError as e:
                failures.append(str(e))
                bar.update(1)
        if not chunk:
            continue
        st, te = pred.labels([c[0] for c in chunk])
        for i, (img, path, stem) in enumerate(chunk):
            try:
                gt = pred.ground_truth(stem, path, img.shape[:2]) if te is not None else None
                pic = pred.render(img, st[i], te[i] if te is not None else None, gt)
                write_png(pic, os.path.join(out_dir, stem + ".png"))
                done += 1
            except (OSError, ValueError) as e:
                failures.append(f"{path}: {e}")
            bar.update(1)
    bar.close()
    return done


def run_video(pred: Predictor, path: str, out_dir: str) -> int:
    import cv2
    from tqdm import tqdm

    cap = cv2.VideoCapture(path)
    ok, frame = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        raise ValueError(
            f"OpenCV cannot read video {path} (unsupported codec or container, or not a video): "
            "convert it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4, or extract its frames as images"
        )
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    stem = os.path.splitext(os.path.basename(path))[0]
    writer = None
    n = 0
    bar = tqdm(total=total, desc=os.path.basename(path), unit="frame")
    bs = max(1, pred.args.batch_size)
    try:
        while ok:
            frames = []
            while ok and len(frames) < bs:
                frames.append(np.ascontiguousarray(frame[..., ::-1]))  # BGR -> RGB
                ok, frame = cap.read()
            st, te = pred.labels(frames)
            for i, img in enumerate(frames):
                pic = pred.render(img, st[i], te[i] if te is not None else None, None)
                if pred.args.format == "label":
                    write_png(pic, os.path.join(out_dir, stem, f"frame_{n:06d}.png"))
                else:
                    if writer is None:
                        os.makedirs(out_dir, exist_ok=True)
                        out = os.path.join(out_dir, stem + ".mp4")
                        fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                        writer = cv2.VideoWriter(out, fourcc, fps, (pic.shape[1], pic.shape[0]))
                        if not writer.isOpened():
                            raise OSError(f"OpenCV cannot write video {out}")
                        size = pic.shape[:2]
                    if pic.shape[:2] != size:  # the legend may change height: pad or crop
                        pad = np.full((*size, 3), 255, np.uint8)
                        h = min(size[0], pic.shape[0])
                        pad[:h] = pic[:h, : size[1]]
                        pic = pad
                    writer.write(np.ascontiguousarray(pic[..., ::-1]))
                n += 1
                bar.update(1)
    finally:
        bar.close()
        cap.release()
        if writer is not None:
            writer.release()
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config-file", required=True, help="single-model or distillation config")
    ap.add_argument("--weights", required=True, help="checkpoint of that config")
    ap.add_argument("--input", nargs="+", required=True, help="image files, folders, videos")
    ap.add_argument("--output", required=True, help="output folder")
    ap.add_argument("--format", choices=["overlay", "label"], default="overlay")
    ap.add_argument("--compare", nargs=2, metavar=("TEACHER_CONFIG", "TEACHER_WEIGHTS"))
    ap.add_argument("--labels", help="folder of ground-truth label PNGs (for --compare)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    ap.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = ap.parse_args(argv)
    # ``--input a.png dir/ MODEL.X 1``: the inputs end at the first config key (not a path)
    for i, tok in enumerate(args.input):
        if CONFIG_KEY.match(tok) and not os.path.exists(tok):
            args.opts = args.input[i:] + list(args.opts)
            args.input = args.input[:i]
            break
    if not args.input:
        ap.error("--input needs at least one image file, folder or video")
    if args.format == "label" and args.compare:
        ap.error("--compare writes pictures: use it with --format overlay")
    if args.labels and not os.path.isdir(args.labels):
        raise FileNotFoundError(f"--labels folder not found: {args.labels}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    images, videos = collect_inputs(args.input)  # before building models: fail fast
    pred = Predictor(args)
    failures: list[str] = []
    n = run_images(pred, images, args.output, failures) if images else 0
    frames = 0
    for v in videos:
        try:
            frames += run_video(pred, v, args.output)
        except (OSError, ValueError) as e:
            failures.append(str(e))
    print(f"wrote {n} image(s) and {frames} video frame(s) to {args.output}")
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
