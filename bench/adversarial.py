"""Chunking time of adversarial documents (issue 14: one tenant's document must not freeze
a worker). One command, no database:

    .venv/bin/python bench/adversarial.py

Each input goes the way of an ingested document: normalize_text, then chunk_document,
with Lore's default agent config (chunk 800, overlap 100, parent 2400) and with the
smallest chunks allowed (chunk 100, overlap 50, parent 100: the most chunks per MB).
Times are the best of 3 runs. The baseline is real Markdown measured in the same run:
the English tldr pages (../shared/corpora/tldr/pages) concatenated to 1 MB, or, without
the corpus, generated Markdown of headings, prose and code. "x baseline" compares time
per MB.

Then the patterns and calls this replaced, on sizes they can still finish: the old
heading regex on a heading line with a run of spaces, Python's NFC normalization of a run
of combining marks in reverse canonical order, the old per-element ancestor walk in
html_to_markdown. A size whose time, extrapolated from the previous one, would exceed
15 s is skipped.
"""

import re
import time
import unicodedata

import harness  # first: puts the project on sys.path

from bs4 import BeautifulSoup  # noqa: E402

from knowledge.chunking import chunk_document, html_to_markdown, normalize_text  # noqa: E402

MB = 1 << 20
CORPUS = harness.ROOT.parent / "shared" / "corpora" / "tldr" / "pages"
CONFIGS = {"default": (800, 100, 2400), "smallest": (100, 50, 100)}
RUNS = 3
SKIP_ABOVE = 15.0  # seconds, extrapolated


def baseline_markdown() -> tuple[str, str]:
    if CORPUS.is_dir():
        pages, size = [], 0
        for path in sorted(CORPUS.rglob("*.md")):
            pages.append(path.read_text(encoding="utf-8"))
            size += len(pages[-1]) + 2
            if size >= MB:
                break
        return "tldr pages, 1 MB", "\n\n".join(pages)[:MB]
    section = (
        "## Section\n\nSome prose about the tool. It has sentences! Does it? Yes.\n\n"
        "- `tool --flag file`: what it does\n\n```sh\ntool --flag file\n```\n\n"
    )
    return "generated Markdown, 1 MB", (section * (MB // len(section) + 1))[:MB]


ADVERSARIAL = [
    ("heading: '# a' + 20,000 spaces + 'b'", "markdown", "# a" + " " * 20000 + "b"),
    ("'#' + 100,000 spaces", "markdown", "#" + " " * 100000),
    ("heading line of 1 MB of '#'", "markdown", "#" * MB),
    ("'# a' + 1 MB of '#' + spaces + 'b'", "markdown", "# a" + "#" * MB + " " * 1000 + "b"),
    ("'```' + 100,000 spaces", "markdown", "```" + " " * 100000),
    ("1 MB of '`'", "markdown", "`" * MB),
    ("1 MB of headings '# a'", "markdown", "# a\n" * (MB // 4)),
    ("1 MB of 'a. '", "text", "a. " * (MB // 3)),
    ("1 MB of 'a '", "text", "a " * (MB // 2)),
    ("'a' + 1 MB of spaces + 'b'", "text", "a" + " " * MB + "b"),
    ("1 MB of combining marks, reverse order", "text", "a" + "\u0301\u0316" * (MB // 2)),
    ("'<div>' x 100,000 + 'x'", "html", "<div>" * 100000 + "x"),
    ("'<p>' x 50,000", "html", "<p>" * 50000),
    ("'<div>' x 50,000 + '<p>x</p>' x 50,000", "html", "<div>" * 50000 + "<p>x</p>" * 50000),
    ("'<template>' x 100,000", "html", "<template>" * 100000),
    ("'<p>x</p><script></script>' x 40,000", "html", "<p>x</p><script></script>" * 40000),
    ("'<a' x 512k (unclosed tags)", "html", "<a" * (MB // 2)),
    ("'<!--' x 256k (unclosed comments)", "html", "<!--" * (MB // 4)),
]


def best(fn, runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def ingest(text: str, content_type: str, config: tuple[int, int, int]):
    size, overlap, parent = config
    text = normalize_text(text)
    return chunk_document(
        text, content_type=content_type, chunk_size=size, chunk_overlap=overlap, parent_chunk_size=parent
    )


def chunking_table() -> harness.Table:
    name, markdown = baseline_markdown()
    mb = len(markdown) / MB
    baseline = {key: best(lambda c=config: ingest(markdown, "markdown", c)) / mb for key, config in CONFIGS.items()}
    headers = ["input", "type", "chars"]
    for key, (size, overlap, parent) in CONFIGS.items():
        headers += [f"{key} ({size}/{overlap}/{parent}) s", "s/MB", "x baseline"]
    table = harness.Table("Chunking adversarial documents (normalize_text + chunk_document)", headers)
    for label, content_type, text in [(name, "markdown", markdown), *ADVERSARIAL]:
        cells = [label, content_type, f"{len(text):,}"]
        for key, config in CONFIGS.items():
            seconds = best(lambda c=config: ingest(text, content_type, c))
            per_mb = seconds / (len(text) / MB)
            cells += [f"{seconds:.3f}", f"{per_mb:.3f}", f"{per_mb / baseline[key]:.1f}"]
        table.add(*cells)
    table.notes.append(f"{harness.machine()}; best of {RUNS} runs; chars are of the input as sent.")
    return table


OLD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
OLD_WANTED = ["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "blockquote", "td", "th", "dt", "dd"]


def old_ancestor_walk(html: str) -> None:
    """The block search html_to_markdown did before: each block asks for its ancestors."""
    soup = BeautifulSoup(html, "html.parser")
    for element in soup.find_all(OLD_WANTED):
        any(parent.name in OLD_WANTED for parent in element.parents)


BEFORE = [
    # (what, unit of n, make input, old call, current call, growth exponent used to extrapolate)
    ("heading regex: '# a' + n spaces + 'b'", "spaces", lambda n: "# a" + " " * n + "b",
     OLD_HEADING.match, lambda t: ingest(t, "markdown", CONFIGS["default"]), 3),
    ("NFC: 'a' + n/2 x U+0301 U+0316", "marks", lambda n: "a" + "\u0301\u0316" * (n // 2),
     lambda t: unicodedata.normalize("NFC", t), normalize_text, 2),
    ("HTML: n x '<div>' + n x '<p>x</p>'", "divs", lambda n: "<div>" * n + "<p>x</p>" * n,
     old_ancestor_walk, html_to_markdown, 2),
]  # fmt: skip
SIZES = {"spaces": [400, 800, 1600, 3200, 6400], "marks": [20000, 40000, 80000, MB], "divs": [2000, 4000, 8000, 50000]}


def before_table() -> harness.Table:
    headers = ["input", "n", "chars", "old s", "current s"]
    table = harness.Table("Before and after (old code vs current, one run each)", headers)
    for label, unit, make, old, new, exponent in BEFORE:
        previous = None
        for n in SIZES[unit]:
            text = make(n)
            if previous and previous[1] * (n / previous[0]) ** exponent > SKIP_ABOVE:
                old_cell = f"skipped (~{previous[1] * (n / previous[0]) ** exponent:,.0f} s)"
            else:
                seconds = best(lambda: old(text), runs=1)
                previous, old_cell = (n, seconds), f"{seconds:.3f}"
            table.add(label, f"{n:,}", f"{len(text):,}", old_cell, f"{best(lambda: new(text), runs=1):.3f}")
    table.notes.append(
        f"{harness.machine()}; skipped: the old time extrapolated (cubic for the regex, quadratic otherwise)"
        f" is over {SKIP_ABOVE:.0f} s."
    )
    return table


def main() -> None:
    harness.print_tables([chunking_table(), before_table()])


if __name__ == "__main__":
    main()
