"""CIRKD's memory term in training (issue 12, point 4): its queues are checkpointed and a run
resumed from a middle checkpoint ends bit-identical (queues, pointers, projection head, student)
to the uninterrupted run; in a 2-process gloo run both ranks hold identical queues (each rank
enqueues the teacher embeddings of both ranks' images; DDP does not broadcast the queues); the
student alone (evaluation, export) loads such a checkpoint without the term's entries."""

from __future__ import annotations

import json
import os
import shutil
from datetime import timedelta

import pytest
import torch

pytestmark = pytest.mark.detectron2

import _d2_helpers as H  # noqa: E402
from detectron2.engine import launch  # noqa: E402

MAX_ITER, PERIOD = 6, 3
MIDDLE = f"model_{PERIOD - 1:07d}.pth"
BUFFERS = ("pixel_queue", "pixel_ptr", "region_queue", "region_ptr", "rng_seed", "steps")


@pytest.fixture(scope="module")
def teacher(data_root, tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher")
    cfg_file = H.teacher_config(d / "teacher.yaml", channels=48)
    return cfg_file, H.save_random_teacher(cfg_file, d / "teacher.pth", seed=1)


def cirkd_config(path, teacher) -> str:
    """The CIRKD recipe (KD 1 + pixel pairs 1 + memory pixel 0.1 + memory region 0.1) on the
    synthetic R18 student (32 channels) and a 48-channel teacher, with small queues."""
    t_cfg, t_weights = teacher
    body = f"""MODEL:
  META_ARCHITECTURE: "DistillSemanticSegmentor"
  DISTILL:
    TEACHER:
      CONFIG_FILE: "{t_cfg}"
      WEIGHTS: "{t_weights}"
    TERMS:
      kd: {{METHOD: kd, INPUT: logits, WEIGHT: 1.0, TEMPERATURE: 1.0}}
      cirkd: {{METHOD: cirkd, INPUT: feature, WEIGHT: 1.0, TEMPERATURE: 0.1}}
    CIRKD_MEMORY:
      PIXEL_WEIGHT: 0.1
      REGION_WEIGHT: 0.1
      PIXEL_MEMORY_SIZE: 60
      REGION_MEMORY_SIZE: 5
      PIXEL_CONTRAST_SIZE: 64
      REGION_CONTRAST_SIZE: 16
"""
    return H.write_config(path, "deeplabv3_r18_baseline.yaml", body)


def _opts(out, batch=2, workers=0):
    return H.tiny_opts(
        out,
        max_iter=MAX_ITER,
        checkpoint_period=PERIOD,
        batch=batch,
        test=None,
        extra=["DATALOADER.NUM_WORKERS", workers],
    )


def _model(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_memory_state_survives_resume_bit_identically(data_root, teacher, tmp_path):
    from textkd.engine import TextKDCheckpointer, build_eval_model, export_student

    cfg_file = cirkd_config(tmp_path / "cirkd.yaml", teacher)
    full = tmp_path / "full"
    trainer, rec_full = H.run_training(H.load_cfg(cfg_file, _opts(full)))
    keys = {"loss_kd", "loss_cirkd", "loss_cirkd_memory_pixel", "loss_cirkd_memory_region"}
    assert all(keys <= set(row) for row in rec_full.losses)
    model = trainer.model
    assert model.cirkd_memory.pixel_queue.shape == (H.NUM_CLASSES, 60, 48)
    # the projection head trains with the student
    assert any(id(p) in {id(q) for g in trainer.optimizer.param_groups for q in g["params"]}
               for p in model.cirkd_memory.project_head.parameters())  # fmt: skip

    middle, final = _model(full / MIDDLE), _model(full / "model_final.pth")
    for name in BUFFERS:
        assert f"cirkd_memory.{name}" in middle, name
    assert int(middle["cirkd_memory.steps"]) == PERIOD and int(final["cirkd_memory.steps"]) == 6
    assert int(final["cirkd_memory.pixel_ptr"].sum()) > 0
    assert not torch.equal(middle["cirkd_memory.pixel_queue"], final["cirkd_memory.pixel_queue"])

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(full / MIDDLE, resumed / MIDDLE)
    (resumed / "last_checkpoint").write_text(MIDDLE)
    rec = H.LossRecorder()
    t2 = H.build_trainer(H.load_cfg(cfg_file, _opts(resumed)), True, [rec])
    assert t2.start_iter == PERIOD
    assert torch.equal(t2.model.cirkd_memory.pixel_queue, middle["cirkd_memory.pixel_queue"])
    t2.train()
    assert rec.losses == rec_full.losses[PERIOD:]
    got = _model(resumed / "model_final.pth")
    assert set(got) == set(final)
    differ = [k for k in final if not torch.equal(got[k], final[k])]
    assert not differ, differ[:5]

    # the student alone loads the checkpoint (the term's entries left out) and exports clean
    cfg = H.load_cfg(cfg_file, _opts(tmp_path / "eval"))
    student = build_eval_model(cfg)
    TextKDCheckpointer(student).load(str(full / "model_final.pth"))
    exported = export_student(student, str(tmp_path / "student.pth"))
    assert not any(k.startswith("cirkd_memory.") for k in exported)
    assert any(k.startswith("segmentor.") for k in exported)


def _dist_main(cfg_file: str, opts: list[str], data_root: str, result_dir: str):
    """One rank of the 2-process run: train, then this rank's memory state."""
    from detectron2.utils import comm

    trainer = H.rank_trainer(cfg_file, opts, data_root, resume=False)
    model = trainer.model.module
    trainer.train()
    mem = model.cirkd_memory
    out = {
        "rank": comm.get_rank(),
        "ignored": sorted(getattr(trainer.model, "parameters_to_ignore", [])),
        "memory": {n: H.state_hash({n: getattr(mem, n)}) for n in BUFFERS},
        "pixel_ptr": mem.pixel_ptr.tolist(),
        "params": H.state_hash(dict(model.named_parameters())),
    }
    with open(os.path.join(result_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump(out, f)


@pytest.mark.slow
def test_two_gloo_ranks_hold_identical_queues(data_root, teacher, tmp_path):
    cfg_file = cirkd_config(tmp_path / "cirkd.yaml", teacher)
    results = tmp_path / "results"
    results.mkdir()
    opts = H.tiny_opts(tmp_path / "out", max_iter=3, batch=4, test=None)
    launch(
        _dist_main,
        2,
        dist_url="auto",
        args=(cfg_file, opts, data_root, str(results)),
        timeout=timedelta(minutes=5),
    )
    a, b = (json.loads((results / f"rank{r}.json").read_text()) for r in (0, 1))
    # DDP leaves the queues alone: the term itself keeps them identical
    assert {f"cirkd_memory.{n}" for n in BUFFERS} <= set(a["ignored"])
    assert a["memory"] == b["memory"]
    assert a["params"] == b["params"]
    # both ranks' images were enqueued: 3 steps × 4 images (2 per rank) of up to 16 pixels
    assert sum(a["pixel_ptr"]) > 0
