"""The Slicer extension's files: CMakeLists.txt / RCSegNeXt.s4ext / RCSegNeXt.json consistent, every Python file
listed in CMake, catalog entry valid against Slicer's schema, icon, .ui, and the import rules of the module files."""
from __future__ import annotations

import ast
import json
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import update_cmake_lists

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "RCSegNeXt"

# Slicer/Slicer Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json: required keys, and the only keys allowed
# ("additionalProperties": false) with their JSON types
SCHEMA_URL = ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
              "slicer-extension-catalog-entry-schema-v1.0.2.json#")
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}
SCHEMA_TYPES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str, "enabled": bool,
                "tier": int}


def cmake_variables(text: str) -> dict:
    return {m.group(1): m.group(2) for m in re.finditer(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text)}


def s4ext() -> dict:
    values = {}
    for line in (REPO / "RCSegNeXt.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            values[key] = value.strip()
    return values


def test_cmake_s4ext_and_json_agree():
    cmake = cmake_variables((REPO / "CMakeLists.txt").read_text(encoding="utf-8"))
    desc, catalog = s4ext(), json.loads((REPO / "RCSegNeXt.json").read_text(encoding="utf-8"))
    assert cmake["EXTENSION_DEPENDS"] == "PyTorch"
    pairs = {"category": "EXTENSION_CATEGORY", "homepage": "EXTENSION_HOMEPAGE", "contributors":
             "EXTENSION_CONTRIBUTORS", "description": "EXTENSION_DESCRIPTION", "iconurl": "EXTENSION_ICONURL",
             "screenshoturls": "EXTENSION_SCREENSHOTURLS", "status": "EXTENSION_STATUS"}
    for key, variable in pairs.items():
        assert desc[key] == cmake[variable], key
    assert desc["depends"].split() == cmake["EXTENSION_DEPENDS"].split(";") == catalog["build_dependencies"]
    assert catalog["category"] == cmake["EXTENSION_CATEGORY"] == "Segmentation"
    assert catalog["scm_url"] == desc["scmurl"] and catalog["scm_revision"] == desc["scmrevision"]
    assert catalog["scm_type"] == desc["scm"] == "git"
    assert catalog["build_subdirectory"] == desc["build_subdirectory"] == "."
    assert catalog["enabled"] == (desc["enabled"] == "1")
    assert "research use" in cmake["EXTENSION_DESCRIPTION"]
    assert cmake["EXTENSION_ICONURL"].endswith("RCSegNeXt/Resources/Icons/RCSegNeXt.png")
    screenshot = cmake["EXTENSION_SCREENSHOTURLS"].split("/main/", 1)[1]
    assert (REPO / screenshot).is_file(), f"screenshot {screenshot} named in CMakeLists.txt is missing"
    assert (REPO / "LICENSE").is_file()
    assert "set(EXTENSION_LICENSE_FILE ${CMAKE_CURRENT_SOURCE_DIR}/LICENSE)" in (REPO / "CMakeLists.txt").read_text(encoding="utf-8")


def test_catalog_entry_follows_the_extensions_index_schema():
    catalog = json.loads((REPO / "RCSegNeXt.json").read_text(encoding="utf-8"))
    assert catalog["$schema"] == SCHEMA_URL
    assert SCHEMA_REQUIRED <= set(catalog), SCHEMA_REQUIRED - set(catalog)
    assert set(catalog) <= set(SCHEMA_TYPES), f"keys not allowed by the schema: {set(catalog) - set(SCHEMA_TYPES)}"
    for key, value in catalog.items():
        assert isinstance(value, SCHEMA_TYPES[key]), key
    assert catalog["scm_type"] in ("git", "local") and 1 <= catalog["tier"] <= 5
    assert all(isinstance(d, str) for d in catalog["build_dependencies"])


def test_every_python_file_and_resource_is_listed_in_cmake():
    listed = {}
    for rel, prefix in (("CMakeLists.txt", ""), ("RCSegNeXt/CMakeLists.txt", "RCSegNeXt/")):
        for name, files in update_cmake_lists.listed((REPO / rel).read_text(encoding="utf-8")).items():
            listed[name] = [prefix + f for f in files]
    in_cmake = {f for files in listed.values() for f in files}
    on_disk = {p.relative_to(REPO).as_posix() for root in ("RCSegNeXt", "RCSegNeXtCore")
               for p in (REPO / root).rglob("*.py") if "__pycache__" not in p.parts}
    hint = "run `python Testing/update_cmake_lists.py` to refresh the CMake file lists"
    assert sorted(on_disk - in_cmake) == [], hint
    assert sorted(f for f in in_cmake if not (REPO / f).is_file()) == [], hint
    for resource in ("RCSegNeXt/Resources/UI/RCSegNeXt.ui", "RCSegNeXt/Resources/Icons/RCSegNeXt.png"):
        assert resource in listed["MODULE_PYTHON_RESOURCES"]
    assert update_cmake_lists.update(check=True) == [], hint
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "add_subdirectory(RCSegNeXt)" in text and "NAME RCSegNeXtCore" in text


def test_icon_is_a_128_px_png():
    data = (MODULE / "Resources" / "Icons" / "RCSegNeXt.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


def module_tree() -> ast.Module:
    return ast.parse((MODULE / "RCSegNeXt.py").read_text(encoding="utf-8"))


def test_ui_file_has_every_widget_the_module_uses():
    root = ET.parse(MODULE / "Resources" / "UI" / "RCSegNeXt.ui").getroot()
    widgets = {w.get("name") for w in root.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "RCSegNeXt.py").read_text(encoding="utf-8")))
    assert used and used <= widgets, used - widgets
    bound = {p.find("string").text for p in root.iter("property") if p.get("name") == "SlicerParameterName"}
    wrapper = next(c for c in module_tree().body if isinstance(c, ast.ClassDef) and c.name == "RCSegNeXtParameterNode")
    fields = {s.target.id for s in wrapper.body if isinstance(s, ast.AnnAssign)}
    assert bound and bound <= fields, bound - fields
    assert "research use" in ET.tostring(root, encoding="unicode").lower()


def test_module_file_structure_and_metadata():
    tree = module_tree()
    classes = {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}
    assert {"RCSegNeXt", "RCSegNeXtWidget", "RCSegNeXtTest", "RCSegNeXtParameterNode"} <= set(classes)
    decorators = classes["RCSegNeXtParameterNode"].decorator_list
    assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in decorators)
    source = (MODULE / "RCSegNeXt.py").read_text(encoding="utf-8")
    assert 'self.parent.title = "Segment rectal cancer"' in source
    assert 'self.parent.categories = ["Segmentation"]' in source
    cmake = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    testing = cmake.split("if(BUILD_TESTING)", 1)[1].split("endif()", 1)[0]  # the self-test runs under CTest
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in testing


def top_level_imports(path: Path) -> set:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def all_imports(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(MODULE.rglob("*.py")), ids=lambda p: p.relative_to(MODULE).as_posix())
def test_module_files_import_rules(path):
    """No torch (or other non-Slicer package) at the top of module files; the Lib never touches Qt."""
    assert "torch" not in top_level_imports(path)
    if "RCSegNeXtLib" in path.parts:
        assert not all_imports(path) & {"qt", "ctk", "slicer.qt"}, path
        assert not top_level_imports(path) & {"slicer", "vtk"}, "slicer/vtk are imported inside functions"
    assert not re.search(r"pip_install\(\s*['\"]torch", path.read_text(encoding="utf-8")), "torch comes from PyTorchUtils"


@pytest.mark.parametrize("path", sorted((REPO / "RCSegNeXtCore").rglob("*.py")),
                         ids=lambda p: p.relative_to(REPO).as_posix())
def test_core_never_imports_slicer_qt_or_vtk(path):
    assert not all_imports(path) & {"slicer", "qt", "ctk", "vtk", "RCSegNeXtLib"}, path


def test_lib_imports_without_qt_and_without_torch():
    """In a fresh interpreter where `qt` cannot be imported, the Lib loads and torch stays unloaded."""
    code = ("import sys; sys.modules['qt'] = None; sys.modules['ctk'] = None; sys.path.insert(0, sys.argv[1]);"
            "import RCSegNeXtLib.logic, RCSegNeXtLib.runner, RCSegNeXtLib.models, RCSegNeXtLib.dependencies,"
            "RCSegNeXtLib.compare, RCSegNeXtLib.convert, RCSegNeXtLib.controller, RCSegNeXtLib.ownership,"
            "RCSegNeXtLib.binding; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(MODULE)], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_dependency_rules():
    update_cmake_lists  # noqa: B018 (imported above)
    sys.path.insert(0, str(MODULE))
    from RCSegNeXtLib.dependencies import DependencyError, installable_requirements, requirement_name, torch_version_ok
    assert requirement_name("SimpleITK>=2.2") == "simpleitk" and requirement_name("numpy") == "numpy"
    for bad in ("numpy>=2", "SimpleITK", "torch==2.3", "vtk"):
        with pytest.raises(DependencyError):
            installable_requirements([bad])
    assert installable_requirements(["tqdm>=4"]) == ["tqdm>=4"]
    assert torch_version_ok("2.13.0+cpu") and torch_version_ok("2.1") and not torch_version_ok("1.13.1")
    import torch
    from RCSegNeXtLib.dependencies import ensure_torch
    assert ensure_torch() == torch.__version__  # already installed: PyTorchUtils is not needed (nor asked)


def test_readme_has_the_radiologist_section():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("<!-- section: slicer -->", 1)[1].split("<!-- end section: slicer -->", 1)[0]
    for step in ("Segment Editor", "Dice", "training case", "PyTorch", "research use", "CPU"):
        assert step.lower() in section.lower(), step
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", section):
        assert (REPO / image).is_file(), image
