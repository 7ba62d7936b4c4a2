"""The benchmark scripts' plumbing, on tiny models: a rented GPU's minutes should not be the first
time a row, a FLOP count or a failure path runs. (Their numbers are measured on demand, never
asserted here.)"""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils import flop_counter

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _common
    import train_step

    return _common, train_step


def test_rows_come_in_groups_each_with_the_row_it_is_compared_with(benchmarks):
    _, train_step = benchmarks
    jobs = train_step._jobs({"device-labels", "compile"}, ["timesformer"], "tiny_patch8_64")
    names = [(train_step._name(job), train_step._name(ref)) for job, ref in jobs]
    tsf = "timesformer_tiny_patch8_64"
    assert names == [
        (f"{tsf} +TIME", f"{tsf} baseline"),
        (f"{tsf} +TIME [device flow labels]", f"{tsf} baseline"),
        (f"{tsf} +TIME [device flow labels]", f"{tsf} +TIME"),
        (f"{tsf} baseline [compiled]", f"{tsf} baseline"),
        (f"{tsf} +TIME [compiled]", f"{tsf} +TIME"),
    ]
    # X-ViT has no compile or device-label rows of its own: those are TimeSformer's.
    assert train_step._jobs({"compile"}, ["xvit"], "tiny_patch8_64") == []


def test_rows_sharing_one_process_are_measured_and_a_failed_row_loses_no_other(benchmarks):
    _, train_step = benchmarks
    job = {
        "device": "cpu",
        "batch": 1,
        "steps": 1,
        "warmup": 0,
        "threads": 1,
        "kwargs": {"num_frames": 8, "depth": 1},
        "backbone": "timesformer_tiny_patch8_64",
    }
    with train_step._runner(shared=True) as run:  # the GPU's way: all rows in one process
        failed = run({**job, "backbone": "no_such_backbone", "losses": "baseline"})
        baseline = run({**job, "losses": "baseline"})
        with_time = run({**job, "losses": "+TIME", "device_flow_labels": True})
    assert "no_such_backbone" in failed["error"]
    for row in (baseline, with_time):
        assert row["step_ms"] > 0 and row["clips_per_s"] > 0
        assert row["gflop_per_step"] > 0 and row["tflop_per_s"] > 0
    # +TIME adds the shuffled copy's pass: more than the baseline's arithmetic.
    assert with_time["gflop_per_step"] > 1.5 * baseline["gflop_per_step"]


def test_the_flop_count_includes_the_cpu_attention_kernel(benchmarks):
    _common, _ = benchmarks
    q, k, v = (torch.randn(2, 3, 65, 32, requires_grad=True) for _ in range(3))

    def attention():
        F.scaled_dot_product_attention(q, k, v).sum().backward()

    total, by_op = _common.count_flops(attention)
    forward = flop_counter.sdpa_flop_count(q.shape, k.shape, v.shape)
    backward = flop_counter.sdpa_backward_flop_count(q.shape, q.shape, k.shape, v.shape)
    assert total == forward + backward > 0
    assert set(by_op) == {
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention_for_cpu_backward",
    }


def test_a_commit_can_be_named_where_the_tree_has_no_git(benchmarks, monkeypatch):
    _common, _ = benchmarks
    monkeypatch.setenv("BENCHMARK_COMMIT", "abc1234")
    assert _common.commit() == "abc1234"


def test_ours_and_the_transformers_port_are_timed_on_the_same_weights(benchmarks):
    pytest.importorskip("transformers")
    import vs_transformers

    # (name, image size, patch, width, depth, heads, batch)
    size = ("tiny", 32, 16, 32, 1, 2, 2)
    row = vs_transformers._speed(
        size, "cpu", rounds=1, per_round=1, threads=torch.get_num_threads()
    )
    assert row["max_abs_logit_difference"] < 1e-5
    assert row["ours_train_s"] > 0 and row["theirs_train_s"] > 0
    assert 0 < row["linear_gflop_per_step"] < row["gflop_per_step"]
    assert sys.modules["_common"].spec_peak_tflops(torch.device("cpu")) is None
