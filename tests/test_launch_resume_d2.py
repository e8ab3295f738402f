"""Multi-process training and fault tolerance with detectron2 (the speed / multi-GPU / fault
tolerance issue): a 2-process CPU (gloo) run through detectron2's ``launch`` of distillation with
TCD, TRD and a LAD teacher keeps the parameters and text banks identical on both ranks; a training
subprocess killed with SIGKILL resumes with ``--resume`` at exactly the last checkpoint's state;
checkpoints are written atomically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import timedelta

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
pytestmark = pytest.mark.detectron2

import _d2_helpers as H  # noqa: E402
from detectron2.engine import default_argument_parser, launch  # noqa: E402
from textkd.d2 import register  # noqa: E402
from textkd.data.synthetic import SYNTHETIC_CLASSES  # noqa: E402
from textkd.engine import TextKDCheckpointer  # noqa: E402
from textkd.text.bank import load_text_bank  # noqa: E402

TEMPLATES = ["a photo of a {}.", "there is a {} in the scene."]


def distill_config(path, teacher_cfg, teacher_weights, clip, cache_dir, tcd=3.0, trd=1.0) -> str:
    """CWD on logits + TCD + TRD, the text bank from the tiny local CLIP."""
    clip_model, clip_ckpt = clip
    body = f"""MODEL:
  META_ARCHITECTURE: "DistillSemanticSegmentor"
  DISTILL:
    TEACHER:
      CONFIG_FILE: "{teacher_cfg}"
      WEIGHTS: "{teacher_weights}"
    TERMS:
      cwd_logits: {{METHOD: cwd, INPUT: logits, WEIGHT: 3.0, TEMPERATURE: 4.0}}
    TEXT:
      PROJ_HIDDEN: 64
    TCD:
      WEIGHT: {tcd}
    TRD:
      WEIGHT: {trd}
  TEXT_BANK:
    CLIP_MODEL: "{clip_model}"
    CLIP_PRETRAINED: "{clip_ckpt}"
    TEMPLATES: {json.dumps(TEMPLATES)}
    CACHE_DIR: "{cache_dir}"
"""
    return H.write_config(path, "deeplabv3_r18_baseline.yaml", body)


# --------------------------------------------------------------------------- 2 processes


def _dist_main(cfg_file: str, opts: list[str], data_root: str, clip_dir: str, result_dir: str):
    """One rank of the 2-process run (module level, so spawned workers can unpickle it): the
    train_net.py path (setup, Trainer, resume_or_load, train), then this rank's state hashes."""
    torch.set_num_threads(1)
    from detectron2.utils import comm
    from textkd.engine import Trainer, setup

    H.register_tiny(data_root)
    H.register_tiny_clip(clip_dir)  # the tiny architecture, known in this process too
    args = default_argument_parser().parse_args(
        ["--config-file", cfg_file, "--num-gpus", "2", *opts]
    )
    cfg = setup(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    params0 = H.state_hash(dict(model.named_parameters()))
    trainer.train()
    rank = comm.get_rank()
    td = model.text_distiller
    out = {
        "rank": rank,
        "world_size": comm.get_world_size(),
        "ddp": type(trainer.model).__name__,
        "iter": trainer.iter,
        "params_before": params0,
        "params": H.state_hash(dict(model.named_parameters())),
        "student": H.state_hash(dict(model.segmentor.named_parameters())),
        "student_state": H.state_hash(model.segmentor.state_dict()),
        "teacher": H.state_hash(model.teacher.state_dict()),
        "text": H.state_hash({"text": td.text}),
        "text_values": td.text.tolist(),
        "teacher_in_chans": model.teacher.backbone.conv1[0].in_channels,
        "lad_teacher": model.teacher_lad is not None,
        "eval": trainer._last_eval_results if comm.is_main_process() else None,
    }
    with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)


@pytest.mark.slow
def test_two_process_gloo_run_keeps_ranks_identical(data_root, tmp_path):
    t_cfg = H.teacher_config(tmp_path / "lad_teacher.yaml", channels=48, lad=True)
    t_weights = H.save_random_teacher(t_cfg, tmp_path / "lad_teacher.pth")
    clip = H.tiny_clip_checkpoint(tmp_path)
    cache = tmp_path / "text_cache"  # empty: rank 0 encodes, rank 1 reads its cache
    cfg_file = distill_config(tmp_path / "ddp.yaml", t_cfg, t_weights, clip, cache)
    results = tmp_path / "results"
    results.mkdir()
    opts = H.tiny_opts(tmp_path / "out", max_iter=3, batch=4, eval_period=3)
    launch(
        _dist_main,
        2,
        dist_url="auto",
        args=(cfg_file, opts, data_root, str(tmp_path), str(results)),
        timeout=timedelta(minutes=5),
    )
    ranks = [json.loads((results / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, res in enumerate(ranks):
        assert res["rank"] == r and res["world_size"] == 2
        assert res["ddp"] == "DistributedDataParallel"
        assert res["iter"] == 3
        assert res["lad_teacher"] and res["teacher_in_chans"] == 4
        assert res["params"] != res["params_before"]  # training changed the weights
    a, b = ranks
    assert a["params_before"] == b["params_before"]  # DDP broadcast rank 0's initial weights
    assert a["params"] == b["params"]  # ... and every step kept them identical
    assert a["student"] == b["student"]
    assert a["student_state"] == b["student_state"]  # BN statistics too
    assert a["teacher"] == b["teacher"]
    assert a["text"] == b["text"]
    # the bank both ranks used is the one of the dataset's class names
    assert len(os.listdir(cache)) == 1
    bank = load_text_bank(
        SYNTHETIC_CLASSES,
        clip_model=clip[0],
        clip_pretrained=clip[1],
        templates=TEMPLATES,
        cache_dir=str(cache),
    )
    torch.testing.assert_close(torch.tensor(a["text_values"]), bank)
    ckpt = torch.load(tmp_path / "out" / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 2
    # rank 0 saved its final state, and the distributed evaluation (each rank its share of the
    # images) equals a single-process evaluation of that checkpoint
    final = tmp_path / "out" / "model_final.pth"
    assert H.state_hash(H.read_segmentor_state(final)) == a["student_state"]
    assert b["eval"] is None and set(a["eval"]) == {"sem_seg"}
    cfg = H.load_cfg(cfg_file, opts)
    single = H.evaluate(cfg, final)
    assert json.loads(json.dumps(single)) == a["eval"]


# --------------------------------------------------------------------------- kill and resume


@pytest.fixture
def default_names_at(data_root):
    """The ordinary synthetic dataset names registered at the session's root (as the
    subprocess sees them through DETECTRON2_DATASETS); the usual root afterwards."""
    original = os.environ.get("DETECTRON2_DATASETS")
    register.register_all(data_root)
    yield
    register.register_all(original)


def _wait_for(predicate, proc, log_file, timeout: float, what: str):
    """Poll ``predicate`` every 50 ms while ``proc`` runs; fail with the end of its log when it
    ends first or ``timeout`` passes."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        if proc.poll() is not None:
            tail = log_file.read_text()[-4000:]
            pytest.fail(f"training ended (rc {proc.returncode}) before {what}:\n{tail}")
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    pytest.fail(f"timed out waiting for {what}:\n{log_file.read_text()[-4000:]}")


@pytest.mark.slow
def test_sigkill_then_resume_restores_the_last_checkpoint(data_root, default_names_at, tmp_path):
    t_cfg = H.teacher_config(tmp_path / "teacher.yaml", channels=48)
    t_weights = H.save_random_teacher(t_cfg, tmp_path / "teacher.pth")
    clip = H.tiny_clip_checkpoint(tmp_path)
    cache = tmp_path / "text_cache"
    # the subprocess finds the bank in the cache (built here, where the tiny CLIP is registered)
    load_text_bank(
        SYNTHETIC_CLASSES,
        clip_model=clip[0],
        clip_pretrained=clip[1],
        templates=TEMPLATES,
        cache_dir=str(cache),
    )
    cfg_file = distill_config(tmp_path / "run.yaml", t_cfg, t_weights, clip, cache, trd=0.0)
    out = tmp_path / "out"
    max_iter, period, base_lr = 24, 3, 0.01
    opts = H.tiny_opts(
        out,
        max_iter=max_iter,
        checkpoint_period=period,
        lr=base_lr,
        train="textkd_synthetic_train_sem_seg",
        test=None,
    )
    env = H.subprocess_env(data_root)
    cmd = [H.PYTHON, str(H.TOOLS / "train_net.py"), "--config-file", cfg_file, *opts]
    log_file = tmp_path / "killed_run.log"
    last = out / "last_checkpoint"
    second = f"model_{2 * period - 1:07d}.pth"
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, cwd=str(H.ROOT), env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for(
                lambda: last.exists() and last.read_text().strip() == second,
                proc,
                log_file,
                timeout=300,
                what=f"the second checkpoint ({second})",
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model_final.pth").exists()  # killed mid-training

    # last_checkpoint names a complete file (never a .tmp), which loads
    name = last.read_text().strip()
    assert not name.endswith(".tmp") and (out / name).is_file()
    ckpt = torch.load(out / name, map_location="cpu", weights_only=False)
    saved_iter = ckpt["iteration"]
    assert saved_iter >= 2 * period - 1 and (saved_iter + 1) % period == 0
    # a save interrupted halfway leaves at most a .tmp; put a corrupt one there, it is ignored
    (out / f"model_{saved_iter + period:07d}.pth.tmp").write_bytes(b"\x80\x02 truncated")

    # the restored state is exactly the checkpoint's (what --resume does in train_net.py)
    cfg = H.load_cfg(cfg_file, opts)
    trainer = H.build_trainer(cfg, resume=True)
    assert trainer.start_iter == saved_iter + 1
    assert trainer.scheduler.state_dict() == ckpt["trainer"]["hooks"]["LRScheduler"]
    _assert_equal(trainer.optimizer.state_dict(), ckpt["trainer"]["_trainer"]["optimizer"])
    state = trainer.model.state_dict()
    assert set(state) == set(ckpt["model"])
    assert any(k.startswith("text_distiller.") for k in state)
    for k, v in ckpt["model"].items():
        assert torch.equal(state[k], v), k
    lr = trainer.optimizer.param_groups[0]["lr"]
    assert lr == pytest.approx(base_lr * (1 - (saved_iter + 1) / max_iter) ** 0.9, rel=1e-9)
    del trainer

    # and training continues to MAX_ITER through the command line
    proc = H.run_tool("train_net.py", ["--config-file", cfg_file, "--resume", *opts], env)
    log = proc.stdout + proc.stderr
    assert f"Starting training from iteration {saved_iter + 1}" in log
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == max_iter - 1
    assert last.read_text().strip() == "model_final.pth"
    rows = [r for r in H.read_metrics(out) if "lr" in r and r["iteration"] > saved_iter]
    assert rows
    for r in rows:
        want = base_lr * (1 - r["iteration"] / max_iter) ** 0.9
        assert r["lr"] == pytest.approx(want, rel=1e-6), r["iteration"]


def _assert_equal(a, b, path="optimizer"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_checkpointer_writes_atomically(tmp_path):
    """A save that fails halfway leaves the previous checkpoint and last_checkpoint untouched
    (and no partial file); a stray .tmp is never what resume loads."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    ck = TextKDCheckpointer(model, save_dir=str(tmp_path))
    ck.save("model_0000001", iteration=1)
    first = (tmp_path / "model_0000001.pth").read_bytes()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"

    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises
        ck.save("model_0000002", iteration=2, unpicklable=lambda: None)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_0000002.pth").exists()
    assert not list(tmp_path.glob("*.tmp"))
    assert (tmp_path / "model_0000001.pth").read_bytes() == first

    (tmp_path / "model_0000003.pth.tmp").write_bytes(b"garbage")
    assert ck.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    extra = TextKDCheckpointer(fresh, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    assert not torch.equal(fresh[0].weight, model[0].weight)  # the saved, pre-update weights
    torch.testing.assert_close(fresh[0].weight, model[0].weight - 1.0)
