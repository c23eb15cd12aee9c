import pytest
import torch

from arvision.errors import InputError
from arvision.training.tasks import build_task


@pytest.mark.parametrize("source", ["photos", "world"])
def test_tokenizer_task_data_sources_give_image_batches(source):
    task = build_task("tokenizer", {}, {"source": source, "resolution": 32, "length": 4})
    dataset = task.build_dataset()
    batch = task.collate([dataset[0], dataset[1]])
    assert batch.shape == (2, 3, 32, 32) and batch.min() >= -1 and batch.max() <= 1
    assert torch.equal(task.collate([dataset[0]]), task.collate([dataset[0]]))


def test_unknown_task_and_keys_are_named():
    with pytest.raises(InputError, match="unknown training task 'gan'"):
        build_task("gan", {}, {})
    with pytest.raises(InputError, match="model.tokenizer.chh"):
        build_task("tokenizer", {"tokenizer": {"chh": 3}}, {})
