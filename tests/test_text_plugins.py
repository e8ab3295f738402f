"""TCD / TRD plugins (METHODS.md section 2): the functional losses against straightforward loop
references, and the TextDistiller's gradient routing, phases and controls. No detectron2."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from textkd.distill.losses import channel_wise_divergence
from textkd.distill.text_plugins import (
    TextDistiller,
    region_weights,
    tcd_loss,
    text_regions,
    text_scores,
    trd_loss,
    trd_mimic_loss,
)

K, D = 5, 8


def _unit(x, dim=1):
    return F.normalize(x, dim=dim)


def _kl(p, q):
    """KL(p ‖ q) of two probability vectors, computed directly."""
    return float(
        sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p.tolist(), q.tolist()) if pi > 0)
    )


# ----------------------------------------------------------------------------- references
def ref_cwd(s, t, tau):
    n, c = s.shape[:2]
    total = 0.0
    for i in range(n):
        for k in range(c):
            total += _kl(
                torch.softmax(t[i, k].flatten().double() / tau, 0),
                torch.softmax(s[i, k].flatten().double() / tau, 0),
            )
    return tau**2 * total / (n * c)


def ref_class_kd(s, t, tau):
    n, _, h, w = s.shape
    total = 0.0
    for i in range(n):
        for y in range(h):
            for x in range(w):
                total += _kl(
                    torch.softmax(t[i, :, y, x].double() / tau, 0),
                    torch.softmax(s[i, :, y, x].double() / tau, 0),
                )
    return tau**2 * total / (n * h * w)


def ref_trd(z_s, z_t, t_scores, text, tau_r, tau_a, min_mass):
    n, k = t_scores.shape[:2]
    losses = []
    for i in range(n):
        masks = [torch.softmax(t_scores[i].double() / tau_r, 0)[c].flatten() for c in range(k)]
        mass = [float(m.sum()) for m in masks]
        kept = [c for c in range(k) if mass[c] > min_mass]
        total_mass = sum(mass[c] for c in kept)
        loss = 0.0
        for c in kept:
            qs, qt = [], []
            for z, out in ((z_s, qs), (z_t, qt)):
                feats = z[i].double().flatten(1)  # D×P
                proto = (feats * masks[c]).sum(1) / mass[c]
                proto = proto / proto.norm()
                out.append(torch.softmax(text.double() @ proto / tau_a, 0))
            loss += mass[c] / total_mass * _kl(qt[0], qs[0])
        losses.append(loss)
    return sum(losses) / n


def ref_mimic(fs, ft, masks):
    n, c = ft.shape[:2]
    k = masks.shape[1]
    total = 0.0
    for i in range(n):
        for r in range(k):
            m = masks[i, r].double()
            for ch in range(c):
                total += float((m * (fs[i, ch].double() - ft[i, ch].double()) ** 2).sum() / m.sum())
    return 0.5 * total / (n * k * c)


# ----------------------------------------------------------------------------- functional losses
def test_text_scores_are_scaled_cosines():
    torch.manual_seed(0)
    z = _unit(torch.randn(2, D, 3, 4))
    text = _unit(torch.randn(K, D))
    s = text_scores(z, text, 0.07)
    assert s.shape == (2, K, 3, 4)
    for k in range(K):
        expected = (z * text[k][None, :, None, None]).sum(1) / 0.07
        torch.testing.assert_close(s[:, k], expected)
    with pytest.raises(ValueError, match="embedding dim"):
        text_scores(z, torch.randn(K, D + 1))


@pytest.mark.parametrize("mode", ["spatial", "class", "mse"])
def test_tcd_zero_for_identical_inputs(mode):
    torch.manual_seed(1)
    s = torch.randn(2, K, 6, 6) * 5
    assert tcd_loss(s, s.clone(), 4.0, mode).abs().item() < 1e-6
    assert tcd_loss(s, s.flip(-1), 4.0, mode).item() > 1e-4


def test_tcd_spatial_is_cwd_and_matches_reference():
    torch.manual_seed(2)
    s, t = torch.randn(2, K, 5, 7) * 3, torch.randn(2, K, 5, 7) * 3
    out = tcd_loss(s, t, 4.0, "spatial")
    torch.testing.assert_close(out, channel_wise_divergence(s, t, 4.0))
    assert out.item() == pytest.approx(ref_cwd(s, t, 4.0), rel=1e-4)
    assert tcd_loss(s, t, 2.0, "spatial").item() == pytest.approx(ref_cwd(s, t, 2.0), rel=1e-4)


def test_tcd_class_and_mse_match_reference():
    torch.manual_seed(3)
    s, t = torch.randn(2, K, 4, 5) * 3, torch.randn(2, K, 4, 5) * 3
    assert tcd_loss(s, t, 4.0, "class").item() == pytest.approx(ref_class_kd(s, t, 4.0), rel=1e-4)
    assert tcd_loss(s, t, 1.0, "class").item() == pytest.approx(ref_class_kd(s, t, 1.0), rel=1e-4)
    assert tcd_loss(s, t, 4.0, "mse").item() == pytest.approx(
        float(((s - t) ** 2).mean()), rel=1e-5
    )
    with pytest.raises(ValueError, match="bogus"):
        tcd_loss(s, t, 4.0, "bogus")


@pytest.mark.parametrize("mode", ["spatial", "class", "mse"])
def test_tcd_finite_with_large_logits_and_teacher_detached(mode):
    torch.manual_seed(4)
    s = (torch.randn(2, K, 6, 6) * 1e4).requires_grad_(True)
    t = (torch.randn(2, K, 6, 6) * 1e4).requires_grad_(True)
    loss = tcd_loss(s, t, 4.0, mode)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert t.grad is None


def test_tcd_resizes_student_to_teacher():
    torch.manual_seed(5)
    s, t = torch.randn(2, K, 4, 4), torch.randn(2, K, 8, 8)
    up = F.interpolate(s, size=(8, 8), mode="bilinear", align_corners=False)
    for mode in ("spatial", "class", "mse"):
        torch.testing.assert_close(tcd_loss(s, t, 4.0, mode), tcd_loss(up, t, 4.0, mode))


def test_trd_zero_for_identical_and_matches_reference():
    torch.manual_seed(6)
    text = _unit(torch.randn(K, D))
    z_t = _unit(torch.randn(2, D, 5, 6))
    z_s = _unit(torch.randn(2, D, 5, 6))
    t_scores = text_scores(z_t, text, 0.07)
    assert trd_loss(z_t.clone(), z_t, t_scores, text).abs().item() < 1e-6
    out = trd_loss(z_s, z_t, t_scores, text, 1.0, 0.07, 1.0)
    assert out.item() > 1e-3
    assert out.item() == pytest.approx(ref_trd(z_s, z_t, t_scores, text, 1.0, 0.07, 1.0), rel=1e-4)
    out2 = trd_loss(z_s, z_t, t_scores * 0.2, text, 2.0, 0.5, 3.0)
    assert out2.item() == pytest.approx(
        ref_trd(z_s, z_t, t_scores * 0.2, text, 2.0, 0.5, 3.0), rel=1e-4
    )


def test_trd_drops_regions_below_min_mass():
    """4×4 image, K=3: class 0 owns 15 pixels, class 1 one pixel, class 2 none (hard teacher
    scores). With min_mass=1 only region 0 counts; with min_mass=0.5 region 1 counts too."""
    torch.manual_seed(7)
    k, h, w = 3, 4, 4
    labels = torch.zeros(h, w, dtype=torch.long)
    labels[2, 3] = 1
    t_scores = (F.one_hot(labels, k).permute(2, 0, 1).float() * 60.0 - 30.0)[None]
    text = _unit(torch.randn(k, D))
    z_t = _unit(torch.randn(1, D, h, w))
    z_s = _unit(torch.randn(1, D, h, w))
    mass = text_regions(t_scores).flatten(2).sum(-1)[0]
    assert mass[0].item() == pytest.approx(15.0, abs=1e-3)
    assert mass[1].item() == pytest.approx(1.0, abs=1e-3) and mass[1].item() <= 1.0
    assert mass[2].item() < 1e-3

    only0 = trd_loss(z_s, z_t, t_scores, text, 1.0, 0.07, min_mass=1.0)
    assert only0.item() == pytest.approx(
        ref_trd(z_s, z_t, t_scores, text, 1.0, 0.07, 1.0), rel=1e-4
    )
    # the student feature at region 1's pixel (and region 1 itself) cannot change the loss
    z_s2 = z_s.clone()
    z_s2[..., 2, 3] = _unit(torch.randn(D), dim=0)
    torch.testing.assert_close(trd_loss(z_s2, z_t, t_scores, text, 1.0, 0.07, 1.0), only0)
    with_1 = trd_loss(z_s2, z_t, t_scores, text, 1.0, 0.07, min_mass=0.5)
    assert with_1.item() == pytest.approx(
        ref_trd(z_s2, z_t, t_scores, text, 1.0, 0.07, 0.5), rel=1e-4
    )
    assert abs(with_1.item() - only0.item()) > 1e-4


def test_region_weights_sum_to_one():
    torch.manual_seed(8)
    t_scores = torch.randn(3, K, 6, 6) * 4
    mass = text_regions(t_scores).flatten(2).sum(-1)
    w = region_weights(mass, 1.0)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    assert (w[mass <= 1.0] == 0).all()
    kept = mass * (mass > 1.0)
    torch.testing.assert_close(w, kept / kept.sum(1, keepdim=True))
    none_kept = region_weights(torch.tensor([[0.5, 0.5], [3.0, 1.0]]), 1.0)
    torch.testing.assert_close(none_kept, torch.tensor([[0.0, 0.0], [1.0, 0.0]]))


def test_trd_gradients_reach_student_only():
    torch.manual_seed(9)
    text = _unit(torch.randn(K, D))
    z_s = _unit(torch.randn(2, D, 4, 4)).requires_grad_(True)
    z_t = _unit(torch.randn(2, D, 8, 8)).requires_grad_(True)
    t_scores = text_scores(z_t, text, 0.07)
    loss = trd_loss(z_s, z_t, t_scores, text)  # student at half the teacher's size
    loss.backward()
    assert torch.isfinite(loss) and z_s.grad.abs().sum() > 0
    assert z_t.grad is None


def test_trd_mimic_matches_reference():
    torch.manual_seed(10)
    fs, ft = torch.randn(2, 6, 5, 5), torch.randn(2, 6, 5, 5)
    masks = text_regions(torch.randn(2, K, 5, 5) * 3)
    assert trd_mimic_loss(ft.clone(), ft, masks).item() == pytest.approx(0.0, abs=1e-7)
    assert trd_mimic_loss(fs, ft, masks).item() == pytest.approx(ref_mimic(fs, ft, masks), rel=1e-5)
    small = torch.randn(2, 6, 3, 3)
    up = F.interpolate(small, size=(5, 5), mode="bilinear", align_corners=False)
    torch.testing.assert_close(trd_mimic_loss(small, ft, masks), trd_mimic_loss(up, ft, masks))


# ----------------------------------------------------------------------------- TextDistiller
def _inputs(seed=0, cs=12, ct=20):
    torch.manual_seed(seed)
    f_s = torch.randn(2, cs, 6, 6, requires_grad=True)
    f_t = torch.randn(2, ct, 8, 8, requires_grad=True)
    targets = torch.randint(0, K, (2, 32, 32))
    targets[:, :4] = 255
    return f_s, f_t, targets


def _grad_norm(module):
    grads = [p.grad.abs().sum() for p in module.parameters() if p.grad is not None]
    return float(sum(grads)) if grads else 0.0


def _distiller(**kw):
    torch.manual_seed(11)
    args = dict(
        text_embeddings=torch.randn(K, D), student_channels=12, teacher_channels=20, proj_hidden=16
    )
    args.update(kw)
    return TextDistiller(**args)


def test_distiller_loss_keys_and_weights():
    f_s, f_t, y = _inputs()
    full = _distiller(
        tcd_weight=3.0, trd_weight=1.0, trd_mimic_weight=2.0, student_align_weight=0.5
    )
    losses = full(f_s, f_t, y)
    assert set(losses) == {
        "loss_text_probe",
        "loss_tcd",
        "loss_trd",
        "loss_trd_mimic",
        "loss_text_align",
    }
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values())
    # weights multiply the functional losses computed on the same text space
    with torch.no_grad():
        text = full.text_bank()
        z_t = full.embed_teacher(f_t)
        z_s = full.embed_student(f_s)
        st, ss = text_scores(z_t, text, 0.07), text_scores(z_s, text, 0.07)
        torch.testing.assert_close(losses["loss_tcd"], 3.0 * tcd_loss(ss, st, 4.0, "spatial"))
        torch.testing.assert_close(losses["loss_trd"], trd_loss(z_s, z_t, st, text))
        up = F.interpolate(st, size=(32, 32), mode="bilinear", align_corners=False)
        torch.testing.assert_close(
            losses["loss_text_probe"], F.cross_entropy(up, y, ignore_index=255)
        )
        masks = text_regions(st)
        torch.testing.assert_close(
            losses["loss_trd_mimic"], 2.0 * trd_mimic_loss(full.mimic_adapter(f_s), f_t, masks)
        )

    only_tcd = _distiller(tcd_weight=3.0)
    assert set(only_tcd(f_s, f_t, y)) == {"loss_text_probe", "loss_tcd"}
    assert only_tcd.mimic_adapter is None
    align_only = _distiller(student_align_weight=1.0)
    assert set(align_only(f_s, f_t, y)) == {"loss_text_align"}
    assert align_only.teacher_probe is None
    with pytest.raises(ValueError, match="bogus"):
        _distiller(tcd_weight=1.0, tcd_mode="bogus")
    with pytest.raises(ValueError, match="probe_mode"):
        _distiller(tcd_weight=1.0, probe_mode="later")
    with pytest.raises(ValueError, match="targets"):
        only_tcd(f_s, f_t, None)


def test_probe_trained_only_by_its_ce_and_teacher_gets_no_gradient():
    d = _distiller(tcd_weight=3.0, trd_weight=1.0, trd_mimic_weight=1.0)
    f_s, f_t, y = _inputs(1)
    losses = d(f_s, f_t, y)
    (losses["loss_tcd"] + losses["loss_trd"] + losses["loss_trd_mimic"]).backward(retain_graph=True)
    assert _grad_norm(d.teacher_probe) == 0.0
    assert _grad_norm(d.student_proj) > 0 and _grad_norm(d.mimic_adapter) > 0
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert f_t.grad is None
    d.zero_grad()
    losses["loss_text_probe"].backward()
    assert _grad_norm(d.teacher_probe) > 0
    assert _grad_norm(d.student_proj) == 0.0
    assert f_t.grad is None


def test_pretrain_mode_switches_and_freezes_probe():
    d = _distiller(tcd_weight=3.0, trd_weight=1.0, probe_mode="pretrain", probe_pretrain_iters=2)
    f_s, f_t, y = _inputs(2)
    with pytest.raises(ValueError, match="iteration"):
        d(f_s, f_t, y)
    early = d(f_s, f_t, y, iteration=1)
    assert early["loss_text_probe"].item() > 0 and early["loss_text_probe"].requires_grad
    assert early["loss_tcd"].item() == 0 and early["loss_trd"].item() == 0
    sum(early.values()).backward()
    assert _grad_norm(d.teacher_probe) > 0
    probe_before = d.teacher_probe.weight.detach().clone()

    late = d(f_s, f_t, y, iteration=2)
    assert all(not p.requires_grad and p.grad is None for p in d.teacher_probe.parameters())
    assert late["loss_tcd"].item() > 0 and late["loss_trd"].item() > 0
    assert late["loss_text_probe"].item() == 0 and not late["loss_text_probe"].requires_grad
    d.zero_grad()
    sum(late.values()).backward()
    assert all(p.grad is None for p in d.teacher_probe.parameters())
    assert _grad_norm(d.student_proj) > 0
    torch.testing.assert_close(d.teacher_probe.weight, probe_before)


def test_text_bank_frozen_buffer_or_learnable_parameter():
    bank = torch.randn(K, D) * 3
    frozen = _distiller(text_embeddings=bank, tcd_weight=1.0, trd_weight=1.0)
    assert "text" in dict(frozen.named_buffers())
    assert "text" not in dict(frozen.named_parameters())
    torch.testing.assert_close(frozen.text, F.normalize(bank, dim=1))
    f_s, f_t, y = _inputs(3)
    sum(frozen(f_s, f_t, y).values()).backward()
    torch.testing.assert_close(frozen.text, F.normalize(bank, dim=1))

    learn = _distiller(text_embeddings=bank, tcd_weight=1.0, trd_weight=1.0, learnable_text=True)
    assert isinstance(learn.text, nn.Parameter)
    losses = learn(f_s, f_t, y)
    (losses["loss_tcd"] + losses["loss_trd"]).backward()
    assert learn.text.grad is not None and learn.text.grad.abs().sum() > 0


def test_all_ignored_targets_give_zero_probe_loss():
    d = _distiller(tcd_weight=1.0, student_align_weight=1.0)
    f_s, f_t, _ = _inputs(4)
    y = torch.full((2, 32, 32), 255, dtype=torch.long)
    losses = d(f_s, f_t, y)
    assert losses["loss_text_probe"].item() == 0 and losses["loss_text_align"].item() == 0
    assert all(torch.isfinite(v) for v in losses.values())
    bad = torch.full((2, 32, 32), K, dtype=torch.long)
    with pytest.raises(ValueError, match=str(K)):
        d(f_s, f_t, bad)
