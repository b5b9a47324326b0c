"""Splitting documents into parent sections and the small chunks matched in search.

Markdown is split at headings, then paragraphs, then sentences, then words; never
mid-word. A fenced code block stays whole when it fits in a chunk. Plain text has no
headings; HTML is first turned into the same block structure. Sizes are characters.
"""

import re
import unicodedata
from dataclasses import dataclass, field

from bs4 import BeautifulSoup

CONTENT_TYPES = ("markdown", "text", "html")
# File suffixes Lore reads (uploads, `manage.py ingest`) and the content type of each.
FILE_TYPES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text", ".html": "html", ".htm": "html"}

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^(```|~~~)")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


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


def normalize_text(text: str) -> str:
    """The form that is hashed and stored: NFC, \\n line ends, no trailing spaces."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    # map(str.rstrip): 4x faster than a generator or a multiline regex on the tldr pages.
    return "\n".join(map(str.rstrip, text.split("\n"))).strip("\n")


def html_to_markdown(html: str) -> str:
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    wanted = ["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "blockquote", "td", "th", "dt", "dd"]
    parts = []
    for element in (soup.body or soup).find_all(wanted):
        if any(parent.name in wanted for parent in element.parents):
            continue  # its text is part of an outer block already
        if element.name == "pre":
            parts.append(f"```\n{element.get_text().strip(chr(10))}\n```")
            continue
        text = " ".join(element.get_text(" ").split())
        if not text:
            continue
        if element.name[0] == "h" and element.name[1:].isdigit():
            parts.append(f"{'#' * int(element.name[1:])} {text}")
        elif element.name == "li":
            parts.append(f"- {text}")
        else:
            parts.append(text)
    if not parts:
        parts.append(" ".join(soup.get_text(" ").split()))
    return "\n\n".join(parts)


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
        if content_type == "markdown" and _FENCE.match(line.lstrip()):
            flush()
            fence = _FENCE.match(line.lstrip()).group(1)
            code = [line]
            i += 1
            while i < len(lines):
                code.append(lines[i])
                if lines[i].lstrip().startswith(fence):
                    break
                i += 1
            blocks.append(Block("\n".join(code), tuple(t for _, t in path), is_code=True))
        elif content_type == "markdown" and (match := _HEADING.match(line)):
            flush()
            level, title = len(match.group(1)), match.group(2)
            path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, title)]
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
    than `size` on its own stands alone)."""
    pieces, current = [], ""
    for part in parts:
        candidate = f"{current}{joiner}{part}" if current else part
        if len(candidate) > size and current:
            pieces.append(current)
            current = part
        else:
            current = candidate
    if current:
        pieces.append(current)
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
    for block in blocks:
        for piece in _split_oversized(block, size):
            added = len(piece.text) + (2 if current else 0)
            heading_break = break_at_headings and piece.is_heading and current and not all(b.is_heading for b in current)
            if current and (length + added > size or heading_break):
                groups.append(current)
                current, length = [], 0
                added = len(piece.text)
            current.append(piece)
            length += added
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
