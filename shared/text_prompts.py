"""Text prompts for open-vocabulary detectors (Grounding DINO): the caption, and each detected
phrase mapped back to a label of the project.

The prompt is what the annotator typed into a TextArea (PROTOCOL.md §4: ``value.text``), or,
without one (batch "Retrieve predictions"), the output control's labels with their
``predicted_values`` as synonyms. label-studio-ml-backend's convention ``prompt_label`` is
honoured: "brown cat_cats" prompts "brown cat" and labels what it finds "cats". Phrases are
separated by "." (Grounding DINO's own separator) or new lines.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from lsfn.shared.label_config import Control
from lsfn.shared.protocol import Context

__all__ = ["TextPrompt", "text_prompt"]

_SEPARATORS = re.compile(r"[.\n]+")
# A word as BERT's tokenizer cuts text: runs of letters or digits, each CJK character alone
# (the detector's phrases come back decoded from those tokens: "hard - hat", "红 猫").
_WORDS = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+")
# Typed text read (an annotator types a few words; the body limit alone would allow megabytes),
# and phrases kept: Grounding DINO's text encoder reads 256 tokens in all.
MAX_TEXT = 2000
MAX_PHRASES = 64


def _normal(text: str) -> str:
    return " ".join(text.split()).lower()


def _words(text: str) -> tuple[str, ...]:
    """Lower-case words without accents, as the detector's tokenizer sees them."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text.replace("##", "")) if not unicodedata.combining(c))
    return tuple(_WORDS.findall(plain.lower()))


@dataclass(frozen=True)
class TextPrompt:
    """Phrases for the model (lower case, in order) and the label each one stands for.
    ``typed``: the annotator typed them; a detection whose phrase matches none of them then
    takes the first phrase's label (the annotator asked for it), otherwise it is dropped."""

    phrases: tuple[str, ...]
    labels: tuple[str, ...]
    typed: bool

    @property
    def caption(self) -> str:
        """Grounding DINO's caption: ``"brown cat . house ."``."""
        return " . ".join(self.phrases) + " ."

    def label_for(self, detected: str) -> str | None:
        """The label of a detected phrase: the prompt phrase with the same words, else the one
        sharing the most words with it (a detector may return part of a phrase, or two run
        together); with none shared, the first phrase's label for a typed prompt, else None."""
        words = _words(detected)
        keys = [_words(p) for p in self.phrases]
        if words in keys:
            return self.labels[keys.index(words)]
        overlap = [len(set(words) & set(k)) for k in keys]
        best = max(range(len(overlap)), key=overlap.__getitem__)
        if overlap[best] > 0:
            return self.labels[best]
        return self.labels[0] if self.typed else None


def _label_names(control: Control) -> dict[str, str]:
    """Each label by its value and its ``predicted_values``, lower case."""
    names = {label.value.lower(): label.value for label in control.labels}
    names.update({key.lower(): value for key, value in control.label_map().items()})
    return names


def _split(part: str, names: dict[str, str], fallback: str | None) -> tuple[str, str | None]:
    """A typed phrase and its label. "brown cat_cats" -> ("brown cat", "cats"): the longest
    label name after an underscore at the end (names may hold underscores themselves); a part
    that is a label's name is its own label ("traffic_light"); otherwise the fallback (for
    "brown dog_dogs" without a label "dogs", with the prompt "brown dog")."""
    key = part.strip().lower()
    if key in names:
        return part.replace("_", " "), names[key]
    suffixes = [name for name in names if key.endswith("_" + name) and len(key) > len(name) + 1]
    if suffixes:
        name = max(suffixes, key=len)
        return part.strip()[: -len(name) - 1], names[name]
    # prompt_label with a label the config lacks: the prompt, and the fallback label.
    return part.rpartition("_")[0] if "_" in part else part, fallback


def _collect(pairs: Iterable[tuple[str, str | None]]) -> tuple[list[str], list[str]]:
    """Distinct non-empty phrases with their labels, at most MAX_PHRASES."""
    kept: dict[str, str] = {}
    for prompt, label in pairs:
        phrase = _normal(prompt)
        if _words(phrase) and label is not None and phrase not in kept:
            kept[phrase] = label
            if len(kept) == MAX_PHRASES:
                break
    return list(kept), list(kept.values())


def text_prompt(context: Context | None, control: Control) -> TextPrompt | None:
    """The prompt for one request: the typed text when the context has some, else the output
    control's labels and their synonyms; None when there is neither."""
    fallback = control.label_values[0] if control.label_values else None
    text = "\n".join(context.texts() if context else [])[:MAX_TEXT]
    names = _label_names(control)
    phrases, labels = _collect(_split(part, names, fallback) for part in _SEPARATORS.split(text))
    if phrases:
        return TextPrompt(tuple(phrases), tuple(labels), typed=True)
    phrases, labels = _collect((name.replace("_", " "), label) for name, label in control.label_map().items())
    return TextPrompt(tuple(phrases), tuple(labels), typed=False) if phrases else None
