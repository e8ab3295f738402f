"""Distillation terms by configuration (textkd.distill.terms): parsing and the Distiller."""

import pytest
import torch
import torch.nn.functional as F
from textkd.distill import losses as L
from textkd.distill.terms import DEFAULTS, METHODS, Distiller, TermSpec, parse_terms
from textkd.models.outputs import SegOutput

K = 5


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _output(seed, feat_channels=8, k=K, size=(6, 7), aux=True, batch=2):
    g = _gen(seed)
    h, w = size
    return SegOutput(
        logits=torch.randn(batch, k, h, w, generator=g),
        feature=torch.randn(batch, feat_channels, h, w, generator=g),
        aux_logits=torch.randn(batch, k, h, w, generator=g) if aux else None,
    )


def _channels(out):
    return {
        "logits": out.logits.shape[1],
        "feature": out.feature.shape[1],
        "aux_logits": None if out.aux_logits is None else out.aux_logits.shape[1],
    }


# --------------------------------------------------------------------------- parse_terms
def test_parse_terms_reads_upper_case_keys_as_lower_case_kwargs():
    specs = parse_terms(
        {
            "cwd_logits": {"METHOD": "cwd", "INPUT": "logits", "WEIGHT": 3.0, "TEMPERATURE": 4.0},
            "dist_aux": {"METHOD": "dist", "INPUT": "aux_logits", "WEIGHT": 0.4, "BETA": 2.0},
        }
    )
    assert [s.name for s in specs] == ["cwd_logits", "dist_aux"]
    assert specs[0] == TermSpec("cwd_logits", "cwd", "logits", 3.0, {"temperature": 4.0})
    assert specs[1] == TermSpec("dist_aux", "dist", "aux_logits", 0.4, {"beta": 2.0})


def test_parse_terms_defaults_input_per_method_and_weight_one():
    specs = parse_terms({"a": {"METHOD": "skd"}, "b": {"METHOD": "kd"}, "c": {"METHOD": "CIRKD"}})
    assert [(s.method, s.input, s.weight) for s in specs] == [
        ("skd", "feature", 1.0),
        ("kd", "logits", 1.0),
        ("cirkd", "feature", 1.0),
    ]


def test_parse_terms_skips_zero_weight():
    specs = parse_terms({"off": {"METHOD": "kd", "WEIGHT": 0.0}, "on": {"METHOD": "kd"}})
    assert [s.name for s in specs] == ["on"]


def test_defaults_document_the_reference_settings():
    specs = {s.name: s for s in parse_terms(DEFAULTS)}
    assert (specs["kd"].weight, specs["kd"].params["temperature"]) == (1.0, 1.0)
    assert (specs["cwd_logits"].weight, specs["cwd_logits"].params["temperature"]) == (3.0, 4.0)
    assert (specs["cwd_feature"].input, specs["cwd_feature"].weight) == ("feature", 50.0)
    assert specs["skd"].weight == 10.0 and specs["ifvd"].weight == 20.0
    assert (specs["cirkd"].weight, specs["cirkd"].params["temperature"]) == (1.0, 0.1)
    assert specs["dist"].params == {"beta": 1.0, "gamma": 1.0} and specs["dist"].weight == 1.0
    assert (specs["dist_aux"].input, specs["dist_aux"].weight) == ("aux_logits", 0.4)


def test_unknown_method_lists_choices():
    with pytest.raises(ValueError) as err:
        parse_terms({"x": {"METHOD": "fitnet"}})
    msg = str(err.value)
    assert "'x'" in msg and "fitnet" in msg
    for choice in ("kd", "cwd", "skd", "ifvd", "cirkd", "dist"):
        assert f"'{choice}'" in msg
    assert sorted(METHODS) == ["cirkd", "cwd", "dist", "ifvd", "kd", "skd"]


def test_unknown_parameter_names_term_key_and_accepted():
    with pytest.raises(ValueError) as err:
        parse_terms({"my_skd": {"METHOD": "skd", "TEMPERATURE": 2.0}})
    msg = str(err.value)
    assert "my_skd" in msg and "TEMPERATURE" in msg and "accepted" in msg
    with pytest.raises(ValueError) as err:
        parse_terms({"c": {"METHOD": "cirkd", "TAU": 0.1}})
    msg = str(err.value)
    assert "'TAU'" in msg and "TEMPERATURE" in msg and "POOLING" in msg
    # parameters the Distiller supplies are not settable
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        parse_terms({"i": {"METHOD": "ifvd", "NUM_CLASSES": 3}})


def test_missing_method_and_bad_weight_are_errors():
    with pytest.raises(ValueError, match="'t'.*METHOD"):
        parse_terms({"t": {"INPUT": "logits"}})
    with pytest.raises(ValueError, match="weight"):
        parse_terms({"t": {"METHOD": "kd", "WEIGHT": -1.0}})
    with pytest.raises(ValueError, match="mapping"):
        parse_terms({"t": 3.0})
    with pytest.raises(ValueError, match="unknown parameter 'tau'"):
        TermSpec("t", "kd", params={"tau": 1.0})


# --------------------------------------------------------------------------- Distiller
def test_adapters_only_for_mismatched_features():
    student, teacher = _output(0, feat_channels=8), _output(1, feat_channels=16)
    specs = parse_terms(
        {
            "kd": {"METHOD": "kd"},
            "cwd_feature": {"METHOD": "cwd", "INPUT": "feature", "WEIGHT": 50.0},
            "skd": {"METHOD": "skd", "WEIGHT": 10.0},
            "dist_aux": {"METHOD": "dist", "INPUT": "aux_logits", "WEIGHT": 0.4},
        }
    )
    distiller = Distiller(specs, _channels(student), _channels(teacher), num_classes=K)
    # only CWD on features compares the maps element by element: SKD takes the raw features
    assert sorted(distiller.adapters.keys()) == ["cwd_feature"]
    conv = distiller.adapters["cwd_feature"]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (8, 16, (1, 1))
    same = Distiller(specs, _channels(student), _channels(_output(2)), num_classes=K)
    assert len(same.adapters) == 0


def test_class_count_mismatch_is_an_error():
    student, teacher = _output(0, k=5), _output(1, k=6)
    with pytest.raises(ValueError) as err:
        Distiller(parse_terms({"kd": {"METHOD": "kd"}}), _channels(student), _channels(teacher), 5)
    assert "5" in str(err.value) and "6" in str(err.value) and "'kd'" in str(err.value)


def test_missing_output_is_an_error():
    student, teacher = _output(0, aux=False), _output(1)
    specs = parse_terms({"d": {"METHOD": "dist", "INPUT": "aux_logits"}})
    with pytest.raises(ValueError, match="aux_logits"):
        Distiller(specs, _channels(student), _channels(teacher), K)


def test_forward_returns_weighted_named_losses():
    student = _output(3, feat_channels=8, size=(3, 4))
    teacher = _output(4, feat_channels=12, size=(6, 8))
    targets = torch.randint(0, K, (2, 24, 32), generator=_gen(5))
    specs = parse_terms(
        {
            "kd": {"METHOD": "kd", "WEIGHT": 1.5, "TEMPERATURE": 2.0},
            "cwd_feature": {"METHOD": "cwd", "INPUT": "feature", "WEIGHT": 50.0},
            "ifvd": {"METHOD": "ifvd", "WEIGHT": 20.0},
            "dist_aux": {"METHOD": "dist", "INPUT": "aux_logits", "WEIGHT": 0.4, "GAMMA": 2.0},
        }
    )
    distiller = Distiller(specs, _channels(student), _channels(teacher), K, ignore_label=255)
    out = distiller(student, teacher, targets)
    assert sorted(out) == ["loss_cwd_feature", "loss_dist_aux", "loss_ifvd", "loss_kd"]
    expected = {
        "loss_kd": 1.5 * L.pixel_kd(student.logits, teacher.logits, temperature=2.0),
        "loss_cwd_feature": 50.0
        * L.channel_wise_divergence(
            distiller.adapters["cwd_feature"](student.feature), teacher.feature
        ),
        "loss_ifvd": 20.0 * L.ifvd(student.feature, teacher.feature, targets, K),
        "loss_dist_aux": 0.4 * L.dist(student.aux_logits, teacher.aux_logits, gamma=2.0),
    }
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value.item(), rel=1e-6), key


def test_adapter_and_student_get_gradients_teacher_does_not():
    student, teacher = _output(6, feat_channels=8), _output(7, feat_channels=16)
    for t in (student.feature, teacher.feature):
        t.requires_grad_()
    specs = parse_terms({"cwd_feature": {"METHOD": "cwd", "INPUT": "feature", "WEIGHT": 50.0}})
    distiller = Distiller(specs, _channels(student), _channels(teacher), K)
    sum(distiller(student, teacher).values()).backward()
    weight = distiller.adapters["cwd_feature"].weight
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert student.feature.grad is not None and student.feature.grad.abs().sum() > 0
    assert teacher.feature.grad is None


def test_needs_aux_and_targets_properties():
    s, t = _output(8), _output(9)

    def make(terms):
        return Distiller(parse_terms(terms), _channels(s), _channels(t), K)

    plain = make({"kd": {"METHOD": "kd"}})
    assert not plain.needs_aux and not plain.needs_targets
    assert make({"d": {"METHOD": "dist", "INPUT": "aux_logits"}}).needs_aux
    ifvd_only = make({"i": {"METHOD": "ifvd"}})
    assert ifvd_only.needs_targets and not ifvd_only.needs_aux
    with pytest.raises(ValueError, match="targets"):
        ifvd_only(s, t, None)
    # a zero-weight term passed directly is skipped
    off = Distiller([TermSpec("i", "ifvd", "feature", 0.0)], _channels(s), _channels(t), K)
    assert off(s, t, None) == {} and not off.needs_targets


def test_student_resized_inside_the_distiller():
    student, teacher = _output(10, size=(3, 4)), _output(11, size=(6, 8))
    distiller = Distiller(
        parse_terms({"kd": {"METHOD": "kd"}}), _channels(student), _channels(teacher), K
    )
    got = distiller(student, teacher)["loss_kd"]
    up = F.interpolate(student.logits, size=(6, 8), mode="bilinear", align_corners=False)
    assert got.item() == pytest.approx(L.pixel_kd(up, teacher.logits).item(), rel=1e-6)


def test_similarity_terms_take_raw_features_of_different_widths():
    """SKD, IFVD and CIRKD pairs compare each model's own similarity structure: with 8 student
    and 12 teacher channels (and another spatial size) they get no adapter and their value is the
    loss on the raw features (METHODS.md §1)."""
    student = _output(10, feat_channels=8, size=(3, 4))
    teacher = _output(11, feat_channels=12, size=(6, 8))
    targets = torch.randint(0, K, (2, 24, 32), generator=_gen(12))
    specs = parse_terms(
        {
            "skd": {"METHOD": "skd", "WEIGHT": 10.0},
            "ifvd": {"METHOD": "ifvd", "WEIGHT": 20.0},
            "cirkd": {"METHOD": "cirkd", "WEIGHT": 1.0, "TEMPERATURE": 0.1},
        }
    )
    distiller = Distiller(specs, _channels(student), _channels(teacher), K)
    assert len(distiller.adapters) == 0 and list(distiller.state_dict()) == []
    out = distiller(student, teacher, targets)
    fs, ft = student.feature, teacher.feature
    expected = {
        "loss_skd": 10.0 * L.structural_kd(fs, ft),
        "loss_ifvd": 20.0 * L.ifvd(fs, ft, targets, K),
        "loss_cirkd": L.cirkd_pixel_pairs(fs, ft, temperature=0.1),
    }
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value.item(), rel=1e-6), key
    # element-wise losses still refuse differing widths
    with pytest.raises(ValueError, match="channels differ"):
        L.channel_wise_divergence(fs, ft)


def test_old_checkpoint_adapters_of_similarity_terms_are_dropped_with_a_warning(caplog):
    student, teacher = _output(13, feat_channels=8), _output(14, feat_channels=16)
    terms = {
        "cwd_feature": {"METHOD": "cwd", "INPUT": "feature", "WEIGHT": 50.0},
        "skd": {"METHOD": "skd", "WEIGHT": 10.0},
    }
    distiller = Distiller(parse_terms(terms), _channels(student), _channels(teacher), K)
    cwd = torch.randn(16, 8, 1, 1, generator=_gen(15))
    # the layout the earlier code wrote: an adapter for skd too
    old = {"adapters.cwd_feature.weight": cwd, "adapters.skd.weight": torch.zeros(16, 8, 1, 1)}
    with caplog.at_level("WARNING", logger="textkd.distill.terms"):
        result = distiller.load_state_dict(old, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(distiller.adapters["cwd_feature"].weight, cwd, rtol=0, atol=0)
    assert "adapters.skd.weight" in caplog.text and "dropped" in caplog.text
    # an unknown adapter key is not silently dropped
    with pytest.raises(RuntimeError, match="adapters.other.weight"):
        distiller.load_state_dict({**old, "adapters.other.weight": cwd}, strict=True)
