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
from dataclasses import dataclass

from shared.label_config import Control
from shared.protocol import Context

__all__ = ["TextPrompt", "text_prompt"]

_SEPARATORS = re.compile(r"[.\n]+")
_SPACES = re.compile(r"\s+")
# Grounding DINO's text encoder reads at most 256 tokens; a caption is kept well inside that.
MAX_PHRASES = 64


def _normal(text: str) -> str:
    return _SPACES.sub(" ", text).strip().lower()


@dataclass(frozen=True)
class TextPrompt:
    """Phrases for the model (lower case, in order) and the label each one stands for.
    ``typed``: the annotator typed them; ``fallback``: the label a detection gets when its
    phrase matches none (only for a typed prompt: the annotator asked for it)."""

    phrases: tuple[str, ...]
    labels: tuple[str, ...]
    typed: bool
    fallback: str | None

    @property
    def caption(self) -> str:
        """Grounding DINO's caption: ``"brown cat . house ."``."""
        return " . ".join(self.phrases) + " ."

    def label_for(self, detected: str) -> str | None:
        """The label of a detected phrase: the prompt phrase it equals, else the one sharing
        the most words with it (a detector may return part of a phrase, or two run together);
        None (dropped) when it shares none and the prompt was not typed."""
        phrase = _normal(detected.replace(".", " "))
        if phrase in self.phrases:
            return self.labels[self.phrases.index(phrase)]
        words = set(phrase.split())
        overlap = [len(words & set(p.split())) for p in self.phrases]
        best = max(range(len(overlap)), key=overlap.__getitem__, default=None)
        if best is not None and overlap[best] > 0:
            return self.labels[best]
        return self.fallback if self.typed else None


def _split(part: str, labels: dict[str, str], fallback: str | None) -> tuple[str, str | None]:
    """A typed phrase and its label: "brown cat_cats" -> ("brown cat", "cats"), at the first
    underscore followed by a label's name (labels may hold underscores themselves); a phrase
    without one is its own label if it names one, else the fallback."""
    for at, char in enumerate(part):
        if char == "_" and part[at + 1 :].strip().lower() in labels:
            return part[:at], labels[part[at + 1 :].strip().lower()]
    return part.rpartition("_")[0] if "_" in part else part, labels.get(part.strip().lower(), fallback)


def text_prompt(context: Context | None, control: Control) -> TextPrompt | None:
    """The prompt for one request: the typed text when the context has some, else the output
    control's labels and their synonyms; None when there is neither."""
    fallback = control.label_values[0] if control.label_values else None
    typed = [part for text in (context.texts() if context else []) for part in _SEPARATORS.split(text)]
    phrases: list[str] = []
    labels: list[str] = []
    if any(part.strip() for part in typed):
        names = {key.lower(): value for key, value in control.label_map().items()}
        for part in typed:
            prompt, target = _split(part, names, fallback)
            phrase = _normal(prompt)
            if phrase and target is not None and phrase not in phrases:
                phrases.append(phrase)
                labels.append(target)
        is_typed = True
    else:
        for name, label in control.label_map().items():
            phrase = _normal(name.replace("_", " "))
            if phrase and phrase not in phrases:
                phrases.append(phrase)
                labels.append(label)
        is_typed = False
    if not phrases:
        return None
    return TextPrompt(tuple(phrases[:MAX_PHRASES]), tuple(labels[:MAX_PHRASES]), is_typed, fallback)
