"""Label Studio label configs: the controls a function fills, the objects they point at, their
labels and the ``model_*`` / ``predicted_values`` attributes label-studio-ml-backend users rely on.

Parsed with the standard library's ElementTree (through defusedxml, since the XML comes from the
client) rather than label-studio-sdk's ``LabelInterface``: the SDK pulls in about 520 MB of
packages (pandas, nltk, lxml, opencv-headless, ...) and takes 0.3-0.5 s to import, which every
cold start would pay. The tests check this parser against ``LabelInterface`` on real configs.
It follows the same rules: a control is a tag with ``name`` and ``toName`` (Filter excepted), an
object is a tag with ``name`` and ``value`` (or ``valueList``), and Label / Choice tags belong to
the nearest enclosing control.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from types import MappingProxyType

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

__all__ = [
    "Control",
    "Label",
    "LabelConfig",
    "LabelConfigError",
    "ObjectTag",
    "parse_label_config",
]

_LABEL_TAGS = frozenset({"Label", "Choice"})
_NOT_CONTROL_TAGS = frozenset({"Filter"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
MAX_CONFIG_CHARS = 1 << 20


class LabelConfigError(ValueError):
    """The label config is invalid, or lacks what the function needs. The runtime answers 422."""


def _frozen(attrs: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(attrs))


@dataclass(frozen=True)
class Label:
    """A ``<Label>`` or ``<Choice>`` inside a control."""

    value: str
    attrs: Mapping[str, str] = field(default_factory=dict)

    @property
    def predicted_values(self) -> tuple[str, ...]:
        """Model class names mapped to this label (``predicted_values="person, player"``)."""
        raw = self.attrs.get("predicted_values", "")
        return tuple(v.strip() for v in raw.split(",") if v.strip())

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.attrs.get(name, default)


@dataclass(frozen=True)
class ObjectTag:
    """A data object such as ``<Image name="image" value="$image"/>``."""

    tag: str
    name: str
    value: str
    attrs: Mapping[str, str] = field(default_factory=dict)

    @property
    def value_key(self) -> str | None:
        """The task data key the object reads (``$image`` -> ``image``); None for a literal."""
        return self.value[1:] if self.value.startswith("$") and len(self.value) > 1 else None


@dataclass(frozen=True)
class Control:
    """A control tag (RectangleLabels, BrushLabels, Choices, TextArea, ...)."""

    tag: str
    name: str
    to_name: tuple[str, ...]
    objects: tuple[ObjectTag, ...]
    labels: tuple[Label, ...] = ()
    attrs: Mapping[str, str] = field(default_factory=dict)

    # -- the object it points at -------------------------------------------------------------
    @property
    def object(self) -> ObjectTag:
        """The first object named in ``toName``."""
        return self.objects[0]

    @property
    def value_key(self) -> str | None:
        """The task data key of the first object (``image`` for ``$image``)."""
        return self.object.value_key

    # -- attributes ----------------------------------------------------------------------------
    def get(self, name: str, default: str | None = None) -> str | None:
        return self.attrs.get(name, default)

    def get_bool(self, name: str, default: bool = False) -> bool:
        """A boolean attribute as label-studio-ml-backend reads it (1/true/yes, any case)."""
        raw = self.attrs.get(name)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise LabelConfigError(f'{self.tag} "{self.name}": {name}="{raw}" is not a boolean')

    def get_float(self, name: str, default: float | None = None) -> float | None:
        raw = self.attrs.get(name)
        if raw is None or not raw.strip():
            return default
        try:
            return float(raw)
        except ValueError:
            raise LabelConfigError(
                f'{self.tag} "{self.name}": {name}="{raw}" is not a number'
            ) from None

    def get_int(self, name: str, default: int | None = None) -> int | None:
        raw = self.attrs.get(name)
        if raw is None or not raw.strip():
            return default
        try:
            return int(raw)
        except ValueError:
            raise LabelConfigError(
                f'{self.tag} "{self.name}": {name}="{raw}" is not an integer'
            ) from None

    @property
    def model_path(self) -> str | None:
        return self.attrs.get("model_path") or None

    @property
    def model_score_threshold(self) -> float | None:
        """``model_score_threshold`` (or the older ``score_threshold``), None when unset."""
        value = self.get_float("model_score_threshold")
        return value if value is not None else self.get_float("score_threshold")

    @property
    def model_skip(self) -> bool:
        return self.get_bool("model_skip")

    @property
    def smart(self) -> bool:
        return self.get_bool("smart")

    @property
    def smart_only(self) -> bool:
        return self.get_bool("smartOnly")

    # -- labels --------------------------------------------------------------------------------
    @property
    def label_values(self) -> tuple[str, ...]:
        return tuple(label.value for label in self.labels)

    def label(self, value: str) -> Label | None:
        return next((label for label in self.labels if label.value == value), None)

    def label_map(self, model_names: Iterable[str] | None = None) -> dict[str, str]:
        """Map model class names to this control's labels, as label-studio-ml-backend does.

        Each label takes the classes listed in its ``predicted_values``; a label without a
        usable ``predicted_values`` takes the model class of the same name (exact first, then
        case-insensitive). With ``model_names`` given, only classes the model has are mapped;
        without it (open-vocabulary models) every listed name and every label value maps.
        Classes that map to no label are absent: their detections are dropped.
        """
        names = None if model_names is None else list(model_names)
        known = None if names is None else set(names)
        lower = {} if names is None else {n.lower(): n for n in reversed(names)}
        mapping: dict[str, str] = {}
        for label in self.labels:
            matched = False
            for value in label.predicted_values:
                if known is None or value in known:
                    mapping[value] = label.value
                    matched = True
            if matched:
                continue
            if known is None or label.value in known:
                mapping[label.value] = label.value
            elif label.value.lower() in lower:
                mapping[lower[label.value.lower()]] = label.value
        return mapping

    def label_for(self, model_class: str, model_names: Iterable[str] | None = None) -> str | None:
        """The label a model class maps to, or None when it maps to none."""
        return self.label_map(model_names).get(model_class)


@dataclass(frozen=True)
class LabelConfig:
    """A parsed label config: its controls in document order and its objects by name."""

    xml: str
    controls: tuple[Control, ...]
    objects: Mapping[str, ObjectTag]

    @cached_property
    def _by_name(self) -> dict[str, Control]:
        return {control.name: control for control in self.controls}

    def control(self, name: str) -> Control:
        try:
            return self._by_name[name]
        except KeyError:
            raise LabelConfigError(f'the label config has no control named "{name}"') from None

    def find(
        self,
        control_type: str | Iterable[str] | None = None,
        object_type: str | Iterable[str] | None = None,
    ) -> list[Control]:
        """Every control of the given type(s) bound to an object of the given type(s).

        Types compare case-insensitively (``"brushlabels"`` finds ``BrushLabels``); None
        matches any.
        """
        controls = _type_set(control_type)
        objects = _type_set(object_type)
        return [
            c
            for c in self.controls
            if (controls is None or c.tag.lower() in controls)
            and (objects is None or c.object.tag.lower() in objects)
        ]

    def first(
        self,
        control_type: str | Iterable[str] | None = None,
        object_type: str | Iterable[str] | None = None,
    ) -> Control | None:
        found = self.find(control_type, object_type)
        return found[0] if found else None

    def require(
        self,
        control_type: str | Iterable[str],
        object_type: str | Iterable[str] | None = None,
    ) -> list[Control]:
        """Like ``find`` but a config without a match is a LabelConfigError naming what it needs."""
        found = self.find(control_type, object_type)
        if not found:
            wanted = " or ".join(sorted(_type_names(control_type)))
            bound = f" bound to {' or '.join(sorted(_type_names(object_type)))}" if object_type else ""
            raise LabelConfigError(f"the label config needs a {wanted} control{bound}")
        return found

    def labels_for(self, control: Control) -> tuple[Label, ...]:
        """The labels a control draws with: its own, or for a control without labels (such as
        VideoRectangle) those of a Labels control on the same object."""
        if control.labels:
            return control.labels
        for other in self.controls:
            if other.tag == "Labels" and other.labels and set(other.to_name) & set(control.to_name):
                return other.labels
        return ()


def _type_names(types: str | Iterable[str] | None) -> set[str]:
    if types is None:
        return set()
    return {types} if isinstance(types, str) else set(types)


def _type_set(types: str | Iterable[str] | None) -> set[str] | None:
    return None if types is None else {t.lower() for t in _type_names(types)}


def parse_label_config(xml: str) -> LabelConfig:
    """Parse a label config. Raises LabelConfigError for anything Label Studio would reject that
    a function depends on: bad XML, a control naming a missing object, duplicate names.

    Every /predict carries the project's config, so parses are cached (the result is immutable).
    """
    if not isinstance(xml, str):
        raise LabelConfigError(f"the label config must be a string, got {type(xml).__name__}")
    if not xml.strip():
        raise LabelConfigError("the label config is empty")
    if len(xml) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"the label config is longer than {MAX_CONFIG_CHARS} characters")
    return _parse(xml)


@lru_cache(maxsize=64)
def _parse(xml: str) -> LabelConfig:
    try:
        root = fromstring(xml, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException) as exc:
        raise LabelConfigError(f"the label config is not valid XML: {exc}") from None

    objects: dict[str, ObjectTag] = {}
    found: list[tuple[ET.Element, list[Label]]] = []

    # Walked with an explicit stack: a client's config may nest deeper than Python's recursion.
    stack: list[tuple[ET.Element, list[Label] | None]] = [(root, None)]
    while stack:
        element, labels = stack.pop()
        attrs = element.attrib
        name = attrs.get("name")
        if element.tag in _LABEL_TAGS:
            if labels is not None and attrs.get("value") is not None:
                labels.append(Label(value=attrs["value"], attrs=_frozen(attrs)))
        elif name and attrs.get("toName") and element.tag not in _NOT_CONTROL_TAGS:
            labels = []
            found.append((element, labels))
        elif name and (attrs.get("value") or attrs.get("valueList")):
            if name in objects:
                raise LabelConfigError(f'two objects are named "{name}"')
            objects[name] = ObjectTag(
                tag=element.tag,
                name=name,
                value=attrs.get("value") or attrs.get("valueList", ""),
                attrs=_frozen(attrs),
            )
        stack.extend((child, labels) for child in reversed(element))

    controls: list[Control] = []
    names: set[str] = set()
    for element, labels in found:
        attrs = element.attrib
        name = attrs["name"]
        if name in names:
            raise LabelConfigError(f'two controls are named "{name}"')
        names.add(name)
        to_name = tuple(n.strip() for n in attrs["toName"].split(",") if n.strip())
        missing = [n for n in to_name if n not in objects]
        if missing or not to_name:
            raise LabelConfigError(
                f'{element.tag} "{name}" points at toName="{attrs["toName"]}", '
                "which names no object in the label config"
            )
        controls.append(
            Control(
                tag=element.tag,
                name=name,
                to_name=to_name,
                objects=tuple(objects[n] for n in to_name),
                labels=tuple(labels),
                attrs=_frozen(attrs),
            )
        )
    return LabelConfig(xml=xml, controls=tuple(controls), objects=MappingProxyType(objects))
