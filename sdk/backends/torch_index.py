"""Which PyTorch index a GPU node installs torch from, chosen at setup on the node against the real index.

Runs on a fresh node before anything is installed, so it uses the standard library only; the setup script
carries this file's text and runs it with the node's Python:

    python3 torch_index.py --torch 2.13.0 [--index https://download.pytorch.org/whl]
    -> prints the index URL of the newest CUDA build that the node's NVIDIA driver runs and that holds
      that torch for this Python and platform; prints nothing where there is no NVIDIA driver (the
      default index: a CPU node); exits 3 with one line naming the driver, the version, the builds that
      exist and the ways out where no build fits.

Why not a fixed driver-to-build table: each torch release publishes a different set of CUDA builds
(2.13: cu126 and cu130; no cu128, cu124 or cu121), so a table goes stale with the next release and sent
a 535 driver to a cu121 index that has no torch 2.13. What does not go stale is the driver floor of each
CUDA major version (NVIDIA's minor-version compatibility): 11.x runs on >= 450.80.02, 12.x on >= 525.60.13,
13.x on >= 580.65.06. The builds themselves are read from the index's own simple pages (PEP 503).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request

DEFAULT_INDEX = "https://download.pytorch.org/whl"
# CUDA major version -> the oldest Linux driver that runs any build of it (CUDA minor-version compatibility).
DRIVER_FLOORS: dict[int, tuple[int, ...]] = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580, 65, 6)}
EXIT_NO_BUILD = 3


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def cuda_of(build: str) -> tuple[int, int] | None:
    """'cu126' -> (12, 6); 'cu130' -> (13, 0); anything else (cpu, rocm6.4, xpu) -> None."""
    match = re.fullmatch(r"cu(\d+)(\d)", build)
    return (int(match.group(1)), int(match.group(2))) if match else None


def driver_runs(build: str, driver: tuple[int, ...]) -> bool:
    cuda = cuda_of(build)
    floor = DRIVER_FLOORS.get(cuda[0]) if cuda else None
    return floor is not None and driver >= floor


def wheel_builds(page: str, torch_version: str, python_tag: str, platform_tag: str) -> set[str]:
    """The local version tags (cu126, cpu, ...) of torch wheels on a simple page for this version, Python and platform."""
    pattern = re.compile(rf"torch-{re.escape(torch_version)}\+([a-z0-9.]+)-{python_tag}-{python_tag}[a-z]*-([A-Za-z0-9_.]+)\.whl")
    return {m.group(1) for m in pattern.finditer(page) if m.group(2).endswith(platform_tag)}


def fetch(url: str, timeout: float = 20) -> str | None:
    """A simple page, or None where the index has no such page (404)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (the index URL is the user's choice)
            return response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise IndexUnreachable(f"{url}: HTTP {exc.code}") from None
    except OSError as exc:  # DNS, refused, timed out, TLS
        raise IndexUnreachable(f"{url}: {getattr(exc, 'reason', exc)}") from None


class IndexUnreachable(Exception):
    pass


def floor_text(floor: tuple[int, ...]) -> str:
    return f"{floor[0]}.{floor[1]:02d}.{floor[2]:02d}"


def choose(torch_version: str, driver_text: str, *, index: str, python_tag: str, platform_tag: str,
           get=fetch) -> tuple[str | None, str]:
    """(index URL or None, what was decided). Candidates are the CUDA builds the index lists for this torch
    (its combined torch page), newest CUDA first; the first whose driver floor is met and whose own page
    holds the wheel wins."""
    listing = get(f"{index}/torch/") or ""
    builds = sorted((b for b in wheel_builds(listing, torch_version, python_tag, platform_tag) if cuda_of(b)),
                    key=cuda_of, reverse=True)
    driver = parse_version(driver_text)
    tried = []
    for build in builds:
        if not driver_runs(build, driver):
            tried.append(f"{build} (needs driver >= {floor_text(DRIVER_FLOORS[cuda_of(build)[0]])})")
            continue
        page = get(f"{index}/{build}/torch/")
        if page and build in wheel_builds(page, torch_version, python_tag, platform_tag):
            return f"{index}/{build}", f"torch {torch_version} from {build} for NVIDIA driver {driver_text}"
        tried.append(f"{build} (its index has no torch {torch_version} for {python_tag})")
    exist = ", ".join(builds) or "none"
    return None, (f"NVIDIA driver {driver_text} runs no CUDA build of torch {torch_version} for {python_tag} on {index} "
                  f"(builds there: {exist}; {'; '.join(tried) or 'nothing to try'}): use resources.image with a newer "
                  f"driver (>= {floor_text(DRIVER_FLOORS[max(DRIVER_FLOORS)])} runs every build), or pin a torch "
                  "whose CUDA build this driver runs")


def explain(torch_version: str) -> str:
    """What setup will do, said without reading the index (a dry run on a laptop): the rule and the floors."""
    floors = "; ".join(f"CUDA {major}.x builds need driver >= {floor_text(floor)}" for major, floor in sorted(DRIVER_FLOORS.items()))
    return (f"torch {torch_version} from the newest CUDA build on {DEFAULT_INDEX} that the node's NVIDIA driver runs "
            f"and that holds that version, chosen on the node at setup ({floors}; e.g. a 535 driver gets the newest 12.x "
            "build, cu126 for torch 2.13), or the image's own torch when it is that version and sees the GPU")


def read_driver() -> str | None:
    # launch.hardware.driver_version reads the same, but this file runs alone before the package is installed.
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    return line if parse_version(line) else None


def platform_tag() -> str:
    return sysconfig.get_platform().replace("-", "_").replace(".", "_").split("linux_")[-1]  # 'x86_64', 'aarch64'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", required=True, help="the torch version to install, e.g. 2.13.0")
    parser.add_argument("--index", default=DEFAULT_INDEX)
    parser.add_argument("--driver", help="the NVIDIA driver version (default: nvidia-smi's)")
    args = parser.parse_args(argv)
    driver = args.driver or read_driver()
    if not driver:
        print("[finetune] torch: no NVIDIA driver on this node; the default index", file=sys.stderr)
        return 0
    python_tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    try:
        url, why = choose(args.torch, driver, index=args.index.rstrip("/"), python_tag=python_tag, platform_tag=platform_tag())
    except IndexUnreachable as exc:
        print(f"error: cannot read the PyTorch index to choose a CUDA build for NVIDIA driver {driver}: {exc}; point "
              "FINETUNE_TORCH_INDEX_URL at a reachable mirror of https://download.pytorch.org/whl", file=sys.stderr)
        return EXIT_NO_BUILD
    if url is None:
        print(f"error: {why}", file=sys.stderr)
        return EXIT_NO_BUILD
    print(f"[finetune] torch: {why} ({url})", file=sys.stderr)
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
