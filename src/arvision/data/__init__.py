"""Data: the built-in procedural world (scenes, captions, VQA, videos), the user's own data, media reading.

world = ProceduralWorld(WorldConfig(image_size=64), seed=0, split="train")
sample = world.sample(7)          # .image (PIL), .graph (exact SceneGraph), .captions, .vqa
video = world.video(7)            # 8 frames of objects moving in named directions
WorldImages(world, length=100_000)[7]   # {"image": [3, 64, 64] in [-1, 1], "caption": str, "index": 7}
CaptionedImages.from_source("photos/")  # x.png + x.txt, or a .jsonl / .csv of path + caption
ImageFiles.from_source("photos/")       # every image under a folder (or a listing), no captions: tokenizers
ClassFolderImages("imagenet/train")     # root/<class_name>/*.jpg, labels in sorted class order
VQADataset("qa.jsonl")                  # image or video + question/answer or LLaVA conversations
"""

from arvision.data.datasets import WorldImages, WorldVideos, WorldVQA
from arvision.data.scenes import (
    BACKGROUND_COLOURS,
    BACKGROUND_KINDS,
    COLOURS,
    DIRECTIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    Background,
    Relation,
    SceneGraph,
    SceneObject,
    VideoScene,
)
from arvision.data.transforms import CROP_POLICIES, prepare_image
from arvision.data.user import CaptionedImages, ClassFolderImages, DataWarning, ImageFiles, VQADataset
from arvision.data.world import (
    SPLITS,
    ProceduralWorld,
    PromptCase,
    WorldConfig,
    WorldSample,
    WorldVideo,
    held_out_single_object_prompts,
    single_object_prompts,
    single_object_scenes,
)

__all__ = [
    "BACKGROUND_COLOURS",
    "BACKGROUND_KINDS",
    "COLOURS",
    "CROP_POLICIES",
    "DIRECTIONS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "Background",
    "CaptionedImages",
    "ClassFolderImages",
    "DataWarning",
    "ImageFiles",
    "ProceduralWorld",
    "PromptCase",
    "Relation",
    "SceneGraph",
    "SceneObject",
    "VQADataset",
    "VideoScene",
    "WorldConfig",
    "WorldImages",
    "WorldSample",
    "WorldVQA",
    "WorldVideo",
    "WorldVideos",
    "held_out_single_object_prompts",
    "single_object_scenes",
    "prepare_image",
    "single_object_prompts",
]
