"""The holistic adversarial term against CIRKD's own code (tests/data/reference/adversarial.pt,
made by tests/fixtures/make_adversarial_fixture.py from CIRKD 2d8ad0f): the generator term, the
discriminator's loss (hinge, and WGAN with its gradient penalty), D's gradients and its state
after its Adam step, and one step of the KD + CWD + adversarial recipe (student and D)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from _reference_weights import deterministic_state_dict
from fixtures.make_adversarial_fixture import inputs, student_head
from textkd.distill.adversarial import (
    Discriminator,
    HolisticAdversarial,
    adversarial_problems,
    generator_loss,
)
from textkd.distill.base import TermContext, compose_losses, own_parameter_ids
from textkd.distill.terms import DEFAULTS, Distiller
from textkd.modeling.outputs import SegOutput
from torch import nn

FIXTURE = Path(__file__).parent / "data" / "reference" / "adversarial.pt"

NODE = {
    "WEIGHT": 0.001,
    "D_WEIGHT": 0.1,
    "LOSS": "hinge",
    "GP_WEIGHT": 0.0,
    "D_LR": 4e-4,
    "D_BETAS": [0.9, 0.99],
    "D_CHANNELS": 64,
    "INPUT": "logits",
    "MIN_INPUT_SIZE": 0,
}


def textkd_key(ref: str) -> str:
    """The name of a CIRKD (SAGAN) discriminator tensor in :class:`Discriminator`."""
    rules = [
        (r"^preprocess_additional\.", "norm."),
        (r"^l(\d)\.0\.module\.weight_bar$", r"conv\1.weight"),
        (r"^l(\d)\.0\.module\.weight_u$", r"conv\1.u"),
        (r"^l(\d)\.0\.module\.weight_v$", r"conv\1.v"),
        (r"^l(\d)\.0\.module\.bias$", r"conv\1.bias"),
        (r"^(attn\d)\.(query|key|value)_conv\.", r"\1.\2."),
        (r"^last\.0\.", "last."),
    ]
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, ref)
        if n:
            return new
    return ref  # attn*.gamma


@pytest.fixture(scope="module")
def ref():
    data = torch.load(FIXTURE, weights_only=False)
    for k, v in inputs().items():  # the same inputs as the generation script's
        assert (float(v.sum()), float(v.norm())) == pytest.approx(data["input_checks"][k])
    return data


def reference_d_state(ref) -> dict[str, torch.Tensor]:
    return {textkd_key(k): v for k, v in deterministic_state_dict(ref["d_key_shapes"]).items()}


def make_term(ref, **node) -> HolisticAdversarial:
    term = HolisticAdversarial.from_config(
        {**NODE, **node}, TermContext(num_classes=ref["constants"]["K"])
    )
    term.discriminator.load_state_dict(reference_d_state(ref))
    return term.train()


def out(logits, feature=None) -> SegOutput:
    return SegOutput(logits=logits, feature=feature)


def close(a, b, rtol=1e-5, what=""):
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    scale = max(float(b.abs().max()), 1e-12)
    err = float((a - b).abs().max())
    assert err <= rtol * scale + 1e-12, f"{what}: max |diff| {err:.3g} vs scale {scale:.3g}"


def check_d(term: HolisticAdversarial, before: dict, expected: dict, rtol=1e-5) -> None:
    """D's state after its step (and its loss's gradients, kept by the step) as the reference's."""
    state = term.discriminator.state_dict()
    params = dict(term.discriminator.named_parameters())
    assert {textkd_key(k) for k in expected} == set(state)
    for rk, rec in expected.items():
        k = textkd_key(rk)
        got = state[k].float()
        close(got.flatten()[: rec["after"].numel()], rec["after"].flatten(), rtol, f"{k} after")
        delta = float((got - before[k].float()).norm())
        assert delta == pytest.approx(rec["norm_delta"], rel=1e-4, abs=1e-9), k
        if "grad" in rec:
            g = params[k].grad
            close(g.flatten()[: rec["grad"].numel()], rec["grad"].flatten(), 1e-4, f"{k} grad")
            assert float(g.norm()) == pytest.approx(rec["grad_norm"], rel=1e-4, abs=1e-12), k


@pytest.mark.parametrize("kind", ["hinge", "wgan"])
def test_losses_gradients_and_d_step_match_cirkd(ref, kind, single_thread):
    c = ref["constants"]
    node = {"LOSS": "wgan-gp", "GP_WEIGHT": c["gp_weight"]} if kind == "wgan" else {}
    term = make_term(ref, **node)
    before = {k: v.clone() for k, v in term.discriminator.state_dict().items()}
    data = inputs()
    s = data["s_logits"].clone().requires_grad_(True)
    torch.manual_seed(c["gp_seed"])  # the gradient penalty's α, as the reference drew it
    logs = {}
    losses = compose_losses([term], out(s), out(data["t_logits"]), logs=logs)
    exp = ref[kind]
    assert set(losses) == {"loss_adv"} and set(logs) == {"d_loss_adv"}
    assert float(losses["loss_adv"].detach()) == pytest.approx(exp["g_loss"], rel=1e-5)
    assert float(logs["d_loss_adv"]) == pytest.approx(exp["d_loss"], rel=1e-5)
    # the generator gradient reaches the student's maps and nothing of D
    losses["loss_adv"].backward()
    close(s.grad[:, :, :8, :8], exp["s_grad_head"], 1e-4, "generator gradient")
    assert float(s.grad.norm()) == pytest.approx(exp["s_grad_norm"], rel=1e-4)
    check_d(term, before, exp["d"])  # the grads kept are D's loss's alone


def test_gradient_penalty_alpha_is_the_step_generator_draw(ref):
    torch.manual_seed(ref["constants"]["gp_seed"])
    assert torch.equal(torch.rand(2, 1, 1, 1), ref["wgan"]["alpha"])


def test_kd_cwd_adversarial_recipe_step_matches_cirkd(ref, single_thread):
    """One step of KD 1 + CWD (feature 50, logits 3) + adversarial (0.001 / D 0.1), SGD 0.02 /
    momentum 0.9 / weight decay 1e-4, on the fixture's student head (no task loss: the task loss
    is the meta-architecture's, tested elsewhere): losses, the student's weights and D's state."""
    exp = ref["recipe"]
    data = inputs()
    k = ref["constants"]["K"]
    student = student_head().train()
    student.load_state_dict(deterministic_state_dict(ref["student_key_shapes"], seed=1))
    ctx = TermContext(
        num_classes=k,
        student_channels={"logits": k, "feature": student[0].out_channels},
        teacher_channels={"logits": k, "feature": data["t_feature"].shape[1]},
    )
    terms = {name: DEFAULTS[name] for name in ("kd", "cwd_feature", "cwd_logits")}
    distiller = Distiller.from_config(terms, ctx)
    adv = make_term(ref)
    before = {kk: v.clone() for kk, v in adv.discriminator.state_dict().items()}
    holder = nn.ModuleDict({"student": student, "distiller": distiller, "adversarial": adv})
    own = own_parameter_ids(holder)
    params = [p for p in holder.parameters() if id(p) not in own]
    assert len(params) == len(list(student.parameters()))  # no adapter: equal channels
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    feature = student[:3](data["x"])
    s_out = out(student[3](feature), feature)
    t_out = out(data["t_logits"], data["t_feature"])
    logs = {}
    losses = compose_losses([distiller, adv], s_out, t_out, logs=logs)
    for name, key in [
        ("kd", "loss_kd"),
        ("cwd_feature", "loss_cwd_feature"),
        ("cwd_logits", "loss_cwd_logits"),
        ("adv", "loss_adv"),
    ]:
        assert float(losses[key]) == pytest.approx(exp["losses"][name], rel=1e-5), key
    assert float(logs["d_loss_adv"]) == pytest.approx(exp["losses"]["d_adv"], rel=1e-5)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    for name, value in student.state_dict().items():
        close(value, exp["student_after"][name], 1e-5, f"student {name}")
    check_d(adv, before, exp["d"])


def test_generator_gradient_never_reaches_d_and_d_stays_out_of_the_main_optimizer(ref):
    term = make_term(ref)
    data = inputs()
    s = data["s_logits"].clone().requires_grad_(True)
    losses = compose_losses([term], out(s), out(data["t_logits"]))
    for p in term.discriminator.parameters():
        p.grad = None
    losses["loss_adv"].backward()
    assert all(p.grad is None for p in term.discriminator.parameters())
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert own_parameter_ids(term) == {id(p) for p in term.discriminator.parameters()}
    assert term.own_optimizer() is term.d_optimizer


def test_evaluation_takes_no_step_and_uses_d_as_it_is(ref):
    term = make_term(ref).eval()
    before = {k: v.clone() for k, v in term.discriminator.state_dict().items()}
    same_d = copy.deepcopy(term.discriminator)  # each forward takes a power-iteration step
    data = inputs()
    losses = compose_losses([term], out(data["s_logits"]), out(data["t_logits"]), training=False)
    expected = term.weight * generator_loss(same_d(data["s_logits"]))
    assert float(losses["loss_adv"]) == pytest.approx(float(expected), rel=1e-6)
    after = term.discriminator.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if not k.endswith(("u", "v")))


def test_small_maps_are_refused_or_upsampled():
    d = Discriminator(3, 4)
    with pytest.raises(ValueError, match="MIN_INPUT_SIZE"):
        d(torch.randn(2, 3, 32, 64))
    term = HolisticAdversarial.from_config(
        {**NODE, "D_CHANNELS": 4, "MIN_INPUT_SIZE": 64}, TermContext(num_classes=3)
    )
    assert term.d_input(out(torch.randn(2, 3, 8, 12))).shape[-2:] == (64, 96)
    logs = {}
    compose_losses([term], out(torch.randn(2, 3, 8, 8)), out(torch.randn(2, 3, 8, 8)), logs=logs)
    assert torch.isfinite(logs["d_loss_adv"])


def test_config_node_off_by_default_and_bad_values_named():
    assert HolisticAdversarial.from_config({**NODE, "WEIGHT": 0.0}, TermContext(3)) is None
    bad = {**NODE, "D_LR": 0.0, "D_BETAS": [0.9, 1.5], "LOSS": "wgan", "WEIGHT": -1.0}
    problems = adversarial_problems(bad, "MODEL.DISTILL.ADVERSARIAL")
    text = "\n".join(problems)
    for key in ("D_LR", "D_BETAS", "LOSS", "WEIGHT"):
        assert f"MODEL.DISTILL.ADVERSARIAL.{key} " in text
    with pytest.raises(ValueError, match="MODEL.DISTILL.ADVERSARIAL.D_LR"):
        HolisticAdversarial.from_config({**NODE, "D_LR": -1e-4}, TermContext(3))
