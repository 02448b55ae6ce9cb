"""The Fly.io files agree with the code: Dockerfile, .dockerignore, fly.toml and the README's deploy section.

No Docker engine is needed: the Dockerfile is parsed (a small parser for the subset of the syntax it
uses, strict about anything else), every command it and fly.toml name is resolved in the real CLI,
the ports are compared, the health path is asked on the real app, and the image's entry point is
started the way Fly starts it (release command, then the web process, then the HEALTHCHECK command).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
FLY = tomllib.loads((ROOT / "fly.toml").read_text())
README = (ROOT / "README.md").read_text()
VENV_BIN = Path(sys.executable).parent

# --- a Dockerfile parser -----------------------------------------------------------------------

INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER", "WORKDIR",
    "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}


@dataclass
class Instruction:
    keyword: str
    value: str  # the arguments, continuation lines joined
    stage: str  # name (or index) of the build stage it belongs to
    line: int

    def flags_and_rest(self) -> tuple[dict[str, str], str]:
        """Leading ``--flag=value`` options (COPY --from, HEALTHCHECK --interval…) and what follows."""
        flags: dict[str, str] = {}
        rest = self.value
        while rest.startswith("--"):
            word, _, rest = rest.partition(" ")
            name, _, val = word[2:].partition("=")
            flags[name] = val
            rest = rest.lstrip()
        return flags, rest


@dataclass
class Dockerfile:
    instructions: list[Instruction]
    args: dict[str, str] = field(default_factory=dict)  # global ARG defaults (before the first FROM)

    def stage(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.stage == name]

    @property
    def stages(self) -> list[str]:
        return list(dict.fromkeys(i.stage for i in self.instructions if i.keyword == "FROM"))

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.args.get(m[1] or m[2], m[0]), text)


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions with continuation lines joined and comment lines dropped (as BuildKit does)."""
    assert not text.lstrip().lower().startswith("# escape="), "the parser assumes the default escape character"
    out: list[Instruction] = []
    args: dict[str, str] = {}
    stage = ""
    n_from = 0
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction is removed
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        joined = " ".join(p for p in pending if p)
        pending = []
        keyword, _, value = joined.partition(" ")
        keyword = keyword.upper()
        assert keyword in INSTRUCTIONS, f"Dockerfile line {start}: unknown instruction {keyword!r}"
        value = value.strip()
        if keyword == "FROM":
            words = value.split()
            stage = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(n_from)
            n_from += 1
        elif keyword == "ARG" and n_from == 0:
            name, _, default = value.partition("=")
            args[name] = default
        out.append(Instruction(keyword, value, stage, start))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return Dockerfile(out, args)


def exec_form(value: str) -> list[str]:
    """A JSON (exec-form) argument list; shell form is refused so signals reach the process."""
    assert value.startswith("["), f"use the exec (JSON) form, not shell form: {value}"
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed)
    return parsed


DOCKERFILE = parse_dockerfile((ROOT / "Dockerfile").read_text())
FINAL = DOCKERFILE.stages[-1]


def _one(keyword: str, stage: str = FINAL) -> Instruction:
    found = [i for i in DOCKERFILE.stage(stage) if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in stage {stage}, found {len(found)}"
    return found[0]


def image_env() -> dict[str, str]:
    """ENV of the final stage (``ENV A=1 B=2`` form)."""
    env: dict[str, str] = {}
    for ins in DOCKERFILE.stage(FINAL):
        if ins.keyword == "ENV":
            for word in shlex.split(ins.value):
                name, sep, val = word.partition("=")
                assert sep, f"use ENV NAME=value (line {ins.line})"
                env[name] = val
    return env


def healthcheck() -> tuple[dict[str, str], list[str]]:
    flags, rest = _one("HEALTHCHECK").flags_and_rest()
    assert rest.startswith("CMD "), "HEALTHCHECK CMD …"
    return flags, exec_form(rest[4:].strip())


def healthcheck_path() -> str:
    code = healthcheck()[1][-1]
    paths = re.findall(r"'(/[\w/.-]*)'", code)
    assert len(paths) == 1, f"one URL path in the HEALTHCHECK command {code!r}"
    return paths[0]


# --- the CLI ---------------------------------------------------------------------------------------


def cli_command(argv: list[str]) -> Any:
    """Resolve ``velocitymesh a b --opt x`` to its (click) command and check its arguments parse.

    Duck-typed: Typer builds click objects, or those of the click copy it carries in newer versions."""
    from velocitymesh.cli import app

    assert argv[0] == "velocitymesh", argv
    cmd: Any = typer.main.get_command(app)
    ctx: Any = cmd.context_class(cmd, info_name="velocitymesh")
    rest = argv[1:]
    while hasattr(cmd, "get_command") and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(ctx, rest[0])
        assert sub is not None, f"`{' '.join(argv)}`: the CLI has no command {rest[0]!r} (under {ctx.info_name})"
        cmd, rest = sub, rest[1:]
        ctx = cmd.context_class(cmd, info_name=cmd.name, parent=ctx)
    assert not hasattr(cmd, "get_command"), f"`{' '.join(argv)}` names a command group, not a command"
    cmd.make_context(ctx.info_name, list(rest), parent=ctx.parent)  # raises on unknown options / missing args
    return cmd


def assert_cli_runs_help(argv: list[str]) -> None:
    from velocitymesh.cli import app

    result = CliRunner().invoke(app, [*argv[1:], "--help"])
    assert result.exit_code == 0, f"`{' '.join(argv)} --help` exited {result.exit_code}: {result.output}"


def process_commands() -> dict[str, list[str]]:
    return {name: shlex.split(cmd) for name, cmd in FLY["processes"].items()}


def velocitymesh_commands() -> list[tuple[str, list[str]]]:
    """Every `velocitymesh …` command the deploy files name, with where it is named."""
    cmds = [(f"fly process {name}", argv) for name, argv in process_commands().items() if argv[0] == "velocitymesh"]
    cmds.append(("fly release_command", shlex.split(FLY["deploy"]["release_command"])))
    cmds.append(("Dockerfile CMD", exec_form(_one("CMD").value)))
    return cmds


# --- tests: the Dockerfile -------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_slim_python() -> None:
    froms = [i for i in DOCKERFILE.instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "a builder stage and a runtime stage"
    for f in froms:
        image = DOCKERFILE.expand(f.value.split()[0])
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", image), image
    copies = [i.flags_and_rest() for i in DOCKERFILE.stage(FINAL) if i.keyword == "COPY"]
    from_builder = [rest for flags, rest in copies if flags.get("from") in DOCKERFILE.stages[:-1]]
    assert from_builder == ["/opt/venv /opt/venv"], "the runtime takes the built venv, nothing else"
    assert not [rest for flags, rest in copies if "from" not in flags], "no source in the runtime stage"
    for ins in DOCKERFILE.stage(FINAL):
        assert not (ins.keyword == "RUN" and "pip install" in ins.value), "install in the builder, not the runtime"


def test_dependencies_are_a_cached_layer_before_the_source(tmp_path: Path) -> None:
    builder = DOCKERFILE.stage(DOCKERFILE.stages[0])

    def index(pred: Any, what: str) -> int:
        hits = [n for n, i in enumerate(builder) if pred(i)]
        assert hits, f"the builder has no {what}"
        return hits[0]

    copy_meta = index(lambda i: i.keyword == "COPY" and set(i.value.split()[:-1]) == {"pyproject.toml",
                                                                                      "constraints.txt"},
                      "COPY pyproject.toml constraints.txt")
    install_deps = index(lambda i: i.keyword == "RUN" and "pip install -c constraints.txt -r" in i.value,
                         "dependency install with the constraints")
    copy_src = index(lambda i: i.keyword == "COPY" and i.value.split()[0] == "velocitymesh", "COPY velocitymesh")
    install_pkg = index(lambda i: i.keyword == "RUN" and re.search(r"pip install -c constraints\.txt \.(\s|$)",
                                                                    i.value), "package install")
    assert copy_meta < install_deps < copy_src < install_pkg
    # nothing copied between the metadata and the dependency install could invalidate that layer
    assert not [i for i in builder[copy_meta + 1:install_deps] if i.keyword in ("COPY", "ADD")]
    # the dependency list the builder extracts (run here, as /bin/sh runs it) is exactly pyproject's
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extract = builder[install_deps].value.split(" && ")[0]
    assert extract.startswith("python -c ") and extract.endswith("> /tmp/requirements.txt"), extract
    out = tmp_path / "requirements.txt"
    script = shlex.quote(sys.executable) + extract[len("python"):].replace("/tmp/requirements.txt", str(out))
    subprocess.run(["/bin/sh", "-c", script], cwd=ROOT, check=True, timeout=60)
    assert out.read_text().splitlines() == project["dependencies"]


def test_copied_paths_exist_and_are_in_the_build_context() -> None:
    ignored = dockerignore_patterns()
    for ins in DOCKERFILE.instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        flags, rest = ins.flags_and_rest()
        if "from" in flags:
            continue
        *sources, _dest = rest.split()
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile line {ins.line} copies {src}, which does not exist"
            assert not is_ignored(src, ignored), f"{src} is copied but .dockerignore leaves it out"
    # what `pip install .` needs to build the package: the readme pyproject names
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in " ".join(i.value for i in DOCKERFILE.stage(DOCKERFILE.stages[0]) if i.keyword == "COPY")


def test_runtime_runs_as_a_non_root_user_with_the_sandbox() -> None:
    final = DOCKERFILE.stage(FINAL)
    users = [i for i in final if i.keyword == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].value.split(":")[0]
    assert user not in ("root", "0"), "the server must not run as root"
    created = " ".join(i.value for i in final if i.keyword == "RUN")
    useradd = re.search(r"useradd\b([^&]*)", created)
    assert useradd, "the runtime stage creates its user"
    if user.isdigit():
        assert re.search(rf"--uid\s+{user}\b", useradd[1]), f"uid {user} is the user useradd creates"
    else:
        assert re.search(rf"\b{re.escape(user)}\s*$", useradd[1]), f"user {user} is the user useradd creates"
    cmd_line = _one("CMD").line
    assert users[-1].line < cmd_line and users[-1].line < _one("HEALTHCHECK").line
    assert "bubblewrap" in created, "python steps' sandbox (bwrap) is installed in the runtime"
    env = image_env()
    assert env["VM_HOME"] == "/data"
    assert "/opt/venv/bin" in env["PATH"].split(":")
    assert re.search(r"chown\b[^&]*\s/data\b", created), "the non-root user can write VM_HOME"


def test_healthcheck_uses_the_standard_library_not_curl() -> None:
    flags, argv = healthcheck()
    assert argv[:2] == ["python", "-c"], "the slim image has no curl: python -c with urllib"
    compile(argv[2], "<HEALTHCHECK>", "exec")
    assert {"interval", "timeout", "start-period", "retries"} <= set(flags)
    assert "PORT" in argv[2], "asks the port the server listens on"


# --- tests: .dockerignore --------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for our patterns: the last matching pattern wins; a directory pattern
    covers what is inside it; ``**`` matches any number of directories."""
    parts = Path(path).parts
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        variants = {pat, pat.replace("**/", "")}
        if any(fnmatch.fnmatchcase(p, v) for p in prefixes for v in variants) or (
            pat.startswith("**/") and any(fnmatch.fnmatchcase(part, pat[3:]) for part in parts)
        ):
            verdict = not negate
    return verdict


@pytest.mark.parametrize("path", [".venv", ".velocitymesh", ".git", ".env", ".venv/bin/python",
                                  "velocitymesh/__pycache__/x.pyc", "notebooks/.velocitymesh/velocitymesh.db"])
def test_dockerignore_keeps_local_state_out(path: str) -> None:
    assert is_ignored(path, dockerignore_patterns()), f".dockerignore should exclude {path}"


# --- tests: fly.toml -------------------------------------------------------------------------------


def test_fly_toml_declares_the_process_groups_and_release_command() -> None:
    procs = process_commands()
    assert procs["web"] == ["velocitymesh", "serve"]
    assert procs["worker"] == ["velocitymesh", "worker"]
    assert procs["prefect"][:3] == ["prefect", "server", "start"]
    assert FLY["deploy"]["release_command"] == "velocitymesh db upgrade"
    assert exec_form(_one("CMD").value) == procs["web"], "the image's CMD is the web process"
    assert FLY["env"]["VM_ENV"] == "production"
    assert FLY["build"].get("dockerfile", "Dockerfile") == "Dockerfile"


def test_fly_toml_service_checks_and_autoscaling() -> None:
    svc = FLY["http_service"]
    assert svc["processes"] == ["web"], "only the web group is public"
    assert svc["auto_start_machines"] is True
    assert svc["auto_stop_machines"] in ("stop", "suspend", True)
    assert svc["min_machines_running"] >= 1
    conc = svc["concurrency"]
    assert conc["type"] in ("requests", "connections") and 0 < conc["soft_limit"] <= conc["hard_limit"]
    checks = svc["checks"]
    assert checks and all(c["path"] == healthcheck_path() == "/healthz" for c in checks)
    assert all(c["method"].upper() == "GET" for c in checks)
    # every process group has a machine size and every size names real groups
    sized = [p for vm in FLY["vm"] for p in vm["processes"]]
    assert sorted(sized) == sorted(FLY["processes"])


def test_ports_agree() -> None:
    port = FLY["http_service"]["internal_port"]
    exposed = [int(p.split("/")[0]) for p in _one("EXPOSE").value.split()]
    assert exposed == [port]
    assert int(image_env()["PORT"]) == port == int(FLY["env"]["PORT"])
    assert serve_default_port() == port, "`velocitymesh serve` listens on the port the proxy sends to"


def serve_default_port() -> int:
    """The port `velocitymesh serve` uses when neither --port nor $PORT is given: the option's default,
    else VM_PORT's default. (That $PORT wins is shown by test_image_starts_like_a_fly_machine.)"""
    from velocitymesh.settings import Settings

    cmd = cli_command(["velocitymesh", "serve"])
    ports = [p for p in cmd.params if p.name == "port"]
    assert ports, "`velocitymesh serve` has a --port option"
    opt = ports[0]
    envvars = [opt.envvar] if isinstance(opt.envvar, str) else list(opt.envvar or [])
    assert "PORT" in envvars or "$PORT" in (getattr(opt, "help", None) or ""), \
        "`velocitymesh serve --port` says it falls back to $PORT (Fly sets it)"
    default = opt.default() if callable(opt.default) else opt.default
    if default is None:
        default = Settings.model_fields["port"].default
    return int(default)


# --- tests: the commands exist and work ---------------------------------------------------------


@pytest.mark.parametrize(("where", "argv"), velocitymesh_commands(), ids=[w for w, _ in velocitymesh_commands()])
def test_named_commands_exist_in_the_cli(where: str, argv: list[str]) -> None:
    cli_command(argv)
    assert_cli_runs_help(argv)


def test_prefect_console_script_is_installed() -> None:
    assert shutil.which("prefect", path=str(VENV_BIN)), "the `prefect` process needs Prefect's CLI in the image"


@pytest.mark.prefect
def test_prefect_server_command_takes_the_options_fly_toml_gives() -> None:
    argv = process_commands()["prefect"]
    exe = shutil.which(argv[0], path=str(VENV_BIN))
    assert exe
    done = subprocess.run([exe, *argv[1:3], "--help"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    options = [a for a in argv[3:] if a.startswith("--")]
    for opt in options:
        assert opt in done.stdout, f"`prefect server start` has no {opt}"


def test_release_command_migrates_a_fresh_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from velocitymesh.cli import app
    from velocitymesh.settings import get_settings

    monkeypatch.setenv("VM_HOME", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        argv = shlex.split(FLY["deploy"]["release_command"])
        for _ in range(2):  # idempotent: every deploy runs it
            result = CliRunner().invoke(app, argv[1:])
            assert result.exit_code == 0, result.output
    finally:
        get_settings.cache_clear()
    assert (tmp_path / "data" / "velocitymesh.db").exists()


def test_health_path_answers_200_on_the_real_app(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from velocitymesh.server.app import create_app
    from velocitymesh.settings import Settings

    path = healthcheck_path()
    assert {c["path"] for c in FLY["http_service"]["checks"]} == {path}
    app = create_app(Settings(home=tmp_path / "vmhome", env="test"))
    with TestClient(app) as client:  # runs the lifespan, as uvicorn does
        response = client.get(path)
    assert response.status_code == 200, response.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def machine_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment a Fly machine gives the image: Dockerfile ENV + fly.toml [env] + secrets,
    with VM_HOME and PORT moved somewhere free on this machine."""
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if not k.startswith("VM_")}
    env.update(image_env())
    env.update(FLY["env"])
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env["VM_HOME"] = str(tmp_path / "data")
    env["PORT"] = str(_free_port())
    env["VM_SECRET_KEY"] = Fernet.generate_key().decode()
    if shutil.which("bwrap") is None:  # the image has it; this machine may not
        env["VM_PYTHON_ISOLATION"] = "process"
    (tmp_path / "data").mkdir()
    yield env


def test_image_starts_like_a_fly_machine(machine_env: dict[str, str], tmp_path: Path) -> None:
    """release_command, then the web process, then Docker's HEALTHCHECK command until it passes."""
    release = shlex.split(FLY["deploy"]["release_command"])
    done = subprocess.run(release, env=machine_env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(exec_form(_one("CMD").value), env=machine_env, cwd=tmp_path, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        check = healthcheck()[1]
        check[0] = sys.executable if check[0] == "python" else check[0]
        deadline = time.monotonic() + 60
        while True:
            probe = subprocess.run(check, env=machine_env, capture_output=True, text=True, timeout=30)
            if probe.returncode == 0:
                break
            assert server.poll() is None, f"the server exited: {(tmp_path / 'server.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"HEALTHCHECK never passed: {probe.stderr[-500:]}"
            time.sleep(0.5)
        # Fly stops a machine with kill_signal and waits kill_timeout before SIGKILL.
        kill_signal = getattr(signal, FLY.get("kill_signal", "SIGINT"))
        timeout = float(str(FLY.get("kill_timeout", "5s")).rstrip("s"))
        server.send_signal(kill_signal)
        server.wait(timeout=timeout)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


# --- tests: the README ----------------------------------------------------------------------------


def deploy_section() -> str:
    m = re.search(r"^## Deploy to Fly\.io\n(.*?)(?=^## )", README, re.S | re.M)
    assert m, "README has a '## Deploy to Fly.io' section"
    return m[1]


def test_readme_deploy_section_gives_the_commands() -> None:
    text = deploy_section()
    for needed in ("fly launch", "fly postgres create", "fly postgres attach", "--variable-name VM_DATABASE_URL",
                   "fly redis create", "VM_REDIS_URL", "fly secrets set", "VM_SECRET_KEY", "fly deploy",
                   "fly scale count", "PREFECT_API_URL"):
        assert needed in text, f"the deploy section lacks {needed!r}"
    assert README.index("## Deploy to Fly.io") < README.index("## Architecture")


def test_readme_deploy_section_names_only_real_cli_commands() -> None:
    cmds = re.findall(r"^\s*(?:\$\s*)?(velocitymesh [a-z][\w -]*?)\s*(?:#.*)?$", deploy_section(), re.M)
    cmds += re.findall(r"\$\((velocitymesh [a-z][\w -]*)\)", deploy_section())
    cmds += re.findall(r"--command \"(velocitymesh [^\"]+)\"", deploy_section())
    assert cmds, "the deploy section shows the velocitymesh commands it uses"
    for cmd in cmds:
        cli_command(shlex.split(cmd))
