"""The package list, found rather than written down (the rest of the metadata is in pyproject.toml): every
package under sdk/ and launch/ ships, and recipes/ ships as finetune_recipes."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["sdk", "sdk.*", "launch", "launch.*"]), "finetune_recipes"])
