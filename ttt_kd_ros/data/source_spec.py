"""Data-source spec strings: ``KIND:ROOT?key=value&key=value`` parsed once, options read with their types.

Every offline tool names its data the same way (training, evaluation, the
feature cache), so a user learns one syntax:

    synthetic:office?scans=64&seed=0
    semantickitti:/data/semantickitti?sequences=00-07,09-10
    nuscenes:/data/nuscenes?version=v1.0-trainval&split=train
    scannet:/data/scannet?scenes=train.txt
    bag:/data/my_robot_bag?label_set=semantic_kitti19
    kitti:/data/kitti/object/training

Options a source does not know are an error naming the spec and the options
it does know, so a typo never silently changes what a run trains on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SourceSpec:
    """A parsed spec: the kind, the root (a path, or a synthetic domain spec) and the options as text."""

    text: str
    kind: str
    root: str
    options: dict[str, str] = field(default_factory=dict)
    _read: set[str] = field(default_factory=set)

    @property
    def path(self) -> Path:
        """The root as a path (expanded ~)."""
        return Path(self.root).expanduser()

    def take_str(self, key: str, default: str | None = None) -> str | None:
        """Option ``key`` as text, or ``default`` when absent."""
        self._read.add(key)
        return self.options.get(key, default)

    def take_int(self, key: str, default: int | None = None, minimum: int | None = None) -> int | None:
        """Option ``key`` as an integer (>= minimum); ValueError naming the spec otherwise."""
        text = self.take_str(key)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"data spec {self.text!r}: option {key}={text!r}: expected an integer") from None
        if minimum is not None and value < minimum:
            raise ValueError(f"data spec {self.text!r}: option {key}={value}: expected >= {minimum}")
        return value

    def take_float(self, key: str, default: float | None = None) -> float | None:
        text = self.take_str(key)
        if text is None:
            return default
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"data spec {self.text!r}: option {key}={text!r}: expected a number") from None

    def take_bool(self, key: str, default: bool) -> bool:
        text = self.take_str(key)
        if text is None:
            return default
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"data spec {self.text!r}: option {key}={text!r}: expected true or false")

    def take_list(self, key: str) -> list[str] | None:
        """Option ``key`` as a comma list where ``a-b`` ranges of zero-padded integers expand (00-02 -> 00,01,02)."""
        text = self.take_str(key)
        if text is None:
            return None
        return expand_ranges(text, f"data spec {self.text!r}: option {key}")

    def finish(self) -> None:
        """Raise when an option was given that the source never read (a typo or a wrong kind)."""
        unknown = sorted(set(self.options) - self._read)
        if unknown:
            raise ValueError(f"data spec {self.text!r}: unknown option(s) {unknown} for kind {self.kind!r}; "
                             f"known: {sorted(self._read)}")


def parse_source_spec(text: str, kinds: tuple[str, ...]) -> SourceSpec:
    """``KIND:ROOT[?k=v&k=v]`` -> SourceSpec; ValueError listing ``kinds`` when the kind is not one of them."""
    kind, colon, rest = text.strip().partition(":")
    if not colon or kind not in kinds:
        raise ValueError(f"data spec {text!r}: expected KIND:ROOT[?option=value&...] with KIND from {list(kinds)}")
    root, _, query = rest.partition("?")
    if not root.strip():
        raise ValueError(f"data spec {text!r}: the root after {kind}: is empty")
    options: dict[str, str] = {}
    for item in (q for q in query.split("&") if q.strip()):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"data spec {text!r}: expected option=value, got {item!r}")
        if key.strip() in options:
            raise ValueError(f"data spec {text!r}: option {key.strip()!r} given twice")
        options[key.strip()] = value.strip()
    return SourceSpec(text=text.strip(), kind=kind, root=root.strip(), options=options)


def expand_ranges(text: str, where: str) -> list[str]:
    """``00-07,09,10`` -> ["00", ..., "07", "09", "10"] keeping each bound's zero padding; plain names pass."""
    out: list[str] = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        low, dash, high = item.partition("-")
        if dash and low.isdigit() and high.isdigit():
            if int(high) < int(low):
                raise ValueError(f"{where}: range {item!r} runs backwards")
            out.extend(str(i).zfill(len(low)) for i in range(int(low), int(high) + 1))
        else:
            out.append(item)
    if not out:
        raise ValueError(f"{where}: expected a comma list, got {text!r}")
    return out
