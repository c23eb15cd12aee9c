"""Data: the built-in procedural world (scenes, captions, VQA, videos), the user's own data, media reading."""

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
from arvision.data.user import CaptionedImages, ClassFolderImages, DataWarning, VQADataset
from arvision.data.world import (
    SPLITS,
    ProceduralWorld,
    PromptCase,
    WorldConfig,
    WorldSample,
    WorldVideo,
    held_out_single_object_prompts,
    single_object_prompts,
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
    "prepare_image",
    "single_object_prompts",
]
