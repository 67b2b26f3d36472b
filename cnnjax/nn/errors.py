"""Shape errors raised while a model is traced, before anything is compiled."""

from __future__ import annotations


class InputTooSmallError(ValueError):
    """A layer's window does not fit its input: the image is too small for the architecture."""

    def __init__(self, layer: str, in_hw: tuple[int, int], out_hw: tuple[int, int], detail: str = ""):
        self.layer, self.in_hw, self.out_hw = layer, in_hw, out_hw
        msg = (f"input too small: layer '{layer}' gets a {in_hw[0]}x{in_hw[1]} feature map and would produce "
               f"{out_hw[0]}x{out_hw[1]}")
        super().__init__(msg + (f" ({detail})" if detail else ""))


def check_output_size(layer: str, in_hw: tuple[int, int], out_hw: tuple[int, int], detail: str = "") -> None:
    """Raise :class:`InputTooSmallError` if either output side is below 1."""
    if min(out_hw) < 1:
        raise InputTooSmallError(layer, in_hw, out_hw, detail)
