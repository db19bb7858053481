"""The emotion vocabulary: the labels an event can carry come from the model manifest.

Code never lists emotions. The emotion classifier's manifest entry (or fusion) names
its labels (``engines.manifest.LoadedManifest.emotion_labels``); the loop's smoother,
the events, Home Assistant discovery and this module's JSON Schema take them from
there, so a 4-class, a 7-class or NVIDIA's 6-class model changes what is published
without a code change.

:func:`event_schema` narrows the generic event schema (docs/schemas/event.json, any
string) to one vocabulary: ``label`` and ``previous_label`` one of the labels,
``scores`` exactly one probability per label, every label.
"""

import copy
from typing import Any, Dict, Sequence


def event_schema(base: Dict[str, Any], labels: Sequence[str]) -> Dict[str, Any]:
    """The MQTT event message schema ``base`` (EventMessage's JSON Schema) for a model
    with ``labels``."""
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"an emotion vocabulary needs distinct labels, got {list(labels)}")
    schema = copy.deepcopy(base)
    # the MQTT message (the event under $defs) or the bare event (run --no-mqtt's lines)
    event = schema["$defs"]["EmotionEvent"] if "EmotionEvent" in schema.get("$defs", {}) else schema
    props = event["properties"]
    one_of = {"anyOf": [{"enum": list(labels)}, {"type": "null"}]}
    for key in ("label", "previous_label"):
        props[key] = {**props[key], **one_of}
    props["scores"] = {
        **props["scores"],
        "properties": {label: {"type": "number", "minimum": 0, "maximum": 1} for label in labels},
        "additionalProperties": False,
        "required": list(labels),
    }
    return schema
