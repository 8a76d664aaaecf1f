"""The runtime benchmark's pieces on the tiny model: they measure what they claim."""
from devft_lab.experiments import bench


def test_eval_speed_compares_the_same_items_and_the_batched_scorer_agrees():
    out = bench.eval_speed("tiny-llama", "bfloat16", n_items=6)
    assert out["items"] == 6
    assert out["batched_float32"]["same_pred"] == 6 and out["batched_float32"]["max_ll_diff"] < 1e-3
    assert out["one_at_a_time_float32"]["speedup"] == 1.0
    assert {"one_at_a_time_float32", "batched_float32", "batched_bfloat16"} <= set(out)


def test_throughput_reports_every_variant_and_stage():
    peaks = {"float32": 100.0, "bfloat16": 200.0}
    out = bench.throughput("tiny-llama", "bfloat16", peaks, steps=1, batch_size=4, repeats=2)
    from devft_lab.core.compiled import compile_available

    expected = {"padded_float32", "packed_float32", "packed_bfloat16"}
    compiled = {"packed_bfloat16_compiled"}
    kernel = out["attention_probe"]["chosen"]  # the probed kernel gets variants of its own
    assert set(out["attention_probe"]["ms"]) == {"sdpa", "eager"}
    if kernel != "sdpa":
        expected.add(f"packed_bfloat16_{kernel}")
        compiled.add(f"packed_bfloat16_{kernel}_compiled")
    if compile_available()[0]:
        expected |= compiled
    expected.add(f"{sorted(expected, key=len)[-1]}_bf16_weights")  # the fastest path again, bf16 weights
    assert set(out["local_step"]) == expected
    # packing drops padding only: the real tokens counted are the same
    assert len({v["tokens"] for v in out["local_step"].values()}) == 1
    assert out["stage_round_cost_ratio"][-1] == 1.0 and len(out["stage_round_s"]) == len(out["stage_capacities"])
    c = out["gemm_ceiling"]  # the GEMMs of every projection of every layer: 7 per LLaMA layer
    assert sum(c["linear_shapes"].values()) == 7 * 8 and c["train_gflops"] > 0
    assert len(c["train_gflops_all"]) == 2 and c["train_gflops"] == max(c["train_gflops_all"])  # one a pass, the best
    v = out["local_step"]["packed_bfloat16"]
    assert abs(v["peak_share"] - v["train_gflops"] / 200.0) < 1e-12
    # every timing is the best of the interleaved passes, and the full stage's round is that variant's
    for v in out["local_step"].values():
        assert len(v["seconds_all"]) == 2 and v["seconds"] == min(v["seconds_all"])
    assert out["stage_round_s"][-1] == out["local_step"]["packed_bfloat16"]["seconds"]
    # the profiled step of the fastest variant: shares of its time, GEMMs among them
    b = out["step_breakdown"]
    assert b["variant"] in out["local_step"] and abs(sum(b["share"].values()) - 1) < 0.01 and b["share"]["gemm"] > 0
