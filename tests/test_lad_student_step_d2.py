"""LAD as its official code runs it: from identical weights and one identical, already augmented
batch, one training step of the reference LAD-student recipe
(configs/PascalVOC/lad/deeplabv3_r18_lad_cwd_40k_bs16.yaml) leaves the student with the weights
the official script's step leaves. Expected numbers: tests/data/reference/lad_student_step.pt,
generated from the official code by tests/fixtures/make_lad_student_fixture.py (see there).

Test-only settings, the same on both sides: pixels already normalised (mean 0, std 1, so the
label channel's α is the official 100), dropout off (its masks are random draws no two codebases
share), the ImageNet file unused (the weights are the deterministic ones of
tests/_reference_weights.py, converted with models/convert.py). The official student is the
4-channel network fed a zero label channel; TextKD's is RGB: its first filters are compared on
the 3 image channels (the zero channel's filters only decay, they never touch the output)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.detectron2

import _d2_helpers as H  # noqa: E402
from _reference_weights import deterministic_state_dict  # noqa: E402
from textkd.distill.lad import label_code  # noqa: E402
from textkd.engine import TextKDCheckpointer, Trainer  # noqa: E402
from textkd.models.convert import convert_cirkd_segmentor  # noqa: E402

FIXTURE = H.ROOT / "tests" / "data" / "reference" / "lad_student_step.pt"
RECIPE = H.ROOT / "configs" / "PascalVOC" / "lad" / "deeplabv3_r18_lad_cwd_40k_bs16.yaml"
CONV1 = "pretrained.conv1.weight"
REL = 1e-5


def _save_converted(ref_state: dict, path: Path, rgb_only: bool = False) -> dict[str, str]:
    """Convert a (4-channel) LAD/CIRKD state dict and save it as a TextKD checkpoint. The
    converter checks against an RGB model, so it converts the 3 image channels; the label
    channel's filters are put back for the 4-channel teacher (``rgb_only`` False)."""
    state = dict(ref_state)
    state[CONV1] = ref_state[CONV1][:, :3].clone()
    conv = convert_cirkd_segmentor(state)
    out = dict(conv.state_dict)
    if not rgb_only:
        out[conv.key_map[CONV1]] = ref_state[CONV1].clone()
    torch.save({"model": {f"segmentor.{k}": v for k, v in out.items()}}, str(path))
    return conv.key_map


@pytest.fixture(scope="module")
def ref():
    return torch.load(str(FIXTURE), map_location="cpu", weights_only=False)


def _no_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0


def test_recipe_one_step_matches_the_official_student_step(ref, tmp_path):
    s = ref["settings"]
    t_state = deterministic_state_dict(ref["teacher_shapes"], seed=s["teacher_seed"])
    s_state = deterministic_state_dict(ref["student_shapes"], seed=s["student_seed"])
    _save_converted(t_state, tmp_path / "teacher.pth")
    key_map = _save_converted(s_state, tmp_path / "student.pth", rgb_only=True)
    pixels = ["MODEL.PIXEL_MEAN", "[0.0, 0.0, 0.0]", "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]"]
    teacher_opts = pixels + ["MODEL.SEG_BACKBONE.PRETRAINED", "", "DATASETS.TRAIN", "()"]
    opts = pixels + [
        "MODEL.DEVICE", "cpu",
        "MODEL.WEIGHTS", str(tmp_path / "student.pth"),
        "MODEL.DISTILL.TEACHER.CONFIG_FILE",
        str(H.ROOT / "configs/PascalVOC/lad/deeplabv3_r18_lad_teacher_40k_bs16.yaml"),
        "MODEL.DISTILL.TEACHER.WEIGHTS", str(tmp_path / "teacher.pth"),
        "MODEL.DISTILL.TEACHER.OPTS", str(teacher_opts),
        "SOLVER.IMS_PER_BATCH", 16,
        "DATASETS.TRAIN", "()",
        "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(tmp_path / "out"),
    ]  # fmt: skip
    cfg = H.load_cfg(str(RECIPE), [str(v) for v in opts])
    # the recipe's official settings (the rest of the comparison would hide a wrong one)
    assert cfg.SOLVER.BASE_LR == s["lr"] and cfg.SOLVER.MOMENTUM == s["momentum"]
    assert cfg.SOLVER.WEIGHT_DECAY == s["weight_decay"]
    assert cfg.MODEL.SEM_SEG_HEAD.AUX_WEIGHT == s["aux_weight"]
    term = cfg.MODEL.DISTILL.TERMS.cwd_logits
    assert (term.WEIGHT, term.TEMPERATURE) == (s["cwd_weight"], s["cwd_temperature"])

    with H.one_thread():
        model = Trainer.build_model(cfg)
        TextKDCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        _no_dropout(model)
        optimizer = Trainer.build_optimizer(cfg, model)
        scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
        assert scheduler.get_last_lr()[0] == pytest.approx(s["lr"])  # poly LR at iteration 0
        before = {k: v.clone() for k, v in model.segmentor.state_dict().items()}
        images, labels = ref["images"], ref["labels"].long()
        batch = [{"image": images[i], "sem_seg": labels[i]} for i in range(len(images))]
        # the teacher's label code: its pixel noise is the first draw after this seed, as in
        # the official step; the channel equals the one the official code fed its teacher
        gen = torch.Generator().manual_seed(s["noise_seed"])
        code = label_code(labels, s["num_classes"], 255, alpha=100.0, sigma=0.02, generator=gen)
        torch.testing.assert_close(code, ref["teacher_label_channel"], rtol=0, atol=1e-4)
        model.train()
        torch.manual_seed(s["noise_seed"])
        losses = model(batch)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()

    want = ref["losses"]
    assert float(losses["loss_sem_seg"]) == pytest.approx(want["ce"], rel=REL)
    assert float(losses["loss_aux"]) == pytest.approx(s["aux_weight"] * want["aux_ce"], rel=REL)
    assert float(losses["loss_cwd_logits"]) == pytest.approx(s["cwd_weight"] * want["cwd"], rel=REL)
    assert float(total) == pytest.approx(want["total"], rel=REL)

    after = model.segmentor.state_dict()
    checked = 0
    for ref_key, norm in ref["delta_norms"].items():
        key = key_map[ref_key]
        delta = after[key].double() - before[key].double()
        if ref_key == CONV1:
            continue  # compared in full below (the reference tensor has a 4th channel)
        if ref_key.endswith("num_batches_tracked"):
            assert int(delta) == int(norm)
            continue
        assert float(delta.norm()) == pytest.approx(norm, rel=1e-4, abs=1e-9), ref_key
        # the weights the step leaves, relative to the weights (the criterion)
        assert abs(float(delta.norm()) - norm) <= REL * max(float(after[key].norm()), 1e-12)
        checked += 1
    assert checked > 100
    for ref_key, want_delta in ref["full_deltas"].items():
        key = key_map[ref_key]
        got = after[key].double() - before[key].double()
        want_delta = want_delta.double()
        if ref_key == CONV1:
            want_delta = want_delta[:, :3]
        err = float((got - want_delta).norm())
        assert err <= 1e-3 * float(want_delta.norm()) + 1e-9, (ref_key, err)
        assert err <= REL * float(after[key].norm()), (ref_key, err)
