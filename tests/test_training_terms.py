"""One composition for every training-time term (textkd.distill.base): each term built from its
config subtree (plain dicts here, no detectron2) gives the same losses as the direct constructor,
the composition merges and checks loss keys, runs a term's own optimizer step, and the LAD label
channel is built by one function."""

import pytest
import torch
from textkd.distill.base import (
    TermContext,
    TrainingTerm,
    build_terms,
    compose_losses,
    config_subtree,
    own_parameter_ids,
)
from textkd.distill.lad import (
    LADConsistency,
    append_label_channel,
    dual_path_consistency,
    label_code,
    noise_labels,
)
from textkd.distill.terms import ClassicTerm, Distiller, parse_terms
from textkd.distill.text_plugins import TextDistiller
from textkd.models.outputs import SegOutput
from torch import nn

K, D = 5, 16


def _output(seed, feat_channels=8, size=(6, 7)):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    return SegOutput(
        logits=torch.randn(2, K, h, w, generator=g),
        feature=torch.randn(2, feat_channels, h, w, generator=g),
        aux_logits=torch.randn(2, K, h, w, generator=g),
    )


def _channels(out):
    return {"logits": K, "feature": out.feature.shape[1], "aux_logits": K}


def _targets(seed=3, size=(24, 28)):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (2, *size), generator=g)
    y[:, :3] = 255
    return y


def _model_cfg(tcd=3.0, trd=1.0, mimic=0.0, source="clip", text_input="feature"):
    """The MODEL subtree of a config, as plain dicts (the keys of textkd.config)."""
    return {
        "MODEL": {
            "DISTILL": {
                "TERMS": {
                    "cwd_logits": {"METHOD": "cwd", "WEIGHT": 3.0, "TEMPERATURE": 4.0},
                    "skd": {"METHOD": "skd", "INPUT": "feature", "WEIGHT": 10.0},
                    "cwd_feature": {"METHOD": "cwd", "INPUT": "feature", "WEIGHT": 50.0},
                    "ifvd": {"METHOD": "ifvd", "WEIGHT": 20.0},
                },
                "TCD": {"WEIGHT": tcd, "TEMPERATURE": 4.0, "MODE": "spatial"},
                "TRD": {
                    "WEIGHT": trd,
                    "REGION_TEMPERATURE": 1.0,
                    "AFFINITY_TEMPERATURE": 0.07,
                    "MIN_MASS": 1.0,
                    "MIMIC_WEIGHT": mimic,
                },
                "TEXT": {
                    "INPUT": text_input,
                    "SCORE_TEMPERATURE": 0.07,
                    "PROJ_HIDDEN": 16,
                    "PROBE_WEIGHT": 1.0,
                    "PROBE_MODE": "joint",
                    "PROBE_PRETRAIN_ITERS": 0,
                    "STUDENT_ALIGN_WEIGHT": 0.5,
                },
            },
            "TEXT_BANK": {"SOURCE": source},
            "LAD": {
                "ENABLED": True,
                "DUAL_PATH": True,
                "CONSISTENCY_WEIGHT": 5.0,
                "CONSISTENCY_TEMPERATURE": 4.0,
            },
        }
    }


TABLE = {
    "distiller": (Distiller, "MODEL.DISTILL.TERMS"),
    "text_distiller": (TextDistiller, "MODEL"),
}


def _context(s, t, bank):
    return TermContext(
        num_classes=K,
        ignore_label=255,
        student_channels=_channels(s),
        teacher_channels=_channels(t),
        text_embeddings=lambda: bank,
    )


def test_terms_from_config_equal_the_direct_constructors():
    s, t, y = _output(0, 8), _output(1, 12), _targets()
    bank = torch.randn(K, D, generator=torch.Generator().manual_seed(7))
    cfg = _model_cfg()
    torch.manual_seed(5)
    built = build_terms(cfg, TABLE, _context(s, t, bank))
    assert list(built) == ["distiller", "text_distiller"]
    torch.manual_seed(5)
    direct_classic = Distiller(
        parse_terms(cfg["MODEL"]["DISTILL"]["TERMS"]), _channels(s), _channels(t), K
    )
    direct_text = TextDistiller(
        bank,
        student_channels=8,
        teacher_channels=12,
        tcd_weight=3.0,
        trd_weight=1.0,
        student_align_weight=0.5,
        proj_hidden=16,
    )
    got = compose_losses(built.values(), s, t, y, iteration=0)
    want = {**direct_classic(s, t, y), **direct_text(s.feature, t.feature, y, iteration=0)}
    assert (
        sorted(got)
        == sorted(want)
        == sorted(
            [
                "loss_cwd_logits",
                "loss_skd",
                "loss_cwd_feature",
                "loss_ifvd",
                "loss_text_probe",
                "loss_tcd",
                "loss_trd",
                "loss_text_align",
            ]
        )
    )
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    # the parameters are the same too (same order, same initial values)
    sd_built = {**built["distiller"].state_dict(), **built["text_distiller"].state_dict()}
    sd_direct = {**direct_classic.state_dict(), **direct_text.state_dict()}
    assert list(sd_built) == list(sd_direct)
    for k in sd_direct:
        torch.testing.assert_close(sd_built[k], sd_direct[k], rtol=0, atol=0)


def test_each_classic_term_is_a_term_and_the_checkpoint_layout_is_kept():
    s, t, y = _output(0, 8), _output(1, 12), _targets()
    terms = _model_cfg()["MODEL"]["DISTILL"]["TERMS"]
    ctx = _context(s, t, None)
    torch.manual_seed(2)
    distiller = Distiller.from_config(terms, ctx)
    torch.manual_seed(2)
    singles = [ClassicTerm.from_config(node, ctx, name=name) for name, node in terms.items()]
    assert [type(x) for x in distiller.terms] == [ClassicTerm] * 4
    got = distiller(s, t, y)
    for term in singles:
        (key, value), *rest = term(s, t, y).items()
        assert not rest
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)
    # adapters are registered once, under the layout of checkpoints written before the terms;
    # only CWD on features has one (SKD and IFVD take the raw features, METHODS.md §1)
    assert list(distiller.state_dict()) == ["adapters.cwd_feature.weight"]
    assert distiller.terms[2].adapter is distiller.adapters["cwd_feature"]
    assert singles[1].adapter is None and list(singles[1].state_dict()) == []
    assert list(singles[2].state_dict()) == ["adapter.weight"]
    assert ClassicTerm.from_config({"METHOD": "kd", "WEIGHT": 0}, ctx, name="kd") is None
    with pytest.raises(ValueError, match="term 'k': the student has no output 'neck'"):
        ClassicTerm.from_config({"METHOD": "kd", "INPUT": "neck"}, ctx, name="k")


def test_text_term_off_unknown_input_and_learnable_bank():
    s, t = _output(0, 8), _output(1, 12)
    bank = torch.randn(K, D)
    calls = []

    def embeddings():
        calls.append(1)
        return bank

    ctx = TermContext(K, 255, _channels(s), _channels(t), text_embeddings=embeddings)
    off = _model_cfg(tcd=0.0, trd=0.0)["MODEL"]
    assert TextDistiller.from_config(off, ctx) is None
    assert calls == []  # no text bank is built for a run without text plugins
    with pytest.raises(ValueError, match=r"MODEL.DISTILL.TEXT.INPUT='neck'"):
        TextDistiller.from_config(_model_cfg(text_input="neck")["MODEL"], ctx)
    learn = TextDistiller.from_config(_model_cfg(source="learnable")["MODEL"], ctx)
    assert isinstance(learn.text, nn.Parameter) and calls == [1]


def test_lad_consistency_term():
    lad = _model_cfg()["MODEL"]["LAD"]
    ctx = TermContext(num_classes=K)
    term = LADConsistency.from_config(lad, ctx)
    a, b = _output(0), _output(1)
    (key, value), *rest = term(a, b).items()
    assert key == "loss_consistency" and not rest
    torch.testing.assert_close(value, 5.0 * dual_path_consistency(a.logits, b.logits, 4.0))
    for off in ({"ENABLED": False}, {"DUAL_PATH": False}, {"CONSISTENCY_WEIGHT": 0.0}):
        assert LADConsistency.from_config({**lad, **off}, ctx) is None
    with pytest.raises(ValueError, match="CONSISTENCY_TEMPERATURE"):
        LADConsistency.from_config({**lad, "CONSISTENCY_TEMPERATURE": 0.0}, ctx)


def test_config_subtree_names_the_missing_key():
    cfg = _model_cfg()
    assert config_subtree(cfg, "MODEL.LAD")["CONSISTENCY_WEIGHT"] == 5.0
    with pytest.raises(KeyError, match=r"MODEL\.DISTILL\.KD is missing"):
        config_subtree(cfg, "MODEL.DISTILL.KD.WEIGHT")


class _Fixed(TrainingTerm):
    def __init__(self, key):
        super().__init__()
        self.key = key

    def forward(self, student_out, teacher_out, targets=None, *, iteration=None):
        return {self.key: (student_out.logits - teacher_out.logits).abs().mean()}


def test_compose_losses_rejects_a_key_reported_twice():
    a, b = _output(0), _output(1)
    with pytest.raises(ValueError, match="'loss_x'.*another term"):
        compose_losses([_Fixed("loss_x"), _Fixed("loss_x")], a, b)
    assert list(compose_losses([_Fixed("loss_x"), _Fixed("loss_y")], a, b)) == [
        "loss_x",
        "loss_y",
    ]


class _OwnStep(TrainingTerm):
    """A term with a critic updated by its own optimizer (the discriminator's shape)."""

    def __init__(self):
        super().__init__()
        self.critic = nn.Conv2d(K, 1, 1)
        self.opt = torch.optim.SGD(self.critic.parameters(), lr=0.1)
        self.steps = 0

    def own_parameters(self):
        return list(self.critic.parameters())

    def extra_step(self, student_out, teacher_out, targets=None, *, iteration=None):
        loss = (
            self.critic(student_out.logits.detach()).mean()
            - self.critic(teacher_out.logits.detach()).mean()
        )
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.steps += 1
        return {"critic": loss.detach()}

    def forward(self, student_out, teacher_out, targets=None, *, iteration=None):
        return {"loss_adv": -self.critic(student_out.logits).mean()}


def test_a_term_with_its_own_optimizer_step():
    term = _OwnStep()
    holder = nn.Module()
    holder.student = nn.Conv2d(3, K, 1)
    holder.adv = term
    a, b = _output(0), _output(1)
    before = term.critic.weight.detach().clone()
    logs = {}
    losses = compose_losses([term], a, b, training=True, logs=logs)
    assert term.steps == 1 and not torch.equal(before, term.critic.weight)
    assert list(losses) == ["loss_adv"] and list(logs) == ["critic"]
    compose_losses([term], a, b, training=False)  # evaluation: no step of its own
    assert term.steps == 1
    own = own_parameter_ids(holder)
    assert own == {id(p) for p in term.critic.parameters()}
    assert all(id(p) not in own for p in holder.student.parameters())


def test_append_label_channel_is_the_one_label_input():
    x = torch.randn(2, 3, 24, 28)
    y = _targets()
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    got = append_label_channel(x, y, K, 255, 1.7, 0.02, "code", generator=g1)
    torch.testing.assert_close(got, torch.cat([x, label_code(y, K, 255, 1.7, 0.02, g2)], 1))
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    got = append_label_channel(x, y, K, 255, 1.7, 0.03, "noise", generator=g1)
    torch.testing.assert_close(got, torch.cat([x, noise_labels(y, K, 255, 1.7, 0.03, g2)], 1))
    zero = append_label_channel(x, None, K, 255, 1.7, 0.03, "zero")
    assert zero.shape == (2, 4, 24, 28) and not zero[:, 3].any()
    torch.testing.assert_close(zero[:, :3], x)
    with pytest.raises(ValueError, match="'blank'"):
        append_label_channel(x, y, K, 255, 1.7, 0.03, "blank")
    with pytest.raises(ValueError, match="needs the ground-truth labels"):
        append_label_channel(x, None, K, 255, 1.7, 0.03, "code")
