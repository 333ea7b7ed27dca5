"""Know the parts without reading code: plugin parameters, docs/plugins.md, --version, help."""

from __future__ import annotations

import argparse
from importlib.metadata import version
from pathlib import Path

import pytest

from vlp.cli import _main_parser, _train_parser, main
from vlp.plugins import KINDS, list_entries
from vlp.plugins.describe import markdown, parameters, type_name

REPO = Path(__file__).parent.parent


def test_docs_plugins_md_is_up_to_date():
    assert (REPO / "docs" / "plugins.md").read_text() == markdown(), \
        "regenerate with: vlp plugins --markdown > docs/plugins.md"


def test_every_builtin_parameter_has_a_one_line_doc():
    missing = [f"{kind} {name}.{p.name}" for kind in KINDS
               for name, entry in list_entries(kind).items() if entry.distribution == "vlp"
               for p in parameters(entry.load()) if not p.doc]
    assert not missing, missing


def test_plugins_name_prints_types_defaults_and_docs(capsys):
    assert main(["plugins", "itc"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("itc (objective, vlp ")
    assert "  init_temperature  float (> 0) = 0.07\n" in out
    assert "Initial softmax temperature (learnable)." in out
    assert main(["plugins", "mlm"]) == 0  # a required parameter
    assert "  text_view   str = required\n" in capsys.readouterr().out


def test_unknown_plugin_name_lists_the_names(capsys):
    assert main(["plugins", "itcc"]) == 2
    err = capsys.readouterr().err
    assert "no plugin named 'itcc' (installed: " in err and "itc, " in err


def test_type_names_read_like_a_recipe():
    from typing import Literal

    assert type_name(int | None) == "int | None"
    assert type_name(Literal["cls", "mean"]) == "'cls' | 'mean'"
    assert type_name(tuple[float, float]) == "tuple[float, float]"


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"vlp {version('vlp')}\n"


def _actions(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield f"{path} {choice.dest}", choice.help
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action.help


def test_every_cli_option_has_help_text():
    found = [*_actions(_main_parser(), "vlp"), *_actions(_train_parser(), "vlp-train")]
    assert len(found) > 20
    assert [name for name, text in found if not text] == []
