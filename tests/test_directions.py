import math

import pytest
import torch

from failclosed_interp.directions import Direction, DirectionSet, load_directions, save_directions
from failclosed_interp.interventions import Ablation
from failclosed_interp.models import load_model


def _direction(vector, layer=1, **kwargs) -> Direction:
    return Direction(torch.as_tensor(vector, dtype=torch.float32), layer=layer, **kwargs)


def _random_set(n=3, d=64, seed=0) -> DirectionSet:
    g = torch.Generator().manual_seed(seed)
    return DirectionSet(tuple(
        Direction(torch.randn(d, generator=g), layer=i, position=-1, method="dim", round=i,
                  fitted_on=f"round {i}", scores={"ablation_score": -float(i), "kl": 0.01 * i})
        for i in range(n)
    ))


def test_direction_normalises_once_and_keeps_raw_norm():
    raw = torch.tensor([3.0, 4.0, 0.0], requires_grad=True)
    d = Direction(raw, layer=2, position=-1)
    assert torch.equal(d.vector, torch.tensor([0.6, 0.8, 0.0]))
    assert d.norm == pytest.approx(5.0)
    assert d.vector.dtype == torch.float32 and not d.vector.requires_grad and d.vector.device.type == "cpu"
    assert torch.allclose(d.raw, raw.detach())
    # Renormalising is a no-op, so a reloaded direction equals the original bit for bit.
    again = Direction(d.vector, layer=2, position=-1, norm=d.norm)
    assert again == d and hash(again) == hash(d)


def test_direction_norm_given_is_kept():
    assert _direction([0.0, 2.0], norm=7.5).norm == 7.5


@pytest.mark.parametrize("vector", [[0.0, 0.0, 0.0], [1.0, math.nan, 0.0], [math.inf, 0.0, 0.0]])
def test_direction_rejects_degenerate_vectors(vector):
    with pytest.raises(ValueError, match="finite nonzero"):
        _direction(vector)


@pytest.mark.parametrize("kwargs, match", [
    ({"position": 0}, "negative"), ({"method": "pca"}, "method"), ({"site": "resid_mid"}, "site"), ({"layer": -1}, "layer"),
])
def test_direction_rejects_bad_metadata(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Direction(torch.ones(4), **{"layer": 0, **kwargs})


def test_direction_equality_compares_vectors_and_metadata():
    a = _direction([1.0, 2.0], scores={"kl": math.nan})
    assert a == _direction([1.0, 2.0], scores={"kl": math.nan})  # NaN scores count as equal
    assert a != _direction([2.0, 1.0], scores={"kl": math.nan})
    assert a != _direction([1.0, 2.0], scores={"kl": 0.0})
    assert a != _direction([1.0, 2.0], layer=3, scores={"kl": math.nan})


def test_set_indexing_and_subsets():
    s = _random_set(4)
    assert len(s) == 4 and isinstance(s[0], Direction) and s[0].layer == 0
    assert [d.layer for d in s[1:3]] == [1, 2]
    assert [d.layer for d in s[[3, 0]]] == [3, 0]
    pairs = list(s.subsets(2))
    assert len(pairs) == 6 and pairs[0] == (0, 1)
    assert all(len(s[idx]) == 2 for idx in pairs)
    with pytest.raises(ValueError, match="subset size"):
        list(s.subsets(5))


def test_basis_is_orthonormal_and_spans_the_set():
    s = _random_set(3)
    q = s.basis().double()
    assert torch.allclose(q @ q.T, torch.eye(3, dtype=torch.float64), atol=1e-6)
    m = s.matrix().double()
    assert torch.allclose(m @ q.T @ q, m, atol=1e-6)  # every direction lies in span(q)
    assert torch.allclose(q[0].abs(), s[0].vector.double().abs(), atol=1e-6)  # QR keeps the order


def test_cosine_matrix():
    s = DirectionSet((_direction([1.0, 0.0]), _direction([1.0, 1.0]), _direction([0.0, -2.0])))
    expected = torch.tensor([[1.0, 0.5**0.5, 0.0], [0.5**0.5, 1.0, -(0.5**0.5)], [0.0, -(0.5**0.5), 1.0]])
    assert torch.allclose(s.cosine(), expected, atol=1e-6)


def test_residual_norm_says_whether_a_direction_is_new():
    s = _random_set(2)
    inside = 2.0 * s[0].vector - 0.5 * s[1].vector
    assert s.residual_norm(inside) == pytest.approx(0.0, abs=1e-6)
    q = s.basis().double()
    other = torch.randn(64, generator=torch.Generator().manual_seed(5)).double()
    orthogonal = other - (q @ other) @ q
    assert s.residual_norm(orthogonal.float()) == pytest.approx(1.0, abs=1e-6)
    assert DirectionSet().residual_norm(inside) == 1.0  # nothing found yet: everything is new


def test_empty_set_errors_say_what_to_do():
    empty = DirectionSet()
    assert len(empty) == 0 and list(empty.subsets(0)) == [()]
    for call in (empty.basis, empty.matrix, empty.ablation):
        with pytest.raises(ValueError, match="empty"):
            call()
    assert len(empty.append(_direction([1.0, 0.0]))) == 1


def test_set_rejects_mixed_widths():
    with pytest.raises(ValueError, match="different widths"):
        DirectionSet((_direction([1.0, 0.0]), _direction([1.0, 0.0, 0.0])))


def test_ablation_of_the_set_projects_out_its_span():
    s = _random_set(2)
    ablation = s.ablation(layers=(0,))
    assert isinstance(ablation, Ablation) and ablation.layers == (0,)
    q = ablation.basis.double()
    assert torch.allclose(q.T @ q, s.basis().double().T @ s.basis().double(), atol=1e-6)  # same projector


def test_save_load_round_trip(tmp_path):
    s = _random_set(3)
    s = s.append(Direction(torch.randn(64), layer=5, position=None, method="rdo", round=3, scores={"kl": math.nan}))
    model = load_model("tiny-llama")
    save_directions(s, tmp_path, model.identity())
    assert {p.name for p in tmp_path.iterdir()} == {"directions.safetensors", "directions.json", "model.json"}
    loaded = load_directions(tmp_path)
    assert loaded == s
    assert load_directions(tmp_path, model) == s


def test_load_into_a_model_of_another_width_fails(tmp_path):
    save_directions(_random_set(2, d=64), tmp_path, load_model("tiny-llama").identity())
    native = load_model("tiny-native")  # d_model 32
    with pytest.raises(ValueError, match="d_model"):
        load_directions(tmp_path, native)
    (tmp_path / "model.json").unlink()  # even without the identity file, the width is checked
    with pytest.raises(ValueError, match="d_model=64"):
        load_directions(tmp_path, native)


def test_corrupt_or_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_directions(tmp_path / "nowhere")
    save_directions(_random_set(2), tmp_path, {"model": "x", "d_model": 64, "n_layers": 4})
    (tmp_path / "directions.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="safetensors"):
        load_directions(tmp_path)
    (tmp_path / "directions.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        load_directions(tmp_path)


def test_metadata_and_vectors_must_agree(tmp_path):
    save_directions(_random_set(2), tmp_path, {"model": "x", "d_model": 64, "n_layers": 4})
    save_directions(_random_set(3), tmp_path / "other", {"model": "x", "d_model": 64, "n_layers": 4})
    (tmp_path / "directions.safetensors").write_bytes((tmp_path / "other" / "directions.safetensors").read_bytes())
    with pytest.raises(ValueError, match="inconsistent"):
        load_directions(tmp_path)
