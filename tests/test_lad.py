"""Label Assisted Distillation core (textkd.distill.lad): label noising, label code, dual path."""

import math

import pytest
import torch
import torch.nn.functional as F
from textkd.distill import lad
from textkd.distill.losses import channel_wise_divergence
from torch import nn

from benchmarks.reference import noise_labels_loop

K = 6
IGNORE = 255


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _labels(n=3, h=16, w=20, k=K, seed=0):
    lab = torch.randint(0, k, (n, h, w), generator=_gen(seed))
    lab[:, :2, :3] = IGNORE
    return lab


# --------------------------------------------------------------------------- alpha
def test_alpha_for_pixel_std_and_default():
    mean_std = (58.395 + 57.12 + 57.375) / 3
    assert lad.DEFAULT_ALPHA == pytest.approx(100.0 / mean_std)
    assert lad.alpha_for_pixel_std([1.0, 1.0, 1.0]) == pytest.approx(100.0)
    assert lad.alpha_for_pixel_std(2.0, alpha_raw=50.0) == pytest.approx(25.0)
    with pytest.raises(ValueError, match="pixel_std"):
        lad.alpha_for_pixel_std([58.0, 0.0, 57.0])


# --------------------------------------------------------------------------- noise_labels
def test_noise_labels_one_value_per_image_and_class():
    labels = _labels()
    out = lad.noise_labels(labels, K, alpha=2.0, sigma=0.0)
    assert out.shape == (3, 1, 16, 20) and out.dtype == torch.float32
    for n in range(3):
        values = {}
        for k in list(range(K)) + [IGNORE]:
            v = out[n, 0][labels[n] == k]
            assert v.numel() > 0
            assert torch.all(v == v[0]), (n, k)  # sigma = 0: exactly one value
            values[k] = v[0].item()
        # K + 1 distinct values: ignore pixels get a value of their own
        assert len(set(values.values())) == K + 1


def test_noise_labels_differ_between_images_and_calls():
    labels = torch.zeros(2, 4, 4, dtype=torch.long)  # both images: class 0 everywhere
    a = lad.noise_labels(labels, K, sigma=0.0)
    b = lad.noise_labels(labels, K, sigma=0.0)
    assert a[0, 0, 0, 0] != a[1, 0, 0, 0]
    assert not torch.equal(a, b)


def test_noise_labels_pixel_noise_std_is_sigma_alpha():
    alpha, sigma = 1.7, 0.03
    labels = torch.randint(0, K, (4, 64, 64), generator=_gen(1))
    out = lad.noise_labels(labels, K, alpha=alpha, sigma=sigma, generator=_gen(2))
    residuals = []
    for n in range(4):
        for k in range(K):
            v = out[n, 0][labels[n] == k]
            residuals.append(v - v.mean())
    std = torch.cat(residuals).std().item()
    assert std == pytest.approx(sigma * alpha, rel=0.05)


def test_noise_labels_class_values_are_standard_normal_times_alpha():
    alpha = 3.0
    labels = torch.arange(K).repeat_interleave(2).reshape(1, 1, 2 * K).expand(400, 1, 2 * K)
    out = lad.noise_labels(labels.contiguous(), K, alpha=alpha, sigma=0.0, generator=_gen(3))
    w = out[:, 0, 0, ::2] / alpha  # one value per (image, class)
    assert abs(w.mean().item()) < 0.1
    assert w.std().item() == pytest.approx(1.0, rel=0.08)


def test_noise_labels_seeded_generator_reproduces_and_matches_loop():
    labels = _labels(seed=4)
    a = lad.noise_labels(labels, K, generator=_gen(7))
    b = lad.noise_labels(labels, K, generator=_gen(7))
    assert torch.equal(a, b)
    loop = noise_labels_loop(labels, K, generator=_gen(7))
    assert torch.equal(a, loop)
    assert not torch.isnan(loop).any()
    # also with the N×1×H×W label layout
    assert torch.equal(lad.noise_labels(labels[:, None], K, generator=_gen(7)), a)


# --------------------------------------------------------------------------- label_code
def test_label_code_is_deterministic_code():
    alpha = 2.5
    labels = _labels(n=2, seed=5)
    out = lad.label_code(labels, K, alpha=alpha, sigma=0.0)
    c = (K + 1) // 2
    for k in list(range(K)) + [IGNORE]:
        code = ((K if k == IGNORE else k) - c) / 10.0
        assert torch.allclose(out[:, 0][labels == k], torch.tensor(alpha * code), atol=1e-6)
    assert torch.equal(out, lad.label_code(labels, K, alpha=alpha, sigma=0.0))


def test_label_code_voc_values_and_noise():
    # Pascal VOC: K = 21, w_k = (k - 11)/10
    values = lad.label_code_values(21)
    assert values.tolist() == pytest.approx([(k - 11) / 10 for k in range(22)])
    alpha, sigma = 1.7, 0.02
    labels = torch.randint(0, 21, (4, 64, 64), generator=_gen(6))
    out = lad.label_code(labels, 21, alpha=alpha, sigma=sigma, generator=_gen(8))
    residual = out[:, 0] - alpha * (labels.float() - 11) / 10
    assert abs(residual.mean().item()) < 1e-3
    assert residual.std().item() == pytest.approx(sigma * alpha, rel=0.05)


# --------------------------------------------------------------------------- check_labels
@pytest.mark.parametrize("fn", [lad.noise_labels, lad.label_code])
def test_out_of_range_labels_are_named(fn):
    labels = _labels(seed=9)
    labels[0, 5, 5] = 17
    labels[1, 3, 3] = -2
    with pytest.raises(ValueError) as err:
        fn(labels, K)
    assert "17" in str(err.value) and "-2" in str(err.value)


def test_check_labels_accepts_valid_and_rejects_float():
    lad.check_labels(_labels(), K, IGNORE)
    with pytest.raises(ValueError, match="integer"):
        lad.check_labels(_labels().float(), K, IGNORE)
    with pytest.raises(ValueError, match="255"):
        lad.check_labels(_labels(), K, ignore_label=-1)


# --------------------------------------------------------------------------- dual path
def _hand_cwd(zs, zt, tau):
    """τ²/(N·C) Σ_{n,c} KL(softmax_hw(zt/τ) ‖ softmax_hw(zs/τ)) in float64."""
    zs, zt = zs.double().flatten(2) / tau, zt.double().flatten(2) / tau
    pt = torch.softmax(zt, -1)
    kl = (pt * (torch.log(pt) - torch.log(torch.softmax(zs, -1)))).sum()
    return (tau**2 * kl / (zs.shape[0] * zs.shape[1])).item()


def test_dual_path_value_and_gradient_directions():
    z1 = torch.randn(2, K, 5, 6, generator=_gen(10)).requires_grad_()
    z2 = torch.randn(2, K, 5, 6, generator=_gen(11)).requires_grad_()
    value = lad.dual_path_consistency(z1, z2, temperature=4.0)
    expected = _hand_cwd(z1, z2, 4.0) + _hand_cwd(z2, z1, 4.0)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    g1, g2 = torch.autograd.grad(value, (z1, z2))
    # each direction only into its own path: grad wrt z1 is that of CWD(z1 ‖ sg(z2)) alone
    only1 = channel_wise_divergence(z1, z2.detach(), 4.0)
    only2 = channel_wise_divergence(z2, z1.detach(), 4.0)
    (e1,) = torch.autograd.grad(only1, z1)
    (e2,) = torch.autograd.grad(only2, z2)
    torch.testing.assert_close(g1, e1)
    torch.testing.assert_close(g2, e2)
    assert e1.abs().sum() > 0 and e2.abs().sum() > 0
    assert lad.dual_path_consistency(z1, z1.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_dual_path_teacher_step_trains_both_paths():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, K, 1))
    image = torch.randn(2, 3, 8, 8, generator=_gen(12))
    labels = torch.randint(0, K, (2, 8, 8), generator=_gen(13))
    labels[:, 0] = IGNORE
    l1 = lad.noise_labels(labels, K, generator=_gen(14))
    l2 = lad.noise_labels(labels, K, generator=_gen(15))
    assert not torch.equal(l1, l2)
    z1 = model(torch.cat([image, l1], 1))
    z2 = model(torch.cat([image, l2], 1))
    z1.retain_grad()
    z2.retain_grad()
    ce1 = F.cross_entropy(z1, labels, ignore_index=IGNORE)
    ce2 = F.cross_entropy(z2, labels, ignore_index=IGNORE)
    cons = lad.dual_path_consistency(z1, z2)
    assert cons.item() > 0
    (ce1 + ce2 + 5.0 * cons).backward()
    for z in (z1, z2):
        assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    first = model[0].weight.grad
    assert first is not None and first[:, 3].abs().sum() > 0  # the label channel is used
    assert math.isfinite(cons.item())
