"""Shared helpers of the detectron2 end-to-end tests (not a test module).

* :func:`synthetic_root` generates the built-in synthetic dataset (its default size, so the
  ordinary ``textkd_synthetic_*`` names of a ``tools/train_net.py`` subprocess find it through
  ``DETECTRON2_DATASETS``) once per pytest session, under pytest's base temporary directory.
* :func:`register_tiny` registers ``textkd_synthetic_tiny_{train,val}_sem_seg``: a handful of
  images of that dataset, so in-process runs train and evaluate in seconds.
* :func:`write_config` writes a small YAML on top of the repository's synthetic recipes;
  :func:`tiny_opts` are the ``KEY VALUE`` overrides of a tiny run (batch 2, 64×64 crops, a few
  iterations, narrow heads, no loader workers).
* :func:`run_training` / :func:`evaluate` drive :class:`textkd.engine.Trainer` in-process;
  :func:`run_tool` runs ``tools/*.py`` (train_net, export_student) in a subprocess.
* :func:`tiny_clip_checkpoint` registers a tiny open_clip architecture and saves it with random
  weights to a local file (nothing is downloaded).

Import this module only from detectron2-marked test modules (``tests/test_*_d2.py``, which
``conftest.py`` skips when detectron2 is absent) or lazily, as ``conftest.py``'s fixtures do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import HookBase, default_argument_parser
from textkd.d2.register import register_sem_seg
from textkd.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_COLORS, load_synthetic

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
SYNTH_CONFIGS = ROOT / "configs" / "Synthetic"
PYTHON = sys.executable

TINY_TRAIN = "textkd_synthetic_tiny_train_sem_seg"
TINY_VAL = "textkd_synthetic_tiny_val_sem_seg"
NUM_CLASSES = len(SYNTHETIC_CLASSES)

# a tiny open_clip architecture (text tower width 64, 2 layers): real open_clip code, random
# weights, registered under this name in every process that needs it
TINY_CLIP = "textkd-tiny-e2e-clip"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


# --------------------------------------------------------------------------- runtime


@contextlib.contextmanager
def one_thread():
    """Run torch single-threaded inside the block: on a few shared CPU cores, several threads
    per process are many times slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# --------------------------------------------------------------------------- data


def synthetic_root(tmp_path_factory) -> str:
    """The session's dataset root holding the full synthetic dataset (generated on first call;
    later calls in the same session find it complete)."""
    from textkd.data.synthetic import ensure_synthetic

    root = tmp_path_factory.getbasetemp() / "d2_datasets"
    root.mkdir(exist_ok=True)
    for split in ("train", "val"):
        ensure_synthetic(str(root), split)
    return str(root)


def register_tiny(root: str, n_train: int = 16, n_val: int = 6) -> tuple[str, str]:
    """Register the tiny train/val datasets (the first images of the synthetic splits under
    ``root``) with the synthetic metadata; returns their names."""
    for name, split, n in ((TINY_TRAIN, "train", n_train), (TINY_VAL, "val", n_val)):
        base = os.path.join(root, "textkd_synthetic")
        register_sem_seg(
            name,
            lambda r=root, s=split, k=n: load_synthetic(r, s)[:k],
            stuff_classes=list(SYNTHETIC_CLASSES),
            stuff_colors=[list(c) for c in SYNTHETIC_COLORS],
            evaluator_type="sem_seg",
            image_root=os.path.join(base, "images", split),
            sem_seg_root=os.path.join(base, "labels", split),
        )
    assert MetadataCatalog.get(TINY_TRAIN).stuff_classes == list(SYNTHETIC_CLASSES)
    return TINY_TRAIN, TINY_VAL


# --------------------------------------------------------------------------- configs


def _yaml_value(value: Any) -> str:
    return json.dumps(value)


def write_config(path: str | os.PathLike, base: str, body: str = "") -> str:
    """Write ``_BASE_: <configs/Synthetic/base>`` (absolute) followed by ``body`` (YAML) to
    ``path``; returns the path as a string."""
    base_path = base if os.path.isabs(base) else str(SYNTH_CONFIGS / base)
    Path(path).write_text(f"_BASE_: {_yaml_value(base_path)}\n{body}")
    return str(path)


def tiny_opts(
    output_dir: str | os.PathLike,
    max_iter: int = 4,
    checkpoint_period: int = 1000,
    eval_period: int = 0,
    train: str = TINY_TRAIN,
    test: str | None = TINY_VAL,
    batch: int = 2,
    crop: int = 64,
    lr: float = 0.01,
    channels: int | None = 32,
    extra: Iterable[Any] = (),
) -> list[str]:
    """``KEY VALUE`` overrides of a tiny CPU run (see the module docstring); ``channels`` is the
    head width (None keeps the config's)."""
    opts: list[Any] = ["MODEL.DEVICE", "cpu"]
    if channels is not None:
        opts += ["MODEL.SEM_SEG_HEAD.CHANNELS", channels, "MODEL.SEM_SEG_HEAD.AUX_CHANNELS", 16]
    opts += [
        "DATASETS.TRAIN", f"('{train}',)",
        "DATASETS.TEST", f"('{test}',)" if test else "()",
        "INPUT.CROP.SIZE", f"({crop}, {crop})",
        "SOLVER.IMS_PER_BATCH", batch,
        "SOLVER.REFERENCE_IMS_PER_BATCH", 0,
        "SOLVER.BASE_LR", lr,
        "SOLVER.MAX_ITER", max_iter,
        "SOLVER.CHECKPOINT_PERIOD", checkpoint_period,
        "TEST.EVAL_PERIOD", eval_period,
        "DATALOADER.NUM_WORKERS", 0,
        "OUTPUT_DIR", str(output_dir),
        "SEED", 0,
    ]  # fmt: skip
    opts += list(extra)
    return [str(v) for v in opts]


def load_cfg(config_file: str, opts: Sequence[str]) -> CfgNode:
    """``textkd.engine.load_config`` (detectron2 defaults + TextKD keys + file + opts)."""
    from textkd.engine import load_config

    return load_config(str(config_file), list(opts))


def teacher_config(
    path: str | os.PathLike,
    arch: str = "resnet18d",
    channels: int = 48,
    output_stride: int = 8,
    lad: bool = False,
    num_classes: int = NUM_CLASSES,
    train: str | None = TINY_TRAIN,
) -> str:
    """A small synthetic teacher config: ``arch`` backbone at ``output_stride``, DeepLabV3 head
    of width ``channels``, ``num_classes``, trained on ``train`` (None: no dataset), optionally
    label-conditioned (LAD: 3 + 1 input channels)."""
    body = f"""MODEL:
  SEG_BACKBONE:
    ARCH: "{arch}"
    OUTPUT_STRIDE: {output_stride}
    IN_CHANS: {4 if lad else 3}
  SEM_SEG_HEAD:
    NUM_CLASSES: {num_classes}
    CHANNELS: {channels}
    AUX_CHANNELS: 16
  LAD:
    ENABLED: {lad}
DATASETS:
  TRAIN: {f'("{train}",)' if train else "()"}
  TEST: ("{TINY_VAL}",)
"""
    return write_config(path, "Base-Synthetic.yaml", body)


def save_random_teacher(cfg_file: str, path: str | os.PathLike, seed: int = 0) -> str:
    """Build the model of ``cfg_file`` with random weights (seeded) and save it as a TextKD
    checkpoint ``{"model": state_dict}`` at ``path``; returns the path."""
    from detectron2.modeling import build_model

    cfg = load_cfg(cfg_file, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(seed)
    model = build_model(cfg)
    torch.save({"model": model.state_dict()}, str(path))
    return str(path)


def read_segmentor_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``segmentor.*`` entries of a TextKD checkpoint file, prefix removed."""
    state = torch.load(str(path), map_location="cpu", weights_only=False)["model"]
    return {k[len("segmentor.") :]: v for k, v in state.items() if k.startswith("segmentor.")}


# --------------------------------------------------------------------------- running


class LossRecorder(HookBase):
    """A detectron2 hook recording every iteration's losses (floats) in ``self.losses``."""

    def __init__(self) -> None:
        self.losses: list[dict[str, float]] = []
        self.iters: list[int] = []

    def after_step(self) -> None:
        storage = self.trainer.storage
        row = {
            k: float(v)
            for k, (v, it) in storage.latest().items()
            if (k.startswith("loss_") or k == "total_loss") and it == storage.iter
        }
        self.losses.append(row)
        self.iters.append(int(storage.iter))


def build_trainer(cfg: CfgNode, resume: bool = False, hooks: Sequence[Any] = ()):
    """A :class:`textkd.engine.Trainer` for ``cfg`` with ``hooks`` appended, resumed or loaded
    like ``tools/train_net.py`` does."""
    from detectron2.utils.env import seed_all_rng
    from textkd.engine import Trainer

    seed_all_rng(cfg.SEED)  # as detectron2's default_setup does for rank 0
    trainer = Trainer(cfg)
    if hooks:
        trainer.register_hooks(list(hooks))
    trainer.resume_or_load(resume=resume)
    return trainer


def run_training(cfg: CfgNode, resume: bool = False, record: bool = True):
    """Train ``cfg`` in-process; returns ``(trainer, recorder)``."""
    rec = LossRecorder() if record else None
    trainer = build_trainer(cfg, resume=resume, hooks=[rec] if rec is not None else ())
    trainer.train()
    return trainer, rec


def evaluate(cfg: CfgNode, weights: str) -> dict:
    """``tools/train_net.py --eval-only`` in-process: build, load ``weights``, test."""
    from textkd.engine import TextKDCheckpointer, Trainer

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(weights)
    model = Trainer.build_model(cfg)
    TextKDCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
        cfg.MODEL.WEIGHTS, resume=False
    )
    return Trainer.test(cfg, model)


def subprocess_env(dataset_root: str, **extra: str) -> dict[str, str]:
    """Environment of a ``tools/*.py`` subprocess: the session's dataset root, one thread."""
    env = dict(os.environ)
    env["DETECTRON2_DATASETS"] = dataset_root
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_tool(
    script: str,
    args: Sequence[Any],
    env: dict[str, str],
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``tools/<script>`` with ``args`` from the repository root; on failure (when
    ``check``) the assertion shows the end of its output."""
    cmd = [PYTHON, str(TOOLS / script)] + [str(a) for a in args]
    proc = subprocess.run(
        cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(cmd)} exited with {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def read_metrics(output_dir: str | os.PathLike) -> list[dict]:
    """The rows of detectron2's ``metrics.json`` in ``output_dir``."""
    path = Path(output_dir) / "metrics.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the sorted keys and the raw bytes of every tensor of a state dict."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k]
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def tiny_clip_checkpoint(directory: str | os.PathLike) -> tuple[str, str]:
    """Register :data:`TINY_CLIP` with open_clip (config written under ``directory``) and save
    the model with seeded random weights to ``directory/tiny_clip.pt`` (both only once);
    returns ``(model_name, checkpoint_path)``."""
    import open_clip

    directory = Path(directory)
    cfg_dir = directory / "clip_configs"
    cfg_file = cfg_dir / f"{TINY_CLIP}.json"
    if not cfg_file.exists():
        cfg_dir.mkdir(parents=True, exist_ok=True)
        tmp = cfg_dir / f".{TINY_CLIP}.json.tmp"
        tmp.write_text(json.dumps(TINY_CLIP_CFG))
        os.replace(tmp, cfg_file)
    open_clip.add_model_config(cfg_dir)
    ckpt = directory / "tiny_clip.pt"
    if not ckpt.exists():
        torch.manual_seed(0)
        model = open_clip.create_model(TINY_CLIP)
        torch.save(model.state_dict(), ckpt)
    return TINY_CLIP, str(ckpt)


def register_tiny_clip(directory: str | os.PathLike) -> None:
    """Register the :data:`TINY_CLIP` config written by :func:`tiny_clip_checkpoint` under
    ``directory`` in this process (e.g. a spawned worker), writing nothing."""
    import open_clip

    cfg_dir = Path(directory) / "clip_configs"
    if not (cfg_dir / f"{TINY_CLIP}.json").is_file():
        raise FileNotFoundError(f"no tiny CLIP config under {cfg_dir}: call tiny_clip_checkpoint")
    open_clip.add_model_config(cfg_dir)


def rank_trainer(cfg_file: str, opts: Sequence[str], data_root: str, resume: bool = False):
    """One rank of a 2-process run (inside ``detectron2.engine.launch``) on the train_net.py
    path: one thread, the tiny datasets registered, ``setup``, ``Trainer``, ``resume_or_load``.
    Returns the trainer, not yet trained."""
    torch.set_num_threads(1)
    from textkd.engine import Trainer, setup

    register_tiny(data_root)
    args = default_argument_parser().parse_args(
        ["--config-file", cfg_file, "--num-gpus", "2", *opts]
    )
    trainer = Trainer(setup(args))
    trainer.resume_or_load(resume=resume)
    return trainer
