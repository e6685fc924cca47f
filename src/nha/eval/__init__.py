"""Evaluation: lm-eval on NHA models offline, recall and long-context suites, inference-time window search."""
from nha.eval.harness import COMMONSENSE, SHIPPED_TASKS, evaluate, results_table
from nha.eval.loading import byte_tokenizer, load_model, load_model_and_tokenizer, load_tokenizer
from nha.eval.longctx import SUITE_TASKS, multikey_haystack, passkey, run_suite
from nha.eval.windows import apply_windows, calibration_loss, current_layout, search_windows, state_bytes

__all__ = ["COMMONSENSE", "SHIPPED_TASKS", "SUITE_TASKS", "apply_windows", "byte_tokenizer", "calibration_loss",
           "current_layout", "evaluate", "load_model", "load_model_and_tokenizer", "load_tokenizer",
           "multikey_haystack", "passkey", "results_table", "run_suite", "search_windows", "state_bytes"]
