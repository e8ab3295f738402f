"""The framework-free run checks: config validation (textkd.validate), the readable-checkpoint
check (textkd.models.weights) and the OUTPUT_DIR lock (textkd.run_lock)."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from textkd.models.weights import CheckpointFileError, check_checkpoint_file, read_state_dict
from textkd.run_lock import (
    LOCK_NAME,
    OutputDirError,
    OutputDirInUse,
    OutputDirLock,
    prepare_output_dir,
    remove_stale_tmp_files,
)
from textkd.validate import ConfigError, number_problems, unused_key_problems, validate_config

PKG = str(Path(__file__).resolve().parents[1] / "projects" / "TextKD")


def _defaults() -> dict:
    """The keys the checks read, with the defaults of detectron2 + add_textkd_config."""
    return {
        "MODEL": {
            "META_ARCHITECTURE": "TextKDSemanticSegmentor",
            "DEVICE": "cpu",
            "WEIGHTS": "",
            "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 2},
            "RESNETS": {"DEPTH": 50},
            "SEG_BACKBONE": {"NORM": "auto", "EXTRA_CHANS_INIT_STD": 0.1},
            "SEM_SEG_HEAD": {
                "NAME": "TextKDDeepLabV3Head",
                "LOSS_WEIGHT": 1.0,
                "AUX_WEIGHT": 0.4,
                "STDC_DETAIL_WEIGHT": 1.0,
            },
            "LAD": {"ENABLED": False, "CONSISTENCY_WEIGHT": 5.0, "CONSISTENCY_TEMPERATURE": 4.0},
            "DISTILL": {
                "TERMS": {},
                "TCD": {"WEIGHT": 0.0, "TEMPERATURE": 4.0},
                "TEXT": {"SCORE_TEMPERATURE": 0.07, "PROBE_WEIGHT": 1.0},
            },
        },
        "SOLVER": {"IMS_PER_BATCH": 16},
        "TEST": {"AUG": {"ENABLED": False}, "EVAL_BOTH_MIOU": True},
        "TEXTKD": {
            "ALLOW_RANDOM_WEIGHTS": False,
            "BEST_CHECKPOINT": {"ENABLED": True, "METRIC": "sem_seg/mIoU", "MODE": "max"},
        },
        "OUTPUT_DIR": "",
    }


def _cfg(**changes) -> dict:
    """A copy of the defaults with dotted-key changes (``MODEL__LAD__ENABLED=True``)."""
    cfg = copy.deepcopy(_defaults())
    for dotted, value in changes.items():
        node = cfg
        parts = dotted.split("__")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return cfg


def _problems(cfg, mode="train", **kw) -> str:
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, mode, defaults=_defaults(), **kw)
    return str(e.value)


def test_defaults_pass_every_mode(tmp_path):
    for mode in ("train", "export", "benchmark"):
        validate_config(_cfg(), mode, defaults=_defaults())
    validate_config(_cfg(TEXTKD__ALLOW_RANDOM_WEIGHTS=True), "eval", defaults=_defaults())


def test_negative_and_non_finite_weights_and_temperatures_name_their_keys():
    cfg = _cfg(
        MODEL__SEM_SEG_HEAD__AUX_WEIGHT=-1.0,
        MODEL__LAD__ENABLED=True,
        MODEL__LAD__CONSISTENCY_WEIGHT=-5.0,
        MODEL__LAD__CONSISTENCY_TEMPERATURE=0.0,
        MODEL__META_ARCHITECTURE="DistillSemanticSegmentor",
    )
    cfg["MODEL"]["DISTILL"]["TCD"]["WEIGHT"] = -3.0
    cfg["MODEL"]["DISTILL"]["TEXT"]["SCORE_TEMPERATURE"] = math.inf
    cfg["MODEL"]["DISTILL"]["TERMS"] = {
        "kd": {"METHOD": "kd", "WEIGHT": math.nan, "TEMPERATURE": -1.0},
        "dist": {"METHOD": "dist", "WEIGHT": 1.0, "BETA": -2.0},
    }
    found = number_problems(cfg)
    text = "\n".join(found)
    for key in (
        "MODEL.SEM_SEG_HEAD.AUX_WEIGHT is -1.0",
        "MODEL.LAD.CONSISTENCY_WEIGHT is -5.0",
        "MODEL.LAD.CONSISTENCY_TEMPERATURE is 0.0: a temperature must be > 0",
        "MODEL.DISTILL.TCD.WEIGHT is -3.0",
        "MODEL.DISTILL.TEXT.SCORE_TEMPERATURE is inf: a temperature must be finite",
        "MODEL.DISTILL.TERMS.kd.WEIGHT is nan",
        "MODEL.DISTILL.TERMS.kd.TEMPERATURE is -1.0",
        "MODEL.DISTILL.TERMS.dist.BETA is -2.0",
    ):
        assert key in text, key
    assert len(found) == 8
    assert "maximises the loss" in text
    # validate_config reports them all at once, before anything runs
    msg = _problems(cfg, "benchmark")
    assert "8 problems" in msg and "nothing was run" in msg


def test_cirkd_memory_node_is_checked_naming_its_keys():
    node = {
        "PIXEL_WEIGHT": -0.1,
        "REGION_WEIGHT": 0.1,
        "PIXEL_MEMORY_SIZE": 0,
        "REGION_MEMORY_SIZE": 2000,
        "PIXELS_PER_CLASS": 16,
        "PIXEL_CONTRAST_SIZE": -4096,
        "REGION_CONTRAST_SIZE": 1024.5,
        "CONTRAST_TEMPERATURE": 0.0,
        "KD_TEMPERATURE": 1.0,
        "PROJ_DIM": -1,
        "INPUT": "feature",
    }
    cfg = _cfg(MODEL__META_ARCHITECTURE="DistillSemanticSegmentor")
    cfg["MODEL"]["DISTILL"]["CIRKD_MEMORY"] = node
    msg = _problems(cfg, "benchmark")
    for key in (
        "MODEL.DISTILL.CIRKD_MEMORY.PIXEL_WEIGHT is -0.1",
        "MODEL.DISTILL.CIRKD_MEMORY.PIXEL_MEMORY_SIZE is 0",
        "MODEL.DISTILL.CIRKD_MEMORY.PIXEL_CONTRAST_SIZE is -4096",
        "MODEL.DISTILL.CIRKD_MEMORY.REGION_CONTRAST_SIZE is 1024.5: it must be an integer",
        "MODEL.DISTILL.CIRKD_MEMORY.CONTRAST_TEMPERATURE is 0.0: a temperature must be > 0",
        "MODEL.DISTILL.CIRKD_MEMORY.PROJ_DIM is -1",
    ):
        assert key in msg, key
    assert "6 problems" in msg
    good = {**node, "PIXEL_WEIGHT": 0.1, "PIXEL_MEMORY_SIZE": 20000, "PIXEL_CONTRAST_SIZE": 4096}
    good.update(REGION_CONTRAST_SIZE=1024, CONTRAST_TEMPERATURE=0.1, PROJ_DIM=0)
    cfg["MODEL"]["DISTILL"]["CIRKD_MEMORY"] = good
    validate_config(cfg, "benchmark", defaults=None)


def test_discriminator_settings_name_their_keys():
    """MODEL.DISTILL.ADVERSARIAL: a negative weight, a non-positive learning rate and betas out
    of [0, 1) are refused, each once, naming its key."""
    cfg = _cfg(MODEL__META_ARCHITECTURE="DistillSemanticSegmentor")
    good = {
        "WEIGHT": 0.001,
        "D_WEIGHT": 0.1,
        "LOSS": "hinge",
        "GP_WEIGHT": 0.0,
        "D_LR": 4e-4,
        "D_BETAS": [0.9, 0.99],
        "D_CHANNELS": 64,
        "INPUT": "logits",
        "MIN_INPUT_SIZE": 0,
    }
    cfg["MODEL"]["DISTILL"]["ADVERSARIAL"] = dict(good)
    validate_config(cfg, "train")
    cfg["MODEL"]["DISTILL"]["ADVERSARIAL"].update(WEIGHT=-0.001, D_LR=0.0, D_BETAS=[0.9, 1.0])
    msg = _problems(cfg, "train")
    assert "3 problems" in msg
    for key in ("WEIGHT is -0.001", "D_LR is 0.0", "D_BETAS is [0.9, 1.0]"):
        assert f"MODEL.DISTILL.ADVERSARIAL.{key}" in msg, key


def test_unused_keys_are_refused_when_set():
    msg = _problems(_cfg(MODEL__SEM_SEG_HEAD__LOSS_WEIGHT=2.0))
    assert "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT is 2.0 but TextKD does not use it" in msg
    assert "AUX_WEIGHT" in msg  # what to use instead
    # TextKD keys that the chosen model ignores: distillation keys of a single model, LAD keys
    # of a model without the label channel, an RGB config's test-time augmentation
    cfg = _cfg(MODEL__LAD__CONSISTENCY_WEIGHT=5.5, TEST__EVAL_BOTH_MIOU=False)
    cfg["MODEL"]["DISTILL"]["TCD"]["WEIGHT"] = 3.0
    cfg["TEST"]["AUG"]["ENABLED"] = True
    text = "\n".join(unused_key_problems(cfg, _defaults()))
    for key in (
        "MODEL.DISTILL.TCD.WEIGHT is 3.0",
        "MODEL.LAD.CONSISTENCY_WEIGHT is 5.5",
        "TEST.EVAL_BOTH_MIOU is False",
        "TEST.AUG.ENABLED is True",
    ):
        assert key in text, key
    # the same keys are used, hence accepted, where they apply
    cfg = _cfg(
        MODEL__META_ARCHITECTURE="DistillSemanticSegmentor",
        MODEL__LAD__ENABLED=True,
        MODEL__LAD__CONSISTENCY_WEIGHT=5.5,
    )
    cfg["MODEL"]["DISTILL"]["TCD"]["WEIGHT"] = 3.0
    assert unused_key_problems(cfg, _defaults()) == []
    # detectron2's ResNet keys only matter for detectron2's own backbone
    assert unused_key_problems(_cfg(MODEL__RESNETS__DEPTH=101), _defaults())
    other = _cfg(MODEL__RESNETS__DEPTH=101, MODEL__BACKBONE__NAME="MyBackbone")
    assert unused_key_problems(other, _defaults()) == []


def test_best_checkpoint_metric_that_cannot_exist_is_refused():
    key = "TEXTKD__BEST_CHECKPOINT__METRIC"
    for bad in ("mIoU", "sem_seg/", "/mIoU", "sem_seg/mIoU/x", " sem_seg/mIoU", 3):
        assert "TEXTKD.BEST_CHECKPOINT.METRIC" in _problems(_cfg(**{key: bad}))
    msg = _problems(_cfg(**{key: "sem_seg/miou"}))
    assert "'miou' is not a score" in msg and "mIoU_all" in msg
    # the second task exists only for a LAD model evaluated with both label channels
    msg = _problems(_cfg(**{key: "sem_seg_zero_label/mIoU"}))
    assert "['sem_seg']" in msg
    lad = _cfg(**{key: "sem_seg_zero_label/mIoU"})
    lad["MODEL"]["LAD"].update(ENABLED=True, EVAL_LABEL="both", EVAL_MAIN="code")
    validate_config(lad, "train")
    lad["MODEL"]["LAD"]["EVAL_MAIN"] = "zero"
    assert "sem_seg_label_code" in _problems(lad)
    assert "'max' or 'min'" in _problems(_cfg(TEXTKD__BEST_CHECKPOINT__MODE="best"))
    # fine: per-class scores (class names are the dataset's), other tasks' evaluators, or off
    for ok in ("sem_seg/IoU-road", "sem_seg/mIoU_all", "cityscapes_sem_seg/IoU"):
        validate_config(_cfg(**{key: ok}), "train", defaults=_defaults())
    validate_config(
        _cfg(**{key: "x", "TEXTKD__BEST_CHECKPOINT__ENABLED": False}), "train", defaults=_defaults()
    )


def test_plain_batch_norm_with_one_image_per_gpu_is_refused():
    msg = _problems(_cfg(SOLVER__IMS_PER_BATCH=1))
    assert "SOLVER.IMS_PER_BATCH is 1 over 1 process(es): 1 image per GPU with BN" in msg
    assert "SOLVER.IMS_PER_BATCH >= 2" in msg and "SyncBN" in msg
    msg = _problems(_cfg(SOLVER__IMS_PER_BATCH=4), world_size=4)
    assert "SOLVER.IMS_PER_BATCH >= 8" in msg
    # SyncBN normalises over the whole batch of the step; evaluation does not train
    validate_config(_cfg(SOLVER__IMS_PER_BATCH=4, MODEL__DEVICE="cuda"), "train", world_size=4)
    validate_config(_cfg(SOLVER__IMS_PER_BATCH=1), "benchmark")


def test_evaluation_without_weights_is_refused(tmp_path):
    msg = _problems(_cfg(), "eval")
    assert "--eval-only with an empty MODEL.WEIGHTS" in msg
    assert "randomly initialised" in msg and "TEXTKD.ALLOW_RANDOM_WEIGHTS True" in msg
    out = tmp_path / "empty_out"
    msg = _problems(_cfg(OUTPUT_DIR=str(out)), "eval", resume=True)
    assert f"found no last_checkpoint in OUTPUT_DIR='{out}'" in msg
    # a training run's OUTPUT_DIR with last_checkpoint is what --resume evaluates
    out.mkdir()
    (out / "last_checkpoint").write_text("model_final.pth")
    validate_config(_cfg(OUTPUT_DIR=str(out)), "eval", resume=True)
    # training from scratch needs no weights
    validate_config(_cfg(), "train")


def _save(path, obj=None) -> str:
    torch.save(obj if obj is not None else {"model": {"w": torch.arange(1000.0)}}, str(path))
    return str(path)


def test_unreadable_checkpoint_files_are_named(tmp_path):
    good = _save(tmp_path / "good.pth")
    check_checkpoint_file(good)
    assert torch.equal(read_state_dict(good)["w"], torch.arange(1000.0))

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(Path(good).read_bytes()[:-200])
    with pytest.raises(CheckpointFileError, match="truncated or damaged") as e:
        check_checkpoint_file(str(truncated), "checkpoint", "MODEL.WEIGHTS")
    assert f"MODEL.WEIGHTS='{truncated}' is not a readable checkpoint" in str(e.value)

    rand = tmp_path / "random.pth"
    rand.write_bytes(os.urandom(4096).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    with pytest.raises(CheckpointFileError, match="neither a torch.save archive nor a pickle"):
        read_state_dict(str(rand))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointFileError, match="0 bytes"):
        check_checkpoint_file(str(empty))
    # a pickle that breaks off: torch's error becomes one naming the file
    pickled = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(3)}, str(pickled), _use_new_zipfile_serialization=False)
    pickled.write_bytes(pickled.read_bytes()[:40])
    with pytest.raises(CheckpointFileError, match=f"{pickled}.*is not a readable checkpoint"):
        read_state_dict(str(pickled))

    with pytest.raises(IsADirectoryError, match="is a directory, not a checkpoint file") as e:
        check_checkpoint_file(str(tmp_path), "checkpoint", "MODEL.WEIGHTS")
    assert "good.pth" in str(e.value)  # what it holds
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_checkpoint_file(str(tmp_path / "nope.pth"))
    # validation reports the file as a problem of MODEL.WEIGHTS, before anything is built
    msg = _problems(_cfg(MODEL__WEIGHTS=str(truncated)), "eval")
    assert "MODEL.WEIGHTS" in msg and "truncated" in msg


def test_output_dir_must_be_usable(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(OutputDirError, match="is a file, not a directory") as e:
        prepare_output_dir(str(f))
    assert f"OUTPUT_DIR='{f}'" in str(e.value)
    with pytest.raises(OutputDirError, match="a part of the path is a file") as e:
        prepare_output_dir(str(f / "out"))
    assert f"OUTPUT_DIR='{f / 'out'}'" in str(e.value) and "writable directory" in str(e.value)
    assert prepare_output_dir(str(tmp_path / "new" / "out")) == str(tmp_path / "new" / "out")


_SECOND_RUN = """
import sys
from textkd.run_lock import OutputDirInUse, OutputDirLock
try:
    OutputDirLock(sys.argv[1], command="second run").acquire()
except OutputDirInUse as e:
    sys.exit(str(e))
print("acquired")
"""


def test_lock_refuses_a_second_run_and_takes_over_a_stale_one(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lock = OutputDirLock(str(out), command="first run --config-file a.yaml")
    assert lock.acquire() == []
    info = json.loads((out / LOCK_NAME).read_text())
    assert info["pid"] == os.getpid() and info["command"] == "first run --config-file a.yaml"
    assert {"host", "start_time"} <= set(info)

    env = dict(os.environ, PYTHONPATH=PKG)
    cmd = [sys.executable, "-c", _SECOND_RUN, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"OUTPUT_DIR {out} is in use by another run: pid {os.getpid()}" in proc.stderr
    assert "first run --config-file a.yaml" in proc.stderr
    with pytest.raises(OutputDirInUse):
        OutputDirLock(str(out)).acquire()

    lock.release()
    assert not (out / LOCK_NAME).exists()
    lock.release()  # idempotent

    # a lock of a dead process: taken over with a warning naming the dead run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(
        json.dumps({"pid": dead.pid, "host": lock.info["host"], "command": "crashed run"})
    )
    (out / "model_0000009.pth.tmp").write_bytes(b"partial")
    (out / "last_checkpoint.tmp").write_text("model_0000009.pth")
    (out / "model_0000004.pth").write_bytes(b"kept")
    new = OutputDirLock(str(out))
    notes = new.acquire()
    assert len(notes) == 1 and "took over the stale lock" in notes[0]
    assert f"pid {dead.pid}" in notes[0] and "crashed run" in notes[0]
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    removed = remove_stale_tmp_files(str(out))
    assert sorted(os.path.basename(p) for p in removed) == [
        "last_checkpoint.tmp",
        "model_0000009.pth.tmp",
    ]
    assert sorted(os.listdir(out)) == sorted([LOCK_NAME, "model_0000004.pth"])
    new.release()
    assert not (out / LOCK_NAME).exists()


def test_dropout_probabilities_outside_0_1_name_their_keys():
    for value in (0.0, 0.01, 0.5, 0.99):
        assert number_problems(_cfg(MODEL__SEM_SEG_HEAD__ASPP_DROPOUT=value)) == []
    for value in (1.0, -0.1, 1.5, math.nan, "0.5"):
        found = number_problems(_cfg(MODEL__SEM_SEG_HEAD__ASPP_DROPOUT=value))
        assert len(found) == 1 and found[0].startswith(
            f"MODEL.SEM_SEG_HEAD.ASPP_DROPOUT is {value!r}"
        )
    text = _problems(_cfg(MODEL__SEM_SEG_HEAD__DROPOUT=1.0))
    assert "MODEL.SEM_SEG_HEAD.DROPOUT is 1.0: a dropout probability must lie in [0, 1)" in text
