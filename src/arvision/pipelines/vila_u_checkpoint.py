"""The VILA-U release layout at the edge: configs and key maps between it and :class:`VilaU`.

Layout (also what :func:`save_folder` writes, so saved folders load in the official code too)::

    config.json            top VILAULlamaConfig: llm_cfg / vision_tower_cfg / mm_projector_cfg, mm_use_* flags
    llm/                   LlamaForCausalLM config, weights (single or sharded safetensors), tokenizer
    vision_tower/          RQVAESIGLIPTransformer: "rqvaesiglip.*" (SigLIP, quantizer, decoder), "rqtransformer.*"
    mm_projector/          "layers.0.*", "layers.2.*"

Our module names differ from the release in three places, mapped here: ``rqvaesiglip.siglip_model`` is
``vision_tower.siglip``, ``rqtransformer`` is ``depth_transformer``, and the decoder's attention blocks
hold one fused ``qkv`` conv where the release stores ``q``, ``k``, ``v``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import LlamaConfig, SiglipConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from arvision.checkpoint import (
    StateDict,
    check_shard_keys,
    check_state_dict,
    find_weights_file,
    load_checked,
    load_state_dict,
    read_json,
    read_shard_index,
    replacing_folder,
    save_state_dict,
    select_prefix,
    write_json,
)
from arvision.errors import CheckpointError, InputError
from arvision.models.depth_transformer import DepthTransformerConfig
from arvision.models.vila_u import SpecialTokens, VilaU, VilaUConfig
from arvision.text.vicuna import IM_END, IM_START, VI_END, VI_START
from arvision.tokenizers.rq_vision_tower import PixelDecoderConfig, RQVisionTower, RQVisionTowerConfig
from arvision.tokenizers.siglip_presets import siglip_preset
from arvision.validation import check_flag, check_number

FORMAT_TAG = "arvision_vila_u"
_SIGLIP_KEYS = ("vision_config", "text_config")
# The official RQVAESiglipConfig's default ``pretrained_model``, used when a release config omits it.
RELEASE_SIGLIP = "google/siglip-large-patch16-256"
# What the official code reads from llm/ besides the tokenizer_config.json: it loads the slow SentencePiece
# tokenizer (use_fast=False), which needs tokenizer.model; the two JSON files carry the added tokens.
TOKENIZER_FILES = ("tokenizer.model", "special_tokens_map.json", "added_tokens.json")
SAVED_ENTRIES = ("config.json", "llm", "mm_projector", "vision_tower")  # what save_folder writes (and replaces)


def _names_vila_u(folder: Path) -> bool:
    """Whether ``folder`` is in the VILA-U layout: a top ``config.json`` naming VILA-U plus ``llm/``; a
    CheckpointError if that ``config.json`` (beside ``llm/``) cannot be parsed."""
    config = folder / "config.json"
    if not config.is_file() or not (folder / "llm").is_dir():
        return False
    data = read_json(config)
    return str(data.get("model_type", "")).startswith("vila_u") or "llm_cfg" in data


def is_vila_u_folder(folder: str | os.PathLike) -> bool:
    """True for a folder in the VILA-U layout: a top ``config.json`` naming VILA-U plus ``llm/``."""
    try:
        return _names_vila_u(Path(folder))
    except CheckpointError:
        return False


def check_vila_u_folder(folder: Path) -> None:
    """A CheckpointError unless ``folder`` is in the VILA-U layout (:func:`is_vila_u_folder`); a top
    ``config.json`` beside ``llm/`` that cannot be parsed is named as such, not as another kind of folder."""
    if not _names_vila_u(folder):
        raise CheckpointError(f"{folder} is not a VILA-U folder (needs config.json naming vila_u, and llm/)")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (transformers' validation errors span several)."""
    return " ".join(str(exc).split())


def _transformers_config(config_class: type, kwargs: Mapping[str, Any], source: Path, where: str = "") -> Any:
    """``config_class(**kwargs)``, a CheckpointError naming ``source`` (and ``where`` in it) if transformers refuses
    it: its validation raises many error types (strict dataclasses since v5), none of them a CheckpointError."""
    try:
        return config_class(**kwargs)
    except Exception as exc:
        raise CheckpointError(f"{source}: {where}{one_line(exc)}") from exc


@contextlib.contextmanager
def _naming(source: Path) -> Iterator[None]:
    """A value the model cannot take (an InputError from the checks below) is the file's problem."""
    try:
        yield
    except InputError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc


def _whole(section: Mapping[str, Any] | list, key: str | int, where: str = "", default: Any = None) -> int:
    """``section[key]`` (or ``default`` where it is missing and one is given) checked as a whole number >= 1;
    errors call it ``where`` + ``key`` (``[i]`` for a list). int() would read "8" or truncate 2.5 silently."""
    value = section[key] if default is None else section.get(key, default)
    check_number(value, f"{where}[{key}]" if isinstance(key, int) else where + key, whole=True, minimum=1)
    return int(value)


def _real(section: Mapping[str, Any], key: str, where: str, default: float, **bounds: float) -> float:
    """``section.get(key, default)`` checked as a number within ``bounds`` (see :func:`check_number`)."""
    value = section.get(key, default)
    check_number(value, where + key, **bounds)
    return float(value)


def _flag(section: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    """``section.get(key, default)`` checked as a JSON boolean (bool("false") would be True)."""
    value = section.get(key, default)
    check_flag(value, where + key)
    return value


# ----- configs -----


def _siglip_config(rq: dict[str, Any], source: Path) -> dict[str, Any]:
    inline = rq.get("siglip_config")
    if isinstance(inline, dict):
        return {k: inline[k] for k in _SIGLIP_KEYS if k in inline}
    name = rq.get("pretrained_model", RELEASE_SIGLIP)
    try:
        return siglip_preset(name)
    except KeyError as exc:
        raise CheckpointError(f"{source}: {exc.args[0]}; add 'siglip_config' to rqvaesiglip") from exc


def tower_config_from_release(data: dict[str, Any], source: Path) -> tuple[RQVisionTowerConfig, DepthTransformerConfig]:
    """``vision_tower/config.json`` (RQVAESIGLIPTransformerConfig) -> our two configs; a malformed value is a
    CheckpointError naming ``source`` and the key."""
    try:
        with _naming(source):
            tower, depth, latent = _tower_configs(data, source)
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise CheckpointError(f"{source}: malformed vision tower config ({exc!r})") from exc
    if tower.dim != latent[2] or depth.code_dim != tower.dim:
        raise CheckpointError(f"{source}: code width {latent[2]} / {depth.code_dim} != SigLIP width {tower.dim}")
    if depth.depth != tower.depth or depth.vocab_size != tower.n_embed:
        raise CheckpointError(
            f"{source}: depth transformer (D={depth.depth}, vocab {depth.vocab_size}) "
            f"does not match the quantizer (D={tower.depth}, {tower.n_embed} codes)"
        )
    return tower, depth


def _tower_configs(data: dict[str, Any], source: Path) -> tuple[RQVisionTowerConfig, DepthTransformerConfig, list[int]]:
    """:func:`tower_config_from_release`'s configs and the latent shape, each value checked (InputErrors)."""
    rq, head = data["rqvaesiglip"], data["rqtransformer"]
    latent = [_whole(rq["latent_shape"], i, "rqvaesiglip.latent_shape") for i in range(3)]
    code = [_whole(rq["code_shape"], i, "rqvaesiglip.code_shape") for i in range(3)]
    if latent[:2] != code[:2]:
        raise CheckpointError(f"{source}: latent_shape {latent} and code_shape {code} differ spatially")
    dd, where = rq["ddconfig"], "rqvaesiglip.ddconfig."
    decoder = PixelDecoderConfig(
        ch=_whole(dd, "ch", where),
        ch_mult=tuple(_whole(dd["ch_mult"], i, where + "ch_mult") for i in range(len(dd["ch_mult"]))),
        num_res_blocks=_whole(dd, "num_res_blocks", where),
        attn_resolutions=tuple(dd.get("attn_resolutions", ())),
        z_channels=_whole(dd, "z_channels", where),
        resolution=_whole(dd, "resolution", where),
        out_ch=_whole(dd, "out_ch", where, default=3),
        dropout=_real(dd, "dropout", where, 0.0, minimum=0, below=1),
    )
    if not dd["ch_mult"]:
        raise InputError(f"{where}ch_mult is empty")
    siglip = _siglip_config(rq, source)
    for key in ("hidden_size", "image_size", "patch_size"):  # what the tower's shapes are computed from
        _whole(siglip["vision_config"], key, "siglip vision_config.")
    _transformers_config(SiglipConfig, siglip, source, "siglip_config: ")
    resize = rq.get("decoder_latent_shape")
    if resize:
        resize = tuple(_whole(resize, i, "rqvaesiglip.decoder_latent_shape") for i in range(2))
    tower = RQVisionTowerConfig(
        siglip=siglip,
        n_embed=_whole(rq, "n_embed", "rqvaesiglip."),
        depth=code[2],
        shared_codebook=_flag(rq, "shared_codebook", "rqvaesiglip.", False),
        decay=_real(rq, "decay", "rqvaesiglip.", 0.99, minimum=0, below=1),
        restart_unused_codes=_flag(rq, "restart_unused_codes", "rqvaesiglip.", True),
        latent_loss_weight=_real(rq, "latent_loss_weight", "rqvaesiglip.", 0.25, minimum=0),
        decoder=decoder,
        decoder_latent_shape=resize or None,
    )
    depth = DepthTransformerConfig(
        depth=_whole(head["block_size"], 2, "rqtransformer.block_size"),
        code_dim=_whole(head, "input_embed_dim_1", "rqtransformer."),
        llm_dim=_whole(head, "input_embed_dim_2", "rqtransformer."),
        embed_dim=_whole(head, "embed_dim", "rqtransformer."),
        n_layer=_whole(head["head"], "n_layer", "rqtransformer.head."),
        n_head=_whole(head["head"]["block"], "n_head", "rqtransformer.head.block."),
        vocab_size=_whole(head, "vocab_size", "rqtransformer."),
    )
    return tower, depth, latent


def tower_config_to_release(
    tower: RQVisionTowerConfig, depth: DepthTransformerConfig, siglip_name: str = ""
) -> dict[str, Any]:
    """Our two configs -> ``vision_tower/config.json``; ``siglip_name`` becomes ``pretrained_model``."""
    g = tower.grid
    dd = tower.decoder
    return {
        "architectures": ["RQVAESIGLIPTransformer"],
        "model_type": "rqvaesigliptransformer_model",
        "hidden_size": tower.dim,
        "rqvaesiglip": {
            "architectures": ["RQVAESiglipModel"],
            "pretrained_model": siglip_name,
            "siglip_config": {"model_type": "siglip", **tower.siglip},
            "embed_dim": tower.dim,
            "n_embed": tower.n_embed,
            "latent_shape": [g, g, tower.dim],
            "code_shape": [g, g, tower.depth],
            "shared_codebook": tower.shared_codebook,
            "restart_unused_codes": tower.restart_unused_codes,
            "decay": tower.decay,
            "latent_loss_weight": tower.latent_loss_weight,
            "decoder_latent_shape": list(tower.decoder_latent_shape) if tower.decoder_latent_shape else None,
            "ddconfig": {
                "double_z": False,
                "z_channels": dd.z_channels,
                "resolution": dd.resolution,
                "in_channels": 3,
                "out_ch": dd.out_ch,
                "ch": dd.ch,
                "ch_mult": list(dd.ch_mult),
                "num_res_blocks": dd.num_res_blocks,
                "attn_resolutions": list(dd.attn_resolutions),
                "dropout": dd.dropout,
            },
        },
        "rqtransformer": {
            "architectures": ["RQTransformer"],
            "block_size": [g, g, depth.depth],
            "input_embed_dim_1": depth.code_dim,
            "input_embed_dim_2": depth.llm_dim,
            "embed_dim": depth.embed_dim,
            "vocab_size": depth.vocab_size,
            "head": {"n_layer": depth.n_layer, "block": {"n_head": depth.n_head}},
        },
    }


def read_config(folder: Path) -> tuple[VilaUConfig, dict[str, Any]]:
    """Top, llm, vision tower and projector configs -> (:class:`VilaUConfig`, LLM generation defaults)."""
    top_file = folder / "config.json"
    top = read_json(top_file)
    with _naming(top_file):
        # The release's builder defaults a missing flag to True.
        patch_token = _flag(top, "mm_use_im_patch_token", "", True)
        start_end = _flag(top, "mm_use_im_start_end", "", True) and _flag(top, "mm_use_vi_start_end", "", True)
        num_video_frames = _whole(top, "num_video_frames", default=8)
    if patch_token:
        # The release's builder then adds <im_patch>, growing the vocabulary by one: every "vocab_size - 4"
        # special-token id would then be off by one.
        state = "missing" if "mm_use_im_patch_token" not in top else "true"
        raise CheckpointError(
            f"{top_file}: mm_use_im_patch_token is {state}; VILA-U weights need it false "
            "(an <im_patch> token would shift the <im_start>...<vi_end> ids). Set it to false if the "
            "vocabulary really ends with <im_start> <im_end> <vi_start> <vi_end>."
        )
    if not start_end:
        raise CheckpointError(f"{top_file}: mm_use_im_start_end and mm_use_vi_start_end must be true")
    llm_file = folder / "llm" / "config.json"
    llm = read_json(llm_file) if llm_file.is_file() else top.get("llm_cfg")
    if not isinstance(llm, dict):
        raise CheckpointError(f"no LLM config in {folder} (llm/config.json or llm_cfg)")
    _check_llm_config(llm, llm_file if llm_file.is_file() else top_file)
    projector = read_json(folder / "mm_projector" / "config.json")
    if projector.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise CheckpointError(f"unsupported mm_projector_type {projector.get('mm_projector_type')!r}")
    tower_file = folder / "vision_tower" / "config.json"
    tower_data = read_json(tower_file)
    tower, depth = tower_config_from_release(tower_data, tower_file)
    if depth.llm_dim != llm.get("hidden_size"):
        raise CheckpointError(f"{tower_file}: input_embed_dim_2 {depth.llm_dim} != LLM hidden {llm.get('hidden_size')}")
    gen_file = folder / "llm" / "generation_config.json"
    generation = read_json(gen_file) if gen_file.is_file() else {}
    config = VilaUConfig(
        llm=llm,
        tower=tower,
        depth=depth,
        num_video_frames=num_video_frames,
        siglip_name=str(tower_data["rqvaesiglip"].get("pretrained_model", RELEASE_SIGLIP)),
    )
    return config, generation


def _check_llm_config(llm: dict[str, Any], source: Path) -> None:
    """A CheckpointError naming ``source`` unless transformers builds a ``LlamaConfig`` from ``llm`` and it has
    the sizes read before that (``vocab_size``, which LlamaConfig would default, and ``hidden_size``)."""
    with _naming(source):
        for key in ("vocab_size", "hidden_size"):
            check_number(llm.get(key), key, whole=True, minimum=1)  # a missing one is None, named as such
    config = _transformers_config(LlamaConfig, llm, source)
    # transformers only warns of an unknown RoPE type here, then fails with a bare KeyError building the model
    # (the scaling is rope_parameters since transformers 5, rope_scaling before)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default" and rope_type not in ROPE_INIT_FUNCTIONS:
        known = ", ".join(ROPE_INIT_FUNCTIONS)
        raise CheckpointError(f"{source}: rope_scaling type {rope_type!r} is not one transformers knows ({known})")


_DTYPES = {"torch.float32": torch.float32, "torch.float16": torch.float16, "torch.bfloat16": torch.bfloat16}


def stored_dtype(folder: Path) -> torch.dtype:
    """The dtype the checkpoint was saved in (top ``model_dtype``, e.g. ``"torch.bfloat16"``); float32 if unset."""
    return _DTYPES.get(str(read_json(folder / "config.json").get("model_dtype")), torch.float32)


def load_tokenizer(folder: Path, vocab_size: int) -> Any:
    """The LLM's tokenizer from ``folder`` (``llm/``), checked against the LLM: ``len(tokenizer) ==
    vocab_size``, with the four added tokens as the last four ids in release order."""
    from transformers import AutoTokenizer

    # Without a vocabulary file transformers 5 still builds a tokenizer, of the added tokens alone.
    if not any((folder / name).is_file() for name in ("tokenizer.model", "tokenizer.json")):
        raise CheckpointError(f"{folder}: missing tokenizer.model (the SentencePiece vocabulary; or tokenizer.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), legacy=False)
    except Exception as exc:  # a malformed tokenizer.json fails in transformers or the tokenizers library, many ways
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {one_line(exc)}") from exc
    if len(tokenizer) != vocab_size:
        raise CheckpointError(
            f"{folder}: the tokenizer has {len(tokenizer)} tokens but the LLM's vocab_size is {vocab_size} "
            "(a tokenizer.model of another model, <im_patch> added, or the embeddings resized?)"
        )
    expected = SpecialTokens.for_vocab(vocab_size)
    names = {IM_START: expected.im_start, IM_END: expected.im_end, VI_START: expected.vi_start, VI_END: expected.vi_end}
    got = {name: tokenizer.convert_tokens_to_ids(name) for name in names}
    if got != names or "<im_patch>" in tokenizer.get_vocab():
        raise CheckpointError(
            f"{folder}: special tokens {got} do not sit at vocab_size-4..vocab_size-1 = {list(names.values())} "
            "(was <im_patch> added, or the embeddings resized?)"
        )
    return tokenizer


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """``tokenizer.save_pretrained(folder)`` plus the files the official loader needs that transformers 5
    no longer writes (:data:`TOKENIZER_FILES`), copied from the folder the tokenizer was loaded from."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer.save_pretrained(str(folder))
    source = Path(getattr(tokenizer, "name_or_path", "") or "")
    for name in TOKENIZER_FILES:
        origin, target = source / name, folder / name
        if origin.is_file() and not (target.exists() and origin.samefile(target)):
            shutil.copyfile(origin, target)
    if not (folder / "tokenizer.model").is_file():
        warnings.warn(
            f"{folder}: no tokenizer.model next to the tokenizer's source ({source}): the official code cannot "
            "load this folder (it needs the SentencePiece file); arvision can",
            stacklevel=3,
        )


# ----- weights -----

_ATTN_QKV = re.compile(r"^(.*\.(?:attn_1|attn\.\d+))\.(q|k|v)\.(weight|bias)$")


def _tower_key(key: str) -> str | None:
    if key.startswith("rqtransformer."):
        return "depth_transformer." + key[len("rqtransformer.") :]
    if not key.startswith("rqvaesiglip."):
        return None
    key = key[len("rqvaesiglip.") :]
    if key in ("logit_scale", "logit_bias"):  # an alias of siglip_model.logit_* in the release
        key = "siglip_model." + key
    return "vision_tower." + key.replace("siglip_model.", "siglip.", 1)


def tower_state_from_release(state: StateDict) -> StateDict:
    """Release vision-tower keys -> ``VilaU`` keys; aliases collapse, ``q``/``k``/``v`` convs fuse."""
    out: StateDict = {}
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        mapped = _tower_key(key)
        if mapped is None:
            out[key] = value  # reported as unexpected by the checker
            continue
        match = _ATTN_QKV.match(mapped)
        if match:
            parts.setdefault((match[1], match[3]), {})[match[2]] = value
        else:
            out[mapped] = value
    for (prefix, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise CheckpointError(f"vision tower: {prefix} has only {sorted(qkv)} of q/k/v {kind}")
        out[f"{prefix}.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return out


def tower_state_to_release(model: VilaU) -> StateDict:
    """``VilaU`` vision tower + depth transformer -> release keys (``q``/``k``/``v`` split back)."""
    out: StateDict = {}
    sources = {
        "vision_tower.": model.vision_tower.state_dict(),
        "depth_transformer.": model.depth_transformer.state_dict(),
    }
    for prefix, state in sources.items():
        for key, value in state.items():
            if prefix == "depth_transformer.":
                out["rqtransformer." + key] = value
                continue
            key = "rqvaesiglip." + key.replace("siglip.", "siglip_model.", 1)
            if key in ("rqvaesiglip.siglip_model.logit_scale", "rqvaesiglip.siglip_model.logit_bias"):
                key = key.replace("siglip_model.", "")  # the alias transformers 4.36 keeps when saving
            if key.endswith((".qkv.weight", ".qkv.bias")):
                base, kind = key.rsplit(".qkv.", 1)
                for name, chunk in zip("qkv", value.chunk(3), strict=True):
                    out[f"{base}.{name}.{kind}"] = chunk
            else:
                out[key] = value
    return out


def _is_ema_buffer(key: str) -> bool:
    return key.endswith((".cluster_size_ema", ".embed_ema"))


def _weights(folder: Path) -> StateDict:
    return load_state_dict(find_weights_file(folder))


def _safetensors_headers(path: Path) -> dict[Path, dict[str, torch.Tensor]] | None:
    """The safetensors files behind ``path`` (a file or a shard index), each with its header's key -> meta tensor
    of the stored shape; None for other formats. A shard index is checked against the shards' headers: each shard
    holds exactly the keys it lists for it."""
    if path.name.endswith(".safetensors.index.json"):
        headers = {}
        for file, keys in read_shard_index(path).items():
            headers[file] = _header_shapes(file)
            check_shard_keys(path, file, headers[file], keys)
        return headers
    return {path: _header_shapes(path)} if path.suffix == ".safetensors" else None


def _header_shapes(file: Path) -> dict[str, torch.Tensor]:
    """Key -> meta tensor of the stored shape, read from a safetensors header (no tensor data)."""
    try:
        with safe_open(str(file), "pt") as handle:
            keys = list(handle.keys())  # a safetensors handle, not a dict
            return {key: torch.empty(handle.get_slice(key).get_shape(), device="meta") for key in keys}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read weights file {file}: {exc}") from exc


def _load_llm(llm: torch.nn.Module, folder: Path) -> None:
    # The 7B LLM is loaded one file at a time after checking every key and shape from the file headers,
    # so peak memory is the model plus one shard, not the model plus a full copy of its weights.
    path = find_weights_file(folder)
    headers = _safetensors_headers(path)
    if headers is None:
        load_checked(llm, load_state_dict(path), source=str(folder))
        return
    shapes = {key: shape for file_shapes in headers.values() for key, shape in file_shapes.items()}
    check_state_dict(llm, shapes, source=str(folder))
    for file in headers:
        llm.load_state_dict(load_state_dict(file), strict=False)


def load_weights(model: VilaU, folder: Path) -> None:
    """Load ``llm/``, ``mm_projector/`` and ``vision_tower/`` into ``model``; errors name bad keys/shapes."""
    _load_llm(model.llm, folder / "llm")
    load_checked(model.mm_projector, _weights(folder / "mm_projector"), source=str(folder / "mm_projector"))
    tower = tower_state_from_release(_weights(folder / "vision_tower"))
    parts = {"vision_tower.": model.vision_tower, "depth_transformer.": model.depth_transformer}
    for prefix, module in parts.items():
        # EMA statistics matter for training only; a checkpoint without them still loads.
        load_checked(module, select_prefix(tower, prefix), source=str(folder / "vision_tower"), optional=_is_ema_buffer)
    stray = [k for k in tower if not k.startswith(tuple(parts))]
    if stray:
        raise CheckpointError(f"{folder / 'vision_tower'}: unexpected key(s): {', '.join(stray[:8])}")


def load_vision_tower(folder: Path) -> RQVisionTower:
    """Only the vision tower of a VILA-U folder, in float32: what tower training needs, without the LLM."""
    config_file = folder / "vision_tower" / "config.json"
    config, _ = tower_config_from_release(read_json(config_file), config_file)
    tower = RQVisionTower(config)
    state = select_prefix(tower_state_from_release(_weights(folder / "vision_tower")), "vision_tower.")
    load_checked(tower, state, source=str(folder / "vision_tower"), optional=_is_ema_buffer)
    return tower


def _save_sharded(state: StateDict, folder: Path, max_bytes: int) -> None:
    """HF-style shards ``model-0000i-of-0000N.safetensors`` + index (one ``model.safetensors`` if it fits)."""
    shards: list[StateDict] = [{}]
    size = 0
    for key, value in state.items():
        nbytes = value.numel() * value.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = value
        size += nbytes
    if len(shards) == 1:
        save_state_dict(shards[0], folder / "model.safetensors")
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_state_dict(shard, folder / name)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    write_json(folder / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def save_folder(
    model: VilaU, folder: Path, tokenizer: Any, generation: dict[str, Any], max_shard_bytes: int = 5 * 2**30
) -> None:
    """Write ``model`` in the release layout (the LLM in shards of at most ``max_shard_bytes``), swapped in whole
    (:func:`~arvision.checkpoint.replacing_folder`): a crash leaves the previous folder, never one without
    weights or with a mix of old and new files. Other entries of an existing folder are kept; ``llm/``,
    ``vision_tower/`` and ``mm_projector/`` are written anew whole. A folder holding the current directory is
    refused (the swap renames it aside)."""
    cfg = model.config
    tower_cfg = tower_config_to_release(cfg.tower, cfg.depth, cfg.siglip_name)
    projector_cfg = {
        "architectures": ["MultimodalProjector"],
        "model_type": "v2l_projector",
        "mm_projector_type": "mlp2x_gelu",
    }
    llm_cfg = {**cfg.llm, "architectures": ["LlamaForCausalLM"]}  # as given: rope_scaling stays as written
    top = {
        "architectures": ["VILAULlamaModel"],
        "model_type": "vila_u_llama",
        "format": FORMAT_TAG,
        "llm_cfg": llm_cfg,
        "vision_tower_cfg": tower_cfg,
        "mm_projector_cfg": projector_cfg,
        "hidden_size": model.llm.config.hidden_size,
        "mm_hidden_size": cfg.tower.dim,
        "image_aspect_ratio": "resize",
        "num_video_frames": cfg.num_video_frames,
        "mm_use_im_start_end": True,
        "mm_use_vi_start_end": True,
        "mm_use_im_patch_token": False,
        "mm_vision_select_layer": -2,
        "mm_projector_type": "mlp2x_gelu",
        "model_dtype": str(next(model.parameters()).dtype),
    }
    with replacing_folder(folder, SAVED_ENTRIES) as tmp:
        save_tokenizer(tokenizer, tmp / "llm")
        write_json(tmp / "llm" / "config.json", llm_cfg)
        write_json(tmp / "llm" / "generation_config.json", generation)
        _save_sharded(model.llm.state_dict(), tmp / "llm", max_shard_bytes)
        write_json(tmp / "mm_projector" / "config.json", projector_cfg)
        save_state_dict(model.mm_projector.state_dict(), tmp / "mm_projector" / "model.safetensors")
        write_json(tmp / "vision_tower" / "config.json", tower_cfg)
        save_state_dict(tower_state_to_release(model), tmp / "vision_tower" / "model.safetensors")
        write_json(tmp / "config.json", top)
