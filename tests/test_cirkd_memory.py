"""CIRKD's memory-based contrast (textkd.distill.cirkd_memory) against the reference code.

The expected numbers come from winycg/CIRKD's ``StudentSegContrast`` run on fixed inputs with
fixed random choices (``tests/fixtures/make_cirkd_memory_fixture.py``, stored in
``tests/data/reference/cirkd_memory.pt``): losses, gradients, and the queues and pointers after
each enqueue (the pointers wrap, within a step too)."""

from pathlib import Path

import pytest
import torch
from _reference_weights import deterministic_state_dict
from textkd.distill.base import TermContext
from textkd.distill.cirkd_memory import (
    CIRKDMemory,
    _pixel_pointer_starts,
    enqueue,
    group_pixel_choices,
)
from textkd.models.outputs import SegOutput

FIXTURE = Path(__file__).parent / "data" / "reference" / "cirkd_memory.pt"


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURE, weights_only=False)


class _FixtureChoices(CIRKDMemory):
    """The term with the reference run's random choices instead of its own draws."""

    choices: list = []

    def random_choices(self, counts, iteration):
        keys, pixel_index, region_index = self.choices.pop(0)
        assert keys.shape[0] == counts.numel()
        return keys, pixel_index, region_index


def _term(ref, cls=CIRKDMemory, **kw):
    s = ref["settings"]
    term = cls(
        s["num_classes"],
        s["s_channels"],
        s["t_channels"],
        pixel_weight=1.0,
        region_weight=2.0,
        pixel_memory_size=s["pixel_memory_size"],
        region_memory_size=s["region_memory_size"],
        pixel_contrast_size=s["pixel_contrast_size"],
        region_contrast_size=s["region_contrast_size"],
        contrast_temperature=s["contrast_temperature"],
        kd_temperature=s["contrast_kd_temperature"],
        ignore_label=s["ignore_label"],
        **kw,
    )
    head = deterministic_state_dict(ref["head_shapes"], seed=ref["head_seed"])
    term.project_head.load_state_dict(head)
    term.pixel_queue.copy_(ref["initial"]["pixel_queue"])
    term.region_queue.copy_(ref["initial"]["region_queue"])
    return term


def _out(feature):
    return SegOutput(logits=torch.zeros(feature.shape[0], 4, *feature.shape[-2:]), feature=feature)


def test_losses_gradients_and_queues_match_the_reference(ref):
    term = _term(ref, _FixtureChoices).train()
    term.choices = [
        (st["pixel_keys"], st["pixel_index"], st["region_index"]) for st in ref["steps"]
    ]
    for i, st in enumerate(ref["steps"]):
        s_feats = st["s_feats"].clone().requires_grad_()
        term.zero_grad()
        out = term(_out(s_feats), _out(st["t_feats"]), st["labels"], iteration=i)
        assert sorted(out) == ["loss_cirkd_memory_pixel", "loss_cirkd_memory_region"]
        # weights 1 and 2: the fixture's backward is pixel + 2 * region
        torch.testing.assert_close(
            out["loss_cirkd_memory_pixel"], st["loss_pixel"], rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(
            out["loss_cirkd_memory_region"], 2.0 * st["loss_region"], rtol=1e-5, atol=1e-6
        )
        for name in ("pixel_queue", "region_queue"):
            torch.testing.assert_close(getattr(term, name), st[name], rtol=0, atol=1e-6, msg=name)
        for name in ("pixel_ptr", "region_ptr"):
            assert getattr(term, name).tolist() == st[name].tolist(), (i, name)
        sum(out.values()).backward()
        torch.testing.assert_close(s_feats.grad, st["grad_s_feats"], rtol=1e-4, atol=1e-7)
        for n, p in term.project_head.named_parameters():
            torch.testing.assert_close(p.grad, st["grad_head"][n], rtol=1e-4, atol=1e-7, msg=n)
        for n, v in term.project_head.named_buffers():
            torch.testing.assert_close(v, st["bn_running"][n], rtol=1e-5, atol=1e-7, msg=n)
    # the fixture exercises both wraps: the pointers went round
    assert ref["steps"][-1]["region_ptr"].tolist() != [0, 0, 0, 0]


def test_enqueue_alone_matches_the_reference_queue(ref):
    """The pure enqueue on the fixture's normalised teacher features and resized labels."""
    term = _term(ref)
    s = ref["settings"]
    for st in ref["steps"]:
        t = torch.nn.functional.normalize(st["t_feats"], p=2, dim=1)
        lab = torch.nn.functional.interpolate(st["labels"][:, None].float(), s["feat_size"])
        enqueue(term.state, t, lab[:, 0].long(), st["pixel_keys"], ignore_label=255)
        torch.testing.assert_close(term.pixel_queue, st["pixel_queue"], rtol=0, atol=1e-6)
        torch.testing.assert_close(term.region_queue, st["region_queue"], rtol=0, atol=1e-6)


def _loop_pointers(k, cls, ptr, memory):
    """The reference's sequential pointer recursion, write by write."""
    ptr = ptr.clone()
    starts = []
    for kk, c in zip(k.tolist(), cls.tolist()):
        p = int(ptr[c])
        if p + kk >= memory:
            starts.append(memory - kk)
            ptr[c] = 0
        else:
            starts.append(p)
            ptr[c] = p + kk
    return starts, ptr.tolist()


@pytest.mark.parametrize("memory", [16, 17, 40, 100, 20000])
def test_vectorised_pointer_recursion_equals_the_loop(memory):
    gen = torch.Generator().manual_seed(memory)
    for _ in range(20):
        g = int(torch.randint(1, 60, (1,), generator=gen))
        k = torch.randint(1, 17, (g,), generator=gen)
        cls = torch.randint(0, 5, (g,), generator=gen)
        ptr = torch.randint(0, memory, (5,), generator=gen)
        starts, final = _pixel_pointer_starts(k, cls, ptr, memory)
        want_starts, want_final = _loop_pointers(k, cls, ptr, memory)
        assert starts.tolist() == want_starts
        assert final.tolist() == want_final


def test_draws_are_a_function_of_seed_and_iteration_only():
    a = CIRKDMemory(3, 4, 5, pixel_memory_size=50, region_memory_size=7, seed=11)
    b = CIRKDMemory(3, 4, 5, pixel_memory_size=50, region_memory_size=7, seed=11)
    c = CIRKDMemory(3, 4, 5, pixel_memory_size=50, region_memory_size=7, seed=12)
    torch.testing.assert_close(a.pixel_queue, b.pixel_queue, rtol=0, atol=0)
    counts = torch.tensor([3, 20, 7])
    torch.manual_seed(0)
    da = a.random_choices(counts, 5)
    torch.manual_seed(1)  # the global RNG plays no part
    db = b.random_choices(counts, 5)
    for x, y in zip(da, db):
        assert torch.equal(x, y)
    assert not torch.equal(a.random_choices(counts, 6)[0], da[0])
    assert not torch.equal(c.random_choices(counts, 5)[0], da[0])
    assert da[0].shape == (3, 20)
    assert group_pixel_choices(torch.tensor([], dtype=torch.long)).shape == (0, 0)


def test_from_config_defaults_off_and_refuses_bad_values():
    ctx = TermContext(
        num_classes=3, student_channels={"feature": 4}, teacher_channels={"feature": 6}
    )
    node = {
        "PIXEL_WEIGHT": 0.0,
        "REGION_WEIGHT": 0.0,
        "PIXEL_MEMORY_SIZE": 50,
        "REGION_MEMORY_SIZE": 7,
        "PIXELS_PER_CLASS": 16,
        "PIXEL_CONTRAST_SIZE": 30,
        "REGION_CONTRAST_SIZE": 9,
        "CONTRAST_TEMPERATURE": 0.1,
        "KD_TEMPERATURE": 1.0,
        "PROJ_DIM": 0,
        "INPUT": "feature",
    }
    assert CIRKDMemory.from_config(node, ctx) is None
    term = CIRKDMemory.from_config({**node, "REGION_WEIGHT": 0.1}, ctx)
    assert term.pixel_queue.shape == (3, 50, 6) and term.region_queue.shape == (3, 7, 6)
    assert term.pixel_contrast_per_class == 11 and term.region_contrast_per_class == 4
    assert term.project_head[0].in_channels == 4 and term.project_head[3].out_channels == 6
    s = _out(torch.randn(2, 4, 5, 5))
    t = _out(torch.randn(2, 6, 5, 5))
    y = torch.randint(0, 3, (2, 10, 10))
    assert list(term.train()(s, t, y, iteration=0)) == ["loss_cirkd_memory_region"]
    hidden = CIRKDMemory.from_config({**node, "PIXEL_WEIGHT": 0.1, "PROJ_DIM": 5}, ctx)
    assert hidden.project_head[0].out_channels == 5
    for key, value in (
        ("PIXEL_WEIGHT", -0.1),
        ("PIXEL_MEMORY_SIZE", 0),
        ("REGION_CONTRAST_SIZE", -1),
        ("CONTRAST_TEMPERATURE", 0.0),
        ("KD_TEMPERATURE", -1.0),
        ("PROJ_DIM", -2),
    ):
        bad = {**node, "PIXEL_WEIGHT": 0.1, key: value}
        with pytest.raises(ValueError, match=f"MODEL.DISTILL.CIRKD_MEMORY.{key}"):
            CIRKDMemory.from_config(bad, ctx)
    with pytest.raises(ValueError, match="no output 'neck'"):
        CIRKDMemory.from_config({**node, "PIXEL_WEIGHT": 0.1, "INPUT": "neck"}, ctx)


def test_all_ignored_batch_gives_zero_connected_losses():
    term = CIRKDMemory(3, 4, 6, pixel_memory_size=50, region_memory_size=7).train()
    s = torch.randn(2, 4, 5, 5, requires_grad=True)
    out = term(_out(s), _out(torch.randn(2, 6, 5, 5)), torch.full((2, 10, 10), 255), iteration=0)
    assert all(v.item() == 0 for v in out.values())
    sum(out.values()).backward()
    assert s.grad is not None
    assert term.pixel_ptr.tolist() == [0, 0, 0]


def _gloo_rank(rank: int, init: str, result_dir: str) -> None:
    """One of two gloo ranks with different batch and spatial sizes: forward the term once."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(100 + rank)  # per-rank global RNG, as the trainer seeds it
    term = CIRKDMemory(3, 4, 6, pixel_memory_size=50, region_memory_size=7, seed=-1).train()
    gen = torch.Generator().manual_seed(rank)
    b, h, w = (2, 5, 6) if rank == 0 else (1, 4, 7)
    s = torch.randn(b, 4, h, w, generator=gen)
    t = torch.randn(b, 6, h, w, generator=gen)
    y = torch.randint(0, 3, (b, h, w), generator=gen)
    y[0, 0] = 255
    term(_out(s), _out(t), y, iteration=4)
    torch.save({"state": term.state_dict(), "t": t, "y": y}, f"{result_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_of_other_sizes_enqueue_the_same(tmp_path):
    """Ranks with other batch and map sizes (pad + mask in the gather) and other global RNGs end
    with identical queues, equal to enqueuing both ranks' images in one process; with SEED < 0
    the ranks share rank 0's seed."""
    import torch.multiprocessing as mp

    mp.spawn(_gloo_rank, args=(f"file://{tmp_path}/pg", str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    # the memory state (not the head: DDP keeps parameters in step, not the term)
    for key in CIRKDMemory.rank_synced_buffers:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    # one process, the same seed, both ranks' images in rank order
    seed = int(r0["state"]["rng_seed"])
    fresh = CIRKDMemory(3, 4, 6, pixel_memory_size=50, region_memory_size=7, seed=seed)
    t = torch.zeros(3, 6, 5, 7)
    y = torch.full((3, 5, 7), 255)
    t[:2, :, :5, :6], y[:2, :5, :6] = torch.nn.functional.normalize(r0["t"], dim=1), r0["y"]
    t[2:, :, :4, :7], y[2:, :4, :7] = torch.nn.functional.normalize(r1["t"], dim=1), r1["y"]
    sizes = torch.tensor([[5, 6], [5, 6], [4, 7]])
    from textkd.distill.cirkd_memory import _groups

    counts = _groups(y, 3, 255)[2]
    keys, _, _ = fresh.random_choices(counts, 4)
    enqueue(fresh.state, t, y, keys, sizes=sizes)
    for name in ("pixel_queue", "pixel_ptr", "region_queue", "region_ptr"):
        torch.testing.assert_close(getattr(fresh, name), r0["state"][name], rtol=0, atol=1e-6)
    assert int(r0["state"]["pixel_ptr"].sum()) > 0


# numbers compared with fixtures computed in one thread (conftest.single_thread)
pytestmark = pytest.mark.single_thread
