"""Captions for methods that learn from text (CLIP): read from a captions file, or templated from labels.

``data.captions`` names the source:

* a **CSV** (``.csv``, a header row) or **JSONL** (``.jsonl``, one object a line) file of rows
  ``(image, caption)`` or ``(index, caption)``: ``image`` is an image's path (absolute, or relative to
  the image folder ``data.data_dir``, to its ``train/`` folder or to the captions file's folder), for
  an image folder; ``index`` is the image's index in the training split (0-based; the only key an
  ``.npz`` or a built-in dataset has). An image may have several captions (a training step picks one
  at random); every training image needs at least one. A relative path to the file itself is looked up
  as given, then beside the data (in ``data.data_dir``, or the folder of an ``.npz``).
* ``templated``: one caption per image from its class name, ``data.caption_template`` (default
  CLIP's ``a photo of a {class}.``). It reads the labels, so such runs are label-using (marked so in
  leaderboards, like the supervised baseline).

Every mistake is one line (:class:`~harness.core.errors.DataError` / ``ConfigError``) naming the file
and line: a missing image, an empty caption, an unknown index, an image without a caption.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.core.errors import ConfigError, DataError

TEMPLATED = "templated"
DEFAULT_TEMPLATE = "a photo of a {class}."   # CLIP's (Radford et al., 2021, sec. 3.1.4)
PATH_KEYS = ("image", "path", "file")
INDEX_KEYS = ("index", "idx")


@dataclass
class Captions:
    """The captions of a training split: image ``i``'s are ``texts[ids[starts[i]:starts[i + 1]]]``."""

    texts: list[str]             # the distinct captions, in first-seen order
    starts: torch.Tensor         # int64 (N + 1,)
    ids: torch.Tensor            # int64 indices into texts, grouped by image
    mode: str                    # "file" | "templated"
    source: str                  # the file, or the template

    @property
    def uses_labels(self) -> bool:
        return self.mode == TEMPLATED

    def of(self, i: int) -> list[str]:
        return [self.texts[int(j)] for j in self.ids[int(self.starts[i]):int(self.starts[i + 1])]]

    def fingerprint(self) -> str:
        """A content hash of which image has which captions (not where the file lives)."""
        h = hashlib.sha256()
        for t in self.texts:
            h.update(t.encode())
            h.update(b"\0")
        h.update(self.starts.numpy().tobytes())
        h.update(self.ids.numpy().tobytes())
        return h.hexdigest()[:16]


def uses_labels(data_cfg) -> bool:
    """Whether ``data.captions`` makes a run read the class labels (templated captions)."""
    return str(getattr(data_cfg, "captions", None) or "").strip().lower() == TEMPLATED


def class_names(ds) -> list[str]:
    """The dataset's class names, or ``class 0``, ``class 1``, ... when it has none (synthetic data, CIFAR
    from the pickled batches): what templated captions and zero-shot prompts say."""
    names = list(getattr(ds, "class_names", None) or [])
    return names if len(names) == ds.num_classes else [f"class {i}" for i in range(ds.num_classes)]


def fill(template: str, name: str) -> str:
    return template.replace("{class}", name)


def check_template(template: str, key: str = "data.caption_template") -> str:
    if "{class}" not in template:
        raise ConfigError(f"{key}='{template}' must contain {{class}} (e.g. 'a photo of a {{class}}.')")
    return template


def captions_for(method: str, wants: bool, data_cfg, ds) -> Captions | None:
    """The captions a run's method gets (``None`` for a method that reads none); refuses a method that
    needs captions without ``data.captions``, and ``data.captions`` for a method that reads none."""
    source = data_cfg.captions
    if data_cfg.caption_template is not None and not uses_labels(data_cfg):
        raise ConfigError("data.caption_template is used only with data.captions=templated")
    if not wants:
        if source:
            raise ConfigError(f"data.captions is read only by methods that learn from text (clip); method "
                              f"'{method}' reads none: drop data.captions")
        return None
    if not source:
        raise ConfigError(f"method '{method}' learns from captions: pass data.captions=FILE.csv|FILE.jsonl (rows of "
                          f"image or index, caption) or data.captions=templated (captions from class names; uses the labels)")
    if uses_labels(data_cfg):
        return templated(ds, data_cfg.caption_template or DEFAULT_TEMPLATE)
    if data_cfg.train_subset:
        raise ConfigError("data.captions=FILE does not combine with data.train_subset (the file's indices and paths "
                          "name images of the whole training split); drop data.train_subset or use data.captions=templated")
    return read_captions(find_file(source, data_cfg.data_dir), ds, data_cfg.data_dir)


def templated(ds, template: str = DEFAULT_TEMPLATE) -> Captions:
    """One caption per training image: ``template`` filled with its class name."""
    check_template(template)
    texts = [fill(template, n) for n in class_names(ds)]
    n = len(ds.y_train)
    return Captions(texts, torch.arange(n + 1, dtype=torch.int64), ds.y_train.to(torch.int64).clone(), TEMPLATED, template)


def find_file(source: str, data_dir: str | None) -> Path:
    p = Path(source).expanduser()
    cands = [p]
    if not p.is_absolute() and data_dir:
        d = Path(data_dir).expanduser()
        cands.append((d if d.is_dir() else d.parent) / p)
    for c in cands:
        if c.is_file():
            return c
    raise DataError(f"captions file {source} not found (looked in {', '.join(str(c) for c in cands)}); pass "
                    f"data.captions=FILE.csv|FILE.jsonl or data.captions=templated")


def _rows(path: Path):
    """(line number, row dict) of a CSV (header row) or JSONL file."""
    suffix = path.suffix.lower()
    try:
        with open(path, newline="", encoding="utf-8") as f:
            if suffix == ".csv":
                reader = csv.DictReader(f)
                if not reader.fieldnames:
                    raise DataError(f"{path}: empty captions file (a header row 'image,caption' or 'index,caption', then one row per caption)")
                for row in reader:
                    yield reader.line_num, {str(k).strip().lower(): v for k, v in row.items() if k is not None}
            elif suffix in (".jsonl", ".json", ".ndjson"):
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as e:
                        raise DataError(f"{path} line {line_no}: not a JSON object ({str(e)[:60]})") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{path} line {line_no}: not a JSON object (expected {{\"image\" or \"index\": ..., \"caption\": ...}})")
                    yield line_no, {str(k).strip().lower(): v for k, v in row.items()}
            else:
                raise DataError(f"{path}: captions must be a .csv or .jsonl file, got '{path.suffix or path.name}'")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the captions file as UTF-8") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the captions file ({e.strerror})") from None


def _train_files(ds, data_dir: str | None) -> list[Path] | None:
    """The training images' files in the dataset's order (an image folder), else None."""
    files = getattr(ds.x_train, "files", None)
    if files is not None:
        return [Path(f) for f in files]
    if data_dir and Path(data_dir).expanduser().is_dir() and (Path(data_dir).expanduser() / "train").is_dir():
        from harness.data.sources import _folder_files  # the folder loader's own order of the images

        found = [f for f, _ in _folder_files(Path(data_dir).expanduser() / "train", None)[0]]
        return found if len(found) == len(ds.y_train) else None
    return None


def read_captions(path: str | Path, ds, data_dir: str | None = None) -> Captions:
    """The captions of ``ds``'s training images from a CSV / JSONL file (see the module docstring)."""
    path = Path(path)
    n = len(ds.y_train)
    files = _train_files(ds, data_dir)
    by_path: dict[str, int] | None = None
    roots = [path.parent]
    if files is not None:
        by_path = {str(f.resolve()): i for i, f in enumerate(files)}
        if data_dir:
            roots = [Path(data_dir).expanduser(), Path(data_dir).expanduser() / "train", path.parent]
    per_image: list[list[int]] = [[] for _ in range(n)]
    texts: dict[str, int] = {}
    rows = 0
    for line, row in _rows(path):
        rows += 1
        where = f"{path} line {line}"
        pkey = next((k for k in PATH_KEYS if k in row and row[k] not in (None, "")), None)
        ikey = next((k for k in INDEX_KEYS if k in row and row[k] not in (None, "")), None)
        if "caption" not in row:
            raise DataError(f"{where}: no 'caption' field (columns: {', '.join(row) or 'none'}); each row needs "
                            f"image or index, and caption")
        caption = row["caption"]
        caption = " ".join(str(caption).split()) if caption is not None else ""
        if ikey is not None:
            try:
                i = int(str(row[ikey]).strip())
            except ValueError:
                raise DataError(f"{where}: index '{row[ikey]}' is not an integer") from None
            if not 0 <= i < n:
                raise DataError(f"{where}: unknown index {i}: the training split has images 0..{n - 1}")
        elif pkey is not None:
            if by_path is None:
                raise DataError(f"{where}: image '{row[pkey]}' names a file, but dataset '{ds.name}' has no image "
                                f"files (an .npz or a built-in dataset): give each row an 'index' (0..{n - 1})")
            name = Path(str(row[pkey]).strip()).expanduser()
            hits = [by_path.get(str((r / name).resolve())) for r in ([Path("/")] if name.is_absolute() else roots)]
            hit = next((h for h in hits if h is not None), None)
            if hit is None:
                raise DataError(f"{where}: image '{row[pkey]}' is not one of the {n} training images of "
                                f"{data_dir or ds.source} (paths are relative to the image folder or its train/)")
            i = hit
        else:
            raise DataError(f"{where}: no 'image' or 'index' field; each row needs an image path or a training index")
        if not caption:
            raise DataError(f"{where}: empty caption for image {row.get(pkey) if ikey is None else i}")
        per_image[i].append(texts.setdefault(caption, len(texts)))
    if rows == 0:
        raise DataError(f"{path}: no captions in the file")
    missing = [i for i, c in enumerate(per_image) if not c]
    if missing:
        name = f" ({files[missing[0]]})" if files is not None else ""
        raise DataError(f"{path}: {len(missing)} of the {n} training images have no caption (the first: index "
                        f"{missing[0]}{name}); every training image needs one")
    counts = torch.tensor([len(c) for c in per_image], dtype=torch.int64)
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    ids = torch.tensor([j for c in per_image for j in c], dtype=torch.int64)
    return Captions(list(texts), starts, ids, "file", str(path))
