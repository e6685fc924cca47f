import json

from nha.cli import main


def test_eval_unknown_task_is_one_clear_line(capsys):
    assert main(["eval", "nha-h:tiny", "--tasks", "arc_easyy"]) == 2
    assert "unknown task 'arc_easyy'" in capsys.readouterr().err


def test_eval_missing_model_folder(capsys, tmp_path):
    assert main(["eval", str(tmp_path / "none"), "--tasks", "nha_recall_mc"]) == 2
    assert "neither a saved model folder nor a preset" in capsys.readouterr().err


def test_eval_suite_json_and_plot(tmp_path):
    out, plot = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["eval", "nha-h:tiny", "--tasks", "niah_multikey", "--lengths", "128", "256", "--num-examples", "2",
                 "--out", str(out), "--plot", str(plot)]) == 0
    assert [r["length"] for r in json.loads(out.read_text())["suite"]] == [128, 256] and plot.stat().st_size > 0


def test_search_windows_cli_saves_applied_model(tmp_path):
    out = tmp_path / "s.json"
    assert main(["search-windows", "nha-h:tiny", "--max-state-bytes", "64KiB", "--context-len", "2048",
                 "--candidates", "0", "8", "full", "--calib-rows", "2", "--calib-len", "64", "--max-evals", "20",
                 "--out", str(out), "--plot", str(tmp_path / "t.png"), "--save", str(tmp_path / "m")]) == 0
    res = json.loads(out.read_text())
    assert res["chosen"]["state_bytes"] <= 64 * 1024
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["window_size"] == res["chosen"]["layout"]
