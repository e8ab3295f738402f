"""End-to-end text-assisted distillation with detectron2 (the text-plugin issue): TCD, TRD and
both on top of KD and CWD train with their loss keys; the text bank comes from the dataset's
class names through a real (tiny, random-weight, local) open_clip model, is cached once and then
reused without CLIP; evaluation and the exported student are unaffected by the plugins."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")
pytestmark = pytest.mark.detectron2

import _d2_helpers as H  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.engine import HookBase  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from textkd.data.synthetic import SYNTHETIC_CLASSES  # noqa: E402
from textkd.engine import Trainer  # noqa: E402

TEMPLATES = ["a photo of a {}.", "there is a {} in the scene."]
BASES = {
    "kd": ("kd: {METHOD: kd, INPUT: logits, WEIGHT: 1.0}", "loss_kd"),
    "cwd": ("cwd_logits: {METHOD: cwd, INPUT: logits, WEIGHT: 3.0}", "loss_cwd_logits"),
}
PLUGINS = {
    "tcd": ((3.0, 0.0), {"loss_text_probe", "loss_tcd"}),
    "trd": ((0.0, 1.0), {"loss_text_probe", "loss_trd"}),
    "tcd_trd": ((3.0, 1.0), {"loss_text_probe", "loss_tcd", "loss_trd"}),
}


@pytest.fixture(scope="module")
def env(data_root, tmp_path_factory):
    """Teacher (random R18d, width 48), the tiny CLIP checkpoint and an empty cache dir."""
    d = tmp_path_factory.mktemp("text_env")
    t_cfg = H.teacher_config(d / "teacher.yaml", channels=48)
    t_weights = H.save_random_teacher(t_cfg, d / "teacher.pth", seed=1)
    clip_model, clip_ckpt = H.tiny_clip_checkpoint(d)
    cache = d / "text_cache"
    return {
        "dir": d,
        "teacher": (t_cfg, t_weights),
        "clip": (clip_model, clip_ckpt),
        "cache": cache,
    }


def text_config(path, env, base: str, tcd: float, trd: float) -> str:
    t_cfg, t_weights = env["teacher"]
    clip_model, clip_ckpt = env["clip"]
    body = f"""MODEL:
  META_ARCHITECTURE: "DistillSemanticSegmentor"
  DISTILL:
    TEACHER:
      CONFIG_FILE: "{t_cfg}"
      WEIGHTS: "{t_weights}"
    TERMS:
      {BASES[base][0]}
    TEXT:
      PROJ_HIDDEN: 64
    TCD:
      WEIGHT: {tcd}
    TRD:
      WEIGHT: {trd}
  TEXT_BANK:
    SOURCE: "clip"
    CLIP_MODEL: "{clip_model}"
    CLIP_PRETRAINED: "{clip_ckpt}"
    TEMPLATES: {H._yaml_value(TEMPLATES)}
    CACHE_DIR: "{env['cache']}"
"""
    return H.write_config(path, "deeplabv3_r18_baseline.yaml", body)


def reference_bank(clip_ckpt: str, names, templates) -> torch.Tensor:
    """Each prompt encoded alone by open_clip, L2-normalised, averaged over the templates and
    re-normalised (METHODS.md section 2), written out without the project's code."""
    model = open_clip.create_model(H.TINY_CLIP, pretrained=clip_ckpt).eval()
    tok = open_clip.get_tokenizer(H.TINY_CLIP)
    rows = []
    with torch.no_grad():
        for name in names:
            embs = [
                F.normalize(model.encode_text(tok([t.format(name)]))[0], dim=0) for t in templates
            ]
            rows.append(F.normalize(torch.stack(embs).mean(0), dim=0))
    return torch.stack(rows)


def _cache_files(env) -> list[str]:
    d = env["cache"]
    return sorted(os.listdir(d)) if d.exists() else []


def test_plugins_on_kd_and_cwd(env, tmp_path, monkeypatch):
    """Every {KD, CWD} × {TCD, TRD, both} run reports its loss keys, finite; the text bank is
    encoded from the dataset's class names once, then read from the cache without CLIP."""
    assert _cache_files(env) == []
    expected_bank = reference_bank(env["clip"][1], SYNTHETIC_CLASSES, TEMPLATES)
    assert list(MetadataCatalog.get(H.TINY_TRAIN).stuff_classes) == SYNTHETIC_CLASSES
    cache_stat = None
    for i, (base, plugin) in enumerate((b, p) for b in BASES for p in PLUGINS):
        (tcd, trd), plugin_keys = PLUGINS[plugin]
        cfg_file = text_config(tmp_path / f"{base}_{plugin}.yaml", env, base, tcd, trd)
        cfg = H.load_cfg(cfg_file, H.tiny_opts(tmp_path / f"{base}_{plugin}", max_iter=3))
        if i == 1:
            # from now on CLIP cannot even be imported: the bank must come from the cache
            monkeypatch.setitem(sys.modules, "open_clip", None)
        grads = GradNames()
        rec = H.LossRecorder()
        trainer = H.build_trainer(cfg, hooks=[grads, rec])
        td = trainer.model.text_distiller
        torch.testing.assert_close(td.text, expected_bank, atol=1e-5, rtol=1e-5)
        files = _cache_files(env)
        assert len(files) == 1, files
        st = os.stat(env["cache"] / files[0])
        if cache_stat is None:
            cache_stat = (st.st_mtime_ns, st.st_size, st.st_ino)
            record = torch.load(env["cache"] / files[0], map_location="cpu", weights_only=False)
            assert record["class_names"] == SYNTHETIC_CLASSES
            assert record["templates"] == TEMPLATES
        else:
            assert (st.st_mtime_ns, st.st_size, st.st_ino) == cache_stat  # never rewritten
        trainer.train()

        expected = {"total_loss", "loss_sem_seg", "loss_aux", BASES[base][1], *plugin_keys}
        for row in rec.losses:
            assert set(row) == expected, (base, plugin)
            assert all(math.isfinite(v) for v in row.values()), (base, plugin, row)
        # the probe learns (from its CE), the projector learns, the teacher and the text don't
        for names in grads.names:
            assert any(n.startswith("text_distiller.teacher_probe.") for n in names)
            assert any(n.startswith("text_distiller.student_proj.") for n in names)
            assert not any(n.startswith("teacher.") for n in names)
            assert "text_distiller.text" not in names
        torch.testing.assert_close(td.text, expected_bank, atol=1e-5, rtol=1e-5)


class GradNames(HookBase):
    """Names of the parameters holding a gradient after every step."""

    def __init__(self) -> None:
        self.names: list[set[str]] = []

    def after_step(self) -> None:
        self.names.append(
            {n for n, p in self.trainer.model.named_parameters() if p.grad is not None}
        )


def test_class_names_must_match_the_classes(env, tmp_path):
    """Text names that do not match the model's classes are an error before training."""
    cfg_file = text_config(tmp_path / "bad_names.yaml", env, "kd", 3.0, 0.0)
    out = tmp_path / "out"
    cfg = H.load_cfg(
        cfg_file,
        H.tiny_opts(out, extra=["MODEL.TEXT_BANK.CLASS_NAMES", "['sky', 'road', 'car']"]),
    )
    with pytest.raises(ValueError, match=r"3 .*8|8 .*3"):
        Trainer(cfg)
    assert not (out / "metrics.json").exists()


@pytest.fixture(scope="module")
def text_run(env, tmp_path_factory):
    """CWD + TCD + TRD: 4 iterations, evaluated at the end."""
    d = tmp_path_factory.mktemp("text_run")
    cfg_file = text_config(d / "cwd_tcd_trd.yaml", env, "cwd", 3.0, 1.0)
    opts = H.tiny_opts(d / "out", max_iter=4, eval_period=4)
    cfg = H.load_cfg(cfg_file, opts)
    trainer, _ = H.run_training(cfg)
    return cfg_file, opts, cfg, trainer, d / "out"


def test_eval_and_export_are_unaffected_by_the_plugins(text_run, env, data_root, tmp_path):
    cfg_file, opts, cfg, trainer, out = text_run
    final = trainer._last_eval_results
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    # the training checkpoint holds the plugin modules (they train with the student)
    plugin_keys = [k for k in ckpt["model"] if k.startswith("text_distiller.")]
    assert any(k.startswith("text_distiller.teacher_probe.") for k in plugin_keys)
    assert any(k.startswith("text_distiller.student_proj.") for k in plugin_keys)
    assert H.evaluate(cfg, out / "model_final.pth") == final

    # export in another process: the same dataset names there resolve to the same class names,
    # so the cached bank is found (the tiny CLIP model is not even registered in that process)
    exported = tmp_path / "student.pth"
    sub_opts = H.tiny_opts(
        out, train="textkd_synthetic_train_sem_seg", test="textkd_synthetic_val_sem_seg"
    )
    H.run_tool(
        "export_student.py",
        ["--config-file", cfg_file, "--weights", out / "model_final.pth", "--output", exported]
        + sub_opts,
        H.subprocess_env(data_root),
    )
    state = torch.load(exported, map_location="cpu", weights_only=False)["model"]
    single = H.load_cfg(cfg_file, opts + ["MODEL.META_ARCHITECTURE", "TextKDSemanticSegmentor"])
    assert set(state) == set(build_model(single).state_dict())
    assert not [k for k in state if not k.startswith("segmentor.")]
    for k, v in state.items():
        assert torch.equal(v, ckpt["model"][k]), k
    assert H.evaluate(single, exported) == final

    # the same student weights without any plugin module evaluate identically
    no_text = H.load_cfg(
        cfg_file, opts + ["MODEL.DISTILL.TCD.WEIGHT", 0.0, "MODEL.DISTILL.TRD.WEIGHT", 0.0]
    )
    model = Trainer.build_model(no_text)
    assert model.text_distiller is None
    result = model.load_state_dict(
        {k: v for k, v in ckpt["model"].items() if not k.startswith("text_distiller.")},
        strict=False,
    )
    assert not result.missing_keys and not result.unexpected_keys
    assert Trainer.test(no_text, model) == final
