"""Framework-free parts of the benchmark (benchmarks.measure): timing summaries, memory helpers,
the loss micro-benchmarks' records on tiny sizes and the evaluator-memory measurement."""

import math
import statistics

import numpy as np
import pytest
import torch

from benchmarks import measure as B

# --------------------------------------------------------------------------- timing


def test_summarize_by_hand():
    s = B.summarize([4.0, 1.0, 10.0, 2.0, 3.0])
    assert set(s) == set(B.STATS_KEYS)
    assert s["n"] == 5
    assert s["median"] == 3.0
    assert s["mean"] == pytest.approx(4.0)
    # sample std: sqrt(sum((x - 4)^2) / 4) = sqrt((0 + 9 + 36 + 4 + 1) / 4)
    assert s["std"] == pytest.approx(math.sqrt(50 / 4))
    # sorted 1 2 3 4 10: 25th percentile at position 1 -> 2, 75th at position 3 -> 4
    assert (s["q1"], s["q3"], s["iqr"]) == (2.0, 4.0, 2.0)
    assert (s["min"], s["max"]) == (1.0, 10.0)
    one = B.summarize([0.5])
    assert one["std"] == 0.0 and one["median"] == one["min"] == one["max"] == 0.5
    with pytest.raises(ValueError, match="no samples"):
        B.summarize([])
    with pytest.raises(ValueError, match="non-finite"):
        B.summarize([1.0, float("nan")])


def test_time_calls_counts_and_measures():
    calls = []
    times = B.time_calls(lambda: calls.append(1), iters=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3
    assert all(t >= 0 for t in times)
    with B.timed("cpu") as t:
        x = sum(range(10000))
    assert x == 49995000 and t.seconds > 0
    with pytest.raises(ValueError, match="iters"):
        B.time_calls(lambda: None, iters=0)


def test_time_interleaved_alternates():
    order = []
    a, b = B.time_interleaved([lambda: order.append("a"), lambda: order.append("b")], 3, 1)
    assert order == ["a", "b"] * 4
    assert len(a) == len(b) == 3 and all(t >= 0 for t in a + b)
    with pytest.raises(ValueError, match="warmup"):
        B.time_interleaved([lambda: None], 1, -1)


# --------------------------------------------------------------------------- parsing and inputs


def test_parse_shape_and_size():
    assert B.parse_shape("16x512x1024", 3) == (16, 512, 1024)
    assert B.parse_size("256x512") == (256, 512)
    assert B.parse_size("96") == (96, 96)
    for bad in ("16x0x4", "axb", "2x3"):
        with pytest.raises(ValueError, match="--noise-shape"):
            B.parse_shape(bad, 3, "--noise-shape")
    with pytest.raises(ValueError, match="size"):
        B.parse_size("1x2x3")


def test_random_labels_are_blocky_and_valid():
    gen = torch.Generator().manual_seed(0)
    lab = B.random_labels(3, 40, 36, 7, ignore_label=255, block=8, generator=gen)
    assert lab.shape == (3, 40, 36) and lab.dtype == torch.int64
    ok = ((lab >= 0) & (lab < 7)) | (lab == 255)
    assert bool(ok.all())
    # every 8x8 block holds a single value
    for n in range(3):
        for i in range(0, 40, 8):
            for j in range(0, 36, 8):
                assert lab[n, i : i + 8, j : j + 8].unique().numel() == 1
    many = B.random_labels(4, 256, 256, 5, block=4, ignore_fraction=0.2, generator=gen)
    frac = float((many == 255).float().mean())
    assert 0.1 < frac < 0.3


# --------------------------------------------------------------------------- memory


def test_peak_extra_bytes_cpu_sees_the_peak_not_the_sum():
    n = 1 << 20  # 4 MiB of float32

    def fn():
        a = torch.ones(n)
        del a
        b = torch.ones(2 * n)  # 8 MiB, allocated after the 4 MiB block is freed
        return b

    b, peak = B.peak_extra_bytes(fn, "cpu")
    assert b.numel() == 2 * n
    assert peak is not None
    assert 8 * 2**20 <= peak < 12 * 2**20


def test_tensor_and_state_nbytes():
    x = torch.zeros(10, 10)
    assert B.tensor_nbytes([x, x[0], x.t()]) == 400  # views share one storage
    assert B.tensor_nbytes([x, torch.zeros(5, dtype=torch.int64)]) == 440

    class Holder:
        def __init__(self):
            self.arr = np.zeros(100, dtype=np.int64)  # 800
            self.t = torch.zeros(10)  # 40
            self.items = [np.zeros(3, dtype=np.int32), "abcd"]  # 12 + 4
            self.same = self.arr  # counted once

    assert B.state_nbytes(Holder()) == 800 + 40 + 12 + 4 + len("arr") + len("t") + len(
        "items"
    ) + len("same")


def test_rss_helpers():
    cur, peak = B.current_rss_bytes(), B.peak_rss_bytes()
    assert peak > 0
    if cur is not None:
        assert 0 < cur <= peak * 1.05


# --------------------------------------------------------------------------- loss benchmarks


def _check_stats(s):
    assert set(B.STATS_KEYS) <= set(s)
    assert s["min"] <= s["median"] <= s["max"] and s["n"] >= 1


def test_loss_benchmark_records_on_tiny_sizes():
    recs = B.run_loss_benchmarks(
        noise_shape=(2, 24, 32),
        noise_classes=6,
        ifvd_classes=(3, 5),
        ifvd_shape=(2, 4, 6, 8),
        cirkd_batches=(2, 3),
        cirkd_shape=(4, 6, 5),
        cirkd_pooling=True,
        iters=2,
        warmup=0,
        progress=lambda msg: None,
    )
    assert [r["name"] for r in recs] == ["noise_labels", "ifvd_3", "ifvd_5", "cirkd_b2", "cirkd_b3"]
    for r in recs:
        for key in ("params", "backward", "vectorised", "loop", "speedup", "max_abs_diff"):
            assert key in r
        _check_stats(r["vectorised"])
        _check_stats(r["loop"])
        assert r["vectorised"]["n"] == r["loop"]["n"] == 2
        assert r["speedup"] == pytest.approx(r["loop"]["median"] / r["vectorised"]["median"])
        # vectorised and loop implementations agree on the same inputs
        assert r["equal"] is True
        assert all(d is not None and d <= 1e-5 for d in r["max_abs_diff"].values())
        assert r["pass"] == bool(r["speedup"] >= r["target_speedup"] and r["equal"]) or (
            "memory" in r
        )
    noise = recs[0]
    assert noise["backward"] is False and noise["max_abs_diff"] == {"output": 0.0}
    assert noise["params"] == {"batch": 2, "height": 24, "width": 32, "num_classes": 6}
    assert recs[1]["target_speedup"] == 5.0
    assert recs[1]["params"]["label_height"] == 6 * 8
    assert set(recs[1]["max_abs_diff"]) == {"loss", "grad"}
    for r, b in zip(recs[3:], (2, 3)):
        mem = r["memory"]
        pixels = math.ceil(6 / 2) * math.ceil(5 / 2)
        assert r["params"]["pixels_per_image"] == pixels
        assert mem["pair_map_bytes"] == pixels * pixels * 4
        assert mem["all_pairs_bytes"] == b * b * pixels * pixels * 4
        assert mem["feature_map_bytes"] == b * 4 * 6 * 5 * 4
        assert mem["bound_bytes"] == int(
            B.TARGETS["cirkd_peak_pair_maps_max"] * mem["pair_map_bytes"]
            + B.TARGETS["cirkd_peak_feature_maps_max"] * mem["feature_map_bytes"]
        )
        assert mem["pass"] == (mem["vectorised_peak_bytes"] <= mem["bound_bytes"])
        assert mem["method"] == "torch_profiler"
        assert mem["vectorised_peak_bytes"] > 0 and mem["loop_peak_bytes"] > 0
        assert mem["vectorised_peak_pair_maps"] == pytest.approx(
            mem["vectorised_peak_bytes"] / mem["pair_map_bytes"]
        )
        assert r["pass"] == bool(r["speed_pass"] and mem["pass"] is not False)


def test_cirkd_memory_is_bounded_by_one_pair_and_the_loop_is_not():
    """At a size where the maps dominate, the vectorised loss stays within a few pair maps at
    batch 4 while the loop reference (all B² pairs in the autograd graph) needs far more."""
    rec = B.bench_cirkd(batch=4, channels=8, height=24, width=24, pooling=False, iters=1, warmup=0)
    mem = rec["memory"]
    assert mem["feature_map_bytes"] * 10 < mem["pair_map_bytes"]  # maps dominate here
    assert mem["vectorised_peak_pair_maps"] <= B.TARGETS["cirkd_peak_pair_maps_max"]
    assert mem["loop_peak_pair_maps"] > 16  # 4² = 16 pairs, each with maps kept for backward
    assert mem["pass"] is True
    assert mem["loop_peak_bytes"] > mem["bound_bytes"]


# --------------------------------------------------------------------------- evaluator memory


def test_eval_memory_flat_for_the_confusion_matrix():
    rec = B.bench_eval_memory(num_classes=5, height=8, width=8, counts=(3, 30))
    assert [r["images"] for r in rec["rows"]] == [3, 30]
    # the confusion matrix core holds one K×K int64 matrix whatever the image count
    assert rec["rows"][0]["state_bytes"] == rec["rows"][1]["state_bytes"]
    assert rec["rows"][0]["state_bytes"] >= 5 * 5 * 8
    assert rec["flat"] is True and rec["pass"] is True


def test_eval_memory_detects_a_growing_evaluator():
    class Keeper:
        def __init__(self):
            self.preds = []

        def process(self, inputs, outputs):
            self.preds.extend(o["sem_seg"].argmax(0).numpy() for o in outputs)

    rec = B.bench_eval_memory(5, 8, 8, counts=(2, 20), make_evaluator=Keeper)
    rows = rec["rows"]
    # argmax gives int64 8×8 maps: 512 bytes per image plus the attribute name
    assert rows[0]["state_bytes"] == 2 * 512 + len("preds")
    assert rows[1]["state_bytes"] == 20 * 512 + len("preds")
    assert rec["flat"] is False and rec["pass"] is False


# --------------------------------------------------------------------------- report layout


def _stats(v=1.0):
    return B.summarize([v])


def _minimal_report():
    return {
        "schema": B.SCHEMA,
        "env": {"torch": "x", "python": "3", "device": "cpu", "threads": 1},
        "settings": {"batch": 2, "size": "8x8", "iters": 1, "warmup": 0, "input": "random"},
        "configs": [
            {
                "name": "a",
                "config_file": "a.yaml",
                "opts": [],
                "distill": False,
                "random_teacher": False,
                "random_text_bank": False,
                "step": _stats(),
                "parts": {"optimizer": _stats(0.1)},
                "memory": {
                    "peak_bytes": 2,
                    "state_bytes": 1,
                    "step_extra_peak_bytes": 1,
                    "rss_peak_bytes": 3,
                    "rss_growth_bytes": 0,
                    "method": "torch_profiler",
                },
                "eval": {"images_per_s": 1.0, "batch_seconds": _stats()},
                "derived": {"distill_overhead": None, "target": 0.1, "pass": None},
            }
        ],
        "comparisons": [],
    }


def test_validate_report_accepts_and_names_missing_keys():
    rep = _minimal_report()
    B.validate_report(rep)
    del rep["configs"][0]["memory"]["peak_bytes"]
    with pytest.raises(ValueError, match="peak_bytes"):
        B.validate_report(rep)
    rep = _minimal_report()
    rep["schema"] = "other/0"
    with pytest.raises(ValueError, match="schema"):
        B.validate_report(rep)
    rep = _minimal_report()
    rep["configs"][0]["step"]["median"] = 5.0  # outside [min, max]
    with pytest.raises(ValueError, match="median"):
        B.validate_report(rep)


def test_format_table():
    text = B.format_table([["a", 1], ["bbb", None]], ["x", "yy"])
    lines = text.splitlines()
    assert lines[0].split() == ["x", "yy"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["a", "1"] and lines[3].split() == ["bbb"]
    assert statistics.median([len(line) for line in lines]) > 0
