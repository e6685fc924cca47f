"""`nha report MODEL [MODEL ...]`: accuracy, decoding-state memory and speed side by side (markdown + plot).

    nha report transformer:tiny swa:tiny nha-h:tiny --tasks nha_recall_mc --limit 50 --md report.md --plot report.png
"""
from __future__ import annotations

import argparse

from nha.eval.longctx import SUITE_TASKS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", help="saved model folders and/or preset name[:size] specs")
    p.add_argument("--labels", nargs="+", help="names for the models in the table (default: the specs)")
    p.add_argument("--tasks", nargs="*", default=["nha_recall_mc", "nha_sonnet_cloze"],
                   help=f"lm-eval tasks and/or suite tasks ({', '.join(SUITE_TASKS)})")
    p.add_argument("--data-dir", help="folder with the commonsense tasks' jsonl files")
    p.add_argument("--limit", type=int, help="at most this many documents per lm-eval task")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024], help="suite context lengths")
    p.add_argument("--num-examples", type=int, default=20, help="suite rows per task and length")
    p.add_argument("--tokenizer", help="'bytes', a tokenizer.json or folder (default: each model folder's, else bytes)")
    p.add_argument("--context-len", type=int, default=4096, help="context at which decoding state is counted")
    p.add_argument("--speed-len", type=int, default=1024, help="prefill length of the speed measurement")
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--md", help="write the markdown table here")
    p.add_argument("--plot", help="write the bar plots here (.png)")
    p.add_argument("--out", help="write the rows as JSON here")


def run(args) -> int:
    from pathlib import Path  # noqa: PLC0415

    from nha.eval.harness import task_config, write_json  # noqa: PLC0415
    from nha.eval.loading import load_model_and_tokenizer  # noqa: PLC0415
    from nha.eval.report import model_row, plot_report, report_markdown  # noqa: PLC0415

    labels = args.labels or args.models
    if len(labels) != len(args.models):
        raise ValueError(f"--labels names {len(labels)} models but {len(args.models)} were given")
    suite = [t for t in args.tasks if t in SUITE_TASKS]
    harness = [t for t in args.tasks if t not in SUITE_TASKS]
    for t in harness:
        task_config(t, args.data_dir)
    rows = []
    for spec, label in zip(args.models, labels):
        model, tok = load_model_and_tokenizer(spec, args.tokenizer)
        rows.append(model_row(label, model.to(args.device), tok, tasks=harness, suite_tasks=suite,
                              lengths=args.lengths, limit=args.limit, data_dir=args.data_dir,
                              context_len=args.context_len, speed_len=args.speed_len,
                              decode_steps=args.decode_steps, repeats=args.repeats, num_examples=args.num_examples))
        del model
    md = report_markdown(rows, args.device)
    print(md)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(md + "\n")
    if args.plot:
        plot_report(rows, args.plot)
        print(f"plot: {args.plot}")
    if args.out:
        write_json(args.out, {"rows": rows})
    return 0
