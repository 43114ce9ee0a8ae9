"""Black-box attacks: the oracle answers and counts exactly, the search sees nothing else,
keeps to its budget, the ε-ball and the uint8 lattice, and is judged by the true model."""

from __future__ import annotations

import pytest
import torch

from adv2 import pipeline, target_maps
from adv2.attacks import PGD, AttackSettings, SettingError
from adv2.blackbox import (ANSWERS, BudgetExceeded, Oracle, RandomSearch, TransferAttack,
                           square_fraction)
from adv2.blackbox.search import improves
from adv2.data import to_tensor
from adv2.interpreters import CAM, GRAD

from conftest import make_images, make_tiny_model

EPS = 24 / 255


@pytest.fixture
def setup():
    model = make_tiny_model()
    x = to_tensor(make_images(4, seed=3))
    with torch.no_grad():
        labels = model(x).argmax(dim=1)
    return model, x, labels, (labels + 1) % 10


class ForwardCount(torch.nn.Module):
    """Counts the images the wrapped module is run on."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.images = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.inner(x)


def test_the_oracle_counts_every_image_and_refuses_a_spent_budget(setup) -> None:
    model, x, _, _ = setup
    oracle = Oracle(model, CAM(model), "scores+map", budget=2)
    oracle.open(4)
    oracle.query(x)
    oracle.query(x[1:3], torch.tensor([1, 2]))
    assert oracle.counts.tolist() == [1, 2, 2, 1]
    with pytest.raises(BudgetExceeded, match="image\\(s\\) 1, 2"):
        oracle.query(x[:3])
    assert oracle.counts.tolist() == [1, 2, 2, 1]  # nothing answered, nothing counted
    assert oracle.left().tolist() == [1, 0, 0, 1]


@pytest.mark.parametrize("answers", ANSWERS)
def test_the_oracle_answers_only_what_its_kind_says(setup, answers) -> None:
    model, x, labels, _ = setup
    oracle = Oracle(model, CAM(model), answers)
    oracle.open(4)
    answer = oracle.query(x.clone().requires_grad_(True))
    assert answer.labels.tolist() == labels.tolist()
    assert (answer.probs is not None) == answers.startswith("scores")
    assert (answer.logits is not None) == answers.startswith("logits")
    assert (answer.maps is not None) == answers.endswith("+map")
    for part in (answer.probs, answer.logits, answer.maps):
        assert part is None or (not part.requires_grad and part.grad_fn is None)
    if answer.maps is not None:  # the map of the predicted class
        assert torch.allclose(answer.maps, CAM(model)(x, labels))


def test_the_oracle_refuses_bad_kinds_images_and_rows(setup) -> None:
    model, x, _, _ = setup
    with pytest.raises(ValueError, match="unknown kind 'map'"):
        Oracle(model, CAM(model), "map")
    with pytest.raises(ValueError, match="needs an interpreter"):
        Oracle(model, None, "scores+map")
    oracle = Oracle(model, None, "scores")
    oracle.open(4)
    with pytest.raises(ValueError, match="uint8 lattice"):
        oracle.query(x + 0.3 / 255)
    with pytest.raises(ValueError, match="open"):
        oracle.query(x, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="open"):
        oracle.query(x, torch.tensor([0, 1, 2, -1]))
    with pytest.raises(ValueError, match="uint8 lattice"):
        oracle.query(torch.where(x > 0.5, torch.nan, x))
    assert oracle.counts.tolist() == [0, 0, 0, 0]  # nothing refused was counted


def test_the_oracle_answers_the_uint8_image_a_float_rounds_to(setup) -> None:
    model, x, _, _ = setup
    oracle = Oracle(model, CAM(model), "logits+map")
    oracle.open(4)
    exact, near = oracle.query(x), oracle.query(torch.where(x < 1, x + 1e-4 / 255, x))
    assert torch.equal(exact.logits, near.logits) and torch.equal(exact.maps, near.maps)


def test_a_step_toward_the_target_is_kept_however_small_beside_the_map_term() -> None:
    """While an image misses its target, black-box ADV² ranks iterates by the margin alone,
    exactly: a step of 0.01 counts (a float32 offset of 1e6 would round it away)."""
    margin, step = torch.tensor([5.0]), torch.tensor([4.99])
    miss, hit = torch.tensor([False]), torch.tensor([True])
    assert improves(step, miss, margin, miss).item()
    assert not improves(margin, miss, step, miss).item()
    assert improves(torch.tensor([1e9]), hit, step, miss).item()  # a hit beats any miss
    assert not improves(torch.tensor([-9.0]), miss, torch.tensor([1e9]), hit).item()


class NoBackward(torch.nn.Module):
    """A model that raises if anything differentiates through it."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.register_full_backward_hook(self._refuse)

    @staticmethod
    def _refuse(*_: object) -> None:
        raise AssertionError("a black-box attack differentiated through the model")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_the_search_never_differentiates_the_model(setup) -> None:
    model, x, labels, targets = setup
    model.body = NoBackward(model.body)
    cam = CAM(model)
    benign = target_maps.benign(cam, x, labels)
    result = RandomSearch(Oracle(model, cam, "scores+map"), eps=EPS, queries=30, lam=10.0)(
        x.clone().requires_grad_(True), targets, benign)
    assert result.queries.tolist() == [30] * 4


def test_no_budget_means_no_query_and_the_start_is_the_result(setup) -> None:
    model, x, _, targets = setup
    oracle = Oracle(model, CAM(model), "scores+map", budget=0)
    result = RandomSearch(oracle, eps=EPS, queries=0, lam=5.0)(x, targets)
    assert result.queries.tolist() == [0] * 4 and oracle.counts.tolist() == [0] * 4


def test_the_budget_holds_and_the_count_is_exact(setup) -> None:
    model, x, _, targets = setup
    model.body = counter = ForwardCount(model.body)
    oracle = Oracle(model, CAM(model), "scores+map", budget=25)
    result = RandomSearch(oracle, eps=EPS, queries=25, lam=5.0)(x, targets)
    assert (result.queries <= 25).all() and result.queries.tolist() == oracle.counts.tolist()
    # every image the model saw was a query, but the verdict's one pass of the batch
    assert counter.images == int(result.queries.sum()) + len(x)
    assert result.passes.tolist() == result.queries.tolist()


def test_the_baseline_stops_each_image_at_success_and_is_judged_by_the_true_model(
        setup) -> None:
    model, x, _, targets = setup
    result = RandomSearch(Oracle(model, None, "scores"), eps=EPS, queries=300)(x, targets)
    with torch.no_grad():
        predicted = model(result.x).argmax(dim=1)
    assert result.success.tolist() == (predicted == targets).float().tolist()
    assert result.success.sum() >= 2
    assert (result.queries[result.success.bool()] < 300).all()
    assert (result.queries[~result.success.bool()] == 300).all()


def test_iterates_stay_on_the_lattice_in_the_ball(setup) -> None:
    model, x, labels, targets = setup
    support = torch.zeros(4, 1, 32, 32)
    support[..., 8:24, 8:24] = 1
    result = RandomSearch(Oracle(model, CAM(model), "logits+map"), eps=EPS, queries=40,
                          lam=5.0)(x, targets, None, support)
    delta = result.x - x
    assert torch.allclose(result.x * 255, (result.x * 255).round(), atol=1e-4)
    assert delta.abs().max() <= EPS + 1e-6 and result.linf.max() <= 24
    assert (delta.abs().amax(dim=1, keepdim=True)[support == 0] == 0).all()
    assert result.x.min() >= 0 and result.x.max() <= 1


def test_the_same_seed_gives_the_same_images(setup) -> None:
    model, x, _, targets = setup

    def run(seed: int) -> torch.Tensor:
        return RandomSearch(Oracle(model, CAM(model)), eps=EPS, queries=20, lam=5.0,
                            seed=seed)(x, targets).x

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


@pytest.mark.parametrize("placement", ["uniform", "map"])
def test_an_images_search_depends_on_its_own_seed_alone(setup, placement) -> None:
    model, x, labels, targets = setup
    benign = target_maps.benign(CAM(model), x, labels)

    def run(rows: list[int], seeds: list[int]) -> torch.Tensor:
        search = RandomSearch(Oracle(model, CAM(model)), eps=EPS, queries=30, lam=5.0,
                              placement=placement)
        search.use_seeds(seeds)
        return search(x[rows], targets[rows], benign[rows]).x

    batch = run([0, 1, 2, 3], [11, 12, 13, 14])
    assert torch.equal(batch, run([3, 2, 1, 0], [14, 13, 12, 11]).flip(0))
    assert torch.equal(batch[2:3], run([2], [13]))
    assert not torch.equal(batch[2:3], run([2], [15]))  # another seed, another search


def test_black_box_adv2_pulls_the_map_toward_the_target(setup) -> None:
    model, x, labels, targets = setup
    grad = GRAD(model)
    benign = target_maps.benign(grad, x, labels)
    pred_only = RandomSearch(Oracle(model, grad, "scores"), eps=EPS, queries=150)(
        x, targets, benign)
    joint = RandomSearch(Oracle(model, grad, "scores+map"), eps=EPS, queries=150, lam=50.0)(
        x, targets, benign)
    assert joint.l1.mean() < pred_only.l1.mean()


def test_a_transfer_start_alone_costs_no_query(setup) -> None:
    model, x, _, targets = setup
    surrogate = make_tiny_model(seed=1)
    start = PGD(surrogate, eps=EPS, steps=5, step_size=4 / 255)
    oracle = Oracle(model, CAM(model), "scores+map")
    result = RandomSearch(oracle, eps=EPS, queries=0, start=start)(x, targets)
    assert result.queries.tolist() == [0] * 4
    assert torch.equal(result.x, start(x, targets).x)


def test_the_transfer_attack_moves_its_surrogates_toward_the_target_in_the_ball(setup) -> None:
    _, x, _, targets = setup
    surrogates = [make_tiny_model(seed=1), make_tiny_model(seed=2)]
    before = sum(torch.nn.functional.cross_entropy(m(x), targets) for m in surrogates)
    attack = TransferAttack(surrogates, eps=EPS, steps=8, lr=4 / 255, seed=5)
    result = attack(x, targets)
    after = sum(torch.nn.functional.cross_entropy(m(result.x), targets) for m in surrogates)
    assert after < before
    assert (result.x - x).abs().max() <= EPS + 1e-6
    assert torch.equal(result.x, (result.x * 255).round() / 255)
    # the same seed gives the same images, whatever else is in the batch
    assert torch.equal(attack(x[1:3], targets[1:3]).x, result.x[1:3])


def test_the_transfer_attacks_map_term_pulls_the_surrogates_maps(setup) -> None:
    _, x, labels, targets = setup
    surrogates = [make_tiny_model(seed=1)]
    cams = [CAM(m) for m in surrogates]
    goal = target_maps.benign(cams[0], x, labels)
    plain = TransferAttack(surrogates, cams, eps=EPS, steps=8, lr=4 / 255)(x, targets, goal)
    mapped = TransferAttack(surrogates, cams, eps=EPS, steps=8, lr=4 / 255, lam=500.0)(
        x, targets, goal)
    assert mapped.l1.mean() < plain.l1.mean()


def test_a_surrogate_must_not_be_the_attacked_model(setup) -> None:
    model, _, _, _ = setup
    cam = CAM(model)
    settings = AttackSettings(attack="pgd", threat="black-box", surrogate="tiny+")
    with pytest.raises(SettingError, match="surrogate: 'tiny\\+': model names joined"):
        settings.resolved(cam).build(model, cam)


def test_square_schedule_halves_the_square() -> None:
    assert square_fraction(0.05, 0, 10_000) == 0.05
    assert square_fraction(0.05, 11, 10_000) == 0.025
    assert square_fraction(0.05, 9_000, 10_000) == 0.05 / 512
    assert square_fraction(0.05, 110, 1_000) == square_fraction(0.05, 1_100, 10_000)


def test_settings_build_the_black_box_forms_and_refuse_what_cannot_work(setup) -> None:
    model, _, _, _ = setup
    cam = CAM(model)
    base = AttackSettings(attack="pgd", threat="black-box", queries=50).resolved(cam)
    assert isinstance(base.build(model, cam), RandomSearch) and base.build(model, cam).lam == 0
    adv2 = AttackSettings(attack="adv2", threat="black-box").resolved(cam).build(model, cam)
    assert adv2.lam == float(CAM.blackbox_attack_defaults["lam"])
    with pytest.raises(SettingError, match="lam: black-box ADV² takes a constant"):
        AttackSettings(attack="adv2", threat="black-box", lam="5:10").resolved(cam).build(
            model, cam)
    with pytest.raises(SettingError, match="answers"):
        AttackSettings(attack="adv2", threat="black-box", answers="scores").resolved(
            cam).build(model, cam)
    with pytest.raises(SettingError, match="placement: map places squares by the oracle's maps"):
        AttackSettings(attack="pgd", threat="black-box", answers="scores",
                       placement="map").resolved(cam).build(model, cam)
    with pytest.raises(SettingError, match="surrogate: unknown model 'no_such_net'") as info:
        AttackSettings(attack="pgd", threat="black-box", surrogate="no_such_net").resolved(
            cam).build(model, cam)
    assert info.value.key == "surrogate"
    with pytest.raises(SettingError, match="threat: unknown value 'grey-box'"):
        pipeline.AttackConfig(threat="grey-box").validate()
    with pytest.raises(SettingError, match="adaptive"):
        pipeline.AttackConfig(threat="black-box", adaptive="t.json").validate()


def test_the_first_square_is_squares_for_the_baseline_and_the_interpreters_for_adv2(
        setup) -> None:
    model, _, _, _ = setup
    cam = CAM(model)

    def built(**settings) -> RandomSearch:
        return AttackSettings(threat="black-box", **settings).resolved(cam).build(model, cam)
    assert built(attack="pgd").p_init == RandomSearch.p_init == 0.05  # Square Attack's
    assert built(attack="adv2").p_init == CAM.blackbox_attack_defaults["p_init"]
    assert built(attack="pgd", p_init=0.2).p_init == built(attack="adv2", p_init=0.2).p_init \
        == 0.2
    with pytest.raises(SettingError, match="p_init") as info:
        pipeline.AttackConfig(threat="black-box", p_init=0.0).validate()
    assert info.value.key == "p_init"


def test_black_box_attacks_make_no_tensor_without_a_device(setup) -> None:
    """The oracle, the search and the transfer start under the recorder of factory calls that
    lack a device (tests/test_devices.py): adv2 makes none, so they follow the model."""
    from test_devices import FactoryRecorder

    model, x, _, targets = setup
    recorder = FactoryRecorder()
    with recorder:
        start = PGD(make_tiny_model(seed=1), eps=EPS, steps=2)
        RandomSearch(Oracle(model, GRAD(model)), eps=EPS, queries=5, lam=5.0, start=start)(
            x, targets)
        RandomSearch(Oracle(model, None, "logits"), eps=EPS, queries=5)(make_images(4, seed=3),
                                                                       targets)
    assert recorder.calls == [], "\n".join(sorted(set(recorder.calls)))


def test_map_guided_squares_go_where_the_map_is_wrong(setup) -> None:
    """With ``placement="map"`` an image that predicts its target gets squares over the map
    cells whose error is large; one that does not gets Square's uniform squares."""
    model = setup[0]
    search = RandomSearch(Oracle(model, CAM(model)), placement="map")
    error = torch.zeros(2, 1, 4, 4)
    error[:, 0, 3, 0] = 1.0  # only the bottom-left cell (pixels 24–31, 0–7 of 32×32) is wrong
    gens = search.generators(2)
    tops, lefts = [], []
    for _ in range(50):
        top, left = search._corners(torch.arange(2), 6, (32, 32), error,
                                    torch.tensor([True, False]), gens)
        tops.append(top.flatten())
        lefts.append(left.flatten())
    top, left = torch.stack(tops), torch.stack(lefts)
    # the guided image's squares (side 6) overlap the wrong cell every time (but for the
    # 1e-6 weight every cell keeps), the unguided image's are spread over the image
    assert ((top[:, 0] + 6 > 24) & (left[:, 0] < 8)).float().mean() > 0.95
    assert top[:, 1].float().std() > 4 and left[:, 1].float().std() > 4
    assert (top >= 0).all() and (top <= 26).all() and (left >= 0).all() and (left <= 26).all()


def test_map_guided_search_keeps_the_ball_and_its_seed(setup) -> None:
    model, x, _, targets = setup

    def run() -> torch.Tensor:
        return RandomSearch(Oracle(model, CAM(model)), eps=EPS, queries=30, lam=5.0,
                            placement="map")(x, targets).x

    first = run()
    assert torch.equal(first, run())
    assert (first - x).abs().max() <= EPS + 1e-6
    with pytest.raises(ValueError, match="placement"):
        RandomSearch(Oracle(model, CAM(model)), placement="edges")
