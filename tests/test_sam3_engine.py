"""The SAM 3 engine (functions/sam3/engine.py) against transformers' own SAM 3, on a tiny
random-weight model laid out as facebook/sam3 is (tests/sam3_models.py): the concept path
against ``Sam3Model`` + ``Sam3Processor``, the click path against ``Sam3TrackerModel`` +
``Sam3TrackerProcessor``, each loaded separately from the same folder and run the way
transformers documents them (image and prompt through the processor, model forward,
post-processing). No mocks; one thread, as timings on a shared 2-core machine swing otherwise."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lsfn.functions.sam3.engine import Embedding, Instance, Sam3Engine
from lsfn.shared.weights import WeightsError
from tests.sam3_models import model_dir, write_model

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

SCORE_TOLERANCE = 1e-4
MIN_IOU = 0.99


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder() -> Path:
    return model_dir()


@pytest.fixture(scope="module")
def engine(folder: Path) -> Sam3Engine:
    return Sam3Engine.load(folder, "cpu")


class Reference:
    """transformers' SAM 3 models run directly, each from the folder, for the expected results."""

    def __init__(self, folder: Path) -> None:
        from transformers import Sam3Model, Sam3Processor, Sam3TrackerModel, Sam3TrackerProcessor

        self.detector = Sam3Model.from_pretrained(folder).eval()
        self.processor = Sam3Processor.from_pretrained(folder)
        self.tracker = Sam3TrackerModel.from_pretrained(folder).eval()
        self.tracker_processor = Sam3TrackerProcessor.from_pretrained(folder)

    def concept(self, pixels: np.ndarray, text: str, exemplars: Sequence[tuple[Sequence[float], bool]] = (),
                threshold: float = 0.0, mask_threshold: float = 0.5) -> list[Instance]:  # fmt: skip
        kwargs: dict[str, Any] = {}
        if exemplars:
            kwargs = {"input_boxes": [[list(b) for b, _ in exemplars]], "input_boxes_labels": [[int(p) for _, p in exemplars]]}
        inputs = self.processor(images=pixels, text=text, return_tensors="pt", **kwargs)
        with torch.inference_mode():
            outputs = self.detector(**inputs)
        (found,) = self.processor.post_process_instance_segmentation(
            outputs, threshold=threshold, mask_threshold=mask_threshold, target_sizes=inputs["original_sizes"].tolist()
        )
        return [Instance(float(s), tuple(b.tolist()), m.bool().numpy()) for s, b, m in zip(found["scores"], found["boxes"], found["masks"])]

    def click(self, pixels: np.ndarray, points: Sequence[Sequence[float]] = (), labels: Sequence[int] = (),
              boxes: Sequence[Sequence[float]] = (), multimask: bool = False) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Masks (K, H, W) and predicted IoUs (K,): per box (with the points) or for the points,
        the mask of highest predicted IoU among the decoder's."""
        prompts = max(len(boxes), 1)
        kwargs: dict[str, Any] = {}
        if len(points):
            kwargs["input_points"] = [[[list(p) for p in points]] * prompts]
            kwargs["input_labels"] = [[list(labels)] * prompts]
        if len(boxes):
            kwargs["input_boxes"] = [[list(b) for b in boxes]]
        inputs = self.tracker_processor(images=pixels, return_tensors="pt", **kwargs)
        with torch.inference_mode():
            outputs = self.tracker(**inputs, multimask_output=multimask)
        (masks,) = self.tracker_processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"])
        best = outputs.iou_scores[0].argmax(dim=1)
        chosen = torch.arange(prompts)
        return masks[chosen, best].numpy(), outputs.iou_scores[0, chosen, best].numpy()


@pytest.fixture(scope="module")
def reference(folder: Path) -> Reference:
    return Reference(folder)


def image(height: int, width: int, seed: int) -> np.ndarray:
    """Noise with a few flat rectangles: something for random weights to tell apart."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
        pixels[y : y + height // 3, x : x + width // 3] = rng.integers(0, 256, 3, dtype=np.uint8)
    return pixels


IMAGES = [image(150, 200, 1), image(240, 180, 2), image(97, 131, 3)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def assert_same_instances(got: list[Instance], want: list[Instance]) -> None:
    """The same instances: scores within SCORE_TOLERANCE (got best first), and each instance's
    mask and box those of the reference instance with its score."""
    assert len(got) == len(want)
    assert [i.score for i in got] == sorted((i.score for i in got), reverse=True)
    np.testing.assert_allclose([i.score for i in got], sorted((i.score for i in want), reverse=True), atol=SCORE_TOLERANCE)
    for instance in got:
        assert instance.mask.dtype == bool
        candidates = [w for w in want if abs(w.score - instance.score) <= SCORE_TOLERANCE]
        match = max(candidates, key=lambda w: iou(instance.mask, w.mask))
        assert iou(instance.mask, match.mask) >= MIN_IOU
        np.testing.assert_allclose(instance.box, match.box, atol=1e-2)


# ---------------------------------------------------------------------------------------------
# Same results as transformers


def test_concept_prompts_give_transformers_instances(engine: Sam3Engine, reference: Reference) -> None:
    # One word, two words, and a word outside the vocabulary (spelt in single characters).
    prompts = ["cat", "red car", "zebra"]
    embeddings = engine.embed(IMAGES)
    for pixels, embedded in zip(IMAGES, embeddings):
        found = engine.concept(embedded, prompts, threshold=0.0)
        assert len(found) == len(prompts)
        for text, instances in zip(prompts, found):
            assert_same_instances(instances, reference.concept(pixels, text))
            assert all(i.mask.shape == pixels.shape[:2] for i in instances)


def test_exemplar_boxes_give_transformers_instances(engine: Sam3Engine, reference: Reference) -> None:
    pixels = IMAGES[0]
    (embedded,) = engine.embed([pixels])
    exemplars = [((10.0, 20.0, 80.0, 90.0), True), ((100.0, 50.0, 190.0, 140.0), False)]
    for text in ("cat", "visual"):
        (found,) = engine.concept(embedded, [text], exemplars=exemplars, threshold=0.0)
        assert_same_instances(found, reference.concept(pixels, text, exemplars))
    # And the boxes do change the answer.
    (plain,) = engine.concept(embedded, ["cat"], threshold=0.0)
    assert [i.score for i in plain] != [i.score for i in found]


def test_thresholds_and_instance_cap(engine: Sam3Engine, reference: Reference) -> None:
    pixels = IMAGES[1]
    (embedded,) = engine.embed([pixels])
    everything = reference.concept(pixels, "dog", threshold=0.0)
    scores = sorted((i.score for i in everything), reverse=True)
    threshold = (scores[2] + scores[3]) / 2  # between the third and the fourth best
    (kept,) = engine.concept(embedded, ["dog"], threshold=threshold, mask_threshold=0.7)
    assert_same_instances(kept, reference.concept(pixels, "dog", threshold=threshold, mask_threshold=0.7))
    assert len(kept) == 3
    (capped,) = engine.concept(embedded, ["dog"], threshold=0.0, max_instances=2)
    np.testing.assert_allclose([i.score for i in capped], scores[:2], atol=SCORE_TOLERANCE)
    (none,) = engine.concept(embedded, ["dog"], threshold=1.0)
    assert none == []
    # The cap holds over all the prompts of a call: the best scores whichever prompt found them
    # (many labels and a low threshold must not make a mask per query and label).
    prompts = ["dog", "cat", "red square"]
    uncapped = engine.concept(embedded, prompts, threshold=0.0)
    best = sorted((i.score for per in uncapped for i in per), reverse=True)[:4]
    capped_all = engine.concept(embedded, prompts, threshold=0.0, max_instances=4)
    assert sum(len(per) for per in capped_all) == 4
    np.testing.assert_allclose(sorted((i.score for per in capped_all for i in per), reverse=True), best, atol=SCORE_TOLERANCE)
    for per, full in zip(capped_all, uncapped):
        assert all(any(iou(i.mask, j.mask) >= 0.99 for j in full) for i in per)


@pytest.mark.parametrize(
    ("points", "labels", "boxes", "multimask"),
    [
        ([(50.0, 60.0)], [1], [], True),  # one click: the best of three masks
        ([(50.0, 60.0), (120.0, 30.0)], [1, 0], [], False),  # a positive and a negative click
        ([], [], [(20.0, 30.0, 110.0, 100.0)], False),  # a box
        ([(60.0, 70.0)], [1], [(20.0, 30.0, 110.0, 100.0), (90.0, 10.0, 190.0, 140.0)], False),  # two boxes and a click
    ],
    ids=["click", "clicks", "box", "boxes-and-click"],
)
def test_clicks_and_boxes_give_transformers_masks(engine: Sam3Engine, reference: Reference, points: list, labels: list,
                                                  boxes: list, multimask: bool) -> None:  # fmt: skip
    for pixels in IMAGES[:2]:
        (embedded,) = engine.embed([pixels])
        masks, scores = engine.track(embedded, np.array(points).reshape(-1, 2), np.array(labels), np.array(boxes).reshape(-1, 4), multimask)
        want_masks, want_scores = reference.click(pixels, points, labels, boxes, multimask)
        assert masks.shape == (max(len(boxes), 1), *pixels.shape[:2]) and masks.dtype == bool
        np.testing.assert_allclose(scores, want_scores, atol=SCORE_TOLERANCE)
        for got, want in zip(masks, want_masks):
            assert iou(got, want) >= MIN_IOU
            assert 0 < got.mean() < 1  # a mask, not an empty or full frame


def test_four_level_tracker_config_keeps_the_no_memory_embedding(engine: Sam3Engine, tmp_path: Path) -> None:
    """facebook/sam3's tracker config may list the detector's four FPN levels. transformers'
    own ``Sam3TrackerModel`` then adds ``no_memory_embedding`` to the fourth level and drops it
    (5.24); the engine keeps the three levels the mask decoder reads and adds it to the third,
    so the same weights give the same click masks whichever way the config lists them."""
    from transformers import Sam3TrackerModel, Sam3TrackerProcessor

    four = Sam3Engine.load(write_model(tmp_path / "sam3", tracker_levels=4), "cpu")
    pixels = IMAGES[0]
    (three_levels,) = engine.embed([pixels])
    (four_levels,) = four.embed([pixels])
    for a, b in zip(three_levels.tracker, four_levels.tracker, strict=True):
        torch.testing.assert_close(a, b)
    args = (np.array([[50.0, 60.0]]), np.array([1]), np.zeros((0, 4)), True)
    masks, scores = four.track(four_levels, *args)
    want_masks, want_scores = engine.track(three_levels, *args)
    assert iou(masks[0], want_masks[0]) >= MIN_IOU
    np.testing.assert_allclose(scores, want_scores, atol=SCORE_TOLERANCE)
    # transformers' own tracker on that config: the embedding went nowhere.
    tracker = Sam3TrackerModel.from_pretrained(tmp_path / "sam3").eval()
    processor = Sam3TrackerProcessor.from_pretrained(tmp_path / "sam3")
    inputs = processor(images=pixels, input_points=[[[[50.0, 60.0]]]], input_labels=[[[1]]], return_tensors="pt")
    with torch.inference_mode():
        embedded = tracker.get_image_embeddings(inputs["pixel_values"])
    assert not torch.allclose(embedded[-1], three_levels.tracker[-1], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# One encoder pass per image, text once per prompt


def count_calls(module: Any) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_one_vision_encoder_pass_per_image_for_prompts_and_clicks(folder: Path) -> None:
    engine = Sam3Engine.load(folder, "cpu")
    assert engine.tracker.vision_encoder.backbone is engine.detector.vision_encoder.backbone
    vit = count_calls(engine.backbone)
    text = count_calls(engine.detector.text_encoder)
    embeddings = engine.embed(IMAGES)
    assert vit[0] == 1  # one pass for the three images
    features = engine.encode_text(["cat", "dog", "red car"])
    assert text[0] == 1  # one pass for the three prompts
    for embedded in embeddings:
        engine.concept(embedded, features, threshold=0.3)
        engine.concept(embedded, features, exemplars=[((10.0, 10.0, 60.0, 60.0), True)], threshold=0.3)
        engine.track(embedded, np.array([[40.0, 40.0]]), np.array([1]), np.zeros((0, 4)), True)
        engine.track(embedded, np.array([[40.0, 40.0], [70.0, 20.0]]), np.array([1, 0]), np.array([[5.0, 5.0, 90.0, 90.0]]), False)
    assert vit[0] == 1 and text[0] == 1
    engine.concept(embeddings[0], ["tree", "car"], threshold=0.3)  # prompts given as text: encoded once, together
    assert vit[0] == 1 and text[0] == 2


def test_batch_embedding_equals_one_by_one(engine: Sam3Engine) -> None:
    batch = engine.embed(IMAGES)
    for pixels, together in zip(IMAGES, batch):
        (alone,) = engine.embed([pixels])
        assert (together.height, together.width) == pixels.shape[:2]
        for a, b in zip((*together.detector, *together.tracker), (*alone.detector, *alone.tracker), strict=True):
            assert a.shape[0] == 1
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        assert together.nbytes == alone.nbytes > 0
        assert_same_instances(engine.concept(together, ["square"], threshold=0.0)[0], engine.concept(alone, ["square"], threshold=0.0)[0])
        args = (np.array([[30.0, 40.0]]), np.array([1]), np.zeros((0, 4)), True)
        assert iou(engine.track(together, *args)[0][0], engine.track(alone, *args)[0][0]) >= MIN_IOU


def test_text_features_reused_across_images_give_the_same_instances(engine: Sam3Engine) -> None:
    features = engine.encode_text(["cat", "zebra"])
    for embedded in engine.embed(IMAGES[:2]):
        for by_features, by_text in zip(engine.concept(embedded, features, threshold=0.0), engine.concept(embedded, ["cat", "zebra"], threshold=0.0)):
            assert_same_instances(by_features, by_text)


def test_embedding_is_per_image(engine: Sam3Engine) -> None:
    first, second = engine.embed(IMAGES[:2])
    assert isinstance(first, Embedding)
    masks = [engine.concept(e, ["cat"], threshold=0.0)[0][0].mask for e in (first, second)]
    assert masks[0].shape != masks[1].shape
    clicks = [engine.track(e, np.array([[40.0, 40.0]]), np.array([1]), np.zeros((0, 4)), True)[0][0] for e in (first, second)]
    assert clicks[0].shape == IMAGES[0].shape[:2] and clicks[1].shape == IMAGES[1].shape[:2]


def test_nothing_asked_nothing_done(engine: Sam3Engine) -> None:
    (embedded,) = engine.embed(IMAGES[:1])
    assert engine.embed([]) == []
    assert engine.concept(embedded, [], threshold=0.0) == []
    with pytest.raises(ValueError, match="a point or a box"):
        engine.track(embedded, np.zeros((0, 2)), np.zeros(0), np.zeros((0, 4)), True)


# ---------------------------------------------------------------------------------------------
# Loading: offline, and clear about a wrong folder


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """IP connections and name lookups refused and recorded in this process."""
    attempts: list[Any] = []
    plain_connect = socket.socket.connect

    def refuse(what: Any) -> None:
        attempts.append(what)
        raise OSError(101, "network access is blocked in this test")

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse(("connect", address))
        plain_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: refuse(("getaddrinfo", host)))
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(("create_connection", address)))
    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def test_loading_never_reaches_the_network(folder: Path, no_network: list[Any]) -> None:
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by the engine's module before transformers loads
    engine = Sam3Engine.load(folder, "cpu")
    (embedded,) = engine.embed(IMAGES[:1])
    engine.concept(embedded, ["cat"], threshold=0.3)
    engine.track(embedded, np.array([[40.0, 40.0]]), np.array([1]), np.zeros((0, 4)), True)
    assert no_network == []


def test_a_folder_without_the_model_is_a_weights_error(tmp_path: Path, no_network: list[Any]) -> None:
    with pytest.raises(WeightsError, match="lacks config.json, model.safetensors"):
        Sam3Engine.load(tmp_path, "cpu")
    assert no_network == []


def test_a_detector_only_checkpoint_is_a_weights_error(folder: Path, tmp_path: Path, no_network: list[Any]) -> None:
    from transformers import Sam3Model, Sam3Processor

    Sam3Model.from_pretrained(folder).save_pretrained(tmp_path / "detector")
    Sam3Processor.from_pretrained(folder).save_pretrained(tmp_path / "detector")
    with pytest.raises(WeightsError, match="tracker"):
        Sam3Engine.load(tmp_path / "detector", "cpu")
    assert no_network == []
