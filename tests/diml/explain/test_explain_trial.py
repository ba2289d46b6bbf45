"""write_trial_explanations: the files, their content and the index page that links them."""

import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from explain_helpers import png_array
from PIL import Image

from diml.data import build_splits
from diml.evaluation import extract_embeddings
from diml.explain import write_trial_explanations
from diml.explain.trial import choose_queries
from diml.models import build_model


@pytest.fixture(scope="module")
def trial_inputs():
    """A tiny untrained model and the embeddings of a synthetic test split (4 classes x 3 images, 32 px)."""
    torch.manual_seed(0)
    splits = build_splits("synthetic", image_size=32, num_classes=8, images_per_class=3)
    model = build_model("resnet18", pretrained=False, embed_dim=16, grid=2).eval()
    embeddings = extract_embeddings(model, splits.test, batch_size=16, device="cpu")
    return model, splits.test, embeddings


def test_writes_figures_json_and_an_index_linking_them(tmp_path, trial_inputs):
    model, dataset, embeddings = trial_inputs
    paths = write_trial_explanations(model, dataset, embeddings, tmp_path / "explanations", n_queries=2, seed=3,
                                     top=3, depth=4)
    names = sorted(p.name for p in paths)
    assert names == sorted(["q00_retrieval.png", "q00_flow.png", "q00.json", "q01_retrieval.png", "q01_flow.png",
                            "q01.json", "index.html"])
    assert paths[-1].name == "index.html" and all(p.parent == tmp_path / "explanations" for p in paths)
    page = paths[-1].read_text()
    linked = set(re.findall(r'href="([^"]+)"', page))
    assert {p.name for p in paths if p.suffix in (".png", ".json")} <= linked
    assert all("/" not in link for link in linked)  # relative links only
    # each figure is also inline (MLflow's viewer shows HTML from a blob: URL, where relative images cannot load)
    inline = re.findall(r'<a href="([^"]+)"><img src="data:image/jpeg;base64,([^"]+)"', page)
    assert sorted(name for name, _ in inline) == sorted(p.name for p in paths if p.suffix == ".png")
    for name, encoded in inline:
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        assert image.format == "JPEG" and image.size == Image.open(tmp_path / "explanations" / name).size
    labels = embeddings.labels.numpy()
    for stem in ("q00", "q01"):
        record = json.loads((tmp_path / "explanations" / f"{stem}.json").read_text())
        query = record["query_index"]
        assert record["query_id"] == dataset.image_id(query) and record["query_id"] in page
        assert len(record["before"]) == len(record["after"]) == 3
        for item in record["before"] + record["after"]:
            assert item["relevant"] == (labels[item["index"]] == labels[query]) and item["index"] != query
        top = record["top_match"]
        assert top["ref_id"] == record["after"][0]["image_id"]
        assert sum(map(sum, top["contributions"])) == pytest.approx(top["similarity"], abs=1e-6)
        assert top["similarity"] == record["after"][0]["structural_score"]
        for kind in ("retrieval", "flow"):
            pixels = png_array(tmp_path / "explanations" / f"{stem}_{kind}.png")
            assert pixels.std() > 20.0


def test_queries_are_seeded_and_have_positives():
    labels = np.array([0, 0, 1, 2, 2, 3, 4, 4, 5, 5])
    first = choose_queries(labels, 4, seed=1)
    assert first == choose_queries(labels, 4, seed=1) and first == sorted(first)
    assert all(labels.tolist().count(labels[i]) > 1 for i in first)
    assert {tuple(choose_queries(labels, 4, seed=s)) for s in range(6)} != {tuple(first)}
    assert len(choose_queries(labels, 50, seed=0)) == 10  # fewer candidates than asked: every image


def test_bad_inputs(tmp_path, trial_inputs):
    model, dataset, embeddings = trial_inputs
    with pytest.raises(ValueError, match="n_queries"):
        write_trial_explanations(model, dataset, embeddings, tmp_path, n_queries=0)
    no_local = embeddings._replace(local_emb=None)
    with pytest.raises(ValueError, match="local_emb"):
        write_trial_explanations(model, dataset, no_local, tmp_path)
    short = embeddings._replace(global_emb=embeddings.global_emb[:3], labels=embeddings.labels[:3])
    with pytest.raises(ValueError, match="one row per image"):
        write_trial_explanations(model, dataset, short, tmp_path)


def test_flow_records_and_draws_the_parts_carried_through_the_plan(tmp_path, trial_inputs):
    """Synthetic data has part annotations: each query's record lists, per part, both images' annotated keypoints and
    the query's keypoint carried through the plan (the mass-weighted mean of the reference cells' centres, computed
    here by hand from the recorded plan); the flow figure then differs from one drawn without them."""
    model, dataset, embeddings = trial_inputs
    paths = write_trial_explanations(model, dataset, embeddings, tmp_path / "e", n_queries=1, seed=3, top=3, depth=4)
    record = json.loads((tmp_path / "e" / "q00.json").read_text())
    top, keypoints, size = record["top_match"], dataset.keypoints(), dataset.keypoint_image_size
    ref = record["after"][0]["index"]
    plan, grid = np.asarray(top["plan"]), top["grid"]
    centres = (np.stack(np.meshgrid(np.arange(grid), np.arange(grid)), -1).reshape(-1, 2) + 0.5) * size / grid
    assert [p["part"] for p in top["parts"]] == dataset.part_names
    for k, part in enumerate(top["parts"]):
        np.testing.assert_array_equal(part["query"], keypoints[record["query_index"], k])
        np.testing.assert_array_equal(part["reference"], keypoints[ref, k])
        if keypoints[record["query_index"], k, 2] == 0:
            assert part["transferred"] is None
            continue
        x, y = keypoints[record["query_index"], k, :2]
        row = plan[int(y // (size / grid)) * grid + int(x // (size / grid))]
        # float64 barycentre of the recorded (float64-rounded JSON) plan: 1e-9 px
        np.testing.assert_allclose(part["transferred"], row @ centres / row.sum(), atol=1e-9)
    drawn = png_array(tmp_path / "e" / "q00_flow.png")
    from diml.explain.explanation import Explanation
    from diml.explain.flow import plot_matching_flow

    top.pop("parts")
    bare = plot_matching_flow(Explanation.from_dict(top), dataset.load_image(record["query_index"]),
                              dataset.load_image(ref), tmp_path / "bare.png")  # the same figure without the parts
    assert np.abs(png_array(bare) - drawn).sum() > 0


def test_the_figures_show_the_crop_of_the_runs_eval_resize_ratio(tmp_path, trial_inputs):
    """A run with ``data.augmentation.eval_resize_ratio: 1.0`` saw the whole short side: its flow figure is the one
    drawn from that crop, pixel for pixel, and not the one drawn from the default 256/224 crop."""
    from diml.explain.explanation import Explanation
    from diml.explain.flow import plot_matching_flow
    from diml.explain.images import display_array
    from diml.explain.trial import _part_marks

    model, dataset, embeddings = trial_inputs
    write_trial_explanations(model, dataset, embeddings, tmp_path / "e", n_queries=1, seed=3, top=3, depth=4,
                             resize_ratio=1.0)
    drawn = png_array(tmp_path / "e" / "q00_flow.png")
    record = json.loads((tmp_path / "e" / "q00.json").read_text())
    top = record["top_match"]
    top.pop("parts")
    explanation, query, ref = Explanation.from_dict(top), record["query_index"], record["after"][0]["index"]
    marks = _part_marks(dataset, query, ref, explanation.plan, explanation.grid)
    figures = {}
    for name, ratio in [("whole", 1.0), ("default", 256 / 224)]:
        crops = [display_array(dataset.load_image(i), resize_ratio=ratio) for i in (query, ref)]
        figures[name] = png_array(plot_matching_flow(explanation, *crops, tmp_path / f"{name}.png", parts=marks))
    assert np.array_equal(drawn, figures["whole"])
    assert np.abs(drawn - figures["default"]).sum() > 0
