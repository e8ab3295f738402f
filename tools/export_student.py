#!/usr/bin/env python
"""Export the deployable student of a distillation checkpoint (or a single model).

``--format pth`` (default) writes only the student's weights (``segmentor.*``): no teacher,
adapters, projectors or text buffers. The teacher is neither built nor read
(``MODEL.DISTILL.TEACHER.*`` may be empty). It loads into the single-model config of the same
student::

    python tools/export_student.py --config-file configs/.../deeplabv3_r18_cwd_tcd_trd.yaml \\
        --weights output/model_final.pth --output student.pth
    python tools/train_net.py --config-file <same yaml> --eval-only \\
        MODEL.META_ARCHITECTURE TextKDSemanticSegmentor MODEL.WEIGHTS student.pth

``--format torchscript`` / ``onnx`` write a graph that takes an ``N×3×H×W`` float32 image tensor
(pixel values 0–255, channel order INPUT.FORMAT, RGB by default; normalisation is inside) and
returns ``N×K×H×W`` logits at the input size, or the ``N×H×W`` int64 label map with
``--argmax``. ONNX has dynamic batch, height and width. After export the graph is checked
against PyTorch on a random sample input of ``--check-size`` (max abs / relative difference of
the logits, argmax agreement) and both are timed on the current device (``--device``); the ONNX
check needs onnxruntime (``pip install onnxruntime``) and says so when it is absent.
"""

import argparse
import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "TextKD")
)


def check_export(deploy, path, fmt, sizes, device, repeats, argmax) -> list[dict]:
    """Parity and latency of the exported file against ``deploy`` at each (H, W) in ``sizes``."""
    import torch
    from textkd.deploy import compare_outputs, load_exported, measure_latency

    run = load_exported(path, fmt, device)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for h, w in sizes:
        x = (torch.rand(1, 3, h, w, generator=gen) * 255).to(device)
        with torch.no_grad():
            ref = deploy(x)
        row = {"size": (h, w), **compare_outputs(ref, run(x), argmax)}
        row["torch_ms"] = measure_latency(deploy, x, repeats)
        row["export_ms"] = measure_latency(run, x, repeats)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--weights", required=True, help="distillation (or single-model) checkpoint")
    ap.add_argument("--output", required=True)
    ap.add_argument("--format", choices=["pth", "torchscript", "onnx"], default="pth")
    ap.add_argument("--argmax", action="store_true", help="graph returns the label map")
    ap.add_argument(
        "--check-size",
        type=int,
        nargs=2,
        action="append",
        metavar=("H", "W"),
        help="sample input size of the export and its check (repeatable; default 512 512)",
    )
    ap.add_argument("--no-check", action="store_true", help="skip the parity/latency check")
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per latency figure")
    ap.add_argument("--device", default="cpu", help="device of the export, check and timing")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = ap.parse_args(argv)
    if args.argmax and args.format == "pth":
        ap.error("--argmax applies to the torchscript and onnx formats")

    from textkd.models.weights import CheckpointFileError
    from textkd.validate import ConfigError

    if args.format == "pth":
        from textkd.engine import export_student
        from textkd.predictor import load_model

        try:
            # a distillation config: the student alone (no teacher is built or read)
            _, model = load_model(args.config_file, args.weights, args.opts, "cpu")
        except (ConfigError, CheckpointFileError, OSError) as e:
            print(f"export_student.py: error: {e}", file=sys.stderr)
            return 1
        state = export_student(model, args.output)
        n = sum(v.numel() for v in state.values())
        print(f"wrote {args.output}: {len(state)} tensors, {n / 1e6:.2f}M values (student only)")
        return 0

    import torch
    from textkd.deploy import export_onnx, export_torchscript, onnxruntime_available
    from textkd.predictor import build_deployable

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    try:
        cfg, deploy = build_deployable(
            args.config_file, args.weights, args.opts, args.device, argmax=args.argmax
        )
    except (ConfigError, CheckpointFileError, OSError) as e:
        print(f"export_student.py: error: {e}", file=sys.stderr)
        return 1
    sizes = [tuple(s) for s in (args.check_size or [(512, 512)])]
    sample = (torch.rand(1, 3, *sizes[0], generator=torch.Generator().manual_seed(0)) * 255).to(
        args.device
    )
    if args.format == "torchscript":
        export_torchscript(deploy, args.output, sample)
    else:
        export_onnx(deploy, args.output, sample)
    out_kind = "label map N×H×W" if args.argmax else f"logits N×{deploy.num_classes}×H×W"
    print(
        f"wrote {args.output} ({args.format}): image N×3×H×W float 0-255 {cfg.INPUT.FORMAT} -> "
        f"{out_kind}"
    )
    if args.no_check:
        return 0
    if args.format == "onnx" and not onnxruntime_available():
        print("check skipped: onnxruntime is not installed (pip install onnxruntime)")
        return 0
    engine = "onnxruntime" if args.format == "onnx" else "torch.jit"
    rows = check_export(
        deploy, args.output, args.format, sizes, args.device, args.repeats, args.argmax
    )
    ok = True
    for r in rows:
        h, w = r["size"]
        fine = r["argmax_agreement"] >= 0.999 and (args.argmax or r["max_rel"] <= 1e-4)
        ok &= fine
        diff = "" if args.argmax else f"max abs diff {r['max_abs']:.2e} (rel {r['max_rel']:.2e}), "
        print(
            f"check {h}x{w} on {args.device}: {diff}argmax agreement "
            f"{100 * r['argmax_agreement']:.3f}%; latency PyTorch {r['torch_ms']:.1f} ms, "
            f"{engine} {r['export_ms']:.1f} ms{'' if fine else '  <-- MISMATCH'}"
        )
    if not ok:
        print(
            f"the exported {args.format} model does not match PyTorch (argmax agreement < 99.9% "
            "or logits beyond 1e-4 relative): do not deploy it",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
