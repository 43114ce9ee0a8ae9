"""RTS: the saliency network's shapes and gradients, its training and checkpoints, the shipped
checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from adv2.data import demo_images, to_tensor
from adv2.interpreters import RTS, build_interpreter
from adv2.models import Classifier, ModelError, PoolLinear, load_model
from adv2.rts import SaliencyLoss, SaliencyNet, TrainConfig, TrainSettings, load, train

from conftest import make_images


def make_deep_tiny_model(seed: int = 0, n_classes: int = 10) -> Classifier:
    """Four stride-2 convolutions: 32×32 input → 2×2 feature map (stride 16), so the saliency
    network has stage outputs at strides 4 and 8 and three upsamplers."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for cin, cout in ((3, 8), (8, 16), (16, 16), (16, 32)):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU()]
    linear = nn.Linear(32, n_classes)
    with torch.no_grad():  # as conftest's tiny model: confident, and dependent on the image
        linear.weight.mul_(30.0)
        linear.weight.sub_(linear.weight.mean(dim=1, keepdim=True))
    return Classifier(nn.Sequential(*layers), PoolLinear(linear), linear, name="deep-tiny")


def quiet(cfg: TrainConfig, **settings) -> TrainSettings:
    """The settings of a test's training: ``cfg`` (and ``settings``) without a progress bar."""
    return TrainSettings(cfg, progress=False, **settings)


@pytest.fixture
def deep_model() -> Classifier:
    return make_deep_tiny_model()


def with_random_head(net: SaliencyNet) -> SaliencyNet:
    """The head starts at zero (the mask is the gate); a random head makes the decoder count."""
    torch.manual_seed(1)
    torch.nn.init.normal_(net.head.weight, std=0.5)
    return net


def test_mask_shape_range_and_skips(deep_model) -> None:
    net = SaliencyNet(deep_model).eval()
    assert net.skip_strides == [8, 4] and sorted(net.stages) == [4, 8]
    x = to_tensor(make_images(3))
    logits, masks = net(x, torch.tensor([0, 1, 2]))
    assert masks.shape == (3, 1, 8, 8)  # 1/4 of 32×32
    assert masks.min() >= 0 and masks.max() <= 1
    torch.testing.assert_close(logits, deep_model(x))
    # the classifier is not part of the network: only decoder and selector are saved/trained
    assert not any(k.startswith(("model", "class_weights")) for k in net.state_dict())


@pytest.mark.parametrize("through", ["gate", "decoder"])
def test_gradient_reaches_the_input(deep_model, through) -> None:
    net = with_random_head(SaliencyNet(deep_model)).eval()
    if through == "decoder":  # only the decoder's path: a constant gate, no prior in the head
        net.scale.data.zero_()
    x = to_tensor(make_images(2)).requires_grad_(True)
    _, masks = net(x, torch.tensor([3, 4]))
    (grad,) = torch.autograd.grad(masks.square().sum(), x)
    assert grad.abs().sum(dim=(1, 2, 3)).min() > 0  # every image


def test_selector_depends_on_the_class(deep_model) -> None:
    net = with_random_head(SaliencyNet(deep_model, scale=1.0, shift=0.0)).eval()
    x = to_tensor(make_images(1)).expand(2, -1, -1, -1)
    _, masks = net(x, torch.tensor([0, 5]))
    assert not torch.allclose(masks[0], masks[1])


@pytest.fixture
def encoder() -> Classifier:
    """A second network, the saliency network's own encoder (the paper's design)."""
    net = make_deep_tiny_model(seed=7)
    net.name = "deep-tiny-encoder"
    return net


def test_own_encoder_feeds_the_decoder_and_the_selector_starts_from_its_head(
        deep_model, encoder) -> None:
    net = with_random_head(SaliencyNet(deep_model, encoder)).eval()
    assert not net.shared
    torch.testing.assert_close(net.selector.detach(), encoder.cam_weights())
    x = to_tensor(make_images(2)).requires_grad_(True)
    logits, masks = net(x, torch.tensor([3, 4]))
    torch.testing.assert_close(logits, deep_model(x))  # the logits are the explained model's
    (grad,) = torch.autograd.grad(masks.square().sum(), x)
    assert grad.abs().sum(dim=(1, 2, 3)).min() > 0  # through the encoder, every image
    # the masks come from the encoder: another encoder gives other masks
    other = with_random_head(SaliencyNet(deep_model, make_deep_tiny_model(seed=8))).eval()
    other.load_state_dict(net.state_dict())
    assert not torch.allclose(other(x, torch.tensor([3, 4]))[1], masks)
    # neither network is saved; the embeddings are
    keys = net.state_dict().keys()
    assert "selector" in keys and not any(k.startswith(("model", "encoder")) for k in keys)


def test_phase_one_trains_only_the_selector_and_phase_two_only_the_decoder(
        deep_model, encoder, tmp_path) -> None:
    images, labels = make_images(6), torch.arange(6)
    fresh = SaliencyNet(deep_model, encoder).state_dict()
    only1 = train(deep_model, images, labels, tmp_path / "a",
                  quiet(TrainConfig(steps=0, selector_steps=3, batch_size=3,
                                    selector_batch_size=4)), encoder).state_dict()
    both = train(deep_model, images, labels, tmp_path / "b",
                 quiet(TrainConfig(steps=3, selector_steps=3, batch_size=3,
                                   selector_batch_size=4)), encoder).state_dict()
    selector = ("selector", "scale", "shift")
    for key, value in fresh.items():
        if key.startswith(selector):
            assert not torch.equal(only1[key], value), key  # phase 1 moved it ...
            assert torch.equal(both[key], only1[key]), key  # ... and phase 2 left it
        elif key.startswith("head"):
            assert torch.equal(only1[key], value), key  # phase 1 left the decoder ...
            assert not torch.equal(both[key], value), key  # ... and phase 2 trained it


def test_phase_one_learns_which_classes_are_in_the_image(deep_model, encoder) -> None:
    """The "exists" objective: after a few steps the true classes score above fake ones."""
    net = SaliencyNet(deep_model, encoder, scale=0.0, shift=0.0)
    x = to_tensor(make_images(8))
    y = deep_model(x).argmax(dim=1)
    fake = (y + 3) % 10
    opt = torch.optim.Adam(net.selector_parameters(), lr=0.05)
    with torch.no_grad():
        feats, _ = net.encode(x)

    def gap() -> float:
        with torch.no_grad():
            return float((net.exists_logit(feats, y) - net.exists_logit(feats, fake)).mean())

    before = gap()
    for _ in range(20):
        logit = torch.cat([net.exists_logit(feats, y), net.exists_logit(feats, fake)])
        value = torch.nn.functional.binary_cross_entropy_with_logits(
            logit, torch.cat([torch.ones(8), torch.zeros(8)]))
        opt.zero_grad()
        value.backward()
        opt.step()
    assert gap() > before + 1.0


def test_checkpoint_is_bound_to_the_encoder(deep_model, encoder, tmp_path) -> None:
    train(deep_model, make_images(3), torch.arange(3), tmp_path,
          quiet(TrainConfig(steps=1, selector_steps=1, batch_size=3, selector_batch_size=3)),
          encoder)
    net = load(deep_model, tmp_path / "rts.pt", encoder)
    assert net.meta["encoder"] == "deep-tiny-encoder" and not net.shared
    retrained = make_deep_tiny_model(seed=9)
    retrained.name = "deep-tiny-encoder"
    with pytest.raises(ModelError, match="encoder 'deep-tiny-encoder' with other weights"):
        load(deep_model, tmp_path / "rts.pt", retrained)
    rts = build_interpreter("rts", deep_model, checkpoint=tmp_path / "rts.pt", encoder=encoder)
    assert rts.passes_per_step == 2  # the classifier's pass and the encoder's


def test_smoothness_on_hand_made_masks() -> None:
    loss = SaliencyLoss(border_penalty=0.0)
    flat = torch.full((1, 1, 4, 4), 0.5)
    assert loss.smoothness(flat).item() == 0.0
    step = torch.zeros(1, 1, 4, 4)
    step[..., 2:] = 1.0  # one vertical edge crossing 4 rows
    assert loss.smoothness(step).item() == pytest.approx(4 / 2)
    bordered = SaliencyLoss(border_penalty=0.3).smoothness(torch.ones(1, 1, 4, 4))
    assert bordered.item() == pytest.approx(0.3 * 16 / 2)  # 4 borders of 4 cells, halved


def test_classifier_terms_reward_a_mask_over_the_evidence() -> None:
    """Keeping the whole image preserves the class and removing it destroys it: the preserver
    and destroyer terms are lower for a full mask than for an empty one; fake labels get
    neither term."""
    model = make_deep_tiny_model()
    x = to_tensor(make_images(4))
    classes = model(x).argmax(dim=1)
    loss = SaliencyLoss(area_weight=0.0, smooth_weight=0.0)
    real = torch.ones(4, dtype=torch.bool)

    def parts(fill: float, real: torch.Tensor) -> dict[str, float]:
        masks = torch.full((4, 1, 8, 8), fill)
        return loss(model, x, masks, classes, real, torch.Generator().manual_seed(0))[1]

    full, empty = parts(1.0, real), parts(0.0, real)
    assert full["destroyer"] < empty["destroyer"]
    assert full["preserver"] < empty["preserver"]
    fake = parts(1.0, torch.zeros(4, dtype=torch.bool))
    assert fake["destroyer"] == 0.0 and fake["preserver"] == 0.0


def test_one_training_step_lowers_the_loss(deep_model) -> None:
    torch.manual_seed(0)
    net = SaliencyNet(deep_model)
    loss = SaliencyLoss()
    x = to_tensor(make_images(8))
    classes = deep_model(x).argmax(dim=1)
    real = torch.ones(8, dtype=torch.bool)

    def value() -> torch.Tensor:
        _, masks = net(x, classes)
        return loss(deep_model, x, masks, classes, real, torch.Generator().manual_seed(1))[0]

    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    before = value()
    opt.zero_grad()
    before.backward()
    opt.step()
    assert value().item() < before.item()


@pytest.mark.parametrize("design", ["shared", "own encoder"])
def test_training_resumes_to_the_same_network(deep_model, encoder, design, tmp_path) -> None:
    images = make_images(6)
    labels = torch.arange(6)
    enc = encoder if design == "own encoder" else None
    # interrupted in phase 1 (own encoder) or phase 2, resumed
    cfg = TrainConfig(steps=4, batch_size=3, checkpoint_every=2, seed=3, selector_steps=4,
                      selector_batch_size=3)
    straight = train(deep_model, images, labels, tmp_path / "a", quiet(cfg), enc)
    train(deep_model, images, labels, tmp_path / "b",
          quiet(TrainConfig(**{**cfg.__dict__, "steps": 2})), enc)
    if enc is not None:  # phase 1 of 4 steps, then 2 of phase 2: continue to 4 (resumable)
        train(deep_model, images, labels, tmp_path / "b",
              quiet(TrainConfig(**{**cfg.__dict__, "steps": 3})), enc)
    resumed = train(deep_model, images, labels, tmp_path / "b", quiet(cfg), enc)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # the exported checkpoint loads with weights_only and gives the same masks
    again = load(deep_model, tmp_path / "a" / "rts.pt", enc)
    x = to_tensor(images[:2])
    torch.testing.assert_close(again(x, labels[:2])[1], straight(x, labels[:2])[1])


def test_checkpoint_of_another_model_is_rejected(deep_model, tmp_path) -> None:
    train(deep_model, make_images(3), torch.arange(3), tmp_path,
          quiet(TrainConfig(steps=1, batch_size=3)))
    other = make_deep_tiny_model()
    other.name = "someone-else"
    with pytest.raises(ModelError, match="trained for model 'deep-tiny'"):
        load(other, tmp_path / "rts.pt")
    with pytest.raises(ModelError, match="no RTS checkpoint ships .* train-rts"):
        build_interpreter("rts", other)
    retrained = make_deep_tiny_model(seed=1)  # same name, other weights
    with pytest.raises(ModelError, match="other deep-tiny weights"):
        load(retrained, tmp_path / "rts.pt")


@pytest.mark.slow
def test_shipped_checkpoint_explains_a_demo_image() -> None:
    model = load_model()
    rts = RTS(model)
    x = to_tensor(np.stack([s.image for s in demo_images()[:2]]))
    with torch.no_grad():
        logits = model(x)
        own = logits.argmax(dim=1)
        absent = logits.argmin(dim=1)  # the least likely class: the selector should close
        maps = rts(x, own)
        empty = rts(x, absent)
    assert maps.shape == (2, 1, 56, 56)
    assert (maps.flatten(1).amax(dim=1) > 0.5).all()  # a region is kept ...
    assert (maps.flatten(1).amin(dim=1) < 0.5).all()  # ... and a region removed
    assert (empty.mean(dim=(1, 2, 3)) < maps.mean(dim=(1, 2, 3))).all()


def test_adv2_against_rts_stays_in_the_ball(deep_model, tmp_path) -> None:
    from adv2.attacks import ADV2
    from adv2.target_maps import benign

    train(deep_model, make_images(6), torch.arange(6), tmp_path,
          quiet(TrainConfig(steps=2, batch_size=3)))
    rts = build_interpreter("rts", deep_model, checkpoint=tmp_path / "rts.pt")
    images = make_images(3, seed=1)
    x = to_tensor(images)
    labels = deep_model(x).argmax(dim=1)
    targets = (labels + 1) % 10
    result = ADV2(deep_model, rts, steps=5, warm_steps=5)(images, targets, benign(rts, x, labels))
    assert result.maps.shape[-2:] == rts.resolution(32, 32)
    assert result.linf.max() <= 8
    assert result.l1.shape == (3,) and (result.passes > 0).all()


@pytest.mark.slow
def test_train_rts_command_records_holdout_and_skips_bad_files(tmp_path, caplog) -> None:
    from PIL import Image

    from adv2 import cli

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(make_images(4, size=64)):
        Image.fromarray(img).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "rts"
    code = cli.main(["train-rts", "--images", str(folder), "--holdout", "1", "--steps", "1",
                     "--batch-size", "2", "--selector-steps", "1", "--selector-batch-size", "2",
                     "--destroyer-confidence", "7", "--out", str(out)])
    assert code == 0
    net = load(load_model(), out / "rts.pt")
    assert net.meta["n_train"] == 3 and len(net.meta["holdout"]) == 1
    assert "train-rts" in net.meta["command"] and net.meta["encoder"] == "efficientnet_lite1"
    assert net.meta["loss"]["destroyer_confidence"] == 7.0
    rts = build_interpreter("rts", load_model(), checkpoint=out / "rts.pt")
    keys = {f"img{i}" for i in range(4)}
    assert rts.fitted_on | set(net.meta["holdout"]) == keys and len(rts.fitted_on) == 3
    code = cli.main(["train-rts", "--images", str(folder), "--init", str(tmp_path / "no.pt"),
                     "--out", str(tmp_path / "tuned")])
    assert code == 2 and not (tmp_path / "tuned").exists()
    assert "--init: " in caplog.text and "no.pt not found" in caplog.text
    (tmp_path / "junk.pt").write_bytes(b"junk")
    code = cli.main(["train-rts", "--images", str(folder), "--init", str(tmp_path / "junk.pt"),
                     "--out", str(tmp_path / "tuned")])
    assert code == 2 and not (tmp_path / "tuned").exists()
    assert "cannot read RTS checkpoint" in caplog.text and "junk.pt" in caplog.text


@pytest.mark.slow
def test_attack_command_with_rts_records_the_checkpoint(tmp_path) -> None:
    import json

    from PIL import Image

    from adv2 import cli

    Image.fromarray(demo_images()[0].image).save(tmp_path / "cat.png")
    out = tmp_path / "run"
    code = cli.main(["attack", "--interpreter", "rts", "--images", str(tmp_path / "cat.png"),
                     "--steps", "3", "--warm-steps", "3", "--out", str(out)])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["interpreter_config"]["checkpoint"] == "rts_efficientnet_lite0.pt"
    assert config["map_loss"] == "logit"
    assert np.load(out / "samples" / "cat.png" / "adv_map.npy").shape[-2:] == (56, 56)


def test_destroyer_pulls_down_to_its_confidence() -> None:
    """The destroyer margin is clipped at −confidence: a larger confidence keeps pulling where
    the removed image's class is already gone (here: the least likely class)."""
    model = make_deep_tiny_model()
    x = to_tensor(make_images(4))
    classes = model(x).argmin(dim=1)
    masks, real = torch.ones(4, 1, 8, 8), torch.ones(4, dtype=torch.bool)

    def destroyer(confidence: float) -> float:
        loss = SaliencyLoss(destroyer_confidence=confidence)
        return loss(model, x, masks, classes, real, torch.Generator().manual_seed(0))[1][
            "destroyer"]

    assert destroyer(0.0) == 0.0
    assert destroyer(1e6) < destroyer(1.0) < 0.0


def test_fine_tuning_starts_from_the_init_and_records_it(deep_model, encoder, tmp_path) -> None:
    images, labels = make_images(6), torch.arange(6)
    cfg = TrainConfig(steps=2, selector_steps=2, batch_size=3, selector_batch_size=3)
    first = train(deep_model, images, labels, tmp_path / "a",
                  quiet(cfg, meta={"trained_on": ["a.jpg"], "holdout": ["b.jpg"]}), encoder)
    same = train(deep_model, images, labels, tmp_path / "b",
                 quiet(TrainConfig(steps=0, selector_steps=0),
                       meta={"trained_on": ["b.jpg"], "holdout": ["a.jpg", "c.jpg"]},
                       init=tmp_path / "a" / "rts.pt"), encoder)
    for (k, a), b in zip(first.state_dict().items(), same.state_dict().values()):
        assert torch.equal(a, b), k
    tuned = load(deep_model, tmp_path / "b" / "rts.pt", encoder)
    # the images the init was trained on are never held out
    assert tuned.meta["trained_on"] == ["a.jpg", "b.jpg"] and tuned.meta["holdout"] == ["c.jpg"]
    assert len(tuned.meta["init"]["sha256"]) == 64
    assert tuned.meta["init_meta"]["train"]["steps"] == 2
    assert "trained_on" not in tuned.meta["init_meta"]  # merged above, not kept twice
    train(deep_model, images, labels, tmp_path / "s", quiet(TrainConfig(steps=1, batch_size=3)))
    with pytest.raises(ValueError, match="other design"):
        train(deep_model, images, labels, tmp_path / "c",
              quiet(TrainConfig(steps=0, selector_steps=0), init=tmp_path / "s" / "rts.pt"),
              encoder)
    assert not (tmp_path / "c").exists()  # nothing written for a refused start
