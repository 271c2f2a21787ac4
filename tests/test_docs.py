"""Every CLI command is documented in docs/, and the README gives the two commands."""

from __future__ import annotations

from pathlib import Path

import click

from loader.cli import cli

REPO = Path(__file__).resolve().parent.parent


def _command_paths(group: click.Group, prefix: str = "lake") -> list[str]:
    paths = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        paths.append(path)
        if isinstance(command, click.Group):
            paths += _command_paths(command, path)
    return paths


def test_every_command_is_documented_in_docs() -> None:
    docs = "\n".join(p.read_text() for p in (REPO / "docs").glob("*.md"))
    missing = [p for p in _command_paths(cli) if f"`{p}" not in docs]
    assert not missing, f"commands without a section in docs/: {missing}"


def test_every_command_has_help_text() -> None:
    for name, command in cli.commands.items():
        assert command.help and command.help.strip(), f"lake {name} has no help text"


def test_readme_gives_the_two_commands_and_ci_calls_the_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()
