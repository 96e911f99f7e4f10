"""The live view's frames: a `Trace` that hands every sampler step to a callback as it happens.

Every sampler records its steps into a `Trace` (`hdlm.sampling.trace`, what `hdlm sample
--trace` draws). `LiveTrace` is one that also turns each step of the first sample into a frame,
`{"step", "pieces", "states"}`: the text of every position after BOS and its state code
(`trace.STATES`: masked, visible, revealed, corrected, remasked; A3's committed group is
"revealed"), the codes and colours `--trace` uses. A frame is sent with `send`, from the worker
thread; when `stop` is set (the client went away) the next step raises `Cancelled`, which ends
the sampler and frees the worker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from hdlm.sampling.trace import Trace, state_codes
from hdlm.serve.worker import Cancelled


@dataclass
class LiveTrace(Trace):
    """A `Trace` that sends each step as a frame (module docstring)."""

    send: Callable[[dict], None] | None = None  # required: where the frames go
    stop: threading.Event = field(default_factory=threading.Event)
    tokenizer: object = None
    _pieces: dict[int, str] = field(default_factory=dict)  # token id -> its text

    def add(self, tokens: Tensor, **events: Tensor) -> None:
        if self.stop.is_set():
            raise Cancelled("the client disconnected")
        super().add(tokens, **events)
        row = self.tokens[-1][0, 1:]
        states = state_codes(
            row, self.revealed[-1][0], self.corrected[-1][0], self.remasked[-1][0],
            self.tokenizer.mask_id,
        )  # fmt: skip
        pieces = [self._piece(token) if state else "" for token, state in
                  zip(row.tolist(), states.tolist(), strict=True)]  # fmt: skip
        self.send({"step": len(self.tokens), "pieces": pieces, "states": states.tolist()})

    def _piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = self.tokenizer.decode([token])
        return self._pieces[token]
