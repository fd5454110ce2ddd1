"""Build a German->English parallel corpus from the LibreOffice help pages.

The Debian packages ``libreoffice-help-de`` and ``libreoffice-help-en-us`` ship
the offline LibreOffice help as HTML, one page per topic and language. Both
languages are generated from the same source files, so every paragraph and
heading carries the same ``id`` attribute (``par_id...``, ``hd_id...``,
``bm_id...``) in both languages. Pairing elements by (page path, id) therefore
gives an exact sentence/paragraph alignment without any alignment heuristics.

Pipeline:

1. ``apt-get download`` both packages (``apt-get update`` only if that fails),
   or reuse ``.deb`` files from ``--deb_dir``; unpack them with ``dpkg -x``.
2. Parse every ``text/**/*.html`` page with :mod:`html.parser` and collect the
   text of ``<p>``/``<h1>``...``<h6>`` elements whose id starts with
   ``par_id``, ``hd_id`` or ``bm_id``. Elements with class ``MAC`` (the macOS
   variants of key names and menu paths, hidden in the browser) are skipped so
   that e.g. "Command Ctrl + F" becomes "Ctrl + F".
3. Clean: collapse whitespace; drop empty, untranslated (de == en), overlong
   (> ``--max_words`` words), letter-free and length-mismatched pairs.
4. Split by page with a seeded hash of the page path: pages are visited in hash
   order and assigned to test, then validation, until each holds about the
   target number of pairs; all remaining pages go to train.
5. Deduplicate exact (de, en) pairs within a split and remove from lower
   priority splits (test > validation > train) every pair whose German source
   already occurs in a higher priority split.
6. Write ``{train,validation,test}.jsonl.gz`` with one
   ``{"translation": {"de": ..., "en": ...}}`` object per line.

Only the Python standard library plus ``apt-get``/``dpkg`` are required.

Usage::

    python examples/translation/prepare_data.py
    python examples/translation/prepare_data.py --deb_dir /tmp/debs
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

PACKAGES = {"de": "libreoffice-help-de", "en": "libreoffice-help-en-us"}
HELP_DIRS = {"de": "de", "en": "en-US"}
HELP_ROOT = Path("usr/share/libreoffice/help")
SPLITS = ("test", "validation", "train")  # in priority order

SEGMENT_TAGS = frozenset({"p", "h", "h1", "h2", "h3", "h4", "h5", "h6"})
SEGMENT_ID = re.compile(r"^(?:par|hd|bm)_id")
SKIP_CLASSES = frozenset({"MAC"})
VOID_TAGS = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }
)
HAS_WORD = re.compile(r"[^\W\d_]{2,}")

Pair = tuple[str, str]


# --------------------------------------------------------------------------- #
# Download and unpack
# --------------------------------------------------------------------------- #
def find_deb(directory: Path, package: str) -> Path | None:
    """Return ``<package>_*.deb`` in ``directory`` (any version; last by name if several)."""
    matches = sorted(directory.glob(f"{package}_*.deb"))
    return matches[-1] if matches else None


def download_debs(directory: Path) -> None:
    """Download the two help packages with ``apt-get download`` into ``directory``."""
    cmd = ["apt-get", "download", *PACKAGES.values()]
    if subprocess.run(cmd, cwd=directory, check=False).returncode == 0:
        return
    print("apt-get download failed; running apt-get update and retrying", file=sys.stderr)
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(cmd, cwd=directory, check=True)


def deb_version(deb: Path) -> str:
    """Return the Debian version string of a ``.deb`` file."""
    out = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Version"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def fetch_and_unpack(deb_dir: Path | None, work_dir: Path) -> tuple[Path, dict[str, str]]:
    """Locate (or download) both packages, unpack them and return the tree root and versions."""
    source = deb_dir if deb_dir is not None else work_dir / "debs"
    source.mkdir(parents=True, exist_ok=True)
    if any(find_deb(source, pkg) is None for pkg in PACKAGES.values()):
        download_debs(source)
    root = work_dir / "root"
    versions = {}
    for pkg in PACKAGES.values():
        deb = find_deb(source, pkg)
        if deb is None:
            raise FileNotFoundError(f"no {pkg}_*.deb in {source}")
        versions[pkg] = deb_version(deb)
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root, versions


# --------------------------------------------------------------------------- #
# HTML parsing
# --------------------------------------------------------------------------- #
@dataclass
class _Open:
    """An element on the parser stack."""

    tag: str
    segment: bool = False  # this element opened the current segment
    skip: bool = False  # this element (and its subtree) is excluded from the text
    switch: bool = False  # this element is a switch container
    variant: bool = False  # this element is one variant of the enclosing switch


@dataclass
class _Switch:
    """Buffered variants of one ``switch``/``switchinline`` container."""

    variants: list[tuple[bool, list[str]]]  # (is_default, text parts)
    current: list[str] | None = None


class SegmentParser(HTMLParser):
    """Collect ``(id, text)`` for every id-carrying paragraph or heading of a page.

    Inside a segment, a switch container (``id="swln..."``) holds hidden
    alternative variants for operating systems or modules (e.g. "Folien" for
    Impress, "Seiten" otherwise); only one variant is kept: the default one if
    present, else the first. Elements with class ``MAC`` are always dropped.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.segments: list[tuple[str, str]] = []
        self._stack: list[_Open] = []
        self._switches: list[_Switch] = []
        self._skip_depth = 0
        self._seg_id: str | None = None
        self._parts: list[str] = []

    def _target(self) -> list[str]:
        """Return the buffer that text currently goes to."""
        for switch in reversed(self._switches):
            if switch.current is not None:
                return switch.current
        return self._parts

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Push the element; start a segment, switch, variant or skipped subtree."""
        if tag in VOID_TAGS:
            if tag == "br":
                self.handle_data(" ")
            return
        attr = {k: v or "" for k, v in attrs}
        elem_id = attr.get("id", "")
        item = _Open(tag, skip=bool(SKIP_CLASSES.intersection(attr.get("class", "").split())))
        active = self._seg_id is not None and self._skip_depth == 0 and not item.skip
        if item.skip:
            self._skip_depth += 1
        elif active and elem_id.startswith("swln"):
            item.switch = True
            self._switches.append(_Switch(variants=[]))
        elif active and "hidden" in attr and self._stack and self._stack[-1].switch:
            item.variant = True
            buffer: list[str] = []
            self._switches[-1].variants.append((elem_id.startswith("default"), buffer))
            self._switches[-1].current = buffer
        elif (
            self._seg_id is None
            and self._skip_depth == 0
            and tag in SEGMENT_TAGS
            and SEGMENT_ID.match(elem_id) is not None
        ):
            item.segment = True
            self._seg_id = elem_id
            self._parts = []
        self._stack.append(item)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Treat ``<x/>`` as an empty element."""
        self.handle_starttag(tag, attrs)
        if tag not in VOID_TAGS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        """Pop up to and including the matching open element."""
        if not any(item.tag == tag for item in self._stack):
            return  # stray end tag
        while self._stack:
            item = self._stack.pop()
            if item.skip:
                self._skip_depth -= 1
            if item.variant:
                self._switches[-1].current = None
            if item.switch:
                variants = self._switches.pop().variants
                chosen = [parts for is_default, parts in variants if is_default] or [
                    parts for _, parts in variants
                ]
                if chosen:
                    self._target().extend(chosen[0])
            if item.segment and self._seg_id is not None:
                self.segments.append((self._seg_id, "".join(self._parts)))
                self._seg_id = None
                self._switches.clear()
            if item.tag == tag:
                break

    def handle_data(self, data: str) -> None:
        """Append text inside a segment unless inside a skipped subtree."""
        if self._seg_id is not None and self._skip_depth == 0:
            self._target().append(data)


def normalize(text: str) -> str:
    """Collapse all whitespace runs into single spaces."""
    return " ".join(text.split())


def extract_page(path: Path) -> dict[tuple[str, int], str]:
    """Map ``(id, occurrence)`` to normalized text for one HTML page."""
    parser = SegmentParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    seen: Counter[str] = Counter()
    out: dict[tuple[str, int], str] = {}
    for seg_id, text in parser.segments:
        out[(seg_id, seen[seg_id])] = normalize(text)
        seen[seg_id] += 1
    return out


def align(root: Path) -> tuple[dict[str, list[Pair]], int]:
    """Return aligned raw pairs per page (document order) and the raw match count."""
    help_root = root / HELP_ROOT
    de_dir = help_root / HELP_DIRS["de"]
    en_dir = help_root / HELP_DIRS["en"]
    pages: dict[str, list[Pair]] = {}
    matched = 0
    for de_path in sorted(de_dir.glob("text/**/*.html")):
        rel = de_path.relative_to(de_dir).as_posix()
        en_path = en_dir / rel
        if not en_path.is_file():
            continue
        de_segs = extract_page(de_path)
        en_segs = extract_page(en_path)
        pairs = [(de, en_segs[key]) for key, de in de_segs.items() if key in en_segs]
        matched += len(pairs)
        pages[rel] = pairs
    return pages, matched


# --------------------------------------------------------------------------- #
# Cleaning, splitting, writing
# --------------------------------------------------------------------------- #
def keep_pair(de: str, en: str, max_words: int, max_ratio: float) -> bool:
    """Return whether a pair is a usable, translated, reasonably sized sentence pair.

    The length ratio test (character lengths smoothed by +10) removes the few
    pairs where one side was rewritten upstream and the other is outdated.
    """
    if not de or not en or de == en:
        return False
    if len(de.split()) > max_words or len(en.split()) > max_words:
        return False
    short, long_ = sorted((len(de), len(en)))
    if (long_ + 10) / (short + 10) > max_ratio:
        return False
    return HAS_WORD.search(de) is not None and HAS_WORD.search(en) is not None


def page_order(pages: list[str], seed: int) -> list[str]:
    """Order pages deterministically by a seeded SHA-256 of their path."""
    return sorted(pages, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())


def split_pages(
    pages: dict[str, list[Pair]], seed: int, targets: dict[str, int]
) -> dict[str, list[str]]:
    """Assign pages to test, then validation (until ~target pairs each), rest to train."""
    order = page_order(list(pages), seed)
    assignment: dict[str, list[str]] = {name: [] for name in SPLITS}
    taken_sources: set[str] = set()
    pos = 0
    for name in ("test", "validation"):
        count: set[Pair] = set()
        while pos < len(order) and len(count) < targets[name]:
            page = order[pos]
            pos += 1
            assignment[name].append(page)
            count.update(p for p in pages[page] if p[0] not in taken_sources)
        taken_sources.update(de for de, _ in count)
    assignment["train"] = order[pos:]
    return {name: sorted(names) for name, names in assignment.items()}


def build_splits(
    pages: dict[str, list[Pair]], assignment: dict[str, list[str]]
) -> dict[str, list[Pair]]:
    """Deduplicate pairs within splits and drop sources already in higher priority splits."""
    blocked: set[str] = set()
    result: dict[str, list[Pair]] = {}
    for name in SPLITS:
        seen: set[Pair] = set()
        rows: list[Pair] = []
        for page in assignment[name]:
            for pair in pages[page]:
                if pair in seen or pair[0] in blocked:
                    continue
                seen.add(pair)
                rows.append(pair)
        blocked.update(de for de, _ in rows)
        result[name] = rows
    return result


def write_jsonl_gz(path: Path, rows: list[Pair]) -> None:
    """Write rows as gzip-compressed JSON lines with reproducible bytes."""
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz,
    ):
        for de, en in rows:
            line = json.dumps({"translation": {"de": de, "en": en}}, ensure_ascii=False)
            gz.write(line.encode("utf-8") + b"\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, default=Path("examples/translation/data"))
    parser.add_argument(
        "--deb_dir",
        type=Path,
        default=None,
        help="directory with (or to receive) the two .deb files; default: a temp dir",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the page hash")
    parser.add_argument("--test_size", type=int, default=1000, help="target test pairs")
    parser.add_argument("--validation_size", type=int, default=1000, help="target validation pairs")
    parser.add_argument("--max_words", type=int, default=100, help="max words per side")
    parser.add_argument(
        "--max_ratio",
        type=float,
        default=2.5,
        help="max smoothed character length ratio",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Build the corpus and print statistics."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lo_help_") as tmp:
        root, versions = fetch_and_unpack(args.deb_dir, Path(tmp))
        raw_pages, matched = align(root)
    for pkg, version in versions.items():
        print(f"package {pkg} {version}")

    pages = {
        page: [
            p for p in pairs if keep_pair(*p, max_words=args.max_words, max_ratio=args.max_ratio)
        ]
        for page, pairs in raw_pages.items()
    }
    pages = {page: pairs for page, pairs in pages.items() if pairs}
    kept = sum(len(pairs) for pairs in pages.values())
    unique = len({p for pairs in pages.values() for p in pairs})
    print(f"pages: {len(raw_pages)} parsed, {len(pages)} with usable pairs")
    print(f"pairs: {matched} id-matched, {kept} after filtering, {unique} unique")

    targets = {"test": args.test_size, "validation": args.validation_size}
    assignment = split_pages(pages, args.seed, targets)
    splits = build_splits(pages, assignment)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train", "validation", "test"):
        rows = splits[name]
        write_jsonl_gz(args.output_dir / f"{name}.jsonl.gz", rows)
        de_len = statistics.median(len(de.split()) for de, _ in rows) if rows else 0
        en_len = statistics.median(len(en.split()) for _, en in rows) if rows else 0
        print(
            f"{name:>10}: {len(assignment[name]):5d} pages {len(rows):6d} pairs "
            f"median words de={de_len:g} en={en_len:g}"
        )

    by_page: defaultdict[str, set[str]] = defaultdict(set)
    for name, names in assignment.items():
        for page in names:
            by_page[page].add(name)
    assert all(len(s) == 1 for s in by_page.values()), "page in several splits"


if __name__ == "__main__":
    main()
