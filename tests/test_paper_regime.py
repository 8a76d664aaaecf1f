"""The paper-regime report pairs items: gains are final minus untrained on the same items, DevFT −
FedIT is the difference of the two finals, learned − forgotten is the micro accuracy change."""
import json
import random

import pytest

from devft_lab.experiments import paper_regime as pr
from devft_lab.stats import summarise

TASKS = {"bbh": ["b1", "b2"], "mmlu": ["m1"], "heldout": ["h1", "h2", "h3"], "indist": ["i1"]}


def _items(p: float, rng: random.Random) -> list[dict]:
    return [{"suite": s, "task": t, "id": f"{t}-{i}", "correct": (c := rng.random() < p), "correct_norm": c,
             "answer_nll": rng.random()}
            for s, ts in TASKS.items() for t in ts for i in range(20)]


def _run(root, name, p_final, seed, done=True, cpu=None):
    d = root / name
    d.mkdir(parents=True)
    init = _items(0.4, random.Random(seed))  # the same untrained items and scores for every run of a seed
    final = _items(p_final, random.Random(hash((name, seed)) % 1000))
    for f, rows in (("initial_items.jsonl", init), ("final_items.jsonl", final)):
        (d / f).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "summary.json").write_text(json.dumps({"done": done, "rounds": 64, "flops_estimate": 1e13,
                                                "uplink_bytes": 2e6, "wall_s": 60.0}))
    (d / "rounds.jsonl").write_text("")
    (d / "meta.json").write_text(json.dumps({"machine": "test", **({"cpu_s": cpu} if cpu else {})}))
    return init, final


def test_gains_comparisons_and_flips_pair_the_items(tmp_path):
    made = {}
    for seed in (1, 2):
        made["devft", seed] = _run(tmp_path, f"paper_devft_s{seed}", 0.6, seed, cpu=120.0)
        made["fedit_flops", seed] = _run(tmp_path, f"paper_fedit_flops_s{seed}", 0.5, seed)
    _run(tmp_path, "paper_fedit_s1", 0.9, 1, done=False)  # unfinished: left out
    _run(tmp_path, "other_s1", 0.9, 1)  # not a paper-regime run: left out
    runs = pr.load_runs(tmp_path)
    assert set(runs) == {"devft", "fedit_flops"} and sorted(runs["devft"]) == [1, 2]
    data = pr.build(runs, n_boot=200)
    assert set(data["comparisons"]) == {"devft-fedit_flops"}
    for method in ("devft", "fedit_flops"):
        for group, suites in {"bbh": ("bbh",), "unseen": pr.UNSEEN}.items():
            row = data["methods"][method]["rows"][group]
            per_seed = [summarise(pr.only(made[method, s][1], suites))["avg"]
                        - summarise(pr.only(made[method, s][0], suites))["avg"] for s in (1, 2)]
            assert row["gain"]["mean"] == pytest.approx(sum(per_seed) / 2)
            nll = [summarise(pr.only(made[method, s][1], suites))["answer_nll"] for s in (1, 2)]
            assert row["nll_final"]["mean"] == pytest.approx(sum(nll) / 2)
            lo, hi = row["gain"]["ci95"]
            assert lo <= row["gain"]["mean"] <= hi
            for s in (1, 2):  # learned - forgotten = the change of the item-level accuracy
                f, (init, final) = row["flips"][s], made[method, s]
                init, final = pr.only(init, suites), pr.only(final, suites)
                micro = 100.0 * (sum(r["correct"] for r in final) - sum(r["correct"] for r in init)) / len(init)
                assert f["learned"] - f["forgotten"] == pytest.approx(micro) and f["items"] == len(init)
    gap = data["comparisons"]["devft-fedit_flops"]["unseen"]
    for s in (1, 2):
        want = (summarise(pr.only(made["devft", s][1], pr.UNSEEN))["avg"]
                - summarise(pr.only(made["fedit_flops", s][1], pr.UNSEEN))["avg"])
        assert gap["per_seed"][s]["gap"] == pytest.approx(want)
    assert data["methods"]["devft"]["cpu_min"]["mean"] == pytest.approx(2.0)  # meta cpu_s, in minutes
    assert data["methods"]["fedit_flops"]["cpu_min"]["n"] == 0  # not measured: not invented
    md = pr.markdown(data, "cmd")
    assert "DevFT, 4 x 16 rounds − FedIT, equal FLOPs" in md and "unseen: bbh + mmlu + heldout" in md
    head = pr.headline(data).splitlines()
    assert len(head) == (2 + 2) + 1 + (2 + 1) and head[-1].split(" | ")[1] == pr.fmt_ci(gap)


def test_a_run_with_an_unrecorded_sitting_reports_no_cpu_or_wall_time(tmp_path):
    """meta.json's cpu_s sums only the sittings that recorded it; a resources.json marked partial
    says one did not, so the run's CPU time is unknown: left out of the mean, not understated."""
    _run(tmp_path, "paper_devft_s1", 0.6, 1, cpu=120.0)
    _run(tmp_path, "paper_devft_s2", 0.6, 2, cpu=60.0)
    (tmp_path / "paper_devft_s2" / "resources.json").write_text(json.dumps({"cpu_s": 60.0, "partial": True}))
    m = pr.build(pr.load_runs(tmp_path), n_boot=50)["methods"]["devft"]
    assert m["cpu_min"]["n"] == 1 and m["cpu_min"]["mean"] == pytest.approx(2.0)
    assert m["wall_min"]["n"] == 1  # the wall time too


def test_flips_refuse_different_items():
    a = _items(0.5, random.Random(0))
    with pytest.raises(ValueError, match="different items"):
        pr.flips(a, a[1:])


def test_main_writes_the_report_and_says_when_there_is_nothing(tmp_path, capsys):
    assert pr.main(["--runs", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no finished" in capsys.readouterr().err
    _run(tmp_path, "paper_devft_s3", 0.6, 3)
    assert pr.main(["--runs", str(tmp_path), "--out", str(tmp_path / "r")]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["methods"]["devft"]["seeds"] == [3] and (tmp_path / "r.png").stat().st_size > 0
