"""Shared test fixtures: tiny random Qwen2 models and synthetic trajectories on disk.

Import the plain helpers where a fixture is awkward: `from conftest import compose_config,
make_tiny_model_dir, make_trajectory` (pytest puts `tests/` on sys.path). Everything here is small (a few 10k
parameters) and fast; the tokenizer is trained once per session and cached in memory.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent
FIXTURES = TESTS / "fixtures"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LAYOUTS = ("verl", "global_step", "checkpoint", "step")
# The tiny-model recipe of the training tests (`train.tiny.*`): SFT gets the answer format and some
# answers right within seconds, so sampled GRPO rewards vary within groups. Tests set
# sft_batch_size to their task's train split.
TINY_RECIPE = {"seed": 0, "vocab_size": 300, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
               "intermediate_size": 64, "max_positions": 64, "sft_lr": 1.0e-2, "sft_max_steps": 40,
               "sft_eval_every": 40, "sft_target_accuracy": 1.1, "sft_dev_size": 0, "sft_max_new_tokens": 8}


def compose_config(command: str, *overrides: str, validate: bool = True):
    """`conf/<command>.yaml` composed with `overrides` as `rlvr <command>` composes it (schemas
    registered), then checked by `schemas.validate` as the command checks it when it starts."""
    from hydra import compose, initialize_config_dir

    from rlvr_linearity.paths import conf_dir
    from rlvr_linearity.schemas import register_configs
    from rlvr_linearity.schemas import validate as validate_config

    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name=command, overrides=list(overrides))
    if validate:
        validate_config(cfg)
    return cfg

# The training tests' task and tiny-model recipe (shared by the TRL and forecasting tests).
TRL_TASK = {"name": "arithmetic", "seed": 3, "n_train": 7, "n_test": 2, "min_terms": 2, "max_terms": 2,
        "min_operand": 0, "max_operand": 2, "operators": ["+"]}
TRL_RECIPE = {**TINY_RECIPE, "sft_batch_size": 7}


@functools.lru_cache(maxsize=None)
def _tokenizer_dir() -> str:
    """Train a tiny byte-level BPE once per process and save it as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"What is {a} + {b}? The answer is \\boxed{{{a + b}}}." for a in range(40) for b in range(0, 40, 7)]
    corpus += ["Solve the problem step by step and put the final answer in \\boxed{}.", "user assistant system"]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    out = Path(tempfile.mkdtemp(prefix="rlvr-test-tokenizer-"))
    fast.save_pretrained(out)
    return str(out)


def copy_tokenizer(dst: Path) -> None:
    """Copy the session's tiny tokenizer files into `dst`."""
    for f in Path(_tokenizer_dir()).iterdir():
        shutil.copy2(f, Path(dst) / f.name)


def tiny_config(*, tied: bool, dtype=torch.float32, vocab: int = 320, hidden: int = 32, layers: int = 2,
                heads: int = 4, kv_heads: int = 2, intermediate: int = 64):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, intermediate_size=intermediate, max_position_embeddings=256,
                       tie_word_embeddings=tied, bos_token_id=None, eos_token_id=2, pad_token_id=0,
                       dtype=_dtype_name(dtype), architectures=["Qwen2ForCausalLM"])


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def random_state_dict(config, seed: int) -> dict[str, torch.Tensor]:
    """The stored tensors (float32) of a random Qwen2ForCausalLM built from `config`.

    With tied embeddings only `model.embed_tokens.weight` is stored, as save_pretrained does."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float()
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    # non-trivial norms and biases so 1-D tensors move too
    for k in sd:
        if k.endswith("norm.weight") or k.endswith(".bias"):
            sd[k] = sd[k] + 0.1 * torch.randn(sd[k].shape)
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def write_model_dir(path, config, tensors: dict[str, torch.Tensor], *, dtype, config_dtype=None,
                    tokenizer: bool = True) -> Path:
    """Write an HF model directory: model.safetensors in `dtype`, config.json saying
    `config_dtype` (default `dtype`; verl exports say bfloat16 over fp32 files), tokenizer."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    cfg = config.to_dict()
    name = _dtype_name(config_dtype or dtype)
    cfg["dtype"] = name
    cfg.pop("torch_dtype", None)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id).save_pretrained(path)
    if tokenizer:
        copy_tokenizer(path)
    return path


def make_tiny_model_dir(path, *, tied: bool = False, dtype=torch.float32, seed: int = 0, vocab: int = 320,
                        hidden: int = 32, layers: int = 2) -> Path:
    """A random tiny Qwen2 HF model dir (safetensors + config + tokenizer + chat template)."""
    config = tiny_config(tied=tied, dtype=dtype, vocab=vocab, hidden=hidden, layers=layers)
    return write_model_dir(path, config, random_state_dict(config, seed), dtype=dtype)


@dataclass
class TinyTrajectory:
    """What `make_trajectory` wrote: paths plus the float64 values exactly as stored."""

    path: Path                       # the trajectory dir (trajectory.path)
    base: Path                       # the base model dir (step 0)
    steps: list[int]                 # saved steps (without 0)
    step_dirs: dict[int, Path]       # step -> HF model dir
    names: list[str]                 # stored tensor names (base order)
    values: dict[int, dict[str, torch.Tensor]] = field(repr=False)  # step (0 = base) -> name -> float64
    directions: dict[str, torch.Tensor] = field(repr=False)         # per-unit-step drift (float64)
    config: object = field(repr=False)


def greedy_generate(path, prompts, max_new: int, eos: int, device: str = "cpu") -> list[list[int]]:
    """Each prompt's greedy continuation by the model's own `generate` (batch of one, float32),
    cut at `eos`: the reference the logits-extrapolation engine must reproduce at alpha 0 / 1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    tok = AutoTokenizer.from_pretrained(path)
    out = []
    for p in prompts:
        enc = tok([p], return_tensors="pt").to(device)
        seq = model.generate(**enc, max_new_tokens=max_new, do_sample=False, eos_token_id=eos,
                             pad_token_id=eos)[0, enc["input_ids"].shape[1]:].tolist()
        out.append(seq[:seq.index(eos)] if eos in seq else seq)
    return out


def make_trajectory(root, layout: str = "checkpoint", steps=(1, 2, 3, 4), *, tied: bool = False,
                    dtype=torch.float32, base_dtype=None, drift: str = "linear", noise: float = 0.0,
                    scale: float = 1e-2, seed: int = 0, write_json: bool = False, config_dtype=None,
                    hidden: int = 32, layers: int = 2) -> TinyTrajectory:
    """Write a base model (`root/base`) and step checkpoints (`root/trajectory/<layout dirs>`).

    drift="linear": W_s = W_0 + s·scale·D + noise·ε_s (R² ≈ 1 when noise is small);
    drift="random": a random walk W_s = W_{s-1} + scale·ε_s. Layouts: "verl"
    (global_step_N/actor/huggingface with config.json saying bfloat16 unless `config_dtype`,
    plus latest_checkpointed_iteration.txt), "global_step", "checkpoint", "step".
    write_json: also write trajectory.json naming the base, as `rlvr train` does.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    root = Path(root)
    base_dtype = dtype if base_dtype is None else base_dtype
    config = tiny_config(tied=tied, dtype=base_dtype, hidden=hidden, layers=layers)
    w0 = {k: v.double() for k, v in random_state_dict(config, seed).items()}
    base_dir = write_model_dir(root / "base", config, w0, dtype=base_dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    directions = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in w0.items()}
    values = {0: {k: v.to(base_dtype).double() for k, v in w0.items()}}
    traj = root / "trajectory"
    traj.mkdir(parents=True, exist_ok=True)
    step_dirs = {}
    walk = dict(w0)
    prev = 0
    for s in sorted(steps):
        if drift == "linear":
            w = {k: w0[k] + s * scale * directions[k] + noise * torch.randn(v.shape, generator=gen, dtype=torch.float64)
                 for k, v in w0.items()}
        elif drift == "random":
            walk = {k: v + scale * (s - prev) ** 0.5 * torch.randn(v.shape, generator=gen, dtype=torch.float64)
                    for k, v in walk.items()}
            w = walk
        else:
            raise ValueError("drift must be 'linear' or 'random'")
        prev = s
        d = {"verl": traj / f"global_step_{s}" / "actor" / "huggingface", "global_step": traj / f"global_step_{s}",
             "checkpoint": traj / f"checkpoint-{s}", "step": traj / f"step_{s}"}[layout]
        cdt = config_dtype or (torch.bfloat16 if layout == "verl" else dtype)
        write_model_dir(d, config, w, dtype=dtype, config_dtype=cdt)
        step_dirs[s] = d
        values[s] = {k: v.to(dtype).double() for k, v in w.items()}
    if layout == "verl" and steps:
        (traj / "latest_checkpointed_iteration.txt").write_text(str(max(steps)))
    if write_json:
        (traj / "trajectory.json").write_text(json.dumps({"base": str(base_dir), "steps": sorted(steps)}))
    return TinyTrajectory(path=traj, base=base_dir, steps=sorted(steps), step_dirs=step_dirs, names=list(w0),
                          values=values, directions=directions, config=config)


@pytest.fixture(scope="session")
def rlvr_cache(tmp_path_factory):
    """A per-session cache dir in RLVR_CACHE_DIR, W&B offline."""
    d = tmp_path_factory.mktemp("rlvr-cache")
    old = {k: os.environ.get(k) for k in ("RLVR_CACHE_DIR", "WANDB_MODE")}
    os.environ["RLVR_CACHE_DIR"] = str(d)
    os.environ["WANDB_MODE"] = "offline"
    yield d
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def tiny_model_dir(tmp_path):
    """Factory: `tiny_model_dir(tied=..., dtype=..., seed=...)` -> a tiny model dir under tmp_path."""
    counter = iter(range(1 << 30))

    def make(**kw):
        return make_tiny_model_dir(tmp_path / f"tiny_model_{next(counter)}", **kw)

    return make


@pytest.fixture
def tiny_trajectory(tmp_path):
    """Factory: `tiny_trajectory(layout, steps, **kw)` -> TinyTrajectory under tmp_path."""
    counter = iter(range(1 << 30))

    def make(layout="checkpoint", steps=(1, 2, 3, 4), **kw):
        return make_trajectory(tmp_path / f"traj_{next(counter)}", layout, steps, **kw)

    return make


def without_dac(cmd: list[str]) -> list[str]:
    """`cmd` run so that file modes bind: as root (where chmod 000 does not stop reads) with the
    capabilities that override them dropped by setpriv; skipped where that is not possible."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file modes cannot be made to bind")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", "--bounding-set", caps, "--inh-caps", caps, *cmd]


def differences(a, b, where: str = "", rel: float = 0.0) -> list[str]:
    """Where two JSON values differ: exactly, except floats under a key named `mean` (or in a
    `total_s`-like timing) which may differ by `rel` relative (sums taken in another order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return [f"{where}: keys {list(a)} != {list(b)}"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}.{k}", rel if k != "mean" else 1e-12)]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]", rel)]
    if isinstance(a, float) and isinstance(b, float) and rel:
        return [] if abs(a - b) <= rel * max(abs(a), abs(b)) else [f"{where}: {a!r} != {b!r}"]
    return [] if a == b else [f"{where}: {str(a)[:80]} != {str(b)[:80]}"]


def safetensors_of(model_dir) -> dict:
    """Every tensor of a model directory (single file or shards), by name, as stored."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(f))
    return out
