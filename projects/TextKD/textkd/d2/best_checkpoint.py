"""Model selection as the reference codebases do it (detectron2 layer): keep the best evaluated
weights beside the final ones, and report both.

CIRKD and LAD evaluate every 800 iterations and report the best checkpoint.
:class:`BestCheckpointHook` is detectron2's ``BestCheckpointer`` (same evaluation schedule as the
``EvalHook`` it follows, same comparison) with what a long, resumable run needs:

* ``OUTPUT_DIR/model_best.pth`` holds the weights only (``{"model": ..., "iteration": ...}``),
  written atomically and *not* tagged as ``last_checkpoint`` (detectron2's hook saves through
  ``Checkpointer.save``, which would make ``--resume`` go back to the best iteration);
  ``OUTPUT_DIR/model_best.json`` holds the metric, its value, the iteration (as in
  ``metrics.json``: the 0-based index of the last step before the evaluation) and every result
  of that evaluation;
* ``--resume`` restores the best value from ``model_best.json`` instead of forgetting it (which
  would let the first evaluation after a resume overwrite a better ``model_best.pth``);
* a value of an earlier evaluation is never taken for the current one, and a metric missing from
  the results gives a warning naming it and the keys present (a long run does not crash);
* at the end of training, the final model's results and the best checkpoint's (iteration +
  results) are logged and written to ``OUTPUT_DIR/final_and_best.json``, which
  :func:`textkd.report.read_run` reads.

Configured by ``TEXTKD.BEST_CHECKPOINT`` (``ENABLED``, ``METRIC``, ``MODE``); it acts only when
``TEST.EVAL_PERIOD`` > 0 (:func:`best_checkpoint_hook`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from typing import Any

from detectron2.engine.hooks import BestCheckpointer, EvalHook
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils import comm

__all__ = [
    "BEST_NAME",
    "BEST_JSON",
    "SUMMARY_JSON",
    "BestCheckpointHook",
    "best_checkpoint_hook",
    "add_best_checkpoint_hook",
]

BEST_NAME = "model_best"
BEST_JSON = "model_best.json"
SUMMARY_JSON = "final_and_best.json"

logger = logging.getLogger("textkd")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _json_safe(results: dict) -> dict:
    return {k: (float(v) if _finite(v) else None) for k, v in results.items()}


def _write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


class BestCheckpointHook(BestCheckpointer):
    """detectron2's ``BestCheckpointer`` writing weights-only ``model_best.pth`` + a JSON record,
    restoring the best value on ``--resume`` and writing the final/best summary at the end.
    Register it after the ``EvalHook`` (:func:`add_best_checkpoint_hook` does), on the main
    process only (it reads the evaluation results, which only the main process holds)."""

    def __init__(self, eval_period: int, checkpointer, metric: str, mode: str = "max"):
        super().__init__(eval_period, checkpointer, metric, mode=mode, file_prefix=BEST_NAME)
        self.mode = mode
        self.best_results: dict[str, float | None] = {}
        self.output_dir = checkpointer.save_dir

    # ------------------------------------------------------------------ resume
    def before_train(self) -> None:
        if self.trainer.start_iter > 0:
            self._restore()

    def _restore(self) -> None:
        path = os.path.join(self.output_dir, BEST_JSON)
        weights = os.path.join(self.output_dir, f"{BEST_NAME}.pth")
        if not os.path.isfile(path):
            return
        try:
            with open(path) as f:
                saved = json.load(f)
            value, iteration = saved["value"], int(saved["iteration"])
            metric, mode = saved["metric"], saved["mode"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning(
                "%s is unreadable (%s): the best checkpoint starts afresh at the next evaluation",
                path,
                e,
            )
            return
        if (metric, mode) != (self._val_metric, self.mode):
            logger.warning(
                "%s tracks %s (%s) but this run tracks %s (%s) (TEXTKD.BEST_CHECKPOINT): the best "
                "checkpoint starts afresh; the next evaluation overwrites %s",
                path,
                metric,
                mode,
                self._val_metric,
                self.mode,
                weights,
            )
            return
        if not os.path.isfile(weights) or not _finite(value):
            logger.warning(
                "%s names a best value %r but %s is missing: the best checkpoint starts afresh",
                path,
                value,
                weights,
            )
            return
        self.best_metric = float(value)
        self.best_iter = iteration
        self.best_results = dict(saved.get("results") or {})
        logger.info(
            "resumed the best checkpoint: %s = %.5f at iteration %d (%s)",
            metric,
            self.best_metric,
            iteration,
            weights,
        )

    # ------------------------------------------------------------------ each evaluation
    def _current_results(self) -> dict[str, float]:
        """The flattened results of the evaluation of this iteration (empty when none)."""
        results = getattr(self.trainer, "_last_eval_results", None) or {}
        flat = flatten_results_dict(results) if isinstance(results, dict) else {}
        it = self.trainer.storage.iter
        latest = self.trainer.storage.latest()
        # results of another iteration (a stale _last_eval_results) are not this evaluation's
        return {k: v for k, v in flat.items() if k in latest and latest[k][1] == it}

    def _best_checking(self) -> None:
        it = self.trainer.storage.iter
        results = self._current_results()
        entry = self.trainer.storage.latest().get(self._val_metric)
        if entry is None or entry[1] != it:
            logger.warning(
                "TEXTKD.BEST_CHECKPOINT.METRIC %r is not among the results of the evaluation at "
                "iteration %d (keys present: %s): no best checkpoint is kept from it. Set the "
                "metric to one of these keys",
                self._val_metric,
                it,
                sorted(results)[:40] or "none",
            )
            return
        value = float(entry[0])
        if not math.isfinite(value):
            logger.warning(
                "%s is %r at iteration %d: not a candidate for the best checkpoint",
                self._val_metric,
                value,
                it,
            )
            return
        if self.best_metric is None or self._compare(value, self.best_metric):
            previous = (self.best_metric, self.best_iter)
            self._save_best(value, it, results)
            if previous[0] is None:
                logger.info(
                    "best checkpoint: %s = %.5f at iteration %d", self._val_metric, value, it
                )
            else:
                logger.info(
                    "best checkpoint: %s = %.5f at iteration %d, better than %.5f at %d",
                    self._val_metric,
                    value,
                    it,
                    previous[0],
                    previous[1],
                )
        else:
            logger.info(
                "%s = %.5f at iteration %d is not better than the best %.5f at iteration %d",
                self._val_metric,
                value,
                it,
                self.best_metric,
                self.best_iter,
            )

    def _save_best(self, value: float, iteration: int, results: dict) -> None:
        self._checkpointer.save_weights(BEST_NAME, iteration=iteration)
        self.best_metric, self.best_iter = value, iteration
        self.best_results = _json_safe(results)
        _write_json(
            os.path.join(self.output_dir, BEST_JSON),
            {
                "metric": self._val_metric,
                "mode": self.mode,
                "value": value,
                "iteration": iteration,
                "checkpoint": f"{BEST_NAME}.pth",
                "results": self.best_results,
            },
        )

    # ------------------------------------------------------------------ end of training
    def after_train(self) -> None:
        super().after_train()
        if self.trainer.iter + 1 < self.trainer.max_iter:
            return  # stopped early (an error): no final model to report
        final = _json_safe(self._current_results())
        summary = {
            "metric": self._val_metric,
            "mode": self.mode,
            "final": {
                "iteration": int(self.trainer.iter),
                "checkpoint": "model_final.pth",
                "value": final.get(self._val_metric),
                "results": final,
            },
            "best": None,
        }
        if self.best_metric is not None:
            summary["best"] = {
                "iteration": int(self.best_iter),
                "checkpoint": f"{BEST_NAME}.pth",
                "value": self.best_metric,
                "results": self.best_results,
            }
        _write_json(os.path.join(self.output_dir, SUMMARY_JSON), summary)
        best_words = (
            f"{self.best_metric:.4f} at iteration {self.best_iter} ({BEST_NAME}.pth)"
            if self.best_metric is not None
            else "none (the metric was never found)"
        )
        logger.info(
            "final model (iteration %d): %s = %s; best: %s; written to %s",
            self.trainer.iter,
            self._val_metric,
            "missing" if final.get(self._val_metric) is None else f"{final[self._val_metric]:.4f}",
            best_words,
            os.path.join(self.output_dir, SUMMARY_JSON),
        )


def best_checkpoint_hook(cfg, checkpointer) -> BestCheckpointHook | None:
    """The hook of ``TEXTKD.BEST_CHECKPOINT`` when enabled and ``TEST.EVAL_PERIOD`` > 0, on the
    main process; else None."""
    node = cfg.TEXTKD.BEST_CHECKPOINT
    period = int(cfg.TEST.EVAL_PERIOD)
    if not node.ENABLED or period <= 0 or not comm.is_main_process():
        return None
    return BestCheckpointHook(period, checkpointer, node.METRIC, node.MODE)


def add_best_checkpoint_hook(cfg, checkpointer, hooks: list) -> list:
    """``hooks`` with the best-checkpoint hook right after detectron2's ``EvalHook`` (so each
    period it sees that evaluation's results), when :func:`best_checkpoint_hook` gives one."""
    hook = best_checkpoint_hook(cfg, checkpointer)
    if hook is None:
        return hooks
    pos = next((i for i, h in enumerate(hooks) if isinstance(h, EvalHook)), None)
    if pos is None:
        return hooks
    return hooks[: pos + 1] + [hook] + hooks[pos + 1 :]
