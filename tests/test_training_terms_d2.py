"""The meta-architecture side of the training-term composition: the LAD teacher's consistency is
a term built from MODEL.LAD, and a term with its own optimizer step runs inside a real training
forward, its reports logged to detectron2's event storage."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.detectron2

import _d2_helpers as H  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from textkd.distill.base import TrainingTerm  # noqa: E402
from textkd.distill.lad import LADConsistency  # noqa: E402
from torch import nn  # noqa: E402


def _batch(k: int):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(2):
        y = torch.randint(0, k, (48, 48), generator=g)
        y[:4] = 255
        image = torch.randint(0, 255, (3, 48, 48), generator=g).float()
        out.append({"image": image, "sem_seg": y, "height": 48, "width": 48})
    return out


class _Critic(TrainingTerm):
    def __init__(self, k: int):
        super().__init__()
        self.critic = nn.Conv2d(k, 1, 1)
        self.opt = torch.optim.SGD(self.critic.parameters(), lr=0.5)

    def own_parameters(self):
        return list(self.critic.parameters())

    def extra_step(self, student_out, teacher_out, targets=None, *, iteration=None):
        loss = (
            self.critic(student_out.logits.detach()) - self.critic(teacher_out.logits.detach())
        ).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"critic_gap": loss.detach()}

    def forward(self, student_out, teacher_out, targets=None, *, iteration=None):
        return {"loss_adv": -self.critic(student_out.logits).mean()}


def test_lad_terms_and_a_term_with_its_own_step(tmp_path, single_thread):
    cfg = H.load_cfg(
        H.teacher_config(tmp_path / "lad.yaml", channels=32, lad=True, train=None),
        ["MODEL.DEVICE", "cpu"],
    )
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert model.term_names == ["lad_consistency"]
    assert isinstance(model.lad_consistency, LADConsistency)
    assert model.lad_consistency.weight == cfg.MODEL.LAD.CONSISTENCY_WEIGHT
    assert not any(k.startswith("lad_consistency") for k in model.state_dict())

    critic = _Critic(H.NUM_CLASSES)
    model._set_terms({"adv": critic})
    before = critic.critic.weight.detach().clone()
    with EventStorage(0) as storage:
        losses = model(_batch(H.NUM_CLASSES))
        logged = storage.latest()
    assert {"loss_consistency", "loss_adv"} <= set(losses)
    assert not torch.equal(before, critic.critic.weight)  # its own step ran
    assert "critic_gap" in logged
    with pytest.raises(ValueError, match="'adv' is taken"):
        model._set_terms({"adv": critic})
