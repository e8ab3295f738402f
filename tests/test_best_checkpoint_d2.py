"""Model selection as the reference does it (TEXTKD.BEST_CHECKPOINT): short synthetic runs that
evaluate every 2 iterations keep ``model_best.pth`` with the weights of the best evaluation's
iteration, record the metric as logged, keep the best across ``--resume``, report final and best
(``final_and_best.json``, :func:`textkd.report.read_run`, tools/summarize_results.py), and warn
(without stopping) when the metric is missing from the results."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

pytestmark = pytest.mark.detectron2

import _d2_helpers as H  # noqa: E402
from textkd.d2.best_checkpoint import BestCheckpointHook  # noqa: E402
from textkd.report import read_run  # noqa: E402

BASE = "deeplabv3_r18_baseline.yaml"


def _cfg(tmp_path, out, max_iter, extra=()):
    cfg_file = H.write_config(tmp_path / "cfg.yaml", BASE)
    opts = H.tiny_opts(
        out,
        max_iter=max_iter,
        checkpoint_period=2,
        eval_period=2,
        channels=16,
        lr=0.05,
        extra=extra,
    )
    # pixel accuracy moves already in a few iterations
    opts += ["TEST.VIS_IMAGES", "0", "TEXTKD.BEST_CHECKPOINT.METRIC", "sem_seg/pACC"]
    return H.load_cfg(cfg_file, opts)


def _evaluations(trainer, key="sem_seg/pACC"):
    """(iteration, value) of every evaluation of a trained trainer, as its hooks saw them."""
    return [(int(it), float(v)) for v, it in trainer.storage.history(key).values()]


def _best_of(evals, mode="max"):
    best = None
    for it, v in evals:  # the first of equal values stays (strict comparison)
        if best is None or (v > best[1] if mode == "max" else v < best[1]):
            best = (it, v)
    return best


def _weights(path):
    return torch.load(str(path), map_location="cpu", weights_only=False)["model"]


def _assert_same_weights(a, b):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _weights_at(out, iteration, max_iter):
    name = "model_final.pth" if iteration >= max_iter else f"model_{iteration:07d}.pth"
    return _weights(out / name)


def test_best_checkpoint_is_the_best_evaluation(data_root, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(tmp_path, out, max_iter=6, extra=["TEXTKD.BEST_CHECKPOINT.MODE", "min"])
    with H.one_thread():
        trainer, _ = H.run_training(cfg)
    assert any(isinstance(h, BestCheckpointHook) for h in trainer._hooks)
    evals = _evaluations(trainer)
    assert [it for it, _ in evals] == [1, 3, 6]  # every 2 iterations + the final evaluation
    assert len({v for _, v in evals}) > 1  # (seeded run) the evaluations differ
    # MODE min: the lowest pixel accuracy is kept (a max run may well pick the final model; min
    # makes the selection visible)
    best_it, best_v = _best_of(evals, "min")
    record = json.loads((out / "model_best.json").read_text())
    assert record["metric"] == "sem_seg/pACC" and record["mode"] == "min"
    assert record["iteration"] == best_it
    assert math.isclose(record["value"], best_v, rel_tol=0, abs_tol=1e-9)
    assert math.isclose(record["results"]["sem_seg/pACC"], best_v, abs_tol=1e-9)
    best = _weights(out / "model_best.pth")
    _assert_same_weights(best, _weights_at(out, best_it, 6))
    # the best checkpoint is not what --resume continues from
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"

    summary = json.loads((out / "final_and_best.json").read_text())
    assert summary["final"]["iteration"] == 6
    assert math.isclose(summary["final"]["value"], evals[-1][1], abs_tol=1e-9)
    assert summary["best"]["iteration"] == best_it
    assert math.isclose(summary["best"]["value"], best_v, abs_tol=1e-9)

    run = read_run(str(out))
    assert math.isclose(run.results["pACC"], evals[-1][1], abs_tol=1e-6)
    assert run.best["iteration"] == best_it and run.best["metric"] == "sem_seg/pACC"

    from summarize_results import main as summarize

    summarize([f"run={out}"])


def test_resume_keeps_the_best(data_root, tmp_path):
    out = tmp_path / "run"
    with H.one_thread():
        first_trainer, _ = H.run_training(_cfg(tmp_path, out, max_iter=4))
        first = json.loads((out / "model_best.json").read_text())
        first_weights = _weights(out / "model_best.pth")
        # continue the same run to 8 iterations
        cfg = _cfg(tmp_path, out, max_iter=8)
        trainer = H.build_trainer(cfg, resume=True)
        assert trainer.start_iter == 4
        hook = next(h for h in trainer._hooks if isinstance(h, BestCheckpointHook))
        hook.before_train()  # what train() calls first: the best value is restored, not reset
        assert (hook.best_metric, hook.best_iter) == (first["value"], first["iteration"])
        trainer.train()
    evals = _evaluations(first_trainer) + _evaluations(trainer)
    assert [it for it, _ in evals] == [1, 4, 5, 8]  # both runs' evaluations (metrics.json)
    best_it, best_v = _best_of(evals)
    record = json.loads((out / "model_best.json").read_text())
    assert (record["iteration"], record["value"]) == (best_it, pytest.approx(best_v, abs=1e-9))
    if best_it <= 4:  # the first run's best survives the resume untouched
        _assert_same_weights(_weights(out / "model_best.pth"), first_weights)
    else:
        _assert_same_weights(_weights(out / "model_best.pth"), _weights_at(out, best_it, 8))


def test_missing_metric_warns_and_training_goes_on(data_root, tmp_path, caplog):
    out = tmp_path / "run"
    metric = "sem_seg/IoU-no-such-class"
    cfg = _cfg(tmp_path, out, max_iter=4)
    cfg.defrost()
    cfg.TEXTKD.BEST_CHECKPOINT.METRIC = metric
    log = logging.getLogger("textkd")
    log.addHandler(caplog.handler)
    try:
        with H.one_thread(), caplog.at_level(logging.WARNING, logger="textkd"):
            H.run_training(cfg)
    finally:
        log.removeHandler(caplog.handler)
    warnings = [r.getMessage() for r in caplog.records if metric in r.getMessage()]
    assert warnings and "sem_seg/pACC" in warnings[0]  # names the metric and the keys present
    assert (out / "model_final.pth").is_file()
    assert not (out / "model_best.pth").exists()
    assert json.loads((out / "final_and_best.json").read_text())["best"] is None


def test_no_hook_without_periodic_evaluation(data_root, tmp_path):
    cfg = _cfg(tmp_path, tmp_path / "run", max_iter=2)
    cfg.defrost()
    cfg.TEST.EVAL_PERIOD = 0
    trainer = H.build_trainer(cfg)
    assert not any(isinstance(h, BestCheckpointHook) for h in trainer._hooks)
