"""TextKD: text-assisted and label-assisted knowledge distillation for semantic segmentation.

Importing ``textkd`` needs only PyTorch. The detectron2 layer (config, meta-architectures,
dataset registration, mapper, evaluators, trainer) lives in modules that import detectron2
themselves; ``textkd.d2`` imports and registers all of them at once.
"""

__version__ = "0.1.0"
