"""`Trajectory.iter_blocks` reads each step's rows straight into the block: the blocks are the
same tensors (values, dtype, shape, row ranges) as the reference stacking of `read_rows`
slices that it replaced, on every kind of trajectory it meets."""

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import make_trajectory
from rlvr_linearity.errors import TrajectoryError
from rlvr_linearity.trajectory import ModelFiles, ModelWriter, open_trajectory
from rlvr_linearity.trajectory.resources import torch_threads


def reference_blocks(traj, name, steps, max_elements):
    """The previous implementation: get_slice per step, stacked into a block of the widest dtype."""
    models = [traj.model(s) for s in steps]
    shape = traj.base.shape(name)
    rows = shape[0] if shape else 1
    rest = tuple(shape[1:])
    row_size = int(torch.Size(rest).numel())
    dtype = models[0].dtype(name)
    for m in models[1:]:
        dtype = torch.promote_types(dtype, m.dtype(name))
    per = max(1, int(max_elements) // max(1, len(steps) * row_size))
    for start in range(0, rows, per):
        stop = min(rows, start + per)
        block = torch.empty((len(steps), stop - start, *rest), dtype=dtype)
        for i, m in enumerate(models):
            block[i] = m.read_rows(name, start, stop).reshape(stop - start, *rest)
        yield start, stop, block


def assert_same_blocks(traj, steps, max_elements, dtype=None):
    for name in traj.tensor_names:
        ref = list(reference_blocks(traj, name, steps, max_elements))
        got = list(traj.iter_blocks(name, steps, max_elements, dtype=dtype))
        assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in ref], name
        for (_, _, g), (_, _, r) in zip(got, ref):
            assert g.dtype == (r.dtype if dtype is None else dtype) and g.shape == r.shape, name
            assert g.is_contiguous()
            if dtype is None:  # bit-identical, NaN payloads and signed zeros included
                assert torch.equal(g.view(-1).view(torch.uint8), r.view(-1).view(torch.uint8)), name
            else:
                assert torch.equal(g, r.to(dtype)), name


@pytest.mark.parametrize("tied", [True, False])
def test_bf16_base_fp32_steps_odd_chunks(tmp_path, tied):
    t = make_trajectory(tmp_path, "step", [1, 3, 4], tied=tied, dtype=torch.float32, base_dtype=torch.bfloat16,
                        drift="random")
    traj = open_trajectory(path=t.path, base=t.base)
    assert traj.base.tied_embeddings == tied
    for max_elements in (1, 7, 37, 193, 1000, 10**7):  # one row per block ... one block per tensor
        assert_same_blocks(traj, traj.steps, max_elements)
    assert_same_blocks(traj, [3, 0, 1], 53)  # any order, base not first
    assert_same_blocks(traj, [0], 53)  # bf16 only: read straight into the block
    assert_same_blocks(traj, traj.steps, 53, dtype=torch.float32)
    assert_same_blocks(traj, traj.steps, 53, dtype=torch.float64)
    assert_same_blocks(traj, [0, 1], 53, dtype=torch.float64)


def test_sharded_steps_and_fp16(tmp_path):
    t = make_trajectory(tmp_path, "step", [1, 2], dtype=torch.float16, drift="random")
    # step 2 rewritten as a sharded checkpoint of many small files
    mf = ModelFiles(t.step_dirs[2])
    sharded = tmp_path / "sharded"
    with ModelWriter(sharded, template=mf, shard_bytes=3_000) as w:
        for n in w.tensor_names:
            w.write(n, mf.read(n))
    traj_dir = t.step_dirs[2]
    for f in traj_dir.glob("model*.safetensors"):
        f.unlink()
    for f in sharded.iterdir():
        if f.name.startswith("model"):
            f.rename(traj_dir / f.name)
    traj = open_trajectory(path=t.path, base=t.base)
    assert len(traj.model(2).files) > 3
    for max_elements in (11, 64, 10**6):
        assert_same_blocks(traj, traj.steps, max_elements)
    assert_same_blocks(traj, traj.steps, 64, dtype=torch.float32)


def _write(d, tensors, cfg=None):
    d.mkdir(parents=True)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(cfg or {"tie_word_embeddings": True}))


def test_1d_0d_3d_integer_and_special_values(tmp_path):
    g = torch.Generator().manual_seed(0)
    shapes = {"w3": (5, 3, 7), "w2": (13, 1), "v": (29,), "s": (), "one": (1,), "empty": (0, 4)}
    for step in range(4):
        dt = torch.bfloat16 if step == 0 else torch.float32
        ts = {n: torch.randn(s, generator=g).to(dt) for n, s in shapes.items()}
        ts["w3"].view(-1)[:4] = torch.tensor([0.0, -0.0, 1e-40, -3e38])  # signed zero, subnormal, huge
        ts["ids"] = torch.arange(17, dtype=torch.int64) * (step + 1)
        ts["mask"] = torch.arange(6) % (step + 2) == 0
        _write(tmp_path / f"step_{step}", ts)
    traj = open_trajectory(path=tmp_path)
    for max_elements in (1, 5, 22, 10**6):
        assert_same_blocks(traj, traj.steps, max_elements)
    assert_same_blocks(traj, traj.steps, 22, dtype=torch.float64)
    _, _, b = next(traj.iter_blocks("s", traj.steps))
    assert b.shape == (4, 1) and b.dtype == torch.float32  # a 0-D tensor: one "row"
    assert list(traj.iter_blocks("empty", traj.steps)) == []


def test_dtype_must_hold_the_stored_values(tmp_path):
    t = make_trajectory(tmp_path, "step", [1], dtype=torch.float64)
    traj = open_trajectory(path=t.path, base=t.base)
    name = "model.norm.weight"
    with pytest.raises(ValueError, match="exactly"):
        next(traj.iter_blocks(name, traj.steps, dtype=torch.float32))
    _, _, b = next(traj.iter_blocks(name, traj.steps, dtype=torch.float64))
    assert torch.equal(b[1].double(), t.values[1][name])


def test_thread_count_restored(tmp_path):
    t = make_trajectory(tmp_path, "step", [1, 2])
    traj = open_trajectory(path=t.path, base=t.base)
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        for name in traj.tensor_names:
            for _ in traj.iter_blocks(name, traj.steps, 50):
                assert torch.get_num_threads() == before + 1  # the caller's count while it holds a block
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError
    assert torch.get_num_threads() == before


def test_file_truncated_after_open(tmp_path):
    t = make_trajectory(tmp_path, "step", [1, 2])
    traj = open_trajectory(path=t.path, base=t.base)
    f = t.step_dirs[2] / "model.safetensors"
    last = traj.model(2).tensor_names[-1]
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(TrajectoryError, match="truncated") as e:
        list(traj.iter_blocks(last, traj.steps))
    assert "step 2" in str(e.value) and f"tensor {last}" in str(e.value)


def test_one_descriptor_per_model(tmp_path):
    t = make_trajectory(tmp_path, "step", [1])
    traj = open_trajectory(path=t.path, base=t.base)
    for name in traj.tensor_names:
        list(traj.iter_blocks(name, traj.steps, 100))
    m = traj.model(1)
    assert m._fd is not None and m._fd[0] == m.files[0]
    m.close()
    assert m._fd is None
    list(traj.iter_blocks(traj.tensor_names[0], traj.steps))  # reopened on demand
    assert m._fd is not None


def test_release_free_heap_is_safe():
    from rlvr_linearity.trajectory.resources import _GLIBC, release_free_heap

    keep = torch.ones(1 << 20)
    junk = [torch.ones(1 << 18) for _ in range(64)]  # 64 MiB freed into the heap
    del junk
    assert release_free_heap(threshold=0) == (_GLIBC is not None)
    assert not release_free_heap(threshold=1 << 62)
    assert float(keep.sum()) == 1 << 20  # live memory untouched
