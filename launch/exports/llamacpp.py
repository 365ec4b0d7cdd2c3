"""llama.cpp's tools, from one pinned registry package: llama-cpp-python (the runtime and quantizer, built for any
x86-64 CPU) and the converters its source package vendors (convert_hf_to_gguf.py, convert_lora_to_gguf.py, gguf-py),
extracted once into ~/.cache/finetune/llama.cpp/<version>/. No clone of a moving branch: the converters and the
runtime that loads their files are one release.

`python -m launch.exports.llamacpp` installs both (scripts/install.sh export runs it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"
PACKAGE = f"llama-cpp-python=={VERSION}"
# The native build (AVX512 + AMX detected on the build host) segfaults at the first completion on hosts without
# them, and a node image is built on one host and run on another: a generic x86-64 build (notes/export.md).
GENERIC_BUILD = ("-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF")
VENDORED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")
INSTALL_HINT = "bash scripts/install.sh export"


def cache_dir() -> Path:
    return Path(os.environ.get("FINETUNE_CACHE", Path.home() / ".cache" / "finetune")) / "llama.cpp" / VERSION


def runtime_version() -> str | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    return getattr(llama_cpp, "__version__", None)


def require_runtime() -> None:
    from sdk.core.errors import FinetuneError

    found = runtime_version()
    if found != VERSION:
        have = f"llama-cpp-python {found} is installed" if found else "llama-cpp-python is not installed"
        raise FinetuneError(f"exports need llama.cpp {VERSION} ({have}): {INSTALL_HINT}")


def converters() -> Path:
    """The folder holding the pinned converters; extracted from the source package when missing."""
    from sdk.core.errors import FinetuneError

    folder = cache_dir() / "vendor"
    if not (folder / "convert_hf_to_gguf.py").is_file():
        try:
            extract_converters(download_source())
        except (OSError, subprocess.CalledProcessError, tarfile.TarError) as exc:
            raise FinetuneError(f"llama.cpp's converters ({PACKAGE}) could not be fetched: {exc}; "
                                f"{INSTALL_HINT}") from None
    return folder


def download_source() -> Path:
    """The pinned source package, downloaded once (the only form the index serves)."""
    target = cache_dir()
    found = sorted(target.glob("llama_cpp_python-*.tar.gz"))
    if found:
        return found[0]
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    "-d", str(target), PACKAGE], check=True)
    return sorted(target.glob("llama_cpp_python-*.tar.gz"))[0]


def extract_converters(sdist: Path) -> Path:
    """vendor/llama.cpp's converters into the cache, staged then renamed so a reader never sees half of them."""
    dest = cache_dir() / "vendor"
    staging = Path(tempfile.mkdtemp(prefix=".vendor-", dir=cache_dir()))
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)
                   and m.name[len(prefix):].startswith(VENDORED) and (m.isfile() or m.isdir())]
        for member in members:
            member.name = member.name[len(prefix):]
        archive.extractall(staging, members=members, filter="data")
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    staging.rename(dest)
    return dest


def install() -> None:
    """The runtime, built generic from the same source package, and the converters beside it."""
    if runtime_version() != VERSION:  # by name from the index, so pip's wheel cache keeps the ~5 min build
        env = {**os.environ, "CMAKE_ARGS": GENERIC_BUILD, "FORCE_CMAKE": "1"}
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-binary", "llama-cpp-python", PACKAGE],
                       check=True, env=env)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "sentencepiece>=0.1.98,<0.3.0"], check=True)
    converters()


def convert(script: str, args: list[str]) -> None:
    """Run one of the pinned converters; its last lines become the error when it fails."""
    from sdk.core.errors import FinetuneError

    folder = converters()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder / "gguf-py"), str(folder)]), "NO_LOCAL_GGUF": ""}
    done = subprocess.run([sys.executable, str(folder / script), *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-3:]
        raise FinetuneError(f"llama.cpp's {script} failed: " + " | ".join(tail))


def quantize(source: Path, target: Path, quant: str) -> None:
    """llama.cpp's quantizer (llama_model_quantize), from the runtime's own library."""
    import ctypes

    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    from sdk.core.errors import FinetuneError

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = os.cpu_count() or 1
    with suppress_stdout_stderr(disable=False):  # a line per tensor, from C
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        raise FinetuneError(f"llama.cpp could not quantize {source.name} to {quant} (status {status})")


def architecture_refusal(model_dir: Path) -> str | None:
    """Why llama.cpp's converter cannot convert this model (its architecture named), or None."""
    import json

    config = json.loads((model_dir / "config.json").read_text())
    archs = config.get("architectures") or []
    folder = converters()
    probe = ("import sys, conversion\n"
             "try:\n    conversion.get_model_class(sys.argv[1])\nexcept NotImplementedError:\n    sys.exit(3)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder / "gguf-py"), str(folder)])}
    for arch in archs or ["(none)"]:
        done = subprocess.run([sys.executable, "-c", probe, arch], env=env, capture_output=True, text=True)
        if done.returncode == 3:
            return (f"model.id: architecture {arch} (model_type {config.get('model_type')}) cannot be converted by "
                    f"llama.cpp {VERSION}'s convert_hf_to_gguf.py")
    return None


if __name__ == "__main__":
    install()
    print(f"llama.cpp {VERSION}: runtime {runtime_version()}, converters in {cache_dir() / 'vendor'}")
