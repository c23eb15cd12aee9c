import random

import pytest
import torch

from arvision.errors import InputError
from arvision.text import vicuna
from arvision.training.vila_u import (
    IGNORE_INDEX,
    _expand,
    generation_example,
    understanding_example,
    vila_u_loss,
)
from arvision.training.vila_u_task import VILA_U_PARTS, VilaUObjective
from vilau_common import fixture_pipeline, tiny_vila_u


def _tokenizer():
    return fixture_pipeline().tokenizer  # vocab 1004, as the tiny model


def test_generation_example_layout_and_labels():
    tok = _tokenizer()
    ex = generation_example(tok, "A red cube.", torch.zeros(1, 3, 16, 16))
    i = ex.input_ids.index(vicuna.IMAGE_TOKEN_INDEX)
    assert ex.input_ids[i - 1] == 1000 and ex.input_ids[i + 1] == 1001 and ex.input_ids[-1] == 2
    supervised = [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX]
    assert 1000 in supervised and 1001 in supervised and supervised[-1] == 2
    assert ex.labels[: ex.labels.index(1000) - 1].count(IGNORE_INDEX) == ex.labels.index(1000) - 1
    video = generation_example(tok, "Waves.", torch.zeros(8, 3, 16, 16))
    assert video.input_ids.count(vicuna.IMAGE_TOKEN_INDEX) == 8 and 1002 in video.input_ids


def test_caption_dropout_gives_the_unconditional_prompt():
    tok = _tokenizer()
    ex = generation_example(tok, "A red cube.", torch.zeros(1, 3, 16, 16), caption_dropout=1.0, rng=random.Random(0))
    uncond = vicuna.tokenize(vicuna.generation_prompt(""), tok)
    assert ex.input_ids[: len(uncond)] == uncond


def test_hidden_state_before_each_visual_token_predicts_its_codes():
    model = tiny_vila_u()
    ex = generation_example(_tokenizer(), "A red cube.", torch.zeros(1, 3, 16, 16))
    features, codes = torch.randn(1, 16, 32), torch.randint(0, 64, (1, 16, 3))
    embeds, labels, (positions, targets) = _expand(model, ex, features, codes)
    slot = ex.input_ids.index(vicuna.IMAGE_TOKEN_INDEX)
    assert positions.tolist() == list(range(slot - 1, slot + 15))  # from <im_start> to the 15th visual token
    assert torch.equal(targets, codes[0])
    torch.testing.assert_close(embeds[slot : slot + 16], features[0])
    assert (labels[slot : slot + 16] == IGNORE_INDEX).all() and labels[slot + 16] == 1001


def test_training_steps_lower_the_loss_and_keep_the_tower_frozen():
    torch.manual_seed(0)
    model = tiny_vila_u()
    tok = _tokenizer()
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    examples = [
        generation_example(tok, "A red cube.", pixels),
        understanding_example(tok, [("What is it?", "A red cube.")], pixels),
    ]
    tower_before = {k: v.clone() for k, v in model.vision_tower.state_dict().items()}
    objective = VilaUObjective(model, train=VILA_U_PARTS)  # what `arvision train vila-u` optimises
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=3e-3)

    def step() -> tuple[float, dict]:
        loss, logs = objective(examples)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item(), logs

    first, first_logs = step()
    assert "visual_ce" in first_logs and first_logs["text_ce"] > 0
    for _ in range(6):
        last, last_logs = step()
    assert last < first * 0.8
    assert last_logs["visual_ce"] < first_logs["visual_ce"]
    # the tower neither learns nor moves its EMA codebooks
    assert all(torch.equal(v, tower_before[k]) for k, v in model.vision_tower.state_dict().items())


def test_understanding_only_batch_has_no_visual_loss():
    model = tiny_vila_u()
    ex = understanding_example(_tokenizer(), [("What?", "Nothing.")], torch.zeros(2, 3, 16, 16))
    assert ex.input_ids.count(1000) == 2
    out = vila_u_loss(model, [ex])
    assert out.visual_loss is None and torch.isfinite(out.loss)


def test_batched_tower_pass_keeps_each_example_with_its_own_images():
    model = tiny_vila_u().eval()
    g = torch.Generator().manual_seed(0)
    video = generation_example(_tokenizer(), "Waves.", torch.rand(2, 3, 16, 16, generator=g) * 2 - 1)
    image = understanding_example(_tokenizer(), [("What?", "A dot.")], torch.rand(1, 3, 16, 16, generator=g) * 2 - 1)
    still = generation_example(_tokenizer(), "A dot.", torch.rand(1, 3, 16, 16, generator=g) * 2 - 1)
    forward, backward = vila_u_loss(model, [video, image, still]), vila_u_loss(model, [still, image, video])
    # Text and visual losses are means over the batch's targets, so the order of the examples cannot matter.
    assert torch.allclose(forward.text_loss, backward.text_loss, atol=1e-5)
    assert torch.allclose(forward.visual_loss, backward.visual_loss, atol=1e-5)


def test_examples_of_different_image_sizes_are_named():
    model = tiny_vila_u()
    small = understanding_example(_tokenizer(), [("What?", "No.")], torch.zeros(1, 3, 16, 16))
    large = understanding_example(_tokenizer(), [("What?", "No.")], torch.zeros(1, 3, 32, 32))
    with pytest.raises(InputError, match="one image size"):
        vila_u_loss(model, [small, large])
