"""Plain tensors and settings to and from Flower records, with nothing executable on the wire.

Flower serialises an :class:`flwr.app.ArrayRecord` as ``.npy`` buffers written and read with
``allow_pickle=False``, and a :class:`flwr.app.ConfigRecord` as typed scalars (int, float,
str, bytes, bool and lists of them). Those two are all this package puts in a message: a
``dict[str, torch.Tensor]`` becomes an ArrayRecord, everything else a ConfigRecord. No
pickle, no ``torch.load``, no code objects.

numpy has no bfloat16, so bfloat16 tensors travel as float32 (exact: every bfloat16 value is
a float32 value) and the original dtype travels next to them in a ConfigRecord; the receiver
casts back, so the round trip is bit-exact.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping

from flwr.app import ArrayRecord, ConfigRecord

if TYPE_CHECKING:  # torch is imported where tensors are handled, so that importing this module is quick
    import torch

State = dict[str, "torch.Tensor"]
_WIDE_DTYPES = ("torch.bfloat16",)  # numpy lacks these: sent as float32


def _dtypes() -> dict[str, "torch.dtype"]:
    import torch  # optional/heavy: torch (importing this module stays quick)

    return {str(d): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64,
                                torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)}


def state_to_records(state: Mapping[str, "torch.Tensor"]) -> tuple[ArrayRecord, ConfigRecord]:
    """``(arrays, dtypes)``: the tensors (bfloat16 widened to float32) and their true dtypes."""
    import torch  # optional/heavy: torch (importing this module stays quick)

    arrays: dict[str, torch.Tensor] = {}
    dtypes: dict[str, str] = {}
    for key, t in state.items():
        t = t.detach().cpu()
        if str(t.dtype) in _WIDE_DTYPES:
            dtypes[key] = str(t.dtype)
            t = t.to(torch.float32)
        arrays[key] = t.contiguous()
    return ArrayRecord(arrays), ConfigRecord({"dtypes": json.dumps(dtypes, sort_keys=True)})


def records_to_state(arrays: ArrayRecord, dtypes: ConfigRecord | None = None) -> State:
    """Inverse of :func:`state_to_records` (key order preserved)."""
    narrowed = json.loads(str(dtypes["dtypes"])) if dtypes is not None and "dtypes" in dtypes else {}
    known = _dtypes()
    out: State = {}
    for key, t in arrays.to_torch_state_dict().items():
        if key in narrowed:
            name = narrowed[key]
            if name not in known:
                raise ValueError(f"tensor {key!r}: unsupported dtype {name!r} in message")
            t = t.to(known[name])
        out[key] = t
    return out


def pack_config(values: Mapping[str, Any]) -> ConfigRecord:
    """A ConfigRecord holding ``values`` as one JSON string (nested lists/dicts allowed).

    JSON is data only: ``json.loads`` never builds objects other than dicts, lists, strings,
    numbers, booleans and None.
    """
    return ConfigRecord({"json": json.dumps(dict(values), sort_keys=True)})


def unpack_config(record: ConfigRecord) -> dict[str, Any]:
    """Inverse of :func:`pack_config`."""
    return json.loads(str(record["json"]))


def state_nbytes(state: Mapping[str, "torch.Tensor"]) -> int:
    """Payload bytes of a state as sent (bfloat16 counted at its wire width, float32)."""
    return sum(t.numel() * (4 if str(t.dtype) in _WIDE_DTYPES else t.element_size()) for t in state.values())
