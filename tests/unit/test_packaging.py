"""What an install (not only this checkout) contains: every package, and the benchmark configs `deft bench` reads."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_under_deft_is_listed_for_the_build() -> None:
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "deft").rglob("__init__.py")}
    assert found - listed == set(), "packages missing from pyproject.toml [tool.setuptools] packages"


def test_every_bench_tier_resolves_to_its_config() -> None:
    from deft_cli.main import bench

    names = bench.params[0].type.choices
    shipped = files("deft_cli.bench")
    for name in names:
        assert (shipped / f"{name}.yaml").read_text() == (ROOT / "configs" / "bench" / f"{name}.yaml").read_text()
    assert sorted(p.stem for p in (ROOT / "configs" / "bench").glob("*.yaml")) == sorted(names)
