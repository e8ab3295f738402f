"""Every YAML under configs/ loads, and the generated reference recipes say what METHODS.md says.

Loads each config with ``textkd.engine.load_config``; for distillation configs loads the teacher
config the way the meta-architecture does; checks the distillation terms, LAD and text-plugin
settings of the reference recipes (the files named ``<head>_<backbone>_<method>[_<iters>k_bs16]``)
against the reference values of METHODS.md written out here by hand. Two LAD recipes (ResNet-18,
random init) are built with detectron2's ``build_model`` end to end. That each file states only
what differs from its ``_BASE_`` chain is checked in ``tests/test_config_leaves_d2.py``.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.detectron2

import torch  # noqa: E402
import yaml  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from textkd.config import add_textkd_config  # noqa: E402
from textkd.d2.distill_arch import load_teacher_config  # noqa: E402
from textkd.d2.meta_arch import LADSettings  # noqa: E402
from textkd.d2.teacher import check_teacher_classes  # noqa: E402
from textkd.distill.terms import DEFAULTS, parse_terms  # noqa: E402
from textkd.engine import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# detectron2 teacher configs (configs/<Dataset>/detectron2/teachers/) are detectron2's own yacs
# files, not TextKD configs: tests/test_d2_teacher_d2.py loads them the way a distillation does
D2_TEACHER_CONFIGS = sorted(
    str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*/detectron2/teachers/*.yaml")
)
ALL_CONFIGS = sorted(
    str(p.relative_to(REPO))
    for p in (REPO / "configs").rglob("*.yaml")
    if str(p.relative_to(REPO)) not in D2_TEACHER_CONFIGS
)
DISTILL_ARCH = "DistillSemanticSegmentor"

# name parts -> what the config must build
ARCHS = {
    "r18": "resnet18v1s",
    "r50": "resnet50v1s",
    "r101": "resnet101v1s",
    "mbv2": "mobilenetv2",
}
HEADS = {"deeplabv3": "TextKDDeepLabV3Head", "pspnet": "TextKDPSPHead", "fcn": "TextKDFCNHead"}
NAME_RE = re.compile(
    r"^(?P<head>deeplabv3|pspnet|fcn)_(?P<bb>r18|r50|r101|mbv2)_(?P<rest>.+?)"
    r"(?:_(?P<iters>\d+)k_bs(?P<batch>\d+))?$"
)
DATASET_DIRS = ["Cityscapes", "PascalVOC", "CamVid", "ADE20K", "COCO-Stuff-164K", "COCO-Stuff-10K"]

# METHODS.md section 1, by hand: method -> {term name: (METHOD, INPUT, WEIGHT, params)}
REFERENCE_TERMS = {
    "kd": {"kd": ("kd", "logits", 1.0, {"temperature": 1.0})},
    "cwd": {
        "cwd_logits": ("cwd", "logits", 3.0, {"temperature": 4.0}),
        "cwd_feature": ("cwd", "feature", 50.0, {"temperature": 4.0}),
    },
    "skd": {"skd": ("skd", "feature", 10.0, {})},
    "ifvd": {"ifvd": ("ifvd", "feature", 20.0, {})},
    "cirkd": {"cirkd": ("cirkd", "feature", 1.0, {"temperature": 0.1})},
    "dist": {
        "dist": ("dist", "logits", 1.0, {"beta": 1.0, "gamma": 1.0}),
        "dist_aux": ("dist", "aux_logits", 0.4, {"beta": 1.0, "gamma": 1.0}),
    },
}
PLUGINS = {"tcd": (3.0, 0.0), "trd": (0.0, 1.0), "tcd_trd": (3.0, 1.0)}  # (TCD, TRD weight)


@functools.cache
def _cfg(rel: str):
    """The merged config of a file (cached: the tests only read it)."""
    return load_config(str(REPO / rel))


@functools.cache
def _teacher_cfg(rel: str):
    cwd = os.getcwd()
    os.chdir(REPO)  # CONFIG_FILE is relative to the repository root, where train_net runs
    try:
        return load_teacher_config(_cfg(rel))
    finally:
        os.chdir(cwd)


def _is_distill(rel: str) -> bool:
    try:
        return _cfg(rel).MODEL.META_ARCHITECTURE == DISTILL_ARCH
    except Exception:  # noqa: BLE001 - a broken file is reported by test_config_loads
        return False


DISTILL_CONFIGS = [r for r in ALL_CONFIGS if _is_distill(r)]


def _parse(rel: str) -> re.Match | None:
    return NAME_RE.match(Path(rel).stem)


# the recipes: named <head>_<backbone>_<method>[_<iters>k_bs16]; not the recipes with a
# detectron2 teacher (configs/<Dataset>/detectron2/) nor the converted CIRKD checkpoint's config,
# nor the reference scripts' recipes (configs/<Dataset>/reference/: KD + method + adversarial /
# memory terms, CIRKD's normalisation and scale set), which tests/test_reference_recipes_d2.py
# checks against the reference scripts
RECIPES = [
    r
    for r in ALL_CONFIGS
    if _parse(r)
    and "/detectron2/" not in r
    and "/reference/" not in r
    and "_converted_teacher" not in r
]


def test_config_inventory():
    """The reference recipe set covers the brief: teachers, students, KD, text plugins, LAD."""
    stems = {str(Path(r).with_suffix("")) for r in RECIPES}
    for ds in DATASET_DIRS:
        it = "80k" if ds == "COCO-Stuff-164K" else "40k"
        assert f"configs/{ds}/deeplabv3_r101_teacher_{it}_bs16" in stems
        for head in ("deeplabv3", "pspnet", "fcn"):
            if ds != "CamVid":
                assert f"configs/{ds}/lad/{head}_r18_lad_teacher_{it}_bs16" in stems
                assert f"configs/{ds}/lad/{head}_r18_lad_cwd_{it}_bs16" in stems
        if ds == "COCO-Stuff-10K":
            continue
        for student in ("deeplabv3_r18", "pspnet_r18", "deeplabv3_mbv2"):
            assert f"configs/{ds}/{student}_baseline_{it}_bs16" in stems
            for method in REFERENCE_TERMS:
                assert f"configs/{ds}/{student}_{method}_{it}_bs16" in stems
                for plugin in PLUGINS:
                    name = f"configs/{ds}/{student}_{method}_{plugin}_{it}_bs16"
                    wanted = ds in ("Cityscapes", "PascalVOC", "CamVid") and method in (
                        "kd",
                        "cwd",
                        "cirkd",
                        "dist",
                    )
                    assert (name in stems) == wanted, name
    syn = {Path(s).name for s in stems if "/Synthetic/" in s}
    expected = {
        "deeplabv3_r50_teacher",
        "deeplabv3_r18_baseline",
        "pspnet_r18_baseline",
        "deeplabv3_mbv2_baseline",
        "deeplabv3_r18_cwd",
        "pspnet_r18_cwd",
        "deeplabv3_mbv2_cwd",
    }
    expected |= {f"deeplabv3_r18_{m}" for m in ("kd", "cwd_feat", "skd", "ifvd", "cirkd", "dist")}
    expected |= {f"deeplabv3_r18_{m}_{p}" for m in ("kd", "cwd") for p in PLUGINS}
    expected |= {
        f"{h}_r18_lad_{k}" for h in ("deeplabv3", "pspnet", "fcn") for k in ("teacher", "cwd")
    }
    assert syn == expected


@pytest.mark.parametrize("rel", ALL_CONFIGS)
def test_config_loads(rel):
    cfg = _cfg(rel)
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES > 0
    # a label-conditioned model is exactly one with LAD enabled (raises otherwise)
    lad = LADSettings.from_cfg(cfg)
    assert (lad is not None) == bool(cfg.MODEL.LAD.ENABLED)


@pytest.mark.parametrize("rel", DISTILL_CONFIGS)
def test_distillation_config(rel):
    cfg = _cfg(rel)
    teacher_file = REPO / cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE
    assert teacher_file.is_file(), f"{rel}: teacher config {teacher_file} missing"
    tcfg = _teacher_cfg(rel)
    assert tcfg.MODEL.META_ARCHITECTURE != DISTILL_ARCH, f"{rel}: the teacher is a distillation"
    assert tcfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if str(teacher_file.relative_to(REPO)) in D2_TEACHER_CONFIGS:
        # a detectron2 teacher may be trained under detectron2's builtin dataset name: the same
        # classes in the same order (raises otherwise)
        check_teacher_classes(cfg, list(tcfg.DATASETS.TRAIN), tcfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    else:
        assert tuple(tcfg.DATASETS.TRAIN) == tuple(cfg.DATASETS.TRAIN)
    assert cfg.MODEL.DISTILL.TEACHER.WEIGHTS, f"{rel}: no teacher weights"
    specs = parse_terms(cfg.MODEL.DISTILL.TERMS)
    plugins = cfg.MODEL.DISTILL.TCD.WEIGHT > 0 or cfg.MODEL.DISTILL.TRD.WEIGHT > 0
    if not Path(rel).name.startswith("Base-"):  # a base may leave the terms to its children
        assert specs or plugins, f"{rel}: distillation without any term"
    # the student is an RGB model; aux-logits terms need a student with an aux head
    assert LADSettings.from_cfg(cfg) is None
    if any(s.input == "aux_logits" for s in specs):
        assert cfg.MODEL.SEM_SEG_HEAD.AUX and tcfg.MODEL.SEM_SEG_HEAD.AUX


@pytest.mark.parametrize("rel", [r for r in RECIPES if r in DISTILL_CONFIGS])
def test_recipe_teacher_weights_follow_output_dir(rel):
    """The default teacher weights are the teacher config's own OUTPUT_DIR/model_final.pth."""
    cfg, tcfg = _cfg(rel), _teacher_cfg(rel)
    assert cfg.MODEL.DISTILL.TEACHER.WEIGHTS == f"{tcfg.OUTPUT_DIR}/model_final.pth"
    assert cfg.OUTPUT_DIR != tcfg.OUTPUT_DIR


# the LAD recipes made exactly the official code's (issue 12 point 8)
OFFICIAL_LAD_STUDENTS = {
    "configs/PascalVOC/lad/deeplabv3_r18_lad_cwd_40k_bs16.yaml",
    "configs/PascalVOC/lad/pspnet_r18_lad_cwd_40k_bs16.yaml",
}


@pytest.mark.parametrize("rel", RECIPES)
def test_names_match_settings(rel):
    """deeplabv3_r18_..._40k_bs16: head, backbone, iterations, batch and OUTPUT_DIR agree."""
    m = _parse(rel)
    assert m, f"unexpected config name {rel}"
    cfg = _cfg(rel)
    assert cfg.MODEL.SEM_SEG_HEAD.NAME == HEADS[m["head"]]
    assert cfg.MODEL.SEG_BACKBONE.ARCH == ARCHS[m["bb"]]
    assert cfg.MODEL.SEG_BACKBONE.OUTPUT_STRIDE == 8
    if m["iters"]:
        assert cfg.SOLVER.MAX_ITER == int(m["iters"]) * 1000
        assert cfg.SOLVER.IMS_PER_BATCH == int(m["batch"]) == 16
        ds = Path(rel).parts[1]
        sub = "lad/" if "/lad/" in rel else ""
        assert cfg.OUTPUT_DIR == f"output/{ds.lower()}/{sub}{Path(rel).stem}"
        # LAD's official students fine-tune their trained baseline at LR 0.001
        lr = 0.001 if rel in OFFICIAL_LAD_STUDENTS else 0.02
        assert cfg.SOLVER.BASE_LR == lr and cfg.SOLVER.POLY_LR_POWER == 0.9
    else:
        assert "/Synthetic/" in rel
        assert cfg.OUTPUT_DIR == f"output/synthetic/{Path(rel).stem}"
    # every recipe says what it is before its YAML
    first = (REPO / rel).read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 20


@pytest.mark.parametrize("rel", [r for r in RECIPES if "/Synthetic/" not in r])
def test_reference_model_settings(rel):
    """Reference recipes resolve to the METHODS.md model settings (and differ from the defaults
    where the reference does: head widths, aux width, deep-stem v1s backbones)."""
    m = _parse(rel)
    cfg = _cfg(rel)
    head = cfg.MODEL.SEM_SEG_HEAD
    width = {"r101": 256, "r18": 128, "mbv2": 128}[m["bb"]]
    assert head.CHANNELS == width
    if rel in OFFICIAL_LAD_STUDENTS:  # the whole student comes from its trained baseline
        assert cfg.MODEL.WEIGHTS.endswith("_baseline_40k_bs16/model_best.pth")
    else:
        assert cfg.MODEL.SEG_BACKBONE.PRETRAINED.startswith("pretrained/")
    if m["head"] == "deeplabv3":
        assert list(head.ASPP_DILATIONS) == [12, 24, 36]
    if m["head"] == "pspnet":
        assert list(head.PSP_BINS) == [1, 2, 3, 6]
    if m["bb"] == "mbv2":
        assert not head.AUX  # CIRKD's DeepLabV3-MobileNetV2 has no aux head
    else:
        # CIRKD's aux FCN head: res4 channels // 4 (ResNet-18: 256, ResNet-101: 1024)
        aux_weight = 0.02 if rel in OFFICIAL_LAD_STUDENTS else 0.4  # LAD's student: 0.02
        assert head.AUX and head.AUX_IN_FEATURE == "res4" and head.AUX_WEIGHT == aux_weight
        assert head.AUX_CHANNELS == {"r18": 64, "r101": 256}[m["bb"]]


def _method_and_plugin(rel: str) -> tuple[str | None, str | None]:
    rest = _parse(rel)["rest"]
    for plugin in ("tcd_trd", "tcd", "trd"):
        if rest.endswith("_" + plugin):
            return rest[: -len(plugin) - 1], plugin
    return rest, None


@pytest.mark.parametrize(
    "rel",
    [r for r in RECIPES if _method_and_plugin(r)[0] in REFERENCE_TERMS and "/Synthetic/" not in r]
    + [r for r in RECIPES if "/Synthetic/" in r and "_cwd_feat" in r],
)
def test_reference_distillation_terms(rel):
    """Classic KD recipes use exactly the METHODS.md terms (aux-logits terms only for students
    with an aux head); the same values as textkd.distill.terms.DEFAULTS."""
    method, plugin = _method_and_plugin(rel)
    method = "cwd" if method == "cwd_feat" else method
    cfg = _cfg(rel)
    expected = dict(REFERENCE_TERMS[method])
    if not cfg.MODEL.SEM_SEG_HEAD.AUX:
        expected = {k: v for k, v in expected.items() if v[1] != "aux_logits"}
    specs = {s.name: s for s in parse_terms(cfg.MODEL.DISTILL.TERMS)}
    assert set(specs) == set(expected)
    for name, (meth, inp, weight, params) in expected.items():
        s = specs[name]
        assert (s.method, s.input, s.weight) == (meth, inp, weight), name
        assert s.params == params, name
        assert dict(cfg.MODEL.DISTILL.TERMS[name]) == DEFAULTS[name]
    if plugin is None:
        assert cfg.MODEL.DISTILL.TCD.WEIGHT == 0 and cfg.MODEL.DISTILL.TRD.WEIGHT == 0


@pytest.mark.parametrize("rel", [r for r in RECIPES if _method_and_plugin(r)[1]])
def test_text_plugin_configs(rel):
    """TCD weight 3 tau 4 spatial, TRD weight 1, CLIP ViT-B-16 openai; the file writes only the
    plugin weights (and what differs from its KD recipe): every other text key is the config.py
    default, which is the reference value."""
    method, plugin = _method_and_plugin(rel)
    cfg = _cfg(rel)
    d = cfg.MODEL.DISTILL
    tcd, trd = PLUGINS[plugin]
    assert (d.TCD.WEIGHT, d.TRD.WEIGHT) == (tcd, trd)
    assert d.TCD.TEMPERATURE == 4.0 and d.TCD.MODE == "spatial"
    assert d.TEXT.SCORE_TEMPERATURE == 0.07 and d.TEXT.PROBE_MODE == "joint"
    assert d.TRD.AFFINITY_TEMPERATURE == 0.07 and d.TRD.REGION_TEMPERATURE == 1.0
    assert (cfg.MODEL.TEXT_BANK.SOURCE, cfg.MODEL.TEXT_BANK.CLIP_MODEL) == ("clip", "ViT-B-16")
    assert cfg.MODEL.TEXT_BANK.CLIP_PRETRAINED == "openai"
    # the base KD terms are inherited from the KD recipe named in _BASE_
    raw = yaml.safe_load((REPO / rel).read_text())
    assert Path(raw["_BASE_"]).stem == Path(rel).stem.replace(f"_{plugin}", "", 1)
    assert parse_terms(d.TERMS)
    defaults = get_cfg()
    add_textkd_config(defaults)
    written = raw["MODEL"]["DISTILL"]
    assert set(written) <= {"TCD", "TRD"}, "a plugin recipe writes only TCD/TRD weights"
    for node in ("TCD", "TRD"):
        assert set(written.get(node, {})) <= {"WEIGHT"}, node
    for node in ("TEXT", "TCD", "TRD"):
        for key, value in d[node].items():
            if key != "WEIGHT":
                assert value == defaults.MODEL.DISTILL[node][key], (node, key)
    assert cfg.MODEL.TEXT_BANK == defaults.MODEL.TEXT_BANK


@pytest.mark.parametrize("rel", [r for r in RECIPES if "_lad_" in r])
def test_lad_configs(rel):
    cfg = _cfg(rel)
    if "_lad_teacher" in rel:
        assert cfg.MODEL.SEG_BACKBONE.IN_CHANS == 4
        lad = cfg.MODEL.LAD
        assert lad.ENABLED and lad.DUAL_PATH
        assert (lad.CONSISTENCY_WEIGHT, lad.CONSISTENCY_TEMPERATURE) == (5.0, 4.0)
        assert (lad.ALPHA, lad.SIGMA, lad.CODE_SIGMA, lad.EVAL_LABEL) == (
            100.0,
            0.03,
            0.02,
            "both",
        )
        assert cfg.MODEL.SEG_BACKBONE.ARCH == "resnet18v1s"
    else:
        tcfg = _teacher_cfg(rel)
        assert "_lad_teacher" in cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE
        assert tcfg.MODEL.LAD.ENABLED and tcfg.MODEL.SEG_BACKBONE.IN_CHANS == 4
        assert cfg.MODEL.SEG_BACKBONE.IN_CHANS == 3 and not cfg.MODEL.LAD.ENABLED
        # teacher and student of the same architecture, as the official code
        for key in ("NAME", "CHANNELS", "AUX_CHANNELS"):
            assert cfg.MODEL.SEM_SEG_HEAD[key] == tcfg.MODEL.SEM_SEG_HEAD[key], key
        assert cfg.MODEL.SEG_BACKBONE.ARCH == tcfg.MODEL.SEG_BACKBONE.ARCH
        specs = parse_terms(cfg.MODEL.DISTILL.TERMS)
        assert [(s.name, s.method, s.input, s.weight, s.params) for s in specs] == [
            ("cwd_logits", "cwd", "logits", 3.0, {"temperature": 4.0})
        ]
        aux_weight = 0.02 if rel in OFFICIAL_LAD_STUDENTS else 0.4
        assert cfg.MODEL.SEM_SEG_HEAD.AUX_WEIGHT == aux_weight


def _build(rel: str, opts: list[str]):
    cfg = load_config(str(REPO / rel), opts)
    cfg.MODEL.DEVICE = "cpu"
    return cfg, build_model(cfg)


def _first_conv(module: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))


def test_build_reference_lad_pair(tmp_path, monkeypatch):
    """The Pascal VOC LAD teacher and its CWD student build with detectron2 (random init); the
    student loads the teacher checkpoint through its config."""
    monkeypatch.chdir(REPO)
    no_pretrained = ["MODEL.SEG_BACKBONE.PRETRAINED", ""]
    teacher_rel = "configs/PascalVOC/lad/deeplabv3_r18_lad_teacher_40k_bs16.yaml"
    tcfg, teacher = _build(teacher_rel, no_pretrained)
    assert _first_conv(teacher.segmentor.backbone).in_channels == 4
    assert teacher.segmentor.num_classes == 21
    ckpt = tmp_path / "lad_teacher.pth"
    torch.save({"model": teacher.state_dict()}, ckpt)

    student_rel = "configs/PascalVOC/lad/deeplabv3_r18_lad_cwd_40k_bs16.yaml"
    opts = no_pretrained + [
        "MODEL.DISTILL.TEACHER.WEIGHTS",
        str(ckpt),
        "MODEL.DISTILL.TEACHER.OPTS",
        str(no_pretrained),
    ]
    _, model = _build(student_rel, opts)
    assert type(model).__name__ == DISTILL_ARCH
    assert model.teacher_lad is not None
    assert _first_conv(model.segmentor.backbone).in_channels == 3
    assert model.segmentor.output_channels["feature"] == 128
    aux = _first_conv(model.segmentor.aux_head)
    assert (aux.in_channels, aux.out_channels) == (256, 64)
    for k, v in teacher.segmentor.state_dict().items():
        assert torch.equal(model.teacher.state_dict()[k], v), k
    assert [s.name for s in model.distiller.specs] == ["cwd_logits"]


def test_build_reference_mbv2_and_pspnet_students():
    """Reference students build as described: MobileNetV2 without aux head, PSPNet width 128."""
    opts = ["MODEL.SEG_BACKBONE.PRETRAINED", ""]
    _, mbv2 = _build("configs/Cityscapes/deeplabv3_mbv2_baseline_40k_bs16.yaml", opts)
    assert mbv2.segmentor.aux_head is None
    assert mbv2.segmentor.output_channels["feature"] == 128
    _, psp = _build("configs/CamVid/pspnet_r18_baseline_40k_bs16.yaml", opts)
    assert psp.segmentor.output_channels["feature"] == 128
    assert psp.segmentor.num_classes == 11
    x = torch.zeros(1, 3, 64, 64)
    psp.eval()
    with torch.no_grad():
        out = psp.segmentor(x)
    assert out.logits.shape == (1, 11, 8, 8)
