"""Distillation loss functions (textkd.distill.losses) against hand computations and the loop
references of benchmarks.reference. Pure PyTorch, no detectron2."""

import math

import pytest
import torch
import torch.nn.functional as F
from textkd.distill import losses as L

from benchmarks import reference as R

# --------------------------------------------------------------------------- hand references
# Written with Python floats and explicit loops over tiny tensors, independent of the library.


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    z = sum(e)
    return [v / z for v in e]


def _kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    a = [x - ma for x in a]
    b = [y - mb for y in b]
    return sum(x * y for x, y in zip(a, b)) / (
        math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    )


def _pixel(t, n, i, j):
    """Channel vector of pixel (i, j) of image n as a list of floats."""
    return [float(v) for v in t[n, :, i, j]]


def hand_pixel_kd(zs, zt, tau):
    n, k, h, w = zs.shape
    total = 0.0
    for a in range(n):
        for i in range(h):
            for j in range(w):
                ps = _softmax([v / tau for v in _pixel(zs, a, i, j)])
                pt = _softmax([v / tau for v in _pixel(zt, a, i, j)])
                total += _kl(pt, ps)
    return tau * tau * total / (n * h * w)


def hand_cwd(zs, zt, tau):
    n, c, h, w = zs.shape
    total = 0.0
    for a in range(n):
        for ch in range(c):
            ps = _softmax([float(v) / tau for v in zs[a, ch].flatten()])
            pt = _softmax([float(v) / tau for v in zt[a, ch].flatten()])
            total += _kl(pt, ps)
    return tau * tau * total / (n * c)


def _maxpool2_ceil(f):
    """2×2 stride-2 max pooling with ceil mode: windows at the border are clipped."""
    n, c, h, w = f.shape
    oh, ow = (h + 1) // 2, (w + 1) // 2
    out = [[[[0.0] * ow for _ in range(oh)] for _ in range(c)] for _ in range(n)]
    for a in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    vals = [
                        float(f[a, ch, y, x])
                        for y in range(2 * i, min(2 * i + 2, h))
                        for x in range(2 * j, min(2 * j + 2, w))
                    ]
                    out[a][ch][i][j] = max(vals)
    return out, oh, ow


def hand_skd(fs, ft):
    ps, oh, ow = _maxpool2_ceil(fs)
    pt, _, _ = _maxpool2_ceil(ft)
    n, c = fs.shape[:2]
    pix = [(i, j) for i in range(oh) for j in range(ow)]
    total = 0.0
    for a in range(n):
        for p in pix:
            for q in pix:
                vs_p = [ps[a][ch][p[0]][p[1]] for ch in range(c)]
                vs_q = [ps[a][ch][q[0]][q[1]] for ch in range(c)]
                vt_p = [pt[a][ch][p[0]][p[1]] for ch in range(c)]
                vt_q = [pt[a][ch][q[0]][q[1]] for ch in range(c)]
                total += (_cos(vs_p, vs_q) - _cos(vt_p, vt_q)) ** 2
    return total / (n * len(pix) ** 2)


def hand_ifvd(fs, ft, labels, num_classes):
    """Labels already at feature resolution."""
    n, c, h, w = fs.shape
    sq = 0.0
    for a in range(n):
        protos = {}
        for k in range(num_classes):
            pts = [(i, j) for i in range(h) for j in range(w) if int(labels[a, i, j]) == k]
            if pts:
                ps = [sum(float(fs[a, ch, i, j]) for i, j in pts) / len(pts) for ch in range(c)]
                pt = [sum(float(ft[a, ch, i, j]) for i, j in pts) / len(pts) for ch in range(c)]
                protos[k] = (ps, pt)
        for i in range(h):
            for j in range(w):
                k = int(labels[a, i, j])
                if k in protos:
                    cs = _cos(_pixel(fs, a, i, j), protos[k][0])
                    ct = _cos(_pixel(ft, a, i, j), protos[k][1])
                else:  # ignored pixel: its own feature is the prototype
                    cs = ct = 1.0
                sq += (cs - ct) ** 2
    return sq / (n * h * w)


def hand_cirkd(fs, ft, tau):
    b, c, h, w = fs.shape
    pix = [(i, j) for i in range(h) for j in range(w)]
    total = 0.0
    for x in range(b):
        for y in range(b):
            kl = 0.0
            for p in pix:
                row_s = [_cos(_pixel(fs, x, *p), _pixel(fs, y, *q)) / tau for q in pix]
                row_t = [_cos(_pixel(ft, x, *p), _pixel(ft, y, *q)) / tau for q in pix]
                kl += _kl(_softmax(row_t), _softmax(row_s))
            total += kl / len(pix)
    return total / (b * b)


def hand_dist(zs, zt, beta, gamma, tau):
    n, k, h, w = zs.shape
    rows_s, rows_t = [], []
    for a in range(n):
        for i in range(h):
            for j in range(w):
                rows_s.append(_softmax([v / tau for v in _pixel(zs, a, i, j)]))
                rows_t.append(_softmax([v / tau for v in _pixel(zt, a, i, j)]))
    inter = sum(_pearson(s, t) for s, t in zip(rows_s, rows_t)) / len(rows_s)
    cols_s = [[r[c] for r in rows_s] for c in range(k)]
    cols_t = [[r[c] for r in rows_t] for c in range(k)]
    intra = sum(_pearson(s, t) for s, t in zip(cols_s, cols_t)) / k
    return tau * tau * (beta * (1 - inter) + gamma * (1 - intra))


# --------------------------------------------------------------------------- fixtures/helpers
def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=_gen(seed)) * scale


# (name, callable taking (student, teacher), tensor kind)
def _labels_for(t, num_classes=4, seed=5):
    n, _, h, w = t.shape
    lab = torch.randint(0, num_classes, (n, h, w), generator=_gen(seed))
    lab[:, 0, 0] = 255
    return lab


LOSSES = {
    "kd": lambda s, t: L.pixel_kd(s, t, temperature=2.0),
    "cwd": lambda s, t: L.channel_wise_divergence(s, t, temperature=4.0),
    "skd": lambda s, t: L.structural_kd(s, t),
    "ifvd": lambda s, t: L.ifvd(s, t, _labels_for(t), num_classes=4),
    "cirkd": lambda s, t: L.cirkd_pixel_pairs(s, t, temperature=0.1),
    "cirkd_pool": lambda s, t: L.cirkd_pixel_pairs(s, t, temperature=0.1, pooling=True),
    "dist": lambda s, t: L.dist(s, t, beta=1.0, gamma=2.0),
}


# --------------------------------------------------------------------------- hand computations
def test_pixel_kd_matches_hand_kl():
    zs, zt = _rand(2, 3, 2, 2, seed=1, scale=2), _rand(2, 3, 2, 2, seed=2, scale=2)
    for tau in (1.0, 3.0):
        got = L.pixel_kd(zs, zt, temperature=tau)
        assert got.item() == pytest.approx(hand_pixel_kd(zs, zt, tau), rel=1e-5, abs=1e-7)


def test_cwd_matches_hand_kl():
    zs, zt = _rand(2, 3, 2, 3, seed=3, scale=3), _rand(2, 3, 2, 3, seed=4, scale=3)
    for tau in (1.0, 4.0):
        got = L.channel_wise_divergence(zs, zt, temperature=tau)
        assert got.item() == pytest.approx(hand_cwd(zs, zt, tau), rel=1e-5, abs=1e-7)


def test_structural_kd_matches_hand_computation_with_ceil_pooling():
    # 5×3 features pool to 3×2 with clipped border windows (ceil mode)
    fs, ft = _rand(2, 3, 5, 3, seed=5), _rand(2, 3, 5, 3, seed=6)
    got = L.structural_kd(fs, ft)
    assert got.item() == pytest.approx(hand_skd(fs, ft), rel=1e-5, abs=1e-7)


def test_ifvd_matches_hand_computation_with_ignore():
    fs, ft = _rand(2, 3, 3, 4, seed=7), _rand(2, 3, 3, 4, seed=8)
    labels = torch.tensor(
        [
            [[0, 0, 1, 1], [0, 2, 2, 255], [255, 2, 1, 1]],
            [[3, 3, 3, 3], [1, 1, 255, 255], [0, 0, 0, 3]],
        ]
    )
    got = L.ifvd(fs, ft, labels, num_classes=4)
    # the implementations divide by (count + 1e-6): relative difference ~1e-6
    assert got.item() == pytest.approx(hand_ifvd(fs, ft, labels, 4), rel=1e-4, abs=1e-7)


def test_ifvd_resizes_labels_nearest_to_feature_size():
    fs, ft = _rand(1, 2, 2, 3, seed=9), _rand(1, 2, 2, 3, seed=10)
    small = torch.tensor([[[0, 1, 1], [2, 2, 0]]])
    big = small.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)  # 8×12, exact blocks
    a = L.ifvd(fs, ft, big, num_classes=3)
    b = hand_ifvd(fs, ft, small, 3)
    assert a.item() == pytest.approx(b, rel=1e-4, abs=1e-7)


def test_cirkd_matches_hand_computation():
    fs, ft = _rand(2, 3, 2, 2, seed=11), _rand(2, 3, 2, 2, seed=12)
    for tau in (0.1, 1.0):
        got = L.cirkd_pixel_pairs(fs, ft, temperature=tau)
        assert got.item() == pytest.approx(hand_cirkd(fs, ft, tau), rel=1e-4, abs=1e-6)


def test_cirkd_pooling_is_2x2_average_with_ceil_mode():
    fs, ft = _rand(2, 3, 4, 3, seed=13), _rand(2, 3, 4, 3, seed=14)

    def pool(f):  # 4×3 -> 2×2; the right column windows hold only one column
        out = torch.zeros(2, 3, 2, 2)
        for i in range(2):
            for j in range(2):
                out[:, :, i, j] = f[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(2, 3))
        return out

    got = L.cirkd_pixel_pairs(fs, ft, temperature=0.5, pooling=True)
    assert got.item() == pytest.approx(hand_cirkd(pool(fs), pool(ft), 0.5), rel=1e-4, abs=1e-6)


def test_dist_matches_hand_pearson():
    zs, zt = _rand(2, 4, 2, 3, seed=15, scale=2), _rand(2, 4, 2, 3, seed=16, scale=2)
    for beta, gamma, tau in ((1.0, 1.0, 1.0), (0.5, 2.0, 2.0)):
        got = L.dist(zs, zt, beta=beta, gamma=gamma, temperature=tau)
        assert got.item() == pytest.approx(hand_dist(zs, zt, beta, gamma, tau), rel=1e-5)


# --------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_zero_for_identical_inputs(name):
    x = _rand(2, 4, 6, 5, seed=17, scale=3)
    value = LOSSES[name](x.clone(), x.clone())
    assert value.dim() == 0
    assert abs(value.item()) < 1e-5
    other = _rand(2, 4, 6, 5, seed=18, scale=3)
    assert LOSSES[name](other, x).item() > 1e-4


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_reaches_only_the_student(name):
    s = _rand(2, 4, 6, 5, seed=19).requires_grad_()
    t = _rand(2, 4, 6, 5, seed=20).requires_grad_()
    LOSSES[name](s, t).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_student_is_resized_bilinearly_to_the_teacher(name):
    s = _rand(2, 4, 3, 4, seed=21)
    t = _rand(2, 4, 6, 8, seed=22)
    resized = F.interpolate(s, size=(6, 8), mode="bilinear", align_corners=False)
    assert LOSSES[name](s, t).item() == pytest.approx(LOSSES[name](resized, t).item(), rel=1e-5)


# losses that compare each model's own similarity structure (METHODS.md §1): any two widths
SIMILARITY_LOSSES = ("skd", "ifvd", "cirkd", "cirkd_pool")


@pytest.mark.parametrize("name", sorted(set(LOSSES) - set(SIMILARITY_LOSSES)))
def test_channel_mismatch_names_both_shapes(name):
    s, t = _rand(2, 3, 6, 5), _rand(2, 4, 6, 5)
    with pytest.raises(ValueError) as err:
        LOSSES[name](s, t)
    assert "(2, 3, 6, 5)" in str(err.value) and "(2, 4, 6, 5)" in str(err.value)


@pytest.mark.parametrize("name", SIMILARITY_LOSSES)
def test_similarity_losses_take_raw_features_of_other_widths(name):
    """A 3-channel student against a 4-channel teacher: the loss is that of the student padded
    with a zero channel (which changes none of its similarities), so the raw width is used."""
    s, t = _rand(2, 3, 6, 5, seed=25), _rand(2, 4, 6, 5, seed=26)
    padded = torch.cat([s, torch.zeros(2, 1, 6, 5)], dim=1)
    got = LOSSES[name](s, t)
    assert torch.isfinite(got) and got.item() > 0
    assert got.item() == pytest.approx(LOSSES[name](padded, t).item(), rel=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_finite_for_large_values(name):
    s = _rand(2, 4, 6, 5, seed=23, scale=1e4).requires_grad_()
    t = _rand(2, 4, 6, 5, seed=24, scale=1e4)
    value = LOSSES[name](s, t)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_low_precision_inputs_are_computed_in_float32(name):
    s = _rand(2, 4, 6, 5, seed=25).to(torch.bfloat16)
    t = _rand(2, 4, 6, 5, seed=26).to(torch.bfloat16)
    expected = LOSSES[name](s.float(), t.float())
    got = LOSSES[name](s, t)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_autocast = LOSSES[name](s.float(), t.float())
    assert in_autocast.dtype == torch.float32
    assert in_autocast.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)


def test_bad_temperature_and_labels_are_errors():
    x = _rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match="temperature"):
        L.channel_wise_divergence(x, x, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        L.cirkd_pixel_pairs(x, x, temperature=-1.0)
    bad = torch.zeros(1, 4, 4, dtype=torch.long)
    bad[0, 1, 1] = 7
    with pytest.raises(ValueError, match="7"):
        L.ifvd(x, x, bad, num_classes=4)
    with pytest.raises(ValueError, match="N×H×W"):
        L.ifvd(x, x, torch.zeros(2, 4, 4, dtype=torch.long), num_classes=4)


# --------------------------------------------------------------------------- loop references
@pytest.mark.parametrize("num_classes", [19, 150])
def test_ifvd_equals_loop_reference(num_classes):
    fs = _rand(2, 16, 6, 7, seed=27).requires_grad_()
    ft = _rand(2, 16, 6, 7, seed=28)
    labels = torch.randint(0, num_classes, (2, 24, 28), generator=_gen(29))
    labels[:, :4, :5] = 255
    a = L.ifvd(fs, ft, labels, num_classes)
    (ga,) = torch.autograd.grad(a, fs)
    b = R.ifvd_loop(fs, ft, labels, num_classes)
    (gb,) = torch.autograd.grad(b, fs)
    assert a.item() > 0
    assert abs(a.item() - b.item()) < 1e-5
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("batch", [2, 4])
@pytest.mark.parametrize("pooling", [False, True])
def test_cirkd_equals_loop_reference(batch, pooling):
    fs = _rand(batch, 8, 6, 5, seed=30).requires_grad_()
    ft = _rand(batch, 8, 6, 5, seed=31)
    a = L.cirkd_pixel_pairs(fs, ft, temperature=0.1, pooling=pooling)
    (ga,) = torch.autograd.grad(a, fs)
    b = R.cirkd_pixel_pairs_loop(fs, ft, temperature=0.1, pooling=pooling)
    (gb,) = torch.autograd.grad(b, fs)
    assert abs(a.item() - b.item()) < 1e-5
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        assert abs(L.cirkd_pixel_pairs(fs, ft, 0.1, pooling).item() - a.item()) < 1e-6


def test_structural_kd_equals_loop_reference():
    fs, ft = _rand(3, 8, 7, 6, seed=32), _rand(3, 8, 7, 6, seed=33)
    assert abs(L.structural_kd(fs, ft).item() - R.structural_kd_loop(fs, ft).item()) < 1e-5


def _saved_numels(fn):
    """Sizes of the tensors autograd keeps for the backward pass while ``fn`` runs."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sizes


def test_cirkd_keeps_no_pair_map_for_backward():
    b, c, h, w = 4, 4, 12, 12
    p = h * w
    fs = _rand(b, c, h, w, seed=34).requires_grad_()
    ft = _rand(b, c, h, w, seed=35)
    vec = _saved_numels(lambda: L.cirkd_pixel_pairs(fs, ft))
    loop = _saved_numels(lambda: R.cirkd_pixel_pairs_loop(fs, ft))
    # the loop reference keeps hw×hw maps of all B² pairs; the vectorised loss none
    assert sum(loop) >= b * b * p * p
    assert max(vec) < p * p and sum(vec) < 10 * b * c * p
