"""How a layer that holds the prompt's merged networks computes without them, for the base pass,
while the host's merged weights stay as they are. Shared by the host families; imports no WebUI.

Three ways, chosen per layer:

    copy    the layer's original tensors, held on its device for the generation and swapped in
            for the base pass; exact. Free where the host's own backup already lives there with
            the same dtype (on CPU), since the backup itself is swapped in.
    stream  the originals moved to the device for each call and dropped after; exact, holds nothing
            between calls; costs a transfer per call where the originals live on another device.
    term    the merged layer's output minus the networks' low-rank term, `scale * up(mid(down(x)))`
            from each network's own factors (LoRA, LoCon); within float tolerance of the original
            layer; holds the factors on the device (a few % of the layer). The term and the
            subtraction run in float32 (one rounding to the model's dtype at the end), so in half
            precision the error stays near the plain model's own.

What a switch holds on the device (copies, factors) is made on first use and released when a
sampling pass ends (`OffSwitch.end_pass`), so nothing of it stays through the VAE decode.

A switch swaps attributes only: a layer's parameter slots for `copy`, its instance `forward` for
`stream` and `term`. Nothing is written into a weight, so undoing a switch leaves every weight the
host merged bit for bit as it was.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from lib_autolora.core.recorder import Recorder

COPY, STREAM, TERM = "copy", "stream", "term"
COMFORTABLE_SHARE = 0.5  # copies only where they take at most this share of the device's budget
LowRankPart = tuple[torch.Tensor, torch.Tensor, 'torch.Tensor | None', float]  # (down, up, mid, scale), shaped
Slot = tuple[Any, str, 'torch.Tensor | None']  # (owner, attribute, original tensor or None)


class BatchLayoutError(RuntimeError):
    """A layer saw a batch that does not hold the LoRA and base rows the batched call set up."""


def tensor_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def device_budget(device: torch.device) -> int | None:
    """Bytes AutoLoRA may take for new tensors on `device`, or None where the device cannot say (then
    `auto` takes the lean path). CUDA and XPU: the driver's free memory plus what the allocator holds
    unused; MPS (memory shared with the system): the recommended working set minus what Metal has
    allocated; the CPU and other devices: None."""
    if device.type in ("cuda", "xpu"):
        backend = getattr(torch, device.type)
        if not hasattr(backend, "mem_get_info"):  # XPU before torch 2.6
            return None
        free, _ = backend.mem_get_info(device)
        return free + backend.memory_reserved(device) - backend.memory_allocated(device)
    if device.type == "mps":
        mps = getattr(torch, "mps", None)
        if mps is None or not hasattr(mps, "recommended_max_memory"):  # torch before 2.5
            return None
        return max(0, mps.recommended_max_memory() - mps.driver_allocated_memory())
    return None


def get_slot(owner: Any, name: str) -> Any:
    """A module's tensor, read past nn.Module.__getattr__ (a switch touches hundreds of layers twice)."""
    return owner._parameters[name] if name in owner._parameters else getattr(owner, name)


def _conv_config(layer: torch.nn.Module) -> tuple[Any, Any, Any] | None:
    """(stride, padding, dilation) of a Conv2d whose convolution a low-rank term can repeat, else None."""
    if getattr(layer, "groups", 1) != 1 or getattr(layer, "padding_mode", "zeros") != "zeros":
        return None
    return layer.stride, layer.padding, layer.dilation


def low_rank_part(layer: torch.nn.Module, weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                  mid: torch.Tensor | None, scale: float) -> LowRankPart | None:
    """One network's factors shaped for the term on `layer` (Linear-like or Conv2d), or None where they do
    not make a plain low-rank product of the weight's shape (other shapes, grouped or padded convolutions)."""
    rank = down.shape[0]
    if weight.dim() == 2 and mid is None:
        if down.numel() != rank * weight.shape[1] or up.numel() != weight.shape[0] * rank:
            return None
        return down.reshape(rank, -1), up.reshape(weight.shape[0], rank), None, scale
    if weight.dim() != 4 or not isinstance(layer, torch.nn.Conv2d) or _conv_config(layer) is None:
        return None
    out_channels, in_channels, kh, kw = weight.shape
    if mid is None:
        if down.numel() != rank * in_channels * kh * kw or up.numel() != out_channels * rank:
            return None
        return down.reshape(rank, in_channels, kh, kw), up.reshape(out_channels, rank, 1, 1), None, scale
    if down.numel() != rank * in_channels or tuple(mid.shape[1:]) != (rank, kh, kw) \
            or up.numel() != out_channels * mid.shape[0]:
        return None
    return down.reshape(rank, in_channels, 1, 1), up.reshape(out_channels, mid.shape[0], 1, 1), mid, scale


class LowRankTerm:
    """The networks' low-rank terms on one layer, summed, in float32. On the device, parts without a mid
    factor are joined into one (down, up) pair with the scales folded into `up`, so any number of networks
    costs two small products; `down` (and `mid`) take the input's dtype, `up` float32, so the rank-sized
    product is the only one in half precision. The host's own factor tensors stay where they are."""

    def __init__(self, layer: torch.nn.Module, parts: list[LowRankPart]) -> None:
        self.conv = _conv_config(layer) if isinstance(layer, torch.nn.Conv2d) else None
        self.parts = parts  # [(down, up, mid or None, scale)] from low_rank_part
        # [(down, up, mid)] on the device and dtype of the last input
        self.factors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] | None = None
        self.key: tuple[torch.device, torch.dtype] | None = None

    def held_bytes(self) -> int:
        return tensor_bytes(t for factors in self.factors or () for t in factors)

    def release(self) -> None:
        self.factors, self.key = None, None

    def _on(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        key = (x.device, x.dtype)
        if key == self.key and self.factors is not None:
            return self.factors

        def on(t: torch.Tensor, scale: float = 1.0, dtype: torch.dtype = x.dtype) -> torch.Tensor:
            return (t.to(device=x.device, dtype=torch.float32) * scale).to(dtype)  # the scale folded in at float32

        plain = [part for part in self.parts if part[2] is None]
        factors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        if plain:
            factors.append((torch.cat([on(d) for d, _, _, _ in plain]),
                            torch.cat([on(u, s, torch.float32) for _, u, _, s in plain], 1), None))
        factors += [(on(d), on(u, s, torch.float32), on(m)) for d, u, m, s in self.parts if m is not None]
        self.factors, self.key = factors, key
        return factors

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The summed term for input `x`, in float32."""
        total = None
        for down, up, mid in self._on(x):
            if self.conv is None:
                out = F.linear(F.linear(x, down).float(), up)
            elif mid is None:
                out = F.conv2d(F.conv2d(x, down, None, *self.conv).float(), up)
            else:
                out = F.conv2d(F.conv2d(F.conv2d(x, down), mid, None, *self.conv).float(), up)
            total = out if total is None else total + out
        assert total is not None, "a term has at least one part"
        return total


class OffLayer:
    """One layer holding the merged networks: its original tensors (the host's backups), its low-rank term
    where the networks have one, and the forwards a switch installs on it."""

    def __init__(self, layer: torch.nn.Module, fields: list[Slot], term: LowRankTerm | None,
                 switch: LayerSwitch) -> None:
        self.layer = layer
        self.fields = fields  # [(owner, attribute, original tensor or None)]
        self.term = term      # LowRankTerm, or None where a network on the layer is not low-rank
        self.switch = switch  # its `base_rows` says which rows of a batched call are base rows
        self.copies: list[Any] | None = None
        previous = layer.__dict__.get("forward")  # a host that patches instances (a test stand-in) keeps it
        self.host_forward = previous if previous is not None else type(layer).forward.__get__(layer)

    def size(self) -> int:
        """Bytes of the layer's tensors the networks change, as the layer holds them."""
        return tensor_bytes(get_slot(owner, name) for owner, name, _ in self.fields)

    def copy_bytes(self) -> int:
        """Memory `copy` would hold: none for originals that already live on the layer's device in its dtype."""
        total = 0
        for owner, name, original in self.fields:
            current = get_slot(owner, name)
            if original is not None and (original.device != current.device or original.dtype != current.dtype):
                total += original.numel() * current.element_size()
        return total

    def held_bytes(self) -> int:
        held = self.term.held_bytes() if self.term is not None else 0
        return held + (self.copy_bytes() if self.copies is not None else 0)

    def release(self) -> None:
        self.copies = None
        if self.term is not None:
            self.term.release()

    def originals(self, keep: bool) -> list[Any]:
        """The originals as tensors on the layer's device (the very same tensors where they live there)."""
        values = []
        for owner, name, original in self.fields:
            if original is not None:
                current = get_slot(owner, name)
                original = torch.nn.Parameter(original.to(device=current.device, dtype=current.dtype),
                                              requires_grad=False)
            values.append(original)
        if keep:
            self.copies = values
        return values

    def swap_in(self, values: list[Any], recorder: Recorder) -> None:
        """Puts `values` into the layer's slots, to be undone by `recorder`."""
        for (owner, name, _), value in zip(self.fields, values):
            recorder.set_slot(owner, name, value)

    @contextlib.contextmanager
    def swapped(self, values: list[Any]) -> Iterator[None]:
        recorder = Recorder()
        try:
            self.swap_in(values, recorder)
            yield
        finally:
            recorder.undo()

    # -- the forwards a switch installs --

    def _base_rows(self, x: torch.Tensor) -> slice | None:
        rows = self.switch.base_rows
        if rows is not None and x.shape[0] != rows.stop:
            raise BatchLayoutError(f"a layer saw {x.shape[0]} rows where the batched call has {rows.stop}")
        return rows

    def term_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The host's output minus the term, as a new tensor: a host or extension may keep the one it made."""
        term = self.term
        assert term is not None, "the layer's networks are low-rank"
        y = self.host_forward(x, *args, **kwargs)
        rows = self._base_rows(x)
        if rows is None:
            return (y.float() - term(x)).to(y.dtype)
        base = (y[rows].float() - term(x[rows])).to(y.dtype)
        return torch.cat([y[:rows.start], base])

    def originals_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The layer with its originals: the held copies, else streamed ones; on base rows only when batched."""
        values = self.copies if self.copies is not None else self.originals(keep=False)
        rows = self._base_rows(x)
        if rows is None:
            with self.swapped(values):
                return self.host_forward(x, *args, **kwargs)
        lora_rows = slice(0, rows.start)
        lora = self.host_forward(*_rows((x,) + args, lora_rows, rows.stop), **_rows(kwargs, lora_rows, rows.stop))
        with self.swapped(values):
            base = self.host_forward(*_rows((x,) + args, rows, rows.stop), **_rows(kwargs, rows, rows.stop))
        return _join_rows(lora, base)


def _rows(values: Any, rows: slice, total: int) -> Any:
    """The tensors among `values` (a tuple or dict) that hold the whole batch, cut to `rows`."""
    def cut(value: Any) -> Any:
        return value[rows] if torch.is_tensor(value) and value.dim() and value.shape[0] == total else value
    if isinstance(values, dict):
        return {key: cut(value) for key, value in values.items()}
    return tuple(cut(value) for value in values)


def _join_rows(lora: Any, base: Any) -> Any:
    """Outputs of the two halves back in one batch (a tensor, or a tuple such as MultiheadAttention's)."""
    if isinstance(lora, tuple):
        return tuple(None if a is None else torch.cat([a, b]) for a, b in zip(lora, base))
    return torch.cat([lora, base])


class LayerSwitch:
    """Chooses each layer's way for a generation from the memory mode and switches layers off and on.

    `auto` takes copies where the device's budget (`device_budget`) comfortably holds all of them (they cost
    nothing per step), else the lean path; `lean` takes terms where a layer's networks are low-rank and, for the other
    layers, copies where they fit comfortably, else streamed originals; `fast` takes copies. Calls that
    must be exact (`exact=True`: the base model's own steps at gamma 0, the base text encoding) use copies
    where they are free or held, else streamed originals, never terms."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.path: str | None = None  # "fast" or "lean", decided on the first switch
        self.ways: dict[OffLayer, str] = {}  # OffLayer -> its way for calls that allow float tolerance
        self.base_rows: slice | None = None  # slice of the base rows while a batched call runs

    def decide(self, layers: list[OffLayer]) -> None:
        """Picks the path and every new layer's way; `layers` are the OffLayers of one switch."""
        new = [off for off in layers if off not in self.ways]
        if not new:
            return
        device = get_slot(*new[0].fields[0][:2]).device
        budget = device_budget(device) if any(off.copy_bytes() for off in new) else None

        def fit(layers: list[OffLayer]) -> bool:
            needed = sum(off.copy_bytes() for off in layers)
            return needed == 0 or (budget is not None and needed <= COMFORTABLE_SHARE * budget)

        if self.path is None:
            fast = self.mode == "fast" or (self.mode == "auto" and fit(new))
            self.path = "fast" if fast else "lean"
        others_fit = fit([off for off in new if off.term is None])
        for off in new:
            if self.path == "fast" or (off.term is None and others_fit):
                self.ways[off] = COPY
            else:
                self.ways[off] = TERM if off.term is not None else STREAM

    def turn_off(self, off: OffLayer, exact: bool, recorder: Recorder) -> None:
        """Switches one layer off, to be undone by `recorder`."""
        way = self.ways[off]
        if way == TERM and exact:
            way = COPY if off.copy_bytes() == 0 else STREAM
        if way == COPY and self.base_rows is None:
            off.swap_in(off.copies if off.copies is not None else off.originals(keep=True), recorder)
            return
        if way == COPY and off.copies is None:
            off.originals(keep=True)
        recorder.set_attr(off.layer, "forward", off.term_forward if way == TERM else off.originals_forward)

    def held_bytes(self) -> int:
        return sum(off.held_bytes() for off in self.ways)

    def changed_bytes(self) -> int:
        return sum(off.size() for off in self.ways)

    def describe(self) -> str:
        """The path and its layers by way, for the console line."""
        if self.path is None:
            return ""
        counts = {way: sum(1 for w in self.ways.values() if w == way) for way in (TERM, COPY, STREAM)}
        names = {TERM: "low-rank terms on {} layers", COPY: "copies of {}", STREAM: "streamed originals of {}"}
        parts = [names[way].format(n) for way, n in counts.items() if n]
        return f"{self.path} path ({', '.join(parts)})"

    def release_held(self) -> None:
        """Drops what the layers hold on the device; their ways stay, and the next switch makes it again."""
        for off in self.ways:
            off.release()

    def release(self) -> None:
        self.release_held()
        self.ways.clear()


class OffSwitch:
    """What every host's network switch keeps: each layer's way without its networks (`layers`), the
    number of switches and the time they took."""

    def __init__(self, mode: str) -> None:
        self.layers = LayerSwitch(mode)
        self.switches = 0
        self.switch_seconds = 0.0  # time spent switching off and on, not in the model

    @contextlib.contextmanager
    def switched_off(self, make_offs: Callable[[], list[OffLayer]], exact: bool, batch_rows: int | None,
                     also: Callable[[Recorder], None] | None = None) -> Iterator[None]:
        """The OffLayers that `make_offs()` returns off inside, and whatever `also(recorder)` changes besides
        (the host's own bookkeeping); all of it undone after. Counts the switch and the time it takes."""
        started = time.perf_counter()
        offs = make_offs()
        self.layers.decide(offs)
        recorder = Recorder()
        try:
            self.layers.base_rows = None if batch_rows is None else slice(batch_rows, 2 * batch_rows)
            for off in offs:
                self.layers.turn_off(off, exact, recorder)
            if also is not None:
                also(recorder)
            self.switches += 1
            self.switch_seconds += time.perf_counter() - started
            yield
        finally:
            started = time.perf_counter()
            self.layers.base_rows = None
            recorder.undo()
            self.switch_seconds += time.perf_counter() - started

    def held_bytes(self) -> int:
        """Memory held for the base pass: copies of originals and low-rank factors on the device."""
        return self.layers.held_bytes()

    def changed_bytes(self) -> int:
        return self.layers.changed_bytes()

    def describe(self) -> str:
        return self.layers.describe()

    def release_held(self) -> None:
        """At the end of a sampling pass: copies and factors go, the layers' ways stay."""
        self.layers.release_held()

    def release(self) -> None:
        self.layers.release()
