"""CLIP text bank (METHODS.md section 2): prompt templates, offline encoding and the disk cache."""

from .bank import (
    CACHE_VERSION,
    SOURCES,
    clean_class_name,
    default_cache_dir,
    encode_class_names,
    load_text_bank,
    random_text_bank,
    read_text_bank_cache,
    resolve_clip_weights,
    save_text_bank,
    text_bank_cache_key,
    text_bank_cache_path,
    weights_identity,
)
from .templates import DEFAULT_TEMPLATES

__all__ = [
    "CACHE_VERSION",
    "DEFAULT_TEMPLATES",
    "SOURCES",
    "clean_class_name",
    "default_cache_dir",
    "encode_class_names",
    "load_text_bank",
    "random_text_bank",
    "read_text_bank_cache",
    "resolve_clip_weights",
    "save_text_bank",
    "text_bank_cache_key",
    "text_bank_cache_path",
    "weights_identity",
]
