import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from arvision import checkpoint
from arvision.errors import CheckpointError


def test_atomic_path_keeps_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "weights.safetensors"
    checkpoint.save_state_dict({"a": torch.ones(2)}, target)
    with pytest.raises(RuntimeError), checkpoint.atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed mid-write")
    assert torch.equal(checkpoint.load_state_dict(target)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    checkpoint.write_json(tmp_path / "config.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == 0o666 & ~umask


def test_save_state_dict_handles_tied_and_strided_tensors(tmp_path):
    shared = torch.arange(6.0).view(2, 3)
    checkpoint.save_state_dict({"w": shared, "tied": shared, "t": shared.T}, tmp_path / "m.safetensors")
    state = checkpoint.load_state_dict(tmp_path / "m.safetensors")
    assert torch.equal(state["tied"], shared) and torch.equal(state["t"], shared.T)


def test_sharded_index_and_bin_files_load(tmp_path):
    save_file({"a": torch.zeros(1)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.ones(1)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    found = checkpoint.find_weights_file(tmp_path)
    assert found.name == "model.safetensors.index.json"
    assert set(checkpoint.load_state_dict(found)) == {"a", "b"}
    torch.save({"state_dict": {"c": torch.ones(1)}}, tmp_path / "x.bin")
    assert set(checkpoint.load_state_dict(tmp_path / "x.bin")) == {"c"}


def test_non_tensor_pickles_are_refused(tmp_path):
    torch.save({"a": 1}, tmp_path / "x.bin")
    with pytest.raises(CheckpointError, match="x.bin"):
        checkpoint.load_state_dict(tmp_path / "x.bin")


def test_check_state_dict_reports_every_kind_of_mismatch():
    model = nn.Linear(3, 2)
    state = {"weight": torch.zeros(2, 4), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        checkpoint.check_state_dict(model, state, source="ckpt.bin")
    message = str(info.value)
    assert "ckpt.bin" in message
    assert "weight: checkpoint (2, 4) vs model (2, 3)" in message
    assert "missing key(s): bias" in message and "unexpected key(s): extra" in message
    checkpoint.check_state_dict(model, {"weight": torch.zeros(2, 3)}, source="x", optional=lambda k: k == "bias")
