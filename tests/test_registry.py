"""Plugin discovery through entry points: built-ins, a third-party package, duplicates, breakage."""

from __future__ import annotations

import pytest

from vlp.cli import main
from vlp.core.recipe import load_recipe
from vlp.core.trainer import train
from vlp.plugins import PluginError, find, list_entries, load


def test_builtins_come_from_the_package_entry_points():
    entry = find("objective", "itc")
    assert entry.distribution == "vlp"
    assert load("objective", "itc").__name__ == "ITC"


def test_unknown_name_lists_installed():
    with pytest.raises(PluginError, match=r"unknown objective 'nope' \(installed: .*itc"):
        find("objective", "nope")


def test_third_party_plugin_is_listed(plugin_dirs, capsys):
    plugin_dirs("thirdparty")
    entry = find("objective", "uniformity")
    assert (entry.distribution, entry.version) == ("vlp-uniformity", "0.2.0")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "uniformity" in ln)
    assert "objective" in line and "vlp-uniformity 0.2.0" in line
    assert "uniformity loss" in line.lower()


def test_third_party_plugin_trains(plugin_dirs, write_recipe, tmp_path):
    plugin_dirs("thirdparty")
    path = write_recipe("""
        _base_: tiny_base.yaml
        objectives:
          itc: {weight: 1.0}
          uniformity: {weight: 0.5, t: 2.0}
    """)
    result = train(load_recipe(path), out=tmp_path / "run")
    assert result.steps == 4
    assert "loss/uniformity" in result.last_metrics
    import torch
    from vlp_uniformity import uniformity_loss  # the fixture's function, vs a brute-force sum
    x = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    ref = torch.log(sum(torch.exp(-2 * (x[i] - x[j]).pow(2).sum())
                        for i in range(5) for j in range(5) if i != j) / 20)
    assert torch.allclose(uniformity_loss(x), ref, atol=1e-6)


def test_duplicate_name_names_both_distributions(plugin_dirs):
    plugin_dirs("duplicate")
    with pytest.raises(PluginError) as err:
        load("objective", "itc")
    assert "vlp 0.1.0" in str(err.value) and "vlp-dupe 1.0" in str(err.value)


def test_broken_plugin_breaks_only_recipes_using_it(plugin_dirs, write_recipe, capsys):
    plugin_dirs("broken")
    assert "broken" in list_entries("objective")
    assert main(["plugins"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.split()[1] == "broken")
    assert "BROKEN" in line and "a_module_that_does_not_exist" in line
    ok = write_recipe("_base_: tiny_base.yaml\nobjectives: {itc: {weight: 1}}\n", "ok.yaml")
    assert load_recipe(ok).objectives.keys() == {"itc"}
    bad = write_recipe("_base_: tiny_base.yaml\nobjectives: {broken: {weight: 1}}\n", "bad.yaml")
    assert main(["recipe", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "objectives.broken" in err and "failed to load" in err
