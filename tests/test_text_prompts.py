"""shared.text_prompts: the caption a text-prompted detector gets and the label each detected
phrase maps back to, with fixed detector outputs."""

from __future__ import annotations

import time
from typing import Any

from lsfn.shared.label_config import parse_label_config
from lsfn.shared.protocol import Context
from lsfn.shared.text_prompts import MAX_PHRASES, text_prompt
from tests import configs

CONTROL = parse_label_config(configs.TEXT_PROMPT_BOXES).control("label")  # cats (cat, kitten), house, traffic_light


def typed(*texts: Any) -> Context:
    result = [{"value": {"text": list(texts)}, "id": "t", "from_name": "prompt", "to_name": "image", "type": "textarea"}]
    return Context.model_validate({"result": result})


def test_without_a_typed_prompt_the_labels_and_synonyms_are_the_prompt() -> None:
    prompt = text_prompt(None, CONTROL)
    assert prompt is not None and not prompt.typed
    assert prompt.caption == "cat . kitten . house . traffic light ."
    # Phrases as the detector decodes them: case, spacing, dots, a part of a phrase.
    assert [prompt.label_for(p) for p in ("cat", "Kitten.", "house", "traffic light", "light")] == [
        "cats", "cats", "house", "traffic_light", "traffic_light",
    ]  # fmt: skip
    assert prompt.label_for("dog") is None and prompt.label_for("") is None  # not asked for: dropped
    assert prompt.label_for("cat house") in ("cats", "house")  # two phrases run together: one of them


def test_a_typed_prompt_maps_to_labels() -> None:
    prompt = text_prompt(typed("football player. brown cat_cats\nKitten"), CONTROL)
    assert prompt is not None and prompt.typed
    assert prompt.phrases == ("football player", "brown cat", "kitten")
    # A typed phrase naming no label takes the control's first label; prompt_label and synonyms map.
    assert prompt.labels == ("cats", "cats", "cats")
    house = text_prompt(typed("white house_house", "red light_traffic_light", "traffic_light"), CONTROL)
    assert house is not None and house.labels == ("house", "traffic_light", "traffic_light")
    assert house.caption == "white house . red light . traffic light ."
    # A detection whose phrase matches none of the typed ones: the first typed phrase's label.
    assert house.label_for("") == "house" and house.label_for("tree") == "house" and house.label_for("red") == "traffic_light"
    unknown = text_prompt(typed("brown dog_dogs"), CONTROL)  # no label "dogs": the first label
    assert unknown is not None and (unknown.phrases, unknown.labels) == (("brown dog",), ("cats",))


def test_a_label_with_synonyms_is_still_named_by_its_value() -> None:
    config = parse_label_config(
        '<View><Image name="i" value="$i"/><TextArea name="p" toName="i"/><RectangleLabels name="r" toName="i">'
        '<Label value="house"/><Label value="cats" predicted_values="cat,kitten"/></RectangleLabels></View>'
    ).control("r")
    for text in ("brown cat_cats", "cats", "kitten"):
        prompt = text_prompt(typed(text), config)
        assert prompt is not None and prompt.labels == ("cats",), text


def test_phrases_decoded_by_the_tokenizer_still_map() -> None:
    config = parse_label_config(
        '<View><Image name="i" value="$i"/><RectangleLabels name="r" toName="i">'
        '<Label value="hard-hat"/><Label value="Café"/><Label value="红猫"/></RectangleLabels></View>'
    ).control("r")
    prompt = text_prompt(None, config)
    assert prompt is not None
    assert [prompt.label_for(p) for p in ("hard - hat", "cafe", "红 猫", "##hat")] == ["hard-hat", "Café", "红猫", "hard-hat"]


def test_empty_or_degenerate_text_falls_back_to_the_labels_and_nothing_gives_none() -> None:
    for text in ("  ", "", "_", "__", ". . ."):
        prompt = text_prompt(typed(text), CONTROL)
        assert prompt is not None and not prompt.typed, text
    odd = text_prompt(typed("__cats"), CONTROL)
    assert odd is not None and not odd.typed  # nothing left to look for but the label name
    bare = parse_label_config('<View><Image name="i" value="$i"/><RectangleLabels name="r" toName="i"/></View>').control("r")
    assert text_prompt(None, bare) is None
    assert text_prompt(typed("a dog"), bare) is None  # no label to give what is found


def test_huge_typed_text_is_cut_quickly() -> None:
    started = time.perf_counter()
    for text in ("_" * 1_000_000, ".".join(f"w{i}" for i in range(200_000)), "a_" * 500_000):
        prompt = text_prompt(typed(text), CONTROL)
        assert prompt is None or len(prompt.phrases) <= MAX_PHRASES
    assert time.perf_counter() - started < 5  # linear in what is read, and little is read
