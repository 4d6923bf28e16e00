"""shared.text_prompts: the caption a text-prompted detector gets and the label each detected
phrase maps back to, with fixed detector outputs."""

from __future__ import annotations

from typing import Any

from shared.label_config import parse_label_config
from shared.protocol import Context
from shared.text_prompts import text_prompt
from tests import configs

CONTROL = parse_label_config(configs.TEXT_PROMPT_BOXES).control("label")


def typed(*texts: Any) -> Context:
    result = [{"value": {"text": list(texts)}, "id": "t", "from_name": "prompt", "to_name": "image", "type": "textarea"}]
    return Context.model_validate({"result": result})


def test_without_a_typed_prompt_the_labels_and_synonyms_are_the_prompt() -> None:
    prompt = text_prompt(None, CONTROL)
    assert prompt is not None and not prompt.typed
    assert prompt.caption == "cat . kitten . house . traffic light ."
    assert [prompt.label_for(p) for p in ("cat", "Kitten", "house", "traffic light", "light")] == [
        "cats", "cats", "house", "traffic_light", "traffic_light",
    ]  # fmt: skip
    assert prompt.label_for("dog") is None and prompt.label_for("") is None  # not asked for: dropped
    assert prompt.label_for("cat house") in ("cats", "house")  # two phrases run together: one of them


def test_a_typed_prompt_maps_to_labels_and_takes_the_first_label_otherwise() -> None:
    prompt = text_prompt(typed("football player. brown cat_cats\nKitten"), CONTROL)
    assert prompt is not None and prompt.typed
    assert prompt.phrases == ("football player", "brown cat", "kitten")
    assert prompt.labels == ("cats", "cats", "cats")  # unknown phrase: the first label, as asked
    assert prompt.label_for("brown cat") == "cats" and prompt.label_for("player") == "cats"
    assert prompt.label_for("tree") == "cats"  # typed: the annotator asked for what was found
    house = text_prompt(typed("white house_house", "red light_traffic_light"), CONTROL)
    assert house is not None and house.labels == ("house", "traffic_light")
    assert house.caption == "white house . red light ."
    unknown = text_prompt(typed("brown dog_dogs"), CONTROL)  # no label "dogs": the first label
    assert unknown is not None and (unknown.phrases, unknown.labels) == (("brown dog",), ("cats",))


def test_empty_text_falls_back_to_the_labels_and_nothing_gives_none() -> None:
    prompt = text_prompt(typed("  ", ""), CONTROL)
    assert prompt is not None and not prompt.typed
    bare = parse_label_config('<View><Image name="i" value="$i"/><RectangleLabels name="r" toName="i"/></View>').control("r")
    assert text_prompt(None, bare) is None
    only_typed = text_prompt(typed("a dog"), bare)
    assert only_typed is None  # no label to give what is found
