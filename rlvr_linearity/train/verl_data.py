"""Training sets as verl parquet rows.

verl reads `{"data_source", "prompt": [{"role", "content"}], "ability", "reward_model":
{"style", "ground_truth"}, "extra_info": {"split", "index"}}` per row. Sources: the demo task
(`rlvr_linearity.tasks.arithmetic`), DeepScaleR-Preview and MATH train from the hub, each
replaceable by a local jsonl/parquet file with the hub dataset's fields (offline clusters).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.io import atomic_path


@dataclass(frozen=True)
class HubSource:
    """A hub dataset: where it is and which fields hold the problem and the answer."""

    repo: str
    split: str
    problem_key: str
    answer_key: str | None  # the short answer; None: extracted from `solution_key`'s last \boxed{}
    solution_key: str | None = None


SOURCES: dict[str, HubSource] = {
    # LIN's training set (docs/methods.md §C1).
    "deepscaler": HubSource("agentica-org/DeepScaleR-Preview-Dataset", "train", "problem", "answer"),
    # MATH train (RELEX's in-domain set, presumably; docs/methods.md §C2), as verl's own examples load it.
    "math": HubSource("DigitalLearningGmbH/MATH-lighteval", "train", "problem", None, "solution"),
    # LIN's validation set.
    "aime24": HubSource("math-ai/aime24", "test", "problem", None, "solution"),
    # A common validation set (same repo as the math500 benchmark).
    "math500": HubSource("HuggingFaceH4/MATH-500", "test", "problem", "answer"),
}


def _read_records(path: str | Path) -> list[dict]:
    """Rows of a local jsonl/json/parquet file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data file not found: file {path}")
    import datasets

    kind = "parquet" if path.suffix == ".parquet" else "json"
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as err:  # malformed file: one line naming it
        raise ConfigError(f"cannot read data file: file {path}: {err}") from None
    return list(ds)


def _load_hub(src: HubSource) -> list[dict]:
    import datasets

    return list(datasets.load_dataset(src.repo, split=src.split))


def _short_answer(src: HubSource, rec: dict, name: str, index: int) -> str:
    if src.answer_key and rec.get(src.answer_key) not in (None, ""):
        return str(rec[src.answer_key])
    if src.solution_key:
        from rlvr_linearity.evaluate.answers import extract_boxed

        boxed = extract_boxed(str(rec.get(src.solution_key, "")))
        if boxed is not None:
            return boxed
    raise ConfigError(f"dataset {name}: row {index} has no answer (no {src.answer_key or src.solution_key!r})")


def row(data_source: str, prompt: str, answer: str, split: str, index: int, **extra) -> dict:
    """One verl row."""
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": prompt}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {"split": split, "index": index, **extra},
    }


def hub_rows(name: str, split: str, suffix: str, local_file: str | None = None,
             loader: Callable[[HubSource], list[dict]] = _load_hub) -> list[dict]:
    """Rows of a registered hub dataset (or its local replacement with the same fields)."""
    if name not in SOURCES:
        raise ConfigError(f"unknown training dataset {name!r}; registered: {sorted(SOURCES)} (or a file)")
    src = SOURCES[name]
    records = _read_records(local_file) if local_file else loader(src)
    out = []
    for i, rec in enumerate(records):
        problem = rec.get(src.problem_key)
        if problem in (None, ""):
            raise ConfigError(f"dataset {name}: row {i} has no {src.problem_key!r} field")
        out.append(row(name, str(problem) + suffix, _short_answer(src, rec, name, i), split, i))
    return out


def arithmetic_rows(task_cfg, split: str) -> list[dict]:
    """Rows of the demo task; its prompts already ask for \\boxed{}."""
    from rlvr_linearity.tasks.arithmetic import make_split

    return [
        row("arithmetic", p.get("prompt") or p["problem"], str(p["answer"]), split, i,
            problem_id=str(p["problem_id"]))
        for i, p in enumerate(make_split(task_cfg, split))
    ]


def write_parquet(rows: list[dict], path: Path) -> Path:
    """Atomic parquet write (temp name, then os.replace)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ConfigError(f"no rows to write: file {path}")
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    return path


def build_verl_data(cfg, data_dir: Path) -> tuple[Path, Path]:
    """Write `train.parquet` and `val.parquet` for `cfg.train` under data_dir; return their paths."""
    t = cfg.train
    name = str(t.dataset)
    suffix = str(t.prompt_suffix or "")
    if name == "arithmetic":
        train = arithmetic_rows(cfg.task, "train")
        held_out = arithmetic_rows(cfg.task, "test")
    elif name.endswith(".parquet") and Path(name).expanduser().is_file():
        train, held_out = _read_records(name), []
    else:
        train = hub_rows(name, "train", suffix, t.train_file)
        held_out = []
    if t.max_train_rows:
        train = train[: int(t.max_train_rows)]
    val_name = t.val_dataset
    if val_name == "arithmetic":
        val = arithmetic_rows(cfg.task, "test")
    elif val_name:
        val = hub_rows(str(val_name), "test", suffix, t.val_file)
    elif held_out:
        val = held_out[: int(t.val_size)]
    else:  # hold out the tail of the training source
        n = int(t.val_size)
        if len(train) <= n:
            raise ConfigError(f"dataset {name} has {len(train)} rows, too few to hold out val_size={n}")
        train, val = train[:-n], [dict(r, extra_info={**r["extra_info"], "split": "val"}) for r in train[-n:]]
    return write_parquet(train, data_dir / "train.parquet"), write_parquet(val, data_dir / "val.parquet")
