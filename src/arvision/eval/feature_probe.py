"""Can a small reader find the object in frozen image features and name its colour and shape?

An attention probe for vision towers: the features of single-object procedural-world scenes (``train``
split) teach a two-layer transformer with two learned queries (one per attribute) to name the object's
colour and shape; it is scored on scenes of the ``val`` split (colour-shape pairs seen in training) and
of the ``heldout`` split (pairs never seen). It separates what the features hold from what a language
model trained on them manages to read. Run it on :func:`pixel_patches` too, the same reader on the image
itself: held-out pairs are hard for any reader trained without them (it learns which shapes each colour
comes with), so a tower's figures mean something only next to that baseline. ``unnamed_scenes`` adds scenes
whose object is in an unnamed colour, shape supervision that no colour comes with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from arvision.data.scenes import COLOURS, SHAPES
from arvision.data.world import single_object_scenes
from arvision.errors import InputError
from arvision.imaging import pil_to_tensor

Encode = Callable[[torch.Tensor], torch.Tensor]  # pixels [B, 3, R, R] in [-1, 1] -> features [B, N, C]
COLOUR_NAMES = tuple(COLOURS)


def pixel_patches(patch: int) -> Encode:
    """The image itself as features: pixels [B, 3, R, R] -> non-overlapping patches [B, (R/p)^2, p*p*3]."""

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return rearrange(pixels, "b c (h p) (w q) -> b (h w) (p q c)", p=patch, q=patch)

    return encode


NO_COLOUR = -100  # the colour label of an object in an unnamed colour: masked out of the colour loss


def centred(encode: Encode) -> Encode:
    """``encode`` with each image's mean token subtracted from its tokens: what is left is what differs
    from place to place in the image, without the image-wide vector a tower may write over every token."""

    def encode_centred(pixels: torch.Tensor) -> torch.Tensor:
        features = encode(pixels)
        return features - features.mean(dim=1, keepdim=True)

    return encode_centred


@dataclass(frozen=True)
class LabelledFeatures:
    """The features of a set of single-object scenes with their objects' colour and shape labels; ``+``
    concatenates two sets."""

    features: torch.Tensor  # [S, N, C]
    colours: torch.Tensor  # [S] indices into COLOUR_NAMES, or NO_COLOUR
    shapes: torch.Tensor  # [S] indices into SHAPES

    def __add__(self, other: LabelledFeatures) -> LabelledFeatures:
        return LabelledFeatures(*(torch.cat(pair) for pair in zip(vars(self).values(), vars(other).values())))


def single_object_features(
    encode: Encode, image_size: int, split: str, scenes: int, batch: int = 256, unnamed: bool = False
) -> LabelledFeatures:
    """The features of the first ``scenes`` single-object scenes of ``split``, with their labels; ``unnamed``:
    scenes whose object is in an unnamed colour (labelled NO_COLOUR)."""
    samples = single_object_scenes(image_size, split, scenes, unnamed=unnamed)
    features = []
    with torch.no_grad():
        for start in range(0, scenes, batch):
            pixels = pil_to_tensor([s.image for s in samples[start : start + batch]])
            features.append(encode(pixels).float())
    objects = [s.graph.objects[0] for s in samples]
    colours = torch.tensor([NO_COLOUR if o.colour is None else COLOUR_NAMES.index(o.colour) for o in objects])
    shapes = torch.tensor([SHAPES.index(o.shape) for o in objects])
    return LabelledFeatures(torch.cat(features), colours, shapes)


class AttributeReader(nn.Module):
    """Features [B, N, C] (standardised) -> (colour logits [B, 8], shape logits [B, 5])."""

    def __init__(self, in_dim: int, tokens: int, width: int = 128, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Linear(in_dim, width)
        self.position = nn.Parameter(torch.zeros(tokens, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.queries = nn.Parameter(torch.randn(2, width) * 0.02)
        self.read = nn.MultiheadAttention(width, heads, batch_first=True)
        self.colour = nn.Linear(width, len(COLOUR_NAMES))
        self.shape = nn.Linear(width, len(SHAPES))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.encoder(self.embed(features) + self.position)
        read, _ = self.read(self.queries.expand(len(features), -1, -1), tokens, tokens)
        return self.colour(read[:, 0]), self.shape(read[:, 1])


def _accuracy(reader: AttributeReader, data: LabelledFeatures) -> dict[str, float]:
    with torch.no_grad():
        colour, shape = reader(data.features)
    return {
        "colour": (colour.argmax(-1) == data.colours).float().mean().item(),
        "shape": (shape.argmax(-1) == data.shapes).float().mean().item(),
    }


def attribute_probe(
    encode: Encode,
    image_size: int,
    train_scenes: int = 4000,
    eval_scenes: int = 400,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    unnamed_scenes: int = 0,
) -> dict[str, dict[str, float]]:
    """Train an :class:`AttributeReader` on ``encode``'s features of train-split scenes; return its colour
    and shape accuracy on ``val`` (seen pairs) and ``held_out`` scenes. Chance: 1/8 colour, 1/5 shape.

    ``unnamed_scenes`` adds that many train scenes whose object is in an unnamed colour, which teach shape
    only: the reader can no longer learn its shapes per colour."""
    if min(train_scenes, eval_scenes, steps, batch_size) < 1 or unnamed_scenes < 0:
        raise InputError("train_scenes, eval_scenes, steps and batch_size must all be >= 1, unnamed_scenes >= 0")
    train = single_object_features(encode, image_size, "train", train_scenes)
    if unnamed_scenes:
        train = train + single_object_features(encode, image_size, "train", unnamed_scenes, unnamed=True)
    mean, std = train.features.mean(dim=(0, 1)), train.features.std(dim=(0, 1)).clamp(min=1e-6)

    def standardised(data: LabelledFeatures) -> LabelledFeatures:
        return LabelledFeatures((data.features - mean) / std, data.colours, data.shapes)

    train = standardised(train)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    reader = AttributeReader(train.features.shape[-1], train.features.shape[1])
    optimizer = torch.optim.AdamW(reader.parameters(), lr=lr)
    for _ in range(steps):
        pick = torch.randint(0, len(train.features), (batch_size,), generator=generator)
        colour, shape = reader(train.features[pick])
        named = train.colours[pick] != NO_COLOUR
        colour_loss = F.cross_entropy(colour[named], train.colours[pick][named]) if named.any() else 0.0
        loss = colour_loss + F.cross_entropy(shape, train.shapes[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    reader.eval()
    return {
        name: _accuracy(reader, standardised(single_object_features(encode, image_size, split, eval_scenes)))
        for name, split in (("val", "val"), ("held_out", "heldout"))
    }
