"""Bad arguments to evaluate() raise ValueError with a message naming the argument."""

import numpy as np
import pytest
import torch

from diml.evaluation import evaluate


def _set(n=20, dim=4, cells=3):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, dim, generator=gen), torch.arange(n) % 4, torch.randn(n, dim, cells, generator=gen)


def _cell_dot(q_local, q_global, c_local, c_global):
    return torch.einsum("bcr,bkcr->bk", q_local, c_local)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda g, l, c: (g, l[:-1], c, {}), "labels must be"),
        (lambda g, l, c: (g[:, :, None], l, c, {}), "global_emb must be"),
        (lambda g, l, c: (g, l.float(), c, {}), "labels must be integers"),
        (lambda g, l, c: (g, l, c[:-1], {}), "local_emb must be"),
        (lambda g, l, c: (g, l, c[:, :-1], {}), "local_emb must be"),
        (lambda g, l, c: (g, l, c, {"depths": (0,)}), "depths must be >= 1"),
        (lambda g, l, c: (g, l, c, {"depths": (20,)}), "depths value 20 exceeds"),
        (lambda g, l, c: (g, l, c, {"ks": (1, 25)}), "ks value 25 exceeds"),
        (lambda g, l, c: (g, l, c, {"ks": (1.5,)}), "ks must hold integers"),
        (lambda g, l, c: (g, l, c, {"query_chunk": 0}), "query_chunk must be"),
        (lambda g, l, c: (g, torch.arange(20), c, {}), "every class has a single image"),
        (lambda g, l, c: (g[:1], l[:1], c[:1], {}), "at least 2 images"),
        (lambda g, l, c: (g.clone().fill_(float("nan")), l, c, {}), "global_emb contains NaN"),
        (lambda g, l, c: ([[0.0]] * 20, l, c, {}), "global_emb must be a torch.Tensor or a numpy array"),
    ],
)
def test_bad_input_raises_a_clear_value_error(change, message):
    glob, labels, local = _set()
    glob, labels, local, options = change(glob, labels, local)
    with pytest.raises(ValueError, match=message):
        evaluate(glob, labels, local, nmi=False, candidate_similarity=_cell_dot, **{"depths": (5,), **options})


def test_a_scorer_with_the_wrong_shape_is_reported():
    glob, labels, local = _set()
    with pytest.raises(ValueError, match="candidate_similarity returned shape"):
        evaluate(glob, labels, local, depths=(5,), nmi=False, candidate_similarity=lambda *a: torch.zeros(3))


def test_depths_at_the_gallery_size_and_numpy_local_are_accepted():
    glob, labels, local = _set()
    result = evaluate(glob.numpy(), labels.numpy(), local.numpy().astype(np.float64), depths=(19,), ks=(19,),
                      nmi=False, candidate_similarity=_cell_dot)
    assert result["diml@19"]["R@19"] == 100.0  # the whole gallery is retrieved
