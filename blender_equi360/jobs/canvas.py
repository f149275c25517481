"""The size of an equirect canvas: the model's, the delivery's."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import Equi360Error


@dataclass(frozen=True)
class CanvasSize:
    width: int = 1920
    height: int = 960

    def __post_init__(self):
        if self.width <= 0 or self.height <= 0 or self.width % 32 or self.height % 32:
            raise Equi360Error(
                f"canvas size {self.width}x{self.height} is not usable: width and height must be positive "
                "multiples of 32 (e.g. 1920x960, 2560x1280, 4096x2048)"
            )
        if self.width != 2 * self.height:
            raise Equi360Error(
                f"canvas size {self.width}x{self.height} is not 2:1: an equirect canvas is twice as wide as "
                "it is high (e.g. 1920x960)"
            )

    @classmethod
    def parse(cls, text: str) -> "CanvasSize":
        try:
            w, h = (int(part) for part in text.lower().split("x"))
        except ValueError:
            raise Equi360Error(f"canvas size {text!r} is not WIDTHxHEIGHT, e.g. 1920x960") from None
        return cls(w, h)

    def __str__(self):
        return f"{self.width}x{self.height}"
