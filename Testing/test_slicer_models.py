"""RCSegNeXtLib.models: install from a folder or a zip (SHA-256, zip-slip refused), list with provenance, remove."""
from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from pathlib import Path

import pytest

from slicer_headless import module_on_path

module_on_path()
from RCSegNeXtCore.errors import ModelError  # noqa: E402
from RCSegNeXtLib.models import install_model, list_models, model_path, remove_model  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from RCSegNeXtCore.planning import make_plans_from_values
    from RCSegNeXtCore.inference.model_folder import init_model_folder
    plans = make_plans_from_values([5.0, 5.0, 5.0], [16, 32, 32], base_channels=4, dataset_name="Dataset900_Test")
    return init_model_folder(plans, tmp_path_factory.mktemp("run") / "run_fold0", folds=(0, 1))


def zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def tree_digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file() and p.name != "install.json"}


def test_install_from_folder_list_and_remove(model_dir, tmp_path):
    root = tmp_path / "models"
    assert list_models(root) == []
    installed = install_model(model_dir, root)
    assert installed.name == "run_fold0" and installed.path == root / "run_fold0"
    assert tree_digest(installed.path) == tree_digest(model_dir)  # an exact copy
    models = list_models(root)
    assert [m.name for m in models] == ["run_fold0"]
    prov = models[0].provenance
    assert prov["source"] == str(model_dir.resolve()) and prov["folds"] == [0, 1] and prov["sha256"] is None
    assert prov["dataset_name"] == "Dataset900_Test" and "installed_at" in prov
    assert "folds [0, 1]" in models[0].description
    assert model_path(root, "run_fold0") == installed.path.resolve()
    with pytest.raises(ModelError, match="already installed"):
        install_model(model_dir, root)
    install_model(model_dir, root, name="second")
    remove_model(root, "run_fold0")
    assert [m.name for m in list_models(root)] == ["second"] and not (root / "run_fold0").exists()
    with pytest.raises(ModelError, match="no installed model"):
        remove_model(root, "run_fold0")
    with pytest.raises(ModelError, match="not a folder directly under"):
        remove_model(root, "../models")
    assert (root / "second" / "plans.json").is_file()


def test_installed_model_is_usable_by_the_predictor(model_dir, tmp_path):
    from RCSegNeXtCore.inference.model_folder import ModelFolder
    installed = install_model(zip_folder(model_dir, tmp_path / "m.zip"), tmp_path / "models")
    folder = ModelFolder(installed.path)
    assert folder.folds == [0, 1] and folder.weights_sha256([0]) == ModelFolder(model_dir).weights_sha256([0])


def test_install_from_zip_with_sha256(model_dir, tmp_path):
    archive = zip_folder(model_dir, tmp_path / "rectal_model.zip", prefix="rectal_model/")  # one top folder
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    root = tmp_path / "models"
    installed = install_model(archive, root, sha256=digest.upper())
    assert installed.name == "rectal_model" and installed.provenance["sha256"] == digest
    assert tree_digest(installed.path) == tree_digest(model_dir)
    flat = install_model(zip_folder(model_dir, tmp_path / "flat.zip"), root)  # files at the archive's top level
    assert (flat.path / "fold_1" / "checkpoint_final.pt").is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_sha256_mismatch_is_refused_before_unpacking(model_dir, tmp_path):
    archive = zip_folder(model_dir, tmp_path / "m.zip")
    root = tmp_path / "models"
    with pytest.raises(ModelError, match="SHA-256 mismatch") as info:
        install_model(archive, root, sha256="0" * 64)
    assert hashlib.sha256(archive.read_bytes()).hexdigest() in str(info.value)
    assert list_models(root) == [] and not (root / "m").exists()
    with pytest.raises(ModelError, match="checks an archive"):
        install_model(model_dir, root, sha256="0" * 64)


@pytest.mark.parametrize("evil", ["../outside.txt", "/tmp/rcsegnext_abs.txt", "fold_0/../../outside.txt",
                                  "C:/windows/evil.txt", "..\\outside.txt"])
def test_zip_slip_is_refused(model_dir, tmp_path, evil):
    archive = zip_folder(model_dir, tmp_path / "evil.zip")
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr(evil, "pwned")
    root = tmp_path / "models" / "inner"
    with pytest.raises(ModelError, match="outside the model folder"):
        install_model(archive, root)
    assert not (tmp_path / "models" / "outside.txt").exists() and not (tmp_path / "outside.txt").exists()
    assert not Path("/tmp/rcsegnext_abs.txt").exists() and list_models(root) == []


def test_zip_with_symlink_is_refused(model_dir, tmp_path):
    archive = zip_folder(model_dir, tmp_path / "link.zip")
    with zipfile.ZipFile(archive, "a") as z:
        info = zipfile.ZipInfo("fold_0/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    with pytest.raises(ModelError, match="symbolic link"):
        install_model(archive, tmp_path / "models")


def test_not_a_model_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no plans.json"):
        install_model(tmp_path / "empty", tmp_path / "models")
    (tmp_path / "notzip.zip").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a zip"):
        install_model(tmp_path / "notzip.zip", tmp_path / "models")
    with pytest.raises(ModelError, match="no such file"):
        install_model(tmp_path / "missing", tmp_path / "models")
    assert list_models(tmp_path / "models") == []
    assert list((tmp_path / "models").iterdir()) == []  # the refused install left no staging folder


def test_model_without_weights_is_refused(model_dir, tmp_path):
    import shutil
    copy = tmp_path / "noweights"
    shutil.copytree(model_dir, copy)
    for path in copy.glob("fold_*/*.pt"):
        os.remove(path)
    with pytest.raises(ModelError, match="checkpoint_final"):
        install_model(copy, tmp_path / "models")
