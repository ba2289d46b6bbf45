"""``python -m diml.explain`` end to end on a tiny checkpoint, and its errors."""

import json
import subprocess
import sys

import pytest
import torch
from explain_helpers import TINY_CONFIG, png_array

from diml.explain import explain_images, load_checkpoint
from diml.explain.cli import main
from diml.explain.images import open_image
from diml.models import build_model


def test_cli_writes_figures_and_json_that_agree_with_the_api(tmp_path, tiny_checkpoint, gallery, capsys):
    checkpoint, model = tiny_checkpoint
    query, folder = gallery
    out = tmp_path / "out"
    code = main(["--checkpoint", str(checkpoint), "--query", str(query), "--gallery", str(folder), "--top", "3",
                 "--out", str(out), "--exact"])
    assert code == 0
    printed = capsys.readouterr().out.split()
    expected = ["retrieval.png", "flow_01.png", "explanation_01.json", "flow_02.png", "explanation_02.json",
                "flow_03.png", "explanation_03.json", "results.json"]
    assert [p.split("/")[-1] for p in printed] == expected
    assert png_array(out / "retrieval.png").std() > 20 and png_array(out / "flow_01.png").std() > 20
    results = json.loads((out / "results.json").read_text())
    assert results["model_config"] == TINY_CONFIG and results["image_size"] == 32
    assert len(results["before"]) == len(results["after"]) == 3
    assert {r["image_id"] for r in results["before"]} <= {"g0.png", "g1.png", "g2.png", "g3.png", "sub/g9.png"}
    finals = [r["final_score"] for r in results["after"]]
    assert finals == sorted(finals, reverse=True)  # all 5 gallery images are re-ranked (depth 100 > 5)
    best = json.loads((out / "explanation_01.json").read_text())
    assert best["ref_id"] == results["after"][0]["image_id"] and best["exact_plan"] is not None
    # the same pair explained through the Python API with the original model
    reference = explain_images(model, open_image(query), open_image(folder / best["ref_id"]), image_size=32)
    # float32 embeddings of a 6-image batch (CLI) and of a 2-image batch (API): the convolutions and the head's GEMM
    # may take other kernels (reduction orders) per batch size, so the embeddings agree to ~1e-6 relative, not
    # bit for bit; both scores are cosines (or cosine-weighted, matched in float64 to tol 1e-6) of values ~1:
    # 1e-5 (~80 float32 ulp). Another reference image or a wrong plan moves them by > 1e-3.
    assert best["similarity"] == pytest.approx(reference.similarity, abs=1e-5)
    assert best["global_similarity"] == pytest.approx(reference.global_similarity, abs=1e-5)


def test_the_cli_embeds_and_draws_with_the_checkpoints_eval_resize_ratio(tmp_path, tiny_checkpoint, gallery):
    """A run trained with ``eval_resize_ratio: 1.0`` records it in its checkpoint; the CLI embeds the images with it
    (the API at that ratio gives the same scores, the default ratio other ones); ``--eval-resize-ratio`` overrides."""
    path, model = tiny_checkpoint
    query, folder = gallery
    state = torch.load(path, weights_only=True)
    state["model_config"]["eval_resize_ratio"] = 1.0
    torch.save(state, path)
    out = tmp_path / "whole"
    assert main(["--checkpoint", str(path), "--query", str(query), "--gallery", str(folder), "--top", "1",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["eval_resize_ratio"] == 1.0
    best = json.loads((out / "explanation_01.json").read_text())
    pair = open_image(query), open_image(folder / best["ref_id"])
    same = explain_images(model, *pair, image_size=32, resize_ratio=1.0)
    other = explain_images(model, *pair, image_size=32)
    assert best["similarity"] == pytest.approx(same.similarity, abs=1e-5)  # as in the test above
    assert best["similarity"] != pytest.approx(other.similarity, abs=1e-5)
    assert main(["--checkpoint", str(path), "--query", str(query), "--gallery", str(folder), "--top", "1",
                 "--out", str(tmp_path / "o"), "--eval-resize-ratio", "1.5"]) == 0
    assert json.loads((tmp_path / "o" / "results.json").read_text())["eval_resize_ratio"] == 1.5


def test_a_single_gallery_image_and_the_query_inside_the_gallery(tmp_path, tiny_checkpoint, gallery):
    checkpoint, _ = tiny_checkpoint
    _, folder = gallery
    out = tmp_path / "single"
    assert main(["--checkpoint", str(checkpoint), "--query", str(folder / "g0.png"), "--gallery",
                 str(folder / "g1.png"), "--out", str(out), "--top", "1"]) == 0
    assert [r["image_id"] for r in json.loads((out / "results.json").read_text())["after"]] == ["g1.png"]
    inside = tmp_path / "inside"
    assert main(["--checkpoint", str(checkpoint), "--query", str(folder / "g0.png"), "--gallery", str(folder),
                 "--out", str(inside), "--top", "4", "--depth", "2"]) == 0
    ids = [r["image_id"] for r in json.loads((inside / "results.json").read_text())["before"]]
    assert "g0.png" not in ids and len(ids) == 4  # the query is not its own result
    assert len(list(inside.glob("flow_*.png"))) == 4


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m diml.explain: error: ") and "\n" not in err
    return err


def test_bad_paths_name_the_path(tmp_path, tiny_checkpoint, gallery, capsys):
    checkpoint, _ = tiny_checkpoint
    query, folder = gallery
    common = ["--out", str(tmp_path / "o")]
    missing = tmp_path / "nope.pt"
    assert str(missing) in _error(["--checkpoint", str(missing), "--query", str(query), "--gallery", str(folder)]
                                  + common, capsys)
    assert "nope.png" in _error(["--checkpoint", str(checkpoint), "--query", str(tmp_path / "nope.png"),
                                 "--gallery", str(folder)] + common, capsys)
    assert "nodir" in _error(["--checkpoint", str(checkpoint), "--query", str(query), "--gallery",
                              str(tmp_path / "nodir")] + common, capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no image files" in _error(["--checkpoint", str(checkpoint), "--query", str(query), "--gallery",
                                       str(empty)] + common, capsys)
    assert "cannot be read" in _error(["--checkpoint", str(checkpoint), "--query", str(folder / "notes.txt"),
                                       "--gallery", str(folder)] + common, capsys)


def test_checkpoints_of_another_architecture_are_rejected(tmp_path, tiny_checkpoint, gallery, capsys):
    checkpoint, model = tiny_checkpoint
    query, folder = gallery
    args = ["--query", str(query), "--gallery", str(folder), "--out", str(tmp_path / "o")]
    wrong_dim = tmp_path / "wrong_dim.pt"
    torch.save({"model": model.state_dict(), "model_config": TINY_CONFIG | {"embed_dim": 32}}, wrong_dim)
    err = _error(["--checkpoint", str(wrong_dim)] + args, capsys)
    assert "does not match" in err and "2 shape mismatches (e.g. head.bias: checkpoint (16,) vs model (32,))" in err
    other = build_model("resnet18", pretrained=False, embed_dim=16, grid=2)
    other.head = torch.nn.Linear(512, 16, bias=False)
    no_bias = tmp_path / "no_bias.pt"
    torch.save({"model": other.state_dict(), "model_config": TINY_CONFIG}, no_bias)
    assert "missing keys (e.g. head.bias)" in _error(["--checkpoint", str(no_bias)] + args, capsys)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    assert "no 'model' state dict" in _error(["--checkpoint", str(bare)] + args, capsys)
    no_config = tmp_path / "no_config.pt"
    torch.save({"model": model.state_dict()}, no_config)
    assert "no 'model_config'" in _error(["--checkpoint", str(no_config)] + args, capsys)
    unknown = tmp_path / "unknown.pt"
    torch.save({"model": model.state_dict(), "model_config": TINY_CONFIG | {"backbone": "lenet"}}, unknown)
    assert "lenet" in _error(["--checkpoint", str(unknown)] + args, capsys)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint")
    assert "cannot be read" in _error(["--checkpoint", str(garbage)] + args, capsys)


def test_load_checkpoint_restores_the_weights(tiny_checkpoint):
    checkpoint, model = tiny_checkpoint
    loaded, config = load_checkpoint(checkpoint)
    assert config == TINY_CONFIG and not loaded.training and loaded.grid == 2
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_module_entry_point_reports_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "diml.explain", "--checkpoint", str(tmp_path / "x.pt"),
                             "--query", "q.png", "--gallery", "g", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"checkpoint {tmp_path / 'x.pt'} does not exist" in result.stderr
