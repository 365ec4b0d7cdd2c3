"""Every example config of Axolotl and LLaMA-Factory through `finetune import` (sdk.importers.import_config).

Run: python tests/bench/bench_import_examples.py [--axolotl GIT_DIR] [--llamafactory GIT_DIR] [--quiet]
The two repositories are read at their mirrored commit (bare git dirs, `git archive HEAD`): every *.yml/*.yaml under
`examples/` is imported from inside the extracted tree, so what a config points to resolves as it would from a
checkout (DeepSpeed JSON, accelerate configs, LLaMA-Factory's real data/dataset_info.json). Prints one line per
config: `imported` (the recipe validated), `refused` (exit 2) with its first reason, `not a training config`
(accelerate, DeepSpeed, inference and merge configs: not for `finetune import`), or `CRASHED` (a bug to fix); then the
totals per project and the refusals grouped by cause. Exits 1 when anything crashed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sdk.core.errors import SpecError  # noqa: E402
from sdk.importers import ImportRefused, import_config  # noqa: E402

MIRRORS = Path("/work/.mirror")
PROJECTS = {"Axolotl": MIRRORS / "axolotl-ai-cloud+axolotl" / "repo",
            "LLaMA-Factory": MIRRORS / "hiyouga+LLaMA-Factory" / "repo"}
NOT_TRAINING = "not a config of Axolotl or LLaMA-Factory"


def extract(git_dir: Path, into: Path) -> str:
    """examples/ and what configs point to (data/, deepspeed_configs/) at HEAD; returns the commit."""
    commit = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    names = subprocess.run(["git", "--git-dir", str(git_dir), "ls-tree", "--name-only", "HEAD"], capture_output=True,
                           text=True, check=True).stdout.split()
    wanted = [n for n in ("examples", "data", "deepspeed_configs") if n in names]
    archive = subprocess.run(["git", "--git-dir", str(git_dir), "archive", "--format=tar", "HEAD", *wanted],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return commit


def cause(line: str) -> tuple[str, str]:
    """A refusal's line as (the capability it names, the key): `key: value: reason` or `key: reason`, the value (no
    spaces, or a list of such) and which dataset dropped, so that one cause counts every config it blocks."""
    line = re.sub(r"^datasets\[\d+\]", "datasets[i]", line.strip())
    line = re.sub(r"^(dataset: )\S+( is not in dataset_info.json)", r"\1NAME\2", line)
    line = re.sub(r"\(images(, \w+)*; ", "(", line)
    found = re.match(r"^([\w.\[\]/ -]+?): (?:[^\s:,]+(?:, [^\s:,]+)*: )?(.*)$", line)
    return (found.group(2), found.group(1)) if found else (line, "")


def launched_with(path: Path, root: Path) -> Path | None:
    """The accelerate config a LLaMA-Factory example is launched with, where its comments or a script beside it that
    names it say (`accelerate launch --config_file FILE`), as the user would pass it to --accelerate-config."""
    texts = [path.read_text(encoding="utf-8")]
    texts += [t for s in path.parent.glob("*.sh") if path.name in (t := s.read_text(encoding="utf-8"))]
    for text in texts:
        found = re.search(r"--config_file[ =]+(\S+\.ya?ml)", text)
        if found and (root / found.group(1)).is_file():
            return root / found.group(1)
    return None


def outcome(path: Path, accelerate: Path | None = None) -> tuple[str, list[str]]:
    try:
        result = import_config(path, accelerate_config=accelerate)
    except ImportRefused as exc:
        return "refused", exc.missing
    except SpecError as exc:
        if NOT_TRAINING in str(exc):
            return "not a training config", []
        return "refused", [str(exc).splitlines()[0].split(": ", 1)[-1]]
    except Exception as exc:  # noqa: BLE001 - a crash is what this bench looks for
        return "CRASHED", [f"{type(exc).__name__}: {exc}"]
    method = result.recipe.get("method")
    return "imported", [f"{result.recipe.get('objective', {}).get('name', 'sft')} / "
                        f"{method.get('name') if isinstance(method, dict) else method}"]


def run(project: str, git_dir: Path, quiet: bool) -> tuple[Counter, Counter, dict[str, set[str]]]:
    totals, causes, keys = Counter(), Counter(), {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        commit = extract(git_dir, root)
        print(f"== {project} at {commit[:7]}")
        for path in sorted((root / "examples").rglob("*.y*ml")):
            accelerate = launched_with(path, root) if project == "LLaMA-Factory" else None
            status, lines = outcome(path, accelerate)
            totals[status] += 1
            if status == "refused":
                for reason, key in {cause(line) for line in lines}:
                    keys.setdefault(reason, set()).add(key)
                causes.update({cause(line)[0] for line in lines})
            if not quiet or status == "CRASHED":
                shown = str(path.relative_to(root)) + (f" --accelerate-config {accelerate.relative_to(root)}"
                                                       if accelerate else "")
                print(f"{status:22} {shown}" + (f"  {' | '.join(lines)}" if lines else ""))
    return totals, causes, keys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--axolotl", type=Path, default=PROJECTS["Axolotl"])
    parser.add_argument("--llamafactory", type=Path, default=PROJECTS["LLaMA-Factory"])
    parser.add_argument("--quiet", action="store_true", help="print only the totals, the causes and crashes")
    args = parser.parse_args()
    crashed = 0
    for project, git_dir in (("Axolotl", args.axolotl), ("LLaMA-Factory", args.llamafactory)):
        totals, causes, keys = run(project, git_dir, args.quiet)
        crashed += totals["CRASHED"]
        training = sum(totals.values()) - totals["not a training config"]
        print(f"-- {project}: {totals['imported']} of {training} training configs imported and validated, "
              f"{totals['refused']} refused, {totals['CRASHED']} crashed; {totals['not a training config']} other "
              "YAML files (accelerate, cloud, inference, merge, token configs) are not training configs")
        print("   refusals by cause (a config may count under several):")
        for reason, count in causes.most_common():
            print(f"   {count:4}  {', '.join(sorted(keys[reason]))}: {reason[:100]}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
