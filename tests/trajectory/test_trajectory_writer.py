"""ModelWriter: loadable, exact, atomic, streaming, tied embeddings kept tied."""

import json

import pytest
import torch
from safetensors import safe_open

from conftest import make_tiny_model_dir
from rlvr_linearity.errors import RlvrError
from rlvr_linearity.trajectory import ModelFiles, ModelWriter


def write_all(out, mf, fn=lambda n, t: t, order=None, **kw):
    with ModelWriter(out, template=mf, **kw) as w:
        for n in order or w.tensor_names:
            w.write(n, fn(n, mf.read(n).double()))
    return out


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("src_dtype,dtype", [(torch.bfloat16, None), (torch.bfloat16, "float32"),
                                             (torch.float32, "bfloat16"), (torch.float32, None)])
def test_written_model_loads_with_identical_tensors(tmp_path, tied, src_dtype, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = make_tiny_model_dir(tmp_path / "src", tied=tied, dtype=src_dtype, seed=3)
    mf = ModelFiles(src)
    delta = {n: torch.randn(mf.shape(n), dtype=torch.float64) * 1e-2 for n in mf.tensor_names}
    out = write_all(tmp_path / "out", mf, lambda n, t: t + delta[n], order=list(reversed(mf.tensor_names)),
                    dtype=dtype)
    target = src_dtype if dtype is None else {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dtype"] == str(target).removeprefix("torch.")
    assert cfg["tie_word_embeddings"] == tied
    for f in ["generation_config.json", "tokenizer.json", "tokenizer_config.json"]:
        assert (out / f).is_file()
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert model.dtype == target
    AutoTokenizer.from_pretrained(out)
    sd = model.state_dict()
    with safe_open(out / "model.safetensors", "pt") as f:
        assert set(f.keys()) == set(mf.tensor_names)
        for n in mf.tensor_names:
            x = f.get_tensor(n)
            ref = (mf.read(n).double() + delta[n]).to(target)
            assert x.dtype == target and torch.equal(x, ref), n
            assert torch.equal(sd[n], x)
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert [p.name for p in out.parent.iterdir() if ".tmp-" in p.name] == []


def test_error_inside_block_leaves_nothing(tmp_path):
    mf = ModelFiles(make_tiny_model_dir(tmp_path / "src"))
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        with ModelWriter(out, template=mf) as w:
            w.write(w.tensor_names[0], mf.read(w.tensor_names[0]))
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == [tmp_path / "src"]


def test_missing_tensor_and_bad_shape(tmp_path):
    mf = ModelFiles(make_tiny_model_dir(tmp_path / "src"))
    with pytest.raises(RlvrError, match="never written"):
        with ModelWriter(tmp_path / "out", template=mf) as w:
            for n in w.tensor_names[:-1]:
                w.write(n, mf.read(n))
    assert not (tmp_path / "out").exists()
    with pytest.raises(RlvrError, match="does not match"):
        with ModelWriter(tmp_path / "out", template=mf) as w:
            w.write("model.norm.weight", torch.zeros(3))
    with pytest.raises(RlvrError, match="not a tensor of the template"):
        with ModelWriter(tmp_path / "out", template=mf) as w:
            w.write("nope", torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_write_rows_streams_a_tensor_in_blocks(tmp_path):
    mf = ModelFiles(make_tiny_model_dir(tmp_path / "src"))
    with ModelWriter(tmp_path / "out", template=mf, dtype="float32") as w:
        for n in w.tensor_names:
            x = mf.read(n).float() + 1
            rows = x.shape[0] if x.dim() else 1
            for a in reversed(range(0, rows, 3)):  # any order
                w.write_rows(n, a, x[a: a + 3] if x.dim() else x.reshape(1))
    got = ModelFiles(tmp_path / "out")
    for n in mf.tensor_names:
        assert torch.equal(got.read(n), mf.read(n).float() + 1), n
    name = mf.tensor_names[0]
    with pytest.raises(RlvrError, match="never written"):  # half a tensor is not a tensor
        with ModelWriter(tmp_path / "half", template=mf) as w:
            for n in w.tensor_names:
                x = mf.read(n)
                w.write_rows(n, 0, x[: max(1, x.shape[0] // 2)] if n == name else x)
    with pytest.raises(RlvrError, match="do not fit"):
        with ModelWriter(tmp_path / "bad", template=mf) as w:
            w.write_rows(name, mf.shape(name)[0], mf.read(name)[:1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_overwrites_existing_output_atomically(tmp_path):
    mf = ModelFiles(make_tiny_model_dir(tmp_path / "src"))
    out = write_all(tmp_path / "out", mf)
    (out / "stale.txt").write_text("old")
    write_all(out, mf, lambda n, t: t * 2)
    assert not (out / "stale.txt").exists()
    assert torch.equal(ModelFiles(out).read("model.norm.weight"), mf.read("model.norm.weight") * 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_tied_template_storing_lm_head_keeps_them_identical(tmp_path):
    from safetensors.torch import load_file, save_file

    src = make_tiny_model_dir(tmp_path / "src", tied=True)
    sd = load_file(src / "model.safetensors")
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    save_file(sd, str(src / "model.safetensors"), metadata={"format": "pt"})
    mf = ModelFiles(src)
    assert not mf.tied_embeddings
    out = write_all(tmp_path / "out", mf, lambda n, t: t + (1.0 if n == "lm_head.weight" else 0.0))
    got = ModelFiles(out)
    assert torch.equal(got.read("lm_head.weight"), got.read("model.embed_tokens.weight"))
    assert torch.equal(got.read("model.embed_tokens.weight"), mf.read("model.embed_tokens.weight"))


def test_many_writers_open_at_once(tmp_path):
    mf = ModelFiles(make_tiny_model_dir(tmp_path / "src"))
    from contextlib import ExitStack

    with ExitStack() as stack:
        ws = [stack.enter_context(ModelWriter(tmp_path / f"t{i}", template=mf)) for i in range(16)]
        for n in mf.tensor_names:
            x = mf.read(n)
            for i, w in enumerate(ws):
                w.write(n, x + i)
    for i in (0, 7, 15):
        assert torch.equal(ModelFiles(tmp_path / f"t{i}").read("model.norm.weight"), mf.read("model.norm.weight") + i)
