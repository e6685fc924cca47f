"""`nha eval MODEL --tasks ...`: lm-eval tasks and the long-context suites on one model; table + JSON (+ plot).

    nha eval nha-h:tiny --tasks nha_recall_mc nha_sonnet_ppl --limit 50
    nha eval runs/x/model --tasks arc_easy piqa --data-dir ~/data/commonsense --out results.json
    nha eval runs/x/model --tasks niah_single passkey --lengths 1024 4096 32768 --plot recall.png
"""
from __future__ import annotations

import argparse
import time

from nha.eval.harness import COMMONSENSE, SHIPPED_TASKS, write_json
from nha.eval.longctx import DEFAULT_LENGTHS, SUITE_TASKS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="saved model folder, or a preset name[:size] (random weights: smoke tests only)")
    p.add_argument("--tasks", nargs="+", required=True,
                   help=f"lm-eval tasks ({', '.join(SHIPPED_TASKS + COMMONSENSE)}, or a task .yaml) and/or "
                        f"long-context suites ({', '.join(SUITE_TASKS)})")
    p.add_argument("--data-dir", help="folder with the commonsense tasks' jsonl files (see README, Evaluation)")
    p.add_argument("--tokenizer", help="'bytes', a tokenizer.json or folder (default: the model folder's, else bytes)")
    p.add_argument("--limit", type=int, help="at most this many documents per lm-eval task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS), help="suite context lengths")
    p.add_argument("--num-examples", type=int, default=20, help="suite rows per task and length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--plot", help="write the suite's accuracy-vs-length plot here (.png)")


def run(args) -> int:
    from nha.eval.harness import evaluate, results_table, task_config  # noqa: PLC0415
    from nha.eval.loading import load_model_and_tokenizer  # noqa: PLC0415
    from nha.eval.longctx import plot_suite, run_suite, suite_table  # noqa: PLC0415

    suite = [t for t in args.tasks if t in SUITE_TASKS]
    harness = [t for t in args.tasks if t not in SUITE_TASKS]
    for t in harness:  # bad names and missing files fail before the model loads
        task_config(t, args.data_dir)
    if args.plot and not suite:
        raise ValueError("--plot draws the long-context suite: add one of " + ", ".join(SUITE_TASKS) + " to --tasks")
    model, tok = load_model_and_tokenizer(args.model, args.tokenizer, seed=args.seed)
    model = model.to(args.device)
    payload = {"model": args.model, "tasks": args.tasks, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if harness:
        ev = evaluate(model, tok, harness, data_dir=args.data_dir, limit=args.limit, batch_size=args.batch_size)
        print(results_table(ev))
        payload["lm_eval"] = ev
    if suite:
        rows = run_suite(model, tasks=suite, lengths=args.lengths, num_examples=args.num_examples, tokenizer=tok,
                         seed=args.seed)
        print("\nlong-context suite: rows solved (token accuracy)\n" + suite_table(rows))
        payload["suite"] = rows
        if args.plot:
            plot_suite(rows, args.plot, title=f"{args.model}: recall vs context length")
            print(f"plot: {args.plot}")
    if args.out:
        write_json(args.out, payload)
        print(f"results: {args.out}")
    return 0
