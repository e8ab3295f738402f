"""CLIP text bank: real open_clip (tiny architecture, random weights saved to a local checkpoint),
prompt ensembling, the disk cache and its errors. No detectron2, no network."""

import json
import os
import socket
import sys

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from textkd.text import (  # noqa: E402
    clean_class_name,
    load_text_bank,
    random_text_bank,
    read_text_bank_cache,
    text_bank_cache_key,
    text_bank_cache_path,
)

TINY = "textkd-tiny-test-clip"
TEMPLATES = ["a photo of a {}.", "there is a {} in the scene.", "a bad photo of the {}."]
NAMES = ["road", "traffic_light", "wall-other-merged"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """Register a tiny CLIP architecture (text width 64, 2 layers, context 77, embed_dim 32),
    build it with random weights and save its state_dict; returns the checkpoint path."""
    root = tmp_path_factory.mktemp("tiny_clip")
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 2,
        },
    }
    cfg_dir = root / "configs"
    cfg_dir.mkdir()
    (cfg_dir / f"{TINY}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY)
    ckpt = root / "tiny_clip.pt"
    torch.save(model.state_dict(), ckpt)
    return str(ckpt)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails at once (nothing here may download)."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _reference_bank(ckpt, prompt_names, templates):
    """Each prompt encoded on its own, L2-normalised, averaged over templates, re-normalised."""
    model = open_clip.create_model(TINY, pretrained=ckpt).eval()
    tok = open_clip.get_tokenizer(TINY)
    rows = []
    with torch.no_grad():
        for name in prompt_names:
            embs = [
                F.normalize(model.encode_text(tok([t.format(name)]))[0], dim=0) for t in templates
            ]
            rows.append(F.normalize(torch.stack(embs).mean(0), dim=0))
    return torch.stack(rows)


def test_clean_class_name():
    assert clean_class_name("traffic_light") == "traffic light"
    assert clean_class_name("wall-other-merged") == "wall"
    assert clean_class_name("tree-merged") == "tree"
    assert clean_class_name("t-shirt") == "t-shirt"
    assert clean_class_name("-other") == "-other"
    # ADE20K's official names list synonyms: the first one is prompted
    assert clean_class_name("building, edifice") == "building"
    assert clean_class_name("person, individual, someone") == "person"


def test_bank_end_to_end_and_cache(tiny_clip, tmp_path, monkeypatch, no_network):
    cache_dir = tmp_path / "cache"
    bank = load_text_bank(
        NAMES,
        clip_model=TINY,
        clip_pretrained=tiny_clip,
        templates=TEMPLATES,
        cache_dir=str(cache_dir),
        device="cpu",
    )
    assert bank.shape == (3, 32) and bank.dtype == torch.float32
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(3))

    expected = _reference_bank(tiny_clip, ["road", "traffic light", "wall"], TEMPLATES)
    torch.testing.assert_close(bank, expected, atol=1e-5, rtol=1e-5)
    # the ensemble is not just one template's embedding
    single = _reference_bank(tiny_clip, ["road"], TEMPLATES[:1])
    assert not torch.allclose(bank[0], single[0], atol=1e-3)

    files = list(cache_dir.glob("*.pt"))
    path = text_bank_cache_path(NAMES, TINY, tiny_clip, TEMPLATES, str(cache_dir))
    assert [str(f) for f in files] == [path]
    record = read_text_bank_cache(path, NAMES)
    assert record["class_names"] == NAMES and record["templates"] == TEMPLATES
    assert record["model"] == TINY and record["pretrained"] == tiny_clip
    assert record["version"] == 1
    torch.testing.assert_close(record["embeddings"], bank)
    assert not [f for f in os.listdir(cache_dir) if f.endswith(".tmp")]

    # Reuse without CLIP: the checkpoint is replaced by garbage with the same size and mtime (the
    # key is unchanged but the weights are unloadable) and open_clip cannot even be imported.
    st = os.stat(tiny_clip)
    original = open(tiny_clip, "rb").read()
    try:
        with open(tiny_clip, "wb") as f:
            f.write(b"\0" * st.st_size)
        os.utime(tiny_clip, ns=(st.st_atime_ns, st.st_mtime_ns))
        monkeypatch.setitem(sys.modules, "open_clip", None)
        again = load_text_bank(
            NAMES,
            clip_model=TINY,
            clip_pretrained=tiny_clip,
            templates=TEMPLATES,
            cache_dir=str(cache_dir),
        )
        torch.testing.assert_close(again, bank, atol=0, rtol=0)
        # an explicit cache file needs neither CLIP nor the checkpoint
        moved = tmp_path / "gone.pt"
        os.replace(tiny_clip, moved)
        from_file = load_text_bank(
            NAMES, clip_model=TINY, clip_pretrained=tiny_clip, cache_file=path, templates=TEMPLATES
        )
        torch.testing.assert_close(from_file, bank, atol=0, rtol=0)
    finally:
        with open(tiny_clip, "wb") as f:
            f.write(original)
        os.utime(tiny_clip, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert len(list(cache_dir.glob("*.pt"))) == 1


def test_cache_key_depends_on_inputs(tiny_clip, tmp_path):
    base = text_bank_cache_key(NAMES, TINY, tiny_clip, TEMPLATES)
    assert base == text_bank_cache_key(list(NAMES), TINY, tiny_clip, list(TEMPLATES))
    assert base != text_bank_cache_key(NAMES[:2], TINY, tiny_clip, TEMPLATES)
    assert base != text_bank_cache_key(
        ["road", "car", "wall-other-merged"], TINY, tiny_clip, TEMPLATES
    )
    assert base != text_bank_cache_key(NAMES, TINY, tiny_clip, TEMPLATES[:2])
    assert base != text_bank_cache_key(NAMES, "ViT-B-16", tiny_clip, TEMPLATES)
    assert base != text_bank_cache_key(NAMES, TINY, tiny_clip, TEMPLATES, clean_names=False)
    assert text_bank_cache_key(NAMES, TINY, "openai") != text_bank_cache_key(NAMES, TINY, "laion2b")
    # a copy of the checkpoint elsewhere is another weights identity (path, size, mtime)
    copy = tmp_path / "copy.pt"
    copy.write_bytes(open(tiny_clip, "rb").read())
    assert base != text_bank_cache_key(NAMES, TINY, str(copy), TEMPLATES)

    d = str(tmp_path / "c")
    p1 = text_bank_cache_path(NAMES, TINY, tiny_clip, TEMPLATES, d)
    p2 = text_bank_cache_path(["road", "car"], TINY, tiny_clip, TEMPLATES, d)
    assert p1 != p2 and os.path.dirname(p1) == d
    b1 = load_text_bank(
        NAMES, clip_model=TINY, clip_pretrained=tiny_clip, templates=TEMPLATES, cache_dir=d
    )
    b2 = load_text_bank(
        ["road", "car"],
        clip_model=TINY,
        clip_pretrained=tiny_clip,
        templates=TEMPLATES,
        cache_dir=d,
    )
    assert sorted(os.listdir(d)) == sorted([os.path.basename(p1), os.path.basename(p2)])
    torch.testing.assert_close(b1[0], b2[0])  # same class, same prompts, same weights


def test_default_cache_dir_from_env(tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTKD_CACHE", str(tmp_path / "envcache"))
    path = text_bank_cache_path(NAMES, TINY, tiny_clip, TEMPLATES)
    assert os.path.dirname(path) == str(tmp_path / "envcache")


def test_missing_checkpoint_path_errors(tiny_clip, tmp_path):
    missing = str(tmp_path / "does_not_exist" / "clip.pt")
    with pytest.raises(FileNotFoundError) as err:
        load_text_bank(NAMES, clip_model=TINY, clip_pretrained=missing, cache_dir=str(tmp_path))
    assert missing in str(err.value) and "build_text_embeddings.py" in str(err.value)
    assert "CACHE_FILE" in str(err.value)
    assert not list(tmp_path.glob("*.pt"))


def test_uncached_tag_errors_without_network(tmp_path, no_network):
    empty = tmp_path / "weights"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load_text_bank(
            ["cat", "dog"],
            clip_model="ViT-B-16",
            clip_pretrained="openai",
            cache_dir=str(tmp_path / "cache"),
            download_cache_dir=str(empty),
        )
    msg = str(err.value)
    assert "openai" in msg and "ViT-B-16" in msg and "build_text_embeddings.py" in msg
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
    with pytest.raises(ValueError, match="no_such_tag"):
        load_text_bank(
            ["cat"],
            clip_model="ViT-B-16",
            clip_pretrained="no_such_tag",
            cache_dir=str(tmp_path / "cache"),
            download_cache_dir=str(empty),
        )


def test_cache_with_other_classes_errors(tiny_clip, tmp_path):
    out = tmp_path / "bank.pt"
    load_text_bank(
        NAMES, clip_model=TINY, clip_pretrained=tiny_clip, templates=TEMPLATES, cache_file=str(out)
    )
    assert out.is_file()
    with pytest.raises(ValueError) as err:
        load_text_bank(
            ["road", "sky"], clip_model=TINY, clip_pretrained=tiny_clip, cache_file=str(out)
        )
    msg = str(err.value)
    assert "traffic_light" in msg and "sky" in msg and str(out) in msg
    with pytest.raises(ValueError, match="2 classes"):
        load_text_bank(NAMES[:2], clip_model=TINY, clip_pretrained=tiny_clip, cache_file=str(out))


def test_missing_cache_without_compute_errors(tiny_clip, tmp_path):
    with pytest.raises(FileNotFoundError, match="compute_if_missing"):
        load_text_bank(
            NAMES,
            clip_model=TINY,
            clip_pretrained=tiny_clip,
            cache_dir=str(tmp_path),
            compute_if_missing=False,
        )


@pytest.mark.parametrize("names", [[], ["road", ""], ["road", "   "], "road"])
def test_empty_class_names_error(names, tmp_path):
    with pytest.raises(ValueError):
        load_text_bank(names, cache_dir=str(tmp_path))
    with pytest.raises(ValueError):
        load_text_bank(names, source="random")


def test_bad_templates_error(tiny_clip, tmp_path):
    for templates in ([], ["no slot here"]):
        with pytest.raises(ValueError, match="template"):
            load_text_bank(
                NAMES,
                clip_model=TINY,
                clip_pretrained=tiny_clip,
                templates=templates,
                cache_dir=str(tmp_path),
            )


def test_random_and_learnable_controls(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "open_clip", None)  # controls never touch CLIP
    a = load_text_bank(NAMES, source="random", dim=16, seed=3)
    b = load_text_bank(NAMES, source="learnable", dim=16, seed=3)
    c = load_text_bank(NAMES, source="random", dim=16, seed=4)
    assert a.shape == (3, 16)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, c)
    gen = torch.Generator().manual_seed(3)
    torch.testing.assert_close(a, F.normalize(torch.randn(3, 16, generator=gen), dim=1))
    torch.testing.assert_close(random_text_bank(3, 16, 3), a)
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match="bogus"):
        load_text_bank(NAMES, source="bogus")


def test_build_text_embeddings_tool(tiny_clip, tmp_path, capsys):
    import build_text_embeddings as tool

    out = tmp_path / "out" / "bank.pt"
    path = tool.main(
        [
            "--classes",
            "road,traffic_light",
            "--clip-model",
            TINY,
            "--clip-pretrained",
            tiny_clip,
            "--output",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert path == str(out) and out.is_file()
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    bank = load_text_bank(["road", "traffic_light"], clip_model=TINY, cache_file=str(out))
    expected = _reference_bank(tiny_clip, ["road", "traffic light"], list(tool.DEFAULT_TEMPLATES))
    torch.testing.assert_close(bank, expected, atol=1e-5, rtol=1e-5)

    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("road\nsky\n\n")
    templates_file = tmp_path / "templates.txt"
    templates_file.write_text("a photo of a {}.\n")
    cache_dir = tmp_path / "cache"
    path2 = tool.main(
        [
            "--classes-file",
            str(classes_file),
            "--templates-file",
            str(templates_file),
            "--clip-model",
            TINY,
            "--clip-pretrained",
            tiny_clip,
            "--cache-dir",
            str(cache_dir),
        ]
    )
    assert path2 == text_bank_cache_path(
        ["road", "sky"], TINY, tiny_clip, ["a photo of a {}."], str(cache_dir)
    )
    assert os.path.isfile(path2)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        tool.main(["--classes-file", str(tmp_path / "nope.txt"), "--clip-model", TINY])
