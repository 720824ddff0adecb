"""The CLI's numeric options check their ranges before any work starts (click's exit code 2)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dense_plantain.cli import main

# (command line, the value click must refuse, the range it names)
OUT_OF_RANGE = [
    (["analyze", "cap.safetensors", "-o", "out", "--splits", "0"], "0", "x>=1"),
    (["analyze", "cap.safetensors", "-o", "out", "--seed", str(2**63)], str(2**63), "0<=x<=9223372036854775807"),
    (["analyze", "cap.safetensors", "-o", "out", "--bootstrap", "-1"], "-1", "x>=0"),
    (["capture", "--prompts", "p.toml", "--out", "c", "--dist-timeout", "0"], "0.0", "x>0"),
    (["capture", "--prompts", "p.toml", "--out", "c", "--batch-size", "0"], "0", "x>=1"),
    (["patch", "--prompts", "p.toml", "--out", "p", "--max-kept-mib", "-1"], "-1.0", "x>=0"),
    (["make-tiny-model", "folder", "--seed", "-3"], "-3", "x>=0"),
]


@pytest.mark.parametrize(("argv", "value", "bounds"), OUT_OF_RANGE, ids=lambda v: v[-2] if isinstance(v, list) else "")
def test_numeric_options_refuse_out_of_range_values(argv, value, bounds):
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 2, res.output
    assert f"{value} is not in the range {bounds}" in res.output


def test_help_shows_a_numeric_option_s_default_and_range():
    text = " ".join(CliRunner().invoke(main, ["capture", "--help"]).output.split())
    assert "--dist-timeout MINUTES" in text
    assert "[default: 60.0; x>0]" in text
    assert "--weights-seed INTEGER RANGE" in text
