"""The documentation that is generated from the code is what the code says."""

from __future__ import annotations

from pathlib import Path

from streams.config import Settings
from streams.config_doc import reference

ROOT = Path(__file__).resolve().parents[1]


def test_the_configuration_reference_is_the_settings() -> None:
    doc = (ROOT / "docs" / "CONFIGURATION.md").read_text(encoding="utf-8")
    assert doc == reference(), "docs/CONFIGURATION.md is stale: run `make docs`"


def test_the_reference_names_every_setting_with_its_meaning() -> None:
    doc = reference()
    for section, sfield in Settings.model_fields.items():
        assert f"## `{section}`" in doc
        for name, field in sfield.annotation.model_fields.items():  # type: ignore[union-attr]
            assert f"| `{name}` |" in doc
            assert field.description, f"{section}.{name} has no description"


def test_the_architecture_names_real_files_each_once_on_the_path() -> None:
    import re

    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    path = doc.split("## One prediction's path", 1)[1].split("\n## ", 1)[0]
    steps = re.findall(r"\*\*`([\w/]+\.py)`\*\*", path)
    assert len(steps) >= 15
    assert len(steps) == len(set(steps)), "a file is entered twice on the path"
    for name in set(re.findall(r"`((?:streams|detectors|alerting)/[\w/]+\.py)`", doc)):
        assert (ROOT / name).is_file(), f"{name} does not exist"


def test_every_doc_the_readme_points_to_exists() -> None:
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\((docs/[\w.]+)\)", readme):
        assert (ROOT / target).is_file(), target


def test_every_picture_and_link_of_the_docs_is_in_the_repository() -> None:
    """A relative link or image of the README or docs/ names a file that exists and that
    git does not ignore (a picture once was, and the README showed nothing on a clone)."""
    import re
    import subprocess

    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s):, mailto:
            path = (doc.parent / target).resolve()
            assert path.exists(), f"{doc.name} links to {target}, which does not exist"
            ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", str(path)],
                                     cwd=ROOT, check=False).returncode == 0
            assert not ignored, f"{doc.name} links to {target}, which git ignores"
