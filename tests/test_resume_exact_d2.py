"""Exact resume (issue 13, point 3): a run resumed from a middle checkpoint ends with weights
bit-identical to the uninterrupted run's, with 0 and 2 loader workers and in a 2-process gloo run;
a checkpoint of the earlier version (no data-order state) still resumes, with a warning."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import time
from datetime import timedelta

import pytest
import torch

pytestmark = pytest.mark.detectron2

import _d2_helpers as H  # noqa: E402
from detectron2.engine import launch  # noqa: E402

BASELINE = str(H.SYNTH_CONFIGS / "deeplabv3_r18_baseline.yaml")
LAD_TEACHER = str(H.SYNTH_CONFIGS / "deeplabv3_r18_lad_teacher.yaml")  # noised label input
MAX_ITER, PERIOD = 6, 3  # checkpoints after iterations 2 and 5; resume from the first
MIDDLE = f"model_{PERIOD - 1:07d}.pth"


def _opts(out, workers: int, batch: int = 2, seed: int = 0) -> list[str]:
    # ASPP and head dropout make the training step itself random
    return H.tiny_opts(
        out,
        max_iter=MAX_ITER,
        checkpoint_period=PERIOD,
        batch=batch,
        test=None,  # no evaluation at the end: the weights are compared
        extra=["DATALOADER.NUM_WORKERS", workers, "SEED", seed],
    )


def _model(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _resume_dir(src_ckpt, out) -> None:
    """``out`` holds only ``src_ckpt`` as its last checkpoint: the state of a run interrupted
    right after saving it."""
    out.mkdir()
    shutil.copy(src_ckpt, out / src_ckpt.name)
    (out / "last_checkpoint").write_text(src_ckpt.name)


def _assert_bit_identical(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:5]}"


@pytest.mark.parametrize(
    "config, workers", [(BASELINE, 0), (BASELINE, 2), (LAD_TEACHER, 0)], ids=["0", "2", "lad"]
)
def test_resume_from_a_middle_checkpoint_is_bit_identical(data_root, tmp_path, config, workers):
    full = tmp_path / "full"
    rec_full = H.run_training(H.load_cfg(config, _opts(full, workers)))[1]
    assert rec_full.iters == list(range(MAX_ITER))

    resumed = tmp_path / "resumed"
    _resume_dir(full / MIDDLE, resumed)
    rec = H.LossRecorder()
    trainer = H.build_trainer(H.load_cfg(config, _opts(resumed, workers)), True, [rec])
    assert trainer.start_iter == PERIOD
    trainer.train()
    assert rec.iters == list(range(PERIOD, MAX_ITER))
    # every resumed step saw the same batch and random draws: the same losses, bit for bit
    assert rec.losses == rec_full.losses[PERIOD:]
    final = _model(resumed / "model_final.pth")
    _assert_bit_identical(final, _model(full / "model_final.pth"))
    # the middle checkpoint really is mid-training (the remaining steps changed the weights)
    middle = _model(full / MIDDLE)
    assert any(not torch.equal(middle[k], final[k]) for k in final if final[k].is_floating_point())


def test_random_seed_is_saved_and_reused_on_resume(data_root, tmp_path):
    """SEED -1 (a random seed per run): the checkpoint keeps the seed the run drew, and the
    resumed run continues with it."""
    from detectron2.utils.env import seed_all_rng
    from textkd.engine import Trainer

    def train(out, resume):
        seed_all_rng(None)  # as default_setup does for a negative SEED
        trainer = Trainer(H.load_cfg(BASELINE, _opts(out, 0, seed=-1)))
        trainer.resume_or_load(resume=resume)
        trainer.train()
        return trainer

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    drawn = train(full, False)._order_seed
    saved = torch.load(full / MIDDLE, weights_only=False)["trainer"]["data_order"]["seed"]
    assert saved == drawn >= 0
    _resume_dir(full / MIDDLE, resumed)
    assert train(resumed, True)._order_seed == drawn
    _assert_bit_identical(_model(resumed / "model_final.pth"), _model(full / "model_final.pth"))


def test_another_seed_gives_other_weights(data_root, tmp_path):
    """The comparison above can fail: data order, augmentation and dropout follow the seed."""
    a, b = tmp_path / "a", tmp_path / "b"
    H.run_training(H.load_cfg(BASELINE, _opts(a, 0, seed=0)), record=False)
    H.run_training(H.load_cfg(BASELINE, _opts(b, 0, seed=1)), record=False)
    ma, mb = _model(a / "model_final.pth"), _model(b / "model_final.pth")
    assert any(not torch.equal(ma[k], mb[k]) for k in ma)


def test_checkpoint_without_data_order_resumes_with_a_warning(data_root, tmp_path, caplog):
    full = tmp_path / "full"
    H.run_training(H.load_cfg(BASELINE, _opts(full, 0)), record=False)
    ckpt = torch.load(full / MIDDLE, map_location="cpu", weights_only=False)
    assert ckpt["trainer"]["data_order"]["seed"] == 0
    del ckpt["trainer"]["data_order"]  # as the previous version wrote it
    old = tmp_path / "old"
    old.mkdir()
    torch.save(ckpt, old / MIDDLE)
    (old / "last_checkpoint").write_text(MIDDLE)

    with caplog.at_level(logging.WARNING, logger="textkd"):
        trainer = H.build_trainer(H.load_cfg(BASELINE, _opts(old, 0)), resume=True)
    assert trainer.start_iter == PERIOD
    text = caplog.text
    assert "no data-order state" in text and MIDDLE in text
    assert "data order and augmentation draws restart" in text
    trainer.train()
    assert torch.load(old / "model_final.pth", weights_only=False)["iteration"] == MAX_ITER - 1


# --------------------------------------------------------------------------- 2 processes


def _dist_main(cfg_file: str, opts: list[str], data_root: str, resume: bool, result: str):
    """One rank: the train_net.py path (setup, Trainer, resume_or_load, train)."""
    from detectron2.utils import comm

    trainer = H.rank_trainer(cfg_file, opts, data_root, resume=resume)
    start = trainer.start_iter
    trainer.train()
    if comm.is_main_process():
        with open(result, "w") as f:
            json.dump({"start_iter": start}, f)


@pytest.mark.slow
def test_two_process_gloo_resume_is_bit_identical(data_root, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    for out, resume in ((full, False), (resumed, True)):
        if resume:
            _resume_dir(full / MIDDLE, resumed)
        result = tmp_path / f"{out.name}.json"
        launch(
            _dist_main,
            2,
            dist_url="auto",
            args=(BASELINE, _opts(out, 0, batch=4), data_root, resume, str(result)),
            timeout=timedelta(minutes=5),
        )
        assert json.loads(result.read_text())["start_iter"] == (PERIOD if resume else 0)
    _assert_bit_identical(_model(resumed / "model_final.pth"), _model(full / "model_final.pth"))


# --------------------------------------------------------------------------- SIGKILL


@pytest.mark.slow
def test_sigkilled_train_net_resumes_to_the_uninterrupted_weights(data_root, tmp_path):
    """tools/train_net.py with 2 loader workers, killed with SIGKILL after a checkpoint and
    resumed with --resume, ends bit-identical to an uninterrupted train_net.py run."""
    env = H.subprocess_env(data_root)

    def opts(out):
        return H.tiny_opts(
            out,
            max_iter=12,
            checkpoint_period=4,
            train="textkd_synthetic_train_sem_seg",
            test=None,
            extra=["DATALOADER.NUM_WORKERS", 2],
        )

    full, killed = tmp_path / "full", tmp_path / "killed"
    H.run_tool("train_net.py", ["--config-file", BASELINE, *opts(full)], env)

    cmd = [H.PYTHON, str(H.TOOLS / "train_net.py"), "--config-file", BASELINE, *opts(killed)]
    last = killed / "last_checkpoint"
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=str(H.ROOT), env=env, stdout=log, stderr=log)
        try:
            t0 = time.time()
            while not (last.exists() and last.read_text().strip() == "model_0000003.pth"):
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.time() - t0 < 300, "no checkpoint within 5 minutes"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model_final.pth").exists()
    resumed_from = last.read_text().strip()

    out = H.run_tool("train_net.py", ["--config-file", BASELINE, "--resume", *opts(killed)], env)
    start = torch.load(killed / resumed_from, weights_only=False)["iteration"] + 1
    assert f"Starting training from iteration {start}" in out.stdout + out.stderr
    _assert_bit_identical(_model(killed / "model_final.pth"), _model(full / "model_final.pth"))
