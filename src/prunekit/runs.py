"""Run folders: every experiment is a directory named by a hash of its settings.

    runs/<name>-<12 hex of sha256(settings)>/
        settings.json      the resolved settings (recipe) that produced the hash
        metrics.json       list of rows recorded so far (also metrics.csv)
        checkpoints/       state_dicts by tag (torch.save, loaded with weights_only=True)
        plots/             PNG figures
        report.html        written by prunekit.report
        <tag>.done         markers of finished steps

Re-running with the same settings finds the same folder and resumes: steps whose marker
exists are skipped by the workflow, and their metrics are already on disk. A folder whose
settings.json disagrees with the settings is never reused (or overwritten).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path


from . import rng
from .errors import PrunekitError
from .files import load_tensors, replacing, write_atomically


def settings_hash(settings: dict) -> str:
    """12 hex digits of the SHA-256 of the settings as canonical JSON (sorted keys)."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _atomic_write(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


class RunDir:
    """A run folder. Use RunDir.open(root, name, settings): creates it or resumes it."""

    def __init__(self, path: Path, settings: dict):
        self.path = Path(path)
        self.settings = settings

    @classmethod
    def open(cls, root, name: str, settings: dict) -> RunDir:
        path = Path(root) / f"{name}-{settings_hash(settings)}"
        for folder in [path, *path.parents]:
            if folder.exists() and not folder.is_dir():
                raise PrunekitError(f"Cannot create the run folder {path}: {folder} is a file. "
                                    "Choose another output folder (--output-dir).")
        saved = path / "settings.json"
        normalised = json.loads(json.dumps(settings, default=str))
        if saved.is_file():
            if json.loads(saved.read_text()) != normalised:
                raise PrunekitError(f"{path} holds a run with different settings; move it away or use another root.")
        else:
            path.mkdir(parents=True, exist_ok=True)
            _atomic_write(saved, json.dumps(normalised, indent=2, sort_keys=True))
        (path / "checkpoints").mkdir(exist_ok=True)
        (path / "plots").mkdir(exist_ok=True)
        return cls(path, normalised)

    # Markers ----------------------------------------------------------------------------
    def is_done(self, tag: str) -> bool:
        return (self.path / f"{tag}.done").is_file()

    def mark_done(self, tag: str) -> None:
        (self.path / f"{tag}.done").touch()

    # Checkpoints ------------------------------------------------------------------------
    def checkpoint_path(self, tag: str) -> Path:
        return self.path / "checkpoints" / f"{tag}.pt"

    def save_checkpoint(self, tag: str, state: dict) -> Path:
        """The state, and beside it every RNG state at this moment (restored by load_checkpoint)."""
        path = self.checkpoint_path(tag)
        write_atomically(path, state)  # a killed run never leaves a truncated checkpoint behind
        write_atomically(path.with_suffix(".rng"), rng.capture())
        return path

    def has_checkpoint(self, tag: str) -> bool:
        return self.checkpoint_path(tag).is_file()

    def load_checkpoint(self, tag: str, *, restore_rng: bool = False) -> dict:
        """The saved state; with restore_rng=True the RNG states saved with it are restored too, so a
        resumed run continues exactly as the uninterrupted one did after this checkpoint."""
        path = self.checkpoint_path(tag)
        if not path.is_file():
            raise PrunekitError(f"No checkpoint '{tag}' in {self.path}.")
        state = load_tensors(path)
        if restore_rng and path.with_suffix(".rng").is_file():
            rng.restore(load_tensors(path.with_suffix(".rng"), "RNG state"))
        return state

    # Metrics ----------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        path = self.path / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else []

    def record(self, row: dict) -> None:
        """Append one metrics row (JSON is the source of truth; the CSV mirrors it)."""
        self.replace_rows(self.rows() + [row])

    def replace_rows(self, rows: list[dict]) -> None:
        """Rewrite the metrics, e.g. to drop rows of a step that a killed run left unfinished."""
        _atomic_write(self.path / "metrics.json", json.dumps(rows, indent=2))
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with replacing(self.path / "metrics.csv") as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    def write_json(self, name: str, obj) -> Path:
        path = self.path / name
        _atomic_write(path, json.dumps(obj, indent=2, default=str))
        return path

    def read_json(self, name: str):
        return json.loads((self.path / name).read_text())

    def plot_path(self, name: str) -> Path:
        return self.path / "plots" / name
