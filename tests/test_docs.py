"""Keep the docs honest: commands exist, links resolve, cited tests exist, the example envelopes decode."""

from __future__ import annotations

import base64
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from typer.testing import CliRunner

from kernel import wire
from printfleet.cli import app

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted(
    [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "deploy").rglob("*.md")],
    key=lambda p: str(p),
)

FENCE_RE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)
INLINE_RE = re.compile(r"`(printfleet [^`]+)`")
LINK_RE = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CITED_TEST_RE = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")
SHELL_BREAKS = {"|", "||", "&&", ";", ";;", "&", ">", ">>", "<", ">&", "(", ")"}
#: Options of the root callback: they may come before the command.
GLOBAL_OPTS_WITH_VALUE = {"--data-dir", "--server", "--token"}
GLOBAL_FLAGS = {"--verbose", "-v"}


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# Typer builds click-style command objects (its own vendored click in recent versions): use them by
# shape, not by class.
Command = Any


def _root() -> Command:
    cmd = typer.main.get_command(app)
    assert _subcommands(cmd), "the printfleet app has no subcommands"
    return cmd


def _subcommands(cmd: Command) -> dict[str, Command] | None:
    commands = getattr(cmd, "commands", None)
    return commands if isinstance(commands, dict) else None


def _options(cmd: Command) -> set[str]:
    out = {"--help"}
    for param in cmd.params:
        if getattr(param, "param_type_name", None) == "option":
            out.update(param.opts)
            out.update(param.secondary_opts)
    return out


# -- finding `printfleet ...` command lines -----------------------------------------------------


def _code_lines(text: str) -> list[str]:
    """Lines of fenced code blocks (continuations joined, comments dropped) and inline `printfleet ...`."""
    lines: list[str] = []
    for match in FENCE_RE.finditer(text):
        if match.group(1) in ("json", "toml", "ini"):
            continue
        joined = re.sub(r"\\\n\s*", " ", match.group(2))
        for line in joined.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                lines.append(line)
    lines.extend(INLINE_RE.findall(text))
    return lines


def _segments(line: str) -> list[list[str]]:
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        tokens = line.split()
    segments: list[list[str]] = [[]]
    for tok in tokens:
        if tok in SHELL_BREAKS:
            segments.append([])
        else:
            segments[-1].append(tok)
    return [s for s in segments if s]


def _printfleet_args(segment: list[str]) -> list[str] | None:
    """The arguments after `printfleet` when the segment runs it (maybe via sudo/env), else None."""
    i = 0
    if segment[0] == "$":
        i += 1
    if i < len(segment) and segment[i] == "sudo":
        i += 1
        while i < len(segment) and segment[i].startswith("-"):
            i += 2 if segment[i] in ("-u", "-g") else 1
    if i < len(segment) and segment[i] == "env":
        i += 1
    while i < len(segment) and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", segment[i]):
        i += 1
    if i < len(segment) and segment[i].rsplit("/", 1)[-1] == "printfleet":
        return segment[i + 1 :]
    return None


def _command_lines() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for doc in DOCS:
        for line in _code_lines(doc.read_text(encoding="utf-8")):
            for segment in _segments(line):
                args = _printfleet_args(segment)
                if args:
                    found.append((f"{_rel(doc)}: {line}", args))
    return found


COMMAND_LINES = _command_lines()


def _resolve(args: list[str]) -> tuple[list[str], Command, list[str]]:
    """Walk the command tree: (command path, the command, the options used on the line)."""
    root = _root()
    i = 0
    used: list[str] = []
    while i < len(args) and args[i].startswith("-"):
        used.append(args[i].split("=", 1)[0])
        i += 2 if args[i] in GLOBAL_OPTS_WITH_VALUE else 1
    path: list[str] = []
    cmd = root
    while (commands := _subcommands(cmd)) is not None:
        assert i < len(args), f"no command after {' '.join(['printfleet', *path])}"
        name = args[i]
        sub = commands.get(name)
        assert sub is not None, (
            f"`printfleet {' '.join([*path, name])}` is not a command; known: {', '.join(sorted(commands))}"
        )
        path.append(name)
        cmd = sub
        i += 1
    used.extend(a.split("=", 1)[0] for a in args[i:] if a.startswith("-") and a != "-")
    return path, cmd, used


@pytest.mark.slow  # runs the CLI for every command the docs show
def test_the_docs_show_printfleet_commands() -> None:
    assert len(COMMAND_LINES) > 20  # the parser still finds the examples
    shown = {tuple(_resolve(args)[0]) for _, args in COMMAND_LINES}
    for path in [
        ("up",),
        ("devices", "add"),
        ("agent", "run"),
        ("print",),
        ("jobs", "show"),
        ("broker", "export"),
    ]:
        assert path in shown, f"no doc shows `printfleet {' '.join(path)}`"


@pytest.mark.parametrize(("where", "args"), COMMAND_LINES, ids=[w for w, _ in COMMAND_LINES])
def test_every_command_in_the_docs_exists(where: str, args: list[str]) -> None:
    path, cmd, used = _resolve(args)
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, f"{where}: `printfleet {' '.join(path)} --help` failed:\n{result.output}"
    known = _options(cmd) | _options(_root())
    unknown = [opt for opt in used if opt not in known]
    assert not unknown, f"{where}: `printfleet {' '.join(path)}` has no option {', '.join(unknown)}"


def test_a_wrong_command_is_caught() -> None:
    with pytest.raises(AssertionError, match="not a command"):
        _resolve(["jobs", "frobnicate", "JOB"])
    assert _printfleet_args(shlex.split("sudo -u printfleet env A=b /opt/printfleet/bin/printfleet up")) == [
        "up"
    ]
    assert _printfleet_args(shlex.split("chown printfleet: /var/lib/printfleet")) is None
    assert [_printfleet_args(s) for s in _segments("printfleet devices list; printfleet jobs list>x")] == [
        ["devices", "list"],
        ["jobs", "list"],
        None,
    ]


# -- links ---------------------------------------------------------------------------------------


def _slugs(markdown: str) -> set[str]:
    """GitHub's heading anchors."""
    out: set[str] = set()
    text = FENCE_RE.sub("", markdown)
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


LINKS = [
    (doc, target)
    for doc in DOCS
    for target in LINK_RE.findall(FENCE_RE.sub("", doc.read_text(encoding="utf-8")))
    if not re.match(r"^[a-z]+:", target)
]


@pytest.mark.parametrize(("doc", "target"), LINKS, ids=[f"{_rel(d)}->{t}" for d, t in LINKS])
def test_relative_links_resolve(doc: Path, target: str) -> None:
    path_part, _, anchor = target.partition("#")
    dest = (doc.parent / path_part).resolve() if path_part else doc
    assert dest.exists(), f"{_rel(doc)}: link to {target} points at nothing"
    if anchor and dest.suffix == ".md":
        assert anchor in _slugs(dest.read_text(encoding="utf-8")), (
            f"{_rel(doc)}: no heading #{anchor} in {dest.name}"
        )


def test_every_doc_is_linked_from_the_readme() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for doc in (REPO / "docs").glob("*.md"):
        assert f"(docs/{doc.name})" in readme, f"README.md does not link docs/{doc.name}"


# -- cited tests ---------------------------------------------------------------------------------

CITED = sorted({(m[0], m[1]) for doc in DOCS for m in CITED_TEST_RE.findall(doc.read_text(encoding="utf-8"))})


@pytest.mark.parametrize(("path", "name"), CITED, ids=[f"{p}::{n}" for p, n in CITED])
def test_cited_tests_exist(path: str, name: str) -> None:
    source = REPO / path
    assert source.exists(), f"cited test file {path} does not exist"
    assert re.search(rf"^(async )?def {name}\(", source.read_text(encoding="utf-8"), re.M), (
        f"{path} has no {name}"
    )


# -- the protocol examples -----------------------------------------------------------------------


def _protocol_section(title: str) -> str:
    text = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/protocol.md has no '## {title}' section"
    return match.group(1)


def _examples() -> tuple[list[str], str]:
    section = _protocol_section("Example envelopes")
    blocks = [m.group(2) for m in FENCE_RE.finditer(section) if m.group(1) == "json"]
    assert len(blocks) == 2, "expected two ```json examples: a job.report and a signed report.ack"
    return blocks, section


def test_example_envelopes_decode() -> None:
    blocks, _ = _examples()
    report = wire.decode(blocks[0].strip().encode())
    assert report.type is wire.MsgType.JOB_REPORT
    assert report.parsed(wire.JobReport).state is wire.JobState.PRINTED
    # the first example is shown exactly as it goes on the wire: canonical JSON
    assert report.encode() == blocks[0].strip().encode()
    ack = wire.decode(blocks[1].encode())
    assert ack.type is wire.MsgType.REPORT_ACK
    assert ack.parsed(wire.ReportAck).report_ids == (report.parsed(wire.JobReport).report_id,)


def test_example_signature_follows_the_documented_rule() -> None:
    blocks, section = _examples()
    key_b64 = re.search(r"public key\s+`([A-Za-z0-9+/=]{44})`", section)
    assert key_b64, "the public key of the signed example is not in the section"
    keys = wire.parse_public_keys([key_b64.group(1)])
    ack = wire.decode(blocks[1].encode())
    ack.verify(keys)  # the library agrees
    # ...and so does the rule as the page states it: Ed25519 over the canonical JSON of every field but sig
    obj = json.loads(blocks[1])
    sig = base64.b64decode(obj.pop("sig"))
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(key_b64.group(1)))
    pub.verify(sig, canonical)
    shown = [m.group(2) for m in FENCE_RE.finditer(section) if m.group(1) == ""]
    assert shown and shown[-1].strip().encode() == canonical == ack.signing_bytes()
    assert obj["kid"] == next(iter(keys))


def test_protocol_page_states_the_contracts_numbers() -> None:
    text = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert f"`MAX_MESSAGE_BYTES` = {wire.MAX_MESSAGE_BYTES}" in text
    assert f"`MAX_JOB_BYTES` = {wire.MAX_JOB_BYTES}" in text
    for msg_type in wire.MsgType:
        assert f"`{msg_type.value}`" in text, f"message type {msg_type.value} is not documented"
    for state in wire.JobState:
        assert f"`{state.value}`" in text, f"job state {state.value} is not documented"
    for field in wire.Envelope.model_fields:
        assert f"| `{field}` |" in text, f"envelope field {field} is not in the table"
    for peer in (
        wire.Peer(role=wire.Role.CONTROLLER, name="main"),
        wire.Peer(role=wire.Role.DEVICE, name="x"),
    ):
        for rule in wire.access_rules(peer):
            shown = rule.filter.replace("/dev/x/", "/dev/X/")
            assert f"`{shown}`" in text, f"ACL filter {rule.filter} is not documented"
