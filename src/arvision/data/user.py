"""The user's own data as torch datasets: captioned images, class folders, and VQA/chat JSONL for VILA-U.

Listings are read once, up front; a malformed entry (bad JSON line, missing caption, a caption file that
is not UTF-8) is skipped there, while a listing file that is not UTF-8 or a CSV that cannot be parsed (a quote
left open, no header naming the needed columns) is an error naming it.
Files are read lazily, and a corrupt or unreadable one is skipped when it is reached: the dataset warns
(:class:`DataWarning`), counts it in ``skipped`` and returns the next readable item instead, so an epoch
never dies on one bad file. With DataLoader workers each worker counts its own skips.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from arvision.data.media import IMAGE_SUFFIXES, is_video_path, load_video_frames
from arvision.data.transforms import check_policy, prepare_image
from arvision.errors import InputError
from arvision.imaging import load_image

IMAGE_KEYS = ("image", "path", "file", "file_name")
MEDIA_KEYS = (*IMAGE_KEYS, "video")
CAPTION_KEYS = ("caption", "text", "prompt")
LISTING_SUFFIXES = (".jsonl", ".csv")


class DataWarning(UserWarning):
    """A data entry or file was skipped."""


def _image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder``, sorted. The tree's own folders are walked before links to folders
    are followed, and each real folder is walked once, so links back into the tree or to a folder already
    walked add nothing; hidden files and folders (``.ipynb_checkpoints``, ``.thumbnails``) are left out, and a
    folder that cannot be listed is skipped with a :class:`DataWarning`."""
    found: list[Path] = []
    seen: set[str] = set()

    def unreadable(error: OSError) -> None:
        warnings.warn(f"cannot list {error.filename}: {error.strerror} (skipped)", DataWarning, stacklevel=2)

    def walk(top: Path) -> None:
        links = []
        for root, dirs, files in os.walk(top, onerror=unreadable):  # links to folders are listed, not entered
            real = os.path.realpath(root)
            if real in seen:
                dirs.clear()
                continue
            seen.add(real)
            visible = sorted(d for d in dirs if not d.startswith("."))
            links += [Path(root, d) for d in visible if os.path.islink(Path(root, d))]
            dirs[:] = [d for d in visible if not os.path.islink(Path(root, d))]
            for name in files:
                path = Path(root, name)
                # A link to a missing file is listed too: reading it fails, and it is skipped and counted then.
                if not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES:
                    found.append(path)
        for link in links:
            walk(link)

    walk(folder)
    return sorted(found)


class SkippingDataset(Dataset):
    """Base for file-backed datasets: ``load(i)`` may raise :class:`InputError`; ``skipped`` counts those."""

    def __init__(self) -> None:
        self.skipped = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def skip(self, message: str) -> None:
        self.skipped += 1
        warnings.warn(f"{message} (skipped, {self.skipped} so far)", DataWarning, stacklevel=3)

    def report_listing(self, problems: list[str], nothing_usable: str) -> None:
        """Count the listing's unusable entries as skips; an :class:`InputError` saying ``nothing_usable`` if
        no item is left."""
        for problem in problems:
            self.skip(problem)
        if not len(self):
            raise InputError(nothing_usable)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        # Walk forward to the next readable item; the substitute depends only on the index, so every
        # rank and every resumed run makes the same choice.
        for step in range(len(self)):
            current = (index + step) % len(self)
            try:
                return self.load(current)
            except (InputError, OSError) as exc:
                self.skip(f"unreadable item {current}: {exc}")
        raise InputError(f"none of the {len(self)} items of the dataset can be read")


def _resolve(path: str, base: Path) -> Path:
    path = Path(os.path.expanduser(path))
    return path if path.is_absolute() else base / path


def _first_key(entry: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if entry.get(k) not in (None, "")), None)


def _first(entry: dict[str, Any], keys: tuple[str, ...]) -> Any:
    key = _first_key(entry, keys)
    return None if key is None else entry[key]


def _not_utf8(where: str, exc: UnicodeDecodeError) -> str:
    return f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})"


def text_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 listing file (line ends kept, as ``newline=""`` gives them to :mod:`csv`); one
    that is not UTF-8 is an :class:`InputError` naming the file and line, and so is one that cannot be read
    (a folder, no permission)."""
    try:
        with path.open("rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    yield raw.decode("utf-8-sig")  # Windows tools (Excel's "CSV UTF-8") start files with a BOM
                except UnicodeDecodeError as exc:
                    raise InputError(_not_utf8(f"{path}:{number}", exc)) from exc
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _json_records(path: Path) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """``(where, object)`` per entry of a JSON Lines file (``where`` is ``file:line``; blank lines are skipped)
    or of a file holding one JSON array, as LLaVA's ``.json`` data does (``where`` is ``file item i``, from 0);
    ``None`` for an entry that is not a JSON object."""
    lines = text_lines(path)
    first = True
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if first and line.lstrip().startswith("["):  # a JSON Lines file starts with an object: this is one array
            try:
                items = json.loads(line + "".join(lines))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number + exc.lineno - 1}: not a valid JSON array ({exc.msg})") from exc
            for index, item in enumerate(items):
                yield f"{path} item {index}", item if isinstance(item, dict) else None
            return
        first = False
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        yield f"{path}:{number}", entry if isinstance(entry, dict) else None


def _csv_rows(source: Path, needs: tuple[tuple[str, ...], ...]) -> Iterator[tuple[str, dict[str, str]]]:
    """``(file:line, row)`` of a CSV file whose first row names the columns (in any case, spaces around them
    ignored), ``line`` being the one the row starts on. A header without a column of each group
    in ``needs``, a quote left open (strict parsing: it would swallow the rows after it) or a field over
    :func:`csv.field_size_limit` is an :class:`InputError` naming the file (and line)."""
    reader = csv.reader(text_lines(source), strict=True)
    header: list[str] | None = None
    done = 0  # lines read before the current row: blank lines and line breaks in quoted fields count too
    try:
        for row in reader:
            first, done = done + 1, reader.line_num
            if not row:  # a blank line
                continue
            if header is None:
                header = [name.strip().lower() for name in row]
                if not all(set(group) & set(header) for group in needs):
                    expected = " and ".join(f"one of {', '.join(group)}" for group in needs)
                    raise InputError(
                        f"{source}: the header (first row) names the columns {', '.join(map(repr, row))}; "
                        f"expected {expected} (comma-separated, in any case)"
                    )
                continue
            yield f"{source}:{first}", dict(zip(header, row))
    except csv.Error as exc:
        raise InputError(f"{source}:{done + 1}: not valid CSV ({exc})") from exc


def _listing_rows(source: Path, needs: tuple[tuple[str, ...], ...]) -> list[tuple[str, dict[str, Any] | None]]:
    """``(where, row)`` of a .jsonl or .csv listing (``where`` names the file and line); ``None`` for a JSONL
    entry that is not an object.
    ``needs`` are the groups of column names a CSV header must have one of each of."""
    if source.suffix.lower() == ".jsonl":
        return list(_json_records(source))
    return list(_csv_rows(source, needs))


def _require_exists(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"data not found: {path}")
    return path


def _listing_digest(entries: Iterable[tuple[Path, Any]]) -> str:
    """SHA-256 over each file's path, its entry (caption, label), size and modification time: changes when a
    listed file is added, removed, replaced or relabelled."""
    digest = hashlib.sha256()
    for path, entry in entries:
        try:
            stat = path.stat()
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:  # unreadable files are skipped when loaded; their absence is still part of the listing
            size, mtime = -1, -1
        digest.update(json.dumps([str(path), entry, size, mtime]).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class CaptionedImage:
    """One listed image file and its caption."""

    path: Path
    caption: str


class CaptionedImages(SkippingDataset):
    """Image + caption pairs -> ``{"image": [3, size, size] in [-1, 1], "caption": str, "index": int}``.

    Build it with :meth:`from_source` (a folder of ``x.png`` + ``x.txt``, a ``.jsonl`` or a ``.csv`` of
    path and caption; relative paths are relative to the listing's folder).
    """

    def __init__(self, records: list[CaptionedImage], size: int = 256, policy: str = "center") -> None:
        super().__init__()
        self.records, self.size, self.policy = records, size, check_policy(policy)

    @classmethod
    def from_source(cls, source: str | os.PathLike, size: int = 256, policy: str = "center") -> CaptionedImages:
        source = _require_exists(source)
        records: list[CaptionedImage] = []
        problems: list[str] = []
        if source.is_dir():
            for image in _image_files(source):
                # Image suffixes match in any case, so UP.PNG's caption may be UP.TXT.
                texts = [t for t in (image.with_suffix(".txt"), image.with_suffix(".TXT")) if t.is_file()]
                text = texts[0] if texts else image.with_suffix(".txt")
                try:
                    caption = text.read_text(encoding="utf-8-sig").strip() if texts else ""
                except UnicodeDecodeError as exc:
                    problems.append(_not_utf8(str(text), exc))
                    continue
                except OSError as exc:
                    problems.append(f"{text}: cannot read ({exc.strerror or exc})")
                    continue
                if caption:
                    records.append(CaptionedImage(image, caption))
                else:
                    problems.append(f"{image}: no caption file {text.name} (or it is empty)")
        elif source.suffix.lower() in LISTING_SUFFIXES:
            for where, row in _listing_rows(source, (IMAGE_KEYS, CAPTION_KEYS)):
                path, caption = (_first(row, IMAGE_KEYS), _first(row, CAPTION_KEYS)) if row else (None, None)
                if isinstance(path, str) and isinstance(caption, str) and caption.strip():
                    records.append(CaptionedImage(_resolve(path, source.parent), caption.strip()))
                else:
                    problems.append(f"{where}: needs an image path ({'/'.join(IMAGE_KEYS)}) and a caption")
        else:
            raise InputError(f"captioned data must be a folder, a .jsonl or a .csv file, got {source}")
        dataset = cls(records, size, policy)
        dataset.report_listing(problems, f"no usable image-caption pairs in {source}")
        return dataset

    def __len__(self) -> int:
        return len(self.records)

    def fingerprint(self) -> dict[str, Any]:
        """What fixes the items (see :class:`~arvision.training.latent_cache.CacheableDataset`)."""
        listing = _listing_digest((r.path, r.caption) for r in self.records)
        return {"dataset": "CaptionedImages", "size": self.size, "policy": self.policy, "listing": listing}

    def load(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = prepare_image(load_image(record.path), self.size, self.policy)
        return {"image": image, "caption": record.caption, "index": index}


class ImageFiles(SkippingDataset):
    """Images without captions, what a tokenizer trains on -> ``{"image": [3, size, size] in [-1, 1], "index": int}``.

    Build it with :meth:`from_source`: every image under a folder (recursively, so caption files and class
    folders may be there too), or the image column of a ``.jsonl`` / ``.csv`` listing (paths relative to it).
    """

    def __init__(self, paths: list[Path], size: int = 256, policy: str = "center") -> None:
        super().__init__()
        self.paths, self.size, self.policy = paths, size, check_policy(policy)

    @classmethod
    def from_source(cls, source: str | os.PathLike, size: int = 256, policy: str = "center") -> ImageFiles:
        source = _require_exists(source)
        problems: list[str] = []
        if source.is_dir():
            paths = _image_files(source)
        elif source.suffix.lower() in LISTING_SUFFIXES:
            paths = []
            for where, row in _listing_rows(source, (IMAGE_KEYS,)):
                path = _first(row, IMAGE_KEYS) if row else None
                if isinstance(path, str):
                    paths.append(_resolve(path, source.parent))
                else:
                    problems.append(f"{where}: needs an image path ({'/'.join(IMAGE_KEYS)})")
        else:
            raise InputError(f"image data must be a folder, a .jsonl or a .csv file, got {source}")
        dataset = cls(paths, size, policy)
        looked_for = f" (looked for {', '.join(sorted(IMAGE_SUFFIXES))})" if source.is_dir() else ""
        dataset.report_listing(problems, f"no images in {source}{looked_for}")
        return dataset

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> dict[str, Any]:
        """What fixes the items (see :class:`~arvision.training.latent_cache.CacheableDataset`)."""
        listing = _listing_digest((path, None) for path in self.paths)
        return {"dataset": "ImageFiles", "size": self.size, "policy": self.policy, "listing": listing}

    def load(self, index: int) -> dict[str, Any]:
        return {"image": prepare_image(load_image(self.paths[index]), self.size, self.policy), "index": index}


class ClassFolderImages(SkippingDataset):
    """ImageNet layout ``root/<class_name>/*.jpg`` -> ``{"image": [3, size, size], "label": int, "index": int}``.

    Labels number the class folders in sorted name order (``classes[label]`` is the folder name).
    """

    def __init__(self, root: str | os.PathLike, size: int = 256, policy: str = "center") -> None:
        super().__init__()
        root = _require_exists(root)
        if not root.is_dir():
            raise InputError(f"class folders: {root} is a file, not a folder (expected root/<class_name>/<image>)")
        self.size, self.policy = size, check_policy(policy)
        entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
        self.classes = [p.name for p in entries if p.is_dir()]
        loose = [p.name for p in entries if not p.is_dir() and p.suffix.lower() in IMAGE_SUFFIXES]
        if loose:
            warnings.warn(
                f"images directly in {root} are not in a class folder and are left out: "
                f"{', '.join(loose[:3])}{', ...' if len(loose) > 3 else ''}",
                DataWarning,
                stacklevel=2,
            )
        images = {name: _image_files(root / name) for name in self.classes}
        self.records = [(path, label) for label, name in enumerate(self.classes) for path in images[name]]
        if not self.records:
            raise InputError(f"no images in class folders under {root} (expected root/<class_name>/<image>)")
        # A folder without images would still be a label the model can never see (torchvision refuses too).
        empty = [name for name in self.classes if not images[name]]
        if empty:
            raise InputError(f"class folders without images under {root}: {', '.join(empty)}")

    def __len__(self) -> int:
        return len(self.records)

    def fingerprint(self) -> dict[str, Any]:
        """What fixes the items (see :class:`~arvision.training.latent_cache.CacheableDataset`)."""
        listing = _listing_digest(self.records)
        return {"dataset": "ClassFolderImages", "size": self.size, "policy": self.policy, "listing": listing}

    def load(self, index: int) -> dict[str, Any]:
        path, label = self.records[index]
        return {"image": prepare_image(load_image(path), self.size, self.policy), "label": label, "index": index}


@dataclass(frozen=True)
class VQARecord:
    """One understanding example: an image or video (file or frame folder) and its question-answer turns."""

    media: Path
    is_video: bool
    turns: tuple[tuple[str, str], ...]


QUESTION_ROLES, ANSWER_ROLES = ("human", "user"), ("gpt", "assistant")


def _turns(entry: dict[str, Any]) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    """Question-answer turns from flat ``question``/``answer`` keys or LLaVA-style ``conversations``, and what
    was dropped from them. Conversations are walked in order, each human message paired with the next gpt one;
    system messages are left out (the chat template brings its own). A question no answer follows, an answer
    to no question, a message of another role or without text, and an empty answer are dropped (an empty
    question is kept: LLaVA's captioning data asks only ``<image>``)."""
    dropped: list[str] = []
    if isinstance(entry.get("question"), str) and isinstance(entry.get("answer"), str):
        pairs = [(entry["question"], entry["answer"])]
    elif isinstance(entry.get("conversations"), list):
        pairs = []
        question: tuple[int, str] | None = None  # (message number, text) of the question awaiting its answer
        for number, message in enumerate(entry["conversations"], 1):
            role, text = (message.get("from"), message.get("value")) if isinstance(message, dict) else (None, None)
            if role == "system":
                continue
            if not isinstance(text, str) or role not in QUESTION_ROLES + ANSWER_ROLES:
                dropped.append(f"message {number} is not a human or gpt message with a text value")
            elif role in QUESTION_ROLES:
                if question is not None:
                    dropped.append(f"message {question[0]}, a question, has no answer")
                question = (number, text)
            elif question is None:
                dropped.append(f"message {number}, an answer, follows no question")
            else:
                pairs.append((question[1], text))
                question = None
        if question is not None:
            dropped.append(f"message {question[0]}, a question, has no answer")
    else:
        return (), dropped
    turns = []
    for question_text, answer in pairs:
        if answer.strip():
            # Where the visual tokens go is the chat template's business, so drop the placeholders here.
            turns.append((question_text.replace("<image>", "").replace("<video>", "").strip(), answer.strip()))
        else:
            dropped.append(f"the answer to {question_text.strip()!r} is empty")
    return tuple(turns), dropped


class VQADataset(SkippingDataset):
    """VILA-U understanding data from JSONL, one JSON object per line, or a JSON array of such objects (LLaVA's
    ``.json`` files; warnings then name an entry as ``item i``, counting from 0).

    A line names ``"image"`` or ``"video"`` (a video file or a folder of frames; paths relative to the
    JSONL's folder) and either ``"question"`` + ``"answer"`` or LLaVA ``"conversations"``. Items are
    ``{"pixels": [3, size, size] or [num_frames, 3, size, size], "is_video": bool, "turns": [(q, a), ...]}``;
    batch them with ``collate_fn=list`` (turn lists do not stack).
    """

    def __init__(self, source: str | os.PathLike, size: int = 256, policy: str = "resize", num_frames: int = 8) -> None:
        super().__init__()
        source = _require_exists(source)
        self.size, self.policy, self.num_frames = size, check_policy(policy), num_frames
        self.records: list[VQARecord] = []
        problems = []
        for where, entry in _json_records(source):
            key = _first_key(entry, MEDIA_KEYS) if entry else None
            media = entry[key] if key else None
            turns, dropped = _turns(entry) if entry else ((), [])
            if isinstance(media, str) and turns:
                path = _resolve(media, source.parent)
                # A folder given as an "image" is not taken for video frames: reading it fails and is counted.
                is_video = key == "video" or (is_video_path(path) and not (key == "image" and path.is_dir()))
                self.records.append(VQARecord(path, is_video, turns))
                problems += [f"{where}: {reason}, a turn left out" for reason in dropped]
            else:
                why = f" ({'; '.join(dropped)})" if dropped else ""
                problems.append(f"{where}: needs an image or video path and question/answer turns{why}")
        self.report_listing(problems, f"no usable question-answer lines in {source}")
        if importlib.util.find_spec("av") is None and any(r.is_video and not r.media.is_dir() for r in self.records):
            raise InputError("reading video files needs PyAV: pip install 'arvision[video]' (or pip install av)")

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        if record.is_video:
            frames = load_video_frames(record.media, self.num_frames)
            pixels = torch.stack([prepare_image(f, self.size, self.policy) for f in frames])
        else:
            pixels = prepare_image(load_image(record.media), self.size, self.policy)
        return {"pixels": pixels, "is_video": record.is_video, "turns": list(record.turns), "index": index}
