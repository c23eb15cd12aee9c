import json
import os
import re
import stat

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from arvision import checkpoint
from arvision.errors import CheckpointError, InputError


def test_atomic_path_keeps_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "weights.safetensors"
    checkpoint.save_state_dict({"a": torch.ones(2)}, target)
    with pytest.raises(RuntimeError), checkpoint.atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed mid-write")
    assert torch.equal(checkpoint.load_state_dict(target)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request, monkeypatch):
    """Run under this process umask (checkpoint reads it once at import, so its copy is set too)."""
    previous = os.umask(request.param)
    monkeypatch.setattr(checkpoint, "_UMASK", request.param)
    yield request.param
    os.umask(previous)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_get_ordinary_permissions(tmp_path, umask):
    with checkpoint.atomic_folder(tmp_path / "model") as tmp:
        checkpoint.write_json(tmp / "config.json", {"a": 1})
    assert _mode(tmp_path / "model") == {0o022: 0o755, 0o027: 0o750}[umask]
    assert _mode(tmp_path / "model" / "config.json") == {0o022: 0o644, 0o027: 0o640}[umask]


def test_atomic_writes_leave_the_process_umask_alone(tmp_path, monkeypatch):
    # Setting the umask, even to restore it, changes it for every thread of the process.
    monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("os.umask called"))
    with checkpoint.atomic_folder(tmp_path / "model") as tmp:
        checkpoint.write_json(tmp / "config.json", {"a": 1})
    assert (tmp_path / "model" / "config.json").is_file()


def _record_fsync_and_replace(monkeypatch):
    """Patch os.fsync/os.replace to log ("fsync", inode) and ("replace", destination) in call order."""
    events = []
    fsync, replace = os.fsync, os.replace

    def logged_fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        fsync(fd)

    def logged_replace(src, dst):
        replace(src, dst)
        events.append(("replace", os.fspath(dst)))

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    return events


def test_atomic_path_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = _record_fsync_and_replace(monkeypatch)
    target = tmp_path / "config.json"
    checkpoint.write_json(target, {"a": 1})
    assert events == [
        ("fsync", target.stat().st_ino),
        ("replace", os.fspath(target)),
        ("fsync", tmp_path.stat().st_ino),
    ]


def test_atomic_folder_fsyncs_files_written_without_atomic_path(tmp_path, monkeypatch):
    events = _record_fsync_and_replace(monkeypatch)
    target = tmp_path / "model"
    with checkpoint.atomic_folder(target) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "tokenizer.model").write_bytes(b"copied")
    swap = events.index(("replace", os.fspath(target)))
    synced_before = {inode for kind, inode in events[:swap] if kind == "fsync"}
    assert synced_before >= {
        target.stat().st_ino,
        (target / "sub").stat().st_ino,
        (target / "sub" / "tokenizer.model").stat().st_ino,
    }
    assert ("fsync", tmp_path.stat().st_ino) in events[swap:]


def test_a_folder_that_refuses_fsync_is_not_an_error(tmp_path, monkeypatch):
    fsync = os.fsync

    def files_only(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", files_only)
    checkpoint.write_json(tmp_path / "config.json", {"a": 1})
    assert checkpoint.read_json(tmp_path / "config.json") == {"a": 1}


def test_atomic_folder_replaces_an_existing_folder(tmp_path):
    target = tmp_path / "model"
    with checkpoint.atomic_folder(target) as tmp:
        checkpoint.save_state_dict({"a": torch.zeros(2)}, tmp / "model.safetensors")
        (tmp / "stale.txt").write_text("old only")
    with checkpoint.atomic_folder(target) as tmp:
        checkpoint.save_state_dict({"a": torch.ones(2)}, tmp / "model.safetensors")
    assert torch.equal(checkpoint.load_state_dict(target / "model.safetensors")["a"], torch.ones(2))
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_folder_keeps_the_old_folder_when_the_swap_fails(tmp_path, monkeypatch):
    target = tmp_path / "model"
    with checkpoint.atomic_folder(target) as tmp:
        checkpoint.save_state_dict({"a": torch.zeros(2)}, tmp / "model.safetensors")

    def fail(src, dst):
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"), checkpoint.atomic_folder(target) as tmp:
        checkpoint.save_state_dict({"a": torch.ones(2)}, tmp / "model.safetensors")
        monkeypatch.setattr(os, "replace", fail)  # the rename of the new folder onto the old one fails
    assert torch.equal(checkpoint.load_state_dict(target / "model.safetensors")["a"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_folder_deletes_what_a_crashed_swap_left(tmp_path):
    target = tmp_path / "model"
    with checkpoint.atomic_folder(target) as tmp:
        (tmp / "v").write_text("1")
    # a process killed between the swap's two renames leaves the old folder aside and none at ``target``
    os.rename(target, tmp_path / ".model.k3x_9q0z.old")
    (tmp_path / ".model.v2.abcdefgh.old").mkdir()  # another folder's ("model.v2") leftover, not this one's
    with checkpoint.atomic_folder(target) as tmp:
        (tmp / "v").write_text("2")
    assert (target / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.v2.abcdefgh.old", "model"]


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


@pytest.fixture
def shards(tmp_path):
    """Three shards: ``a`` (zeros), ``b`` and ``c``, and ``a`` again (sevens)."""
    checkpoint.save_state_dict({"a": torch.zeros(2)}, tmp_path / "m-1.safetensors")
    checkpoint.save_state_dict({"b": torch.ones(2), "c": torch.ones(1)}, tmp_path / "m-2.safetensors")
    checkpoint.save_state_dict({"a": torch.full((2,), 7.0)}, tmp_path / "m-3.safetensors")
    return tmp_path


def _load_index(folder, weight_map):
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    return checkpoint.load_state_dict(index)


def test_each_key_is_read_from_the_shard_the_index_names(shards):
    state = _load_index(shards, {"a": "m-3.safetensors", "b": "m-2.safetensors", "c": "m-2.safetensors"})
    assert sorted(state) == ["a", "b", "c"]
    assert torch.equal(state["a"], torch.full((2,), 7.0))


@pytest.mark.parametrize(
    ("weight_map", "message"),
    [
        (
            {"a": "m-1.safetensors", "b": "m-2.safetensors", "c": "m-2.safetensors", "z": "m-2.safetensors"},
            "does not match shard m-2.safetensors: 1 key(s) listed for it are not in it: z",
        ),
        ({"a": "m-1.safetensors", "b": "m-2.safetensors"}, "m-2.safetensors: 1 key(s) in it are not listed for it: c"),
        (
            {"a": "m-1.safetensors", "b": "m-2.safetensors", "c": "m-2.safetensors", "x": "m-3.safetensors"},
            "m-3.safetensors: 1 key(s) listed for it are not in it: x | 1 key(s) in it are not listed for it: a",
        ),
        ({"a": 1}, "weight_map['a'] is 1, not a shard file name"),
        ({"a": "m-1.safetensors", "b": "model.safetensors.index.json"}, "is an index, not a weights file"),
        ({"a": "../m-1.safetensors"}, "shard '../m-1.safetensors' (of 'a') is not a file inside"),
        ({"a": "/etc/m-1.safetensors"}, "shard '/etc/m-1.safetensors' (of 'a') is not a file inside"),
        ({"a": "m-1.safetensors", "b": "m-9.safetensors"}, "missing shard file 'm-9.safetensors'"),
    ],
    ids=[
        "listed-not-in-shard",
        "in-shard-not-listed",
        "in-two-shards",
        "non-string",
        "self",
        "parent",
        "absolute",
        "missing-file",
    ],
)
def test_a_shard_index_that_does_not_match_its_shards_is_named(shards, weight_map, message):
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        _load_index(shards, weight_map)
    assert "model.safetensors.index.json" in str(info.value)


@pytest.mark.parametrize("write", [checkpoint.atomic_path, checkpoint.atomic_folder])
def test_atomic_writes_under_a_file_name_it_in_one_line(tmp_path, write):
    (tmp_path / "afile").write_text("x")
    for under, message in (
        ("out", f"cannot write {tmp_path}/afile/out: {tmp_path}/afile is a file, not a folder"),
        ("sub/out", f"cannot write {tmp_path}/afile/sub/out: cannot create the folder {tmp_path}/afile/sub"),
    ):
        with pytest.raises(InputError, match=re.escape(message)), write(tmp_path / "afile" / under):
            pass
