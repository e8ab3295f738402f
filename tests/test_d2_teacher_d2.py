"""Any detectron2 semantic segmentation model as the teacher (issue 16).

Random-init teachers built by detectron2 from the repository's own detectron2 configs
(``configs/Synthetic/detectron2/teachers``: detectron2's SemanticSegmentor R50-FPN and
projects/DeepLab's DeepLabV3+), saved with ``DetectionCheckpointer`` and loaded back by the
distillation: the terms see the scores of detectron2's own inference of the teacher (equal after
the same resize), a hooked feature is the module's output (or input), training keeps the teacher's
weights and BN statistics, ``tools/train_net.py`` distils from both teachers, and a wrong module
name, class count, class order or checkpoint is an error before the first iteration.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.detectron2

import _d2_helpers as H  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from textkd.d2.distill_arch import load_teacher_config  # noqa: E402
from textkd.d2.register import register_sem_seg  # noqa: E402
from textkd.d2.teacher import (  # noqa: E402
    D2Teacher,
    build_d2_model,
    check_teacher_classes,
    load_d2_teacher_config,
    mask_classification_scores,
    teacher_kind,
)
from textkd.data.synthetic import SYNTHETIC_CLASSES  # noqa: E402
from textkd.engine import Trainer, load_config  # noqa: E402

REPO = H.ROOT
# kind -> (name in the student configs, teacher config)
TEACHERS = {
    "fpn": ("semantic_R_50_FPN", "configs/Synthetic/detectron2/teachers/semantic_R_50_FPN.yaml"),
    "deeplab": (
        "deeplab_v3_plus",
        "configs/Synthetic/detectron2/teachers/deeplab_v3_plus_R_50_os16.yaml",
    ),
}
EXAMPLES = sorted(str(p.relative_to(REPO)) for p in REPO.glob("configs/*/detectron2/*.yaml"))
TEMPLATES = ["a photo of a {}."]


@pytest.fixture(scope="module")
def env(data_root, tmp_path_factory):
    """Random-init detectron2 teachers saved with DetectionCheckpointer, the tiny CLIP model and
    a text-bank cache directory."""
    d = tmp_path_factory.mktemp("d2_teacher")
    clip_model, clip_ckpt = H.tiny_clip_checkpoint(d)
    out = {"dir": d, "clip": (clip_model, clip_ckpt), "cache": d / "text_cache", "weights": {}}
    for seed, kind in enumerate(TEACHERS):
        out["weights"][kind] = save_teacher(kind, d, f"{kind}_teacher", seed=seed)
    return out


def save_teacher(kind: str, directory, name: str, seed: int = 0, teacher_opts=()) -> str:
    """Build the teacher of ``kind`` with detectron2 from its config (random init, seeded) and
    save it with DetectionCheckpointer; returns the file."""
    cfg = load_config(str(REPO / student_config(kind)), ["MODEL.DEVICE", "cpu"])
    cfg.defrost()
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(REPO / TEACHERS[kind][1])
    cfg.MODEL.DISTILL.TEACHER.OPTS = list(teacher_opts)
    torch.manual_seed(seed)
    model = build_d2_model(load_d2_teacher_config(cfg))
    DetectionCheckpointer(model, save_dir=str(directory)).save(name)
    return str(Path(directory) / f"{name}.pth")


def student_config(kind: str, method: str = "cwd") -> str:
    return f"configs/Synthetic/detectron2/deeplabv3_r18_{method}_from_{TEACHERS[kind][0]}.yaml"


def distill_opts(env, kind: str, out, weights: str | None = None, extra=(), **kw) -> list[str]:
    clip_model, clip_ckpt = env["clip"]
    return H.tiny_opts(
        out,
        extra=[
            "MODEL.DISTILL.TEACHER.CONFIG_FILE", str(REPO / TEACHERS[kind][1]),
            "MODEL.DISTILL.TEACHER.WEIGHTS", weights or env["weights"][kind],
            "MODEL.TEXT_BANK.CLIP_MODEL", clip_model,
            "MODEL.TEXT_BANK.CLIP_PRETRAINED", clip_ckpt,
            "MODEL.TEXT_BANK.TEMPLATES", str(TEMPLATES),
            "MODEL.TEXT_BANK.CACHE_DIR", str(env["cache"]),
            "MODEL.DISTILL.TEXT.PROJ_HIDDEN", 64,
            *extra,
        ],
        **kw,
    )  # fmt: skip


def build(env, kind, tmp_path, method="cwd", extra=(), weights=None):
    cfg = H.load_cfg(
        str(REPO / student_config(kind, method)),
        distill_opts(env, kind, tmp_path / "out", weights=weights, extra=extra),
    )
    return cfg, build_model(cfg)


def images(size=(64, 64), n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (3, *size), generator=g).to(torch.uint8),
            "sem_seg": torch.randint(0, H.NUM_CLASSES, size, generator=g),
        }
        for _ in range(n)
    ]


def own_inference(teacher: D2Teacher, batch) -> list[torch.Tensor]:
    """detectron2's own inference of the teacher model on the images (its input format)."""
    with torch.no_grad():
        inputs = [
            {"image": x["image"].flip(0) if teacher.flip_channels else x["image"]} for x in batch
        ]
        return [o["sem_seg"] for o in teacher.model(inputs)]


# --------------------------------------------------------------------------- configs


def test_example_configs():
    """Every example distils from a detectron2 teacher config of the repository whose hooked
    modules exist (the Cityscapes/ADE20K teachers are built, random, to look them up)."""
    assert len(EXAMPLES) == 10
    teachers = set()
    cwd = os.getcwd()
    os.chdir(REPO)  # CONFIG_FILE is relative to the repository root, where train_net runs
    try:
        for rel in EXAMPLES:
            cfg = load_config(rel)
            t = cfg.MODEL.DISTILL.TEACHER
            assert cfg.MODEL.META_ARCHITECTURE == "DistillSemanticSegmentor"
            assert teacher_kind(cfg) == "detectron2", rel
            assert cfg.MODEL.SEG_BACKBONE.ARCH.startswith("resnet18"), rel
            tcfg = load_teacher_config(cfg)
            assert tcfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor"
            assert tcfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
            check_teacher_classes(
                cfg, list(tcfg.DATASETS.TRAIN), cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
            )
            terms = set(cfg.MODEL.DISTILL.TERMS)
            assert "cwd_logits" in terms, rel
            if "tcd_trd" in rel:
                assert cfg.MODEL.DISTILL.TCD.WEIGHT == 3.0 and cfg.MODEL.DISTILL.TRD.WEIGHT == 1.0
            if t.CONFIG_FILE not in teachers:
                teachers.add(t.CONFIG_FILE)
                names = dict(build_d2_model(tcfg).named_modules())
                assert t.LOGITS_MODULE in names, rel
                assert t.FEATURE_MODULE.removesuffix(":input") in names, rel
    finally:
        os.chdir(cwd)
    on_disk = {str(p.relative_to(REPO)) for p in REPO.glob("configs/*/detectron2/teachers/*.yaml")}
    assert teachers == on_disk


def test_builtin_dataset_names_are_accepted():
    """A teacher trained under detectron2's builtin names has the student's classes."""
    for student_ds, builtin, k in (
        ("cityscapes_train_sem_seg", "cityscapes_fine_sem_seg_train", 19),
        ("ade20k_train_sem_seg", "ade20k_sem_seg_train", 150),
    ):
        cfg = load_config(str(REPO / "configs/Synthetic/deeplabv3_r18_cwd.yaml"))
        cfg.defrost()
        cfg.DATASETS.TRAIN = (student_ds,)
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = k
        check_teacher_classes(cfg, [builtin], k)
        with pytest.raises(ValueError, match="predicts 7 classes"):
            check_teacher_classes(cfg, [builtin], 7)


# --------------------------------------------------------------------------- what the terms see


@pytest.mark.parametrize("kind", list(TEACHERS))
def test_terms_see_detectron2_inference(env, kind, tmp_path):
    """The hooked pre-upsampling logits, upsampled like detectron2's head does, are detectron2's
    own ``sem_seg`` inference of the teacher; without LOGITS_MODULE the terms get that inference
    resized to stride 8."""
    cfg, model = build(env, kind, tmp_path)
    teacher = model.teacher
    assert isinstance(teacher, D2Teacher) and not teacher.model.training
    assert teacher.flip_channels == (kind == "fpn")  # the FPN teacher is BGR, the loader RGB
    batch = images()
    x, targets = model.preprocess(batch, need_targets=True)
    t_out = model.teacher_forward(batch, targets, student_input=x.tensor)
    ref = torch.stack(own_inference(teacher, batch))
    assert t_out.logits.shape == (2, H.NUM_CLASSES, 16, 16)  # stride 4 of the 64x64 crops
    up = F.interpolate(t_out.logits, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, ref, rtol=1e-4, atol=1e-4)
    assert ref.std() > 0  # a real map, not constant

    _, plain = build(env, kind, tmp_path, extra=["MODEL.DISTILL.TEACHER.LOGITS_MODULE", ""])
    p_out = plain.teacher_forward(batch, targets, student_input=x.tensor)
    assert p_out.logits.shape == (2, H.NUM_CLASSES, 8, 8)
    want = F.interpolate(ref, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(p_out.logits, want, rtol=1e-4, atol=1e-4)


def test_padded_teacher_frame_is_cropped_to_the_student_frame(env, tmp_path):
    """72x72 images: the FPN teacher pads to 96 (size divisibility 32), the student does not;
    the teacher's stride-4 logits are cropped to the student's frame (18x18 cells) and still
    give detectron2's inference away from the last border cell."""
    _, model = build(env, "fpn", tmp_path)
    batch = images(size=(72, 72), seed=3)
    x, targets = model.preprocess(batch, need_targets=True)
    assert tuple(x.tensor.shape[-2:]) == (72, 72)
    t_out = model.teacher_forward(batch, targets, student_input=x.tensor)
    assert t_out.logits.shape[-2:] == (18, 18)
    assert t_out.feature.shape[-2:] == (18, 18)
    up = F.interpolate(t_out.logits, size=(72, 72), mode="bilinear", align_corners=False)
    ref = torch.stack(own_inference(model.teacher, batch))
    torch.testing.assert_close(up[..., :-2, :-2], ref[..., :-2, :-2], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kind,module",
    [
        ("fpn", "sem_seg_head.predictor:input"),
        ("deeplab", "sem_seg_head.predictor:input"),
        ("fpn", "backbone.bottom_up.res4"),
        ("deeplab", "backbone.res4"),
    ],
)
def test_hooked_feature_is_the_module_output(env, kind, module, tmp_path):
    _, model = build(env, kind, tmp_path, extra=["MODEL.DISTILL.TEACHER.FEATURE_MODULE", module])
    name = module.removesuffix(":input")
    seen = {}

    def grab(mod, args, output):
        seen["x"] = args[0] if module.endswith(":input") else output

    handle = model.teacher.model.get_submodule(name).register_forward_hook(grab)
    try:
        batch = images(seed=5)
        x, targets = model.preprocess(batch, need_targets=True)
        t_out = model.teacher_forward(batch, targets, student_input=x.tensor)
    finally:
        handle.remove()
    assert torch.equal(t_out.feature, seen["x"])
    assert model.teacher.output_channels["feature"] == seen["x"].shape[1]


LAZY_TEACHER = """from detectron2.model_zoo import get_config
from omegaconf import OmegaConf

# detectron2's own LazyConfig PanopticFPN (its sem_seg branch is the teacher), 8 stuff classes
model = get_config("common/models/panoptic_fpn.py").model
model.sem_seg_head.num_classes = 8
model.roi_heads.num_classes = 3
dataloader = OmegaConf.create(
    {"train": {"dataset": {"names": "%s"}, "mapper": {"image_format": "BGR"}}}
)
"""


def test_lazyconfig_teacher(env, tmp_path):
    """A LazyConfig (.py) teacher: detectron2's PanopticFPN from its model zoo, its semantic
    branch distilled; format and training set come from the LazyConfig's dataloader."""
    lazy = tmp_path / "panoptic_teacher.py"
    lazy.write_text(LAZY_TEACHER % H.TINY_TRAIN)
    opts = ["MODEL.DEVICE", "cpu", "MODEL.DISTILL.TEACHER.CONFIG_FILE", str(lazy)]
    cfg = load_config(str(REPO / student_config("fpn")), opts)
    assert teacher_kind(cfg) == "detectron2"
    torch.manual_seed(0)
    DetectionCheckpointer(build_d2_model(load_d2_teacher_config(cfg)), str(tmp_path)).save("pan")
    extra = ["MODEL.DISTILL.TEACHER.CONFIG_FILE", str(lazy)]
    _, model = build(env, "fpn", tmp_path, extra=extra, weights=str(tmp_path / "pan.pth"))
    assert type(model.teacher.model).__name__ == "PanopticFPN"
    assert model.teacher.flip_channels
    batch = images(seed=7)
    x, targets = model.preprocess(batch, need_targets=True)
    t_out = model.teacher_forward(batch, targets, student_input=x.tensor)
    up = F.interpolate(t_out.logits, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, torch.stack(own_inference(model.teacher, batch)))
    model.train()
    assert "loss_cwd_logits" in model(batch)


# --------------------------------------------------------------------------- Mask2Former style


def _mask2former_semantic_inference(mask_cls, mask_pred):
    """Mask2Former's ``MaskFormer.semantic_inference`` (one image), as written in its code."""
    mask_cls = F.softmax(mask_cls, dim=-1)[..., :-1]
    mask_pred = mask_pred.sigmoid()
    return torch.einsum("qc,qhw->chw", mask_cls, mask_pred)


class _QueryHead(torch.nn.Module):
    """A small mask-classification head: Q queries, K+1 class logits, stride-4 mask logits."""

    def __init__(self, k: int, q: int = 5):
        super().__init__()
        self.cls = torch.nn.Parameter(torch.randn(q, k + 1))
        self.mask = torch.nn.Conv2d(3, q, kernel_size=4, stride=4)

    def forward(self, x):
        masks = self.mask(x)
        return {"pred_logits": self.cls.expand(x.shape[0], -1, -1), "pred_masks": masks}


class _QueryModel(torch.nn.Module):
    """Mask2Former's inference shape: masks upsampled to the input, then semantic inference."""

    def __init__(self, k: int):
        super().__init__()
        self.sem_seg_head = _QueryHead(k)

    def forward(self, batched_inputs):
        x = torch.stack([b["image"].float() / 255 for b in batched_inputs])
        out = self.sem_seg_head(x)
        masks = F.interpolate(out["pred_masks"], size=x.shape[-2:], mode="bilinear")
        return [
            {"sem_seg": _mask2former_semantic_inference(c, m)}
            for c, m in zip(out["pred_logits"], masks)
        ]


def test_mask_classification_output_becomes_per_pixel_scores():
    torch.manual_seed(0)
    cls, masks = torch.randn(2, 5, 9), torch.randn(2, 5, 6, 7)
    got = mask_classification_scores(cls, masks)
    for i in range(2):
        torch.testing.assert_close(got[i], _mask2former_semantic_inference(cls[i], masks[i]))
    teacher = D2Teacher(_QueryModel(8), flip_channels=False, logits_module="sem_seg_head")
    teacher.probe("cpu")
    assert teacher.num_classes == 8 and teacher.output_channels == {"logits": 8}
    batch = images(seed=2)
    out = teacher(batch, (64, 64))
    assert out.logits.shape == (2, 8, 16, 16) and out.feature is None
    # Mask2Former's semantic inference on the head's stride-4 output (before its upsampling)
    with torch.no_grad():
        head = teacher.model.sem_seg_head(torch.stack([b["image"].float() / 255 for b in batch]))
    for i in range(2):
        want = _mask2former_semantic_inference(head["pred_logits"][i], head["pred_masks"][i])
        torch.testing.assert_close(out.logits[i], want)
    # close to its full-resolution inference (which upsamples the mask logits before sigmoid)
    up = F.interpolate(out.logits, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, torch.stack(own_inference(teacher, batch)), atol=5e-3, rtol=0)


# --------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def permuted_dataset():
    name = "textkd_d2teacher_permuted_train_sem_seg"
    if name not in MetadataCatalog.list():
        register_sem_seg(name, lambda: [], stuff_classes=list(reversed(SYNTHETIC_CLASSES)))
    return name


def test_errors_before_the_first_iteration(env, tmp_path, permuted_dataset):
    def fails(exc, match, kind="fpn", method="cwd", extra=(), weights=None):
        cfg = H.load_cfg(
            str(REPO / student_config(kind, method)),
            distill_opts(env, kind, tmp_path / "out", weights=weights, extra=extra),
        )
        with pytest.raises(exc, match=match):
            Trainer.build_model(cfg)

    # a module name that does not exist: the key, the name and the close names
    fails(
        ValueError,
        r"FEATURE_MODULE='sem_seg_head.predicter:input'.*'sem_seg_head.predictor'",
        extra=["MODEL.DISTILL.TEACHER.FEATURE_MODULE", "sem_seg_head.predicter:input"],
    )
    fails(
        ValueError,
        r"LOGITS_MODULE='sem_seg_head.predicter'",
        kind="deeplab",
        extra=["MODEL.DISTILL.TEACHER.LOGITS_MODULE", "sem_seg_head.predicter"],
    )
    # a module whose output is not a map
    fails(
        ValueError,
        r"FEATURE_MODULE='backbone'.*not an N×C×h×w map",
        extra=["MODEL.DISTILL.TEACHER.FEATURE_MODULE", "backbone"],
    )
    # a teacher of another class count (its own checkpoint)
    five = save_teacher(
        "fpn", env["dir"], "fpn_5cls", teacher_opts=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"]
    )
    fails(
        ValueError,
        "predicts 5 classes but the student 8",
        weights=five,
        extra=["MODEL.DISTILL.TEACHER.OPTS", "['MODEL.SEM_SEG_HEAD.NUM_CLASSES', '5']"],
    )
    # same count, another class order
    fails(
        ValueError,
        "class order differs",
        extra=["MODEL.DISTILL.TEACHER.OPTS", f"['DATASETS.TRAIN', \"('{permuted_dataset}',)\"]"],
    )
    # the checkpoint of another teacher, and a missing one
    fails(ValueError, "does not fit the teacher config", weights=env["weights"]["deeplab"])
    fails(FileNotFoundError, "does not exist", weights=str(tmp_path / "nope.pth"))
    # the text plugins read the feature: without FEATURE_MODULE the teacher has none
    fails(
        ValueError,
        r"TEXT.INPUT='feature'.*FEATURE_MODULE",
        method="cwd_tcd_trd",
        extra=["MODEL.DISTILL.TEACHER.FEATURE_MODULE", ""],
    )
    # a feature term without FEATURE_MODULE names the missing output
    fails(
        ValueError,
        "the teacher has no output 'feature'",
        extra=[
            "MODEL.DISTILL.TEACHER.FEATURE_MODULE", "",
            "MODEL.DISTILL.TERMS.cwd_logits.INPUT", "feature",
        ],
    )  # fmt: skip
    # a detectron2 project config without its keys
    fails(
        ValueError,
        "CONFIG_HOOKS",
        kind="deeplab",
        extra=["MODEL.DISTILL.TEACHER.CONFIG_HOOKS", "[]"],
    )


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("kind", list(TEACHERS))
def test_distillation_trains_and_keeps_the_teacher(env, kind, tmp_path, data_root):
    """CWD + TCD + TRD from a detectron2 teacher trains in-process; the teacher's weights and BN
    statistics are those of its checkpoint afterwards; training checkpoints leave it out. Then
    tools/train_net.py distils from the same teacher with the repository's CWD config."""
    cfg = H.load_cfg(
        str(REPO / student_config(kind, "cwd_tcd_trd")),
        distill_opts(env, kind, tmp_path / "out", max_iter=3, test=None),
    )
    before = {
        k: v.clone()
        for k, v in torch.load(env["weights"][kind], map_location="cpu", weights_only=False)[
            "model"
        ].items()
    }
    assert any(k.endswith("running_var") for k in before)  # BN statistics are compared too
    trainer, rec = H.run_training(cfg)
    assert rec.iters == [0, 1, 2]
    for row in rec.losses:
        assert {"loss_cwd_logits", "loss_tcd", "loss_trd", "loss_sem_seg"} <= set(row)
    teacher = trainer.model.teacher
    assert not teacher.training and not teacher.model.training
    state = teacher.model.state_dict()
    assert set(state) == set(before)
    for k, v in before.items():
        assert torch.equal(state[k], v), k
    assert not [p for p in teacher.parameters() if p.requires_grad]
    ckpt = torch.load(tmp_path / "out" / "model_final.pth", map_location="cpu", weights_only=False)
    assert not [k for k in ckpt["model"] if k.startswith("teacher.")]

    # tools/train_net.py with the repository's config (full synthetic names in the subprocess)
    out = tmp_path / "train_net"
    opts = distill_opts(
        env, kind, out, max_iter=2, train="textkd_synthetic_train_sem_seg", test=None
    )
    H.run_tool(
        "train_net.py",
        ["--config-file", REPO / student_config(kind), *opts],
        H.subprocess_env(data_root),
    )
    rows = H.read_metrics(out)
    assert rows and all("loss_cwd_logits" in r for r in rows if "total_loss" in r)
    assert (out / "model_final.pth").is_file()


def test_benchmark_random_teacher_writes_a_detectron2_teacher(env, tmp_path):
    """tools/benchmark.py --random-teacher: a detectron2 teacher's random checkpoint is its own
    state dict, which the strict loader accepts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "textkd_tools_bench_d2t", H.TOOLS / "benchmark.py"
    )
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # it defines dataclasses
    spec.loader.exec_module(bench)
    cfg = H.load_cfg(str(REPO / student_config("deeplab")), distill_opts(env, "deeplab", tmp_path))
    cfg.defrost()
    path = bench.write_random_teacher(cfg, str(tmp_path), "deeplab", seed=3)
    cfg.MODEL.DISTILL.TEACHER.WEIGHTS = path
    model = build_model(cfg)
    saved = torch.load(path, map_location="cpu", weights_only=False)["model"]
    for k, v in model.teacher.model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_fpn_teacher_trains_with_train_net_then_distils(data_root, tmp_path):
    """The synthetic R50-FPN teacher config holds only detectron2 keys: tools/train_net.py
    trains it (detectron2's SemanticSegmentor on TextKD's loader), and its model_final.pth is
    then the teacher of the repository's CWD student."""
    env = H.subprocess_env(data_root)
    common = ["MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0]
    common += ["SOLVER.MAX_ITER", 2, "DATASETS.TEST", "()"]
    teacher_out = tmp_path / "teacher"
    H.run_tool(
        "train_net.py",
        ["--config-file", REPO / TEACHERS["fpn"][1], *common, "OUTPUT_DIR", teacher_out],
        env,
    )
    student_out = tmp_path / "student"
    proc = H.run_tool(
        "train_net.py",
        [
            "--config-file", REPO / student_config("fpn"), *common,
            "MODEL.SEM_SEG_HEAD.CHANNELS", 32, "MODEL.SEM_SEG_HEAD.AUX_CHANNELS", 16,
            "MODEL.DISTILL.TEACHER.WEIGHTS", teacher_out / "model_final.pth",
            "OUTPUT_DIR", student_out,
        ],
        env,
    )  # fmt: skip
    assert "detectron2 teacher SemanticSegmentor" in proc.stdout + proc.stderr
    rows = [r for r in H.read_metrics(student_out) if "total_loss" in r]
    assert rows and all("loss_cwd_logits" in r for r in rows)
    assert rows[-1]["iteration"] == 1
