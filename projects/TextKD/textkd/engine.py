"""Training engine (detectron2 layer): config setup, the Trainer, an atomic and strict
checkpointer, and the student export. Parameters a training term optimizes itself (the
adversarial term's discriminator) stay out of the main optimizer and of DDP; the term's own
optimizer is a checkpointable (``<term>_optimizer``) of training checkpoints."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import weakref
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    MetadataCatalog,
    build_batch_data_loader,
    build_detection_test_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.common import DatasetFromList
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    create_ddp_model,
    default_setup,
)
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import DatasetEvaluators
from detectron2.solver.lr_scheduler import LRMultiplier
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from . import d2  # noqa: F401  (registers meta-architectures, heads, backbones, datasets)
from .config import add_textkd_config
from .d2.best_checkpoint import add_best_checkpoint_hook
from .d2.build import check_num_classes, resolve_norm
from .d2.cityscapes_evaluation import TextKDCityscapesSemSegEvaluator
from .d2.distill_arch import DISTILL_TERMS
from .d2.mapper import TextKDSemSegDatasetMapper
from .d2.sem_seg_evaluation import TextKDSemSegEvaluator
from .data.sampling import KeyedMapDataset, ResumableTrainingSampler, seed_step_rngs
from .distill.base import TrainingTerm, own_parameter_ids
from .models.weights import (
    CheckpointFileError,
    _first_conv_hint,
    check_checkpoint_file,
    first_conv_keys,
)
from .run_lock import OutputDirLock, prepare_output_dir, remove_stale_tmp_files
from .solver import build_lr_scheduler
from .validate import DISTILL_ARCH, validate_config
from .vis_hook import add_val_image_hook

logger = logging.getLogger(__name__)

__all__ = [
    "Trainer",
    "TextKDCheckpointer",
    "load_config",
    "default_config",
    "check_config",
    "setup",
    "release_output_lock",
    "student_config",
    "build_eval_model",
    "export_student",
]

# the OUTPUT_DIR lock of this process (main process only), released at exit
_OUTPUT_LOCK: OutputDirLock | None = None


def default_config() -> CfgNode:
    """detectron2's defaults + every TextKD key (the reference of the unused-key check)."""
    cfg = get_cfg()
    add_textkd_config(cfg)
    return cfg


def check_config(cfg: CfgNode, mode: str, resume: bool = False, world_size: int = 1) -> None:
    """:func:`textkd.validate.validate_config` against the default config: the one check every
    entry point (train, --eval-only, export, benchmark) runs before building anything."""
    validate_config(cfg, mode, defaults=default_config(), resume=resume, world_size=world_size)


def load_config(config_file: str, opts: list[str] | tuple = ()) -> CfgNode:
    """detectron2 defaults + TextKD keys, merged with ``config_file`` and ``KEY VALUE`` opts.

    ``MODEL.DEVICE`` falls back to the CPU (with a warning) where CUDA is not available."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file not found: {config_file}")
    cfg = get_cfg()
    add_textkd_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu)")
        cfg.MODEL.DEVICE = "cpu"
    ref = cfg.SOLVER.REFERENCE_IMS_PER_BATCH
    if ref > 0 and cfg.SOLVER.IMS_PER_BATCH != ref:
        scaled = cfg.SOLVER.BASE_LR * cfg.SOLVER.IMS_PER_BATCH / ref
        if cfg.SOLVER.SCALE_LR_WITH_BATCH:
            logger.warning(
                "SOLVER.IMS_PER_BATCH %d differs from the reference %d: BASE_LR scaled linearly "
                "%g -> %g (SOLVER.SCALE_LR_WITH_BATCH)",
                cfg.SOLVER.IMS_PER_BATCH,
                ref,
                cfg.SOLVER.BASE_LR,
                scaled,
            )
            cfg.SOLVER.BASE_LR = scaled
        else:
            logger.warning(
                "SOLVER.IMS_PER_BATCH %d differs from the reference protocol's %d (total over "
                "all GPUs): published numbers assume %d. Linear scaling would give BASE_LR %g "
                "(set SOLVER.SCALE_LR_WITH_BATCH True to apply it)",
                cfg.SOLVER.IMS_PER_BATCH,
                ref,
                ref,
                scaled,
            )
    return cfg


def setup(args) -> CfgNode:
    """Config, its validation (:func:`check_config`), the ``OUTPUT_DIR`` lock (main process
    only; stale ``*.tmp`` files of dead runs are removed once it is held), then detectron2's
    default setup (logging, per-rank seeding, config dump)."""
    global _OUTPUT_LOCK
    cfg = load_config(args.config_file, args.opts)
    mode = "eval" if args.eval_only else "train"
    check_config(cfg, mode, resume=args.resume, world_size=comm.get_world_size())
    cfg.freeze()
    notes: list[str] = []
    removed: list[str] = []
    if comm.is_main_process():
        prepare_output_dir(cfg.OUTPUT_DIR)
        if _OUTPUT_LOCK is None or _OUTPUT_LOCK.directory != os.path.abspath(cfg.OUTPUT_DIR):
            release_output_lock()  # a process sets up one run at a time
            lock = OutputDirLock(cfg.OUTPUT_DIR, command=" ".join(sys.argv))
            notes = lock.acquire()
            _OUTPUT_LOCK = lock
        removed = remove_stale_tmp_files(cfg.OUTPUT_DIR)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="textkd")
    log = logging.getLogger("textkd")
    for note in notes:
        log.warning(note)
    for path in removed:
        log.info("removed %s: a temporary file of a run that died while saving", path)
    return cfg


def release_output_lock() -> None:
    """Release this process's ``OUTPUT_DIR`` lock, if it holds one (also done at exit)."""
    global _OUTPUT_LOCK
    if _OUTPUT_LOCK is not None:
        _OUTPUT_LOCK.release()
        _OUTPUT_LOCK = None


def student_config(cfg: CfgNode) -> CfgNode:
    """The config of the deployable model: a distillation config becomes its student's
    single-model config (same keys, ``MODEL.META_ARCHITECTURE TextKDSemanticSegmentor``); any
    other config is returned as it is. Evaluation and export need no teacher."""
    if cfg.MODEL.META_ARCHITECTURE != DISTILL_ARCH:
        return cfg
    frozen = cfg.is_frozen()
    out = cfg.clone()
    out.defrost()
    out.MODEL.META_ARCHITECTURE = "TextKDSemanticSegmentor"
    if frozen:
        out.freeze()
    return out


def build_eval_model(cfg: CfgNode):
    """The model that ``--eval-only`` and export load weights into: the student alone for a
    distillation config (its teacher is neither built nor loaded), else the config's model."""
    scfg = student_config(cfg)
    if scfg is not cfg:
        logging.getLogger("textkd").info(
            "distillation config: building the student alone (no teacher is needed to "
            "evaluate or export it; MODEL.DISTILL.TEACHER.* is not read)"
        )
    return Trainer.build_model(scfg)


class TextKDCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer, made atomic and strict.

    * ``save`` writes to a temporary file, fsyncs and renames, then re-tags ``last_checkpoint``
      the same way: a run killed while saving never leaves a half-written file as the one to
      resume from.
    * loading a model checkpoint fails (naming the file and keys) when the deployable model's
      keys are missing or mis-shaped, instead of continuing with random weights.
    """

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        self._write_atomic(data, basename)
        self.tag_last_checkpoint(basename)

    def save_weights(self, name: str, **kwargs: Any) -> str | None:
        """Write ``{"model": weights, **kwargs}`` to ``<save_dir>/<name>.pth`` atomically, as
        :meth:`save` does, but without optimizer/scheduler/trainer state and without tagging it
        as ``last_checkpoint`` (``--resume`` goes on from the periodic checkpoints, not from
        this file): the best checkpoint. Returns the path (None where this process does not
        save)."""
        if not self.save_dir or not self.save_to_disk:
            return None
        data = {"model": self.model.state_dict()}
        data.update(kwargs)
        return self._write_atomic(data, f"{name}.pth")

    def _write_atomic(self, data: dict, basename: str) -> str:
        save_file = os.path.join(self.save_dir, basename)
        tmp = save_file + ".tmp"
        self.logger.info("Saving checkpoint to %s", save_file)
        try:
            with open(tmp, "wb") as f:
                torch.save(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, save_file)
        except BaseException as e:
            # a failed save (disk full, unpicklable state, interrupt) leaves no partial file
            with contextlib.suppress(OSError):
                os.remove(tmp)
            if _is_disk_full(e):
                raise OSError(
                    errno.ENOSPC,
                    f"no space left on device while saving checkpoint {save_file} (OUTPUT_DIR "
                    f"{self.save_dir}): the partial file was removed and the previous checkpoint"
                    f"{self._previous_checkpoint_words()} is kept. Free disk space (or set "
                    "OUTPUT_DIR to a disk with room) and continue with --resume",
                ) from e
            raise
        return save_file

    def _previous_checkpoint_words(self) -> str:
        if not self.has_checkpoint():
            return " (none yet)"
        with contextlib.suppress(OSError):
            return f" {self.get_checkpoint_file()}"
        return ""

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        tmp = save_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(last_filename_basename)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, save_file)

    def load(self, path: str, *args, **kwargs):
        self._loading_path = path
        if path:
            # a directory, an empty, truncated or foreign file: an error naming it
            check_checkpoint_file(path, "checkpoint")
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str):
        try:
            return super()._load_file(filename)
        except Exception as e:  # noqa: BLE001 - re-raised naming the file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointFileError(
                f"checkpoint {filename!r} is not a readable checkpoint ({type(e).__name__}: "
                f"{first[:300]}); use a checkpoint written by TextKD, torch or detectron2"
            ) from e

    def _load_model(self, checkpoint: Any):
        state = checkpoint.get("model", {})
        own = self.model.state_dict()
        path = getattr(self, "_loading_path", "?")
        # a distillation checkpoint loaded into its student alone (evaluation, export): the
        # distillation-only entries (adapters, projectors) have nowhere to go
        extra = [k for k in state if k.startswith(_DISTILL_ONLY) and k not in own]
        if extra and any(k.startswith("segmentor.") for k in state):
            for k in extra:
                del state[k]
            self.logger.info(
                "left out %d distillation-only entries of %s (the student is loaded alone)",
                len(extra),
                path,
            )
        first_convs = first_conv_keys(self.model)
        for k, v in state.items():
            if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape):
                hint = _first_conv_hint(
                    path, k, tuple(v.shape), tuple(own[k].shape), "model", first_convs
                )
                raise ValueError(
                    hint
                    or f"checkpoint {path}: '{k}' has shape {tuple(v.shape)} but the model "
                    f"expects {tuple(own[k].shape)} (a checkpoint of another config?)"
                )
        incompatible = super()._load_model(checkpoint)
        missing = [k for k in incompatible.missing_keys if k.startswith("segmentor.")]
        if missing:
            raise ValueError(
                f"checkpoint {path} lacks {len(missing)} weights of the model "
                f"(e.g. {missing[:5]}): it was not saved from this config"
            )
        return incompatible


DATA_ORDER_VERSION = 1


def data_order_seed(cfg) -> int:
    """The seed of the data order, augmentation and per-step RNGs: ``cfg.SEED`` when >= 0, else
    one random seed shared by all ranks (saved in every checkpoint, so a resumed run goes on with
    it)."""
    if cfg.SEED >= 0:
        return int(cfg.SEED)
    return int(comm.shared_random_seed())


def build_resumable_train_loader(cfg, mapper, seed: int | None = None):
    """The training loader of ``cfg.DATASETS.TRAIN``: a :class:`ResumableTrainingSampler`
    (sample order and augmentation a function of ``(seed, sample position)``, see
    :mod:`textkd.data.sampling`) over ``mapper``, batched per rank without aspect-ratio grouping
    (which would carry images over a checkpoint). ``loader.dataset.sampler`` is the sampler;
    ``Trainer.resume_or_load`` moves it to the resumed iteration before the first batch."""
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r} is not supported: TextKD "
            f"trains with its resumable 'TrainingSampler' (set DATALOADER.SAMPLER_TRAIN "
            f"TrainingSampler)"
        )
    records = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    sampler = ResumableTrainingSampler(
        len(records),
        cfg.SOLVER.IMS_PER_BATCH,
        data_order_seed(cfg) if seed is None else seed,
        rank=comm.get_rank(),
        world_size=comm.get_world_size(),
    )
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        logger.info(
            "training batches are not grouped by aspect ratio "
            "(DATALOADER.ASPECT_RATIO_GROUPING ignored: it would make resume inexact)"
        )
    dataset = KeyedMapDataset(DatasetFromList(records, copy=False), mapper)
    return build_batch_data_loader(
        dataset,
        sampler,
        cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        # the loader's own generator: creating its iterator draws no number from torch's global
        # RNG, which would shift the first resumed step's dropout draws
        seed=sampler.seed,
    )


def _train_sampler(data_loader) -> ResumableTrainingSampler | None:
    sampler = getattr(getattr(data_loader, "dataset", None), "sampler", None)
    return sampler if isinstance(sampler, ResumableTrainingSampler) else None


# entries of a distillation checkpoint that belong to the distillation, not to the student: the
# training terms (one prefix per attribute of DISTILL_TERMS) and the teacher
_DISTILL_ONLY = tuple(f"{name}." for name in DISTILL_TERMS) + ("teacher.",)


def _is_disk_full(e: BaseException) -> bool:
    """True when ``e`` (or an exception it chains) is "no space left on device": an ENOSPC
    OSError, or torch's writer error that follows a short write."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def term_optimizers(model) -> dict[str, torch.optim.Optimizer]:
    """``{"<term attribute>_optimizer": optimizer}`` of every training term with an optimizer
    of its own: checkpointables of the trainer, so their state is saved and resumed."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return {
        f"{name}_optimizer": m.own_optimizer()
        for name, m in model.named_modules()
        if isinstance(m, TrainingTerm) and m.own_optimizer() is not None
    }


def _ddp_ignore_own_parameters(model) -> None:
    """Keep the parameters that training terms optimize themselves out of DDP: they get no
    gradient from the student's loss (which DDP would wait for) and the term keeps them in sync
    across ranks itself."""
    own = own_parameter_ids(model)
    if own:
        names = [n for n, p in model.named_parameters() if id(p) in own]
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, names
        )


def _find_unused(cfg) -> bool:
    v = cfg.MODEL.DDP_FIND_UNUSED_PARAMETERS
    if isinstance(v, bool):
        return v
    if str(v).lower() in ("true", "false"):
        return str(v).lower() == "true"
    return cfg.MODEL.META_ARCHITECTURE == "DistillSemanticSegmentor" and (
        cfg.MODEL.DISTILL.TEXT.PROBE_MODE == "pretrain"
    )


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with TextKD's mapper, evaluators, poly LR, DDP settings and
    checkpointer, and an exact resume: the data order, augmentation and each step's random
    draws are functions of (seed, iteration, rank, sample) (:mod:`textkd.data.sampling`), the
    seed is saved in checkpoints (``trainer.data_order``); everything else is detectron2's."""

    def __init__(self, cfg: CfgNode):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        # a CPU model (gloo) takes no device_ids; detectron2 passes the local rank regardless
        ddp_kwargs = {} if str(cfg.MODEL.DEVICE).startswith("cuda") else {"device_ids": None}
        _ddp_ignore_own_parameters(model)
        # plain BN (CPU, or NORM "BN") keeps per-rank running statistics: broadcast rank 0's at
        # every forward so all ranks (and their shares of a distributed evaluation) use the
        # statistics the checkpoint saves; SyncBN keeps them identical by itself
        model = create_ddp_model(
            model,
            broadcast_buffers=resolve_norm(cfg) != "SyncBN",
            find_unused_parameters=_find_unused(cfg),
            **ddp_kwargs,
        )
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self._sampler = _train_sampler(data_loader)
        self._order_seed = self._sampler.seed if self._sampler else data_order_seed(cfg)
        self._order_restored: dict | None = None
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = TextKDCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self), **term_optimizers(model)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume: bool = True) -> None:
        """detectron2's ``resume_or_load``; when resuming, the optimizer's learning rates are then
        set to the restored schedule position under this config's ``SOLVER.MAX_ITER``.

        detectron2 keeps the learning rate stored with the optimizer for the first resumed
        iteration: the next step of the *saved* run's schedule, which is wrong (0 for a finished
        poly schedule) when a run is resumed with a larger MAX_ITER. For an unchanged MAX_ITER
        the value is the same."""
        self._order_restored = None
        super().resume_or_load(resume=resume)
        resumed = resume and self.checkpointer.has_checkpoint()
        if resumed and isinstance(self.scheduler, LRMultiplier):
            lrs = self.scheduler.get_lr()
            for group, lr in zip(self.optimizer.param_groups, lrs):
                group["lr"] = lr
            self.scheduler._last_lr = list(lrs)
        if resumed:
            self._restore_data_order()
        if self._sampler is not None:
            self._sampler.set_start(self.start_iter, self._order_seed)

    def _restore_data_order(self) -> None:
        """Continue the data order, augmentation and step RNGs of the checkpoint just loaded."""
        path = self.checkpointer.get_checkpoint_file()
        saved = self._order_restored
        log = logging.getLogger("textkd")
        if saved is None:
            log.warning(
                "checkpoint %s has no data-order state (written by an earlier TextKD): weights, "
                "optimizer and schedule are restored, but the data order and augmentation draws "
                "restart with this version's seeded order at iteration %d instead of continuing "
                "the interrupted run's, so the result will differ from an uninterrupted run",
                path,
                self.start_iter,
            )
            return
        if self.cfg.SEED < 0:
            self._order_seed = int(saved["seed"])
        elif int(saved["seed"]) != self._order_seed:
            log.warning(
                "checkpoint %s was trained with SEED %d but this run has SEED %d: the data order "
                "from iteration %d differs from the interrupted run's",
                path,
                saved["seed"],
                self._order_seed,
                self.start_iter,
            )
        if self._sampler is not None:
            for key, now in (
                ("ims_per_batch", self._sampler.total_batch_size),
                ("dataset_size", self._sampler.size),
            ):
                if key in saved and int(saved[key]) != now:
                    log.warning(
                        "checkpoint %s was trained with %s %d, this run has %d: the data order "
                        "from iteration %d differs from the interrupted run's",
                        path,
                        key,
                        saved[key],
                        now,
                        self.start_iter,
                    )

    def run_step(self) -> None:
        # dropout, LAD's noised labels, CIRKD's sampling...: draws of step i are a function of
        # (seed, i, rank), whether or not the run was resumed before it
        seed_step_rngs(self._order_seed, self.iter, comm.get_rank())
        super().run_step()

    def state_dict(self) -> dict:
        ret = super().state_dict()
        ret["data_order"] = {
            "version": DATA_ORDER_VERSION,
            "seed": self._order_seed,
            "ims_per_batch": self.cfg.SOLVER.IMS_PER_BATCH,
            "dataset_size": self._sampler.size if self._sampler is not None else -1,
        }
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._order_restored = state_dict.get("data_order")

    def build_hooks(self):
        hooks = add_best_checkpoint_hook(self.cfg, self.checkpointer, super().build_hooks())
        return add_val_image_hook(self.cfg, hooks)

    @classmethod
    def build_model(cls, cfg):
        check_num_classes(cfg)
        model = super().build_model(cfg)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logging.getLogger("textkd").info("trainable parameters: %.2fM", n_train / 1e6)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's optimizer over the model's parameters except those a training term
        optimizes itself (a discriminator: :func:`~textkd.distill.base.own_parameter_ids`)."""
        own = [p for p in model.parameters() if id(p) in own_parameter_ids(model)]
        flags = [p.requires_grad for p in own]
        try:
            for p in own:  # detectron2 skips parameters that do not require grad
                p.requires_grad_(False)
            return super().build_optimizer(cfg, model)
        finally:
            for p, flag in zip(own, flags):
                p.requires_grad_(flag)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_resumable_train_loader(cfg, TextKDSemSegDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=TextKDSemSegDatasetMapper(cfg, False)
        )

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        meta = MetadataCatalog.get(dataset_name)
        etype = getattr(meta, "evaluator_type", None)
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluators = [TextKDSemSegEvaluator(dataset_name, output_dir=output_folder)]
        if etype == "cityscapes_sem_seg":
            evaluators.append(TextKDCityscapesSemSegEvaluator(dataset_name))
        elif etype != "sem_seg":
            raise ValueError(
                f"dataset {dataset_name!r} has evaluator_type {etype!r}; TextKD evaluates "
                "'sem_seg' and 'cityscapes_sem_seg' datasets"
            )
        return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


def export_student(model, output: str) -> dict[str, torch.Tensor]:
    """Write the deployable student of a (distillation) model as a checkpoint the single-model
    config loads: only ``segmentor.*`` keys, no teacher, adapters, projectors or text buffers."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    state = {k: v for k, v in model.state_dict().items() if k.startswith("segmentor.")}
    if not state:
        raise ValueError("the model has no 'segmentor.*' weights to export")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp"
    torch.save({"model": state}, tmp)
    os.replace(tmp, output)
    return state
