"""Build hook: a wheel carries the demo hospital's policy as package data.

``policies/`` stays at the top of the checkout, where ``make run`` reads it and an admin
edits it; an installed package has no checkout, so the build copies the folder into the
wheel as ``carematrix_ops/demo/policies/`` (carematrix_ops/resources.py reads it from
there). One copy in git, one in the wheel. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithDemoPolicy(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install runs from the checkout, which has policies/ itself
        target = Path(self.build_lib) / "carematrix_ops" / "demo" / "policies"
        shutil.rmtree(target, ignore_errors=True)  # no file deleted from policies/ lingers
        shutil.copytree(HERE / "policies", target)


setup(cmdclass={"build_py": BuildWithDemoPolicy})
