"""export.paths.default_shared_dir: the resolution order of the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from export import paths
from export.paths import default_shared_dir, find_project_root


def _project(root: Path) -> Path:
    """``root/checkout`` made a project root (``pyproject.toml``), with a nested folder."""
    (root / "checkout" / "sub" / "deeper").mkdir(parents=True)
    (root / "checkout" / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return root / "checkout"


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """Two unrelated trees: ``cwd_side/checkout`` (the working directory's project) and
    ``code_side/checkout`` (the checkout the code is said to live in), no env variable."""
    if find_project_root(tmp_path) is not None:
        pytest.skip(f"{tmp_path} lies inside a project; the fallback cases need a bare tree")
    monkeypatch.delenv("HRNET_SHARED_DIR", raising=False)
    cwd_project = _project(tmp_path / "cwd_side")
    code_project = _project(tmp_path / "code_side")
    monkeypatch.setattr(paths, "_CODE_ROOT", code_project)
    return cwd_project, code_project


def test_env_variable_wins_as_given_even_if_missing(layout, tmp_path, monkeypatch):
    cwd_project, code_project = layout
    (cwd_project.parent / "shared").mkdir()
    (code_project.parent / "shared").mkdir()
    monkeypatch.setenv("HRNET_SHARED_DIR", "relative/not_there")
    assert default_shared_dir(cwd_project) == Path("relative/not_there")
    monkeypatch.setenv("HRNET_SHARED_DIR", str(tmp_path / "elsewhere"))
    assert default_shared_dir(cwd_project) == tmp_path / "elsewhere"


def test_empty_env_variable_counts_as_unset(layout, monkeypatch):
    cwd_project, _ = layout
    (cwd_project.parent / "shared").mkdir()
    monkeypatch.setenv("HRNET_SHARED_DIR", "")
    assert default_shared_dir(cwd_project / "sub") == cwd_project.parent / "shared"


def test_beside_the_working_directorys_project_first(layout):
    cwd_project, code_project = layout
    (cwd_project.parent / "shared").mkdir()
    (code_project.parent / "shared").mkdir()
    assert default_shared_dir(cwd_project / "sub" / "deeper") == cwd_project.parent / "shared"


def test_default_cwd_is_the_working_directory(layout, monkeypatch):
    cwd_project, _ = layout
    (cwd_project.parent / "shared").mkdir()
    monkeypatch.chdir(cwd_project / "sub")
    assert default_shared_dir() == cwd_project.parent / "shared"


def test_then_beside_the_code_checkout(layout, tmp_path):
    cwd_project, code_project = layout
    (code_project.parent / "shared").mkdir()
    assert default_shared_dir(cwd_project / "sub") == code_project.parent / "shared"
    # a working directory in no project at all also falls back to the code's checkout
    (tmp_path / "loose").mkdir()
    assert default_shared_dir(tmp_path / "loose") == code_project.parent / "shared"


def test_nothing_exists_names_the_folder_beside_the_working_directory(layout, tmp_path):
    cwd_project, _ = layout
    assert default_shared_dir(cwd_project / "sub") == cwd_project.parent / "shared"
    (tmp_path / "loose" / "inner").mkdir(parents=True)
    assert default_shared_dir(tmp_path / "loose" / "inner") == tmp_path / "loose" / "shared"


def test_find_project_root_takes_pyproject_or_git(tmp_path):
    if find_project_root(tmp_path) is not None:
        pytest.skip(f"{tmp_path} lies inside a project")
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / ".git").mkdir()
    assert find_project_root(tmp_path / "a" / "b") == tmp_path / "a"
    # a folder named pyproject.toml is not a project file
    (tmp_path / "c" / "pyproject.toml").mkdir(parents=True)
    assert find_project_root(tmp_path / "c") is None
