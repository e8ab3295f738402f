"""The discrete training-scale draw (INPUT.SCALE_SET), as CIRKD's datasets do it.

CIRKD draws ``f = 0.5 + random.randint(0, 15) / 10`` and scales with
``cv2.resize(x, None, fx=f, fy=f)``. The expected arrays come from the reference code
(tests/data/reference/cirkd_scale_draw.npz, made by tests/fixtures/gen_cirkd_scale_fixture.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from textkd.data import transforms as T
from textkd.data.sampling import sample_rng
from textkd.validate import ConfigError, scale_set_problems, validate_config

FIXTURE = Path(__file__).parent / "data" / "reference" / "cirkd_scale_draw.npz"
CIRKD_SET = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0]


def _img_lab(h: int, w: int, seed: int = 0):
    g = np.random.default_rng(seed)
    return g.integers(0, 256, (h, w, 3), dtype=np.uint8), g.integers(0, 5, (h, w), dtype=np.uint8)


def test_rescale_by_factor_matches_cirkd_for_every_outcome():
    ref = np.load(FIXTURE)
    assert list(ref["scales"]) == CIRKD_SET  # 0.5 + k / 10 as the reference computes it
    image = ref["image"]
    label = ref["label"].copy()
    label[label == -1] = 255  # CIRKD's ignore -1 is TextKD's 255
    label = label.astype(np.uint8)
    for i, s in enumerate(ref["scales"]):
        out, lab = T.rescale_by_factor(image, label, float(s))
        want_lab = ref[f"label_{i}"].copy()
        want_lab[want_lab == -1] = 255
        np.testing.assert_array_equal(out, ref[f"image_{i}"], err_msg=f"image at scale {s}")
        np.testing.assert_array_equal(lab, want_lab, err_msg=f"label at scale {s}")


def test_draw_from_set_only_set_values_all_reachable_deterministic():
    seen = [T.draw_scale_from_set(CIRKD_SET, sample_rng(3, p)) for p in range(800)]
    assert set(seen) == set(CIRKD_SET)  # only values of the set, and every one of them
    counts = np.array([seen.count(s) for s in CIRKD_SET])
    assert counts.min() > 20 and counts.max() < 80  # equal probability: 50 expected each
    again = [T.draw_scale_from_set(CIRKD_SET, sample_rng(3, p)) for p in range(800)]
    assert again == seen  # a function of (seed, position) only
    other = [T.draw_scale_from_set(CIRKD_SET, sample_rng(4, p)) for p in range(800)]
    assert other != seen
    assert {T.draw_scale_from_set([0.75], sample_rng(0, p)) for p in range(5)} == {0.75}


def test_train_augment_with_a_scale_set():
    img, lab = _img_lab(20, 30)
    kw = dict(crop_size=(16, 16), pad_value=(0, 0, 0), scale_set=[0.5, 2.0])
    a = T.train_augment(img, lab, sample_rng(0, 7), **kw)
    b = T.train_augment(img, lab, sample_rng(0, 7), **kw)
    assert a[0].shape == (16, 16, 3) and a[1].shape == (16, 16)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    # without a crop the output size tells the drawn factor: only 0.5 or 2.0
    sizes = {
        T.train_augment(img, lab, sample_rng(0, p), crop_size=None, scale_set=[0.5, 2.0])[0].shape
        for p in range(40)
    }
    assert sizes == {(10, 15, 3), (40, 60, 3)}
    # the set replaces the range; an empty set keeps the continuous draw exactly as before
    for p in range(5):
        new = T.train_augment(img, lab, sample_rng(1, p), crop_size=(8, 8), scale_set=[])
        rng = sample_rng(1, p)
        old_img, old_lab = T.random_scale(img, lab, (0.5, 2.0), rng)
        old_img, old_lab = T.random_crop(old_img, old_lab, 8, 8, rng)
        old_img, old_lab = T.random_hflip(old_img, old_lab, rng)
        np.testing.assert_array_equal(new[0], old_img)
        np.testing.assert_array_equal(new[1], old_lab)


@pytest.mark.parametrize("bad", [[], [0.5, 0.0], [-1.0]])
def test_check_scale_set_refuses_empty_and_non_positive(bad):
    with pytest.raises(ValueError, match="scale set must be non-empty with values > 0"):
        T.check_scale_set(bad)


def _cfg(scale_set):
    return {"INPUT": {"SCALE_SET": scale_set}, "SOLVER": {"IMS_PER_BATCH": 16}}


def test_validate_scale_set_names_the_key_and_value():
    assert scale_set_problems(_cfg([])) == []
    assert scale_set_problems(_cfg(CIRKD_SET)) == []
    for bad, shown in (([0.5, 0.0], "[0.0]"), ([1.0, -2.0, float("inf")], "[-2.0, inf]")):
        (msg,) = scale_set_problems(_cfg(bad))
        assert msg.startswith("INPUT.SCALE_SET is ") and shown in msg and "> 0" in msg
    (msg,) = scale_set_problems(_cfg("0.5"))
    assert "must be a list" in msg
    with pytest.raises(ConfigError, match="INPUT.SCALE_SET"):
        validate_config(_cfg([0.0]), "export")


# numbers compared with fixtures computed in one thread (conftest.single_thread)
pytestmark = pytest.mark.single_thread
