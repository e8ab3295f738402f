"""Import this module to register everything TextKD adds to detectron2: the backbone and heads,
the meta-architectures and the datasets (registration touches no disk beyond cheap checks)."""

from . import build as _build  # noqa: F401
from . import distill_arch as _distill_arch  # noqa: F401
from . import meta_arch as _meta_arch  # noqa: F401
from . import register as _register_datasets  # noqa: F401
