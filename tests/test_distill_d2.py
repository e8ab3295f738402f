"""End-to-end distillation with detectron2 (the distillation issue): every classic method trains
on the synthetic dataset with its loss keys, only the student (and adapters) learn, the teacher
stays frozen and in eval mode, evaluation and export use the student alone, resume restores the
iteration, mismatched teachers fail before the first iteration, a non-finite loss stops training
naming the loss and iteration."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

pytestmark = pytest.mark.detectron2

import _d2_helpers as H  # noqa: E402
from detectron2.engine import HookBase  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from textkd.engine import Trainer  # noqa: E402

# the classic methods at the reference settings of METHODS.md section 1
METHODS = {
    "kd": (
        "kd: {METHOD: kd, INPUT: logits, WEIGHT: 1.0, TEMPERATURE: 1.0}",
        ["loss_kd"],
    ),
    "cwd": (
        "cwd_logits: {METHOD: cwd, INPUT: logits, WEIGHT: 3.0, TEMPERATURE: 4.0}\n"
        "      cwd_feature: {METHOD: cwd, INPUT: feature, WEIGHT: 50.0, TEMPERATURE: 4.0}",
        ["loss_cwd_logits", "loss_cwd_feature"],
    ),
    "skd": ("skd: {METHOD: skd, INPUT: feature, WEIGHT: 10.0}", ["loss_skd"]),
    "ifvd": ("ifvd: {METHOD: ifvd, INPUT: feature, WEIGHT: 20.0}", ["loss_ifvd"]),
    "cirkd": (
        "cirkd: {METHOD: cirkd, INPUT: feature, WEIGHT: 1.0, TEMPERATURE: 0.1}",
        ["loss_cirkd"],
    ),
    "dist": (
        "dist: {METHOD: dist, INPUT: logits, WEIGHT: 1.0, BETA: 1.0, GAMMA: 1.0}\n"
        "      dist_aux: {METHOD: dist, INPUT: aux_logits, WEIGHT: 0.4, BETA: 1.0, GAMMA: 1.0}",
        ["loss_dist", "loss_dist_aux"],
    ),
}
# terms on the penultimate feature: student 32 channels (tiny_opts), teacher 48 -> an adapter
# for CWD only; SKD / IFVD / CIRKD pairs take the raw features (METHODS.md §1)
ADAPTED = {"cwd": ["cwd_feature"]}


@pytest.fixture(scope="module")
def teacher(data_root, tmp_path_factory):
    """A small random-init teacher (ResNet-18d, DeepLabV3 width 48) saved to disk."""
    d = tmp_path_factory.mktemp("teacher")
    cfg_file = H.teacher_config(d / "teacher.yaml", channels=48)
    weights = H.save_random_teacher(cfg_file, d / "teacher.pth", seed=1)
    return cfg_file, weights


def student_config(path, teacher_cfg: str, teacher_weights: str, terms: str) -> str:
    """A distillation config: the synthetic R18 baseline as student, the given teacher, terms."""
    body = f"""MODEL:
  META_ARCHITECTURE: "DistillSemanticSegmentor"
  DISTILL:
    TEACHER:
      CONFIG_FILE: "{teacher_cfg}"
      WEIGHTS: "{teacher_weights}"
    TERMS:
      {terms}
"""
    return H.write_config(path, "deeplabv3_r18_baseline.yaml", body)


def _teacher_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.teacher.state_dict().items()}


class FrozenTeacherProbe(HookBase):
    """Checks at every step that the teacher is frozen and in eval mode, and which parameters
    received gradients."""

    def __init__(self) -> None:
        self.grad_names: list[set[str]] = []
        self.teacher_before: dict[str, torch.Tensor] | None = None

    def before_train(self) -> None:
        self.teacher_before = _teacher_state(self.trainer.model)

    def before_step(self) -> None:
        model = self.trainer.model
        model.train()  # what the trainer does; the teacher must stay in eval mode
        assert model.training and model.segmentor.training
        assert not model.teacher.training
        assert not any(m.training for m in model.teacher.modules())

    def after_step(self) -> None:
        model = self.trainer.model
        names = set()
        for name, p in model.named_parameters():
            if p.grad is not None:
                names.add(name)
        for name, p in model.teacher.named_parameters():
            assert not p.requires_grad and p.grad is None, f"teacher.{name} is trainable"
        self.grad_names.append(names)


@pytest.mark.slow
def test_every_method_trains_with_its_loss_keys(data_root, teacher, tmp_path):
    """Each method: all loss keys, finite; only student + adapters get gradients; the teacher
    (weights and BN statistics) is bit-identical after the steps; the total goes down."""
    t_cfg, t_weights = teacher
    t_file = H.read_segmentor_state(t_weights)
    for method, (terms, keys) in METHODS.items():
        cfg_file = student_config(tmp_path / f"{method}.yaml", t_cfg, t_weights, terms)
        cfg = H.load_cfg(cfg_file, H.tiny_opts(tmp_path / method, max_iter=8, lr=0.02))
        probe = FrozenTeacherProbe()
        rec = H.LossRecorder()
        trainer = H.build_trainer(cfg, hooks=[probe, rec])
        model = trainer.model
        adapters = ADAPTED.get(method, [])
        assert sorted(model.distiller.adapters.keys()) == sorted(adapters)
        for name in adapters:
            assert tuple(model.distiller.adapters[name].weight.shape) == (48, 32, 1, 1)
        trainer.train()

        expected = {"total_loss", "loss_sem_seg", "loss_aux", *keys}
        for row in rec.losses:
            assert set(row) == expected, method
            assert all(math.isfinite(v) for v in row.values()), (method, row)
            parts = sum(v for k, v in row.items() if k != "total_loss")
            assert row["total_loss"] == pytest.approx(parts, rel=1e-5)
        total = [r["total_loss"] for r in rec.losses]
        assert sum(total[-3:]) < sum(total[:3]), (method, total)

        student = {f"segmentor.{n}" for n, _ in model.segmentor.named_parameters()}
        adapter = {
            f"distiller.adapters.{n}" for n, _ in model.distiller.adapters.named_parameters()
        }
        for names in probe.grad_names:
            assert names == student | adapter, method
        after = _teacher_state(model)
        assert set(after) == set(probe.teacher_before)
        bn_keys = [k for k in after if k.endswith(("running_mean", "running_var"))]
        assert bn_keys
        for k, v in after.items():
            assert torch.equal(v, probe.teacher_before[k]), (method, k)
            assert torch.equal(v, t_file[k]), (method, k)


@pytest.fixture(scope="module")
def cwd_run(data_root, teacher, tmp_path_factory):
    """A CWD (logits + feature) run: 4 iterations, checkpoints every 2, evaluated at the end."""
    t_cfg, t_weights = teacher
    d = tmp_path_factory.mktemp("cwd_run")
    cfg_file = student_config(d / "cwd.yaml", t_cfg, t_weights, METHODS["cwd"][0])
    opts = H.tiny_opts(d / "out", max_iter=4, checkpoint_period=2, eval_period=4)
    cfg = H.load_cfg(cfg_file, opts)
    trainer, rec = H.run_training(cfg)
    return cfg_file, opts, cfg, trainer, d / "out"


def test_evaluation_and_export_use_the_student_alone(cwd_run, data_root, tmp_path):
    cfg_file, opts, cfg, trainer, out = cwd_run
    final = trainer._last_eval_results
    assert set(final) == {"sem_seg"}
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    # the training checkpoint holds the student and the adapters, never the teacher
    assert not [k for k in ckpt["model"] if k.startswith("teacher.")]
    assert "distiller.adapters.cwd_feature.weight" in ckpt["model"]

    assert H.evaluate(cfg, out / "model_final.pth") == final
    # another teacher changes nothing at inference
    other = H.save_random_teacher(
        cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE, tmp_path / "other_teacher.pth", seed=7
    )
    cfg_other = H.load_cfg(cfg_file, opts + ["MODEL.DISTILL.TEACHER.WEIGHTS", other])
    assert H.evaluate(cfg_other, out / "model_final.pth") == final

    # tools/export_student.py, then the single-model meta-architecture evaluates the export
    exported = tmp_path / "student.pth"
    proc = H.run_tool(
        "export_student.py",
        ["--config-file", cfg_file, "--weights", out / "model_final.pth", "--output", exported]
        + opts,
        H.subprocess_env(data_root),
    )
    assert "student only" in proc.stdout
    state = torch.load(exported, map_location="cpu", weights_only=False)["model"]
    single = H.load_cfg(cfg_file, opts + ["MODEL.META_ARCHITECTURE", "TextKDSemanticSegmentor"])
    baseline_keys = set(build_model(single).state_dict())
    assert set(state) == baseline_keys
    for k, v in state.items():
        assert torch.equal(v, ckpt["model"][k]), k
    assert H.evaluate(single, exported) == final


def test_resume_restores_the_iteration(cwd_run, teacher, tmp_path):
    cfg_file, opts, cfg, trainer, out = cwd_run
    run = tmp_path / "out"
    shutil.copytree(out, run)
    ckpt = torch.load(run / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 3
    resumed = H.load_cfg(
        cfg_file,
        H.tiny_opts(run, max_iter=6, checkpoint_period=2),
    )
    rec = H.LossRecorder()
    tr = H.build_trainer(resumed, resume=True, hooks=[rec])
    assert tr.start_iter == 4
    state = tr.model.state_dict()
    for k, v in ckpt["model"].items():
        assert torch.equal(state[k], v), k
    # the teacher comes from its own file, not from the training checkpoint
    t_file = H.read_segmentor_state(teacher[1])
    for k, v in tr.model.teacher.state_dict().items():
        assert torch.equal(v, t_file[k]), k
    tr.train()
    assert rec.iters == [4, 5]
    assert set(rec.losses[0]) == {
        "total_loss",
        "loss_sem_seg",
        "loss_aux",
        "loss_cwd_logits",
        "loss_cwd_feature",
    }


def test_teacher_with_other_output_stride_and_width(data_root, tmp_path):
    """An OS16 teacher with a 64-channel head and an OS8 student with 32: logits are compared at
    the teacher's size, CWD features through a 1×1 adapter, IFVD / CIRKD on the raw features."""
    t_cfg = H.teacher_config(tmp_path / "t16.yaml", channels=64, output_stride=16)
    t_weights = H.save_random_teacher(t_cfg, tmp_path / "t16.pth")
    terms = (
        "kd: {METHOD: kd, INPUT: logits, WEIGHT: 1.0}\n"
        "      cwd_feature: {METHOD: cwd, INPUT: feature, WEIGHT: 50.0}\n"
        "      ifvd: {METHOD: ifvd, INPUT: feature, WEIGHT: 20.0}\n"
        "      cirkd: {METHOD: cirkd, INPUT: feature, WEIGHT: 1.0}"
    )
    cfg_file = student_config(tmp_path / "s.yaml", t_cfg, t_weights, terms)
    cfg = H.load_cfg(cfg_file, H.tiny_opts(tmp_path / "out", max_iter=2))
    trainer, rec = H.run_training(cfg)
    model = trainer.model
    assert model.teacher.backbone.out_strides["res5"] == 16
    assert model.segmentor.backbone.out_strides["res5"] == 8
    assert list(model.distiller.adapters) == ["cwd_feature"]
    assert tuple(model.distiller.adapters["cwd_feature"].weight.shape) == (64, 32, 1, 1)
    for row in rec.losses:
        assert {"loss_kd", "loss_cwd_feature", "loss_ifvd", "loss_cirkd"} <= set(row)
        assert all(math.isfinite(v) for v in row.values())


# --------------------------------------------------------------------------- bad input


def _expect_error_before_training(cfg, exc, match, out):
    with pytest.raises(exc, match=match) as e:
        Trainer(cfg)
    assert not (out / "metrics.json").exists()
    return str(e.value)


def test_missing_teacher_checkpoint(data_root, teacher, tmp_path):
    t_cfg, _ = teacher
    missing = str(tmp_path / "nowhere" / "teacher.pth")
    cfg_file = student_config(tmp_path / "s.yaml", t_cfg, missing, METHODS["kd"][0])
    out = tmp_path / "out"
    cfg = H.load_cfg(cfg_file, H.tiny_opts(out))
    msg = _expect_error_before_training(cfg, FileNotFoundError, "teacher checkpoint", out)
    assert missing in msg


def test_teacher_checkpoint_of_another_config(data_root, teacher, tmp_path):
    t_cfg, t_weights = teacher
    out = tmp_path / "out"
    # a plain-stem ResNet-18 checkpoint for the deep-stem teacher config: missing/unexpected keys
    plain_cfg = H.teacher_config(tmp_path / "plain.yaml", arch="resnet18", channels=48)
    plain = H.save_random_teacher(plain_cfg, tmp_path / "plain.pth")
    cfg = H.load_cfg(
        student_config(tmp_path / "s1.yaml", t_cfg, plain, METHODS["kd"][0]), H.tiny_opts(out)
    )
    msg = _expect_error_before_training(cfg, ValueError, "does not fit the teacher config", out)
    assert plain in msg and "missing keys" in msg and "unexpected keys" in msg
    assert "backbone.conv1.0.weight" in msg  # a deep-stem key the file lacks

    # one extra tensor in an otherwise fitting checkpoint
    state = torch.load(t_weights, map_location="cpu", weights_only=False)
    state["model"]["segmentor.head.extra.weight"] = torch.zeros(3)
    extra = str(tmp_path / "extra.pth")
    torch.save(state, extra)
    cfg = H.load_cfg(
        student_config(tmp_path / "s2.yaml", t_cfg, extra, METHODS["kd"][0]), H.tiny_opts(out)
    )
    msg = _expect_error_before_training(cfg, ValueError, "unexpected keys", out)
    assert extra in msg and "head.extra.weight" in msg and "missing keys" not in msg

    # a wider head's checkpoint: shape mismatches
    wide_cfg = H.teacher_config(tmp_path / "wide.yaml", channels=64)
    wide = H.save_random_teacher(wide_cfg, tmp_path / "wide.pth")
    cfg = H.load_cfg(
        student_config(tmp_path / "s3.yaml", t_cfg, wide, METHODS["kd"][0]), H.tiny_opts(out)
    )
    msg = _expect_error_before_training(cfg, ValueError, "shape mismatches", out)
    assert wide in msg


def test_teacher_and_student_class_counts_differ(data_root, tmp_path):
    # a 5-class teacher (not tied to the 8-class dataset) and its own fitting checkpoint
    t_cfg = H.teacher_config(tmp_path / "t5.yaml", num_classes=5, train=None)
    t_weights = H.save_random_teacher(t_cfg, tmp_path / "t5.pth")
    out = tmp_path / "out"
    cfg = H.load_cfg(
        student_config(tmp_path / "s.yaml", t_cfg, t_weights, METHODS["kd"][0]), H.tiny_opts(out)
    )
    msg = _expect_error_before_training(cfg, ValueError, r"teacher predicts 5 classes.* 8", out)
    assert t_cfg in msg


def test_non_finite_distillation_loss_stops_training(cwd_run, teacher, tmp_path):
    """Resume the CWD run at iteration 4 with a diverged teacher (NaN classifier weights): the
    first resumed step stops with the loss key and the iteration; no checkpoint is written."""
    cfg_file, opts, cfg, trainer, out = cwd_run
    run = tmp_path / "out"
    shutil.copytree(out, run)
    state = torch.load(teacher[1], map_location="cpu", weights_only=False)
    # the head's final 1×1 classifier (K output channels)
    (last,) = [
        k
        for k, v in state["model"].items()
        if k.startswith("segmentor.head.") and v.dim() == 4 and v.shape[:2] == (H.NUM_CLASSES, 48)
    ]
    state["model"][last] = torch.full_like(state["model"][last], float("nan"))
    nan_teacher = str(tmp_path / "nan_teacher.pth")
    torch.save(state, nan_teacher)
    before = sorted(p.name for p in run.iterdir())

    resumed = H.load_cfg(
        cfg_file,
        H.tiny_opts(run, max_iter=8, checkpoint_period=1)
        + ["MODEL.DISTILL.TEACHER.WEIGHTS", nan_teacher],
    )
    tr = H.build_trainer(resumed, resume=True)
    with pytest.raises(FloatingPointError) as e:
        tr.train()
    msg = str(e.value)
    assert "'loss_cwd_logits'" in msg and "iteration 4" in msg
    assert "loss_sem_seg'" not in msg.split(":")[0]  # the student's own losses are finite
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".pth") == sorted(
        n for n in before if n.endswith(".pth")
    )
    assert (run / "last_checkpoint").read_text().strip() == "model_final.pth"

    # TEXTKD.NONFINITE_CHECK False turns TextKD's check off; detectron2's own check (after the
    # backward pass, before the optimizer step) still stops the run
    run2 = tmp_path / "out2"
    shutil.copytree(out, run2)
    unchecked = H.load_cfg(
        cfg_file,
        H.tiny_opts(run2, max_iter=8, checkpoint_period=1)
        + ["MODEL.DISTILL.TEACHER.WEIGHTS", nan_teacher, "TEXTKD.NONFINITE_CHECK", False],
    )
    tr = H.build_trainer(unchecked, resume=True)
    assert tr.model.nonfinite_check is False
    with pytest.raises(FloatingPointError, match=r"iteration=4") as e:
        tr.train()
    assert "Training stopped; resume" not in str(e.value)
