"""OCRNet and STDC end to end through ``tools/train_net.py`` (the "more models" issue): each
trains on the synthetic dataset with its own task losses, and each distils from the other (an
OCRNet teacher for an STDC student and the reverse), with CWD on logits and on features (an
adapter maps the differing feature widths)."""

from __future__ import annotations

import math

import pytest

pytestmark = [pytest.mark.detectron2, pytest.mark.slow]

import _d2_helpers as H  # noqa: E402

MODELS = {
    "ocrnet": ("ocrnet_r18_baseline.yaml", "loss_ocr_regions"),
    "stdc": ("stdc1_baseline.yaml", "loss_detail"),
}


def _opts(out, max_iter=3):
    """Tiny run keeping each config's own head widths (so the teacher config file alone matches
    its checkpoint), evaluated at the end. A train_net subprocess cannot see the tiny splits
    registered in this process, so it uses the synthetic dataset's own splits."""
    opts = H.tiny_opts(out, max_iter=max_iter, eval_period=max_iter, channels=None)
    opts = _replace(opts, "DATASETS.TRAIN", "('textkd_synthetic_train_sem_seg',)")
    return _replace(opts, "DATASETS.TEST", "('textkd_synthetic_val_sem_seg',)")


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """Each model trained 3 iterations through tools/train_net.py on the synthetic train split."""
    env = H.subprocess_env(data_root)
    out = {}
    for name, (cfg_name, _) in MODELS.items():
        d = tmp_path_factory.mktemp(name)
        opts = _opts(d / "out")
        cfg_file = str(H.SYNTH_CONFIGS / cfg_name)
        H.run_tool("train_net.py", ["--config-file", cfg_file, *opts], env, timeout=900)
        out[name] = (cfg_file, opts, d / "out")
    return out


def _replace(opts: list[str], key: str, value: str) -> list[str]:
    opts = list(opts)
    opts[opts.index(key) + 1] = value
    return opts


@pytest.mark.parametrize("name", sorted(MODELS))
def test_trains_with_its_task_losses(trained, name):
    _, _, out = trained[name]
    rows = H.read_metrics(out)
    losses = [r for r in rows if "total_loss" in r]
    assert losses, f"no training rows in {out}/metrics.json"
    assert MODELS[name][1] in losses[-1], sorted(losses[-1])
    assert all(math.isfinite(r["total_loss"]) for r in losses)
    evals = [r for r in rows if "sem_seg/mIoU" in r]
    assert evals and 0.0 <= evals[-1]["sem_seg/mIoU"] <= 100.0
    assert (out / "model_final.pth").is_file()


@pytest.mark.parametrize("student,teacher", [("stdc", "ocrnet"), ("ocrnet", "stdc")])
def test_distils_from_the_other(trained, data_root, tmp_path, student, teacher):
    t_cfg, t_opts, t_out = trained[teacher]
    s_cfg = H.write_config(
        tmp_path / f"{student}_from_{teacher}.yaml",
        MODELS[student][0],
        f"""MODEL:
  META_ARCHITECTURE: "DistillSemanticSegmentor"
  DISTILL:
    TEACHER:
      CONFIG_FILE: "{t_cfg}"
      WEIGHTS: "{t_out / 'model_final.pth'}"
    TERMS:
      cwd_logits: {{METHOD: "cwd", INPUT: "logits", WEIGHT: 3.0, TEMPERATURE: 4.0}}
      cwd_feature: {{METHOD: "cwd", INPUT: "feature", WEIGHT: 50.0}}
""",
    )
    opts = _opts(tmp_path / "out", max_iter=2)
    H.run_tool(
        "train_net.py", ["--config-file", s_cfg, *opts], H.subprocess_env(data_root), timeout=900
    )
    rows = H.read_metrics(tmp_path / "out")
    last = [r for r in rows if "total_loss" in r][-1]
    for key in ("loss_sem_seg", MODELS[student][1], "loss_cwd_logits", "loss_cwd_feature"):
        assert key in last, sorted(last)
        assert math.isfinite(last[key])
    assert any("sem_seg/mIoU" in r for r in rows)
