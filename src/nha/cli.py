"""`nha` command line: each subcommand lives in its own module; this file only dispatches.

A module listed in COMMANDS provides `add_arguments(parser)` and `run(args) -> int | None`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    # name: (module, one-line help)
    "train": ("nha.train.cli_train", "train an NHA model or a baseline on text or a synthetic recall task"),
    "demo": ("nha.train.demo", "recall demo: Transformer / SWA / GSA / NHA on MQAR at equal state, table + plot"),
    "eval": ("nha.eval.cli_eval", "lm-eval tasks and long-context recall suites on a model: table + JSON"),
    "search-windows": ("nha.eval.cli_windows", "choose per-layer windows under a state budget without retraining"),
    "report": ("nha.eval.cli_report", "accuracy, state memory and speed of several models side by side"),
    "convert": ("nha.convert.cli_convert", "pretrained Llama/Mistral/Qwen2/Qwen3 (or SmolLM2) -> NHA hybrid"),
    "finetune": ("nha.convert.cli_finetune", "fine-tune a converted model: MLPs frozen, attention trained"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nha", description="Native Hybrid Attention: train, convert, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = importlib.import_module(args._module).run(args)
    except (ValueError, FileNotFoundError) as err:  # user mistakes: one clear line, no traceback
        print(f"nha {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
