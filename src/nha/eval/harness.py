"""lm-eval-harness on NHA models, offline: the task files shipped in `nha/eval/tasks/` and local data.

Three kinds of task names are understood:
- shipped tasks (`SHIPPED_TASKS`), whose data ships with the package, so they run anywhere;
- the paper's commonsense tasks (`DATA_DIR_TASKS`): lm-eval's own prompts and metrics, read from the standard
  jsonl files under a `data_dir` (lm-eval's built-in versions of them need the hub, which is not reachable here);
- a path to any lm-eval task YAML; relative `data_files` in it are read relative to the YAML's folder.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

TASKS_DIR = Path(__file__).parent / "tasks"
SHIPPED_TASKS = ("nha_recall_mc", "nha_sonnet_cloze", "nha_sonnet_ppl")
# where each commonsense task's split is looked for under data_dir (first match wins): the names the HF datasets
# use (ai2_arc, Rowan/hellaswag, EleutherAI/lambada_openai, baber/piqa, winogrande_xl, wikitext_document_level)
DATA_DIR_TASKS = {
    "arc_easy": ("arc_easy/test.jsonl", "ARC-Easy/test.jsonl", "arc_easy.jsonl"),
    "arc_challenge": ("arc_challenge/test.jsonl", "ARC-Challenge/test.jsonl", "arc_challenge.jsonl"),
    "hellaswag": ("hellaswag/validation.jsonl", "hellaswag.jsonl"),
    "lambada": ("lambada/test.jsonl", "lambada_openai/test.jsonl", "lambada.jsonl"),
    "piqa": ("piqa/validation.jsonl", "piqa.jsonl"),
    "winogrande": ("winogrande/validation.jsonl", "winogrande.jsonl"),
    "wikitext": ("wikitext/test.jsonl", "wikitext.jsonl"),
}
COMMONSENSE = tuple(DATA_DIR_TASKS)
# lm-eval metrics a table shows, in this order (others stay in the JSON)
_SHOWN = ("acc", "acc_norm", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")


def set_offline() -> None:
    """No hub access: without these, lm-eval / datasets wait 20-50 s on the network before failing."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")


def _resolve_data_files(cfg: dict, base: Path) -> dict:
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, str):
        files = {"test": files}
    if not isinstance(files, dict):
        raise ValueError(f"task {cfg.get('task')!r} names no dataset_kwargs.data_files: offline tasks need local "
                         "files (dataset_path: json)")
    resolved = {}
    for split, f in files.items():
        p = Path(f) if Path(f).is_absolute() else base / f
        if not p.exists():
            raise FileNotFoundError(f"task {cfg.get('task')!r}: data file {p} does not exist")
        resolved[split] = str(p)
    cfg["dataset_kwargs"] = {**cfg.get("dataset_kwargs", {}), "data_files": resolved}
    return cfg


def task_config(name: str, data_dir: str | Path | None = None) -> dict:
    """The lm-eval config dict of a task name or task YAML path, with absolute local data files."""
    from lm_eval.tasks._yaml_loader import load_yaml  # noqa: PLC0415  (lm-eval's !function-aware loader)

    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"task file {path} does not exist")
        return _resolve_data_files(load_yaml(path), path.resolve().parent)
    if name in SHIPPED_TASKS:
        return _resolve_data_files(load_yaml(TASKS_DIR / f"{name}.yaml"), TASKS_DIR)
    if name in DATA_DIR_TASKS:
        if data_dir is None:
            raise ValueError(f"task {name!r} reads its data from disk: pass --data-dir with one of "
                             f"{', '.join(DATA_DIR_TASKS[name])} under it")
        root = Path(data_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"data dir {root} does not exist or is not a folder")
        found = next((root / f for f in DATA_DIR_TASKS[name] if (root / f).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"task {name!r}: none of {', '.join(DATA_DIR_TASKS[name])} exists under {root}")
        cfg = load_yaml(TASKS_DIR / f"{name}.yaml")
        cfg["dataset_kwargs"] = {"data_files": {"test": str(found.resolve())}}
        return cfg
    raise ValueError(f"unknown task {name!r}: choose from {', '.join(SHIPPED_TASKS + COMMONSENSE)}, or pass the "
                     "path of an lm-eval task .yaml")


def evaluate(model, tokenizer, tasks: list[str], *, data_dir: str | Path | None = None, limit: int | None = None,
             batch_size: int = 8, max_length: int | None = None, bootstrap_iters: int = 100) -> dict:
    """Run lm-eval on an in-memory causal LM (an `NHAForCausalLM` or any `transformers` model).

    Args:
        model: the model, on the device it should run on.
        tokenizer: a `transformers` tokenizer (`nha.eval.loading.byte_tokenizer()` for byte-level models).
        tasks: task names or YAML paths (see the module docstring).
        data_dir: folder of the commonsense tasks' jsonl files.
        limit: at most this many documents per task (None: all).
        batch_size: requests per forward.
        max_length: context length lm-eval may use (default: the model's max_position_embeddings).
        bootstrap_iters: resamples for the stderr of metrics without a closed form (perplexities); 0 skips all
            stderrs.

    Returns:
        `{"results": {task: {metric: value}}, "n_samples": {task: int}, "seconds": float}`; metric names are
        lm-eval's without the filter suffix, stderr as `<metric>_stderr`.

    Example:
        >>> out = evaluate(model, byte_tokenizer(), ["nha_recall_mc"], limit=20)
        >>> out["results"]["nha_recall_mc"]["acc"]
    """
    if not tasks:
        raise ValueError("no tasks given")
    configs = [task_config(t, data_dir) for t in tasks]  # every name checked before any model work
    set_offline()
    from lm_eval import simple_evaluate  # noqa: PLC0415  (optional dependency: pip install nha[eval])
    from lm_eval.models.huggingface import HFLM  # noqa: PLC0415
    from lm_eval.tasks import TaskManager  # noqa: PLC0415

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
              device=str(next(model.parameters()).device))
    start = time.perf_counter()
    out = simple_evaluate(model=lm, tasks=configs, task_manager=TaskManager(include_defaults=False), limit=limit,
                          log_samples=False, bootstrap_iters=bootstrap_iters)
    seconds = time.perf_counter() - start
    results = {}
    for task, metrics in out["results"].items():
        results[task] = {}
        for key, value in metrics.items():
            if "," not in key or not isinstance(value, (int, float)):
                continue
            metric, _ = key.split(",", 1)
            results[task][metric] = float(value)
    n_samples = {t: int(v.get("effective", v.get("original", 0))) for t, v in out.get("n-samples", {}).items()}
    return {"results": results, "n_samples": n_samples, "seconds": seconds}


def _fmt(x: float) -> str:
    return f"{x:.4f}" if abs(x) < 1e4 else f"{x:.3e}"


def results_table(evaluation: dict) -> str:
    """A markdown table: one row per task, one column per shown metric."""
    results = evaluation["results"]
    metrics = [m for m in _SHOWN if any(m in r for r in results.values())]
    lines = ["| task | n | " + " | ".join(metrics) + " |", "| --- | ---: |" + " ---: |" * len(metrics)]
    for task, r in results.items():
        cells = []
        for m in metrics:
            if m not in r:
                cells.append("")
            else:
                err = r.get(f"{m}_stderr")
                cells.append(_fmt(r[m]) + (f" ± {_fmt(err)}" if isinstance(err, float) and err == err else ""))
        lines.append(f"| {task} | {evaluation['n_samples'].get(task, '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: str | Path, payload: dict) -> None:
    """Write atomically: a crash leaves the old file or none, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
