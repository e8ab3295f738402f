"""The reference recipes (configs/<Dataset>/reference/): the published rows of
docs/reference_recipes.md, term for term, as the reference scripts run them.

* every reference config loads and validates (the distillation ones with their teacher config);
* the set of recipes is exactly the table ``ROWS`` (dataset, student, method, published mIoU),
  and each file's first comment names the script and the published number it reproduces;
* each recipe resolves to the terms / weights / temperatures, optimizer, LR, schedule, batch,
  crop, scale set, normalisation and evaluation period read off the reference scripts (the
  values below, each with the script line it comes from);
* one recipe of each distinct shape trains 2 iterations on the synthetic dataset (64×64 crops,
  random ImageNet-free student, a small random teacher through MODEL.DISTILL.TEACHER.OPTS).

Reference code: winycg/CIRKD at 2d8ad0f ("CIRKD" below), hunto/DIST_KD ("DIST_KD").
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.detectron2

import _d2_helpers as H  # noqa: E402
import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from textkd.d2.distill_arch import load_teacher_config  # noqa: E402
from textkd.d2.mapper import TextKDSemSegDatasetMapper  # noqa: E402
from textkd.distill.terms import DEFAULTS, parse_terms  # noqa: E402
from textkd.engine import check_config, load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REF_CONFIGS = sorted(str(p.relative_to(REPO)) for p in REPO.glob("configs/*/reference/*.yaml"))
RECIPE_RE = re.compile(r"^(?P<student>(?:deeplabv3|pspnet)_(?:r18|mbv2))_(?P<method>[a-z]+)_")

# ------------------------------------------------------------------ the published rows
# REFERENCE_RESULTS.md: (dataset, student, method) -> published val mIoU
ROWS = {
    ("Cityscapes", "deeplabv3_r18", "baseline"): 74.21,
    ("Cityscapes", "deeplabv3_r18", "skd"): 75.42,
    ("Cityscapes", "deeplabv3_r18", "ifvd"): 75.59,
    ("Cityscapes", "deeplabv3_r18", "cwd"): 75.55,
    ("Cityscapes", "deeplabv3_r18", "cirkd"): 76.38,
    ("Cityscapes", "deeplabv3_r18", "dist"): 77.10,
    ("Cityscapes", "deeplabv3_mbv2", "baseline"): 73.12,
    ("Cityscapes", "deeplabv3_mbv2", "skd"): 73.82,
    ("Cityscapes", "deeplabv3_mbv2", "ifvd"): 73.50,
    ("Cityscapes", "deeplabv3_mbv2", "cwd"): 74.66,
    ("Cityscapes", "deeplabv3_mbv2", "cirkd"): 75.42,
    ("Cityscapes", "pspnet_r18", "baseline"): 72.55,
    ("Cityscapes", "pspnet_r18", "cirkd"): 74.73,
    ("Cityscapes", "pspnet_r18", "dist"): 76.31,
    ("PascalVOC", "deeplabv3_r18", "baseline"): 73.21,
    ("PascalVOC", "deeplabv3_r18", "skd"): 73.51,
    ("PascalVOC", "deeplabv3_r18", "ifvd"): 73.85,
    ("PascalVOC", "deeplabv3_r18", "cwd"): 74.02,
    ("PascalVOC", "deeplabv3_r18", "cirkd"): 74.50,
    ("PascalVOC", "pspnet_r18", "baseline"): 73.33,
    ("PascalVOC", "pspnet_r18", "skd"): 74.07,
    ("PascalVOC", "pspnet_r18", "ifvd"): 73.54,
    ("PascalVOC", "pspnet_r18", "cwd"): 73.99,
    ("PascalVOC", "pspnet_r18", "cirkd"): 74.78,
    ("CamVid", "deeplabv3_r18", "baseline"): 66.92,
    ("CamVid", "deeplabv3_r18", "cwd"): 67.71,
    ("CamVid", "deeplabv3_r18", "cirkd"): 68.21,
    ("CamVid", "pspnet_r18", "baseline"): 66.73,
    ("CamVid", "pspnet_r18", "cwd"): 67.92,
    ("CamVid", "pspnet_r18", "cirkd"): 68.65,
    ("ADE20K", "deeplabv3_r18", "baseline"): 33.91,
    ("ADE20K", "deeplabv3_r18", "kd"): 34.88,
    ("ADE20K", "deeplabv3_r18", "cirkd"): 35.41,
    ("COCO-Stuff-164K", "deeplabv3_r18", "baseline"): 32.60,
    ("COCO-Stuff-164K", "deeplabv3_r18", "kd"): 32.88,
    ("COCO-Stuff-164K", "deeplabv3_r18", "cirkd"): 33.11,
}
TEACHER_MIOU = {  # the teacher rows: CIRKD's released DeepLabV3-ResNet101 per dataset
    "Cityscapes": 78.07,
    "PascalVOC": 77.67,
    "CamVid": 69.84,
    "ADE20K": 42.70,
    "COCO-Stuff-164K": 38.71,
}

# ------------------------------------------------------------------ the protocol per dataset
# CIRKD train_cirkd.py / train_kd.py / train_baseline.py argument defaults:
#   --lr 0.02 (l.67), --momentum 0.9 (l.69), --weight-decay 1e-4 (l.71), --batch-size 16 (l.61),
#   --max-iterations 40000 (l.65), --crop-size 512 1024 (l.51), --val-per-iters 800 (l.105);
#   adjust_lr: base_lr * (1 - iter / max_iter) ** 0.9; SGD over every parameter (l.251).
# train_scripts/train_cirkd/{voc,camvid,ade20k,coco_stuff_164k}/deeplabv3_res18.sh:
#   --crop-size 512 512 / 360 360 / 512 512 / 512 512; coco: --max-iterations 80000.
# dataset/*.py generate_scale_label: f_scale = 0.5 + random.randint(0, 15) / 10.0;
#   __getitem__: image - [104.00698793, 116.66876762, 122.67891434] of cv2.imread (BGR).
PROTOCOL = {
    # dataset: (crop, iterations, classes)
    "Cityscapes": ((512, 1024), 40000, 19),
    "PascalVOC": ((512, 512), 40000, 21),
    "CamVid": ((360, 360), 40000, 11),
    "ADE20K": ((512, 512), 40000, 150),
    "COCO-Stuff-164K": ((512, 512), 80000, 182),
}
CIRKD_SCALES = [0.5 + k / 10.0 for k in range(16)]
CAFFE_MEAN = [104.00698793, 116.66876762, 122.67891434]

# ------------------------------------------------------------------ the terms per method
# name -> (METHOD, INPUT, WEIGHT, params); CIRKD's CriterionKD(temperature=--kd-temperature 1.0)
KD = {"kd": ("kd", "logits", 1.0, {"temperature": 1.0})}  # --lambda-kd 1.0
METHOD_TERMS = {
    # train_scripts/train_kd/train_cwd.sh: --lambda-cwd-logit 3. --lambda-cwd-fea 50.;
    # train_kd.py l.244 CriterionCWD(..., temperature=4.)
    "cwd": {
        **KD,
        "cwd_logits": ("cwd", "logits", 3.0, {"temperature": 4.0}),
        "cwd_feature": ("cwd", "feature", 50.0, {"temperature": 4.0}),
    },
    "skd": {**KD, "skd": ("skd", "feature", 10.0, {})},  # train_skd.sh: --lambda-skd 10
    "ifvd": {**KD, "ifvd": ("ifvd", "feature", 20.0, {})},  # train_ifvd.sh: --lambda-ifv 20.
    # train_cirkd.py l.84 --lambda-minibatch-pixel 1., l.81 --contrast-temperature 0.1
    "cirkd": {**KD, "cirkd": ("cirkd", "feature", 1.0, {"temperature": 0.1})},
    "kd": dict(KD),
    # DIST_KD segmentation/train_kd.py l.254 lambda_kd * DIST(beta=1, gamma=1) on logits,
    # l.258 0.4 * lambda_kd * DIST on the aux logits (ResNet students, --aux)
    "dist": {
        "dist": ("dist", "logits", 1.0, {"beta": 1.0, "gamma": 1.0}),
        "dist_aux": ("dist", "aux_logits", 0.4, {"beta": 1.0, "gamma": 1.0}),
    },
}
# train_{cwd,skd,ifvd}.sh: --lambda-adv 0.001 --lambda-d 0.1 (train_kd.py l.337, l.339)
ADVERSARIAL = {"cwd": (0.001, 0.1), "skd": (0.001, 0.1), "ifvd": (0.001, 0.1)}
# train_cirkd.py l.85-86 --lambda-memory-pixel 0.1 --lambda-memory-region 0.1;
# train_scripts/train_cirkd/voc/*.sh: --lambda-memory-pixel 0.01 --lambda-memory-region 0.01
MEMORY = {"cirkd": (0.1, 0.1)}
MEMORY_VOC = (0.01, 0.01)
# DIST_KD segmentation/train_kd.py l.67 --weight-decay 5e-4, l.92 --val-per-iters 400
DIST_WEIGHT_DECAY, DIST_EVAL_PERIOD = 5e-4, 400


def _key(rel: str):
    p = Path(rel)
    m = RECIPE_RE.match(p.stem)
    return (p.parts[1], m["student"], m["method"]) if m else None


RECIPES = [r for r in REF_CONFIGS if _key(r)]
DISTILL = [r for r in RECIPES if _key(r)[2] != "baseline"]
TEACHERS = [r for r in REF_CONFIGS if "_cirkd_converted_teacher" in r]


@functools.cache
def _cfg(rel: str):
    return load_config(str(REPO / rel))


def _teacher_cfg(rel: str):
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return load_teacher_config(_cfg(rel))
    finally:
        os.chdir(cwd)


def test_inventory_is_the_published_rows():
    assert sorted(_key(r) for r in RECIPES) == sorted(ROWS)
    assert {Path(r).parts[1] for r in REF_CONFIGS} == set(PROTOCOL)
    bases = {str(Path(r).name) for r in REF_CONFIGS if Path(r).name.startswith("Base-")}
    assert {f"Base-Reference-{ds}.yaml" for ds in PROTOCOL} <= bases
    for r in REF_CONFIGS:
        assert r in RECIPES + TEACHERS or Path(r).name.startswith("Base-"), r


@pytest.mark.parametrize("rel", REF_CONFIGS)
def test_reference_config_loads_and_validates(rel):
    """Loads, and passes the checks every training run makes (the placeholder teacher file of the
    converted-teacher configs aside: it is produced by tools/convert_checkpoint.py)."""
    cfg = load_config(str(REPO / rel), ["MODEL.WEIGHTS", ""])
    check_config(cfg, "train")
    first = (REPO / rel).read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 20


@pytest.mark.parametrize("rel", RECIPES + TEACHERS)
def test_protocol(rel):
    ds = Path(rel).parts[1]
    crop, iters, classes = PROTOCOL[ds]
    cfg = _cfg(rel)
    s = cfg.SOLVER
    key = _key(rel)
    dist = key is not None and key[2] == "dist"
    wd = DIST_WEIGHT_DECAY if dist else 1e-4
    assert (s.BASE_LR, s.MOMENTUM, s.WEIGHT_DECAY, s.WEIGHT_DECAY_NORM) == (0.02, 0.9, wd, wd)
    assert s.WEIGHT_DECAY_BIAS in (None, wd)
    assert (s.LR_SCHEDULER_NAME, s.POLY_LR_POWER, s.WARMUP_ITERS) == ("WarmupPolyLR", 0.9, 0)
    assert (s.IMS_PER_BATCH, s.MAX_ITER) == (16, iters)
    assert tuple(cfg.INPUT.CROP.SIZE) == crop and cfg.INPUT.CROP.ENABLED
    assert list(cfg.INPUT.SCALE_SET) == pytest.approx(CIRKD_SCALES) and cfg.INPUT.FLIP
    assert cfg.INPUT.BASE_SIZE == 0  # CIRKD scales the original image
    assert cfg.INPUT.FORMAT == "BGR"
    assert list(cfg.MODEL.PIXEL_MEAN) == CAFFE_MEAN and list(cfg.MODEL.PIXEL_STD) == [1.0] * 3
    assert cfg.MODEL.SEM_SEG_HEAD.ALIGN_CORNERS
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == classes
    assert cfg.TEST.EVAL_PERIOD == (DIST_EVAL_PERIOD if dist else 800)
    assert cfg.OUTPUT_DIR == f"output/{ds.lower()}/reference/{Path(rel).stem}" or (
        "Cityscapes" in rel and "converted" in rel
    )
    if ds == "COCO-Stuff-164K":  # the 182-way protocol of the published numbers
        assert cfg.DATASETS.TRAIN == ("coco_stuff_164k_182_train_sem_seg",)
        assert cfg.DATASETS.TEST == ("coco_stuff_164k_182_val_sem_seg",)


@pytest.mark.parametrize("rel", RECIPES)
def test_students_and_comments(rel):
    ds, student, method = _key(rel)
    cfg = _cfg(rel)
    head = cfg.MODEL.SEM_SEG_HEAD
    bb = cfg.MODEL.SEG_BACKBONE
    assert head.NAME == ("TextKDPSPHead" if student.startswith("pspnet") else "TextKDDeepLabV3Head")
    assert head.CHANNELS == 128
    if student.endswith("mbv2"):  # CIRKD sets --aux only for ResNet students (train_*.py l.131)
        assert (bb.ARCH, bb.PRETRAINED) == ("mobilenetv2", "pretrained/mobilenetv2-imagenet.pth")
        assert not head.AUX
    else:
        assert (bb.ARCH, bb.PRETRAINED) == ("resnet18v1s", "pretrained/resnet18-imagenet.pth")
        assert head.AUX and head.AUX_WEIGHT == 0.4 and head.AUX_CHANNELS == 64
    assert cfg.MODEL.WEIGHTS == ""
    text = (REPO / rel).read_text()
    comment = " ".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    assert f"published val mIoU {ROWS[(ds, student, method)]:.2f}" in comment
    script = "hunto/DIST_KD" if method == "dist" else "winycg/CIRKD@2d8ad0f"
    assert f"Reproduces {script}" in comment


@pytest.mark.parametrize("rel", DISTILL)
def test_reference_terms(rel):
    ds, student, method = _key(rel)
    cfg = _cfg(rel)
    expected = dict(METHOD_TERMS[method])
    specs = {s.name: s for s in parse_terms(cfg.MODEL.DISTILL.TERMS)}
    assert set(specs) == set(expected)
    for name, (meth, inp, weight, params) in expected.items():
        s = specs[name]
        assert (s.method, s.input, s.weight, s.params) == (meth, inp, weight, params), name
        assert dict(cfg.MODEL.DISTILL.TERMS[name]) == DEFAULTS[name], name
    d = cfg.MODEL.DISTILL
    adv = ADVERSARIAL.get(method, (0.0, 0.1))
    assert (d.ADVERSARIAL.WEIGHT, d.ADVERSARIAL.D_WEIGHT) == adv
    mem = MEMORY.get(method, (0.0, 0.0))
    if method == "cirkd" and ds == "PascalVOC":
        mem = MEMORY_VOC
    assert (d.CIRKD_MEMORY.PIXEL_WEIGHT, d.CIRKD_MEMORY.REGION_WEIGHT) == mem
    assert d.TCD.WEIGHT == 0 and d.TRD.WEIGHT == 0
    # the teacher: CIRKD's released DeepLabV3-ResNet101 of the same dataset, converted
    tcfg = _teacher_cfg(rel)
    assert tcfg.MODEL.SEG_BACKBONE.ARCH == "resnet101v1s"
    assert tcfg.MODEL.SEM_SEG_HEAD.NAME == "TextKDDeepLabV3Head"
    assert tuple(tcfg.DATASETS.TRAIN) == tuple(cfg.DATASETS.TRAIN)
    assert tcfg.INPUT.FORMAT == "BGR" and list(tcfg.MODEL.PIXEL_MEAN) == CAFFE_MEAN
    assert d.TEACHER.WEIGHTS == tcfg.MODEL.WEIGHTS
    assert d.TEACHER.WEIGHTS.startswith("pretrained/cirkd/") and "converted" in d.TEACHER.WEIGHTS


@pytest.mark.parametrize(
    "rel", TEACHERS + ["configs/Cityscapes/deeplabv3_r101_cirkd_converted_teacher.yaml"]
)
def test_teacher_comments(rel):
    ds = Path(rel).parts[1]
    comment = (REPO / rel).read_text()
    assert f"{TEACHER_MIOU[ds]:.2f}" in comment and "convert_checkpoint.py" in comment


def test_mapper_draws_from_the_reference_scale_set(data_root):
    rel = "configs/Cityscapes/reference/deeplabv3_r18_baseline_40k_bs16.yaml"
    cfg = load_config(str(REPO / rel), ["INPUT.CROP.SIZE", "(32, 32)"])
    mapper = TextKDSemSegDatasetMapper(cfg, True)
    assert mapper.scale_set == tuple(CIRKD_SCALES) and mapper.image_format == "BGR"


# ------------------------------------------------------------------ training on synthetic data
# one recipe of each distinct shape: every method on Cityscapes (R18), the student variants
# (MobileNetV2 without aux head, PSPNet), and one recipe of every other dataset
TRAINED = [
    pytest.param("configs/Cityscapes/reference/deeplabv3_r18_baseline_40k_bs16.yaml"),
    pytest.param("configs/Cityscapes/reference/deeplabv3_r18_cwd_40k_bs16.yaml"),
    pytest.param("configs/Cityscapes/reference/deeplabv3_r18_skd_40k_bs16.yaml"),
    pytest.param("configs/Cityscapes/reference/deeplabv3_r18_ifvd_40k_bs16.yaml"),
    pytest.param("configs/Cityscapes/reference/deeplabv3_r18_cirkd_40k_bs16.yaml"),
    pytest.param("configs/Cityscapes/reference/deeplabv3_r18_dist_40k_bs16.yaml"),
    pytest.param("configs/Cityscapes/reference/deeplabv3_mbv2_cwd_40k_bs16.yaml"),
    pytest.param("configs/Cityscapes/reference/pspnet_r18_dist_40k_bs16.yaml"),
    pytest.param("configs/PascalVOC/reference/pspnet_r18_cirkd_40k_bs16.yaml"),
    pytest.param("configs/CamVid/reference/pspnet_r18_cwd_40k_bs16.yaml"),
    pytest.param("configs/ADE20K/reference/deeplabv3_r18_kd_40k_bs16.yaml"),
    pytest.param("configs/COCO-Stuff-164K/reference/deeplabv3_r18_kd_80k_bs16.yaml"),
]

# the teacher keeps the reference config's structure but is small: ResNet-18, width 48
TEACHER_OPTS = [
    "MODEL.SEG_BACKBONE.ARCH", "resnet18v1s",
    "MODEL.SEG_BACKBONE.PRETRAINED", "",
    "MODEL.SEM_SEG_HEAD.CHANNELS", "48",
    "MODEL.SEM_SEG_HEAD.AUX_CHANNELS", "16",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(H.NUM_CLASSES),
    "MODEL.WEIGHTS", "",
    "DATASETS.TRAIN", f"('{H.TINY_TRAIN}',)",
    "DATASETS.TEST", f"('{H.TINY_VAL}',)",
]  # fmt: skip


@pytest.mark.parametrize("rel", TRAINED)
def test_reference_recipe_trains_two_iterations(rel, data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the teacher CONFIG_FILE is relative to the repository root
    opts = H.tiny_opts(
        tmp_path / "out",
        max_iter=2,
        test=None,
        extra=[
            "MODEL.SEG_BACKBONE.PRETRAINED", "",
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", H.NUM_CLASSES,
        ],
    )  # fmt: skip
    key = _key(rel)
    if key[2] != "baseline":
        tcfg = load_teacher_config(load_config(str(REPO / rel)))
        tcfg.merge_from_list(TEACHER_OPTS + ["MODEL.DEVICE", "cpu"])
        torch.manual_seed(1)
        teacher = build_model(tcfg)
        weights = tmp_path / "teacher.pth"
        torch.save({"model": teacher.state_dict()}, weights)
        opts += ["MODEL.DISTILL.TEACHER.WEIGHTS", str(weights)]
        opts += ["MODEL.DISTILL.TEACHER.OPTS", str(TEACHER_OPTS)]
        # the discriminator needs maps of >= 64 per side (crops >= 512); tiny crops upsample
        opts += ["MODEL.DISTILL.ADVERSARIAL.MIN_INPUT_SIZE", 64]
    cfg = H.load_cfg(str(REPO / rel), opts)
    check_config(cfg, "train")
    # the recipe's own settings survive the tiny overrides
    assert cfg.INPUT.FORMAT == "BGR" and list(cfg.INPUT.SCALE_SET) == pytest.approx(CIRKD_SCALES)
    with H.one_thread():
        trainer, rec = H.run_training(cfg)
    assert rec.iters == [0, 1]
    expected = {"total_loss", "loss_sem_seg"}
    if cfg.MODEL.SEM_SEG_HEAD.AUX:
        expected.add("loss_aux")
    expected |= {f"loss_{s.name}" for s in parse_terms(cfg.MODEL.DISTILL.TERMS)}
    if cfg.MODEL.DISTILL.ADVERSARIAL.WEIGHT > 0:
        expected.add("loss_adv")
    memory = cfg.MODEL.DISTILL.CIRKD_MEMORY
    if memory.PIXEL_WEIGHT > 0:
        expected.add("loss_cirkd_memory_pixel")
    if memory.REGION_WEIGHT > 0:
        expected.add("loss_cirkd_memory_region")
    for row in rec.losses:
        assert expected <= set(row), (rel, row)
        assert all(math.isfinite(v) for v in row.values()), (rel, row)


# ------------------------------------------------------------- LAD's official VOC recipes
LAD_VOC = [
    "configs/PascalVOC/lad/deeplabv3_r18_lad_teacher_40k_bs16.yaml",
    "configs/PascalVOC/lad/deeplabv3_r18_lad_cwd_40k_bs16.yaml",
    "configs/PascalVOC/lad/pspnet_r18_lad_teacher_40k_bs16.yaml",
    "configs/PascalVOC/lad/pspnet_r18_lad_cwd_40k_bs16.yaml",
]


@pytest.mark.parametrize("rel", LAD_VOC)
def test_lad_voc_recipe_trains_two_iterations(rel, data_root, tmp_path, monkeypatch):
    """The official-LAD VOC recipes (teacher: label-conditioned, dual path; student: fine-tuned
    from its baseline, CWD from the frozen LAD teacher) load, pass the checks of a training run
    and train two iterations on the synthetic data with finite losses. MODEL.WEIGHTS (the
    trained baseline the student starts from) is left out: no such file here."""
    monkeypatch.chdir(REPO)  # the teacher CONFIG_FILE is relative to the repository root
    opts = H.tiny_opts(
        tmp_path / "out",
        max_iter=2,
        test=None,
        extra=[
            "MODEL.SEG_BACKBONE.PRETRAINED", "",
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", H.NUM_CLASSES,
            "MODEL.WEIGHTS", "",
        ],
    )  # fmt: skip
    student = "teacher" not in Path(rel).stem
    if student:
        tcfg = load_teacher_config(load_config(str(REPO / rel)))
        tcfg.merge_from_list(TEACHER_OPTS + ["MODEL.DEVICE", "cpu"])
        assert tcfg.MODEL.LAD.ENABLED and tcfg.MODEL.SEG_BACKBONE.IN_CHANS == 4
        torch.manual_seed(1)
        weights = tmp_path / "teacher.pth"
        torch.save({"model": build_model(tcfg).state_dict()}, weights)
        opts += ["MODEL.DISTILL.TEACHER.WEIGHTS", str(weights)]
        opts += ["MODEL.DISTILL.TEACHER.OPTS", str(TEACHER_OPTS)]
    cfg = H.load_cfg(str(REPO / rel), opts)
    check_config(cfg, "train")
    # the official protocol survives the tiny overrides
    assert cfg.MODEL.SEM_SEG_HEAD.ALIGN_CORNERS and cfg.INPUT.FORMAT == "BGR"
    assert list(cfg.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0]
    with H.one_thread():
        trainer, rec = H.run_training(cfg)
    assert rec.iters == [0, 1]
    if student:
        expected = {"total_loss", "loss_sem_seg", "loss_aux"}
        expected |= {f"loss_{s.name}" for s in parse_terms(cfg.MODEL.DISTILL.TERMS)}
        assert cfg.MODEL.SEM_SEG_HEAD.AUX_WEIGHT == pytest.approx(0.02)
    else:  # the dual-path teacher: both paths' task losses and their consistency
        expected = {"total_loss", "loss_consistency"}
        expected |= {f"loss_{k}_path{i}" for k in ("sem_seg", "aux") for i in (1, 2)}
    for row in rec.losses:
        assert expected <= set(row), (rel, row)
        assert all(math.isfinite(v) for v in row.values()), (rel, row)
