import json

import pytest

from nha.eval.harness import evaluate, results_table, task_config
from nha.eval.loading import byte_tokenizer

ARC_DOCS = [
    {"id": "a", "question": "Which is a liquid?",
     "choices": {"text": ["ice", "water", "stone"], "label": ["A", "B", "C"]}, "answerKey": "B"},
    {"id": "b", "question": "What gives light?", "choices": {"text": ["sun", "rock"], "label": ["1", "2"]},
     "answerKey": "1"},
]


def test_lm_eval_runs_shipped_tasks_on_a_tiny_model(tiny):
    out = evaluate(tiny, byte_tokenizer(), ["nha_recall_mc", "nha_sonnet_ppl"], limit=3, batch_size=4)
    assert out["n_samples"] == {"nha_recall_mc": 3, "nha_sonnet_ppl": 3}
    assert 0.0 <= out["results"]["nha_recall_mc"]["acc"] <= 1.0
    # an untrained byte model is near uniform over 256 bytes: 8 bits per byte, give or take
    assert 6.0 < out["results"]["nha_sonnet_ppl"]["bits_per_byte"] < 10.0
    assert "| nha_recall_mc | 3 |" in results_table(out)


def test_commonsense_task_reads_local_data_dir(tiny, tmp_path):
    (tmp_path / "arc_easy").mkdir()
    (tmp_path / "arc_easy" / "test.jsonl").write_text("\n".join(json.dumps(d) for d in ARC_DOCS) + "\n")
    out = evaluate(tiny, byte_tokenizer(), ["arc_easy"], data_dir=tmp_path, bootstrap_iters=0)
    assert out["n_samples"]["arc_easy"] == 2
    assert out["results"]["arc_easy"]["acc"] in (0.0, 0.5, 1.0)


def test_task_yaml_path_with_relative_data(tiny, tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"q": "1 2 3", "c": [" 4", " x"], "y": 0}) + "\n")
    (tmp_path / "mine.yaml").write_text(
        "task: mine\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: d.jsonl\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{c}}'\n"
        "doc_to_target: '{{y}}'\nmetric_list:\n  - metric: acc\n")
    out = evaluate(tiny, byte_tokenizer(), [str(tmp_path / "mine.yaml")], bootstrap_iters=0)
    assert out["n_samples"]["mine"] == 1


def test_bad_tasks_and_paths_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'hellaswagg'"):
        task_config("hellaswagg")
    with pytest.raises(ValueError, match="pass --data-dir"):
        task_config("piqa")
    with pytest.raises(FileNotFoundError, match="does not exist or is not a folder"):
        task_config("piqa", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="none of piqa/validation.jsonl"):
        task_config("piqa", tmp_path)
    with pytest.raises(FileNotFoundError, match="task file"):
        task_config(str(tmp_path / "missing.yaml"))
    (tmp_path / "t.yaml").write_text(
        "task: t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: no.jsonl\n")
    with pytest.raises(FileNotFoundError, match="no.jsonl does not exist"):
        task_config(str(tmp_path / "t.yaml"))
