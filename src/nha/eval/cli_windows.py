"""`nha search-windows MODEL`: per-layer windows under a state budget, chosen on calibration loss, applied
without retraining (saved with --save), with the quality-vs-state trade-off plot.

    nha search-windows runs/x/model --max-state-bytes 8MiB --context-len 8192 --plot tradeoff.png --save runs/x/w8m
    nha search-windows nha-h:tiny --max-full-layers 1 --candidates 0 16 64 full
"""
from __future__ import annotations

import argparse
import re

from nha.eval.windows import DEFAULT_CANDIDATES

_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30}


def parse_bytes(text: str) -> int:
    """'123', '8MiB', '1.5GB' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read {text!r} as a size: give bytes, or a number with B/KB/MB/GB/KiB/MiB/GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_window(text: str):
    if text.lower() in ("full", "none"):
        return None
    if not text.isdigit():
        raise ValueError(f"a candidate window is an int >= 0 or 'full', got {text!r}")
    return int(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="saved model folder, or a preset name[:size]")
    p.add_argument("--max-state-bytes", help="budget on decoding-state bytes at --context-len, batch 1 (e.g. 8MiB)")
    p.add_argument("--max-full-layers", type=int, help="budget on the number of full-attention layers")
    p.add_argument("--context-len", type=int, default=4096, help="decoding context at which state is counted")
    p.add_argument("--candidates", nargs="+", default=["full" if w is None else str(w) for w in DEFAULT_CANDIDATES],
                   help="windows a layer may take ('full' = full attention)")
    p.add_argument("--beam", type=int, default=1, help="beam width (1 = greedy)")
    p.add_argument("--max-evals", type=int, default=400, help="at most this many layouts scored")
    p.add_argument("--calib", nargs="*", help="calibration text files (.txt/.jsonl/folders); default: the shipped "
                                              "sonnets")
    p.add_argument("--calib-rows", type=int, default=8)
    p.add_argument("--calib-len", type=int, default=512)
    p.add_argument("--tokenizer", help="'bytes', a tokenizer.json or folder (default: the model folder's, else bytes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--plot", help="write the trade-off plot here (.png)")
    p.add_argument("--out", help="write the search (start, choice, every scored layout) as JSON here")
    p.add_argument("--save", help="save the model with the chosen windows to this folder")


def calibration_ids(tokenizer, files, rows: int, seq_len: int):
    """`[rows, seq_len]` token ids cut from the given text files, or from the shipped sonnets."""
    import torch  # noqa: PLC0415

    from nha.data.text import load_documents  # noqa: PLC0415
    from nha.eval.harness import TASKS_DIR  # noqa: PLC0415

    docs = load_documents(files or [TASKS_DIR / "data" / "sonnet_text.jsonl"])
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    stream = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        stream += ids + [sep]
    if len(stream) < rows * seq_len:
        raise ValueError(f"the calibration text has {len(stream)} tokens, fewer than --calib-rows x --calib-len = "
                         f"{rows * seq_len}: pass more text or smaller values")
    return torch.tensor(stream[:rows * seq_len]).view(rows, seq_len)


def run(args) -> int:
    from nha.eval.harness import write_json  # noqa: PLC0415
    from nha.eval.loading import load_model_and_tokenizer  # noqa: PLC0415
    from nha.eval.windows import format_layout, plot_tradeoff, search_windows  # noqa: PLC0415

    max_bytes = None if args.max_state_bytes is None else parse_bytes(args.max_state_bytes)
    candidates = [parse_window(c) for c in args.candidates]
    if max_bytes is None and args.max_full_layers is None:
        raise ValueError("give a budget: --max-state-bytes, --max-full-layers, or both")
    model, tok = load_model_and_tokenizer(args.model, args.tokenizer, seed=args.seed)
    model = model.to(args.device)
    ids = calibration_ids(tok, args.calib, args.calib_rows, args.calib_len)
    res = search_windows(model, ids, max_state_bytes=max_bytes, max_full_layers=args.max_full_layers,
                         candidates=candidates, context_len=args.context_len, beam_width=args.beam,
                         max_evals=args.max_evals)
    mib = 2 ** 20
    print(f"scored {len(res.evaluated)} layouts on {ids.shape[0]}x{ids.shape[1]} calibration tokens")
    print("| layout | windows | full layers | state at {} tokens (MiB) | calibration loss |".format(args.context_len))
    print("| --- | --- | ---: | ---: | ---: |")
    for name, p in (("start", res.start), ("chosen", res.best)):
        print(f"| {name} | {format_layout(p.layout)} | {p.full_layers} | {p.state_bytes / mib:.3f} | {p.loss:.4f} |")
    if args.plot:
        plot_tradeoff(res, args.plot)
        print(f"plot: {args.plot}")
    if args.out:
        pt = lambda p: {"layout": list(p.layout), "loss": p.loss, "state_bytes": p.state_bytes,  # noqa: E731
                        "full_layers": p.full_layers, "fits": p.fits}
        write_json(args.out, {"model": args.model, "context_len": args.context_len, "max_state_bytes": max_bytes,
                              "max_full_layers": args.max_full_layers, "start": pt(res.start), "chosen": pt(res.best),
                              "evaluated": [pt(p) for p in res.evaluated]})
        print(f"results: {args.out}")
    if args.save:
        model.save_pretrained(args.save)
        tok.save_pretrained(args.save)
        print(f"model with the chosen windows: {args.save}")
    return 0
