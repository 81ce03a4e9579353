"""Engines: hf batched left-padded greedy == one prompt at a time; n samples; vLLM's own SamplingParams
accept the adapter's parameters; one BOS in every engine; data parallelism == one process."""

import os
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from omegaconf import OmegaConf

from rlvr_linearity.evaluate.engines.hf import HFEngine

PROMPTS = ["Compute 1 + 2.", "Compute 13 - 4 and put it in a box, please."]


def hf_cpu(batch_size: int) -> dict:
    """The HF engine's settings (conf/engine/hf.yaml) on the CPU with `batch_size`."""
    return {"device": "cpu", "dtype": "auto", "batch_size": batch_size, "trust_remote_code": False}


def test_hf_batched_left_padding_matches_single(tiny_model_dir):
    eng = HFEngine(str(tiny_model_dir()), **hf_cpu(8))
    greedy = {"n": 2, "temperature": 0.0, "max_tokens": 6, "seed": 0}
    batched = eng.generate(PROMPTS, greedy)
    single = [eng.generate([p], greedy)[0] for p in PROMPTS]
    assert batched == single and all(len(s) == 2 and s[0] == s[1] for s in batched)
    sampled = eng.generate(PROMPTS, {"n": 3, "temperature": 1.0, "top_p": 0.9, "max_tokens": 6, "seed": 1})
    assert [len(s) for s in sampled] == [3, 3]
    assert sampled == eng.generate(PROMPTS, {"n": 3, "temperature": 1.0, "top_p": 0.9, "max_tokens": 6, "seed": 1})


VLLM_VERSION = "0.24.0"  # what the gpu extra resolves (docs/ecosystem.md)
# What `from vllm import SamplingParams` imports beyond the main venv (vllm itself goes in --no-deps:
# it pins another torch and transformers, which the venv takes from the main one instead).
VLLM_IMPORT_DEPS = ["cbor2", "openai-harmony", "openai", "pybase64", "uvloop", "py-cpuinfo"]


@pytest.fixture(scope="session")
def vllm_python():
    """A python with the pinned vLLM importable: a side venv in the system temp dir (kept for later
    runs on this machine; CI runs without pytest's cache) holding vllm (no deps) and its
    import-time needs, seeing the main venv's packages (torch, transformers)."""
    import site
    import subprocess
    import sys
    import tempfile
    import venv

    root = Path(tempfile.gettempdir()) / f"rlvr-vllm-{VLLM_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}-venv"
    py = root / "bin" / "python"
    if not (root / ".complete").exists():
        venv.create(root, with_pip=True, clear=True)
    # Point at *this* run's main venv every time: a venv kept from a run in another checkout would
    # otherwise see that checkout's (maybe deleted) packages and miss torch.
    own = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                         text=True, check=True).stdout.strip()
    Path(own, "main-venv.pth").write_text(site.getsitepackages()[0] + "\n")
    if not (root / ".complete").exists():
        pip = [str(py), "-m", "pip", "install", "-q"]
        for args in ([*pip, "--no-deps", f"vllm=={VLLM_VERSION}"], [*pip, *VLLM_IMPORT_DEPS]):
            done = subprocess.run(args, capture_output=True, text=True)
            if done.returncode:
                pytest.skip(f"cannot install vllm in a side venv: {done.stderr.strip().splitlines()[-1:]}")
        (root / ".complete").write_text(sys.version)
    return str(py)


@pytest.mark.slow
def test_vllm_sampling_params_accepted_by_vllm(vllm_python):
    """Our sampling keys through the adapter's builder into vLLM's own SamplingParams: greedy
    n > 1 (which vLLM refuses as such) becomes one sample repeated n times."""
    import json
    import subprocess

    cases = [{"n": 4, "temperature": 0.0, "top_p": 0.9, "top_k": 20, "max_tokens": 99, "seed": 3},
             {"n": 4, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "max_tokens": 99, "seed": 3, "stop": ["\n\n"]},
             {"n": 1, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "max_tokens": 8, "seed": 0}]
    script = """
import json, sys
from vllm import SamplingParams
from rlvr_linearity.evaluate.engines.vllm import sampling_kwargs
out = []
for case in json.loads(sys.argv[1]):
    kw, repeat = sampling_kwargs(case)
    sp = SamplingParams(**kw)
    out.append([sp.n, sp.temperature, sp.top_p, sp.top_k, sp.max_tokens, sp.seed, sp.stop, repeat])
try:
    SamplingParams(n=2, temperature=0.0)
    out.append("accepted")
except ValueError as err:
    out.append(str(err))
print(json.dumps(out))
"""
    root = str(REPO_ROOT)
    done = subprocess.run([vllm_python, "-c", script, json.dumps(cases)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": root}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    greedy, sampled, single, refused = json.loads(done.stdout.strip().splitlines()[-1])
    assert "n must be 1" in refused  # the rule the builder works around
    assert greedy[:3] == [1, 0.0, 1.0] and greedy[4:6] == [99, 3] and greedy[7] == 4
    assert sampled == [4, 0.7, 0.9, 20, 99, 3, ["\n\n"], 1]
    assert single[0] == 1 and single[7] == 1


# ---------------------------------------------------------------- one BOS in every engine
@pytest.fixture(scope="module")
def bos_model(tmp_path_factory):
    """A tiny model whose tokenizer adds a BOS to every text (`add_bos_token: true`, as
    DeepSeek-R1-Distill) and whose chat template also writes `{{ bos_token }}`."""
    from conftest import CHAT_TEMPLATE, random_state_dict, tiny_config, write_model_dir
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([f"Compute {a} + {b}. The answer is {a + b}." for a in range(30) for b in range(9)],
                           trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "<|im_end|>"],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                               show_progress=False))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", pad_token="<pad>", eos_token="<|im_end|>",
                                  add_bos_token=True)
    tok.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    d = tmp_path_factory.mktemp("bos_model")
    config = tiny_config(tied=False, vocab=len(tok))
    write_model_dir(d, config, random_state_dict(config, 0), dtype=torch.float32, tokenizer=False)
    tok.save_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    assert tok("Compute 1 + 2.")["input_ids"][0] == tok.bos_token_id  # the tokenizer adds a BOS by itself
    return str(d), tok


def _assert_one_bos(rows, bos: int) -> None:
    assert rows
    for row in rows:
        assert row[0] == bos and row[1] != bos, row[:4]


def _unpadded(input_ids, attention_mask) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]


def _spy_generate(model, seen: list) -> None:
    real = model.generate

    def generate(**kw):
        seen.extend(_unpadded(kw["input_ids"], kw["attention_mask"]))
        return real(**kw)

    model.generate = generate


def test_prompts_hold_one_bos(bos_model):
    from rlvr_linearity.evaluate.benchmarks import Problem
    from rlvr_linearity.evaluate.engines.base import prompt_ids
    from rlvr_linearity.evaluate.prompts import render

    _, tok = bos_model
    p = Problem("0", "Compute 1 + 2.", "Compute 1 + 2.")
    chat, plain, relex = (render(t, p, tok) for t in ("chat", "plain", "relex_qwen"))
    ids = prompt_ids(tok, [chat, plain, relex])
    # the chat prompt's ids are the chat template's own tokenisation
    assert ids[0] == list(tok.apply_chat_template([{"role": "user", "content": p.prompt}], tokenize=True,
                                                  add_generation_prompt=True, return_dict=True)["input_ids"])
    _assert_one_bos(ids, tok.bos_token_id)
    assert tok(chat)["input_ids"][:2] == [tok.bos_token_id] * 2  # what tokenising the text again used to give


def test_hf_and_logits_engines_feed_one_bos(bos_model):
    from rlvr_linearity.evaluate.benchmarks import Problem
    from rlvr_linearity.evaluate.engines.logits import LogitsExtrapolationEngine
    from rlvr_linearity.evaluate.prompts import render

    path, tok = bos_model
    prompts = [render("chat", Problem(str(i), q, q), tok) for i, q in enumerate(["Compute 1 + 2.", "Compute 13 + 4."])]
    eng = HFEngine(path, **hf_cpu(4))
    seen: list = []
    _spy_generate(eng.model, seen)
    eng.generate(prompts, {"n": 2, "temperature": 1.0, "max_tokens": 3, "seed": 0})
    _assert_one_bos(seen, tok.bos_token_id)

    lx = LogitsExtrapolationEngine(path, path, 0.5, device="cpu", dtype="auto", batch_size=4, compact_at=None)
    fed: list = []
    lx.model_a.register_forward_pre_hook(
        lambda m, args, kw: fed.extend(_unpadded(kw["input_ids"], kw["attention_mask"])) if not fed else None,
        with_kwargs=True)
    lx.generate(prompts, {"n": 1, "temperature": 0.0, "max_tokens": 3})
    _assert_one_bos(fed, tok.bos_token_id)


def test_vllm_engine_feeds_one_bos(bos_model, monkeypatch):
    """The adapter against a stand-in `vllm` module: prompts arrive as token ids with one BOS,
    and a greedy n=3 request asks vLLM for one sample, reported three times."""
    import sys
    import types

    from rlvr_linearity.evaluate.benchmarks import Problem
    from rlvr_linearity.evaluate.engines.vllm import VLLMEngine
    from rlvr_linearity.evaluate.prompts import render

    path, tok = bos_model
    calls: list = []

    class LLM:
        def __init__(self, **kw):
            assert "data_parallel_size" not in kw

        def get_tokenizer(self):
            return tok

        def generate(self, prompts, params, use_tqdm):
            calls.append((prompts, params))
            done = types.SimpleNamespace(outputs=[types.SimpleNamespace(text="7")] * params["n"])
            return [done for _ in prompts]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=lambda **kw: kw))
    cfg = OmegaConf.create({"dtype": "auto", "gpu_memory_utilization": 0.5, "tensor_parallel_size": 1,
                            "trust_remote_code": False, "max_model_len": None})
    eng = VLLMEngine(path, cfg)
    out = eng.generate([render("chat", Problem("0", "Compute 1 + 2.", "Compute 1 + 2."), tok)],
                       {"n": 3, "temperature": 0.0, "max_tokens": 5})
    (prompts, params), = calls
    _assert_one_bos([p["prompt_token_ids"] for p in prompts], tok.bos_token_id)
    assert params["n"] == 1 and out == [["7", "7", "7"]]


def test_probes_generate_and_teacher_force_one_bos(bos_model, monkeypatch):
    from rlvr_linearity.evaluate.engines import hf
    from rlvr_linearity.linearity import logprob

    path, tok = bos_model
    seen: list = []
    real = hf.load_model

    def load(*a):
        model, t = real(*a)
        _spy_generate(model, seen)
        return model, t

    monkeypatch.setattr(hf, "load_model", load)
    items = logprob.generate_probes(path, ["Compute 1 + 2."], n_samples=2, max_new_tokens=3, temperature=1.0)
    _assert_one_bos(seen, tok.bos_token_id)
    ids, first = logprob.encode(tok, logprob.prompt_text(tok, items[0]["problem"]), " The answer is 3.")
    _assert_one_bos([ids], tok.bos_token_id)
    assert ids[:first] == seen[0][:first]  # teacher forcing scores after the prompt the engine generated from


# ---------------------------------------------------------------- data parallelism
def test_data_parallel_samples_equal_one_process(tmp_path, tiny_model_dir, rlvr_cache):
    """`engine.data_parallel_size=2` on the HF engine: two spawned processes, each taking whole
    seeded chunks, merged into the same samples.jsonl (sampled, n=2) as one process writes."""
    from conftest import compose_config

    from rlvr_linearity.evaluate.app import evaluate
    from rlvr_linearity.evaluate.engines import make_engine
    from rlvr_linearity.evaluate.engines.parallel import DataParallelEngine

    model = tiny_model_dir()
    over = [f"evaluate.model={model}", "engine.device=cpu", "evaluate.max_problems=7", "evaluate.batch_size=2",
            "sampling.n=2", "sampling.temperature=1.0", "sampling.max_tokens=6", "logger=none"]
    one = evaluate(compose_config("evaluate", *over), tmp_path / "one")
    cfg = compose_config("evaluate", *over, "engine.data_parallel_size=2")
    two = evaluate(cfg, tmp_path / "two")
    read = lambda d: (d / "evaluate" / "arithmetic" / "samples.jsonl").read_text()  # noqa: E731
    assert read(tmp_path / "two") == read(tmp_path / "one") and one == two
    assert len(read(tmp_path / "one").splitlines()) == 14

    eng = make_engine(cfg, model)
    assert isinstance(eng, DataParallelEngine) and len({p.pid for p in eng.procs} | {os.getpid()}) == 3
    calls = [(["Compute 1 + 2.", "Compute 3 + 4."], {"n": 2, "temperature": 1.0, "max_tokens": 5, "seed": s})
             for s in range(5)]
    local = HFEngine(model, **hf_cpu(16))
    assert list(eng.generate_many(calls)) == [local.generate(*c) for c in calls]


def test_data_parallel_rank_error_is_one_line(tiny_model_dir):
    from conftest import compose_config

    from rlvr_linearity.errors import EvaluationError
    from rlvr_linearity.evaluate.engines import make_engine

    cfg = compose_config("evaluate", "engine.device=cpu", "engine.dtype=float99", "engine.data_parallel_size=2")
    with pytest.raises(EvaluationError, match=r"data-parallel rank 0: .*float99"):
        make_engine(cfg, str(tiny_model_dir()))
