"""Unit layouts of the real Klein 4B transformer (from its config alone) and the `units` command.

Expected counts are derived here from PROTOCOL.md's architecture numbers, not from the code.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from dense_plantain.capture.model import KLEIN_4B_CONFIG, load_transformer_config
from dense_plantain.cli import main
from dense_plantain.errors import ModelLoadError
from dense_plantain.units import build_layout

# PROTOCOL.md: 5 joint + 20 single blocks, 24 heads x 128, mlp_ratio 3.0 (hidden 9216)
N_JOINT, N_SINGLE, HEADS, HEAD_DIM = 5, 20, 24, 128
INNER, MLP = HEADS * HEAD_DIM, 9216


@pytest.fixture(scope="module")
def klein_config():
    config, _ = load_transformer_config("klein-4b")
    return config


def test_bundled_config_matches_protocol(klein_config):
    assert (klein_config["num_layers"], klein_config["num_single_layers"]) == (N_JOINT, N_SINGLE)
    assert (klein_config["num_attention_heads"], klein_config["attention_head_dim"]) == (HEADS, HEAD_DIM)
    assert klein_config["joint_attention_dim"] == 3 * 2560  # Qwen3-4B hidden x layers (9, 18, 27)
    assert klein_config["in_channels"] == 128 and klein_config["guidance_embeds"] is False


def test_plantain_layout_has_16320_units(klein_config):
    layout = build_layout(klein_config, "plantain")
    joint, single = INNER // 16, (INNER + MLP) // 16
    assert layout.n_units == N_JOINT * joint + N_SINGLE * single == 16_320
    counts = layout.counts()
    assert counts["mlp"] == N_SINGLE * MLP // 16 == 11_520
    assert counts["attention"] == 16_320 - 11_520
    assert [b.n_units for b in layout.blocks] == [192] * 5 + [768] * 20


def test_heads_layout_has_4080_units(klein_config):
    layout = build_layout(klein_config, "heads")
    per_joint = 2 * HEADS  # image heads at to_out.0, text heads at to_add_out
    per_single = 2 * HEADS + 2 * MLP // HEAD_DIM  # attention and MLP, each image and text apart
    assert layout.n_units == N_JOINT * per_joint + N_SINGLE * per_single == 4_080
    counts = layout.counts()
    assert counts["region:image"] == counts["region:text"] == 2_040


@pytest.mark.parametrize("name", ["plantain", "heads"])
def test_layout_fits_the_real_transformer_on_meta(klein_config, name):
    """Built on the meta device (no memory): every hooked module exists and is read whole."""
    from diffusers import Flux2Transformer2DModel

    with torch.device("meta"):
        model = Flux2Transformer2DModel.from_config(klein_config)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e9 - 3.88) < 0.01  # PROTOCOL: 3.88 B
    modules = dict(model.named_modules())
    layout = build_layout(klein_config, name)
    covered: dict[tuple[str, str], set[int]] = {}
    for r in layout.readouts:
        linear = modules[r.module]
        assert isinstance(linear, torch.nn.Linear)
        assert r.col_stop <= linear.in_features
        cols = covered.setdefault((r.module, r.region), set())
        new = set(range(r.col_start, r.col_stop))
        assert not cols & new
        cols |= new
    # every column of every hooked input is in some unit (per region)
    for (module, _), cols in covered.items():
        assert cols == set(range(modules[module].in_features))


def test_config_sources(tmp_path):
    bare = tmp_path / "config.json"
    bare.write_text(KLEIN_4B_CONFIG.read_text())
    assert load_transformer_config(str(bare))[0]["num_single_layers"] == 20
    pipeline = tmp_path / "pipe"
    (pipeline / "transformer").mkdir(parents=True)
    (pipeline / "transformer" / "config.json").write_text(KLEIN_4B_CONFIG.read_text())
    assert load_transformer_config(str(pipeline))[0]["num_layers"] == 5
    wrong = tmp_path / "vae.json"
    wrong.write_text(json.dumps({"_class_name": "AutoencoderKLFlux2", "block_out_channels": [128]}))
    with pytest.raises(ModelLoadError, match="describes a AutoencoderKLFlux2"):
        load_transformer_config(str(wrong))
    with pytest.raises(ModelLoadError, match="neither an existing file or folder"):
        load_transformer_config("klein")


def test_units_command_prints_counts_and_caveat():
    res = CliRunner().invoke(main, ["units", "--model", "klein-4b"], terminal_width=160)
    assert res.exit_code == 0, res.output
    assert "16,320" in res.output and "11,520" in res.output
    assert "576 of the 768 slices per block are SwiGLU MLP activations" in res.output
    assert "pools text and image tokens" in res.output
    heads = CliRunner().invoke(main, ["units", "--model", "klein-4b", "--layout", "heads"], terminal_width=160)
    assert heads.exit_code == 0 and "4,080" in heads.output


def test_units_command_lists_names_and_refuses_bad_models(tmp_path):
    bare = tmp_path / "c.json"
    bare.write_text(KLEIN_4B_CONFIG.read_text())
    res = CliRunner().invoke(main, ["units", "--model", str(bare), "--names"], terminal_width=160)
    assert res.exit_code == 0
    assert "16319\tsingle[19].mlp.c575" in res.output and "0\tjoint[0].h0.s0" in res.output
    bad = CliRunner().invoke(main, ["units", "--model", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output and "neither an existing file" in bad.output
