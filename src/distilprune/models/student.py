"""DistilBERT-style students: fewer layers, initialised from a subset of the teacher's layers.

The student is a new model of the teacher's class and config with ``len(layer_map)`` layers.
Every tensor is copied from the teacher: student layer ``i`` from teacher layer
``layer_map[i]`` (keys containing ``.layer.N.``), everything else (embeddings, pooler, heads,
MPNet's relative attention bias, XLNet's ``mask_emb``...) under the same name.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedModel

from distilprune.errors import UserError, require

_LAYER_RE = re.compile(r"\.layer\.(\d+)\.")


def num_layers_of(model: PreTrainedModel) -> int:
    """Number of transformer layers (``num_hidden_layers``, ``n_layers`` or ``n_layer``)."""
    return int(model.config.num_hidden_layers)


def parse_layer_map(spec: str | Sequence[int]) -> list[int]:
    """``"0,2,4"`` (or a list) → ``[0, 2, 4]``; not checked against a teacher."""
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        try:
            return [int(p) for p in parts]
        except ValueError as exc:
            raise UserError(f"layer map must be comma-separated integers, got {spec!r}") from exc
    return [int(i) for i in spec]


def validate_layer_map(layer_map: Sequence[int], teacher_layers: int) -> list[int]:
    """Check ``layer_map`` is non-empty, in ``[0, teacher_layers)`` and without duplicates."""
    layer_map = list(layer_map)
    require(len(layer_map) > 0, "layer map is empty")
    bad = [i for i in layer_map if not 0 <= i < teacher_layers]
    require(not bad, f"layer map {layer_map}: {bad} out of range for a "
                     f"{teacher_layers}-layer teacher (valid: 0..{teacher_layers - 1})")
    dupes = sorted({i for i in layer_map if layer_map.count(i) > 1})
    require(not dupes, f"layer map {layer_map} repeats layers {dupes}")
    return layer_map


def default_layer_map(teacher_layers: int, student_layers: int | None = None) -> list[int]:
    """Evenly spaced teacher layers, starting at 0: 12→6 gives ``[0, 2, 4, 6, 8, 10]``.

    ``student_layers`` defaults to half the teacher's (at least 1).
    """
    if student_layers is None:
        student_layers = max(1, teacher_layers // 2)
    require(1 <= student_layers <= teacher_layers,
            f"a student needs 1..{teacher_layers} layers, got {student_layers}")
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def _layer_list(model: nn.Module, num_layers: int) -> nn.ModuleList:
    lists = [m for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and name.split(".")[-1] == "layer"]
    if len(lists) != 1 or len(lists[0]) != num_layers:
        raise TypeError(f"cannot find the {num_layers} transformer layers of "
                        f"{type(model).__name__}")
    return lists[0]


def _teacher_key(student_key: str, layer_map: list[int]) -> str:
    return _LAYER_RE.sub(lambda m: f".layer.{layer_map[int(m.group(1))]}.", student_key, count=1)


def build_student(
    teacher: PreTrainedModel,
    layer_map: str | Sequence[int] | None = None,
    num_layers: int | None = None,
) -> PreTrainedModel:
    """A copy of ``teacher`` keeping only the layers in ``layer_map`` (default: every other).

    ``num_layers`` picks the default map's size when ``layer_map`` is omitted. The teacher is
    not modified; the student has the teacher's class, dtype, device and training mode.
    """
    teacher_layers = num_layers_of(teacher)
    _layer_list(teacher, teacher_layers)
    if layer_map is None:
        layer_map = default_layer_map(teacher_layers, num_layers)
    layer_map = validate_layer_map(parse_layer_map(layer_map), teacher_layers)
    require(num_layers is None or num_layers == len(layer_map),
            f"num_layers={num_layers} does not match the layer map {layer_map}")

    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layer_map)
    student = type(teacher)(config)
    _layer_list(student, len(layer_map))

    source = teacher.state_dict()
    state = {}
    for key, tensor in student.state_dict().items():
        teacher_key = _teacher_key(key, layer_map)
        if teacher_key not in source or source[teacher_key].shape != tensor.shape:
            raise RuntimeError(f"student tensor {key} has no teacher counterpart {teacher_key}")
        state[key] = source[teacher_key]
    student.load_state_dict(state, strict=True)
    student.tie_weights()
    param = next(teacher.parameters())
    return student.to(device=param.device, dtype=param.dtype).train(teacher.training)


def copied_from(student_key: str, layer_map: Sequence[int]) -> str:
    """The teacher state-dict key a student key was initialised from."""
    return _teacher_key(student_key, list(layer_map))
