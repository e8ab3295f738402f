"""The holistic adversarial term in detectron2 training: the discriminator trains with its own
optimizer (out of the main one), its loss is logged, its weights and optimizer state are saved in
training checkpoints, restored exactly by ``--resume`` and identical on two gloo ranks, and never
exported with the student."""

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


def adv_config(tmp_path, weight: float = 0.001) -> str:
    """KD + CWD on logits + the adversarial term (a narrow D: the synthetic 8×8 logits of 64 px
    crops are upsampled to D's 64×64 minimum) on a small random teacher."""
    t_cfg = H.teacher_config(tmp_path / "teacher.yaml", channels=48)
    t_weights = H.save_random_teacher(t_cfg, tmp_path / "teacher.pth")
    body = f"""MODEL:
  META_ARCHITECTURE: "DistillSemanticSegmentor"
  DISTILL:
    TEACHER:
      CONFIG_FILE: "{t_cfg}"
      WEIGHTS: "{t_weights}"
    TERMS:
      kd: {{METHOD: kd, INPUT: logits, WEIGHT: 1.0, TEMPERATURE: 1.0}}
      cwd_logits: {{METHOD: cwd, INPUT: logits, WEIGHT: 3.0, TEMPERATURE: 4.0}}
    ADVERSARIAL:
      WEIGHT: {weight}
      D_CHANNELS: 8
      MIN_INPUT_SIZE: 64
"""
    return H.write_config(tmp_path / "adv.yaml", "deeplabv3_r18_baseline.yaml", body)


def _opts(out, max_iter=MAX_ITER, period=PERIOD, batch=2) -> list[str]:
    return H.tiny_opts(out, max_iter=max_iter, checkpoint_period=period, batch=batch, test=None)


def _ckpt(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _d_state(ckpt: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in ckpt["model"].items() if k.startswith("adversarial.")}


def _flat_optimizer_state(opt_state: dict) -> dict[str, torch.Tensor]:
    """An optimizer ``state_dict()`` as ``{"<param index>.<name>": tensor}``."""
    return {
        f"{i}.{name}": torch.as_tensor(v)
        for i, st in opt_state["state"].items()
        for name, v in st.items()
    }


def _assert_equal(a: dict, b: dict, what: str) -> None:
    assert set(a) == set(b), what
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{what}: {len(differ)} of {len(a)} tensors differ, e.g. {differ[:5]}"


def test_training_steps_d_logs_its_loss_and_exports_the_student_alone(data_root, tmp_path):
    from textkd.distill.base import own_parameter_ids
    from textkd.engine import build_eval_model, export_student

    cfg = H.load_cfg(adv_config(tmp_path), _opts(tmp_path / "out", max_iter=3, period=1000))
    trainer = H.build_trainer(cfg)
    model = trainer.model
    term = model.adversarial
    d0 = {k: v.clone() for k, v in term.discriminator.state_dict().items()}
    # the discriminator is the term's own: out of the main optimizer, in its own
    own = own_parameter_ids(model)
    assert own == {id(p) for p in term.discriminator.parameters()}
    main = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert main and not main & own
    assert {id(p) for p in model.segmentor.parameters() if p.requires_grad} <= main
    assert {id(p) for g in term.d_optimizer.param_groups for p in g["params"]} == own
    assert trainer.checkpointer.checkpointables["adversarial_optimizer"] is term.d_optimizer
    trainer.train()

    rows = [r for r in H.read_metrics(tmp_path / "out") if "loss_adv" in r]
    assert rows and all("d_loss_adv" in r for r in rows)
    assert rows[-1]["loss_adv"] != 0 and rows[-1]["d_loss_adv"] > 0
    d1 = term.discriminator.state_dict()
    assert not torch.equal(d0["conv1.weight"], d1["conv1.weight"])  # D took its steps
    assert len(term.d_optimizer.state) == len(own)
    # the final checkpoint holds D and its optimizer state; the student's export neither
    final = _ckpt(tmp_path / "out" / "model_final.pth")
    assert set(_d_state(final)) == {f"adversarial.discriminator.{k}" for k in d1}
    assert len(final["adversarial_optimizer"]["state"]) == len(own)
    exported = export_student(model, str(tmp_path / "student.pth"))
    assert exported and all(k.startswith("segmentor.") for k in exported)
    # and the student alone loads the training checkpoint (the D entries are left out)
    from textkd.engine import TextKDCheckpointer

    student = build_eval_model(cfg)
    assert not hasattr(student, "adversarial")
    TextKDCheckpointer(student).load(str(tmp_path / "out" / "model_final.pth"))


def test_off_by_default(data_root, tmp_path):
    cfg = H.load_cfg(adv_config(tmp_path, weight=0.0), _opts(tmp_path / "o"))
    model = H.build_trainer(cfg).model
    assert model.adversarial is None
    assert not any(k.startswith("adversarial.") for k in model.state_dict())


def test_resume_restores_d_weights_and_d_optimizer_exactly(data_root, tmp_path):
    cfg_file = adv_config(tmp_path)
    full = tmp_path / "full"
    H.run_training(H.load_cfg(cfg_file, _opts(full)), record=False)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(full / MIDDLE, resumed / MIDDLE)
    (resumed / "last_checkpoint").write_text(MIDDLE)
    trainer = H.build_trainer(H.load_cfg(cfg_file, _opts(resumed)), resume=True)
    assert trainer.start_iter == PERIOD
    middle = _ckpt(full / MIDDLE)
    # what --resume loaded is the middle checkpoint's D and D optimizer
    _assert_equal(
        {f"adversarial.{k}": v for k, v in trainer.model.adversarial.state_dict().items()},
        _d_state(middle),
        "D after loading",
    )
    _assert_equal(
        _flat_optimizer_state(trainer.model.adversarial.d_optimizer.state_dict()),
        _flat_optimizer_state(middle["adversarial_optimizer"]),
        "D optimizer after loading",
    )
    trainer.train()
    a, b = _ckpt(resumed / "model_final.pth"), _ckpt(full / "model_final.pth")
    _assert_equal(_d_state(a), _d_state(b), "D weights")
    _assert_equal(
        _flat_optimizer_state(a["adversarial_optimizer"]),
        _flat_optimizer_state(b["adversarial_optimizer"]),
        "D optimizer state",
    )
    _assert_equal(a["model"], b["model"], "whole model")
    # the remaining steps did change D (so the comparison could fail)
    assert any(not torch.equal(_d_state(middle)[k], v) for k, v in _d_state(b).items())


# --------------------------------------------------------------------------- 2 processes


def _dist_main(cfg_file: str, opts: list[str], data_root: str, result_dir: str):
    """One rank of the 2-process run: the train_net.py path, then this rank's D state."""
    from detectron2.utils import comm

    trainer = H.rank_trainer(cfg_file, opts, data_root, resume=False)
    model = trainer.model.module
    term = model.adversarial
    before = H.state_hash(term.state_dict())
    trainer.train()
    out = {
        "rank": comm.get_rank(),
        "ddp": type(trainer.model).__name__,
        "before": before,
        "d": H.state_hash(term.state_dict()),
        "d_optimizer": H.state_hash(_flat_optimizer_state(term.d_optimizer.state_dict())),
        # parameters (plain BN's running statistics are synchronised at the next forward)
        "student": H.state_hash(dict(model.segmentor.named_parameters())),
        "steps": int(term.d_optimizer.state_dict()["state"][0]["step"]),
    }
    with open(os.path.join(result_dir, f"rank{out['rank']}.json"), "w") as f:
        json.dump(out, f)


@pytest.mark.slow
def test_two_gloo_ranks_keep_the_discriminator_identical(data_root, tmp_path):
    cfg_file = adv_config(tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    opts = _opts(tmp_path / "out", max_iter=3, period=1000, batch=4)
    launch(
        _dist_main,
        2,
        dist_url="auto",
        args=(cfg_file, opts, data_root, str(results)),
        timeout=timedelta(minutes=5),
    )
    a, b = (json.loads((results / f"rank{r}.json").read_text()) for r in (0, 1))
    assert a["ddp"] == b["ddp"] == "DistributedDataParallel"
    assert a["steps"] == b["steps"] == 3
    assert a["d"] != a["before"]  # D trained
    assert a["d"] == b["d"]  # weights and buffers identical on both ranks
    assert a["d_optimizer"] == b["d_optimizer"]
    assert a["student"] == b["student"]
    final = _ckpt(tmp_path / "out" / "model_final.pth")
    assert H.state_hash(_flat_optimizer_state(final["adversarial_optimizer"])) == a["d_optimizer"]
