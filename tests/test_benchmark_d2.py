"""tools/benchmark.py end to end on the synthetic configs (tiny inputs, 2 iterations): the JSON
report's layout and derived figures, the decomposed step's gradients, the LAD step ratio and the
evaluator memory. Needs detectron2."""

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.detectron2

import torch  # noqa: E402

from benchmarks import measure as B  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYN = ROOT / "configs" / "Synthetic"


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "textkd_tool_benchmark", ROOT / "tools" / "benchmark.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


tool = _load_tool()

# a light teacher so that the tests stay fast: the R50 teacher config, narrowed to an R18
LIGHT_TEACHER = "MODEL.DISTILL.TEACHER.OPTS \"['MODEL.SEG_BACKBONE.ARCH', 'resnet18v1s']\""


def test_parse_config_spec():
    assert tool.parse_config_spec("a/b/cfg.yaml") == ("cfg", "a/b/cfg.yaml", [])
    assert tool.parse_config_spec("x=a/cfg.yaml MODEL.AMP_DTYPE bf16") == (
        "x",
        "a/cfg.yaml",
        ["MODEL.AMP_DTYPE", "bf16"],
    )
    name, path, opts = tool.parse_config_spec(f"t=c.yaml {LIGHT_TEACHER}")
    assert opts == ["MODEL.DISTILL.TEACHER.OPTS", "['MODEL.SEG_BACKBONE.ARCH', 'resnet18v1s']"]
    with pytest.raises(ValueError, match="KEY VALUE"):
        tool.parse_config_spec("c.yaml MODEL.AMP_DTYPE")
    with pytest.raises(ValueError, match="no config path"):
        tool.parse_config_spec("name=")
    assert [n for n, _, _ in tool._unique_names([("a", "p", []), ("a", "q", [])])] == ["a", "a#1"]


def test_bad_arguments_are_named():
    base = str(SYN / "deeplabv3_r18_baseline.yaml")
    with pytest.raises(ValueError, match="no config named 'nope'"):
        tool.main(["--config-file", base, "--compare", "nope"])
    with pytest.raises(ValueError, match="nothing to do"):
        tool.main([])
    with pytest.raises(ValueError, match="--batch"):
        tool.main(["--config-file", base, "--batch", "0"])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        tool.main(["--config-file", "missing.yaml", "--iters", "1", "--size", "32x32"])


def test_end_to_end_json_report(tmp_path):
    out = tmp_path / "bench.json"
    base = str(SYN / "deeplabv3_r18_baseline.yaml")
    cwd = f"cwd={SYN / 'deeplabv3_r18_cwd.yaml'} {LIGHT_TEACHER}"
    text = f"text={SYN / 'deeplabv3_r18_cwd_tcd_trd.yaml'} {LIGHT_TEACHER}"
    report = tool.main(
        [
            "--random-teacher",
            "--random-text-bank",
            "--no-pretrained",
            "--batch",
            "2",
            "--size",
            "32x48",
            "--iters",
            "2",
            "--warmup",
            "1",
            "--compare",
            "cwd",
            "--config-file",
            base,
            cwd,
            text,
            "--json",
            str(out),
        ]
    )
    data = json.loads(out.read_text())
    B.validate_report(data)
    assert data["schema"] == B.SCHEMA
    assert data["settings"]["input"] == "random" and data["settings"]["size"] == "32x48"
    assert data["env"]["device"] == "cpu"
    names = [c["name"] for c in data["configs"]]
    assert names == ["deeplabv3_r18_baseline", "cwd", "text"]
    by = {c["name"]: c for c in data["configs"]}

    # labels: random teacher / text bank only where used
    assert by["deeplabv3_r18_baseline"]["random_teacher"] is False
    assert by["cwd"]["random_teacher"] is True and by["cwd"]["random_text_bank"] is False
    assert by["text"]["random_teacher"] is True and by["text"]["random_text_bank"] is True

    assert all(c["pretrained"] == "" for c in data["configs"])
    assert "--no-pretrained" in data["settings"]["argv"]

    # loss keys of the real step
    assert set(by["deeplabv3_r18_baseline"]["loss_keys"]) == {"loss_sem_seg", "loss_aux"}
    assert set(by["cwd"]["loss_keys"]) == {"loss_sem_seg", "loss_aux", "loss_cwd_logits"}
    assert {"loss_tcd", "loss_trd", "loss_text_probe"} <= set(by["text"]["loss_keys"])

    for c in data["configs"]:
        assert c["step"]["n"] == 2
        assert len(c["samples"]["step"]) == 2
        assert c["step"]["median"] == pytest.approx(sum(c["samples"]["step"]) / 2)
        parts = c["parts"]
        expected = {"student_forward", "student_backward", "student_forward_backward", "optimizer"}
        if c["distill"]:
            expected |= {"teacher_forward", "distill"}
        assert set(parts) == expected
        for stats in parts.values():
            assert stats["n"] == 2
        mem = c["memory"]
        assert mem["method"] == "torch_profiler"
        assert mem["state_bytes"] > 4 * c["parameters"] * 0.99  # float32 weights at least
        assert mem["peak_bytes"] == mem["state_bytes"] + mem["step_extra_peak_bytes"]
        assert mem["rss_peak_bytes"] > 0
        ev = c["eval"]
        assert ev["batch"] == 2
        assert ev["images_per_s"] == pytest.approx(2 / ev["batch_seconds"]["median"])
        d = c["derived"]
        if c["distill"]:
            t = parts["teacher_forward"]["median"]
            s = parts["student_forward_backward"]["median"]
            o = parts["optimizer"]["median"]
            assert d["distill_overhead"] == pytest.approx(
                (c["step"]["median"] - t - s - o) / (t + s)
            )
            assert d["distill_part_fraction"] == pytest.approx(parts["distill"]["median"] / (t + s))
            assert d["pass"] == (d["distill_overhead"] <= 0.10)
            smp = c["samples"]
            rounds = [
                (st - te - sfb - op) / (te + sfb)
                for st, te, sfb, op in zip(
                    smp["step"],
                    smp["teacher_forward"],
                    smp["student_forward_backward"],
                    smp["optimizer"],
                )
            ]
            assert d["distill_overhead_paired"] == pytest.approx(
                sorted(rounds)[0] / 2 + sorted(rounds)[1] / 2
            )
        else:
            assert d["distill_overhead"] is None and d["pass"] is None

    # the text plugins add parameters (projector, probe) but none to the deployed student
    assert by["text"]["trainable_parameters"] > by["cwd"]["trainable_parameters"]

    comps = data["comparisons"]
    assert [(c["base"], c["config"]) for c in comps] == [
        ("cwd", "deeplabv3_r18_baseline"),
        ("cwd", "text"),
    ]
    for comp in comps:
        b, o = by[comp["base"]], by[comp["config"]]
        assert comp["step_overhead"] == pytest.approx(o["step"]["median"] / b["step"]["median"] - 1)
        r = [x / y - 1 for x, y in zip(o["samples"]["step"], b["samples"]["step"])]
        assert comp["step_overhead_paired"] == pytest.approx((r[0] + r[1]) / 2)
        assert comp["memory_overhead"] == pytest.approx(
            o["memory"]["peak_bytes"] / b["memory"]["peak_bytes"] - 1
        )
        assert comp["pass"] == (comp["step_overhead"] <= 0.05 and comp["memory_overhead"] <= 0.05)
    # the returned report is the JSON (up to non-finite floats)
    assert report["configs"][1]["name"] == "cwd"
    assert data["losses"] is None and data["eval_memory"] is None


def _copy_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_decomposed_step_has_the_gradients_of_the_real_step(tmp_path):
    """run_step_parts splits backward at the student outputs: the gradients of every trainable
    parameter (student, adapters, projector, probe) equal those of the real forward/backward."""
    from detectron2.config import CfgNode
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage
    from textkd.engine import load_config

    cfg = load_config(
        str(SYN / "deeplabv3_r18_cwd_tcd_trd.yaml"), ["MODEL.TEXT_BANK.SOURCE", "random"]
    )
    # a narrower R18 teacher: CWD on features then needs a 1×1 adapter (128 -> 64 channels)
    cfg.MODEL.DISTILL.TEACHER.OPTS = [
        "MODEL.SEG_BACKBONE.ARCH",
        "resnet18v1s",
        "MODEL.SEM_SEG_HEAD.CHANNELS",
        "64",
    ]
    cfg.MODEL.DISTILL.TERMS.cwd_feature = CfgNode(
        {"METHOD": "cwd", "INPUT": "feature", "WEIGHT": 50.0}
    )
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(ROOT / cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE)
    cfg.MODEL.DISTILL.TEACHER.WEIGHTS = tool.write_random_teacher(cfg, str(tmp_path), "t", 0)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    batch = tool.RandomBatches(2, 40, 40, 8, 255, seed=3).next()
    assert "cwd_feature" in model.distiller.adapters
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)
    with EventStorage(0):
        torch.manual_seed(1)
        losses = model(batch)
        sum(losses.values()).backward()
        real = _copy_grads(model)
        opt.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        times = tool.run_step_parts(model, opt, batch, torch.device("cpu"))
        parts = _copy_grads(model)
    assert set(times) == {
        "student_forward",
        "teacher_forward",
        "distill",
        "student_backward",
        "optimizer",
    }
    assert all(v >= 0 for v in times.values())
    assert set(real) == set(parts) and len(real) == len(params)
    assert any(k.startswith("text_distiller.") for k in real)
    assert any(k.startswith("distiller.adapters.cwd_feature") for k in real)
    for name in real:
        torch.testing.assert_close(parts[name], real[name], rtol=1e-4, atol=1e-6, msg=name)


def test_losses_lad_step_and_eval_memory(tmp_path):
    out = tmp_path / "losses.json"
    tool.main(
        [
            "--losses",
            "--noise-shape",
            "2x32x32",
            "--noise-classes",
            "12",
            "--ifvd-shape",
            "2x4x4x4",
            "--ifvd-classes",
            "3",
            "--cirkd-shape",
            "4x4x4",
            "--cirkd-batches",
            "2",
            "--loss-iters",
            "1",
            "--loss-warmup",
            "0",
            "--size",
            "32x32",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--eval-memory",
            "--eval-memory-counts",
            "2",
            "12",
            "--eval-memory-size",
            "16x16",
            "--json",
            str(out),
        ]
    )
    data = json.loads(out.read_text())
    B.validate_report(data)
    assert data["configs"] == [] and data["comparisons"] == []
    assert [r["name"] for r in data["losses"]] == ["noise_labels", "ifvd_3", "cirkd_b2"]
    lad = data["lad_step"]
    assert "error" not in lad, lad.get("error")
    assert lad["config"] == "lad_teacher"
    assert (lad["batch"], lad["height"], lad["width"], lad["num_classes"]) == (2, 32, 32, 12)
    assert lad["draws_per_step"] == 2  # the synthetic LAD teacher trains with two paths
    assert lad["fraction"] == pytest.approx(
        2 * lad["noise_labels"]["median"] / lad["step"]["median"]
    )
    assert lad["pass"] == (lad["fraction"] < 0.02)
    em = data["eval_memory"]
    assert em["evaluator"].startswith("TextKDSemSegEvaluator")
    assert [r["images"] for r in em["rows"]] == [2, 12]
    assert em["rows"][0]["state_bytes"] == em["rows"][1]["state_bytes"] > 0
    assert em["flat"] is True
    assert not math.isnan(em["rows"][1]["seconds_per_image"])


@pytest.fixture
def synthetic_in_tmp(tmp_path):
    """Register the datasets under tmp_path (the synthetic one is generated there on first use),
    and back to the usual root afterwards."""
    from textkd.d2 import register

    register.register_all(str(tmp_path))
    yield tmp_path
    register.register_all(os.environ.get("DETECTRON2_DATASETS"))


def test_dataset_loader_mode(synthetic_in_tmp):
    """--dataset-loader feeds the config's train loader (synthetic dataset, 64x64 crops)."""
    base = f"{SYN / 'deeplabv3_r18_baseline.yaml'} DATALOADER.NUM_WORKERS 0"
    report = tool.main(
        [
            "--dataset-loader",
            "--batch",
            "2",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--no-profile-memory",
            "--config-file",
            base,
        ]
    )
    assert (synthetic_in_tmp / "textkd_synthetic").is_dir()
    c = report["configs"][0]
    assert report["settings"]["input"] == "dataset_loader"
    assert c["data"]["n"] == 1 and c["eval"]["batch"] == 2
    assert c["memory"]["step_extra_peak_bytes"] is None and c["memory"]["peak_bytes"] is None
