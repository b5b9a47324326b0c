"""Splitting documents into parent sections and the small chunks matched in search.

Markdown is split at headings, then paragraphs, then sentences, then words; never
mid-word. A fenced code block stays whole when it fits in a chunk. Plain text has no
headings; HTML is first turned into the same block structure. Sizes are characters.
"""

import functools
import re
import sys
import unicodedata
from dataclasses import dataclass, field

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.builder import HTMLParserTreeBuilder
from bs4.builder._htmlparser import BeautifulSoupHTMLParser

CONTENT_TYPES = ("markdown", "text", "html")
# Longest heading title kept in a chunk's heading_path.
HEADING_PATH_TITLE_CHARS = 200
# File suffixes Lore reads (uploads, `manage.py ingest`) and the content type of each.
FILE_TYPES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text", ".html": "html", ".htm": "html"}

# Every pattern and loop here runs on tenant text of up to a few MiB: each must be
# linear in it (issue 14: a heading regex that backtracked froze a worker for hours).
_FENCES = ("```", "~~~")
# Linear: the lookbehind tests one character, and a whitespace run is consumed once.
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")
# Tags whose content is not text, and the HTML blocks that each make one Markdown block.
_HTML_SKIPPED = frozenset({"script", "style", "noscript", "template", "head"})
_HTML_BLOCKS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "blockquote", "td", "th", "dt", "dd"})
# UAX #15 Stream-Safe Text Format: no real text has more than 30 combining marks in a row.
_STREAM_SAFE_RUN = 30
_CGJ = "\u034f"  # combining grapheme joiner: a starter that stops canonical reordering


@dataclass
class Block:
    text: str
    heading_path: tuple[str, ...]
    is_heading: bool = False
    is_code: bool = False


@dataclass
class ChunkDraft:
    text: str
    heading_path: list[str]
    section_index: int | None


@dataclass
class ChunkedDocument:
    sections: list[str] = field(default_factory=list)
    chunks: list[ChunkDraft] = field(default_factory=list)


@functools.cache
def _long_mark_run() -> re.Pattern:
    """More than _STREAM_SAFE_RUN characters whose decomposition starts with a combining
    mark. Built on first use: it reads the whole Unicode table."""
    marks = []
    for point in range(sys.maxunicode + 1):
        char = chr(point)
        if unicodedata.combining(unicodedata.normalize("NFD", char)[0]):
            marks.append(re.escape(char))
    marks = "".join(marks)
    # The lookbehind makes every position inside a run fail at once: linear.
    return re.compile(f"(?<![{marks}])[{marks}]{{{_STREAM_SAFE_RUN + 1},}}")


def _stream_safe(text: str) -> str:
    """A CGJ after every _STREAM_SAFE_RUN marks of a longer run: CPython sorts a run of
    combining marks by insertion (quadratic in its length), 1 MB of marks in reverse
    order would take minutes. Text with shorter runs is returned unchanged."""

    def split(match: re.Match) -> str:
        run = match[0]  # once: match[0] copies the run
        return _CGJ.join(run[i : i + _STREAM_SAFE_RUN] for i in range(0, len(run), _STREAM_SAFE_RUN))

    return _long_mark_run().sub(split, text)


def normalize_text(text: str) -> str:
    """The form that is hashed and stored: NFC, \\n line ends, no trailing spaces."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", _stream_safe(text))
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # map(str.rstrip): faster than a generator or a multiline regex on real pages.
    return "\n".join(map(str.rstrip, text.split("\n"))).strip("\n")


class _HTMLParser(BeautifulSoupHTMLParser):
    def close(self):
        # Left unparsed at the end is a construct that never ends ("<a<a<a...",
        # "<!--<!--..."). Python's html.parser before 3.11.13/3.12.11/3.13.4 (gh-135462)
        # rescans the rest of the input once per such construct: quadratic. Later
        # versions drop that rest (an unclosed tag, comment or declaration: no text);
        # so does Lore, on any version.
        if self.rawdata.startswith("<") and self.rawdata not in ("<", "</"):
            self.rawdata = ""
        super().close()


class _HTMLTreeBuilder(HTMLParserTreeBuilder):
    def feed(self, markup):
        super().feed(markup, _parser_class=_HTMLParser)


def _html_walk(node: Tag):
    """(element, inside_block) for each element below `node` in document order, except
    skipped tags and what they hold; inside_block: a block holds the element. Iterative:
    tags may nest deeper than Python's recursion limit."""
    stack = [(child, False) for child in reversed(node.contents)]
    while stack:
        element, inside = stack.pop()
        if isinstance(element, Tag):
            if element.name in _HTML_SKIPPED:
                continue
            inner = inside or element.name in _HTML_BLOCKS
            stack.extend((child, inner) for child in reversed(element.contents))
        yield element, inside


def _html_text(node: Tag, separator: str) -> str:
    """node.get_text(separator) without the text of skipped tags."""
    types = node.interesting_string_types or Tag.MAIN_CONTENT_STRING_TYPES
    return separator.join(e for e, _ in _html_walk(node) if isinstance(e, NavigableString) and type(e) in types)


def html_to_markdown(html: str) -> str:
    soup = BeautifulSoup(html, builder=_HTMLTreeBuilder())
    # Each block outside any other block, found in one walk: asking each element for its
    # ancestors instead costs the depth of the tree per element.
    bodies = ((e, inside) for e, inside in _html_walk(soup) if isinstance(e, Tag) and e.name == "body")
    body, body_in_block = next(bodies, (soup, False))
    blocks = [] if body_in_block else [
        e for e, inside in _html_walk(body) if not inside and isinstance(e, Tag) and e.name in _HTML_BLOCKS
    ]
    parts = []
    for element in blocks:
        if element.name == "pre":
            parts.append(f"```\n{_html_text(element, '').strip(chr(10))}\n```")
            continue
        text = " ".join(_html_text(element, " ").split())
        if not text:
            continue
        if element.name[0] == "h" and element.name[1:].isdigit():
            parts.append(f"{'#' * int(element.name[1:])} {text}")
        elif element.name == "li":
            parts.append(f"- {text}")
        else:
            parts.append(text)
    if not parts:
        parts.append(" ".join(_html_text(soup, " ").split()))
    return "\n\n".join(parts)


def _heading(line: str) -> tuple[int, str] | None:
    """(level, title) of an ATX heading line: 1 to 6 #'s, whitespace, the title without
    closing #'s. String operations, not a regex: the regex this replaces backtracked
    cubically on long runs of spaces."""
    level = len(line) - len(line.lstrip("#"))
    if not 1 <= level <= 6 or not line[level : level + 1].isspace():
        return None
    # str.strip strips what \s matches; the regex took the shortest title followed by
    # whitespace, #'s, whitespace.
    return level, line[level:].strip().rstrip("#").rstrip()


def _blocks(text: str, content_type: str) -> list[Block]:
    blocks: list[Block] = []
    path: list[tuple[int, str]] = []
    paragraph: list[str] = []

    def flush():
        if paragraph:
            blocks.append(Block("\n".join(paragraph), tuple(t for _, t in path)))
            paragraph.clear()

    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if content_type == "markdown" and line.lstrip().startswith(_FENCES):
            flush()
            fence = line.lstrip()[:3]
            code = [line]
            i += 1
            while i < len(lines):
                code.append(lines[i])
                if lines[i].lstrip().startswith(fence):
                    break
                i += 1
            blocks.append(Block("\n".join(code), tuple(t for _, t in path), is_code=True))
        elif content_type == "markdown" and (heading := _heading(line)):
            flush()
            level, title = heading
            # The path is copied into every chunk's metadata under the heading: a title is
            # cut there (the heading line itself stays whole in the text).
            path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, title[:HEADING_PATH_TITLE_CHARS])]
            blocks.append(Block(line, tuple(t for _, t in path), is_heading=True))
        elif not line.strip():
            flush()
        else:
            paragraph.append(line)
        i += 1
    flush()
    return blocks


def _greedy_join(parts: list[str], size: int, joiner: str) -> list[str]:
    """Consecutive parts joined while the result stays within `size` (a part longer
    than `size` on its own stands alone). The parts of a piece are joined once, when it
    is complete: joining at each part copies up to `size` characters per part."""
    pieces, current, length = [], [], 0
    for part in parts:
        if not length:  # an empty piece so far: it becomes the part itself
            current, length = [part], len(part)
        elif length + len(joiner) + len(part) > size:
            pieces.append(joiner.join(current))
            current, length = [part], len(part)
        else:
            current.append(part)
            length += len(joiner) + len(part)
    if length:
        pieces.append(joiner.join(current))
    return pieces


def _split_words(text: str, size: int) -> list[str]:
    words = []
    for word in text.split(" "):
        # A "word" longer than a chunk (a URL, base64) is cut; nothing else is.
        words += [word[i : i + size] for i in range(0, len(word), size)] if len(word) > size else [word]
    return _greedy_join(words, size, " ")


def _split_oversized(block: Block, size: int) -> list[Block]:
    """Pieces of one block no longer than `size`: code by lines, prose by sentences."""
    if len(block.text) <= size:
        return [block]
    if block.is_code:
        units, joiner = block.text.split("\n"), "\n"
    else:
        units, joiner = _SENTENCE_END.split(block.text), " "
    parts = [part for unit in units for part in ([unit] if len(unit) <= size else _split_words(unit, size))]
    return [Block(p, block.heading_path, is_code=block.is_code) for p in _greedy_join(parts, size, joiner)]


def _pack(blocks: list[Block], size: int, break_at_headings: bool) -> list[list[Block]]:
    """Greedy packing of blocks into groups of at most `size` characters. With
    break_at_headings, a heading always starts a new group (sections stay whole)."""
    groups: list[list[Block]] = []
    current: list[Block] = []
    length = 0
    only_headings = True  # kept, not recomputed per piece: a group may hold thousands of headings
    for block in blocks:
        for piece in _split_oversized(block, size):
            added = len(piece.text) + (2 if current else 0)
            heading_break = break_at_headings and piece.is_heading and current and not only_headings
            if current and (length + added > size or heading_break):
                groups.append(current)
                current, length, only_headings = [], 0, True
                added = len(piece.text)
            current.append(piece)
            length += added
            only_headings = only_headings and piece.is_heading
    if current:
        groups.append(current)
    return groups


def _overlap_tail(text: str, overlap: int) -> str:
    if overlap <= 0 or len(text) <= overlap:
        return ""
    tail = text[-overlap:]
    cut = tail.find(" ")
    return tail[cut + 1 :] if 0 <= cut < len(tail) - 1 else ""


def chunk_document(
    text: str, *, content_type: str, chunk_size: int, chunk_overlap: int, parent_chunk_size: int
) -> ChunkedDocument:
    if content_type == "html":
        text, content_type = html_to_markdown(text), "markdown"
    blocks = _blocks(text, content_type)
    result = ChunkedDocument()
    if parent_chunk_size:
        parents = _pack(blocks, parent_chunk_size, break_at_headings=True)
    else:
        parents = [blocks]
    for parent in parents:
        section_index = None
        if parent_chunk_size:
            section_index = len(result.sections)
            result.sections.append("\n\n".join(b.text for b in parent))
        previous = ""
        for group in _pack(parent, chunk_size - chunk_overlap if chunk_overlap else chunk_size, break_at_headings=True):
            body = "\n\n".join(b.text for b in group)
            # Overlap only within a section, and never into a chunk that starts a heading.
            tail = "" if group[0].is_heading else _overlap_tail(previous, chunk_overlap)
            chunk_text = f"{tail} {body}" if tail else body
            previous = body
            result.chunks.append(ChunkDraft(chunk_text, list(group[0].heading_path), section_index))
    return result
