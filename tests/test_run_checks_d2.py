"""Runs that cannot be right are refused before their first iteration (issue 13): each case runs
``tools/train_net.py`` (or ``tools/export_student.py``) in a subprocess on the synthetic dataset
and checks the exit status and the words of the message; the OUTPUT_DIR lock with two real
training processes; a disk-full save and a teacher config at fault in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

pytestmark = pytest.mark.detectron2

import _d2_helpers as H  # noqa: E402
from textkd.engine import TextKDCheckpointer, Trainer  # noqa: E402
from textkd.run_lock import LOCK_NAME  # noqa: E402

BASELINE = str(H.SYNTH_CONFIGS / "deeplabv3_r18_baseline.yaml")
TRAIN = "textkd_synthetic_train_sem_seg"
VAL = "textkd_synthetic_val_sem_seg"


def _opts(out, **kw):
    """Tiny CPU options on the synthetic datasets that a subprocess finds by name."""
    kw.setdefault("train", TRAIN)
    kw.setdefault("test", VAL)
    return H.tiny_opts(out, **kw)


def _train_net(data_root, args, config=BASELINE):
    proc = H.run_tool(
        "train_net.py", ["--config-file", config, *args], H.subprocess_env(data_root), check=False
    )
    return proc.returncode, proc.stdout + proc.stderr


def _refused(data_root, args, config=BASELINE) -> str:
    """Run train_net.py, expect it to stop with exit status 1 before any iteration and without
    writing a checkpoint; returns its output."""
    rc, log = _train_net(data_root, args, config)
    assert rc == 1, log[-3000:]
    assert "Starting training" not in log and "Traceback" not in log, log[-3000:]
    assert "train_net.py: error:" in log
    return log[log.index("train_net.py: error:") :]  # the message, without the echoed command


def test_eval_only_without_weights_is_refused(data_root, tmp_path):
    out = tmp_path / "out"
    log = _refused(data_root, ["--eval-only", *_opts(out)])
    assert "--eval-only with an empty MODEL.WEIGHTS" in log
    assert "randomly initialised model" in log and "TEXTKD.ALLOW_RANDOM_WEIGHTS True" in log
    assert not (out / "inference").exists()


def test_eval_only_resume_on_an_empty_output_dir_is_refused(data_root, tmp_path):
    out = tmp_path / "empty"
    log = _refused(data_root, ["--eval-only", "--resume", *_opts(out)])
    assert f"--eval-only --resume found no last_checkpoint in OUTPUT_DIR='{out}'" in log
    assert "MODEL.WEIGHTS is empty" in log


def test_negative_weights_and_bad_temperatures_are_refused(data_root, tmp_path):
    extra = [
        "MODEL.SEM_SEG_HEAD.AUX_WEIGHT", "-1.0",
        "MODEL.SEM_SEG_HEAD.STDC_DETAIL_WEIGHT", "1e999",  # inf
    ]  # fmt: skip
    log = _refused(data_root, _opts(tmp_path / "out", extra=extra))
    assert "MODEL.SEM_SEG_HEAD.AUX_WEIGHT is -1.0: a loss weight must be >= 0" in log
    assert "MODEL.SEM_SEG_HEAD.STDC_DETAIL_WEIGHT is inf: a loss weight must be finite" in log


def test_distillation_weights_and_temperatures_are_refused(data_root, tmp_path):
    t_cfg = H.teacher_config(tmp_path / "teacher.yaml", channels=48)
    cfg = H.write_config(
        tmp_path / "student.yaml",
        "deeplabv3_r18_baseline.yaml",
        f"""MODEL:
  META_ARCHITECTURE: "DistillSemanticSegmentor"
  DISTILL:
    TEACHER: {{CONFIG_FILE: "{t_cfg}", WEIGHTS: "{tmp_path / 'teacher.pth'}"}}
    TERMS:
      kd: {{METHOD: kd, INPUT: logits, WEIGHT: 1.0, TEMPERATURE: -4.0}}
""",
    )
    extra = ["MODEL.DISTILL.TCD.WEIGHT", "-3.0", "MODEL.DISTILL.TRD.AFFINITY_TEMPERATURE", "0.0"]
    log = _refused(data_root, _opts(tmp_path / "out", extra=extra), config=cfg)
    assert "MODEL.DISTILL.TCD.WEIGHT is -3.0: a loss weight must be >= 0" in log
    assert "MODEL.DISTILL.TRD.AFFINITY_TEMPERATURE is 0.0: a temperature must be > 0" in log
    assert "MODEL.DISTILL.TERMS.kd.TEMPERATURE is -4.0" in log
    assert "3 problems" in log


def test_keys_accepted_but_unused_are_refused(data_root, tmp_path):
    extra = [
        "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", "2.0",
        "MODEL.LAD.CONSISTENCY_WEIGHT", "5.0",  # the default: not refused
        "MODEL.LAD.SIGMA", "0.05",  # LAD is off in this config
        "TEST.AUG.ENABLED", "True",
    ]  # fmt: skip
    log = _refused(data_root, _opts(tmp_path / "out", extra=extra))
    assert "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT is 2.0 but TextKD does not use it" in log
    assert "MODEL.LAD.SIGMA is 0.05 but TextKD does not use it" in log
    assert "TEST.AUG.ENABLED is True" in log
    assert "MODEL.LAD.CONSISTENCY_WEIGHT" not in log
    assert "3 problems" in log


def test_one_image_per_gpu_with_batch_norm_is_refused(data_root, tmp_path):
    log = _refused(data_root, _opts(tmp_path / "out", batch=1))
    assert "SOLVER.IMS_PER_BATCH is 1 over 1 process(es): 1 image per GPU with BN" in log
    assert "Use SOLVER.IMS_PER_BATCH >= 2" in log
    assert "Expected more than 1 value per channel" not in log


def test_random_file_as_weights_is_refused(data_root, tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"\x00not a checkpoint\x01" * 300)
    log = _refused(data_root, ["--eval-only", *_opts(tmp_path / "out"), "MODEL.WEIGHTS", bad])
    assert f"checkpoint MODEL.WEIGHTS='{bad}' is not a readable checkpoint" in log
    assert "weights_only" not in log


def test_truncated_checkpoint_is_refused(data_root, tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": {"x": torch.zeros(20000)}}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    log = _refused(data_root, ["--eval-only", *_opts(tmp_path / "out"), "MODEL.WEIGHTS", cut])
    assert f"MODEL.WEIGHTS='{cut}' is not a readable checkpoint" in log
    assert "truncated or damaged" in log


def test_directory_as_weights_is_refused(data_root, tmp_path):
    d = tmp_path / "run_dir"
    d.mkdir()
    (d / "model_final.pth").write_bytes(b"")
    log = _refused(data_root, ["--eval-only", *_opts(tmp_path / "out"), "MODEL.WEIGHTS", d])
    assert f"MODEL.WEIGHTS='{d}' is a directory, not a checkpoint file" in log
    assert str(d / "model_final.pth") in log
    assert "does not exist" not in log


def test_unusable_output_dir_is_named(data_root, tmp_path):
    f = tmp_path / "a_file"
    f.write_text("not a directory")
    out = f / "out"
    log = _refused(data_root, _opts(out))
    assert f"OUTPUT_DIR='{out}' cannot be used for checkpoints and logs" in log
    assert "a part of the path is a file, not a directory" in log
    assert "Set OUTPUT_DIR to a writable directory" in log


def _wait_for(path, proc, timeout=300):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, "the first run ended before taking the lock"
        assert time.time() - t0 < timeout, "the first run never took the lock"
        time.sleep(0.2)


@pytest.mark.slow
def test_second_run_on_a_locked_output_dir_is_refused(data_root, tmp_path):
    out = tmp_path / "shared"
    env = H.subprocess_env(data_root)
    first_opts = _opts(out, max_iter=40, checkpoint_period=20, lr=0.01)
    cmd = [H.PYTHON, str(H.TOOLS / "train_net.py"), "--config-file", BASELINE, *first_opts]
    log_file = tmp_path / "first.log"
    with open(log_file, "w") as log:
        first = subprocess.Popen(cmd, cwd=str(H.ROOT), env=env, stdout=log, stderr=log)
        try:
            _wait_for(out / LOCK_NAME, first)
            holder = json.loads((out / LOCK_NAME).read_text())
            assert holder["pid"] == first.pid
            # the second run: other weights (seed, LR) and length into the same OUTPUT_DIR
            second = _opts(out, max_iter=3, lr=0.05, extra=["SEED", 7])
            rc, text = _train_net(data_root, second)
            assert first.poll() is None, "the first run must still be training"
            assert rc == 1, text[-3000:]
            assert f"OUTPUT_DIR {out} is in use by another run: pid {first.pid}" in text
            assert "train_net.py" in text and "Starting training" not in text
            assert first.wait(timeout=600) == 0, log_file.read_text()[-3000:]
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    # the first run finished with its own weights, config and log
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 39
    saved = (out / "config.yaml").read_text()
    assert "MAX_ITER: 40" in saved and "SEED: 0" in saved
    assert "BASE_LR: 0.05" not in (out / "log.txt").read_text()
    assert not (out / LOCK_NAME).exists()  # released at the end
    assert not list(out.glob("*.tmp"))


def test_stale_lock_and_tmp_files_of_a_dead_run_are_cleared(data_root, tmp_path):
    out = tmp_path / "crashed"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (out / LOCK_NAME).write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname(), "command": "killed run"})
    )
    (out / "model_0000009.pth.tmp").write_bytes(b"\0" * 1000)
    rc, log = _train_net(data_root, _opts(out, max_iter=2))
    assert rc == 0, log[-3000:]
    assert f"took over the stale lock of OUTPUT_DIR {out}" in log and "killed run" in log
    assert f"removed {out / 'model_0000009.pth.tmp'}: a temporary file of a run that died" in log
    assert not (out / "model_0000009.pth.tmp").exists()
    assert (out / "model_final.pth").is_file() and not (out / LOCK_NAME).exists()


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(data_root, tmp_path):
    out = tmp_path / "full"
    cfg = H.load_cfg(BASELINE, H.tiny_opts(out, max_iter=2))
    trainer, _ = H.run_training(cfg, record=False)
    before = (out / "model_final.pth").read_bytes()
    # the next save writes its temporary file onto /dev/full: ENOSPC, as on a full disk
    target = out / "model_final.pth.tmp"
    os.symlink("/dev/full", target)
    with pytest.raises(OSError, match="no space left on device while saving checkpoint") as e:
        trainer.checkpointer.save("model_final")
    msg = str(e.value)
    assert str(out / "model_final.pth") in msg and "previous checkpoint" in msg
    assert "--resume" in msg and "enforce fail" not in msg
    assert (out / "model_final.pth").read_bytes() == before
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert not os.path.lexists(target)


def test_teacher_config_at_fault_is_named(data_root, tmp_path):
    # the teacher's own config disagrees with its dataset: 5 classes for the 8-class dataset
    t_cfg = H.teacher_config(tmp_path / "teacher5.yaml", num_classes=5)
    cfg_file = H.write_config(
        tmp_path / "student.yaml",
        "deeplabv3_r18_baseline.yaml",
        f"""MODEL:
  META_ARCHITECTURE: "DistillSemanticSegmentor"
  DISTILL:
    TEACHER: {{CONFIG_FILE: "{t_cfg}", WEIGHTS: "{tmp_path / 'teacher.pth'}"}}
    TERMS:
      kd: {{METHOD: kd, INPUT: logits, WEIGHT: 1.0}}
""",
    )
    cfg = H.load_cfg(cfg_file, H.tiny_opts(tmp_path / "out"))
    with pytest.raises(ValueError) as e:
        Trainer(cfg)
    msg = str(e.value)
    assert f"the teacher's config MODEL.DISTILL.TEACHER.CONFIG_FILE='{t_cfg}'" in msg
    assert "not the student's" in msg and "NUM_CLASSES is 5" in msg


def test_distilled_student_evaluates_and_exports_without_its_teacher(data_root, tmp_path):
    """A distillation checkpoint (student + adapter) evaluates and exports with the teacher
    keys empty: the student alone is built; the export holds exactly its weights."""
    t_cfg = H.teacher_config(tmp_path / "teacher.yaml", channels=48)
    t_weights = H.save_random_teacher(t_cfg, tmp_path / "teacher.pth", seed=1)
    body = """MODEL:
  META_ARCHITECTURE: "DistillSemanticSegmentor"
  DISTILL:
    TEACHER: {{CONFIG_FILE: "{c}", WEIGHTS: "{w}"}}
    TERMS:
      cwd_feature: {{METHOD: cwd, INPUT: feature, WEIGHT: 50.0}}
"""
    with_teacher = H.write_config(
        tmp_path / "with.yaml", "deeplabv3_r18_baseline.yaml", body.format(c=t_cfg, w=t_weights)
    )
    no_teacher = H.write_config(
        tmp_path / "without.yaml", "deeplabv3_r18_baseline.yaml", body.format(c="", w="")
    )
    # the distillation checkpoint: built (with the teacher) and saved as training saves it
    cfg = H.load_cfg(with_teacher, H.tiny_opts(tmp_path / "train"))
    torch.manual_seed(3)
    model = Trainer.build_model(cfg)
    (tmp_path / "train").mkdir()
    TextKDCheckpointer(model, str(tmp_path / "train")).save("model_final")
    ckpt_file = tmp_path / "train" / "model_final.pth"
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)["model"]
    assert "distiller.adapters.cwd_feature.weight" in ckpt

    out = tmp_path / "eval"
    rc, log = _train_net(
        data_root, ["--eval-only", *_opts(out), "MODEL.WEIGHTS", ckpt_file], config=no_teacher
    )
    assert rc == 0, log[-3000:]
    assert "building the student alone" in log
    res = json.loads((out / "inference" / VAL / "sem_seg_evaluation.json").read_text())
    assert 0.0 <= res["sem_seg"]["mIoU"] <= 100.0

    exported = tmp_path / "student.pth"
    proc = H.run_tool(
        "export_student.py",
        ["--config-file", no_teacher, "--weights", ckpt_file, "--output", exported, *_opts(out)],
        H.subprocess_env(data_root),
    )
    assert "student only" in proc.stdout
    state = torch.load(exported, map_location="cpu", weights_only=False)["model"]
    student = {k: v for k, v in ckpt.items() if k.startswith("segmentor.")}
    assert set(state) == set(student)
    for k, v in state.items():
        assert torch.equal(v, student[k]), k

    # training still refuses to start without the teacher's weights
    with pytest.raises(ValueError, match="MODEL.DISTILL.TEACHER"):
        Trainer(H.load_cfg(no_teacher, H.tiny_opts(tmp_path / "t2")))
