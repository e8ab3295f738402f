"""One training step of the CIRKD recipe equals the reference script's step (issue 12, point 4).

``tests/data/reference/cirkd_step.pt`` holds what one step of winycg/CIRKD's ``train_cirkd.py``
(KD 1 + mini-batch pixel pairs 1 + memory pixel 0.1 + memory region 0.1, task CE + 0.4 CE(aux),
SGD momentum 0.9, weight decay 1e-4, lr 0.02) does to a DeepLabV3-ResNet18 student distilled from a
DeepLabV3-ResNet101 teacher, both with deterministic weights from their key names
(``tests/_reference_weights.py``), on one fixed batch (generator:
``tests/fixtures/make_cirkd_memory_fixture.py``). Here the same CIRKD weights are converted
(``textkd.models.convert``), the TextKD model is built from the Cityscapes CIRKD recipe config
(with the memory term on and the fixture's small sizes), and one step is run with TextKD's
optimizer. What is the same on purpose on both sides: dropout off (p = 0; its masks are random),
the memory's random choices (the fixture's, fed to the term), its initial queues and projection
head (deterministic from names), images given already normalised (mean 0, std 1)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.detectron2

import _d2_helpers as H  # noqa: E402
from _reference_weights import deterministic_state_dict  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "reference" / "cirkd_step.pt"
RECIPE = H.ROOT / "configs" / "Cityscapes" / "deeplabv3_r18_cirkd_40k_bs16.yaml"
TEACHER = H.ROOT / "configs" / "Cityscapes" / "deeplabv3_r101_cirkd_converted_teacher.yaml"


def _convert(shapes, seed, path) -> str:
    from textkd.models.convert import convert_checkpoint, save_converted

    conv = convert_checkpoint(deterministic_state_dict(shapes, seed=seed))
    assert conv.kind == "segmentor" and not conv.dropped and not conv.filled
    return save_converted(conv, str(path), source_path="cirkd.pth"), conv.settings


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    """One TextKD step of the complete CIRKD recipe on the fixture's batch and weights."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage
    from textkd.engine import Trainer, load_config
    from textkd.models.weights import load_segmentor_checkpoint

    tmp_path = tmp_path_factory.mktemp("cirkd_step")

    ref = torch.load(FIXTURE, weights_only=False)
    S = ref["settings"]
    k = S["num_classes"]
    s_path, s_set = _convert(ref["student_shapes"], S["student_seed"], tmp_path / "s.pth")
    t_path, t_set = _convert(ref["teacher_shapes"], S["teacher_seed"], tmp_path / "t.pth")
    assert s_set["MODEL.SEG_BACKBONE.ARCH"] == "resnet18v1s"
    assert t_set["MODEL.SEG_BACKBONE.ARCH"] == "resnet101v1s"
    plain = ["MODEL.PIXEL_MEAN", "[0.0, 0.0, 0.0]", "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]"]
    # K classes, no dataset (the batch is the fixture's)
    classes = [
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
        str(k),
        "DATASETS.TRAIN",
        "()",
        "DATASETS.TEST",
        "()",
    ]
    opts = [
        "MODEL.DEVICE", "cpu",
        "MODEL.SEG_BACKBONE.NORM", "BN",
        "MODEL.SEG_BACKBONE.PRETRAINED", "",  # the student weights are loaded below
        "MODEL.SEG_BACKBONE.ARCH", s_set["MODEL.SEG_BACKBONE.ARCH"],
        "MODEL.SEM_SEG_HEAD.CHANNELS", str(s_set["MODEL.SEM_SEG_HEAD.CHANNELS"]),
        "MODEL.SEM_SEG_HEAD.AUX_CHANNELS", str(s_set.get("MODEL.SEM_SEG_HEAD.AUX_CHANNELS", 0)),
        "MODEL.SEM_SEG_HEAD.ALIGN_CORNERS", "True",
        "INPUT.FORMAT", "BGR",
        *plain, *classes,
        "MODEL.DISTILL.TEACHER.CONFIG_FILE", str(TEACHER),
        "MODEL.DISTILL.TEACHER.WEIGHTS", t_path,
        "MODEL.DISTILL.TEACHER.OPTS", str(plain + classes + ["MODEL.SEG_BACKBONE.NORM", "BN"]),
        "MODEL.DISTILL.CIRKD_MEMORY.PIXEL_MEMORY_SIZE", str(S["pixel_memory_size"]),
        "MODEL.DISTILL.CIRKD_MEMORY.REGION_MEMORY_SIZE", str(S["region_memory_size"]),
        "MODEL.DISTILL.CIRKD_MEMORY.PIXEL_CONTRAST_SIZE", str(S["pixel_contrast_size"]),
        "MODEL.DISTILL.CIRKD_MEMORY.REGION_CONTRAST_SIZE", str(S["region_contrast_size"]),
        "SOLVER.IMS_PER_BATCH", "2",
    ]  # fmt: skip
    # the complete CIRKD: the recipe's pixel pairs + KD (1) + the memory terms (0.1 each)
    recipe = tmp_path / "cirkd_complete.yaml"
    recipe.write_text(f"""_BASE_: "{RECIPE}"
MODEL:
  DISTILL:
    TERMS:
      kd: {{METHOD: "kd", INPUT: "logits", WEIGHT: {S["lambda_kd"]}, TEMPERATURE: 1.0}}
    CIRKD_MEMORY:
      PIXEL_WEIGHT: {S["lambda_memory_pixel"]}
      REGION_WEIGHT: {S["lambda_memory_region"]}
""")
    cfg = load_config(str(recipe), opts)
    # the recipe's optimizer settings are the reference script's
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM) == (S["lr"], S["momentum"])
    assert cfg.SOLVER.WEIGHT_DECAY == cfg.SOLVER.WEIGHT_DECAY_NORM == S["weight_decay"]
    assert cfg.MODEL.DISTILL.TERMS.cirkd.WEIGHT == S["lambda_minibatch_pixel"]
    assert cfg.MODEL.DISTILL.TERMS.cirkd.TEMPERATURE == S["contrast_temperature"]

    torch.manual_seed(0)
    model = build_model(cfg)
    load_segmentor_checkpoint(model.segmentor, s_path, what="student")
    for m in model.segmentor.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0  # as the fixture: dropout masks are random
    mem = model.cirkd_memory
    # pixel pairs on the raw 128- and 256-channel features: no adapter (METHODS.md §1)
    assert mem is not None and len(model.distiller.adapters) == 0
    mem.project_head.load_state_dict(deterministic_state_dict(ref["head_shapes"], S["head_seed"]))
    # the reference's buffer names seeded the queues
    queues = deterministic_state_dict(
        {
            "teacher_pixel_queue": mem.pixel_queue.shape,
            "teacher_segment_queue": mem.region_queue.shape,
        },
        seed=S["queue_seed"],
    )
    mem.pixel_queue.copy_(torch.nn.functional.normalize(queues["teacher_pixel_queue"], dim=2))
    mem.region_queue.copy_(torch.nn.functional.normalize(queues["teacher_segment_queue"], dim=2))
    choices = (ref["pixel_keys"], ref["pixel_index"], ref["region_index"])
    mem.random_choices = lambda counts, iteration: choices  # the fixture's draws

    before = {k: v.detach().clone() for k, v in model.segmentor.state_dict().items()}
    head_before = {n: p.detach().clone() for n, p in mem.project_head.named_parameters()}
    optimizer = Trainer.build_optimizer(cfg, model)
    targets = ref["targets"].clone()
    targets[targets == -1] = 255
    batch = [
        {"image": img, "sem_seg": lab, "height": img.shape[1], "width": img.shape[2]}
        for img, lab in zip(ref["images"], targets)
    ]
    model.train()
    with EventStorage(0):
        losses = model(batch)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()

    return ref, model, losses, before, head_before


def test_distillation_terms_of_the_step_match_the_reference(step):
    ref, model, losses, _, _ = step
    want = ref["losses"]
    for key in ("kd", "cirkd", "cirkd_memory_pixel", "cirkd_memory_region"):
        value = float(losses[f"loss_{key}"])
        assert value == pytest.approx(want[key], rel=1e-5), key
    mem = model.cirkd_memory
    assert mem.pixel_ptr.tolist() == ref["pixel_ptr"].tolist()
    assert mem.region_ptr.tolist() == ref["region_ptr"].tolist()


def test_one_step_of_the_cirkd_recipe_leaves_the_reference_weights(step):
    from textkd.models.convert import to_cirkd_state_dict

    ref, model, losses, before, head_before = step
    mem = model.cirkd_memory
    want = ref["losses"]
    got = {
        "task": float(losses["loss_sem_seg"].detach() + losses["loss_aux"].detach()),
        "kd": float(losses["loss_kd"]),
        "cirkd": float(losses["loss_cirkd"]),
        "cirkd_memory_pixel": float(losses["loss_cirkd_memory_pixel"]),
        "cirkd_memory_region": float(losses["loss_cirkd_memory_region"]),
    }
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5), (key, got, want)

    after = to_cirkd_state_dict(model.segmentor.state_dict())
    before = to_cirkd_state_dict(before)
    worst = 0.0
    for name, norm in ref["delta_norms"].items():
        delta = after[name].double() - before[name].double()
        # the step moved every tensor; its size agrees with the reference's
        assert norm > 0
        rel = abs(float(delta.norm()) - norm) / norm
        worst = max(worst, rel)
    assert worst <= 1e-4, worst
    for name, ref_delta in ref["full_deltas"].items():
        delta = after[name].double() - before[name].double()
        torch.testing.assert_close(
            delta, ref_delta, rtol=1e-4, atol=1e-4 * float(ref_delta.abs().max())
        )
        # the weights the step leaves: within 1e-5 (relative) of the reference's
        ref_after = before[name].double() + ref_delta
        assert float((after[name].double() - ref_after).norm() / ref_after.norm()) <= 1e-5, name
    for name, norm in ref["head_delta_norms"].items():
        p = dict(mem.project_head.named_parameters())[name]
        delta = p.detach().double() - head_before[name].double()
        assert math.isclose(float(delta.norm()), norm, rel_tol=1e-4), name
    for name, norm in ref["bn_running_norms"].items():
        assert math.isclose(float(after[name].double().norm()), norm, rel_tol=1e-5), name
