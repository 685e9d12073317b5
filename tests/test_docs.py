"""The documentation site stays complete: every module of the package is on an API reference page, and every
public function and class has a docstring (mkdocstrings renders the site from them; `make docs` builds it)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import failclosed_interp

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(failclosed_interp.__path__, "failclosed_interp.")
                  if not info.ispkg and not info.name.endswith(".__main__"))  # the `python -m` entry point


def test_every_module_is_on_an_api_reference_page():
    listed = {m for page in (DOCS / "api").glob("*.md") for m in re.findall(r"^::: (\S+)", page.read_text(), re.M)}
    missing = [m for m in _modules() if m not in listed]
    assert not missing, f"add these modules to a page in docs/api/: {missing}"
    packages = {info.name for info in pkgutil.walk_packages(failclosed_interp.__path__, "failclosed_interp.") if info.ispkg}
    unknown = sorted(listed - set(_modules()) - packages)
    assert not unknown, f"docs/api/ names modules that do not exist: {unknown}"


def test_every_public_function_and_class_has_a_docstring():
    missing = []
    for name in _modules():
        module = importlib.import_module(name)
        if not (module.__doc__ or "").strip():
            missing.append(f"{name} (module)")
        for attr, obj in vars(module).items():
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                doc = inspect.getdoc(obj) or ""
                generated = inspect.isclass(obj) and doc.startswith(f"{obj.__name__}(")  # dataclass's own
                if not doc.strip() or generated:
                    missing.append(f"{name}.{attr}")
    assert not missing, f"write docstrings for: {missing}"
