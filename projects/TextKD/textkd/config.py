"""Config keys of TextKD. ``add_textkd_config(cfg)`` only adds keys (with the reference defaults
of METHODS.md); it never changes detectron2's own defaults except where a key is new."""

from __future__ import annotations

from detectron2.config import CfgNode as CN

from .text.templates import DEFAULT_TEMPLATES


def add_textkd_config(cfg: CN) -> None:
    """Add every TextKD key to a detectron2 config (in place)."""
    _C = cfg

    # ---------------------------------------------------------------- backbone (timm wrapper)
    _C.MODEL.SEG_BACKBONE = CN()
    # resnet18 / resnet50 / resnet101, deep-stem resnet18d / resnet50d / resnet101d,
    # mobilenetv2, stdc1 / stdc2
    _C.MODEL.SEG_BACKBONE.ARCH = "resnet18d"
    _C.MODEL.SEG_BACKBONE.OUTPUT_STRIDE = 8
    _C.MODEL.SEG_BACKBONE.IN_CHANS = 3
    # local file with ImageNet weights ("" = random init); nothing is ever downloaded
    _C.MODEL.SEG_BACKBONE.PRETRAINED = ""
    _C.MODEL.SEG_BACKBONE.FROZEN_BN = False
    # std of the initial filters of input channels beyond the pretrained 3 (LAD label channel)
    _C.MODEL.SEG_BACKBONE.EXTRA_CHANS_INIT_STD = 0.1
    # "BN", "SyncBN" ("auto": SyncBN when training on several GPUs, BN otherwise)
    _C.MODEL.SEG_BACKBONE.NORM = "auto"

    # ---------------------------------------------------------------- heads
    # MODEL.SEM_SEG_HEAD.NAME: TextKDDeepLabV3Head / TextKDPSPHead / TextKDFCNHead /
    # TextKDOCRHead / TextKDSTDCHead; NUM_CLASSES, IGNORE_VALUE, LOSS_WEIGHT are detectron2's.
    _C.MODEL.SEM_SEG_HEAD.IN_FEATURE = "res5"
    # head width; 0 = the reference width of METHODS.md for the backbone (DeepLabV3: 256 for
    # ResNet-50/101, 128 for ResNet-18 / MobileNetV2)
    _C.MODEL.SEM_SEG_HEAD.CHANNELS = 0
    _C.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS = [12, 24, 36]
    _C.MODEL.SEM_SEG_HEAD.PSP_BINS = [1, 2, 3, 6]
    _C.MODEL.SEM_SEG_HEAD.DROPOUT = 0.1
    # dropout after the DeepLabV3 ASPP projection (CIRKD: 0.5; LAD's official DeepLabV3 uses 0.01,
    # with DROPOUT 0.01); must lie in [0, 1)
    _C.MODEL.SEM_SEG_HEAD.ASPP_DROPOUT = 0.5
    _C.MODEL.SEM_SEG_HEAD.OCR_KEY_CHANNELS = 256
    _C.MODEL.SEM_SEG_HEAD.STDC_DETAIL_WEIGHT = 1.0
    _C.MODEL.SEM_SEG_HEAD.AUX = True
    _C.MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE = "res4"
    _C.MODEL.SEM_SEG_HEAD.AUX_CHANNELS = 0  # 0 = in_channels // 4, as the CIRKD codebase
    _C.MODEL.SEM_SEG_HEAD.AUX_WEIGHT = 0.4
    _C.MODEL.SEM_SEG_HEAD.ALIGN_CORNERS = False

    # ---------------------------------------------------------------- fast paths
    _C.MODEL.AMP_DTYPE = ""  # "", "bf16" or "fp16": autocast of the student forward
    _C.MODEL.CHANNELS_LAST = False
    # DDP find_unused_parameters: "auto" turns it on only where a module may go unused in a step
    # (text probe fitted then frozen); True/False force it
    _C.MODEL.DDP_FIND_UNUSED_PARAMETERS = "auto"

    # ---------------------------------------------------------------- Label Assisted Distillation
    _C.MODEL.LAD = CN()
    # a label-conditioned model: the backbone takes 3 + 1 channels, the last is the label channel
    _C.MODEL.LAD.ENABLED = False
    # alpha in raw 0-255 pixel units (reference: 100 with mean-subtracted, unit-std pixels);
    # the label channel is multiplied by ALPHA / mean(MODEL.PIXEL_STD)
    _C.MODEL.LAD.ALPHA = 100.0
    _C.MODEL.LAD.SIGMA = 0.03  # pixel noise of the training draw
    _C.MODEL.LAD.CODE_SIGMA = 0.02  # pixel noise of the deterministic code used to distil
    _C.MODEL.LAD.DUAL_PATH = True
    _C.MODEL.LAD.CONSISTENCY_WEIGHT = 5.0
    _C.MODEL.LAD.CONSISTENCY_TEMPERATURE = 4.0
    # what the label channel holds at evaluation: "code" (label_code of the ground truth),
    # "zero" (no label), or "both" (report both; the "code" result is the main one)
    _C.MODEL.LAD.EVAL_LABEL = "both"
    # with EVAL_LABEL "both": which result is the main one ("sem_seg", the one the best
    # checkpoint and the report read): "code" (the other is reported as sem_seg_zero_label) or
    # "zero" (the other as sem_seg_label_code). LAD's official validation feeds a zero label
    # channel, so its recipes set "zero"
    _C.MODEL.LAD.EVAL_MAIN = "code"

    # ---------------------------------------------------------------- distillation
    _C.MODEL.DISTILL = CN()
    _C.MODEL.DISTILL.TEACHER = CN()
    _C.MODEL.DISTILL.TEACHER.CONFIG_FILE = ""
    _C.MODEL.DISTILL.TEACHER.WEIGHTS = ""
    _C.MODEL.DISTILL.TEACHER.OPTS = []  # KEY VALUE overrides of the teacher config
    _C.MODEL.DISTILL.TEACHER.AMP_DTYPE = ""  # "", "bf16" or "fp16"
    # "auto": a TextKD teacher when CONFIG_FILE's META_ARCHITECTURE is one of TextKD's, otherwise
    # (or for a LazyConfig .py) any detectron2 model with a "sem_seg" output; or force
    # "textkd" / "detectron2". The keys below apply to detectron2 teachers only.
    _C.MODEL.DISTILL.TEACHER.TYPE = "auto"
    # dotted functions applied to detectron2's get_cfg() before the teacher yaml is merged (they
    # add a project's keys; importing them registers its models), e.g.
    # ["detectron2.projects.deeplab.add_deeplab_config"]
    _C.MODEL.DISTILL.TEACHER.CONFIG_HOOKS = []
    # module (a name of model.named_modules()) whose output are the class scores before the
    # final upsampling, e.g. "sem_seg_head.predictor"; a Mask2Former-style output (dict with
    # pred_logits and pred_masks) is turned into per-pixel scores like its semantic inference.
    # "" = the model's own sem_seg output, resized to stride LOGITS_STRIDE (0/1: full size)
    _C.MODEL.DISTILL.TEACHER.LOGITS_MODULE = ""
    _C.MODEL.DISTILL.TEACHER.LOGITS_STRIDE = 8
    # module whose output is the penultimate feature ("name:input" records its first input,
    # e.g. "sem_seg_head.predictor:input"); "" = none (feature terms then cannot run)
    _C.MODEL.DISTILL.TEACHER.FEATURE_MODULE = ""
    # "RGB" / "BGR"; "" = the teacher config's INPUT.FORMAT
    _C.MODEL.DISTILL.TEACHER.INPUT_FORMAT = ""
    # Named distillation terms; each key NAME reports loss_NAME. A term is a node with
    # METHOD (kd / cwd / skd / ifvd / cirkd / dist), INPUT (logits / feature / aux_logits),
    # WEIGHT (0 disables it), and the method's own parameters as upper-case keys, e.g.
    #   TERMS: {cwd_logits: {METHOD: cwd, INPUT: logits, WEIGHT: 3.0, TEMPERATURE: 4.0}}
    _C.MODEL.DISTILL.TERMS = CN(new_allowed=True)
    # CIRKD's holistic adversarial term (distill/adversarial.py): a discriminator on the maps,
    # trained by its own Adam step each iteration. Reference (train_kd.py, CWD/SKD/IFVD recipes):
    # WEIGHT 0.001, D_WEIGHT 0.1, LOSS "hinge", D_LR 4e-4, D_BETAS (0.9, 0.99), D_CHANNELS 64
    _C.MODEL.DISTILL.ADVERSARIAL = CN()
    _C.MODEL.DISTILL.ADVERSARIAL.WEIGHT = 0.0  # lambda_adv of the student's term; 0.001, 0 = off
    _C.MODEL.DISTILL.ADVERSARIAL.D_WEIGHT = 0.1  # lambda_d of the discriminator's loss
    _C.MODEL.DISTILL.ADVERSARIAL.LOSS = "hinge"  # "hinge" (train_kd.py) or "wgan-gp"
    # gradient penalty of "wgan-gp" (train_kd.py applies none; SAGAN's CriterionAdditionalGP)
    _C.MODEL.DISTILL.ADVERSARIAL.GP_WEIGHT = 0.0
    _C.MODEL.DISTILL.ADVERSARIAL.D_LR = 4e-4  # Adam, constant (no schedule), as train_kd.py
    _C.MODEL.DISTILL.ADVERSARIAL.D_BETAS = [0.9, 0.99]
    _C.MODEL.DISTILL.ADVERSARIAL.D_CHANNELS = 64  # SAGAN Discriminator's conv_dim
    _C.MODEL.DISTILL.ADVERSARIAL.INPUT = "logits"  # raw logits, no softmax (train_kd.py)
    # maps smaller than this per side are bilinearly upsampled for D (0 = never, the reference;
    # D needs >= 64, i.e. crops >= 512 at stride 8; small synthetic crops set 64)
    _C.MODEL.DISTILL.ADVERSARIAL.MIN_INPUT_SIZE = 0

    # text-assisted plugins (METHODS.md section 2)
    _C.MODEL.DISTILL.TEXT = CN()
    _C.MODEL.DISTILL.TEXT.INPUT = "feature"
    _C.MODEL.DISTILL.TEXT.SCORE_TEMPERATURE = 0.07
    _C.MODEL.DISTILL.TEXT.PROJ_HIDDEN = 256
    _C.MODEL.DISTILL.TEXT.PROBE_WEIGHT = 1.0
    _C.MODEL.DISTILL.TEXT.PROBE_MODE = "joint"  # "joint" or "pretrain" (fit, then freeze)
    _C.MODEL.DISTILL.TEXT.PROBE_PRETRAIN_ITERS = 0
    _C.MODEL.DISTILL.TEXT.STUDENT_ALIGN_WEIGHT = 0.0
    _C.MODEL.DISTILL.TCD = CN()
    _C.MODEL.DISTILL.TCD.WEIGHT = 0.0  # 3.0 when enabled
    _C.MODEL.DISTILL.TCD.TEMPERATURE = 4.0
    _C.MODEL.DISTILL.TCD.MODE = "spatial"  # "spatial", "class" (softmax over texts) or "mse"
    _C.MODEL.DISTILL.TRD = CN()
    _C.MODEL.DISTILL.TRD.WEIGHT = 0.0  # 1.0 when enabled
    _C.MODEL.DISTILL.TRD.REGION_TEMPERATURE = 1.0
    _C.MODEL.DISTILL.TRD.AFFINITY_TEMPERATURE = 0.07
    _C.MODEL.DISTILL.TRD.MIN_MASS = 1.0
    _C.MODEL.DISTILL.TRD.MIMIC_WEIGHT = 0.0

    # CIRKD's memory-based contrast (METHODS.md §1; off while both weights are 0): class-wise
    # queues of teacher pixel / region embeddings, a student projection head (trained with the
    # student, never exported). The CIRKD recipe: KD 1 + cirkd pixel pairs 1 + these two at 0.1.
    _C.MODEL.DISTILL.CIRKD_MEMORY = CN()
    _C.MODEL.DISTILL.CIRKD_MEMORY.PIXEL_WEIGHT = 0.0  # 0.1 when enabled (reference)
    _C.MODEL.DISTILL.CIRKD_MEMORY.REGION_WEIGHT = 0.0  # 0.1 when enabled (reference)
    _C.MODEL.DISTILL.CIRKD_MEMORY.PIXEL_MEMORY_SIZE = 20000  # pixel embeddings per class
    _C.MODEL.DISTILL.CIRKD_MEMORY.REGION_MEMORY_SIZE = 2000  # region embeddings per class
    _C.MODEL.DISTILL.CIRKD_MEMORY.PIXELS_PER_CLASS = 16  # enqueued per image and class each step
    # contrast set sizes over all classes: each class gives SIZE // NUM_CLASSES + 1 slots
    _C.MODEL.DISTILL.CIRKD_MEMORY.PIXEL_CONTRAST_SIZE = 4096
    _C.MODEL.DISTILL.CIRKD_MEMORY.REGION_CONTRAST_SIZE = 1024
    _C.MODEL.DISTILL.CIRKD_MEMORY.CONTRAST_TEMPERATURE = 0.1  # of the similarities
    _C.MODEL.DISTILL.CIRKD_MEMORY.KD_TEMPERATURE = 1.0  # of the KL between the distributions
    # hidden width of the projection head (its output is the teacher's width); 0 = the teacher's
    _C.MODEL.DISTILL.CIRKD_MEMORY.PROJ_DIM = 0
    _C.MODEL.DISTILL.CIRKD_MEMORY.INPUT = "feature"  # the model output both sides use

    # CLIP text bank
    _C.MODEL.TEXT_BANK = CN()
    _C.MODEL.TEXT_BANK.SOURCE = "clip"  # "clip", "random" or "learnable" (controls)
    _C.MODEL.TEXT_BANK.CLIP_MODEL = "ViT-B-16"
    # open_clip pretrained tag or a local checkpoint path
    _C.MODEL.TEXT_BANK.CLIP_PRETRAINED = "openai"
    _C.MODEL.TEXT_BANK.TEMPLATES = list(DEFAULT_TEMPLATES)
    _C.MODEL.TEXT_BANK.CACHE_DIR = ""  # "" = $TEXTKD_CACHE or ~/.cache/textkd/text_bank
    _C.MODEL.TEXT_BANK.CACHE_FILE = ""  # an explicit cache file overrides the derived key
    _C.MODEL.TEXT_BANK.CLASS_NAMES = []  # default: stuff_classes of DATASETS.TRAIN[0]
    _C.MODEL.TEXT_BANK.DIM = 512  # for the random / learnable controls
    _C.MODEL.TEXT_BANK.SEED = 0

    # ---------------------------------------------------------------- input / augmentation
    # long side the image is first resized to (0 keeps the original size), then scaled by a
    # random factor in SCALE_RANGE, cropped to INPUT.CROP.SIZE (padding label 255) and flipped
    _C.INPUT.BASE_SIZE = 0
    _C.INPUT.SCALE_RANGE = [0.5, 2.0]
    # discrete scale factors drawn with equal probability instead of SCALE_RANGE, applied as
    # CIRKD's datasets do (cv2.resize with fx = fy = factor); the reference recipes use CIRKD's
    # 0.5 + randint(0, 15) / 10, i.e. [0.5, 0.6, ..., 2.0]; [] = draw from SCALE_RANGE
    _C.INPUT.SCALE_SET = []
    _C.INPUT.FLIP = True
    # evaluation: whole image at its original size (0) or resized so the long side is TEST_SIZE
    _C.INPUT.TEST_SIZE = 0
    _C.INPUT.SIZE_DIVISIBILITY = -1

    # ---------------------------------------------------------------- solver
    _C.SOLVER.POLY_LR_POWER = 0.9
    _C.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0
    # the reference protocol's total batch; a run with another SOLVER.IMS_PER_BATCH logs a warning
    # with the linearly scaled LR, and applies it when SCALE_LR_WITH_BATCH is True
    _C.SOLVER.REFERENCE_IMS_PER_BATCH = 16
    _C.SOLVER.SCALE_LR_WITH_BATCH = False

    # ---------------------------------------------------------------- evaluation / runtime
    _C.TEST.EVAL_BOTH_MIOU = True
    # validation images (the first N of DATASETS.TEST[0]) drawn to TensorBoard at each evaluation
    _C.TEST.VIS_IMAGES = 4
    _C.TEXTKD = CN()
    _C.TEXTKD.NONFINITE_CHECK = True  # stop with the loss key when a loss is NaN/inf
    # --eval-only without MODEL.WEIGHTS (or --resume without a checkpoint) is refused: it would
    # score a random model. True evaluates random weights on purpose.
    _C.TEXTKD.ALLOW_RANDOM_WEIGHTS = False
    # keep the best evaluated weights beside the final ones (CIRKD and LAD evaluate every 800
    # iterations and report the best): OUTPUT_DIR/model_best.pth + model_best.json (metric value,
    # iteration), and OUTPUT_DIR/final_and_best.json at the end. Acts only when TEST.EVAL_PERIOD
    # > 0 (the reference recipes set 800).
    _C.TEXTKD.BEST_CHECKPOINT = CN()
    _C.TEXTKD.BEST_CHECKPOINT.ENABLED = True
    # a key of the evaluation results as detectron2 flattens them ("<task>/<metric>"), e.g.
    # "sem_seg/mIoU", "sem_seg/mIoU_all", "sem_seg_label_code/mIoU" (a LAD teacher)
    _C.TEXTKD.BEST_CHECKPOINT.METRIC = "sem_seg/mIoU"
    _C.TEXTKD.BEST_CHECKPOINT.MODE = "max"  # "max" or "min"
