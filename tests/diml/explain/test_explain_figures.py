"""Figures: valid PNGs of the requested size, not blank, and drawn from the explanation they are given."""

import numpy as np
import pytest
import torch
from explain_helpers import png_array, shape_image

from diml.explain import explain_pair, panel_size, plot_matching_flow, plot_retrieval_panel, rank_query
from diml.explain.flow import FLOW_SIZE, cell_centres


def _explanation(seed, grid=3, **kw):
    gen = torch.Generator().manual_seed(seed)
    cells = grid * grid
    return explain_pair(torch.randn(6, cells, generator=gen), torch.randn(6, generator=gen),
                        torch.randn(6, cells, generator=gen), torch.randn(6, generator=gen), grid=grid,
                        query_id="query.png", ref_id="ref.png", **kw)


def _not_blank(pixels: np.ndarray) -> None:
    assert pixels.std() > 20.0, f"figure looks blank (pixel std {pixels.std():.1f})"
    assert pixels.mean() < 250.0


def test_matching_flow_is_a_png_of_the_requested_size(tmp_path):
    e = _explanation(0, exact=True)
    path = plot_matching_flow(e, shape_image(1), shape_image(2), tmp_path / "deep" / "flow.png")
    assert path == tmp_path / "deep" / "flow.png"
    pixels = png_array(path)
    assert pixels.shape == (FLOW_SIZE[1], FLOW_SIZE[0], 3)
    _not_blank(pixels)
    small = png_array(plot_matching_flow(e, shape_image(1), shape_image(2), tmp_path / "small.png",
                                         size=(640, 480), dpi=80))
    assert small.shape == (480, 640, 3)


def test_matching_flow_depends_on_the_plan(tmp_path):
    images = shape_image(3), shape_image(4)
    first = png_array(plot_matching_flow(_explanation(1), *images, tmp_path / "a.png"))
    second = png_array(plot_matching_flow(_explanation(2), *images, tmp_path / "b.png"))
    assert np.abs(first - second).mean() > 1.0


def test_cell_centres_are_row_major():
    centres = cell_centres(2, origin=(1.0, 0.0), scale=2.0)
    np.testing.assert_allclose(centres, [[1.5, 0.5], [2.5, 0.5], [1.5, 1.5], [2.5, 1.5]])


def test_retrieval_panel_is_a_png_of_the_expected_size(tmp_path, embedding_set):
    glob, local, labels = embedding_set
    ranking = rank_query(glob, local, 0, grid=2, top=4, depth=6, ids=[f"img{i}" for i in range(10)])
    images = {i: shape_image(i) for i in range(10)}
    relevant = {i: bool(labels[i] == labels[0]) for i in range(10)}
    path = plot_retrieval_panel(ranking, images[0], images, tmp_path / "panel.png", relevant=relevant)
    pixels = png_array(path)
    width, height = panel_size(4)
    assert pixels.shape == (height, width, 3)
    _not_blank(pixels)
    # the relevant result's green frame (#1a9641) is drawn only when relevance is given
    plain = png_array(plot_retrieval_panel(ranking, images[0], images.__getitem__, tmp_path / "plain.png"))

    def frame_green(p):
        return int((np.abs(p - [0x1A, 0x96, 0x41]).max(axis=2) < 30).sum())

    assert frame_green(pixels) > frame_green(plain) + 100


def test_figure_size_is_validated(tmp_path):
    with pytest.raises(ValueError, match="size"):
        plot_matching_flow(_explanation(0), shape_image(1), shape_image(2), tmp_path / "x.png", size=(10, 10))


@pytest.mark.parametrize("ratio", [256 / 224, 1.0, 1.5])
def test_the_displayed_crop_and_the_model_input_follow_the_eval_resize_ratio(ratio):
    """For a PIL image the figure shows, and the explanation embeds, the eval transform's crop of ``ratio``: the
    model input is that transform's output exactly, and the displayed crop is its pixels (undoing the
    normalisation: float32 rounding, < 1e-5 of [0, 1])."""
    from diml.data.transforms import Augmentation, eval_transform
    from diml.explain.images import display_array, model_input
    from diml.models.backbones import IMAGENET_MEAN, IMAGENET_STD

    image = shape_image(4, size=48).resize((60, 40))  # not square: the ratio decides which columns stay
    reference = eval_transform(32, augmentation=Augmentation(eval_resize_ratio=ratio))(image)
    assert torch.equal(model_input(image, 32, resize_ratio=ratio), reference)
    pixels = reference * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    np.testing.assert_allclose(display_array(image, 32, resize_ratio=ratio), pixels.permute(1, 2, 0).numpy(),
                               atol=1e-5)
    if ratio != 256 / 224:  # the default crop is another one
        assert np.abs(display_array(image, 32) - display_array(image, 32, resize_ratio=ratio)).max() > 0.05
    with pytest.raises(ValueError, match="eval_resize_ratio must be a number >= 1"):
        display_array(image, 32, resize_ratio=0.5)
