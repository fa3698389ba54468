"""Data preparation for the default CEFR sentence classifier (CEFR-SP, Wiki-Auto portion).

Reads ``wikiauto_train.tsv`` and ``wikiauto_dev.tsv`` (``sentence<TAB>levelA<TAB>levelB``, levels
1..6 = A1..C2, two annotators) and turns each line into one example with one label. The two
annotators never differ by more than one level in these files, so a rule only has to settle the
one-level disagreements (56% of train, 61% of dev):

- ``higher`` (the default, used for the shipped model): the higher of the two levels. The rounded
  mean with halves rounded up is the same thing.
- ``lower``: the lower of the two levels (the rounded mean with halves rounded down).

Why ``higher``: see MODEL_CARD.md and metrics.json (``rule_comparison``): trained and scored the
same way, it gave the better dev macro-F1 and the better agreement with at least one annotator;
it also keeps seven times as many C2 examples (91 against 13), the rarest level at the top.

Deterministic: the same files give the same examples, in file order, every run; an exact
duplicate sentence (one in train) is kept once. ``load_splits`` is what scripts/cefr/train.py
imports; run this file to see the figures, and, with ``--out``, to write the prepared splits into a
gitignored build folder (``build/cefr/``) for inspection:

    python scripts/cefr/prepare.py [DATA_DIR] [--rule higher|lower] [--out build/cefr]

Credit and licence of the data: Yuki Arase, Satoru Uchida, Tomoyuki Kajiwara, "CEFR-Based Sentence
Difficulty Annotation and Assessment", EMNLP 2022; CC BY-SA 3.0.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cefr-sp"   # ../shared/data/cefr-sp from the repo root
LABELS = ["A1", "A2", "B1", "B2", "C1", "C2"]
SPLITS = {"train": "wikiauto_train.tsv", "dev": "wikiauto_dev.tsv"}
RULES = {
    "higher": max,
    "lower": min,
}
DEFAULT_RULE = "higher"


@dataclass(frozen=True)
class Example:
    sentence: str
    label: int          # 0..5 = A1..C2, after the rule
    level_a: int        # annotator A's level, 0..5
    level_b: int        # annotator B's level, 0..5


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_tsv(path: Path) -> list[tuple[str, int, int]]:
    """(sentence, level A, level B) with levels 0..5; a malformed line is an error, not skipped."""
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 3:
                raise ValueError(f"{path}:{number}: expected 3 tab-separated fields, got {len(parts)}")
            sentence, a, b = parts[0].strip(), int(parts[1]), int(parts[2])
            if not (1 <= a <= 6 and 1 <= b <= 6) or not sentence:
                raise ValueError(f"{path}:{number}: levels must be 1..6 and the sentence non-empty")
            rows.append((sentence, a - 1, b - 1))
    return rows


def apply_rule(rows: list[tuple[str, int, int]], rule: str) -> list[Example]:
    pick = RULES[rule]
    seen: set[str] = set()
    out = []
    for sentence, a, b in rows:
        if sentence in seen:
            continue
        seen.add(sentence)
        out.append(Example(sentence, pick(a, b), a, b))
    return out


def load_splits(data_dir: Path | str = DEFAULT_DATA, rule: str = DEFAULT_RULE) -> dict[str, list[Example]]:
    """{"train": [...], "dev": [...]} for one label rule."""
    data_dir = Path(data_dir)
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}: one of {sorted(RULES)}")
    missing = [name for name in SPLITS.values() if not (data_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{data_dir}: missing {', '.join(missing)} (CEFR-SP Wiki-Auto train/dev)")
    return {split: apply_rule(read_tsv(data_dir / name), rule) for split, name in SPLITS.items()}


def data_fingerprint(data_dir: Path | str = DEFAULT_DATA) -> dict[str, str]:
    return {name: sha256(Path(data_dir) / name) for name in SPLITS.values()}


def summary(data_dir: Path | str = DEFAULT_DATA) -> dict:
    """Label counts per split and rule, and how often the annotators agree."""
    out: dict = {"files": data_fingerprint(data_dir), "splits": {}}
    for split, name in SPLITS.items():
        rows = read_tsv(Path(data_dir) / name)
        gaps = collections.Counter(abs(a - b) for _, a, b in rows)
        entry = {
            "lines": len(rows),
            "annotator_gap": {str(k): v for k, v in sorted(gaps.items())},
            "annotator_exact_agreement": round(gaps[0] / len(rows), 4),
            "annotator_a": _counts(a for _, a, _ in rows),
            "annotator_b": _counts(b for _, _, b in rows),
        }
        for rule in RULES:
            examples = apply_rule(rows, rule)
            entry[rule] = _counts(e.label for e in examples)
            entry["examples"] = len(examples)
        out["splits"][split] = entry
    return out


def _counts(levels) -> dict[str, int]:
    c = collections.Counter(levels)
    return {LABELS[i]: c.get(i, 0) for i in range(len(LABELS))}


def write_prepared(splits: dict[str, list[Example]], out_dir: Path, rule: str, data_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, examples in splits.items():
        with open(out_dir / f"{split}.tsv", "w", encoding="utf-8", newline="\n") as f:
            f.write("sentence\tlabel\tlevel_a\tlevel_b\n")
            for e in examples:
                f.write(f"{e.sentence}\t{LABELS[e.label]}\t{LABELS[e.level_a]}\t{LABELS[e.level_b]}\n")
    meta = {"rule": rule, "source": data_fingerprint(data_dir),
            "examples": {split: len(ex) for split, ex in splits.items()}}
    (out_dir / "prepared.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=None,
                        help="folder with wikiauto_train.tsv and wikiauto_dev.tsv "
                             "(default: ../shared/data/cefr-sp from the repo root)")
    parser.add_argument("--rule", choices=sorted(RULES), default=DEFAULT_RULE)
    parser.add_argument("--out", type=Path, default=None,
                        help="write train.tsv, dev.tsv and prepared.json here (e.g. build/cefr; gitignored)")
    args = parser.parse_args(argv)
    data_dir = Path(args.data) if args.data else DEFAULT_DATA
    splits = load_splits(data_dir, args.rule)
    print(json.dumps(summary(data_dir), indent=2))
    print(f"rule {args.rule!r}: " + ", ".join(f"{s} {len(e)} examples" for s, e in splits.items()))
    if args.out:
        write_prepared(splits, args.out, args.rule, data_dir)
        print(f"wrote {args.out}/train.tsv, dev.tsv, prepared.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
