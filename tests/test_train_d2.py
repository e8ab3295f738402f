"""End-to-end training of a single model with detectron2 (the Foundation issue): the loss goes
down, ``--eval-only`` reproduces the end-of-training metrics, ``--resume`` continues exactly,
``tools/train_net.py``'s command line, and the errors raised before training starts."""

from __future__ import annotations

import json
import os

import pytest
import torch

pytestmark = pytest.mark.detectron2

import _d2_helpers as H  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.evaluation import DatasetEvaluators  # noqa: E402
from textkd.d2.cityscapes_evaluation import TextKDCityscapesSemSegEvaluator  # noqa: E402
from textkd.d2.register import register_sem_seg  # noqa: E402
from textkd.d2.sem_seg_evaluation import TextKDSemSegEvaluator  # noqa: E402
from textkd.data.synthetic import load_synthetic  # noqa: E402
from textkd.engine import Trainer  # noqa: E402

BASELINE = str(H.SYNTH_CONFIGS / "deeplabv3_r18_baseline.yaml")


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """30 iterations of the synthetic baseline (batch 2, 64×64 crops), evaluated at the end."""
    out = tmp_path_factory.mktemp("train_baseline")
    cfg = H.load_cfg(
        BASELINE, H.tiny_opts(out, max_iter=30, checkpoint_period=10, eval_period=30, lr=0.02)
    )
    trainer, rec = H.run_training(cfg)
    return cfg, trainer, rec, out


def _mean(values):
    return sum(values) / len(values)


def test_training_lowers_the_loss(trained):
    cfg, trainer, rec, out = trained
    assert rec.iters == list(range(30))
    for row in rec.losses:
        assert set(row) == {"total_loss", "loss_sem_seg", "loss_aux"}
        assert all(torch.isfinite(torch.tensor(v)) for v in row.values())
        # the total is the sum of the parts (CE + 0.4·aux CE, the weight already applied)
        assert row["total_loss"] == pytest.approx(row["loss_sem_seg"] + row["loss_aux"], rel=1e-5)
    total = [r["total_loss"] for r in rec.losses]
    first, last = _mean(total[:6]), _mean(total[-6:])
    assert last < 0.85 * first, f"loss did not go down: first {first:.3f}, last {last:.3f}"
    # the stored history agrees with what the hook saw
    hist = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert hist == pytest.approx(total)


def test_checkpoints_and_eval_only_reproduce_metrics(trained):
    cfg, trainer, rec, out = trained
    names = sorted(os.listdir(out))
    for n in ("model_0000009.pth", "model_0000019.pth", "model_final.pth", "last_checkpoint"):
        assert n in names
    assert not [n for n in names if n.endswith(".tmp")]
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 29
    # detectron2's layout: trainer state with the optimizer and the LR scheduler hook
    assert set(ckpt) == {"model", "trainer", "iteration"}
    assert ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 30
    assert "optimizer" in ckpt["trainer"]["_trainer"]

    final = trainer._last_eval_results
    assert set(final) == {"sem_seg"}
    for key in ("mIoU", "mIoU_all", "fwIoU", "mACC", "pACC"):
        assert 0.0 <= final["sem_seg"][key] <= 100.0
    # --eval-only on the saved checkpoint: identical numbers (same weights, same data)
    again = H.evaluate(cfg, str(out / "model_final.pth"))
    assert again == final
    # an earlier checkpoint gives other numbers: the weights really were loaded
    earlier = H.evaluate(cfg, str(out / "model_0000009.pth"))
    assert earlier != final


def test_resume_continues_from_the_saved_iteration(data_root, tmp_path):
    out = tmp_path / "run"
    base_lr = 0.02
    first = H.load_cfg(BASELINE, H.tiny_opts(out, max_iter=6, checkpoint_period=3, lr=base_lr))
    H.run_training(first)
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 5

    second = H.load_cfg(BASELINE, H.tiny_opts(out, max_iter=10, checkpoint_period=3, lr=base_lr))
    rec = H.LossRecorder()
    trainer = H.build_trainer(second, resume=True, hooks=[rec])
    assert trainer.start_iter == ckpt["iteration"] + 1 == 6
    # the restored state is the checkpoint's: schedule position, optimizer, weights
    assert trainer.scheduler.state_dict() == ckpt["trainer"]["hooks"]["LRScheduler"]
    assert trainer.scheduler.last_epoch == 6
    # optimizer: the momentum buffers and hyper-parameters of the checkpoint; the learning rate
    # is the new schedule's value at the restored position (the saved one belongs to MAX_ITER 6)
    opt_state = trainer.optimizer.state_dict()
    saved_opt = ckpt["trainer"]["_trainer"]["optimizer"]
    _assert_state_equal(opt_state["state"], saved_opt["state"], "optimizer.state")
    assert len(opt_state["state"]) == sum(len(g["params"]) for g in saved_opt["param_groups"])
    for group, saved in zip(opt_state["param_groups"], saved_opt["param_groups"]):
        assert {k: v for k, v in group.items() if k != "lr"} == {
            k: v for k, v in saved.items() if k != "lr"
        }
        assert group["lr"] == pytest.approx(base_lr * (1 - 6 / 10) ** 0.9, rel=1e-9)
    model_state = trainer.model.state_dict()
    assert set(model_state) == set(ckpt["model"])
    for k, v in ckpt["model"].items():
        assert torch.equal(model_state[k], v), k

    trainer.train()
    assert rec.iters == [6, 7, 8, 9]
    # the poly schedule of the new MAX_ITER from the restored position, every resumed step
    lrs = [v for v, it in trainer.storage.history("lr").values()]
    expected = [base_lr * (1 - i / 10) ** 0.9 for i in range(6, 10)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    ckpt2 = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt2["iteration"] == 9
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"


def _assert_state_equal(a, b, path="optimizer"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_state_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_state_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.slow
def test_train_net_command_line(data_root, tmp_path):
    """tools/train_net.py with KEY VALUE overrides trains on the registered synthetic dataset
    (found through DETECTRON2_DATASETS), and --eval-only reproduces its final evaluation."""
    env = H.subprocess_env(data_root)
    out = tmp_path / "cli"
    opts = H.tiny_opts(
        out,
        max_iter=4,
        checkpoint_period=2,
        eval_period=4,
        train="textkd_synthetic_train_sem_seg",
        test="textkd_synthetic_val_sem_seg",
    )
    proc = H.run_tool("train_net.py", ["--config-file", BASELINE, *opts], env)
    log = proc.stdout + proc.stderr
    assert "Starting training from iteration 0" in log
    final_ckpt = out / "model_final.pth"
    assert final_ckpt.is_file() and (out / "model_0000001.pth").is_file()
    ckpt = torch.load(final_ckpt, map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 3
    # the overrides reached the run: the saved config has them
    saved = (out / "config.yaml").read_text()
    assert "MAX_ITER: 4" in saved and "IMS_PER_BATCH: 2" in saved
    res_file = out / "inference" / "textkd_synthetic_val_sem_seg" / "sem_seg_evaluation.json"
    final = json.loads(res_file.read_text())
    rows = H.read_metrics(out)
    assert any("sem_seg/mIoU" in r for r in rows)
    assert max(r["iteration"] for r in rows if "total_loss" in r) == 3

    eval_out = tmp_path / "cli_eval"
    H.run_tool(
        "train_net.py",
        [
            "--config-file",
            BASELINE,
            "--eval-only",
            *H.tiny_opts(eval_out, test="textkd_synthetic_val_sem_seg"),
            "MODEL.WEIGHTS",
            str(final_ckpt),
        ],
        env,
    )
    again = json.loads(
        (
            eval_out / "inference" / "textkd_synthetic_val_sem_seg" / "sem_seg_evaluation.json"
        ).read_text()
    )
    assert again == final
    assert 0.0 <= final["sem_seg"]["mIoU"] <= 100.0


def test_num_classes_disagreeing_with_metadata_fails_before_training(data_root, tmp_path):
    out = tmp_path / "bad_classes"
    cfg = H.load_cfg(BASELINE, H.tiny_opts(out, extra=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5]))
    with pytest.raises(ValueError, match=r"NUM_CLASSES is 5 .*textkd_synthetic_tiny_train.* 8"):
        Trainer(cfg)
    assert not (out / "metrics.json").exists()
    assert not out.exists() or not list(out.glob("*.pth"))


def test_unknown_backbone_and_head_list_the_choices(data_root, tmp_path):
    cfg = H.load_cfg(BASELINE, H.tiny_opts(tmp_path, extra=["MODEL.SEG_BACKBONE.ARCH", "resnet7"]))
    with pytest.raises(ValueError, match="resnet7") as e:
        Trainer.build_model(cfg)
    for choice in ("resnet18d", "resnet50", "resnet101d", "mobilenetv2"):
        assert choice in str(e.value)

    cfg = H.load_cfg(BASELINE, H.tiny_opts(tmp_path, extra=["MODEL.SEM_SEG_HEAD.NAME", "NoHead"]))
    with pytest.raises(ValueError, match="NoHead") as e:
        Trainer.build_model(cfg)
    for choice in ("TextKDDeepLabV3Head", "TextKDPSPHead", "TextKDFCNHead"):
        assert choice in str(e.value)


def test_evaluator_is_chosen_from_metadata(data_root, tmp_path):
    cfg = H.load_cfg(BASELINE, H.tiny_opts(tmp_path))
    ev = Trainer.build_evaluator(cfg, H.TINY_VAL)
    assert isinstance(ev, TextKDSemSegEvaluator)

    records = load_synthetic(data_root, "val")[:2]
    name = "textkd_test_cityscapes_like_sem_seg"
    register_sem_seg(
        name,
        lambda: records,
        stuff_classes=list(MetadataCatalog.get(H.TINY_VAL).stuff_classes),
        evaluator_type="cityscapes_sem_seg",
        gt_dir=str(tmp_path),
    )
    ev = Trainer.build_evaluator(cfg, name)
    assert isinstance(ev, DatasetEvaluators)
    kinds = [type(e) for e in ev._evaluators]
    assert kinds == [TextKDSemSegEvaluator, TextKDCityscapesSemSegEvaluator]

    other = "textkd_test_coco_like"
    register_sem_seg(other, lambda: records, stuff_classes=["a"], evaluator_type="coco")
    with pytest.raises(ValueError, match=r"textkd_test_coco_like.*'coco'"):
        Trainer.build_evaluator(cfg, other)
