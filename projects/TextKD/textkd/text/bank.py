"""CLIP text bank: class names -> prompt ensemble -> frozen CLIP text encoder -> K×D embeddings.

For every class name ``c`` and prompt template ``p_j`` (``"a photo of a {}."`` …) the frozen
open_clip text tower gives ``e_j = E_text(p_j(c))``; the bank row is the prompt-ensemble mean of
the L2-normalised template embeddings, re-normalised (METHODS.md section 2):

    t̂_c = normalize( (1/J) · Σ_j normalize(e_j) )

CLIP runs once, offline, and the result is cached on disk (``torch.save`` of a dict with
``embeddings``, ``class_names``, ``model``, ``pretrained``, ``templates``, ``version``). The cache
file name carries a SHA-1 of a canonical JSON of everything the embeddings depend on (model name,
weights identity, class names, templates, name cleaning), so a loaded cache never needs CLIP.
The weights identity is the pretrained tag, or for a local checkpoint its absolute path, size and
modification time.

Nothing here downloads: a pretrained tag is resolved to the file open_clip would download and that
file must already be in the local Hugging Face hub cache (or open_clip's ``~/.cache/clip`` URL
cache); otherwise an error says how to build the cache where the weights are reachable
(``tools/build_text_embeddings.py``) and where to put it.

Class names are cleaned for the prompts only (the cache keeps the original names): underscores
become spaces and COCO-Stuff style suffixes ``-merged`` / ``-other`` are dropped, so
``"wall-other-merged"`` is prompted as ``"wall"`` and ``"traffic_light"`` as ``"traffic light"``.
Pass ``clean_names=False`` to prompt with the raw names.

The control sources ``"random"`` and ``"learnable"`` (seeded normal vectors, L2-normalised) are
used only when asked for by name; they never replace CLIP silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .templates import DEFAULT_TEMPLATES

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_VERSION",
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

CACHE_VERSION = 1
SOURCES = ("clip", "random", "learnable")
BUILD_TOOL = "tools/build_text_embeddings.py"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".npy", ".ckpt")
_NAME_SUFFIXES = ("-merged", "-other")


# ----------------------------------------------------------------------------- input validation
def _check_class_names(class_names: Sequence[str]) -> list[str]:
    """Return the class names as a list of str; ValueError on an empty list or an empty name."""
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a list of names, got the string {class_names!r}")
    names = list(class_names) if class_names is not None else []
    if not names:
        raise ValueError("class_names is empty: the text bank needs at least one class name")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ValueError(f"class name #{i} is not a string: {name!r}")
        if not name.strip():
            raise ValueError(f"class name #{i} is empty ({name!r}) in {names}")
    return names


def _check_templates(templates: Sequence[str]) -> list[str]:
    """Return the templates as a list; ValueError when empty or a template lacks ``{}``."""
    if isinstance(templates, str):
        templates = [templates]
    items = list(templates) if templates is not None else []
    if not items:
        raise ValueError("templates is empty: the prompt ensemble needs at least one template")
    for tpl in items:
        if not isinstance(tpl, str) or "{}" not in tpl:
            raise ValueError(f"prompt template {tpl!r} must be a string with one '{{}}' slot")
    return items


def clean_class_name(name: str) -> str:
    """Name used in the prompts: the first synonym of a comma-separated list (ADE20K's official
    names such as ``"building, edifice"``), ``_`` -> space, trailing ``-merged``/``-other``
    removed (repeatedly), whitespace collapsed. Falls back to the underscore-free raw name if
    cleaning would leave nothing (e.g. ``"-other"``)."""
    cleaned = name.split(",")[0].strip() or name.strip()
    changed = True
    while changed:
        changed = False
        for suffix in _NAME_SUFFIXES:
            if cleaned.lower().endswith(suffix) and len(cleaned) > len(suffix):
                cleaned = cleaned[: -len(suffix)]
                changed = True
    cleaned = re.sub(r"\s+", " ", cleaned.replace("_", " ")).strip()
    if not cleaned:
        cleaned = re.sub(r"\s+", " ", name.replace("_", " ")).strip()
    return cleaned


# ----------------------------------------------------------------------------- cache key / paths
def default_cache_dir() -> str:
    """``$TEXTKD_CACHE`` if set, else ``~/.cache/textkd/text_bank``."""
    env = os.environ.get("TEXTKD_CACHE", "")
    if env:
        return os.path.expanduser(env)
    return os.path.join(os.path.expanduser("~"), ".cache", "textkd", "text_bank")


def _looks_like_path(pretrained: str) -> bool:
    """True when ``pretrained`` names a file rather than an open_clip tag (tags have no path
    separators and no checkpoint suffix)."""
    p = pretrained.strip()
    return (
        os.path.isfile(os.path.expanduser(p))
        or "/" in p
        or os.sep in p
        or p.startswith(("~", "."))
        or p.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


def _clean_tag(tag: str) -> str:
    """open_clip's tag normalisation (lower case, ``-`` -> ``_``)."""
    return tag.strip().lower().replace("-", "_")


def weights_identity(clip_pretrained: str) -> dict[str, Any]:
    """What identifies the CLIP weights in the cache key: ``{"tag": …}`` for a pretrained tag, or
    ``{"path": abs path, "size": bytes, "mtime_ns": …}`` for a local checkpoint file.

    Raises FileNotFoundError (with how to build the cache elsewhere) when the path is missing.
    """
    if not clip_pretrained or not str(clip_pretrained).strip():
        raise ValueError(
            "clip_pretrained is empty: give an open_clip pretrained tag (e.g. 'openai') or a local "
            "checkpoint path; random CLIP weights are never used for the text bank"
        )
    pretrained = str(clip_pretrained).strip()
    if not _looks_like_path(pretrained):
        return {"tag": _clean_tag(pretrained)}
    path = os.path.abspath(os.path.expanduser(pretrained))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"CLIP checkpoint '{pretrained}' (resolved to '{path}') does not exist. "
            + _how_to_build_hint(pretrained)
        )
    st = os.stat(path)
    return {"path": path, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _how_to_build_hint(pretrained: str, clip_model: str = "<MODEL>") -> str:
    return (
        f"Build the text bank where the weights are available: `python {BUILD_TOOL} "
        f"--classes a,b,c (or --dataset NAME) --clip-model {clip_model} "
        f"--clip-pretrained {pretrained} --output bank.pt`, then copy the file into the text-bank "
        f"cache dir ($TEXTKD_CACHE or ~/.cache/textkd/text_bank, MODEL.TEXT_BANK.CACHE_DIR) or pass "
        "it as MODEL.TEXT_BANK.CACHE_FILE."
    )


def text_bank_cache_key(
    class_names: Sequence[str],
    clip_model: str = "ViT-B-16",
    clip_pretrained: str = "openai",
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    clean_names: bool = True,
) -> str:
    """SHA-1 hex digest of a canonical JSON (sorted keys, no spaces) of the cache version, model
    name, weights identity, class names, templates and the name-cleaning flag."""
    payload = {
        "version": CACHE_VERSION,
        "model": str(clip_model),
        "weights": weights_identity(clip_pretrained),
        "class_names": _check_class_names(class_names),
        "templates": _check_templates(templates),
        "clean_names": bool(clean_names),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40] or "x"


def text_bank_cache_path(
    class_names: Sequence[str],
    clip_model: str = "ViT-B-16",
    clip_pretrained: str = "openai",
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    cache_dir: str = "",
    clean_names: bool = True,
) -> str:
    """Derived cache file: ``<cache_dir>/<model>_<tag or file stem>_<K>cls_<sha1[:16]>.pt``."""
    key = text_bank_cache_key(class_names, clip_model, clip_pretrained, templates, clean_names)
    ident = weights_identity(clip_pretrained)
    weights_name = (
        ident["tag"] if "tag" in ident else os.path.splitext(os.path.basename(ident["path"]))[0]
    )
    fname = f"{_slug(clip_model)}_{_slug(weights_name)}_{len(list(class_names))}cls_{key[:16]}.pt"
    return os.path.join(os.path.expanduser(cache_dir) if cache_dir else default_cache_dir(), fname)


# ----------------------------------------------------------------------------- cache file I/O
def save_text_bank(
    path: str,
    embeddings: torch.Tensor,
    class_names: Sequence[str],
    clip_model: str,
    clip_pretrained: str,
    templates: Sequence[str],
    clean_names: bool = True,
) -> str:
    """Write the cache dict atomically (temp file in the same directory, then ``os.replace``)."""
    names = _check_class_names(class_names)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(names):
        raise ValueError(
            f"embeddings of shape {tuple(embeddings.shape)} do not match {len(names)} class names"
        )
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record = {
        "embeddings": embeddings.detach().to("cpu", torch.float32).contiguous(),
        "class_names": names,
        "model": str(clip_model),
        "pretrained": str(clip_pretrained),
        "templates": _check_templates(templates),
        "clean_names": bool(clean_names),
        "version": CACHE_VERSION,
    }
    fd, tmp = tempfile.mkstemp(prefix=".textbank-", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    logger.info("Wrote text bank (%d classes × %d) to %s", len(names), embeddings.shape[1], path)
    return path


def read_text_bank_cache(path: str, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Load a cache file and validate it; when ``class_names`` is given the cached names must
    equal them (same count and order), else ValueError naming both lists."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text bank cache file '{path}' does not exist")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt / foreign file
        raise ValueError(f"text bank cache file '{path}' could not be read: {e}") from e
    if not isinstance(record, dict) or "embeddings" not in record or "class_names" not in record:
        raise ValueError(
            f"'{path}' is not a TextKD text bank cache (needs keys 'embeddings' and 'class_names')"
        )
    emb = record["embeddings"]
    cached = list(record["class_names"])
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != len(cached):
        shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise ValueError(
            f"text bank cache '{path}': embeddings {shape} do not match {len(cached)} class names"
        )
    if record.get("version", CACHE_VERSION) != CACHE_VERSION:
        raise ValueError(
            f"text bank cache '{path}' has version {record.get('version')}, expected "
            f"{CACHE_VERSION}; rebuild it with {BUILD_TOOL}"
        )
    if class_names is not None:
        wanted = list(class_names)
        if cached != wanted:
            raise ValueError(
                f"text bank cache '{path}' holds {len(cached)} classes {cached}, but "
                f"{len(wanted)} classes {wanted} were requested"
            )
    record["embeddings"] = emb.float()
    return record


# ----------------------------------------------------------------------------- CLIP encoding
def resolve_clip_weights(
    clip_model: str, clip_pretrained: str, download_cache_dir: str = ""
) -> tuple[str, dict[str, Any]]:
    """Local file of the CLIP weights and the tag's pretrained config (``{}`` for a path).

    A path must exist. A tag is resolved with open_clip's pretrained-config table to the Hugging
    Face hub file (and its ``.safetensors`` alternative) or the URL file open_clip would download;
    that file must already be in the local HF hub cache or open_clip's URL cache
    (``download_cache_dir`` or ``~/.cache/clip``). Nothing is downloaded: a missing file raises
    FileNotFoundError naming the tag and how to build the cache elsewhere.
    """
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if clip_model.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(
            f"clip_model '{clip_model}': schema model names are not supported; use an open_clip "
            "architecture name (e.g. 'ViT-B-16') with a tag or a local checkpoint path"
        )
    if clip_model not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model '{clip_model}'; known architectures: {open_clip.list_models()}"
        )
    ident = weights_identity(clip_pretrained)
    if "path" in ident:
        return ident["path"], {}

    tag = str(clip_pretrained).strip()
    pcfg = open_clip.get_pretrained_cfg(clip_model, tag)
    if not pcfg:
        raise ValueError(
            f"'{tag}' is neither an existing file nor a pretrained tag of open_clip model "
            f"'{clip_model}' (known tags: {open_clip.list_pretrained_tags_by_model(clip_model)})"
        )
    candidates: list[str] = []
    if pcfg.get("file"):
        candidates.append(pcfg["file"])
    hf_hub = pcfg.get("hf_hub", "")
    if hf_hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub is an open_clip dependency
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo_id, filename = os.path.split(hf_hub)
            filenames = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
            if filename.endswith((".bin", ".pth")):
                filenames.insert(0, filename[:-4] + ".safetensors")
            for name in filenames:
                hit = try_to_load_from_cache(repo_id, name, cache_dir=download_cache_dir or None)
                if isinstance(hit, str):
                    candidates.append(hit)
    url = pcfg.get("url", "")
    if url:
        url_dir = download_cache_dir or os.path.expanduser("~/.cache/clip")
        candidates.append(os.path.join(url_dir, os.path.basename(url)))
    for cand in candidates:
        if os.path.isfile(cand):
            return cand, pcfg
    raise FileNotFoundError(
        f"CLIP weights for model '{clip_model}' tag '{tag}' are not on disk (looked for "
        f"{hf_hub or url} in the local Hugging Face hub cache and open_clip's URL cache; nothing "
        "is downloaded). " + _how_to_build_hint(tag, clip_model)
    )


@torch.no_grad()
def encode_class_names(
    class_names: Sequence[str],
    clip_model: str = "ViT-B-16",
    clip_pretrained: str = "openai",
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    clean_names: bool = True,
    device: str | None = None,
    download_cache_dir: str = "",
    progress: bool = True,
) -> torch.Tensor:
    """Prompt-ensemble CLIP text embeddings, K×D float32 on CPU:
    ``t̂_c = normalize(mean_j normalize(E_text(template_j.format(name_c))))``.

    Builds the open_clip model with the local weights (never random: ``require_pretrained``),
    keeps only its text tower in use (eval, no grad), and encodes one batch of templates per class
    with a tqdm progress bar over the classes.
    """
    import open_clip
    from tqdm import tqdm

    names = _check_class_names(class_names)
    tpls = _check_templates(templates)
    weights_file, pcfg = resolve_clip_weights(clip_model, clip_pretrained, download_cache_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model = open_clip.create_model(
            clip_model,
            pretrained=weights_file,
            # a tag trained with QuickGELU (e.g. 'openai') must be built with it
            force_quick_gelu=bool(pcfg.get("quick_gelu", False)),
            device=dev,
            require_pretrained=True,
        )
        tokenizer = open_clip.get_tokenizer(clip_model)
    except Exception as e:
        raise RuntimeError(
            f"could not build open_clip model '{clip_model}' with weights '{weights_file}' "
            f"({clip_pretrained}): {e}"
        ) from e
    if getattr(model, "visual", None) is not None:
        model.visual = None  # only the text tower is used
    model.eval().requires_grad_(False)

    prompt_names = [clean_class_name(n) if clean_names else n for n in names]
    rows = []
    for name in tqdm(prompt_names, desc=f"text bank ({clip_model})", unit="class"):
        tokens = tokenizer([tpl.format(name) for tpl in tpls]).to(dev)
        emb = F.normalize(model.encode_text(tokens).float(), dim=-1)  # J×D
        rows.append(F.normalize(emb.mean(dim=0), dim=-1))
    bank = torch.stack(rows).cpu()
    del model
    logger.info(
        "Encoded %d class names × %d templates with %s (%s): %s",
        len(names),
        len(tpls),
        clip_model,
        clip_pretrained,
        tuple(bank.shape),
    )
    return bank


def random_text_bank(num_classes: int, dim: int = 512, seed: int = 0) -> torch.Tensor:
    """Control bank: ``normalize(N(0, I))`` rows drawn from a generator seeded with ``seed``."""
    if num_classes <= 0 or dim <= 0:
        raise ValueError(
            f"random text bank needs num_classes > 0 and dim > 0, got {num_classes}, {dim}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    return F.normalize(torch.randn(num_classes, dim, generator=gen), dim=1)


# ----------------------------------------------------------------------------- public entry point
def load_text_bank(
    class_names: Sequence[str],
    source: str = "clip",
    clip_model: str = "ViT-B-16",
    clip_pretrained: str = "openai",
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    cache_dir: str = "",
    cache_file: str = "",
    dim: int = 512,
    seed: int = 0,
    compute_if_missing: bool = True,
    clean_names: bool = True,
    device: str | None = None,
    download_cache_dir: str = "",
) -> torch.Tensor:
    """The K×D text bank ``T̂`` (unit rows, float32) for ``class_names``.

    ``source="clip"``: load the cache (``cache_file`` if given, else the derived file under
    ``cache_dir``) without importing CLIP; when it is missing and ``compute_if_missing``, encode
    with CLIP (:func:`encode_class_names`) and write the cache atomically. A cache holding other
    class names is a ValueError. ``source="random"`` / ``"learnable"``: the seeded control bank of
    :func:`random_text_bank` (the distiller makes it a Parameter for ``"learnable"``).
    """
    names = _check_class_names(class_names)
    source = str(source).lower()
    if source not in SOURCES:
        raise ValueError(f"text bank source '{source}' is not one of {SOURCES}")
    if source in ("random", "learnable"):
        logger.info(
            "Using a %s control text bank (%d × %d, seed %d)", source, len(names), dim, seed
        )
        return random_text_bank(len(names), dim=dim, seed=seed)

    tpls = _check_templates(templates)
    if cache_file:
        path = os.path.abspath(os.path.expanduser(cache_file))
    else:
        path = text_bank_cache_path(
            names, clip_model, clip_pretrained, tpls, cache_dir, clean_names
        )
    if os.path.isfile(path):
        record = read_text_bank_cache(path, names)
        if record.get("model") not in (None, clip_model):
            logger.warning(
                "text bank cache %s was built with CLIP model '%s', config asks for '%s'",
                path,
                record.get("model"),
                clip_model,
            )
        logger.info("Loaded text bank %s from %s", tuple(record["embeddings"].shape), path)
        return record["embeddings"]
    if not compute_if_missing:
        raise FileNotFoundError(
            f"text bank cache '{path}' does not exist and compute_if_missing is False. "
            + _how_to_build_hint(clip_pretrained, clip_model)
        )
    bank = encode_class_names(
        names,
        clip_model,
        clip_pretrained,
        tpls,
        clean_names=clean_names,
        device=device,
        download_cache_dir=download_cache_dir,
    )
    save_text_bank(path, bank, names, clip_model, clip_pretrained, tpls, clean_names)
    return bank
