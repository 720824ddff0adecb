"""The README's notebook path: pipeline -> capture_pairs -> analyze -> write_results, the same folder as the CLI.

The reference is the CLI itself (`capture` then `analyze` on the tiny pipeline's folder, from a
fresh load): the notebook's in-memory capture must hold the same values, and its results folder
the same numbers, as the two commands write.
"""

from __future__ import annotations

import json

import numpy as np

from tiny_klein import PAIRS, SIZE, tiny_dir, tiny_loaded, write_probe

# Where and when each run was: the capture's provenance (file path and hash, clocks, command line)
# and the analysis's own time. Every other field of results.json must be equal.
WHERE_AND_WHEN = ("sources", "created")


def test_notebook_sequence_writes_the_cli_results_folder(tmp_path):
    from click.testing import CliRunner

    from dense_plantain import analysis, report
    from dense_plantain.capture import CaptureSettings, capture_pairs
    from dense_plantain.cli import main
    from dense_plantain.store import read_capture

    probe = write_probe(tmp_path / "probe.toml", PAIRS)
    opts = {"permutations": 200, "seed": 3, "splits": 8}

    # the notebook: a loaded pipeline to a results folder, in memory until the folder is written
    capture = capture_pairs(tiny_loaded().pipe, probe, settings=CaptureSettings(height=SIZE, width=SIZE))
    result = analysis.analyze(capture, **opts)
    written = report.write_results(result, tmp_path / "notebook")

    # the CLI: the same probe and settings, from the pipeline's folder
    runner = CliRunner()
    cap_file = tmp_path / "cli.safetensors"
    common = ["--height", str(SIZE), "--width", str(SIZE), "--device", "cpu", "--quiet"]
    res = runner.invoke(
        main, ["capture", "--model", str(tiny_dir()), "--prompts", str(probe), "--out", str(cap_file), *common]
    )
    assert res.exit_code == 0, res.output
    flags = ["--permutations", "200", "--seed", "3", "--splits", "8", "--quiet"]
    res = runner.invoke(main, ["analyze", str(cap_file), "--out", str(tmp_path / "cli"), *flags])
    assert res.exit_code == 0, res.output

    on_disk = read_capture(cap_file)
    # bit-identical: the shared load keeps its weights (tests/test_global_state.py)
    np.testing.assert_array_equal(on_disk.a, capture.a)
    np.testing.assert_array_equal(on_disk.b, capture.b)
    for key in ("a_input", "b_input"):
        np.testing.assert_array_equal(on_disk.extra[key], capture.extra[key])
    names = sorted(p.name for p in written)
    assert names == sorted(p.name for p in (tmp_path / "cli").iterdir())

    # The same capture through the notebook API and through the CLI: the same results folder.
    same = report.write_results(analysis.analyze(on_disk, **opts), tmp_path / "notebook-same")
    assert sorted(p.name for p in same) == names
    assert (tmp_path / "notebook-same" / "units.csv").read_bytes() == (tmp_path / "cli" / "units.csv").read_bytes()
    mine = json.loads((tmp_path / "notebook-same" / "results.json").read_text(encoding="utf-8"))
    cli = json.loads((tmp_path / "cli" / "results.json").read_text(encoding="utf-8"))
    assert {k: v for k, v in mine.items() if k not in WHERE_AND_WHEN} == {
        k: v for k, v in cli.items() if k not in WHERE_AND_WHEN
    }
    (notebook_source,), (cli_source,) = mine["sources"], cli["sources"]
    assert notebook_source["path"] == cli_source["path"] == str(cap_file)
    in_memory = json.loads((tmp_path / "notebook" / "results.json").read_text(encoding="utf-8"))
    assert in_memory["sources"][0]["path"] is None and in_memory["n_pairs"] == len(PAIRS)
    for key in ("n_pairs", "n_units"):
        assert notebook_source[key] == cli_source[key]
    for key in ("settings", "pairs", "blocks"):
        assert notebook_source["metadata"][key] == cli_source["metadata"][key], key
    assert mine["n_pairs"] == len(PAIRS) and mine["thresholds"]
