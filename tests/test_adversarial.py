"""The holistic adversarial term against CIRKD's own code (tests/data/reference/adversarial.pt,
made by tests/fixtures/make_adversarial_fixture.py from CIRKD 2d8ad0f): the generator term, the
discriminator's loss (hinge, and WGAN with its gradient penalty), D's gradients and its state
after its Adam step, and one step of the KD + CWD + adversarial recipe (student and D) on a small
head, on CIRKD's DeepLabV3 head and on the whole DeepLabV3-R18 student (slow)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from _reference_weights import deterministic_state_dict
from fixtures.make_adversarial_fixture import (
    DROPOUT_SEED,
    head_inputs,
    inputs,
    model_inputs,
    student_head,
)
from textkd.distill.adversarial import (
    Discriminator,
    HolisticAdversarial,
    adversarial_problems,
    generator_loss,
)
from textkd.distill.base import TermContext, compose_losses, own_parameter_ids
from textkd.distill.terms import DEFAULTS, Distiller
from textkd.models.convert import convert_cirkd_segmentor
from textkd.models.heads import DeepLabV3Head
from textkd.models.losses import segmentation_losses
from textkd.models.outputs import SegOutput
from textkd.models.segmentor import build_segmentor
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
    """D's state after its step (and its loss's gradients, kept by the step) as the reference's.
    The size of each tensor's change is compared to 1e-4 relative, or 1e-5 absolute: Adam turns
    the rounding noise of a gradient that is zero in exact arithmetic (the attention key's bias,
    which the softmax cancels) into a change of ~1e-6 that depends on the thread count."""
    state = term.discriminator.state_dict()
    params = dict(term.discriminator.named_parameters())
    assert {textkd_key(k) for k in expected} == set(state)
    for rk, rec in expected.items():
        k = textkd_key(rk)
        got = state[k].float()
        close(got.flatten()[: rec["after"].numel()], rec["after"].flatten(), rtol, f"{k} after")
        delta = float((got - before[k].float()).norm())
        assert delta == pytest.approx(rec["norm_delta"], rel=1e-4, abs=1e-5), k
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


def check_summary(module: nn.Module, before: dict, expected: dict, what: str, rtol=1e-5):
    """A module's state after an SGD step (and the gradients of the step) as the reference's
    summary (full small tensors, the first values of large ones, norms)."""
    state = module.state_dict()
    params = dict(module.named_parameters())
    assert set(expected) == set(state), what
    for k, rec in expected.items():
        got = state[k].float()
        close(got.flatten()[: rec["after"].numel()], rec["after"].flatten(), rtol, f"{what} {k}")
        delta = float((got - before[k].float()).norm())
        assert delta == pytest.approx(rec["norm_delta"], rel=1e-4, abs=1e-5), f"{what} {k}"
        if "grad" in rec:
            g = params[k].grad
            close(g.flatten()[: rec["grad"].numel()], rec["grad"].flatten(), 1e-4, f"{what} {k}")
            assert float(g.norm()) == pytest.approx(rec["grad_norm"], rel=1e-4), f"{what} {k}"


@pytest.mark.parametrize("feature", ["after_dropout", "head_output"])
def test_kd_cwd_adversarial_recipe_step_on_the_deeplabv3_head_matches_cirkd(
    ref, feature, single_thread
):
    """The recipe's step (task loss + KD 1 + CWD feature 50 / logits 3 + adversarial 0.001, D
    0.1) on TextKD's DeepLabV3 head of an R18 student (CIRKD's weights by key name, ALIGN_CORNERS
    True, dropout on with the same draws) over a fixed res5 map of a 512×512 crop: every loss,
    the head's gradients and weights after SGD (lr 0.02, momentum 0.9, weight decay 1e-4) and
    D's state after its step equal CIRKD's. The backbone is not part of this check.

    ``feature``: the map CWD-feature reads: the tensor after the head's dropout (CIRKD's), or
    the head's own ``feature`` output (which is that tensor, as CIRKD's)."""
    exp = ref["head_recipe"]
    hd = head_inputs()
    for k, v in hd.items():
        assert (float(v.float().sum()), float(v.float().norm())) == pytest.approx(
            ref["head_input_checks"][k]
        )
    k = ref["constants"]["K"]
    head = DeepLabV3Head(512, k, channels=128, norm_layer="BN", align_corners=True).train()
    state = deterministic_state_dict(ref["head_key_shapes"], seed=2)
    head.load_state_dict({key[len("head.") :]: v for key, v in state.items()})
    before_head = {key: v.clone() for key, v in head.state_dict().items()}
    ctx = TermContext(
        num_classes=k,
        student_channels={"logits": k, "feature": 128},
        teacher_channels={"logits": k, "feature": 128},
    )
    distiller = Distiller.from_config(
        {name: DEFAULTS[name] for name in ("kd", "cwd_feature", "cwd_logits")}, ctx
    )
    adv = make_term(ref)
    before_d = {key: v.clone() for key, v in adv.discriminator.state_dict().items()}
    optimizer = torch.optim.SGD(head.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    dropped = []
    hook = head.block[3].register_forward_hook(lambda m, i, o: dropped.append(o))
    torch.manual_seed(DROPOUT_SEED)
    logits, head_feature = head({"res5": hd["res5"]})
    hook.remove()
    s_out = out(logits, dropped[0] if feature == "after_dropout" else head_feature)
    targets = hd["labels"].clone()
    targets[targets == k] = 255
    losses = segmentation_losses(s_out, targets, ignore_label=255, align_corners=True)
    logs = {}
    losses.update(
        compose_losses(
            [distiller, adv], s_out, out(hd["t_logits"], hd["t_feature"]), targets, logs=logs
        )
    )
    for name, key in [
        ("task", "loss_sem_seg"),
        ("kd", "loss_kd"),
        ("cwd_feature", "loss_cwd_feature"),
        ("cwd_logits", "loss_cwd_logits"),
        ("adv", "loss_adv"),
    ]:
        assert float(losses[key].detach()) == pytest.approx(exp["losses"][name], rel=1e-5), key
    assert float(logs["d_loss_adv"]) == pytest.approx(exp["losses"]["d_adv"], rel=1e-5)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    check_summary(head, before_head, exp["head"], "head")
    check_d(adv, before_d, exp["d"])


def _cirkd_model(shapes, seed: int, train: bool):
    """The TextKD segmentor of a CIRKD DeepLabV3 state dict (converted as
    tools/convert_checkpoint.py does), and the CIRKD -> TextKD key map."""
    conv = convert_cirkd_segmentor(deterministic_state_dict(shapes, seed=seed))
    st = conv.settings
    model = build_segmentor(
        head="deeplabv3",
        backbone=st["MODEL.SEG_BACKBONE.ARCH"],
        num_classes=st["MODEL.SEM_SEG_HEAD.NUM_CLASSES"],
        channels=st["MODEL.SEM_SEG_HEAD.CHANNELS"],
        aspp_dilations=st["MODEL.SEM_SEG_HEAD.ASPP_DILATIONS"],
        aux=True,
        aux_channels=st["MODEL.SEM_SEG_HEAD.AUX_CHANNELS"],
        align_corners=st["MODEL.SEM_SEG_HEAD.ALIGN_CORNERS"],
    )
    model.load_state_dict(conv.state_dict, strict=True)
    return model.train(train), conv.key_map


@pytest.mark.slow
def test_kd_cwd_adversarial_recipe_step_on_the_whole_student_matches_cirkd(ref, single_thread):
    """train_kd.py's step of the CWD recipe (with --aux) on whole models: CIRKD's DeepLabV3-R18
    student and an R18 teacher (weights by key name, converted), one normalised 2×3×512×512
    batch, the same dropout draws: every loss, every student tensor after SGD (≤ 1e-5 relative)
    and D after its step equal the reference's. CWD-feature reads the head's feature after its
    dropout, which is the head's own feature output, as CIRKD's."""
    exp = ref["model_recipe"]
    data = model_inputs()
    for k, v in data.items():
        assert (float(v.float().sum()), float(v.float().norm())) == pytest.approx(
            ref["model_input_checks"][k]
        )
    k = ref["constants"]["K"]
    teacher, _ = _cirkd_model(exp["teacher_key_shapes"], 4, False)
    student, key_map = _cirkd_model(exp["student_key_shapes"], 3, True)
    before = {kk: v.clone() for kk, v in student.state_dict().items()}
    ctx = TermContext(num_classes=k, student_channels=student.output_channels,
                      teacher_channels=teacher.output_channels)  # fmt: skip
    distiller = Distiller.from_config(
        {name: DEFAULTS[name] for name in ("kd", "cwd_feature", "cwd_logits")}, ctx
    )
    adv = make_term(ref)
    before_d = {kk: v.clone() for kk, v in adv.discriminator.state_dict().items()}
    optimizer = torch.optim.SGD(student.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    images, targets = data["images"], data["labels"].clone()
    targets[targets == k] = 255
    with torch.no_grad():
        t_out = teacher(images, with_aux=False)
    dropped = []
    hook = student.head.block[3].register_forward_hook(lambda m, i, o: dropped.append(o))
    torch.manual_seed(DROPOUT_SEED)
    s_out = student(images, with_aux=True)
    hook.remove()
    s_out.feature = dropped[0]
    losses = segmentation_losses(s_out, targets, 0.4, 255, align_corners=True)
    logs = {}
    losses.update(compose_losses([distiller, adv], s_out, t_out, targets, logs=logs))
    task = losses["loss_sem_seg"] + losses["loss_aux"]
    assert float(task.detach()) == pytest.approx(exp["losses"]["task"], rel=1e-5)
    for name in ("kd", "cwd_feature", "cwd_logits", "adv"):
        got = float(losses[f"loss_{name}"].detach())
        assert got == pytest.approx(exp["losses"][name], rel=1e-5), name
    assert float(logs["d_loss_adv"]) == pytest.approx(exp["losses"]["d_adv"], rel=1e-5)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    state = student.state_dict()
    assert set(key_map) == set(exp["student"])
    for rk, rec in exp["student"].items():
        kk = key_map[rk]
        got = state[kk].float()
        close(got.flatten()[: rec["after"].numel()], rec["after"], 1e-5, f"student {kk}")
        delta = float((got - before[kk].float()).norm())
        assert delta == pytest.approx(rec["norm_delta"], rel=1e-4, abs=1e-5), kk
    check_d(adv, before_d, exp["d"])


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


# numbers compared with fixtures computed in one thread (conftest.single_thread)
pytestmark = pytest.mark.single_thread
