"""Write data/gsm8k/dev.jsonl: 440 one- and two-step GSM8K *train* problems held out from
training, for every tuning decision (the test set is scored once per shipped recipe).

Same difficulty as the eval set (`max_solution_steps: 2`, 440 problems); chosen by the
sha256 of the question, so the split is fixed and anyone can rebuild it byte for byte:

    python scripts/make_dev_split.py            # rewrites data/gsm8k/dev.jsonl
"""

import hashlib
import json
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "gsm8k"
N, MAX_STEPS = 440, 2


def main() -> None:
    rows = [json.loads(line) for line in (DATA / "train.jsonl").read_text().splitlines() if line.strip()]
    easy = [r for r in rows if max(1, r["answer"].count("<<")) <= MAX_STEPS]
    easy.sort(key=lambda r: hashlib.sha256(r["question"].encode()).hexdigest())
    dev = easy[:N]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in dev)
    (DATA / "dev.jsonl").write_text(text)
    print(f"{len(dev)} of {len(easy)} one- and two-step train problems -> {DATA / 'dev.jsonl'}"
          f" (sha256 {hashlib.sha256(text.encode()).hexdigest()})")


if __name__ == "__main__":
    main()
