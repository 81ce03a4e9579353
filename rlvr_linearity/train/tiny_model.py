"""The demo's tiny base model: a locally trained tokenizer + a small Qwen2, warm-started by SFT.

GRPO only learns when rewards vary within a group, so the base model must solve some but not
all problems. The recipe (conf `train.tiny`) trains a digit-splitting byte-level BPE on task
text, builds a `Qwen2ForCausalLM` and runs a short supervised warm-start on the train split,
stopping once greedy accuracy on a dev slice of the train split reaches `sft_target_accuracy`
(or after `sft_max_steps`). The result is cached once per machine under
`cache_dir/tiny_models/<hash of recipe + task>/`, built in a temp dir and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from rlvr_linearity.errors import ConfigError
from rlvr_linearity.tasks.arithmetic import knobs, split_of

log = logging.getLogger(__name__)

RECIPE_VERSION = 1
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def completion_text(answer: str) -> str:
    """The target completion the warm-start imitates (the chat template adds the end token)."""
    return f"\\boxed{{{answer}}}"


def recipe_from_cfg(cfg) -> tuple[dict, dict]:
    """(model recipe `train.tiny`, task knobs) from the whole typed config."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.train.tiny, resolve=True), knobs(cfg.task)


def recipe_hash(recipe: dict, task: dict) -> str:
    blob = json.dumps({"v": RECIPE_VERSION, "recipe": recipe, "task": task}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with single-digit pre-splitting (digits stay separate tokens: arithmetic
    is learnable), wrapped as a fast HF tokenizer with a ChatML-style template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def chat_prompt(tokenizer, prompt: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def _boxed_integer_match(responses: list[str], golds: list[str]) -> list[bool]:
    """Exact match of the last `\\boxed{...}` content against the gold (spaces ignored): the
    SFT target of the cached base model, so its cache key stays valid."""
    from rlvr_linearity.evaluate.answers import find_boxed

    return [(b := find_boxed(r or "")) is not None and b.replace(" ", "") == str(g).strip()
            for r, g in zip(responses, golds)]


@torch.no_grad()
def greedy_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int = 16, batch_size: int = 64,
                    grade=None) -> float:
    """Greedy accuracy of `model` on task rows (exact integer in the last `\\boxed{}` by default;
    pass `grade(responses, golds) -> list[bool]` to use another grader)."""
    grade = grade or _boxed_integer_match
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    correct = 0
    try:
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            enc = tokenizer([chat_prompt(tokenizer, r["prompt"]) for r in chunk], return_tensors="pt",
                            padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            correct += sum(bool(c) for c in grade(texts, [r["answer"] for r in chunk]))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return correct / max(1, len(rows))


def _sft_batches(tokenizer, rows, batch_size, rng):
    """Endless shuffled batches: (input_ids, attention_mask, labels) with prompt tokens masked."""
    encoded = []
    for r in rows:
        p = tokenizer(chat_prompt(tokenizer, r["prompt"]), add_special_tokens=False)["input_ids"]
        c = tokenizer(completion_text(r["answer"]) + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        encoded.append((p + c, [-100] * len(p) + c))
    pad = tokenizer.pad_token_id
    while True:
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            batch = [encoded[j] for j in order[i:i + batch_size]]
            n = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), n), pad, dtype=torch.long)
            labels = torch.full((len(batch), n), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), n), dtype=torch.long)
            for k, (x, y) in enumerate(batch):
                ids[k, :len(x)] = torch.tensor(x)
                labels[k, :len(y)] = torch.tensor(y)
                mask[k, :len(x)] = 1
            yield ids, mask, labels


def build(recipe: dict, task: dict, out_dir: Path) -> dict:
    """Build the tokenizer and model, warm-start by SFT, save to `out_dir` (float32).
    Returns build stats (time, SFT steps, dev accuracy)."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from tqdm.auto import tqdm

    t0 = time.time()
    torch.manual_seed(recipe["seed"])
    rng = random.Random(recipe["seed"])
    train_rows = split_of(task, "train")
    dev = train_rows[-recipe["sft_dev_size"]:] if recipe["sft_dev_size"] else []
    sft_rows = train_rows[:len(train_rows) - len(dev)]
    if len(sft_rows) < recipe["sft_batch_size"]:
        raise ConfigError(f"train.tiny: {len(sft_rows)} SFT problems < sft_batch_size {recipe['sft_batch_size']}")

    texts = [f"{p['prompt']} {completion_text(p['answer'])}" for p in train_rows]
    texts += ["user assistant system"]
    tokenizer = train_tokenizer(texts, recipe["vocab_size"])
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=recipe["hidden_size"], num_hidden_layers=recipe["num_layers"],
        num_attention_heads=recipe["num_heads"], num_key_value_heads=recipe["num_kv_heads"],
        intermediate_size=recipe["intermediate_size"], max_position_embeddings=recipe["max_positions"],
        tie_word_embeddings=True, rope_theta=10000.0, use_cache=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config).float()
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)

    opt = torch.optim.AdamW(model.parameters(), lr=recipe["sft_lr"], weight_decay=0.0)
    batches = _sft_batches(tokenizer, sft_rows, recipe["sft_batch_size"], rng)
    dev_acc, step, history = 0.0, 0, []
    model.train()
    bar = tqdm(total=recipe["sft_max_steps"], desc="tiny model SFT", leave=False)
    while step < recipe["sft_max_steps"]:
        ids, mask, labels = next(batches)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        if dev and (step % recipe["sft_eval_every"] == 0 or step == recipe["sft_max_steps"]):
            dev_acc = greedy_accuracy(model, tokenizer, dev, recipe["sft_max_new_tokens"])
            history.append({"step": step, "loss": loss.item(), "dev_accuracy": dev_acc,
                            "seconds": time.time() - t0})
            bar.set_postfix(loss=f"{loss.item():.3f}", dev_acc=f"{dev_acc:.2f}")
            log.info("tiny model SFT step %d: loss %.3f, dev accuracy %.3f", step, loss.item(), dev_acc)
            if dev_acc >= recipe["sft_target_accuracy"]:
                break
    bar.close()
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    stats = {"recipe": recipe, "task": task, "sft_steps": step, "dev_accuracy": dev_acc, "history": history,
             "n_params": sum(p.numel() for p in model.parameters()), "build_seconds": time.time() - t0}
    (out_dir / "tiny_recipe.json").write_text(json.dumps(stats, indent=1))
    return stats


def tiny_model(cfg, cache_root: Path | None = None) -> Path:
    """The cached tiny base model directory for this config, built on first use."""
    from rlvr_linearity.paths import cache_dir

    recipe, task = recipe_from_cfg(cfg)
    root = Path(cache_root) if cache_root else cache_dir(cfg) / "tiny_models"
    final = root / recipe_hash(recipe, task)
    if (final / "tiny_recipe.json").exists():
        log.info("tiny model: cache hit %s", final)
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        stats = build(recipe, task, tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: keep theirs
            if not (final / "tiny_recipe.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("tiny model: built %s in %.1fs (%d params, %d SFT steps, dev accuracy %.3f)", final,
             stats["build_seconds"], stats["n_params"], stats["sft_steps"], stats["dev_accuracy"])
    return final
