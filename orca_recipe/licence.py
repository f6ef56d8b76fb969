"""The licence of a run's input data, as far as the data itself records it.

A published dataset inherits its seed problems' licence, and orca-recipe's recipe has no
licence key, so we read what ships beside the data: a `datasets` folder's
`dataset_info.json`, a dataset card's `license:` front matter, a SOURCE.md "Licence:" line,
or a LICENSE file's first line. Anything else is "unknown", said plainly, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from orca_recipe.bounded import maybe_json, read_text
from orca_recipe.errors import UserError

UNKNOWN_TEXT = "unknown — check the seed data's licence"

# First words of a licence text -> the Hub's licence id (https://huggingface.co/docs/hub/repositories-licenses).
_HUB_IDS = [
    (r"mit\b", "mit"), (r"apache(-|\s)*(license,?\s*)?(version\s*)?2", "apache-2.0"), (r"cc[-\s]?by[-\s]?sa[-\s]?4", "cc-by-sa-4.0"),
    (r"cc[-\s]?by[-\s]?nc[-\s]?4", "cc-by-nc-4.0"), (r"cc[-\s]?by[-\s]?4", "cc-by-4.0"), (r"cc0", "cc0-1.0"),
    (r"bsd[-\s]?3", "bsd-3-clause"), (r"bsd[-\s]?2", "bsd-2-clause"), (r"gpl[-\s]?3|gnu general public license.*3", "gpl-3.0"),
    (r"odc[-\s]?by", "odc-by"), (r"unknown\b", "unknown"), (r"other\b", "other"),
]


@dataclass(frozen=True)
class Licence:
    hub_id: str  # what the card's `license:` front matter says: a Hub id, "other" or "unknown"
    text: str  # what a person reads
    source: str | None  # the file it came from


def hub_id(text: str) -> str | None:
    low = text.strip().lower()
    for pattern, ident in _HUB_IDS:
        if re.match(pattern, low):
            return ident
    return None


def from_text(text: str, source: str | None = None) -> Licence:
    return Licence(hub_id(text) or "other", text.strip(), source)


def resolve_data_path(path: str | None, run_dir: Path) -> Path | None:
    """A data path from the run's recipe.yaml: relative to the run folder (where recipe.yaml
    is, as every recipe's paths are relative to their file); a run written before that rule
    has them relative to wherever `run` was started: here, or above the run folder."""
    if not path:
        return None
    p = Path(path)
    if p.is_absolute():
        return p if p.exists() else None
    for base in (run_dir, Path.cwd(), run_dir.parent, run_dir.parent.parent):
        if (base / p).exists():
            return base / p
    return None


def _text(path: Path) -> str | None:
    """A licence-bearing file's text, or None where it is missing or not a readable text file
    within the "licence" cap (a data folder is the user's: any file kind can be there)."""
    if not (path.exists() or path.is_symlink()):
        return None
    try:
        return read_text(path, "licence")
    except UserError:
        return None


def find_licence(data: Path | None) -> Licence:
    """What the data at `data` (a file or a `datasets` folder) records about its licence."""
    if data is None:
        return Licence("unknown", UNKNOWN_TEXT, None)
    folder = data if data.is_dir() else data.parent
    info = folder / "dataset_info.json"
    found = maybe_json(info, "licence")
    if isinstance(found, dict):
        value = found.get("license")
        if value:
            return from_text(str(value), str(info))
    card = folder / "README.md"
    card_text = _text(card)
    if card_text is not None:
        from huggingface_hub import DatasetCard

        try:
            value = DatasetCard(card_text).data.license
        except ValueError:
            value = None
        if value:
            value = value[0] if isinstance(value, list) else value
            return Licence(hub_id(str(value)) or "other", str(value), str(card))
    source = folder / "SOURCE.md"
    source_text = _text(source)
    if source_text is not None:
        m = re.search(r"^\W*licen[cs]e\W*:\s*(.+)$", source_text, re.IGNORECASE | re.MULTILINE)
        if m:
            return from_text(m.group(1), str(source))
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "COPYING"):
        f = folder / name
        text = _text(f)
        if text is not None:
            first = next((line for line in text.splitlines() if line.strip()), "")
            if first:
                return from_text(first, str(f))
    return Licence("unknown", UNKNOWN_TEXT, None)
