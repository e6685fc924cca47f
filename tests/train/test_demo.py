"""`nha demo` end to end at a few steps: equal-state layouts, the table, the JSON and the plot."""
import json

from nha.cli import main
from nha.train.demo import SETUPS, matched_layouts, state_bytes


def test_layouts_share_nha_state_budget_and_swa_cannot_reach_the_pairs():
    setup = SETUPS["cpu"]
    layouts = matched_layouts(setup)
    budget = state_bytes("nha", {**setup["model"], **layouts["nha"]}, setup["task"])
    for name in ("swa", "gsa"):
        used = state_bytes(name, {**setup["model"], **layouts[name]}, setup["task"])
        assert used <= budget
        key, n = next(iter(layouts[name].items()))
        # one more window position / slot would exceed the budget: the largest that fits
        assert state_bytes(name, {**setup["model"], key: n + 1}, setup["task"]) > budget
    task = setup["task"]
    # distance from the last pair value to the first query key
    gap = task["seq_len"] - (1 if task.get("pair_tokens") else 2) * task["num_pairs"] - task["num_queries"] + 1
    reach = setup["model"]["num_hidden_layers"] * (layouts["swa"]["window_size"] - 1)
    assert reach < gap, "SWA's stacked windows must not reach the pairs, or the demo shows nothing"


def test_demo_runs_and_writes_its_results(tmp_path, capsys):
    assert main(["demo", "--steps", "3", "--seeds", "1", "--models", "swa", "nha", "--workers", "1",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| swa |" in printed and "| nha |" in printed
    data = json.loads((tmp_path / "demo_cpu.json").read_text())
    assert [r["model"] for r in data["runs"]] == ["swa", "nha"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in data["runs"])
    assert (tmp_path / "demo_cpu.png").stat().st_size > 1000 and (tmp_path / "demo_cpu.md").exists()


def test_demo_bad_arguments(tmp_path, capsys):
    assert main(["demo", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds must be a positive int" in capsys.readouterr().err
